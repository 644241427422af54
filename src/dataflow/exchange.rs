//! Sharding a dataflow across workers: which rows each copy of an operator receives.
//!
//! A dataflow runs as `n` shards. Each node keeps one operator per shard; its state holds only
//! the keys that hash to that shard, so the shards of a node run in parallel, each on its own
//! core. Between nodes, rows move as the consumer's [`Route`] says:
//!
//! ```text
//!  source rows ─a run each─► shard 0 … n-1 ─► FilterProject (stays on its shard: Local)
//!     ─► HashAggregate (Hash of the group keys: every row of a group meets on one shard)
//!     ─► … ─► Materialize (one, fed by every shard)
//! ```
//!
//! A node whose result depends on all of its input together — a global aggregate, `ORDER BY …
//! LIMIT` without partitions, a join without equi-keys, `NOT IN` — runs once, on shard 0, and
//! receives every row ([`routes`] returns `None`). Rows are hashed with a fixed seed, so a key
//! lands on the same shard after a restart and the shards' checkpointed state stays valid for
//! the same number of shards.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::CastOptions;
use datafusion::arrow::compute::{take, take_record_batch};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};

use super::spec::{DataflowSpec, NodeId, NodeKind};
use crate::error::Result;
use crate::types::ZBatch;

/// How the rows a node receives on one input port are spread over its shards.
#[derive(Debug, Clone)]
pub enum Route {
    /// Rows stay on the shard that produced them (operators with no state across rows).
    Local,
    /// Rows go to the shard their key (these expressions over the input) hashes to.
    Hash(Vec<Arc<dyn PhysicalExpr>>),
}

/// The routes of node `id`'s input ports, or `None` when the node runs on one shard only.
pub fn routes(spec: &DataflowSpec, id: NodeId) -> Option<Vec<Route>> {
    let node = &spec.nodes[id];
    let all_columns = |port: usize| -> Route {
        let schema = &spec.nodes[node.inputs[port]].schema;
        Route::Hash(
            schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>)
                .collect(),
        )
    };
    let keyed = |exprs: &[Arc<dyn PhysicalExpr>]| {
        (!exprs.is_empty()).then(|| vec![Route::Hash(exprs.to_vec())])
    };
    match &node.kind {
        NodeKind::Source(_) => Some(Vec::new()),
        NodeKind::FilterProject { .. } | NodeKind::Union => {
            Some(vec![Route::Local; node.inputs.len()])
        }
        // Emitted once: by one shard.
        NodeKind::Constant(_) => None,
        NodeKind::Aggregate { group_by, .. } => keyed(group_by),
        NodeKind::TopK(t) => keyed(&t.partition_by),
        NodeKind::SessionWindow(s) => {
            let schema = &spec.nodes[node.inputs[0]].schema;
            let keys: Vec<Arc<dyn PhysicalExpr>> = s
                .keys
                .iter()
                .map(|i| {
                    Arc::new(Column::new(schema.field(*i).name(), *i)) as Arc<dyn PhysicalExpr>
                })
                .collect();
            keyed(&keys)
        }
        NodeKind::Join(j) => {
            let (left, right) = (
                &spec.nodes[node.inputs[0]].schema,
                &spec.nodes[node.inputs[1]].schema,
            );
            // `NOT IN` looks at the whole right side (does it hold a NULL?).
            if j.on.is_empty() || j.null_aware {
                return None;
            }
            // Equal keys must hash alike on both sides: a right key of another type is cast
            // to the left one's, as the join compares them.
            let mut rights = Vec::with_capacity(j.on.len());
            for (l, r) in &j.on {
                let (Ok(lt), Ok(rt)) = (l.data_type(left), r.data_type(right)) else {
                    return None;
                };
                rights.push(if lt == rt {
                    r.clone()
                } else {
                    // Arrow's default options, as the join's `cast`.
                    Arc::new(CastExpr::new(r.clone(), lt, Some(CastOptions::default())))
                        as Arc<dyn PhysicalExpr>
                });
            }
            Some(vec![
                Route::Hash(j.on.iter().map(|(l, _)| l.clone()).collect()),
                Route::Hash(rights),
            ])
        }
        // State per row: a row's insert and its delete must meet on one shard.
        NodeKind::EmitOnWindowClose | NodeKind::TemporalFilter(_) => Some(vec![all_columns(0)]),
    }
}

