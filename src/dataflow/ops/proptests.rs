//! Property tests of the stateful operators: random multi-round weighted input (inserts and
//! deletes of existing rows, on every input port); after every round the operator's output so
//! far, consolidated, must equal what a fresh operator emits for the current input in one step
//! (recomputation from scratch). Halfway through, the operator is replaced by a fresh one
//! loaded from its saved state (a checkpoint and restore), which must carry on identically.
//! Operators that can evict state run the same rounds attached to a store, evicting
//! everything durable after every round and losing some checkpoints, as a server under a tight
//! memory budget with failing disk writes would. Time-dependent operators (the temporal filter)
//! also see the clock move between rounds, and are recomputed at the round's time.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::{
    average::avg_udaf, bool_and_or::bool_and_udaf, bool_and_or::bool_or_udaf, count::count_udaf,
    min_max::max_udaf, min_max::min_udaf, string_agg::string_agg_udaf, sum::sum_udaf,
};
use datafusion::logical_expr::{AggregateUDF, Operator as BinOp};
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use proptest::prelude::*;

use super::hash_agg::HashAggregate;
use super::join::Join;
use super::topk::TopK;
use crate::dataflow::spec::{AggregateCall, JoinKind, JoinSpec, RankKind, TopKSpec};
use crate::dataflow::{MemoryState, Operator, StateSink};
use crate::types::{Epoch, ZBatch};

type Row = (Option<i64>, Option<i64>, Option<String>);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
    ]))
}

fn batch(rows: &[(Row, i64)]) -> ZBatch {
    let k: Int64Array = rows.iter().map(|((k, _, _), _)| *k).collect();
    let v: Int64Array = rows.iter().map(|((_, v, _), _)| *v).collect();
    let s: StringArray = rows.iter().map(|((_, _, s), _)| s.clone()).collect();
    let data = RecordBatch::try_new(
        schema(),
        vec![Arc::new(k) as ArrayRef, Arc::new(v), Arc::new(s)],
    )
    .unwrap();
    ZBatch::new(data, rows.iter().map(|(_, w)| *w).collect())
}

/// Consolidated text form: "row values" → weight, without zero weights.
fn consolidate(batches: &[ZBatch]) -> Vec<(String, i64)> {
    let mut sums: std::collections::BTreeMap<String, i64> = Default::default();
    for b in batches {
        for i in 0..b.num_rows() {
            let row: Vec<String> = b
                .data
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(i) {
                        "NULL".into()
                    } else {
                        array_value_to_string(c, i).unwrap()
                    }
                })
                .collect();
            *sums.entry(row.join("|")).or_insert(0) += b.weights.value(i);
        }
    }
    sums.into_iter().filter(|(_, w)| *w != 0).collect()
}

/// One change: (port, delete?, which existing row to delete, row to insert).
type Op = (usize, bool, usize, Row);

fn row_strategy() -> impl Strategy<Value = Row> {
    (
        prop::option::weighted(0.9, 0i64..4),
        prop::option::weighted(0.85, 0i64..6),
        prop::option::weighted(
            0.85,
            prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
        ),
    )
}

fn rounds_strategy(ports: usize) -> impl Strategy<Value = Vec<Vec<Op>>> {
    sized_rounds_strategy(ports, 8, 12)
}

/// Up to `rounds` rounds of up to `ops` changes each.
fn sized_rounds_strategy(
    ports: usize,
    ops: usize,
    rounds: usize,
) -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(
        prop::collection::vec(
            (
                0..ports,
                prop::bool::weighted(0.4),
                0usize..1000,
                row_strategy(),
            ),
            0..ops,
        ),
        1..rounds,
    )
}

/// Feeds `rounds` into an operator made by `make` and checks every round against a fresh one.
fn check(make: &dyn Fn() -> Box<dyn Operator>, ports: usize, rounds: Vec<Vec<Op>>) {
    check_timed(make, ports, rounds, &[]);
}

