//! Dataflow throughput per operator (rows of input per CPU-second, one thread, release build)
//! and end-to-end latency from an INSERT's acknowledgement to a view that reflects it.
//!
//! Run: `cargo bench --bench dataflow` (options: `-- --rows 10000000 --e2e 2000`).
//! Results are printed as a Markdown table for docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::{count::count_udaf, min_max::max_udaf, sum::sum_udaf};
use datafusion::logical_expr::{AggregateUDF, Operator as BinOp};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use eddy::dataflow::Operator;
use eddy::dataflow::ops::{filter_project::FilterProject, hash_agg::HashAggregate, join::Join};
use eddy::dataflow::spec::{AggregateCall, JoinKind, JoinSpec};
use eddy::types::{Epoch, ZBatch};

#[path = "../tests/common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 8192;

use common::arg;

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is field 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n) as i64
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
    ]))
}

/// `rows` rows of (k in 0..keys, v in 0..1000) in batches, all weight +1.
fn input(rows: usize, keys: u64, seed: u64) -> Vec<ZBatch> {
    let mut rng = Rng(seed | 1);
    (0..rows.div_ceil(BATCH))
        .map(|b| {
            let n = BATCH.min(rows - b * BATCH);
            let k: Int64Array = (0..n).map(|_| rng.below(keys)).collect();
            let v: Int64Array = (0..n).map(|_| rng.below(1000)).collect();
            let data =
                RecordBatch::try_new(schema(), vec![Arc::new(k) as ArrayRef, Arc::new(v)]).unwrap();
            ZBatch::uniform(data, 1)
        })
        .collect()
}

fn col(name: &str, i: usize) -> Arc<dyn PhysicalExpr> {
    Arc::new(Column::new(name, i))
}

fn lit(v: i64) -> Arc<dyn PhysicalExpr> {
    Arc::new(Literal::new(ScalarValue::Int64(Some(v))))
}

/// Feeds `batches` (port, batch) through `op` and a barrier; returns (rows/CPU-s, rows/wall-s,
/// output rows).
fn run(op: &mut dyn Operator, batches: Vec<(usize, ZBatch)>) -> (f64, f64, usize) {
    let rows: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
    let mut out_rows = 0;
    let cpu = thread_cpu();
    let wall = Instant::now();
    let mut out = Vec::new();
    for (port, b) in batches {
        op.on_batch(port, b, &mut out).unwrap();
        out_rows += out.iter().map(|b| b.num_rows()).sum::<usize>();
        out.clear();
    }
    op.on_barrier(Epoch(1), &mut out).unwrap();
    out_rows += out.iter().map(|b| b.num_rows()).sum::<usize>();
    let cpu = (thread_cpu() - cpu).as_secs_f64().max(1e-3);
    let wall = wall.elapsed().as_secs_f64();
    (rows as f64 / cpu, rows as f64 / wall, out_rows)
}

fn aggregate(f: Arc<AggregateUDF>, args: Vec<Arc<dyn PhysicalExpr>>, name: &str) -> AggregateCall {
    AggregateCall {
        func: Arc::new(
            AggregateExprBuilder::new(f, args)
                .schema(schema())
                .alias(name)
                .build()
                .unwrap(),
        ),
        filter: None,
    }
}

fn agg_op(aggs: Vec<AggregateCall>, append_only: bool) -> HashAggregate {
    let mut fields = vec![Field::new("k", DataType::Int64, true)];
    fields.extend(
        aggs.iter()
            .map(|a| Field::new(a.func.name(), a.func.field().data_type().clone(), true)),
    );
    HashAggregate::new(
        vec![col("k", 0)],
        aggs,
        &schema(),
        Arc::new(Schema::new(fields)),
        append_only,
    )
    .unwrap()
}

fn row(name: &str, detail: &str, (cpu, wall, out): (f64, f64, usize), goal: &str) {
    println!(
        "| {name} | {detail} | **{:.1} M rows/CPU-s** ({:.1} M rows/s wall, {out} rows out) | {goal} |",
        cpu / 1e6,
        wall / 1e6
    );
}