/// A fixed seed (DataFusion's hash state is fixed too), so that a key's shard is the same in
/// every run.
fn hasher() -> RandomState {
    RandomState::with_seed(0x6564_6479_7368_6172)
}

/// The hashes of a few fixed keys, as text: part of a sharded dataflow's fingerprint, so that
/// if a new version of the hash function moved keys to other shards, state stored split by the
/// old one would be rebuilt rather than read from the wrong shards.
pub fn placement_probe() -> String {
    let keys: Vec<ArrayRef> = vec![
        Arc::new(datafusion::arrow::array::Int64Array::from(vec![
            0, 1, 42, -7,
        ])),
        Arc::new(datafusion::arrow::array::StringArray::from(vec![
            "", "a", "eddy", "é",
        ])),
    ];
    let mut hashes = vec![0u64; 4];
    match create_hashes(&keys, &hasher(), &mut hashes) {
        Ok(_) => format!("{hashes:x?}"),
        Err(e) => e.to_string(),
    }
}

/// Splits `batch` over `shards` by the hash of `key` (expressions over its rows): part `s`
/// holds the rows whose key hashes to shard `s`, in their order. Empty parts are `None`.
pub fn partition(
    batch: &ZBatch,
    key: &[Arc<dyn PhysicalExpr>],
    shards: usize,
) -> Result<Vec<Option<ZBatch>>> {
    let rows = batch.num_rows();
    if rows == 0 {
        return Ok(vec![None; shards]);
    }
    let columns: Vec<ArrayRef> = key
        .iter()
        .map(|e| e.evaluate(&batch.data)?.into_array(rows))
        .collect::<datafusion::error::Result<_>>()?;
    let mut hashes = vec![0u64; rows];
    create_hashes(&columns, &hasher(), &mut hashes)?;
    let shard_of: Vec<u32> = hashes
        .iter()
        .map(|h| ((*h >> 32) % shards as u64) as u32)
        .collect();
    // Counting sort of the row indices by shard: one take, then a slice per shard.
    let mut starts = vec![0usize; shards + 1];
    for s in &shard_of {
        starts[*s as usize + 1] += 1;
    }
    if let Some(s) = starts.iter().position(|n| *n == rows) {
        // Every row goes to one shard.
        let mut out = vec![None; shards];
        out[s - 1] = Some(batch.clone());
        return Ok(out);
    }
    for s in 1..=shards {
        starts[s] += starts[s - 1];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; rows];
    for (row, s) in shard_of.iter().enumerate() {
        order[next[*s as usize]] = row as u32;
        next[*s as usize] += 1;
    }
    let order = UInt32Array::from(order);
    let data = take_record_batch(&batch.data, &order)?;
    let weights = take(&batch.weights, &order, None)?;
    let weights = weights
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .ok_or_else(|| crate::internal!("weights are not Int64"))?
        .clone();
    Ok((0..shards)
        .map(|s| {
            let (from, len) = (starts[s], starts[s + 1] - starts[s]);
            (len > 0).then(|| ZBatch::new(data.slice(from, len), weights.slice(from, len)))
        })
        .collect())
}