/// [`check`], with the clock moving forward by `steps[r]` µs before round `r` (from 0; it stays
/// put past the end of `steps`). A fresh operator recomputes at the round's time.
fn check_timed(
    make: &dyn Fn() -> Box<dyn Operator>,
    ports: usize,
    rounds: Vec<Vec<Op>>,
    steps: &[i64],
) {
    let mut now = 0i64;
    let mut op = make();
    let mut emitted: Vec<ZBatch> = Vec::new();
    let mut live: Vec<Vec<Row>> = vec![Vec::new(); ports];
    let restore_at = rounds.len() / 2;
    let mut saved = MemoryState::default();
    for (r, round) in rounds.into_iter().enumerate() {
        // Incremental checkpoints (not after every round, so changes pile up between them)
        // must add up to exactly what a full checkpoint writes.
        if r % 3 != 1 || r == restore_at {
            op.checkpoint(false, &mut saved).unwrap();
            let mut full = MemoryState::default();
            op.checkpoint(true, &mut full).unwrap();
            assert_eq!(
                saved, full,
                "incremental checkpoints differ from a full one"
            );
        }
        if r == restore_at {
            op = make();
            op.restore(&saved).unwrap();
        }
        let epoch = Epoch(r as u64 + 1);
        now += steps.get(r).copied().unwrap_or(0);
        op.on_time(now, &mut emitted).unwrap();
        emitted.extend(apply_round(op.as_mut(), round, &mut live, epoch));
        compare(make, r, &emitted, &live, now);
    }
}

/// Applies one round of changes to `op` (and to `live`, the current input rows) as one epoch;
/// returns the output.
fn apply_round(
    op: &mut dyn Operator,
    round: Vec<Op>,
    live: &mut [Vec<Row>],
    epoch: Epoch,
) -> Vec<ZBatch> {
    let ports = live.len();
    // Group the round into one batch per port per run of same-port ops.
    let mut per_port: Vec<Vec<(Row, i64)>> = vec![Vec::new(); ports];
    for (port, delete, pick, row) in round {
        if delete && !live[port].is_empty() {
            let at = pick % live[port].len();
            let row = live[port].swap_remove(at);
            per_port[port].push((row, -1));
        } else {
            live[port].push(row.clone());
            per_port[port].push((row, 1));
        }
    }
    let mut out = Vec::new();
    for (port, rows) in per_port.iter().enumerate() {
        if !rows.is_empty() {
            op.on_batch(port, batch(rows), &mut out).unwrap();
        }
    }
    op.on_barrier(epoch, &mut out).unwrap();
    out
}

/// Checks that the output so far equals what a fresh operator emits for `live` in one step.
/// `now`: the time the fresh operator computes at.
fn compare(
    make: &dyn Fn() -> Box<dyn Operator>,
    r: usize,
    emitted: &[ZBatch],
    live: &[Vec<Row>],
    now: i64,
) {
    let mut fresh = make();
    let mut expected = Vec::new();
    fresh.on_time(now, &mut expected).unwrap();
    for (port, rows) in live.iter().enumerate() {
        let rows: Vec<(Row, i64)> = rows.iter().map(|r| (r.clone(), 1)).collect();
        if !rows.is_empty() {
            fresh.on_batch(port, batch(&rows), &mut expected).unwrap();
        }
    }
    fresh.on_barrier(Epoch(1), &mut expected).unwrap();
    let got = consolidate(emitted);
    assert!(
        got.iter().all(|(_, w)| *w > 0),
        "round {r}: output has negative multiplicities: {got:?}"
    );
    assert_eq!(got, consolidate(&expected), "round {r}");
}

/// A checkpoint whose write fails: it may have reached the store or not.
struct Lost;
impl StateSink for Lost {
    fn put(&mut self, _: &[u8], _: &[u8]) {}
    fn delete(&mut self, _: &[u8]) {}
    fn add(&mut self, _: &[u8], _: i64) {}
    fn clear_prefix(&mut self, _: &[u8]) {}
}

