//! Ingest throughput, end to end over pgwire against an in-process server (release build):
//!
//! 1. `COPY t FROM STDIN` on one connection: rows/s.
//! 2. Single-row `INSERT` commits over 16 connections (autocommit, each waits for its fsync):
//!    commits/s — group commit lets concurrent commits share fsyncs.
//! 3. Single-row `UPDATE … WHERE id = $1` over 16 connections on a table of `--accounts` rows
//!    (default 1,000,000): commits/s. The key is looked up, not scanned for; the same UPDATE
//!    by a column that is not the key (a scan of the table) is timed for comparison.
//!
//! Run: `cargo bench --bench ingest` (options: `-- --rows 2000000 --seconds 10
//! --accounts 1000000`).
//! The data directory is a temporary directory on the same disk as the working directory.
//! Results are printed as a Markdown table for docs/benchmarks.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eddy::engine::EngineConfig;
use eddy::server::Server;
use futures::SinkExt;
use tokio_postgres::NoTls;

#[path = "../tests/common/mod.rs"]
mod common;

/// The same allocator as the `eddy` binary, so the numbers are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use common::arg;

async fn connect(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=eddy dbname=eddy"),
        NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    client
}

fn main() {
    let rows = arg("--rows", 2_000_000);
    let seconds = arg("--seconds", 10);
    let accounts = arg("--accounts", 1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir_in(".").unwrap();
        let server = Server::start_with(
            EngineConfig::new(dir.path().to_path_buf()),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let port = server.local_addr().port();
        let client = connect(port).await;
        client
            .batch_execute(
                "CREATE TABLE copy_target (id bigint, user_id bigint, amount double precision, note text, at timestamp);
                 CREATE TABLE commits (conn int, seq bigint, payload text, PRIMARY KEY (conn, seq));
                 CREATE TABLE accounts (id bigint PRIMARY KEY, owner bigint, balance bigint)",
            )
            .await
            .unwrap();

        // 1. COPY, one connection, data generated up front so only ingest is timed.
        let mut chunks = Vec::new();
        let mut chunk = String::with_capacity(1 << 20);
        for i in 0..rows {
            chunk.push_str(&format!(
                "{i}\t{}\t{}.{}\tnote number {i}\t2024-01-{:02} {:02}:{:02}:{:02}\n",
                i % 10_000,
                i % 1000,
                i % 100,
                1 + i % 28,
                i % 24,
                i % 60,
                (i * 7) % 60
            ));
            if chunk.len() > (1 << 20) {
                chunks.push(bytes::Bytes::from(std::mem::take(&mut chunk)));
            }
        }
        chunks.push(bytes::Bytes::from(chunk));
        let started = Instant::now();
        let sink = client.copy_in("COPY copy_target FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        for c in chunks {
            sink.send(c).await.unwrap();
        }
        let copied = sink.finish().await.unwrap();
        let copy_secs = started.elapsed().as_secs_f64();
        assert_eq!(copied, rows);
        let copy_rate = rows as f64 / copy_secs;

        // 2. Single-row INSERT commits over 16 connections.
        let connections = 16;
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        let started = Instant::now();
        for conn in 0..connections {
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let client = connect(port).await;
                let stmt = client.prepare("INSERT INTO commits VALUES ($1, $2, $3)").await.unwrap();
                let mut seq = 0i64;
                while Instant::now() < deadline {
                    client.execute(&stmt, &[&{ conn }, &seq, &"some payload"]).await.unwrap();
                    seq += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let insert_secs = started.elapsed().as_secs_f64();
        let commits = done.load(Ordering::Relaxed);
        let count: i64 = client.query_one("SELECT count(*) FROM commits", &[]).await.unwrap().get(0);
        assert_eq!(count as u64, commits);
        let commit_rate = commits as f64 / insert_secs;

        // 3. Single-row UPDATEs by primary key over 16 connections, then by another column.
        client
            .batch_execute(&format!(
                "INSERT INTO accounts SELECT i, i, 0 FROM generate_series(0, {}) AS s(i)",
                accounts - 1
            ))
            .await
            .unwrap();
        let update_rate = |filter: &'static str, connections: i32| {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let done = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..connections)
                .map(|conn| {
                    let done = done.clone();
                    tokio::spawn(async move {
                        let client = connect(port).await;
                        let stmt = client
                            .prepare(&format!(
                                "UPDATE accounts SET balance = balance + 1 WHERE {filter} = $1"
                            ))
                            .await
                            .unwrap();
                        let mut i = conn as i64;
                        while Instant::now() < deadline {
                            let n = client.execute(&stmt, &[&(i % accounts as i64)]).await.unwrap();
                            assert_eq!(n, 1);
                            i += 7919 * connections as i64;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let started = Instant::now();
            async move {
                for t in tasks {
                    t.await.unwrap();
                }
                let n = done.load(Ordering::Relaxed);
                (n, n as f64 / started.elapsed().as_secs_f64())
            }
        };
        let (by_key, by_key_rate) = update_rate("id", connections).await;
        let (by_scan, by_scan_rate) = update_rate("owner", connections).await;
        let total: i64 = client
            .query_one("SELECT sum(balance) FROM accounts", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(total as u64, by_key + by_scan);

        println!("| benchmark | result | goal |");
        println!("|---|---|---|");
        println!(
            "| COPY FROM STDIN, 1 connection, {rows} rows (5 columns) | {:.0} rows/s ({copy_secs:.2} s) | ≥ 500,000 rows/s |",
            copy_rate
        );
        println!(
            "| single-row INSERT, {connections} connections, {seconds} s | {:.0} commits/s ({commits} commits) | ≥ 20,000 commits/s |",
            commit_rate
        );
        println!(
            "| single-row UPDATE by primary key, {connections} connections, {accounts} rows, {seconds} s | {by_key_rate:.0} commits/s ({by_key} commits) | |"
        );
        println!(
            "| the same UPDATE by a column that is not the key (a scan) | {by_scan_rate:.0} commits/s ({by_scan} commits) | |"
        );
        server.shutdown().await;
    });
}
