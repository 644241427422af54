//! Nexmark: each query of `benches/nexmark/*.sql` as a materialized view fed by the built-in
//! Nexmark source, measured in a fresh process per query and mode:
//!
//! - `embedded`: the engine in-process, statements run on a `Session` (no wire);
//! - `e2e`: the release `eddy` server as a child process, the statements sent by psql's
//!   protocol (tokio-postgres), and a subscriber reading the view's changes with
//!   `COPY (SUBSCRIBE q) TO STDOUT` the whole time.
//!
//! Each run creates the source (`max_events = N`, unlimited rate, seed 1, start time
//! 2025-01-01) and the view, waits until the source has written every event and the view has
//! caught up, and reports: events per CPU-second (user + system CPU of the process that runs
//! the engine, generator included, as DESIGN.md defines it), events per wall second, peak RSS
//! (`VmHWM`), the view's operator state (rows, and bytes held in memory) and rows. Then it
//! runs the same query ad hoc, which DataFusion computes from the tables in one batch (what a
//! user would do without Eddy), timing it the same way, and compares checksums of the two
//! results (an order-insensitive hash of the rows as text, floats rounded to 9 significant
//! digits); a mismatch fails the run. In `embedded` mode it then creates the view again and
//! times its backfill from the tables now written (the dataflow's work alone, without the
//! generator, log or checkpoints running beside it); its contents must be the same.
//!
//! `--workers 1,2` (default: 1 and one per core) runs Eddy with each number of dataflow
//! workers, and prints how events per second and the backfill scale against one.
//!
//! With `--features peers`, `--modes …,peer` also runs the peer engine, differential-dataflow
//! (one worker), on the same events for the queries written for it (`benches/nexmark/dd.rs`),
//! timed the same way; its results must equal Eddy's view.
//!
//! `--freshness RATE [--seconds S] --queries q0` runs instead a freshness test: the source at
//! RATE events per second, and a subscriber measuring each change's delay from its event's
//! generation (see [`freshness`]).
//!
//! `--chart FILE.svg` also draws the events per CPU-second as a bar chart.
//!
//! `--generator` first measures the generator alone (events per CPU-second of making the
//! Arrow rows), the ceiling for every query.
//!
//! Run: `cargo bench --bench nexmark -- --events 1000000 [--queries q0,q4] [--modes
//! embedded,e2e] [--checkpoint-interval 1s] [--generator]`. Prints a Markdown table for
//! docs/benchmarks.md.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(feature = "peers")]
#[path = "nexmark/dd.rs"]
mod dd;

use common::{EddyProcess, arg, nexmark_queries, query_rows, status_mb};
use eddy::engine::{Engine, EngineConfig, Output, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What one run of one query measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measured {
    query: String,
    mode: String,
    events: u64,
    cpu_s: f64,
    wall_s: f64,
    peak_rss_mb: f64,
    state_rows: i64,
    state_bytes: i64,
    view: Checksum,
    batch: Checksum,
    batch_cpu_s: f64,
    batch_wall_s: f64,
    /// Changes the subscriber received: the sum of their diffs' sizes (`e2e` only).
    subscribed_rows: Option<u64>,
    /// Dataflow worker threads (`--workers` of the server).
    workers: usize,
    /// The view created again once every event is written (`embedded` only).
    backfill: Option<Backfill>,
    /// CPU seconds by kind of thread (`embedded` only), most first.
    threads: Vec<(String, f64)>,
}

/// A view's backfill from tables already written.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Backfill {
    cpu_s: f64,
    wall_s: f64,
    view: Checksum,
}

impl Measured {
    /// The mode, and the workers when more than one.
    fn label(&self) -> String {
        match self.workers {
            1 => self.mode.clone(),
            n => format!("{}, {n} workers", self.mode),
        }
    }
}

/// An order-insensitive checksum of a multiset of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Checksum {
    rows: u64,
    hash: u64,
}