/// Like [`check`], for an operator attached to a store: after every round a checkpoint is
/// written (`fate` says whether it is durable, lost, or applied but reported failed), and on
/// success everything evictable is evicted; halfway, a fresh operator restores lazily from
/// the store. Reads see the store as of the last durable checkpoint, as the runtime's
/// snapshot does.
fn check_evicting(
    make: &dyn Fn() -> Box<dyn Operator>,
    ports: usize,
    rounds: Vec<Vec<Op>>,
    fates: Vec<u8>,
    max_left: usize,
) {
    let mut store = MemoryState::default();
    let durable = Arc::new(parking_lot::Mutex::new(MemoryState::default()));
    let attached = || {
        let mut op = make();
        op.attach(Box::new(durable.clone()));
        assert!(op.evicts());
        op
    };
    let mut op = attached();
    let mut emitted: Vec<ZBatch> = Vec::new();
    let mut live: Vec<Vec<Row>> = vec![Vec::new(); ports];
    let restore_at = rounds.len() / 2;
    let mut failed = false;
    // A checkpoint written but not yet durable while the next round runs.
    let mut in_flight: Option<MemoryState> = None;
    for (r, round) in rounds.into_iter().enumerate() {
        if let Some(written) = in_flight.take() {
            *durable.lock() = written;
            op.checkpoint_durable();
            op.evict(op.state_bytes().saturating_sub(1));
        }
        let fate = if r == restore_at {
            0
        } else {
            fates[r % fates.len()]
        };
        match fate {
            // Durable.
            0 => {
                op.checkpoint(failed, &mut store).unwrap();
                *durable.lock() = store.clone();
                op.checkpoint_durable();
                failed = false;
                op.evict(0);
                let left = op.state_bytes();
                assert!(
                    left <= max_left,
                    "round {r}: {left} bytes left after evicting"
                );
            }
            // Durable, and a little over the budget: what goes first (a top-k's tails).
            1 => {
                op.checkpoint(failed, &mut store).unwrap();
                *durable.lock() = store.clone();
                op.checkpoint_durable();
                failed = false;
                op.evict(op.state_bytes().saturating_sub(1));
            }
            // Lost.
            2 => {
                op.checkpoint(failed, &mut Lost).unwrap();
                failed = true;
            }
            // Reached the store, but reported failed.
            3 => {
                op.checkpoint(failed, &mut store).unwrap();
                failed = true;
            }
            // Written, durable only after the next round.
            _ => {
                op.checkpoint(failed, &mut store).unwrap();
                failed = false;
                in_flight = Some(store.clone());
            }
        }
        if r == restore_at {
            op = attached();
            op.restore(&MemoryState::default()).unwrap();
        }
        let epoch = Epoch(r as u64 + 1);
        emitted.extend(apply_round(op.as_mut(), round, &mut live, epoch));
        compare(make, r, &emitted, &live, 0);
    }
}

fn col(name: &str, i: usize) -> Arc<dyn PhysicalExpr> {
    Arc::new(Column::new(name, i))
}

fn agg(f: Arc<AggregateUDF>, args: Vec<Arc<dyn PhysicalExpr>>, name: &str) -> AggregateExprBuilder {
    AggregateExprBuilder::new(f, args)
        .schema(schema())
        .alias(name)
}

fn aggregates() -> Vec<AggregateCall> {
    let v_gt_2: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
        col("v", 1),
        BinOp::Gt,
        Arc::new(Literal::new(ScalarValue::Int64(Some(2)))),
    ));
    let one: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Int64(Some(1))));
    let comma: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Utf8(Some(",".into()))));
    let by_s = PhysicalSortExpr {
        expr: col("s", 2),
        options: SortOptions::default(),
    };
    let builders = vec![
        agg(count_udaf(), vec![one], "n"),
        agg(count_udaf(), vec![col("v", 1)], "nv"),
        agg(sum_udaf(), vec![col("v", 1)], "sv"),
        agg(avg_udaf(), vec![col("v", 1)], "av"),
        agg(min_udaf(), vec![col("v", 1)], "mn"),
        agg(max_udaf(), vec![col("s", 2)], "mx"),
        agg(count_udaf(), vec![col("v", 1)], "dv").distinct(),
        agg(bool_and_udaf(), vec![v_gt_2.clone()], "ba"),
        agg(bool_or_udaf(), vec![v_gt_2], "bo"),
        agg(sum_udaf(), vec![col("v", 1)], "sdv").distinct(),
        agg(string_agg_udaf(), vec![col("s", 2), comma], "ss").order_by(vec![by_s]),
    ];
    builders
        .into_iter()
        .map(|b| AggregateCall {
            func: Arc::new(b.build().unwrap()),
            filter: None,
        })
        .collect()
}

fn agg_schema(grouped: bool) -> SchemaRef {
    let mut fields = Vec::new();
    if grouped {
        fields.push(Field::new("k", DataType::Int64, true));
    }
    for a in aggregates() {
        fields.push(Field::new(
            a.func.name(),
            a.func.field().data_type().clone(),
            true,
        ));
    }
    Arc::new(Schema::new(fields))
}

