//! Storage faults: a full disk or a failing fsync makes writes fail with a clear SQLSTATE while
//! reads keep working (and writes resume when space returns); corrupted files stop start-up with
//! an error naming them instead of losing data silently.
//!
//! Disk faults are injected into the real binary through `EDDY_TEST_FAULT_FILE` (a file whose
//! contents name the failing operation); when the test runs as root it also fills a real, small
//! tmpfs.

mod common;

use std::time::Duration;

use common::EddyProcess;
use tokio_postgres::Client;

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// The two columns of a query's rows.
async fn pairs<A, B>(client: &Client, sql: &str) -> Vec<(A, B)>
where
    A: for<'a> tokio_postgres::types::FromSql<'a>,
    B: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Views and tables agree with a recomputation.
async fn assert_consistent(client: &Client) {
    let view: Vec<(i32, i64)> = pairs(client, "SELECT k, n FROM per_k ORDER BY k").await;
    let table: Vec<(i32, i64)> =
        pairs(client, "SELECT k, count(*) FROM t GROUP BY k ORDER BY k").await;
    assert_eq!(view, table);
}

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, k int);
     CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n FROM t GROUP BY k;
     INSERT INTO t VALUES (1, 1), (2, 1), (3, 2);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_with_53100_reads_work_and_writes_resume_with_space() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults");
    let data = dir.path().join("data");
    let server = EddyProcess::spawn(
        &data,
        &["--checkpoint-interval", "50ms"],
        &[("EDDY_TEST_FAULT_FILE", faults.to_str().unwrap())],
    );
    let client = server.connect().await;
    client.batch_execute(SETUP).await.unwrap();

    std::fs::write(&faults, "write").unwrap();
    for id in 10..15 {
        let err = client
            .execute("INSERT INTO t VALUES ($1, 3)", &[&id])
            .await
            .unwrap_err();
        assert_eq!(code(&err), "53100", "{err}");
    }
    // A transaction that deletes and updates fails as a whole.
    let err = client
        .batch_execute("BEGIN; DELETE FROM t WHERE id = 1; UPDATE t SET k = 9 WHERE id = 2; COMMIT")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "53100", "{err}");
    // Reads keep working and show none of the failed writes.
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, 3);
    assert_eq!(count(&client, "SELECT sum(n) FROM per_k").await, 3);
    assert_consistent(&client).await;

    // Space returns: writes work again, and the failed ones never happened.
    std::fs::remove_file(&faults).unwrap();
    client
        .execute("INSERT INTO t VALUES (10, 3)", &[])
        .await
        .unwrap();
    client
        .batch_execute("DELETE FROM t WHERE id = 1; UPDATE t SET k = 9 WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, 3);
    assert_consistent(&client).await;
    let rows: Vec<(i32, i32)> = pairs(&client, "SELECT id, k FROM t ORDER BY id").await;
    assert_eq!(rows, [(2, 9), (3, 2), (10, 3)]);

    // And all of it survives a crash.
    drop(client);
    let mut server = server;
    server.kill();
    let server = EddyProcess::spawn(&data, &[], &[]);
    let client = server.connect().await;
    let after: Vec<(i32, i32)> = pairs(&client, "SELECT id, k FROM t ORDER BY id").await;
    assert_eq!(after, rows);
    assert_consistent(&client).await;
}

/// After a checkpoint fails to be written, the next one rewrites all state: an APPEND ONLY
/// table, whose checkpointed rows are no longer in memory, is rewritten from the stored rows,
/// and nothing is lost, through a `kill -9` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_checkpoint_is_followed_by_a_full_one_that_keeps_stored_table_rows() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults");
    let data = dir.path().join("data");
    let args = ["--checkpoint-interval", "20ms"];
    let env = [("EDDY_TEST_FAULT_FILE", faults.to_str().unwrap())];
    let mut server = EddyProcess::spawn(&data, &args, &env);
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, k int) APPEND ONLY;
             CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n FROM t GROUP BY k;
             CREATE MATERIALIZED VIEW evens AS SELECT id, k FROM t WHERE id % 2 = 0;
             INSERT INTO t SELECT i, i % 7 FROM generate_series(1, 5000) AS s(i);",
        )
        .await
        .unwrap();
    let stored = "SELECT table_rows_in_memory = 0 FROM eddy_catalog.memory";
    let checkpoints = "SELECT failures, full FROM eddy_catalog.checkpoints";
    let wait = |sql: &'static str, until: fn(&tokio_postgres::Row) -> bool| {
        let client = &client;
        async move {
            for _ in 0..1500 {
                let row = client.query_one(sql, &[]).await.unwrap();
                if until(&row) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("timed out waiting for {sql}");
        }
    };
    wait(stored, |r| r.get(0)).await;

    std::fs::write(&faults, "checkpoint").unwrap();
    client
        .batch_execute("INSERT INTO t SELECT i, i % 7 FROM generate_series(5001, 6000) AS s(i)")
        .await
        .unwrap();
    wait(checkpoints, |r| r.get::<_, i64>(0) > 0).await;
    assert_consistent(&client).await;
    std::fs::remove_file(&faults).unwrap();
    wait(checkpoints, |r| r.get(1)).await;
    wait(stored, |r| r.get(0)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, 6000);
    assert_consistent(&client).await;

    drop(client);
    server.kill();
    let server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, 6000);
    assert_eq!(
        count(
            &client,
            "SELECT table_rows_in_store FROM eddy_catalog.memory"
        )
        .await,
        6000,
        "the row count stored with the full checkpoint"
    );
    assert_consistent(&client).await;
    let evens: Vec<(i32, i32)> = pairs(&client, "SELECT id, k FROM evens ORDER BY id").await;
    let expected: Vec<(i32, i32)> =
        pairs(&client, "SELECT id, k FROM t WHERE id % 2 = 0 ORDER BY id").await;
    assert_eq!(evens.len(), 3000);
    assert_eq!(
        count(
            &client,
            "SELECT view_rows_in_store FROM eddy_catalog.memory"
        )
        .await,
        3000,
        "the view's row count stored with the full checkpoint"
    );
    assert_eq!(
        evens, expected,
        "the view's stored contents, rewritten in full"
    );
    let err = client
        .execute("INSERT INTO t VALUES (5500, 0)", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "23505", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_fails_writes_with_58030_until_restart_and_reads_work() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults");
    let data = dir.path().join("data");
    let mut server = EddyProcess::spawn(
        &data,
        &[],
        &[("EDDY_TEST_FAULT_FILE", faults.to_str().unwrap())],
    );
    let client = server.connect().await;
    client.batch_execute(SETUP).await.unwrap();
    std::fs::write(&faults, "sync").unwrap();
    let err = client
        .execute("INSERT INTO t VALUES (10, 3)", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "58030", "{err}");
    // After a failed fsync the kernel may have dropped the written pages: no more writes,
    // even once the fault is gone, until a restart re-reads the log.
    std::fs::remove_file(&faults).unwrap();
    let err = client
        .execute("INSERT INTO t VALUES (11, 3)", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "58030", "{err}");
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, 3);
    assert_consistent(&client).await;
    drop(client);
    server.kill();
    let server = EddyProcess::spawn(&data, &[], &[]);
    let client = server.connect().await;
    // The acknowledged rows are there; the unacknowledged one may be (its bytes were written).
    let n = count(&client, "SELECT count(*) FROM t WHERE id < 10").await;
    assert_eq!(n, 3);
    client
        .execute("INSERT INTO t VALUES (12, 3)", &[])
        .await
        .unwrap();
    assert_consistent(&client).await;
}