fn operators(rows: usize) {
    println!("| operator | input | throughput | goal |");
    println!("|---|---|---|---|");

    let mut fp = FilterProject::new(
        Some(Arc::new(BinaryExpr::new(col("v", 1), BinOp::Lt, lit(500)))),
        Some(vec![
            col("k", 0),
            Arc::new(BinaryExpr::new(
                Arc::new(BinaryExpr::new(col("v", 1), BinOp::Multiply, lit(2))),
                BinOp::Plus,
                lit(1),
            )),
        ]),
        schema(),
    );
    let batches = input(rows * 2, 1_000_000, 1)
        .into_iter()
        .map(|b| (0, b))
        .collect();
    row(
        "filter/project",
        &format!("{} rows, `WHERE v < 500`, `SELECT k, v * 2 + 1`", rows * 2),
        run(&mut fp, batches),
        "≥ 20 M",
    );

    let mut agg = agg_op(
        vec![
            aggregate(count_udaf(), vec![lit(1)], "n"),
            aggregate(sum_udaf(), vec![col("v", 1)], "s"),
        ],
        false,
    );
    let batches = input(rows, 100_000, 2)
        .into_iter()
        .map(|b| (0, b))
        .collect();
    row(
        "hash aggregate",
        &format!("{rows} rows, 100 k groups, `count(*), sum(v)`"),
        run(&mut agg, batches),
        "≥ 5 M",
    );

    for (append_only, what) in [
        (
            false,
            "any input (a multiset of values per group, correct under deletes)",
        ),
        (true, "APPEND ONLY input (the extreme only)"),
    ] {
        let mut agg = agg_op(
            vec![
                aggregate(count_udaf(), vec![lit(1)], "n"),
                aggregate(max_udaf(), vec![col("v", 1)], "m"),
            ],
            append_only,
        );
        let batches = input(rows, 100_000, 3)
            .into_iter()
            .map(|b| (0, b))
            .collect();
        row(
            "hash aggregate",
            &format!("{rows} rows, 100 k groups, `count(*), max(v)`, {what}"),
            run(&mut agg, batches),
            "≥ 5 M",
        );
    }

    let pair = Arc::new(Schema::new(
        schema()
            .fields()
            .iter()
            .chain(schema().fields().iter())
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let spec = JoinSpec {
        kind: JoinKind::Inner,
        on: vec![(col("k", 0), col("k", 0))],
        nulls_equal: false,
        filter: None,
        null_aware: false,
    };
    let mut join = Join::new(&spec, schema(), schema(), pair.clone(), pair).unwrap();
    let half = rows / 2;
    let left = input(half, half as u64, 4);
    let right = input(half, half as u64, 5);
    let batches: Vec<(usize, ZBatch)> = left
        .into_iter()
        .zip(right)
        .flat_map(|(l, r)| [(0, l), (1, r)])
        .collect();
    row(
        "inner join",
        &format!("{half} + {half} rows interleaved, {half} keys per side"),
        run(&mut join, batches),
        "≥ 2 M",
    );
}

async fn end_to_end(n: usize) {
    let (server, _dir) = common::start_in(Some(std::path::Path::new("."))).await;
    let client = common::connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE t (k bigint, v bigint);
             CREATE MATERIALIZED VIEW agg AS SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k;",
        )
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO t VALUES ($1, $2)")
        .await
        .unwrap();
    let read = client
        .prepare("SELECT n FROM agg WHERE k = $1")
        .await
        .unwrap();
    let mut total = Vec::with_capacity(n);
    let mut visible = Vec::with_capacity(n);
    for i in 0..n as i64 {
        let start = Instant::now();
        client.execute(&insert, &[&(i % 100), &i]).await.unwrap();
        let acked = Instant::now();
        let rows = client.query(&read, &[&(i % 100)]).await.unwrap();
        let n: i64 = rows[0].get(0);
        assert_eq!(n, i / 100 + 1, "the view reflects the insert");
        visible.push(acked.elapsed());
        total.push(start.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    println!();
    println!(
        "| end to end ({n} single-row INSERTs into a table with a grouped-aggregate view) | p50 | p99 | max |"
    );
    println!("|---|---|---|---|");
    for (name, v) in [
        (
            "INSERT acknowledged → SELECT of the view returns it (read-your-writes wait + query)",
            &mut visible,
        ),
        (
            "INSERT sent → view read back (whole round trip incl. fsync)",
            &mut total,
        ),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        let max = *v.last().unwrap();
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    server.shutdown().await;
}

fn main() {
    let rows = arg("--rows", 10_000_000) as usize;
    let e2e = arg("--e2e", 2000) as usize;
    operators(rows);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if e2e > 0 {
        runtime.block_on(end_to_end(e2e));
    }
}