fn join(kind: JoinKind, residual: bool, nulls_equal: bool, null_aware: bool) -> Box<dyn Operator> {
    let left = schema();
    let right = schema();
    let pair = Arc::new(Schema::new(
        left.fields()
            .iter()
            .chain(right.fields().iter())
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let out = match kind {
        JoinKind::LeftSemi | JoinKind::LeftAnti => left.clone(),
        _ => pair.clone(),
    };
    // Residual: left.v < right.v (columns 1 and 4 of the pair).
    let filter: Option<Arc<dyn PhysicalExpr>> =
        residual.then(|| Arc::new(BinaryExpr::new(col("v", 1), BinOp::Lt, col("v", 4))) as _);
    let spec = JoinSpec {
        kind,
        on: vec![(col("k", 0), col("k", 0))],
        nulls_equal,
        filter,
        null_aware,
    };
    Box::new(Join::new(&spec, left, right, pair, out).unwrap())
}

fn topk(
    partitioned: bool,
    rank: Option<RankKind>,
    offset: usize,
    limit: usize,
) -> Box<dyn Operator> {
    let spec = TopKSpec {
        partition_by: if partitioned {
            vec![col("k", 0)]
        } else {
            vec![]
        },
        order_by: vec![PhysicalSortExpr {
            expr: col("v", 1),
            options: SortOptions {
                descending: true,
                nulls_first: false,
            },
        }],
        offset,
        limit: Some(limit),
        rank,
    };
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if rank.is_some() {
        fields.push(Field::new("r", DataType::UInt64, true));
    }
    Box::new(TopK::new(&spec, &schema(), Arc::new(Schema::new(fields))).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn grouped_aggregate(rounds in rounds_strategy(1)) {
        let make = || -> Box<dyn Operator> {
            Box::new(HashAggregate::new(vec![col("k", 0)], aggregates(), &schema(), agg_schema(true), false).unwrap())
        };
        check(&make, 1, rounds);
    }

    #[test]
    fn grouped_aggregate_evicting(rounds in rounds_strategy(1), fates in prop::collection::vec(0u8..5, 1..6)) {
        let make = || -> Box<dyn Operator> {
            Box::new(HashAggregate::new(vec![col("k", 0)], aggregates(), &schema(), agg_schema(true), false).unwrap())
        };
        check_evicting(&make, 1, rounds, fates, 0);
    }

    #[test]
    fn global_aggregate_evicting(rounds in rounds_strategy(1), fates in prop::collection::vec(0u8..5, 1..6)) {
        let make = || -> Box<dyn Operator> {
            Box::new(HashAggregate::new(vec![], aggregates(), &schema(), agg_schema(false), false).unwrap())
        };
        // The one group is never evicted.
        check_evicting(&make, 1, rounds, fates, usize::MAX);
    }

    #[test]
    fn global_aggregate(rounds in rounds_strategy(1)) {
        let make = || -> Box<dyn Operator> {
            Box::new(HashAggregate::new(vec![], aggregates(), &schema(), agg_schema(false), false).unwrap())
        };
        check(&make, 1, rounds);
    }

    #[test]
    fn append_only_aggregate(rounds in rounds_strategy(1)) {
        // Inserts only: the extreme-only min/max path must agree with recomputation.
        let rounds: Vec<Vec<Op>> = rounds
            .into_iter()
            .map(|r| r.into_iter().map(|(p, _, i, row)| (p, false, i, row)).collect())
            .collect();
        let make = || -> Box<dyn Operator> {
            Box::new(HashAggregate::new(vec![col("k", 0)], aggregates(), &schema(), agg_schema(true), true).unwrap())
        };
        check(&make, 1, rounds);
    }

    #[test]
    fn joins(rounds in rounds_strategy(2), kind in 0usize..6, residual: bool, nulls_equal: bool) {
        let kind = [JoinKind::Inner, JoinKind::Left, JoinKind::Right, JoinKind::Full, JoinKind::LeftSemi, JoinKind::LeftAnti][kind];
        check(&|| join(kind, residual, nulls_equal, false), 2, rounds);
    }

    #[test]
    fn joins_evicting(rounds in sized_rounds_strategy(2, 12, 20), kind in 0usize..6, residual: bool, nulls_equal: bool, fates in prop::collection::vec(0u8..5, 1..6)) {
        let kind = [JoinKind::Inner, JoinKind::Left, JoinKind::Right, JoinKind::Full, JoinKind::LeftSemi, JoinKind::LeftAnti][kind];
        check_evicting(&|| join(kind, residual, nulls_equal, false), 2, rounds, fates, 0);
    }

    #[test]
    fn not_in(rounds in rounds_strategy(2)) {
        check(&|| join(JoinKind::LeftAnti, false, false, true), 2, rounds);
    }

    #[test]
    fn top_k(rounds in rounds_strategy(1), partitioned: bool, rank in 0usize..4, offset in 0usize..2, limit in 1usize..4) {
        let rank = [None, Some(RankKind::RowNumber), Some(RankKind::Rank), Some(RankKind::DenseRank)][rank];
        let offset = if rank.is_some() { 0 } else { offset };
        check(&|| topk(partitioned, rank, offset, limit), 1, rounds);
    }

    #[test]
    fn temporal_filter(rounds in rounds_strategy(1), steps in prop::collection::vec(0i64..4, 12), lower: bool, upper: bool, inclusive: bool) {
        check_timed(&|| temporal(lower, upper, inclusive), 1, rounds, &steps);
    }

    #[test]
    fn session_window(rounds in rounds_strategy(1), keyed: bool, gap in 1i64..4) {
        check(&|| session(keyed, gap), 1, rounds);
    }
}

/// Sessions over `v` (as µs), per `k` when `keyed`, with a gap of `gap` µs.
fn session(keyed: bool, gap: i64) -> Box<dyn Operator> {
    use crate::dataflow::spec::SessionSpec;
    use datafusion::arrow::datatypes::TimeUnit;
    let time = DataType::Timestamp(TimeUnit::Microsecond, None);
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("window_start", time.clone(), true));
    fields.push(Field::new("window_end", time, true));
    let spec = SessionSpec {
        ts: 1,
        gap,
        keys: if keyed { vec![0] } else { vec![] },
    };
    Box::new(
        super::session::SessionWindow::new(spec, schema(), Arc::new(Schema::new(fields))).unwrap(),
    )
}

/// A temporal filter over `v` (a time in µs) and `k` (a lifetime): visible from `v` (`lower`)
/// and until `v + k` (`upper`), both ends inclusive or not.
fn temporal(lower: bool, upper: bool, inclusive: bool) -> Box<dyn Operator> {
    use crate::dataflow::spec::{TemporalBound, TemporalBoundKind};
    use datafusion::arrow::datatypes::TimeUnit;
    let micros = |e: Arc<dyn PhysicalExpr>| -> Arc<dyn PhysicalExpr> {
        Arc::new(datafusion::physical_expr::expressions::CastExpr::new(
            e,
            DataType::Timestamp(TimeUnit::Microsecond, None),
            None,
        ))
    };
    let mut bounds = Vec::new();
    if lower {
        bounds.push(TemporalBound {
            expr: micros(col("v", 1)),
            kind: TemporalBoundKind::After { inclusive },
        });
    }
    if upper {
        let end = Arc::new(BinaryExpr::new(col("v", 1), BinOp::Plus, col("k", 0)));
        bounds.push(TemporalBound {
            expr: micros(end),
            kind: TemporalBoundKind::Before { inclusive },
        });
    }
    Box::new(super::temporal::TemporalFilter::new(schema(), bounds).unwrap())
}

proptest! {
    // The paths that need a trimmed partition, deltas past its rows and a checkpoint in flight
    // at once are rare per case: more cases.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn top_k_evicting(rounds in sized_rounds_strategy(1, 16, 30), partitioned: bool, rank in 0usize..4, offset in 0usize..2, limit in 1usize..4, fates in prop::collection::vec(0u8..5, 1..6)) {
        let rank = [None, Some(RankKind::RowNumber), Some(RankKind::Rank), Some(RankKind::DenseRank)][rank];
        let offset = if rank.is_some() { 0 } else { offset };
        check_evicting(&|| topk(partitioned, rank, offset, limit), 1, rounds, fates, 0);
    }
}

#[test]
fn groups_evicted_before_their_window_closed_are_freed_from_the_store() {
    let store = Arc::new(parking_lot::Mutex::new(MemoryState::default()));
    let mut op = HashAggregate::new(
        vec![col("k", 0)],
        aggregates(),
        &schema(),
        agg_schema(true),
        false,
    )
    .unwrap();
    op.attach(Box::new(store.clone()));
    let rows: Vec<(Row, i64)> = (0..4)
        .map(|k| ((Some(k), Some(1), Some("a".to_string())), 1))
        .collect();
    let mut out = Vec::new();
    op.on_batch(0, batch(&rows), &mut out).unwrap();
    op.on_barrier(Epoch(1), &mut out).unwrap();
    op.checkpoint(false, &mut *store.lock()).unwrap();
    op.checkpoint_durable();
    op.evict(0);
    assert_eq!(op.state_rows(), 0, "everything evicted");
    assert_eq!(store.lock().values.len(), 4);
    // The watermark passes keys 0 and 1: not in memory, but in the store.
    let mut watermarks = vec![None; agg_schema(true).fields().len()];
    watermarks[0] = Some(ScalarValue::Int64(Some(2)));
    op.on_watermarks(&[], &watermarks);
    op.on_barrier(Epoch(2), &mut out).unwrap();
    op.checkpoint(false, &mut *store.lock()).unwrap();
    op.checkpoint_durable();
    let left: Vec<Vec<u8>> = store.lock().values.keys().cloned().collect();
    assert_eq!(
        left.len(),
        2,
        "the closed groups are deleted from the store"
    );
    // The open ones are still read back when their keys come up.
    op.on_batch(0, batch(&rows[2..3]), &mut out).unwrap();
    op.on_barrier(Epoch(3), &mut out).unwrap();
    assert_eq!(op.state_rows(), 1);
}

#[test]
fn top_k_partitions_evicted_before_they_closed_are_freed_from_the_store() {
    let store = Arc::new(parking_lot::Mutex::new(MemoryState::default()));
    let mut op = topk(true, None, 0, 2);
    op.attach(Box::new(store.clone()));
    let rows: Vec<(Row, i64)> = (0..4)
        .flat_map(|k| (0..3).map(move |v| ((Some(k), Some(v), None), 1)))
        .collect();
    let mut out = Vec::new();
    op.on_batch(0, batch(&rows), &mut out).unwrap();
    op.on_barrier(Epoch(1), &mut out).unwrap();
    op.checkpoint(false, &mut *store.lock()).unwrap();
    op.checkpoint_durable();
    op.evict(0);
    assert_eq!(store.lock().counts.len(), 12);
    // The watermark on the partition key passes partitions 0 and 1, which are only stored.
    let mut watermarks = vec![None; schema().fields().len()];
    watermarks[0] = Some(ScalarValue::Int64(Some(2)));
    op.on_watermarks(&[&watermarks], &watermarks);
    op.on_barrier(Epoch(2), &mut out).unwrap();
    op.checkpoint(false, &mut *store.lock()).unwrap();
    op.checkpoint_durable();
    assert_eq!(
        store.lock().counts.len(),
        6,
        "the closed partitions' rows are cleared from the store"
    );
}

#[test]
fn window_join_keys_evicted_before_they_closed_are_freed_from_the_store() {
    let store = Arc::new(parking_lot::Mutex::new(MemoryState::default()));
    let mut op = join(JoinKind::Inner, false, false, false);
    op.attach(Box::new(store.clone()));
    let rows: Vec<(Row, i64)> = (0..4).map(|k| ((Some(k), Some(k), None), 1)).collect();
    let mut out = Vec::new();
    op.on_batch(0, batch(&rows), &mut out).unwrap();
    op.on_batch(1, batch(&rows), &mut out).unwrap();
    op.on_barrier(Epoch(1), &mut out).unwrap();
    op.checkpoint(false, &mut *store.lock()).unwrap();
    op.checkpoint_durable();
    op.evict(0);
    assert_eq!(store.lock().counts.len(), 8);
    // Both sides' watermarks on the join key pass keys 0 and 1, which are only stored.
    let mut watermarks = vec![None; schema().fields().len()];
    watermarks[0] = Some(ScalarValue::Int64(Some(2)));
    op.on_watermarks(&[&watermarks, &watermarks], &vec![]);
    op.on_barrier(Epoch(2), &mut out).unwrap();
    op.checkpoint(false, &mut *store.lock()).unwrap();
    op.checkpoint_durable();
    assert_eq!(
        store.lock().counts.len(),
        4,
        "the closed keys' rows are cleared from the store"
    );
}
