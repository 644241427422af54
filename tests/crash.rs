//! Crash safety: `kill -9` of the real `eddy` binary while writers are running, then restart.
//! Every acknowledged write must be there; nothing of an unacknowledged transaction may be.
//!
//! A short version runs in the test suite; `EDDY_CRASH_CYCLES=100 cargo test --release --test
//! crash` runs a longer one.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{EddyProcess, free_port};
use tokio_postgres::Client;

fn spawn(data_dir: &std::path::Path, port: u16) -> EddyProcess {
    EddyProcess::spawn_on(port, data_dir, &[], &[])
}

async fn connect(port: u16) -> Client {
    EddyProcess::connect_port(port).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_no_acknowledged_write() {
    let cycles: usize = std::env::var("EDDY_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(dir.path(), port);
    let setup = connect(port).await;
    setup
        .batch_execute(
            "CREATE TABLE acked (writer int, seq int, PRIMARY KEY (writer, seq));
             CREATE TABLE pairs (id int PRIMARY KEY, half text)",
        )
        .await
        .unwrap();
    drop(setup);

    // (writer, seq) of every acknowledged single-row insert, and ids of acknowledged two-row
    // transactions (a pair must be all there or all absent).
    let acked: Arc<Mutex<HashSet<(i32, i32)>>> = Arc::default();
    let pairs_acked: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let attempted: Arc<Mutex<HashSet<(i32, i32)>>> = Arc::default();
    let mut next_seq = 0i32;
    for cycle in 0..cycles {
        let mut writers = Vec::new();
        for writer in 0..4i32 {
            let acked = acked.clone();
            let pairs_acked = pairs_acked.clone();
            let attempted = attempted.clone();
            let start = next_seq;
            writers.push(tokio::spawn(async move {
                let mut client = connect(port).await;
                for seq in start.. {
                    attempted.lock().unwrap().insert((writer, seq));
                    let r = client
                        .execute("INSERT INTO acked VALUES ($1, $2)", &[&writer, &seq])
                        .await;
                    if r.is_err() {
                        break;
                    }
                    acked.lock().unwrap().insert((writer, seq));
                    if writer == 0 {
                        let id = seq;
                        let Ok(tx) = client.transaction().await else {
                            break;
                        };
                        let a = tx
                            .execute("INSERT INTO pairs VALUES ($1, 'a')", &[&(id * 2)])
                            .await;
                        let b = tx
                            .execute("INSERT INTO pairs VALUES ($1, 'b')", &[&(id * 2 + 1)])
                            .await;
                        if a.is_err() || b.is_err() || tx.commit().await.is_err() {
                            break;
                        }
                        pairs_acked.lock().unwrap().insert(id);
                    }
                }
            }));
        }
        // Let the writers run for a varying moment, then crash the server.
        tokio::time::sleep(Duration::from_millis(150 + (cycle as u64 * 37) % 300)).await;
        child.kill();
        for w in writers {
            w.await.unwrap();
        }
        next_seq += 100_000;

        child = spawn(dir.path(), port);
        let client = connect(port).await;
        let rows = client
            .query("SELECT writer, seq FROM acked", &[])
            .await
            .unwrap();
        let present: HashSet<(i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let acked_now = acked.lock().unwrap().clone();
        let missing: Vec<_> = acked_now.difference(&present).take(5).collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: acknowledged rows lost: {missing:?}"
        );
        // Unacknowledged in-flight rows may have landed, but nothing that was never sent.
        let attempted_now = attempted.lock().unwrap().clone();
        let phantom: Vec<_> = present.difference(&attempted_now).take(5).collect();
        assert!(
            phantom.is_empty(),
            "cycle {cycle}: rows nobody wrote: {phantom:?}"
        );

        let rows = client.query("SELECT id FROM pairs", &[]).await.unwrap();
        let ids: HashSet<i32> = rows.iter().map(|r| r.get(0)).collect();
        for id in &ids {
            assert!(
                ids.contains(&(id ^ 1)),
                "cycle {cycle}: half a transaction survived: {id}"
            );
        }
        for id in pairs_acked.lock().unwrap().iter() {
            assert!(
                ids.contains(&(id * 2)),
                "cycle {cycle}: acknowledged transaction {id} lost"
            );
        }
        eprintln!(
            "cycle {cycle}: {} acknowledged rows, {} present, {} transactions",
            acked_now.len(),
            present.len(),
            ids.len() / 2
        );
    }
    drop(child);
}

/// A subscriber that keeps only complete epochs (those a progress row closed) and resumes
/// `AS OF` its last complete epoch after each `kill -9` receives every acknowledged row exactly
/// once, and nothing that was never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_after_kill_dash_nine_with_no_gap_or_duplicate() {
    use futures::StreamExt;
    let cycles: usize = std::env::var("EDDY_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(dir.path(), port);
    connect(port)
        .await
        .batch_execute(
            "CREATE TABLE t (id bigint);
             CREATE MATERIALIZED VIEW v AS SELECT id FROM t WHERE id % 3 <> 1;",
        )
        .await
        .unwrap();
    let acked: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let attempted: Arc<Mutex<HashSet<i64>>> = Arc::default();
    // Rows of complete epochs, and the last complete epoch.
    let mut received: Vec<i64> = Vec::new();
    let mut complete: Option<i64> = None;
    let mut next = 0i64;
    for cycle in 0..=cycles {
        let reader = connect(port).await;
        let query = match complete {
            None => "COPY (SUBSCRIBE v WITH (PROGRESS)) TO STDOUT".to_string(),
            Some(e) => {
                format!("COPY (SUBSCRIBE v WITH (SNAPSHOT = false, PROGRESS) AS OF {e}) TO STDOUT")
            }
        };
        let mut lines = Box::pin(reader.copy_out(&query).await.unwrap());
        let writer = {
            let (acked, attempted) = (acked.clone(), attempted.clone());
            let start = next;
            tokio::spawn(async move {
                let client = connect(port).await;
                for id in start..start + 1_000_000 {
                    attempted.lock().unwrap().insert(id);
                    if client
                        .execute("INSERT INTO t VALUES ($1)", &[&id])
                        .await
                        .is_err()
                    {
                        break;
                    }
                    acked.lock().unwrap().insert(id);
                    if cycle == cycles && id >= start + 200 {
                        break;
                    }
                }
            })
        };
        next += 1_000_000;
        let crash = tokio::time::sleep(Duration::from_millis(300 + (cycle as u64 * 53) % 300));
        tokio::pin!(crash);
        let mut pending: Vec<i64> = Vec::new();
        let last_cycle = cycle == cycles;
        loop {
            let line = tokio::select! {
                _ = &mut crash, if !last_cycle => break,
                line = lines.next() => line,
            };
            let Some(Ok(line)) = line else {
                panic!("cycle {cycle}: the subscription ended: {line:?}")
            };
            let text = String::from_utf8(line.to_vec()).unwrap();
            let fields: Vec<&str> = text.trim_end().split('\t').collect();
            let epoch: i64 = fields[0].parse().unwrap();
            if fields[1] == "t" {
                // Everything up to `epoch` has been sent: keep it.
                received.append(&mut pending);
                complete = Some(epoch);
                if last_cycle && writer.is_finished() {
                    let acked = acked.lock().unwrap();
                    let got: HashSet<i64> = received.iter().copied().collect();
                    if acked
                        .iter()
                        .filter(|id| *id % 3 != 1)
                        .all(|id| got.contains(id))
                    {
                        break;
                    }
                }
                continue;
            }
            assert_eq!(fields[2], "1", "cycle {cycle}: only inserts: {text}");
            pending.push(fields[3].parse().unwrap());
        }
        if last_cycle {
            writer.await.unwrap();
            break;
        }
        child.kill();
        writer.await.unwrap();
        child = spawn(dir.path(), port);
    }
    let mut seen = HashSet::new();
    for id in &received {
        assert!(seen.insert(*id), "row {id} delivered twice");
        assert!(id % 3 != 1, "row {id} is not in the view");
    }
    let attempted = attempted.lock().unwrap();
    assert!(
        seen.is_subset(&attempted),
        "rows nobody wrote were delivered"
    );
    let acked = acked.lock().unwrap();
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| *id % 3 != 1 && !seen.contains(id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged rows never delivered: {missing:?}"
    );
    eprintln!(
        "{cycles} crashes: {} rows acknowledged, {} delivered once each",
        acked.len(),
        seen.len()
    );
    drop(child);
}

/// A second server on the same data directory refuses to start (and says why) instead of
/// corrupting the first one's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let first = spawn(dir.path(), port);
    connect(port)
        .await
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let second = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .output()
        .expect("eddy runs");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stdout).to_string()
        + &String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("is another eddy server using this data directory?"),
        "{stderr}"
    );
    // The first server is unharmed.
    let n: i64 = connect(port)
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(first);
}