impl Checksum {
    fn of(rows: impl IntoIterator<Item = Vec<String>>) -> Checksum {
        let mut out = Checksum { rows: 0, hash: 0 };
        for row in rows {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for field in row {
                normalize(&field).hash(&mut h);
            }
            out.rows += 1;
            out.hash = out.hash.wrapping_add(h.finish());
        }
        out
    }
}

/// A float rounded to 9 significant digits (an incremental average and a batch one may differ
/// in the last bits); anything else as it is.
fn normalize(field: &str) -> String {
    if field.contains('.')
        && let Ok(v) = field.parse::<f64>()
    {
        return format!("{v:.8e}");
    }
    field.to_string()
}

fn create_source(events: u64) -> String {
    format!(
        "CREATE SOURCE nexmark FROM NEXMARK WITH (max_events = {events}, seed = 1, \
         start_time = '2025-01-01 00:00:00')"
    )
}

/// CPU seconds of this process's threads so far, summed by name with trailing numbers dropped
/// (`eddy-shard-0` and `eddy-shard-1` are `eddy-shard`), most first.
fn cpu_by_thread() -> Vec<(String, f64)> {
    let mut by_name: HashMap<String, f64> = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches(['-', ':', ' '])
            .to_string();
        let id = path.file_name().unwrap().to_string_lossy().to_string();
        *by_name.entry(name).or_default() += cpu_seconds(&format!("self/task/{id}"));
    }
    // Threads that ended (the source's, once it has written every event) are only in the
    // process's total.
    let gone = cpu_seconds("self") - by_name.values().sum::<f64>();
    if gone > 0.0 {
        by_name.insert("ended threads (the source)".into(), gone);
    }
    let mut out: Vec<(String, f64)> = by_name.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// User + system CPU seconds of process `pid` (`self` for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses): utime is field 14, stime 15, in 1/100 s.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn batches_to_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    rows
}

/// Runs `sql` on `session`; the rows it returns.
async fn exec(session: &mut Session, sql: &str) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for parsed in eddy::sql::parse_all(sql).unwrap() {
        match session.execute(&parsed, &[]).await {
            Ok(Output::Rows { mut stream, .. }) => {
                while let Some(batch) = stream.next().await {
                    out.push(batch.unwrap());
                }
            }
            Ok(_) => {}
            Err(e) => panic!("{sql}: {e}"),
        }
    }
    out
}

async fn embedded(
    query: &str,
    sql: &str,
    events: u64,
    checkpoint: &str,
    workers: usize,
) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path().to_path_buf());
    config.checkpoint_interval = eddy::types::parse_duration(checkpoint).unwrap();
    config.workers = workers;
    let engine = Engine::open(config).unwrap();
    engine.start().await.unwrap();
    let mut session = Session::new(engine.clone(), &HashMap::new(), 1).unwrap();
    let cpu = cpu_seconds("self");
    let wall = Instant::now();
    exec(&mut session, &create_source(events)).await;
    exec(
        &mut session,
        &format!("CREATE MATERIALIZED VIEW {query} AS {sql}"),
    )
    .await;
    engine.wait_for_source("nexmark").await.unwrap();
    drop(engine.pin_views(Duration::from_secs(3600)).await.unwrap());
    let (cpu_s, wall_s) = (cpu_seconds("self") - cpu, wall.elapsed().as_secs_f64());
    let peak_rss_mb = status_mb(std::process::id(), "VmHWM");
    let threads = cpu_by_thread();
    let state = exec(
        &mut session,
        &format!(
            "SELECT state_rows, state_bytes_in_memory FROM eddy_catalog.dataflows WHERE view_name = '{query}'"
        ),
    )
    .await;
    let state = batches_to_rows(&state);
    let view = Checksum::of(batches_to_rows(
        &exec(&mut session, &format!("SELECT * FROM {query}")).await,
    ));
    let cpu = cpu_seconds("self");
    let wall = Instant::now();
    let batch_rows = exec(&mut session, sql).await;
    let (batch_cpu_s, batch_wall_s) = (cpu_seconds("self") - cpu, wall.elapsed().as_secs_f64());
    let batch = Checksum::of(batches_to_rows(&batch_rows));
    // The same view again, now that every event is written: its backfill is the dataflow's
    // work alone (no generator, log or concurrent checkpoints), which is what workers split.
    let cpu = cpu_seconds("self");
    let wall = Instant::now();
    exec(
        &mut session,
        &format!("CREATE MATERIALIZED VIEW {query}_again AS {sql}"),
    )
    .await;
    let backfill = Backfill {
        cpu_s: cpu_seconds("self") - cpu,
        wall_s: wall.elapsed().as_secs_f64(),
        view: Checksum::of(batches_to_rows(
            &exec(&mut session, &format!("SELECT * FROM {query}_again")).await,
        )),
    };
    engine.close();
    Measured {
        query: query.into(),
        mode: "embedded".into(),
        events,
        cpu_s,
        wall_s,
        peak_rss_mb,
        state_rows: state[0][0].parse().unwrap(),
        state_bytes: state[0][1].parse().unwrap(),
        view,
        batch,
        batch_cpu_s,
        batch_wall_s,
        subscribed_rows: None,
        workers,
        backfill: Some(backfill),
        threads,
    }
}

