//! Recovery and checkpoints, with the release `eddy` binary as a child process.
//!
//! For each size (rows of `events`, loaded with COPY in 100,000-row transactions while three
//! views keep up — an aggregate, a join feeding an aggregate, a top-k):
//!
//! 1. load: rows/s, checkpoints written meanwhile (count, longest, bytes) and write
//!    amplification — bytes the server process wrote to storage (`/proc/<pid>/io`) per byte of
//!    COPY data;
//! 2. `kill -9` right after the load, restart: time until the server answers a query on a view,
//!    and what start-up did (rows loaded, log records replayed, views restored);
//! 3. history without state: 300 UPDATEs of 1,000 rows each (same rows, same state size, more
//!    log), `kill -9`, restart: the time should not grow with the history;
//! 4. clean shutdown (SIGTERM, a final checkpoint) and restart.
//!
//! The state size reported is the state store on disk after the clean shutdown (SST files,
//! compacted by RocksDB as it goes), plus the tables' rows in Arrow memory for reference.
//!
//! Run: `cargo bench --bench recovery` (options: `-- --rows 1100000,11000000`, about 100 MB and
//! 1 GB of state; `--memory-budget 64MB` is passed to the server; `--append-only` makes `events`
//! an APPEND ONLY stream, whose checkpointed rows are read from the state store, and step 3
//! then 300 INSERTs of 1,000 new rows). Prints Markdown tables for
//! docs/benchmarks.md, with the server's peak RSS during the load and its RSS once serving
//! after the clean restart.

use std::time::{Duration, Instant};

use futures::SinkExt;
use tokio_postgres::{Client, SimpleQueryMessage};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{EddyProcess, arg_list, status_mb};

/// One row of a one-row system view, as text by column name.
async fn system_row(client: &Client, view: &str) -> Vec<(String, String)> {
    let messages = client
        .simple_query(&format!("SELECT * FROM eddy_catalog.{view}"))
        .await
        .unwrap();
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            return r
                .columns()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                .collect();
        }
    }
    Vec::new()
}

fn field(row: &[(String, String)], name: &str) -> f64 {
    row.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

fn written_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Server flags from the bench's command line (`--memory-budget X`).
fn server_args() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--memory-budget") {
        Some(i) if i + 1 < args.len() => vec!["--memory-budget".into(), args[i + 1].clone()],
        _ => Vec::new(),
    }
}