/// Fills a real (tmpfs) file system: the log write fails with ENOSPC, writes fail with 53100,
/// reads work, and writes resume once space is freed. Checkpoints fail meanwhile too (the state
/// store is on the same disk) while, under a budget of 0, operators evict whatever was durable:
/// after a `kill -9` the restart finds everything. Needs root to mount the tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_really_full_disk_when_root() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("not root (cannot mount a tmpfs): the injected-fault tests cover disk full");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let data = mount.join("data");
    let args = ["--memory-budget", "0", "--checkpoint-interval", "20ms"];
    let mut server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    client.batch_execute(SETUP).await.unwrap();
    client
        .batch_execute("CREATE TABLE big (id int PRIMARY KEY, s text)")
        .await
        .unwrap();
    // Fill the file system, leaving a little room.
    let filler = mount.join("filler");
    let free = {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&mount)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap()
    };
    std::fs::write(&filler, vec![0u8; free.saturating_sub(64 << 10) as usize]).ok();
    let big = "x".repeat(100_000);
    let mut error = None;
    for id in 100..1000 {
        if let Err(e) = client
            .execute("INSERT INTO t VALUES ($1, $2)", &[&id, &(id % 7)])
            .await
        {
            error = Some(e);
            break;
        }
        if let Err(e) = client
            .execute("INSERT INTO big VALUES ($1, $2)", &[&id, &big])
            .await
        {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("the disk filled up");
    eprintln!("on a full tmpfs: {error:?}");
    assert_eq!(code(&error), "53100", "{error}");
    let before = count(&client, "SELECT count(*) FROM t").await;
    assert_consistent(&client).await;
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .execute("INSERT INTO t VALUES (1000, 5)", &[])
        .await
        .unwrap();
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, before + 1);
    assert_consistent(&client).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    server.kill();
    let server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, before + 1);
    assert_consistent(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_state_or_log_files_stop_startup_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = EddyProcess::spawn(&data, &[], &[]);
    let client = server.connect().await;
    client.batch_execute(SETUP).await.unwrap();
    client
        .batch_execute("INSERT INTO t SELECT id, id % 10 FROM generate_series(100, 5000) AS s(id)")
        .await
        .unwrap();
    drop(client);
    // A clean shutdown writes a final checkpoint and flushes the state store to files.
    server.terminate();

    let startup_error = |data: &std::path::Path| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
            .arg("--data-dir")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", common::free_port()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "started despite the corruption");
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
    };

    // A flipped byte in the middle of a state file (an SST) is caught by its checksum: by
    // start-up when it reads that block, else by the check of the whole store that runs once
    // the server serves, which then stops it (rows of tables that spill are not read at
    // start-up, so which one catches it depends on where the byte is).
    let copy = dir.path().join("copy");
    copy_dir(&data, &copy);
    let sst = std::fs::read_dir(copy.join("state"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the state store has files");
    let mut bytes = std::fs::read(&sst).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    std::fs::write(&sst, bytes).unwrap();
    let message = startup_error(&copy);
    eprintln!("corrupted state file: {message}");
    let name = sst.file_name().unwrap().to_str().unwrap();
    assert!(
        message.contains(name) && message.to_lowercase().contains("corrupt"),
        "{message}"
    );

    // A flipped byte inside a log record that is not the last one.
    let copy = dir.path().join("copy2");
    copy_dir(&data, &copy);
    let seg = std::fs::read_dir(copy.join("log"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0x55;
    std::fs::write(&seg, bytes).unwrap();
    let message = startup_error(&copy);
    eprintln!("corrupted log segment: {message}");
    assert!(
        message.contains(seg.file_name().unwrap().to_str().unwrap()) && message.contains("corrupt"),
        "{message}"
    );

    // The untouched original still starts, with everything in it.
    let server = EddyProcess::spawn(&data, &[], &[]);
    let client = server.connect().await;
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, 4904);
    assert_consistent(&client).await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
