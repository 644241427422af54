//! [`Union`]: `UNION ALL` of its inputs; with one input, the entry point of a source.
//!
//! Contract:
//! - insert and delete alike: passed through unchanged, whatever the port (Z-set sum);
//! - state: none;
//! - barrier: nothing held back. (`UNION` without ALL is this followed by a DISTINCT aggregate.)

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::dataflow::Operator;
use crate::error::Result;
use crate::types::{Epoch, ZBatch};

pub struct Union {
    /// Output schema: inputs may differ in field names and nullability only.
    schema: SchemaRef,
}

impl Union {
    pub fn new(schema: SchemaRef) -> Self {
        Union { schema }
    }
}

impl Operator for Union {
    fn on_batch(&mut self, _port: usize, batch: ZBatch, out: &mut Vec<ZBatch>) -> Result<()> {
        // Every change of every input is a change of the union.
        let data = if batch.data.schema() == self.schema {
            batch.data
        } else {
            RecordBatch::try_new(self.schema.clone(), batch.data.columns().to_vec())?
        };
        out.push(ZBatch::new(data, batch.weights));
        Ok(())
    }

    fn on_barrier(&mut self, _epoch: Epoch, _out: &mut Vec<ZBatch>) -> Result<()> {
        Ok(())
    }
}