async fn end_to_end(
    query: &str,
    sql: &str,
    events: u64,
    checkpoint: &str,
    workers: usize,
) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let server = EddyProcess::spawn(
        &dir.path().join("data"),
        &[
            "--checkpoint-interval",
            checkpoint,
            "--workers",
            &workers.to_string(),
        ],
        &[],
    );
    let pid = server.pid().to_string();
    let client = server.connect().await;
    let cpu = cpu_seconds(&pid);
    let wall = Instant::now();
    client
        .batch_execute(&format!(
            "{}; CREATE MATERIALIZED VIEW {query} AS {sql}",
            create_source(events)
        ))
        .await
        .unwrap();
    let subscriber = server.connect().await;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let subscribe = format!("COPY (SUBSCRIBE {query}) TO STDOUT");
    let reader = tokio::spawn(async move {
        let stream = subscriber.copy_out(subscribe.as_str()).await.unwrap();
        futures::pin_mut!(stream);
        // Each line is `epoch <tab> diff <tab> columns…`: count the rows the diffs add up to.
        let mut pending = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            pending.extend_from_slice(&chunk);
            let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let mut rows = 0u64;
            for line in pending[..end].split(|b| *b == b'\n') {
                let diff = line.split(|b| *b == b'\t').nth(1).unwrap_or(b"0");
                rows += std::str::from_utf8(diff)
                    .ok()
                    .and_then(|d| d.parse::<i64>().ok())
                    .unwrap_or(0)
                    .unsigned_abs();
            }
            pending.drain(..=end);
            counter.fetch_add(rows, Ordering::Relaxed);
        }
    });
    loop {
        let rows = query_rows(&client, "SHOW SOURCES").await;
        assert_eq!(rows[0][4], "NULL", "the source stopped: {rows:?}");
        if rows[0][3] == "t" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A read of the view waits (bounded) for it to cover every write.
    while client
        .simple_query(&format!("SELECT 1 FROM {query} LIMIT 1"))
        .await
        .is_err()
    {}
    let (cpu_s, wall_s) = (cpu_seconds(&pid) - cpu, wall.elapsed().as_secs_f64());
    let peak_rss_mb = status_mb(server.pid(), "VmHWM");
    // The subscriber has the view's changes once its count stops moving.
    let mut last = u64::MAX;
    while received.load(Ordering::Relaxed) != last {
        last = received.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    reader.abort();
    let state = query_rows(
        &client,
        &format!(
            "SELECT state_rows, state_bytes_in_memory FROM eddy_catalog.dataflows WHERE view_name = '{query}'"
        ),
    )
    .await;
    let view = Checksum::of(query_rows(&client, &format!("SELECT * FROM {query}")).await);
    let cpu = cpu_seconds(&pid);
    let wall = Instant::now();
    let batch = Checksum::of(query_rows(&client, sql).await);
    let (batch_cpu_s, batch_wall_s) = (cpu_seconds(&pid) - cpu, wall.elapsed().as_secs_f64());
    Measured {
        query: query.into(),
        mode: "e2e".into(),
        events,
        cpu_s,
        wall_s,
        peak_rss_mb,
        state_rows: state[0][0].parse().unwrap(),
        state_bytes: state[0][1].parse().unwrap(),
        view,
        batch,
        batch_cpu_s,
        batch_wall_s,
        subscribed_rows: Some(last),
        workers,
        backfill: None,
        threads: Vec::new(),
    }
}

/// The freshness run: the source at a fixed `rate` (events per second of wall time, its event
/// times following the wall clock) for `seconds`, the release server, and a subscriber to
/// `query`'s `date_time` column measuring, for each row it receives, now − `date_time`: the time
/// from the event's generation to its change reaching the client. The first second is left out
/// (start-up).
async fn freshness(query: &str, sql: &str, rate: u64, seconds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let server = EddyProcess::spawn(&dir.path().join("data"), &[], &[]);
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE nexmark FROM NEXMARK WITH (max_events = {}, events_per_second = {rate});
             CREATE MATERIALIZED VIEW {query} AS {sql}",
            rate * seconds
        ))
        .await
        .unwrap();
    let started = chrono::Utc::now().naive_utc();
    let subscriber = server.connect().await;
    let stream = subscriber
        .copy_out(format!("COPY (SUBSCRIBE (SELECT date_time FROM {query})) TO STDOUT").as_str())
        .await
        .unwrap();
    futures::pin_mut!(stream);
    let mut latencies: Vec<f64> = Vec::new();
    let mut pending = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds + 5);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline.into(), stream.next()).await {
        let now = chrono::Utc::now().naive_utc();
        pending.extend_from_slice(&chunk);
        let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        for line in pending[..end].split(|b| *b == b'\n') {
            // `epoch <tab> diff <tab> date_time`: rows with the same time (to the ms) in one
            // epoch come as one line whose diff counts them.
            let line = String::from_utf8_lossy(line);
            let fields: Vec<&str> = line.split('\t').collect();
            let (Some(diff), Some(at)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            let Ok(at) = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S%.f") else {
                continue;
            };
            if (at - started).num_milliseconds() >= 1000 {
                let latency = (now - at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                let rows = diff.parse::<i64>().unwrap_or(1).unsigned_abs() as usize;
                latencies.extend(std::iter::repeat_n(latency, rows));
            }
        }
        pending.drain(..=end);
        if Instant::now() > deadline {
            break;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "| {query} | {rate} events/s | {seconds} s | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        latencies.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
}

/// The peer engine (differential-dataflow) on the same events, if it has a version of `query`.
#[cfg(feature = "peers")]
fn peer(query: &str, events: u64) -> Option<Measured> {
    let options = eddy::catalog::NexmarkOptions {
        max_events: Some(events),
        events_per_second: 0,
        seed: 1,
        start_time_ms: 1_735_689_600_000,
    };
    let cpu = cpu_seconds("self");
    let wall = Instant::now();
    let rows = dd::run(query, &options, events)?;
    let (cpu_s, wall_s) = (cpu_seconds("self") - cpu, wall.elapsed().as_secs_f64());
    let view = Checksum::of(batches_to_rows(&rows));
    Some(Measured {
        query: query.into(),
        mode: "differential-dataflow".into(),
        events,
        cpu_s,
        wall_s,
        peak_rss_mb: status_mb(std::process::id(), "VmHWM"),
        state_rows: 0,
        state_bytes: 0,
        view,
        batch: view,
        batch_cpu_s: 0.0,
        batch_wall_s: 0.0,
        subscribed_rows: None,
        workers: 1,
        backfill: None,
        threads: Vec::new(),
    })
}

#[cfg(not(feature = "peers"))]
fn peer(_: &str, _: u64) -> Option<Measured> {
    None
}

/// A horizontal bar chart (SVG) of events per CPU-second, per query and mode, with the goals
/// as marks: written by hand, a few lines of SVG, rather than a plotting dependency.
fn chart(results: &[Measured], path: &str) {
    const ROW: f64 = 16.0;
    const LEFT: f64 = 90.0;
    const WIDTH: f64 = 560.0;
    let modes: Vec<String> = {
        let mut m: Vec<String> = results.iter().map(Measured::label).collect();
        m.sort();
        m.dedup();
        m
    };
    let colors = [
        "#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#718096",
    ];
    let rate = |m: &Measured| m.events as f64 / m.cpu_s.max(1e-9) / 1e6;
    let top = results.iter().map(rate).fold(2.5, f64::max) * 1.05;
    let x = |v: f64| LEFT + v / top * WIDTH;
    let mut queries: Vec<&str> = results.iter().map(|r| r.query.as_str()).collect();
    queries.dedup();
    let height = 40.0 + queries.len() as f64 * ROW * modes.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{height}' font-family='sans-serif' font-size='11'>\n\
         <rect width='100%' height='100%' fill='white'/>\n\
         <text x='{LEFT}' y='16' font-size='13'>Nexmark: million events per CPU-second ({} events per run)</text>\n",
        LEFT + WIDTH + 120.0,
        results.first().map_or(0, |r| r.events)
    );
    let mut y = 30.0;
    for q in &queries {
        svg += &format!(
            "<text x='4' y='{}'>{q}</text>\n",
            y + ROW * modes.len() as f64 / 2.0 + 4.0
        );
        for (i, mode) in modes.iter().enumerate() {
            if let Some(m) = results.iter().find(|r| r.query == *q && r.label() == *mode) {
                let v = rate(m);
                svg += &format!(
                    "<rect x='{LEFT}' y='{y}' width='{:.1}' height='{}' fill='{}'/>\n<text x='{:.1}' y='{}'>{v:.2}</text>\n",
                    x(v) - LEFT,
                    ROW - 3.0,
                    colors[i % colors.len()],
                    x(v) + 3.0,
                    y + ROW - 5.0
                );
            }
            y += ROW;
        }
        y += 4.0;
    }
    for (goal, label) in [(1.0, "goal, stateful: 1 M"), (2.5, "goal, q0–q2: 2.5 M")] {
        svg += &format!(
            "<line x1='{0:.1}' y1='26' x2='{0:.1}' y2='{y}' stroke='#c53030' stroke-dasharray='4 3'/>\n\
             <text x='{0:.1}' y='{1}' fill='#c53030' text-anchor='middle'>{label}</text>\n",
            x(goal),
            y + 14.0
        );
    }
    for (i, mode) in modes.iter().enumerate() {
        svg += &format!(
            "<rect x='{}' y='{}' width='10' height='10' fill='{}'/><text x='{}' y='{}'>{mode}</text>\n",
            LEFT + WIDTH + 10.0,
            40.0 + i as f64 * 16.0,
            colors[i % colors.len()],
            LEFT + WIDTH + 24.0,
            49.0 + i as f64 * 16.0
        );
    }
    svg += "</svg>\n";
    std::fs::write(path, svg).unwrap();
    eprintln!("chart written to {path}");
}

/// Per query and mode run with several worker counts: events per wall second and per
/// CPU-second with each, against one worker.
fn scaling(results: &[Measured]) {
    let mut lines = Vec::new();
    for one in results.iter().filter(|m| m.workers == 1) {
        for more in results.iter().filter(|m| {
            m.workers > 1 && m.query == one.query && m.mode == one.mode && m.events == one.events
        }) {
            let wall = |m: &Measured| m.events as f64 / m.wall_s / 1e3;
            let cpu = |m: &Measured| m.events as f64 / m.cpu_s / 1e3;
            let backfill = match (&one.backfill, &more.backfill) {
                (Some(a), Some(b)) => format!(
                    "{:.2} s | {:.2} s | {:.2}×",
                    a.wall_s,
                    b.wall_s,
                    a.wall_s / b.wall_s
                ),
                _ => "– | – | –".into(),
            };
            lines.push(format!(
                "| {} | {} | {:.0} k | {} | {:.0} k | {:.2}× | {:.0} k | {:.0} k | {backfill} |",
                one.query,
                one.mode,
                wall(one),
                more.workers,
                wall(more),
                wall(more) / wall(one),
                cpu(one),
                cpu(more),
            ));
        }
    }
    if lines.is_empty() {
        return;
    }
    println!(
        "\n| query | mode | events / s, 1 worker | workers | events / s | speed-up | events / CPU-s, 1 worker | events / CPU-s | backfill, 1 worker | backfill | backfill speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for line in lines {
        println!("{line}");
    }
}

/// Where each embedded run's CPU went, by thread.
fn threads(results: &[Measured]) {
    let runs: Vec<&Measured> = results.iter().filter(|m| !m.threads.is_empty()).collect();
    if runs.is_empty() {
        return;
    }
    println!(
        "\n| query | mode | CPU s by thread (whole run, batch query excluded) |\n|---|---|---|"
    );
    for m in runs {
        let list: Vec<String> = m
            .threads
            .iter()
            .filter(|(_, s)| *s >= 0.05)
            .map(|(name, s)| format!("{name} {s:.2}"))
            .collect();
        println!("| {} | {} | {} |", m.query, m.label(), list.join(", "));
    }
}

/// The generator alone: Arrow rows for `events` events, in chunks as the source makes them.
fn generator(events: u64) {
    let options = eddy::catalog::NexmarkOptions {
        max_events: Some(events),
        events_per_second: 0,
        seed: 1,
        start_time_ms: 1_735_689_600_000,
    };
    let generator = eddy::connectors::nexmark::Generator::new(&options);
    let cpu = cpu_seconds("thread-self");
    let mut next = 0;
    while next < events {
        let to = (next + 10_000).min(events);
        std::hint::black_box(generator.generate(next, to).unwrap());
        next = to;
    }
    let cpu = cpu_seconds("thread-self") - cpu;
    println!(
        "Generator alone: {events} events in {cpu:.2} CPU s = {:.2} M events per CPU-second\n",
        events as f64 / cpu / 1e6
    );
}

fn child(args: &[String]) {
    let (mode, query, events, checkpoint) =
        (&args[0], &args[1], args[2].parse().unwrap(), &args[3]);
    let workers: usize = args[4].parse().unwrap();
    let sql = nexmark_queries()
        .into_iter()
        .find(|(name, _)| name == query)
        .unwrap_or_else(|| panic!("no query {query}"))
        .1;
    if mode == "peer" {
        if let Some(measured) = peer(query, events) {
            println!("RESULT {}", serde_json::to_string(&measured).unwrap());
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let measured = runtime.block_on(async {
        match mode.as_str() {
            "embedded" => embedded(query, &sql, events, checkpoint, workers).await,
            "e2e" => end_to_end(query, &sql, events, checkpoint, workers).await,
            other => panic!("no mode {other}"),
        }
    });
    println!("RESULT {}", serde_json::to_string(&measured).unwrap());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1..]);
        return;
    }
    let events = arg("--events", 1_000_000);
    let list = |name: &str| -> Option<Vec<String>> {
        let i = args.iter().position(|a| a == name)?;
        Some(args.get(i + 1)?.split(',').map(String::from).collect())
    };
    let all = nexmark_queries();
    let selected: Vec<String> =
        list("--queries").unwrap_or_else(|| all.iter().map(|(name, _)| name.clone()).collect());
    let modes = list("--modes").unwrap_or_else(|| {
        let mut modes = vec!["embedded".to_string(), "e2e".to_string()];
        if cfg!(feature = "peers") {
            modes.push("peer".into());
        }
        modes
    });
    // Dataflow workers to run Eddy with: by default one, then one per core.
    let workers: Vec<usize> = list("--workers")
        .map(|w| w.iter().map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| {
            let cores = eddy::engine::default_workers();
            if cores > 1 { vec![1, cores] } else { vec![1] }
        });
    let checkpoint = list("--checkpoint-interval")
        .and_then(|v| v.into_iter().next())
        .unwrap_or_else(|| "1s".into());
    if args.iter().any(|a| a == "--generator") {
        generator(events);
    }
    let rate = arg("--freshness", 0);
    if rate > 0 {
        let seconds = arg("--seconds", 20);
        println!(
            "| query | source rate | run | rows measured | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|---|"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        for query in &selected {
            let sql = &all.iter().find(|(name, _)| name == query).unwrap().1;
            runtime.block_on(freshness(query, sql, rate, seconds));
        }
        return;
    }
    let mut results = Vec::new();
    let mut runs = Vec::new();
    for query in &selected {
        for mode in &modes {
            // The peer runs one worker, once.
            let counts: &[usize] = if mode == "peer" { &[1] } else { &workers };
            runs.extend(counts.iter().map(|w| (query, mode, *w)));
        }
    }
    for (query, mode, workers) in runs {
        {
            eprintln!("{query} {mode} ({workers} workers) …");
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--child",
                    mode,
                    query,
                    &events.to_string(),
                    &checkpoint,
                    &workers.to_string(),
                ])
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
                if mode == "peer" && output.status.success() {
                    eprintln!("  (the peer has no version of {query})");
                    continue;
                }
                panic!("{query} {mode} failed: {stdout}");
            };
            let m: Measured = serde_json::from_str(line).unwrap();
            eprintln!(
                "  {:.2} M events per CPU-second, checksum {}",
                m.events as f64 / m.cpu_s / 1e6,
                if m.view == m.batch { "ok" } else { "MISMATCH" }
            );
            results.push(m);
        }
    }
    println!(
        "| query | mode | events | CPU s | events / CPU-s | wall s | events / s | peak RSS MB | state rows | state MB in memory | view rows | changes to the subscriber | DataFusion batch: CPU s | batch events / CPU-s | checksum |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in &results {
        let peer = m.mode == "differential-dataflow";
        let dash = |v: String| if peer { "–".to_string() } else { v };
        println!(
            "| {} | {} | {} | {:.2} | {:.0} k | {:.2} | {:.0} k | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            m.query,
            m.label(),
            m.events,
            m.cpu_s,
            m.events as f64 / m.cpu_s / 1e3,
            m.wall_s,
            m.events as f64 / m.wall_s / 1e3,
            m.peak_rss_mb,
            dash(m.state_rows.to_string()),
            dash(format!("{:.1}", m.state_bytes as f64 / 1e6)),
            m.view.rows,
            m.subscribed_rows.map_or("–".to_string(), |n| n.to_string()),
            dash(format!("{:.2}", m.batch_cpu_s)),
            dash(format!(
                "{:.0} k",
                m.events as f64 / m.batch_cpu_s.max(0.01) / 1e3
            )),
            if peer {
                "= Eddy's view"
            } else if m.view == m.batch {
                "ok"
            } else {
                "MISMATCH"
            },
        );
    }
    scaling(&results);
    threads(&results);
    if let Some(path) = list("--chart").and_then(|v| v.into_iter().next()) {
        chart(&results, &path);
    }
    // The peer's contents against Eddy's view of the same query, read the same way: as Arrow
    // (embedded), not as PostgreSQL text (e2e), whose timestamps and floats print otherwise.
    let peer_mismatch: Vec<&str> = results
        .iter()
        .filter(|p| p.mode == "differential-dataflow")
        .filter(|p| {
            results
                .iter()
                .any(|m| m.query == p.query && m.mode == "embedded" && m.view != p.view)
        })
        .map(|p| p.query.as_str())
        .collect();
    if !peer_mismatch.is_empty() {
        eprintln!("the peer's results differ from Eddy's for {peer_mismatch:?}");
        std::process::exit(1);
    }
    if results
        .iter()
        .any(|m| m.view != m.batch || m.backfill.as_ref().is_some_and(|b| b.view != m.view))
    {
        eprintln!("a view differs from its query run in batch, or from its backfill");
        std::process::exit(1);
    }
}
