//! The operators, one per file. Each file's doc comment is the operator's contract: what it
//! does to inserts and deletes, the state it keeps, what it emits at a barrier.
//!
//! | operator | SQL |
//! |---|---|
//! | [`union::Union`] | a source's entry, `UNION ALL` |
//! | [`union::Constant`] | `VALUES`, `SELECT` without `FROM` |
//! | [`filter_project::FilterProject`] | `WHERE`, `HAVING`, the `SELECT` list |
//! | [`hash_agg::HashAggregate`] | `GROUP BY`, aggregates, `DISTINCT`, `UNION` |
//! | [`materialize::Materialize`] | the view's contents |

pub mod filter_project;
pub mod hash_agg;
pub mod materialize;
pub mod union;

use datafusion::arrow::datatypes::SchemaRef;

use super::Operator;
use super::spec::{DataflowSpec, NodeId, NodeKind};
use crate::error::Result;
use crate::unsupported;

/// Instantiates the operator of node `id` of `spec`.
pub fn build(spec: &DataflowSpec, id: NodeId) -> Result<Box<dyn Operator>> {
    let node = &spec.nodes[id];
    let input_schema = |port: usize| -> Result<&SchemaRef> {
        node.inputs
            .get(port)
            .map(|i| &spec.nodes[*i].schema)
            .ok_or_else(|| crate::internal!("dataflow node {id} lacks input {port}"))
    };
    Ok(match &node.kind {
        NodeKind::Source(_) | NodeKind::Union => Box::new(union::Union::new(node.schema.clone())),
        NodeKind::Constant(rows) => Box::new(union::Constant::new(rows.clone())),
        NodeKind::FilterProject { filter, exprs } => Box::new(filter_project::FilterProject::new(
            filter.clone(),
            exprs.clone(),
            node.schema.clone(),
        )),
        NodeKind::Aggregate {
            group_by,
            aggregates,
        } => Box::new(hash_agg::HashAggregate::new(
            group_by.clone(),
            aggregates.clone(),
            input_schema(0)?,
            node.schema.clone(),
        )?),
        NodeKind::Join(_) => return Err(unsupported!("joins in materialized views")),
        NodeKind::TopK(_) => return Err(unsupported!("ORDER BY … LIMIT in materialized views")),
    })
}
