//! Windowed aggregation over an unbounded stream, with the release `eddy` binary as a child
//! process: does memory stay flat as events keep coming?
//!
//! A `bid` stream (APPEND ONLY, `WATERMARK FOR date_time AS date_time - INTERVAL '1 second'`)
//! is loaded with COPY in 100,000-row transactions; event time advances 1 ms per event, with
//! jitter of up to 0.5 s inside each transaction (out of order, never late). Two views keep up:
//!
//! - `per_second`: count, sum and max of price per 1-second tumbling window, EMIT ON WINDOW
//!   CLOSE (its contents are append-only, so they move to the state store);
//! - `per_auction`: bids per auction (1,000 of them) per 10-second tumbling window, also
//!   EMIT ON WINDOW CLOSE; with `--updating`, updated as bids arrive instead (its contents,
//!   one row per auction and window, then stay in memory and grow with the stream).
//!
//! With `--temporal`, the server runs on a manual clock moved to the last event's time after
//! each transaction, and a third view keeps bids per auction over the last 10 seconds with a
//! temporal filter (`WHERE date_time > now() - INTERVAL '10 seconds'`): its rows leave as the
//! clock passes, so its state (the last 10 s of bids, 10,000 rows) must stay flat too.
//!
//! One server takes the whole stream; at each milestone (1M, 5M, 10M, 20M events by default)
//! the load pauses for a measurement: load rate, the server's RSS at rest (`VmRSS`, once the
//! last checkpoint is written) and peak RSS so far (`VmHWM`), the operators' state rows
//! (`eddy_catalog.dataflows`: closed windows are freed) and the views' rows. Constant memory
//! shows as RSS and state rows that stop growing while the events go on.
//!
//! Run: `cargo bench --bench windows` (options: `-- --events 1000000,5000000,10000000,20000000 --updating --temporal`).
//! Prints a Markdown table for docs/benchmarks.md.

use std::time::{Duration, Instant};

use futures::SinkExt;
use tokio_postgres::{Client, SimpleQueryMessage};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{EddyProcess, arg_list, status_mb};

const SETUP: &str = "
    CREATE TABLE bid (auction bigint, bidder bigint, price bigint, date_time timestamp,
        WATERMARK FOR date_time AS date_time - INTERVAL '1 second') APPEND ONLY;
    CREATE MATERIALIZED VIEW per_second AS
        SELECT window_start, count(*) AS bids, sum(price) AS total, max(price) AS top
        FROM TUMBLE(bid, date_time, INTERVAL '1' SECOND) GROUP BY window_start
        EMIT ON WINDOW CLOSE;
    CREATE MATERIALIZED VIEW per_auction AS
        SELECT auction, window_start, count(*) AS bids
        FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY auction, window_start
        EMIT ON WINDOW CLOSE;
";

fn updating() -> bool {
    std::env::args().any(|a| a == "--updating")
}

fn temporal() -> bool {
    std::env::args().any(|a| a == "--temporal")
}

const TEMPORAL_VIEW: &str = "
    CREATE MATERIALIZED VIEW recent AS
        SELECT auction, count(*) AS bids FROM bid
        WHERE date_time > now() - INTERVAL '10 seconds' GROUP BY auction;
";

/// 2026-01-01 00:00:00 UTC in ms.
const START_MS: i64 = 1_767_225_600_000;

async fn one_value(client: &Client, sql: &str) -> String {
    for m in client.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("NULL").to_string();
        }
    }
    String::new()
}

fn timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let t =
        chrono::DateTime::from_timestamp(secs, (ms.rem_euclid(1000) * 1_000_000) as u32).unwrap();
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// Where the server stands after `events` events.
struct Milestone {
    events: u64,
    rate: f64,
    rss_mb: f64,
    peak_rss_mb: f64,
    state_rows: String,
    per_second_rows: String,
    per_auction_rows: String,
    late_rows: String,
}

