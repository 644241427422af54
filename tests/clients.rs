//! Real clients against an in-process server: psql printing `COPY (SUBSCRIBE …) TO STDOUT` live
//! and stopped with Ctrl-C, and psycopg 3 (tests/clients/*.py, run with the Python that the
//! README's set-up command prepares in ~/.cache/eddy-venv; `EDDY_PYTHON` overrides it).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod common;
use common::{connect, start};

const WAIT: Duration = Duration::from_secs(20);

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("EDDY_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = PathBuf::from(home).join(".cache/eddy-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run ./eddy.sh test (its set-up installs psycopg there), or set EDDY_PYTHON",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_prints_subscription_lines_as_they_happen_and_stops_on_ctrl_c() {
    let (server, _dir) = start().await;
    let writer = connect(&server).await;
    writer
        .batch_execute(
            "CREATE TABLE bids (auction bigint, price bigint);
             CREATE MATERIALIZED VIEW hot AS SELECT auction, max(price) AS top FROM bids GROUP BY auction;
             INSERT INTO bids VALUES (1, 100);",
        )
        .await
        .unwrap();
    // In a terminal psql's output is line-buffered; stdbuf gives the pipe the same.
    let mut psql = Command::new("stdbuf")
        .args(["-oL", "psql", "-X", "-h", "127.0.0.1", "-p"])
        .arg(server.local_addr().port().to_string())
        .args([
            "-U",
            "eddy",
            "-d",
            "eddy",
            "-c",
            "COPY (SUBSCRIBE hot) TO STDOUT",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("psql and stdbuf are installed (see README's set-up command)");
    let mut lines = BufReader::new(psql.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("psql printed a line in time")
            .unwrap()
            .expect("psql is still running")
    };
    let fields = |line: &str| {
        line.split('\t')
            .skip(1)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(fields(&next().await), ["1", "1", "100"]);
    writer
        .execute("INSERT INTO bids VALUES (1, 150), (2, 10)", &[])
        .await
        .unwrap();
    let mut change = vec![
        fields(&next().await),
        fields(&next().await),
        fields(&next().await),
    ];
    change.sort();
    assert_eq!(
        change,
        [
            vec!["-1", "1", "100"],
            vec!["1", "1", "150"],
            vec!["1", "2", "10"]
        ]
    );
    // Ctrl-C: psql sends a CancelRequest and exits.
    // (stdbuf execs psql: the pid is psql's.)
    let pid = psql.id().unwrap().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    let output = tokio::time::timeout(WAIT, psql.wait_with_output())
        .await
        .expect("psql exits after Ctrl-C")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n: i64 = writer
            .query_one("SELECT count(*) FROM eddy_catalog.subscriptions", &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscription is still listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_streams_resumes_as_of_and_fetches_with_a_timeout() {
    let (server, _dir) = start().await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/psycopg_subscribe.py");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(python())
            .arg(&script)
            .arg(server.local_addr().port().to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the psycopg script finished in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "psycopg script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("3 scenarios passed"), "{stdout}");
    server.shutdown().await;
}
