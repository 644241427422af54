//! [`Constant`]: rows that never change (`VALUES`, a `FROM`-less `SELECT`).
//!
//! Contract: no input; emits its rows with weight +1 at the first barrier (the backfill) and
//! nothing ever after; state: the rows until then.

use datafusion::arrow::array::RecordBatch;

use crate::dataflow::Operator;
use crate::error::Result;
use crate::types::{Epoch, ZBatch};

/// See the module documentation.
pub struct Constant {
    rows: Option<Vec<RecordBatch>>,
}

impl Constant {
    pub fn new(rows: Vec<RecordBatch>) -> Self {
        Constant { rows: Some(rows) }
    }
}

impl Operator for Constant {
    fn on_batch(&mut self, _port: usize, _batch: ZBatch, _out: &mut Vec<ZBatch>) -> Result<()> {
        Ok(())
    }

    fn on_barrier(&mut self, _epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()> {
        // First barrier: the rows appear; never again.
        for batch in self.rows.take().into_iter().flatten() {
            if batch.num_rows() > 0 {
                out.push(ZBatch::uniform(batch, 1));
            }
        }
        Ok(())
    }
}