/// Spreads a source's batches over `shards`: their rows, in order, cut into `shards`
/// contiguous runs of about equal size, so that shard 0 gets the first run, shard 1 the next…
/// Operators that keep rows on their shard then emit them, shard after shard, in the order
/// they were written. Only the batches a cut falls in are sliced (no copy, but a slice keeps
/// its whole batch's buffers alive).
pub fn spread(batches: Vec<ZBatch>, shards: usize) -> Vec<(usize, ZBatch)> {
    let total: usize = batches.iter().map(ZBatch::num_rows).sum();
    if shards == 1 || total == 0 {
        return batches.into_iter().map(|b| (0, b)).collect();
    }
    let per = total.div_ceil(shards);
    let mut at = 0;
    let mut out = Vec::new();
    for batch in batches {
        let rows = batch.num_rows();
        let shard = (at / per).min(shards - 1);
        if rows == 0 || at + rows <= (shard + 1) * per {
            out.push((shard, batch));
            at += rows;
            continue;
        }
        let mut from = 0;
        while from < rows {
            let shard = (at / per).min(shards - 1);
            let len = ((shard + 1) * per - at).min(rows - from);
            out.push((
                shard,
                ZBatch::new(batch.data.slice(from, len), batch.weights.slice(from, len)),
            ));
            from += len;
            at += len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    fn batch(keys: &[i64]) -> ZBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, false),
        ]));
        let values: Vec<String> = keys.iter().map(|k| format!("v{k}")).collect();
        let data = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(StringArray::from(values)),
            ],
        )
        .unwrap();
        let weights = Int64Array::from((0..keys.len() as i64).map(|i| i + 1).collect::<Vec<_>>());
        ZBatch::new(data, weights)
    }

    fn key() -> Vec<Arc<dyn PhysicalExpr>> {
        vec![Arc::new(Column::new("k", 0))]
    }

    fn keys_of(b: &ZBatch) -> Vec<i64> {
        let a = b
            .data
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        a.values().to_vec()
    }

    #[test]
    fn partition_keeps_every_row_and_its_weight_and_puts_a_key_on_one_shard() {
        let keys: Vec<i64> = (0..1000).map(|i| i % 97).collect();
        let parts = partition(&batch(&keys), &key(), 4).unwrap();
        assert_eq!(parts.len(), 4);
        let mut seen = Vec::new();
        let mut shard_of = std::collections::HashMap::new();
        for (s, part) in parts.iter().enumerate() {
            let part = part
                .as_ref()
                .expect("1000 rows over 4 shards leave none empty");
            for (k, w) in keys_of(part).into_iter().zip(part.weights.values().iter()) {
                assert_eq!(*shard_of.entry(k).or_insert(s), s, "key {k} on two shards");
                seen.push((k, *w));
            }
            let v = part
                .data
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            for i in 0..part.num_rows() {
                assert_eq!(v.value(i), format!("v{}", keys_of(part)[i]));
            }
        }
        seen.sort();
        let mut expected: Vec<(i64, i64)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, i as i64 + 1))
            .collect();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn partition_is_the_same_every_time() {
        let a = partition(&batch(&[1, 2, 3, 4, 5, 6, 7, 8]), &key(), 3).unwrap();
        let b = partition(&batch(&[8, 7, 6, 5, 4, 3, 2, 1]), &key(), 3).unwrap();
        let sorted = |parts: &[Option<ZBatch>]| -> Vec<Vec<i64>> {
            parts
                .iter()
                .map(|p| {
                    let mut k = p.as_ref().map(keys_of).unwrap_or_default();
                    k.sort();
                    k
                })
                .collect()
        };
        assert_eq!(sorted(&a), sorted(&b));
    }

    #[test]
    fn spread_cuts_the_rows_in_order_into_a_run_per_shard() {
        let parts = spread(
            vec![
                batch(&[1, 2, 3]),
                batch(&[]),
                batch(&[4, 5, 6, 7]),
                batch(&[8]),
            ],
            3,
        );
        let runs: Vec<(usize, Vec<i64>)> = parts.iter().map(|(s, b)| (*s, keys_of(b))).collect();
        assert_eq!(
            runs,
            vec![
                (0, vec![1, 2, 3]),
                (1, vec![]),
                (1, vec![4, 5, 6]),
                (2, vec![7]),
                (2, vec![8]),
            ]
        );
        let weights: Vec<i64> = parts
            .iter()
            .flat_map(|(_, b)| b.weights.values().to_vec())
            .collect();
        assert_eq!(weights, vec![1, 2, 3, 1, 2, 3, 4, 1]);
        // One row, or one shard: nothing is cut.
        assert_eq!(spread(vec![batch(&[9])], 2).len(), 1);
        assert_eq!(spread(vec![batch(&[1, 2]), batch(&[3])], 1).len(), 2);
    }
}
