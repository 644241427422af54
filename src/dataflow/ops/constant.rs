//! [`Constant`]: rows that never change (`VALUES`, a `FROM`-less `SELECT`).
//!
//! Contract: no input; emits its rows with weight +1 at the first barrier (the backfill) and
//! nothing ever after; state: the rows until then.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::dataflow::Operator;
use crate::error::{Result, sqlstate};
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
    /// Whether the rows are still to be emitted (the rows themselves come from the plan).
    fn save_state(&self) -> Result<Vec<RecordBatch>> {
        Ok(vec![RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "pending",
                DataType::Boolean,
                false,
            )])),
            vec![Arc::new(BooleanArray::from(vec![self.rows.is_some()]))],
        )?])
    }

    fn load_state(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let pending = state
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_boolean_opt()
                    .map(|a| !a.is_empty() && a.value(0))
            })
            .ok_or_else(|| crate::err!(sqlstate::DATA_CORRUPTED, "constant state is unreadable"))?;
        if !pending {
            self.rows = None;
        }
        Ok(())
    }

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