/// Loads events into one server, stopping at each of `milestones` (ascending) to measure.
async fn run(milestones: &[u64]) -> Vec<Milestone> {
    let dir =
        tempfile::tempdir_in(std::env::var("EDDY_BENCH_DIR").unwrap_or("/tmp".into())).unwrap();
    let data = dir.path().join("data");
    let clock = format!("manual:{}", timestamp(START_MS));
    let args: Vec<&str> = if temporal() {
        vec!["--clock", &clock]
    } else {
        vec![]
    };
    let server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    let mut setup = if updating() {
        SETUP.replace(
            "GROUP BY auction, window_start\n        EMIT ON WINDOW CLOSE;",
            "GROUP BY auction, window_start;",
        )
    } else {
        SETUP.to_string()
    };
    assert!(updating() != setup.contains("auction, window_start\n        EMIT"));
    if temporal() {
        setup.push_str(TEMPORAL_VIEW);
    }
    client.batch_execute(&setup).await.unwrap();
    client
        .batch_execute("SET statement_timeout = '600s'")
        .await
        .unwrap();
    let started = Instant::now();
    let mut paused = Duration::ZERO;
    let chunk = 100_000u64;
    let mut next = 0u64;
    let mut out = Vec::new();
    for &events in milestones {
        while next < events {
            let n = chunk.min(events - next);
            let mut text = String::with_capacity(n as usize * 48);
            for i in next..next + n {
                // Up to 0.5 s early, deterministic; the first 500 of each chunk never before
                // the chunk's start, so no row is late.
                let jitter = if i - next < 500 {
                    0
                } else {
                    ((i * 7919) % 500) as i64
                };
                let ms = START_MS + i as i64 - jitter;
                text.push_str(&format!(
                    "{}\t{}\t{}\t{}\n",
                    (i * 104_729) % 1000,
                    i % 10_007,
                    (i * 31) % 100_000,
                    timestamp(ms)
                ));
            }
            let sink = client.copy_in("COPY bid FROM STDIN").await.unwrap();
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::from(text)).await.unwrap();
            sink.finish().await.unwrap();
            next += n;
            if temporal() {
                let now = timestamp(START_MS + next as i64 - 1);
                client
                    .batch_execute(&format!("ADVANCE CLOCK TO '{now}'"))
                    .await
                    .unwrap();
            }
        }
        // A SELECT of a view waits until the views have caught up.
        let per_second_rows = one_value(&client, "SELECT count(*) FROM per_second").await;
        let rate = events as f64 / (started.elapsed() - paused).as_secs_f64();
        let pause = Instant::now();
        let per_auction_rows = one_value(&client, "SELECT count(*) FROM per_auction").await;
        let state_rows = one_value(
            &client,
            "SELECT string_agg(view_name || ' ' || state_rows, ', ' ORDER BY view_name) FROM eddy_catalog.dataflows",
        )
        .await;
        let late_rows = one_value(&client, "SELECT late_rows FROM eddy_catalog.watermarks").await;
        // Let the checkpoint of the last rows finish: RSS at rest.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        out.push(Milestone {
            events,
            rate,
            rss_mb: status_mb(server.pid(), "VmRSS"),
            peak_rss_mb: status_mb(server.pid(), "VmHWM"),
            state_rows,
            per_second_rows,
            per_auction_rows,
            late_rows,
        });
        paused += pause.elapsed();
    }
    out
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let milestones = arg_list("--events", "1000000,5000000,10000000,20000000");
    println!(
        "| events loaded | per_auction | load rate so far (COPY, 2 views) | RSS at rest | peak RSS so far | operator state rows | per_second rows | per_auction rows | late rows |"
    );
    println!("|---:|---|---:|---:|---:|---|---:|---:|---:|");
    eprintln!("windows bench: up to {:?} events…", milestones.last());
    for m in runtime.block_on(run(&milestones)) {
        println!(
            "| {} | {} | {:.0} events/s | {:.0} MB | {:.0} MB | {} | {} | {} | {} |",
            m.events,
            match (updating(), temporal()) {
                (true, _) => "updating",
                (false, true) => "EOWC, + recent (temporal)",
                _ => "EOWC",
            },
            m.rate,
            m.rss_mb,
            m.peak_rss_mb,
            m.state_rows,
            m.per_second_rows,
            m.per_auction_rows,
            m.late_rows
        );
    }
}