fn spawn(data: &std::path::Path) -> EddyProcess {
    let args = server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    EddyProcess::spawn(data, &args, &[])
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

const SETUP: &str = "
    CREATE TABLE users (id bigint PRIMARY KEY, region text);
    CREATE TABLE events (id bigint PRIMARY KEY, user_id bigint, amount bigint, note text);
    CREATE MATERIALIZED VIEW per_user AS
        SELECT user_id, count(*) AS n, sum(amount) AS total FROM events GROUP BY user_id;
    CREATE MATERIALIZED VIEW per_region AS
        SELECT u.region, count(*) AS n, sum(e.amount) AS total
        FROM events e JOIN users u ON e.user_id = u.id GROUP BY u.region;
    CREATE MATERIALIZED VIEW top_events AS
        SELECT id, amount FROM events ORDER BY amount DESC, id LIMIT 10;
";

const USERS: u64 = 100_000;

/// Starts the server and waits until a view answers; returns the time that took.
async fn start_and_time(data: &std::path::Path) -> (EddyProcess, Client, Duration) {
    let started = Instant::now();
    let server = spawn(data);
    let client = EddyProcess::connect_within(server.port, Duration::from_secs(900)).await;
    client
        .batch_execute("SET statement_timeout = '600s'")
        .await
        .unwrap();
    client
        .simple_query("SELECT count(*) FROM per_user")
        .await
        .unwrap();
    (server, client, started.elapsed())
}

struct Outcome {
    rows: u64,
    load_rate: f64,
    copy_bytes: u64,
    amplification: f64,
    checkpoints: f64,
    longest_checkpoint_ms: f64,
    checkpoint_mb: f64,
    crash_restart: Duration,
    crash_recovery: Vec<(String, String)>,
    history_restart: Duration,
    history_recovery: Vec<(String, String)>,
    clean_restart: Duration,
    state_mb: f64,
    log_mb: f64,
    load_peak_rss_mb: f64,
    restarted_rss_mb: f64,
}

/// Whether `events` is APPEND ONLY (`--append-only`).
fn append_only() -> bool {
    std::env::args().any(|a| a == "--append-only")
}

async fn run(rows: u64) -> Outcome {
    let dir =
        tempfile::tempdir_in(std::env::var("EDDY_BENCH_DIR").unwrap_or("/tmp".into())).unwrap();
    let data = dir.path().join("data");
    let mut server = spawn(&data);
    let client = server.connect().await;
    let setup = if append_only() {
        SETUP.replace("note text);", "note text) APPEND ONLY;")
    } else {
        SETUP.to_string()
    };
    client.batch_execute(&setup).await.unwrap();
    // Reading a view waits for the dataflows to catch up with the load: let it.
    client
        .batch_execute("SET statement_timeout = '600s'")
        .await
        .unwrap();
    let mut users = String::new();
    for u in 0..USERS {
        users.push_str(&format!("{u}\tregion {}\n", u % 20));
    }
    let sink = client.copy_in("COPY users FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(users)).await.unwrap();
    sink.finish().await.unwrap();

    // 1. Load.
    let pid = server.pid();
    let written_before = written_bytes(pid);
    let started = Instant::now();
    let mut copy_bytes = 0u64;
    let mut longest: f64 = 0.0;
    let chunk_rows = 100_000u64;
    let mut next = 0u64;
    while next < rows {
        let n = chunk_rows.min(rows - next);
        let mut text = String::with_capacity(n as usize * 64);
        for id in next..next + n {
            text.push_str(&format!(
                "{id}\t{}\t{}\tevent number {id} with a little payload\n",
                (id * 7919) % USERS,
                (id * 104_729) % 1_000_003
            ));
        }
        copy_bytes += text.len() as u64;
        let sink = client.copy_in("COPY events FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(text)).await.unwrap();
        sink.finish().await.unwrap();
        next += n;
        let c = system_row(&client, "checkpoints").await;
        longest = longest.max(field(&c, "duration_ms"));
    }
    // Wait until the views are current (a SELECT waits for them) and a checkpoint covers it all.
    client
        .simple_query("SELECT count(*) FROM per_region")
        .await
        .unwrap();
    let load_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let c = system_row(&client, "checkpoints").await;
    longest = longest.max(field(&c, "duration_ms"));
    let written = written_bytes(pid) - written_before;
    let load_peak_rss_mb = status_mb(pid, "VmHWM");

    // 2. kill -9 and restart.
    drop(client);
    server.kill();
    let (mut server, client, crash_restart) = start_and_time(&data).await;
    let crash_recovery = system_row(&client, "recovery").await;

    // 3. More history, same state: 300 UPDATEs of 1,000 rows each (300,000 row updates), or
    // for a stream 300 INSERTs of 1,000 new rows.
    let mut total = rows;
    if append_only() {
        // generate_series takes literals only (DataFusion), so each INSERT is its own text.
        for i in 0..300u64 {
            let from = rows + i * 1000;
            client
                .batch_execute(&format!(
                    "INSERT INTO events SELECT i, i % 100000, i % 1000003, 'more' \
                     FROM generate_series({from}, {}) AS s(i)",
                    from + 999
                ))
                .await
                .unwrap();
        }
        total += 300_000;
    } else {
        let stmt = client
            .prepare("UPDATE events SET amount = amount + 1 WHERE id >= $1 AND id < $1 + 1000")
            .await
            .unwrap();
        for i in 0..300u64 {
            let from = ((i * 7_919 * 1000) % rows) as i64;
            client.execute(&stmt, &[&from]).await.unwrap();
        }
    }
    drop(client);
    server.kill();
    let (mut server, client, history_restart) = start_and_time(&data).await;
    let history_recovery = system_row(&client, "recovery").await;

    // 4. Clean shutdown and restart.
    drop(client);
    server.terminate();
    let state_mb = dir_bytes(&data.join("state")) as f64 / 1e6;
    let log_mb = dir_bytes(&data.join("log")) as f64 / 1e6;
    let (server, client, clean_restart) = start_and_time(&data).await;
    let n: i64 = client
        .query_one("SELECT sum(n) FROM per_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as u64, total);
    let restarted_rss_mb = status_mb(server.pid(), "VmRSS");
    Outcome {
        rows,
        load_rate: rows as f64 / load_secs,
        copy_bytes,
        amplification: written as f64 / copy_bytes as f64,
        checkpoints: field(&c, "checkpoints"),
        longest_checkpoint_ms: longest,
        checkpoint_mb: field(&c, "total_bytes") / 1e6,
        crash_restart,
        crash_recovery,
        history_restart,
        history_recovery,
        clean_restart,
        state_mb,
        log_mb,
        load_peak_rss_mb,
        restarted_rss_mb,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sizes = arg_list("--rows", "1100000,11000000");
    println!(
        "| events rows | state on disk | load (COPY, 3 views) | checkpoints during load: count / longest / written | write amplification | restart after kill -9 → serving | same after 300k row UPDATEs | restart after clean shutdown | peak RSS during load | RSS serving after clean restart |"
    );
    println!("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for rows in sizes {
        eprintln!("recovery bench: {rows} rows…");
        let o = runtime.block_on(run(rows));
        println!(
            "| {} | {:.0} MB (+ log {:.0} MB) | {:.0} rows/s | {:.0} / {:.0} ms / {:.0} MB | {:.1}× ({:.0} MB of COPY text) | {:.2} s (open {:.0} ms, {} records replayed) | {:.2} s ({} records replayed) | {:.2} s | {:.0} MB | {:.0} MB |",
            o.rows,
            o.state_mb,
            o.log_mb,
            o.load_rate,
            o.checkpoints,
            o.longest_checkpoint_ms,
            o.checkpoint_mb,
            o.amplification,
            o.copy_bytes as f64 / 1e6,
            o.crash_restart.as_secs_f64(),
            field(&o.crash_recovery, "open_ms"),
            field(&o.crash_recovery, "log_records_replayed"),
            o.history_restart.as_secs_f64(),
            field(&o.history_recovery, "log_records_replayed"),
            o.clean_restart.as_secs_f64(),
            o.load_peak_rss_mb,
            o.restarted_rss_mb,
        );
    }
}
