//! [`Constant`]: rows that never change (`VALUES`, a `FROM`-less `SELECT`).
//!
//! Contract: no input; emits its rows with weight +1 at the first barrier (the backfill) and
//! nothing ever after; state: the rows until then (the rows come from the plan, so a
//! checkpoint stores only whether they were emitted).

use datafusion::arrow::array::RecordBatch;

use crate::dataflow::{Operator, StateSink, StateSource};
use crate::error::{Result, sqlstate};
use crate::types::{Epoch, ZBatch};

/// See the module documentation.
pub struct Constant {
    rows: Option<Vec<RecordBatch>>,
    /// Whether the state changed since the last checkpoint.
    unsaved: bool,
}

impl Constant {
    pub fn new(rows: Vec<RecordBatch>) -> Self {
        Constant {
            rows: Some(rows),
            unsaved: true,
        }
    }
}

impl Operator for Constant {
    /// One value: whether the rows are still to be emitted.
    fn checkpoint(&mut self, full: bool, sink: &mut dyn StateSink) -> Result<()> {
        if full || self.unsaved {
            sink.put(b"", &[u8::from(self.rows.is_some())]);
            self.unsaved = false;
        }
        Ok(())
    }

    fn restore(&mut self, source: &dyn StateSource) -> Result<()> {
        let mut pending = None;
        source.values(&mut |_, v| {
            pending = Some(v.first() == Some(&1));
            Ok(())
        })?;
        match pending {
            Some(false) => self.rows = None,
            Some(true) => {}
            None => {
                return Err(crate::err!(
                    sqlstate::DATA_CORRUPTED,
                    "constant state is missing"
                ));
            }
        }
        self.unsaved = false;
        Ok(())
    }

    fn on_batch(&mut self, _port: usize, _batch: ZBatch, _out: &mut Vec<ZBatch>) -> Result<()> {
        Ok(())
    }

    fn on_barrier(&mut self, _epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()> {
        // First barrier: the rows appear; never again.
        if self.rows.is_some() {
            self.unsaved = true;
        }
        for batch in self.rows.take().into_iter().flatten() {
            if batch.num_rows() > 0 {
                out.push(ZBatch::uniform(batch, 1));
            }
        }
        Ok(())
    }
}