/// A watermarked stream under `kill -9`: each acknowledged insert either wrote its row (tag
/// `INSERT 0 1`) or refused it as late (`INSERT 0 0`); after every restart the written ones are
/// all there, the refused ones are not, the late-row count covers the refusals, and the
/// windowed views (EMIT ON WINDOW CLOSE tumbling windows, SESSION windows) equal their batch
/// recomputation over the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermarked_stream_and_its_windows_survive_kill_dash_nine() {
    let cycles: usize = std::env::var("EDDY_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(dir.path(), port);
    let closed = "SELECT window_start, count(*) AS n, sum(v) AS sv \
                  FROM TUMBLE(ev, ts, INTERVAL '1 second') GROUP BY window_start";
    let sessions = "SELECT k, window_start, window_end, count(*) AS n \
                    FROM SESSION(ev, ts, INTERVAL '500 milliseconds', k) \
                    GROUP BY k, window_start, window_end";
    connect(port)
        .await
        .batch_execute(&format!(
            "CREATE TABLE ev (writer int, seq int, k int, v int, ts timestamp,
               WATERMARK FOR ts AS ts - INTERVAL '1 second') APPEND ONLY;
             CREATE MATERIALIZED VIEW closed AS {closed} EMIT ON WINDOW CLOSE;
             CREATE MATERIALIZED VIEW sessions AS {sessions};"
        ))
        .await
        .unwrap();
    // (writer, seq) of every insert acknowledged as written, as refused, and attempted.
    let written: Arc<Mutex<HashSet<(i32, i32)>>> = Arc::default();
    let refused: Arc<Mutex<HashSet<(i32, i32)>>> = Arc::default();
    let attempted: Arc<Mutex<HashSet<(i32, i32)>>> = Arc::default();
    let mut next_seq = 0i32;
    for cycle in 0..cycles {
        let mut writers = Vec::new();
        for writer in 0..2i32 {
            let (written, refused, attempted) =
                (written.clone(), refused.clone(), attempted.clone());
            let start = next_seq;
            writers.push(tokio::spawn(async move {
                let client = connect(port).await;
                for seq in start.. {
                    attempted.lock().unwrap().insert((writer, seq));
                    // 100 ms of event time per row; every 7th row 3 s back: late.
                    let back = if seq % 7 == 3 { 3000 } else { 0 };
                    let ms = i64::from(seq) * 100 - back;
                    let ts = chrono::DateTime::from_timestamp_millis(1_767_225_600_000 + ms)
                        .unwrap()
                        .naive_utc();
                    let r = client
                        .execute(
                            "INSERT INTO ev VALUES ($1, $2, $3, $4, $5)",
                            &[&writer, &seq, &(seq % 3), &(seq % 100), &ts],
                        )
                        .await;
                    match r {
                        Ok(1) => written.lock().unwrap().insert((writer, seq)),
                        Ok(_) => refused.lock().unwrap().insert((writer, seq)),
                        Err(e) => {
                            // The crash, normally.
                            eprintln!("writer {writer} stops at {seq}: {e:?}");
                            break;
                        }
                    };
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + (cycle as u64 * 41) % 300)).await;
        child.kill();
        for w in writers {
            w.await.unwrap();
        }
        next_seq += 100_000;

        child = spawn(dir.path(), port);
        let client = connect(port).await;
        let rows = client
            .query("SELECT writer, seq FROM ev", &[])
            .await
            .unwrap();
        let present: HashSet<(i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let written_now = written.lock().unwrap().clone();
        let refused_now = refused.lock().unwrap().clone();
        let lost: Vec<_> = written_now.difference(&present).take(5).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: written rows lost: {lost:?}"
        );
        let kept: Vec<_> = refused_now.intersection(&present).take(5).collect();
        assert!(
            kept.is_empty(),
            "cycle {cycle}: refused rows present: {kept:?}"
        );
        let phantom = present.difference(&attempted.lock().unwrap()).count();
        assert_eq!(phantom, 0, "cycle {cycle}: rows nobody wrote");
        let late: i64 = client
            .query_one("SELECT late_rows FROM eddy_catalog.watermarks", &[])
            .await
            .unwrap()
            .get(0);
        // Refusals acknowledged, plus those of unacknowledged writes that committed.
        let unacknowledged =
            attempted.lock().unwrap().len() - written_now.len() - refused_now.len();
        assert!(
            late as usize >= refused_now.len()
                && late as usize <= refused_now.len() + unacknowledged,
            "cycle {cycle}: {late} late rows counted, {} refusals acknowledged",
            refused_now.len()
        );
        let view = common::sorted_rows(&client, "SELECT * FROM closed").await;
        let batch = common::sorted_rows(
            &client,
            &format!(
                "{closed} HAVING window_start + INTERVAL '1 second' <= \
                 (SELECT watermark::timestamp FROM eddy_catalog.watermarks)"
            ),
        )
        .await;
        assert_eq!(view, batch, "cycle {cycle}: closed windows");
        assert!(
            !view.is_empty(),
            "cycle {cycle}: no window closed ({} rows written, {} refused)",
            written_now.len(),
            refused_now.len()
        );
        let closed_windows = view.len();
        let view = common::sorted_rows(&client, "SELECT * FROM sessions").await;
        let batch = common::sorted_rows(&client, sessions).await;
        assert_eq!(view, batch, "cycle {cycle}: sessions");
        eprintln!(
            "cycle {cycle}: {} rows written, {} refused as late ({late} counted), \
             {closed_windows} windows closed, {} sessions",
            written_now.len(),
            refused_now.len(),
            view.len()
        );
    }
    drop(child);
}
