//! [`FilterProject`]: `WHERE` and the `SELECT` list, row by row.
//!
//! Contract:
//! - insert (+w) and delete (−w) alike: the row is kept iff the predicate is true (NULL and false
//!   drop it), then the output expressions are evaluated over it; the weight is unchanged. A
//!   deterministic predicate drops the delete of a row exactly when it dropped its insert, so the
//!   output stays a valid collection;
//! - state: none;
//! - barrier: nothing held back, so nothing to emit.
//!
//! Vectorised: one `PhysicalExpr::evaluate` per batch for the predicate and each expression
//! (DataFusion's whole scalar function library), Arrow's `filter` kernel for the rows.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::{filter, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use crate::dataflow::Operator;
use crate::error::{Result, sqlstate};
use crate::types::{Epoch, ZBatch};

pub struct FilterProject {
    filter: Option<Arc<dyn PhysicalExpr>>,
    exprs: Option<Vec<Arc<dyn PhysicalExpr>>>,
    schema: SchemaRef,
}

impl FilterProject {
    pub fn new(
        filter: Option<Arc<dyn PhysicalExpr>>,
        exprs: Option<Vec<Arc<dyn PhysicalExpr>>>,
        schema: SchemaRef,
    ) -> Self {
        FilterProject {
            filter,
            exprs,
            schema,
        }
    }

    /// Applies the filter and projection to one batch.
    pub fn apply(&self, batch: ZBatch) -> Result<Option<ZBatch>> {
        let ZBatch {
            mut data,
            mut weights,
        } = batch;
        if let Some(predicate) = &self.filter {
            let mask = predicate.evaluate(&data)?.into_array(data.num_rows())?;
            let mask = mask.as_boolean_opt().ok_or_else(|| {
                crate::err!(
                    sqlstate::DATATYPE_MISMATCH,
                    "WHERE condition is not boolean"
                )
            })?;
            if mask.true_count() == 0 {
                return Ok(None);
            }
            if mask.true_count() < data.num_rows() {
                data = filter_record_batch(&data, mask)?;
                weights = filter(&weights, mask)?.as_primitive::<_>().clone();
            }
        }
        let data = match &self.exprs {
            None => data,
            Some(exprs) => {
                let n = data.num_rows();
                let columns = exprs
                    .iter()
                    .map(|e| Ok(e.evaluate(&data)?.into_array(n)?))
                    .collect::<Result<Vec<_>>>()?;
                RecordBatch::try_new_with_options(
                    self.schema.clone(),
                    columns,
                    &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
                )?
            }
        };
        let weights: Int64Array = weights;
        debug_assert_eq!(weights.len(), data.num_rows());
        Ok(Some(ZBatch::new(data, weights)))
    }
}

impl Operator for FilterProject {
    fn on_batch(&mut self, _port: usize, batch: ZBatch, out: &mut Vec<ZBatch>) -> Result<()> {
        // Inserts and deletes alike: filter, evaluate, keep the weight.
        if let Some(b) = self.apply(batch)? {
            out.push(b);
        }
        Ok(())
    }

    fn on_barrier(&mut self, _epoch: Epoch, _out: &mut Vec<ZBatch>) -> Result<()> {
        // Stateless: everything was emitted as it arrived.
        Ok(())
    }
}
