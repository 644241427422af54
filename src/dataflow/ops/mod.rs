//! The operators, one per file. Each file's doc comment is the operator's contract: what it
//! does to inserts and deletes, the state it keeps, what it emits at a barrier.
//!
//! | operator | SQL |
//! |---|---|
//! | [`union::Union`] | a source's entry, `UNION ALL` |
//! | [`constant::Constant`] | `VALUES`, `SELECT` without `FROM` |
//! | [`filter_project::FilterProject`] | `WHERE`, `HAVING`, the `SELECT` list |
//! | [`hash_agg::HashAggregate`] | `GROUP BY`, aggregates, `DISTINCT`, `UNION` |
//! | [`join::Join`] | joins, `IN`/`EXISTS` subqueries, `INTERSECT`, `EXCEPT` |
//! | [`topk::TopK`] | `ORDER BY … LIMIT`, `ROW_NUMBER() … <= k` |
//! | [`eowc::EmitOnWindowClose`] | `EMIT ON WINDOW CLOSE` |
//! | [`temporal::TemporalFilter`] | `WHERE ts > now() - INTERVAL '1 hour'` |
//! | [`session::SessionWindow`] | `SESSION(t, ts, gap, keys…)` |
//! | [`materialize::Materialize`] | the view's contents |

pub mod constant;
pub mod eowc;
pub mod filter_project;
pub mod hash_agg;
pub mod join;
pub mod materialize;
pub mod session;
pub mod temporal;
pub mod topk;
pub mod union;

#[cfg(test)]
mod proptests;

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};

use super::Operator;
use super::spec::{DataflowSpec, NodeId, NodeKind};
use crate::error::Result;

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
        NodeKind::Constant(rows) => Box::new(constant::Constant::new(rows.clone())),
        NodeKind::FilterProject { filter, exprs } => Box::new(filter_project::FilterProject::new(
            filter.clone(),
            exprs.clone(),
            node.schema.clone(),
        )),
        NodeKind::Aggregate {
            group_by,
            aggregates,
            append_only,
        } => Box::new(hash_agg::HashAggregate::new(
            group_by.clone(),
            aggregates.clone(),
            input_schema(0)?,
            node.schema.clone(),
            *append_only,
        )?),
        NodeKind::Join(spec) => {
            let (left, right) = (input_schema(0)?.clone(), input_schema(1)?.clone());
            let pair = Arc::new(Schema::new(
                left.fields()
                    .iter()
                    .chain(right.fields().iter())
                    .cloned()
                    .collect::<Vec<_>>(),
            ));
            Box::new(join::Join::new(
                spec,
                left,
                right,
                pair,
                node.schema.clone(),
            )?)
        }
        NodeKind::EmitOnWindowClose => Box::new(eowc::EmitOnWindowClose::new(node.schema.clone())?),
        NodeKind::SessionWindow(s) => Box::new(session::SessionWindow::new(
            s.clone(),
            input_schema(0)?.clone(),
            node.schema.clone(),
        )?),
        NodeKind::TemporalFilter(bounds) => Box::new(temporal::TemporalFilter::new(
            node.schema.clone(),
            bounds.clone(),
        )?),
        NodeKind::TopK(spec) => Box::new(topk::TopK::new(
            spec,
            input_schema(0)?,
            node.schema.clone(),
        )?),
    })
}
