//! Real clients against an in-process server: psql printing `COPY (SUBSCRIBE …) TO STDOUT` live
//! and stopped with Ctrl-C, and the six drivers of docs/clients.md running one scenario each
//! (connect; a table of every type written with parameters and read back in text and binary;
//! errors with their SQLSTATE; a materialized view; SUBSCRIBE through a cursor):
//!
//! - psycopg 3 and asyncpg (tests/clients/*.py), with the Python of the venv the README's
//!   set-up command prepares in ~/.cache/eddy-venv (`EDDY_PYTHON` overrides it);
//! - node-postgres (tests/clients/node_pg_e2e.js), with the `pg` package the set-up installs
//!   in ~/.cache/eddy-node (`EDDY_NODE_MODULES` overrides it);
//! - pgjdbc (tests/clients/JdbcE2e.java), Debian's libpostgresql-jdbc-java run by `java`;
//! - tokio-postgres, here in Rust;
//! - psql: here and in tests/psql.rs.

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

/// PostgreSQL's interval in binary (tokio-postgres has no Rust type for it).
#[derive(Debug, PartialEq)]
struct Interval {
    months: i32,
    days: i32,
    micros: i64,
}

impl tokio_postgres::types::ToSql for Interval {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i64(self.micros);
        out.put_i32(self.days);
        out.put_i32(self.months);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::INTERVAL
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> tokio_postgres::types::FromSql<'a> for Interval {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let raw: [u8; 16] = raw.try_into()?;
        Ok(Interval {
            micros: i64::from_be_bytes(raw[0..8].try_into()?),
            days: i32::from_be_bytes(raw[8..12].try_into()?),
            months: i32::from_be_bytes(raw[12..16].try_into()?),
        })
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::INTERVAL
    }
}

fn home_cache(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache")
        .join(name)
}

/// Runs a client program against a fresh server: its last argument is the server's port. It
/// must exit 0 and print `expected`.
async fn run_client(mut command: Command, expected: &str) {
    let (server, _dir) = start().await;
    command
        .arg(server.local_addr().port().to_string())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} finished in time"))
        .unwrap_or_else(|e| panic!("{command:?} starts (see README's set-up command): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(expected),
        "{command:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_runs_the_driver_scenario() {
    let mut command = Command::new(python());
    command.arg("tests/clients/psycopg_e2e.py");
    run_client(command, "psycopg: ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_runs_the_driver_scenario() {
    let mut command = Command::new(python());
    command.arg("tests/clients/asyncpg_e2e.py");
    run_client(command, "asyncpg: ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_runs_the_driver_scenario() {
    let modules = std::env::var_os("EDDY_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_cache("eddy-node/node_modules"));
    assert!(
        modules.join("pg").exists(),
        "{} has no `pg`: run ./eddy.sh test (its set-up installs it), or set EDDY_NODE_MODULES",
        modules.display()
    );
    let mut command = Command::new("node");
    command
        .arg("tests/clients/node_pg_e2e.js")
        .env("NODE_PATH", modules)
        .env("TZ", "UTC");
    run_client(command, "node-postgres: ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_runs_the_driver_scenario_and_lists_tables_columns_and_keys() {
    let jar = std::env::var("EDDY_PGJDBC_JAR")
        .unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into());
    assert!(
        std::path::Path::new(&jar).exists(),
        "{jar} is missing: run ./eddy.sh test (its set-up installs libpostgresql-jdbc-java), or set EDDY_PGJDBC_JAR"
    );
    let mut command = Command::new("java");
    command
        .args(["-cp", &jar, "tests/clients/JdbcE2e.java"])
        .env("TZ", "UTC");
    run_client(command, "pgjdbc: ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_runs_the_driver_scenario() {
    use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE every_type (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer, \
             i8 bigint, f4 real, f8 double precision, n numeric(10,2), s text, v varchar(10), \
             by bytea, d date, tm time, ts timestamp, tz timestamptz, iv interval)",
        )
        .await
        .unwrap();
    let date = NaiveDate::from_ymd_opt(2025, 1, 2).unwrap();
    let time = NaiveTime::from_hms_micro_opt(10, 11, 12, 123_456).unwrap();
    let ts = NaiveDateTime::new(
        date,
        NaiveTime::from_hms_micro_opt(3, 4, 5, 678_901).unwrap(),
    );
    let tz = Utc.from_utc_datetime(&ts);
    let bytes: Vec<u8> = vec![0x00, 0xff];
    let interval = Interval {
        months: 0,
        days: 1,
        micros: 3_661_000_005,
    };
    // Binary parameters (tokio-postgres always sends them so); numeric, which it has no Rust
    // type for here, as text cast by the server.
    let n = client
        .execute(
            "INSERT INTO every_type VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::numeric(10,2), \
             $9, $10, $11, $12, $13, $14, $15, $16)",
            &[
                &1i32,
                &true,
                &2i16,
                &3i32,
                &4i64,
                &1.5f32,
                &2.25f64,
                &"12.34",
                &"héllo, 'world'",
                &"abc",
                &bytes,
                &date,
                &time,
                &ts,
                &tz,
                &interval,
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    client
        .execute("INSERT INTO every_type (id) VALUES ($1)", &[&2i32])
        .await
        .unwrap();
    // Binary results.
    let row = client
        .query_one(
            "SELECT b, i2, i4, i8, f4, f8, s, v, by, d, tm, ts, tz, iv FROM every_type WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i16>(1), 2);
    assert_eq!(row.get::<_, i32>(2), 3);
    assert_eq!(row.get::<_, i64>(3), 4);
    assert_eq!(row.get::<_, f32>(4), 1.5);
    assert_eq!(row.get::<_, f64>(5), 2.25);
    assert_eq!(row.get::<_, &str>(6), "héllo, 'world'");
    assert_eq!(row.get::<_, &str>(7), "abc");
    assert_eq!(row.get::<_, Vec<u8>>(8), bytes);
    assert_eq!(row.get::<_, NaiveDate>(9), date);
    assert_eq!(row.get::<_, NaiveTime>(10), time);
    assert_eq!(row.get::<_, NaiveDateTime>(11), ts);
    assert_eq!(row.get::<_, chrono::DateTime<Utc>>(12), tz);
    assert_eq!(row.get::<_, Interval>(13), interval);
    let nulls = client
        .query_one("SELECT b, i8, s, by, tz FROM every_type WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(nulls.get::<_, Option<bool>>(0), None);
    assert_eq!(nulls.get::<_, Option<i64>>(1), None);
    assert_eq!(nulls.get::<_, Option<&str>>(2), None);
    assert_eq!(nulls.get::<_, Option<Vec<u8>>>(3), None);
    assert_eq!(nulls.get::<_, Option<chrono::DateTime<Utc>>>(4), None);
    // Text results (the simple protocol), as PostgreSQL prints them.
    let messages = client
        .simple_query(
            "SELECT b, i2, i4, i8, f4, f8, n, s, v, by, d, tm, ts, tz, iv FROM every_type WHERE id = 1",
        )
        .await
        .unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(text) = &messages[1] else {
        panic!("a row: {messages:?}");
    };
    let values: Vec<&str> = (0..15).map(|k| text.get(k).unwrap()).collect();
    assert_eq!(
        values,
        [
            "t",
            "2",
            "3",
            "4",
            "1.5",
            "2.25",
            "12.34",
            "héllo, 'world'",
            "abc",
            "\\x00ff",
            "2025-01-02",
            "10:11:12.123456",
            "2025-01-02 03:04:05.678901",
            "2025-01-02 03:04:05.678901+00",
            "1 day 01:01:01.000005"
        ]
    );
    // Errors carry their SQLSTATE and leave the connection usable.
    for (sql, code) in [
        ("INSERT INTO every_type (id) VALUES (1)", "23505"),
        ("SELECT * FROM nowhere", "42P01"),
        ("SELEC 1", "42601"),
        ("INSERT INTO every_type (id, i2) VALUES (9, 70000)", "22003"),
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some(code), "{sql}: {e}");
    }
    let e = client
        .execute(
            "INSERT INTO every_type (id, i2) VALUES ($1, $2)",
            &[&9i32, &"x"],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("error serializing parameter"), "{e}");
    let count: i64 = client
        .query_one("SELECT count(*) FROM every_type", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    // A materialized view, and SUBSCRIBE through a cursor.
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(i8) AS total FROM every_type",
        )
        .await
        .unwrap();
    let row = client
        .query_one("SELECT n, total FROM totals", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 4));
    let mut sub = connect(&server).await;
    let tx = sub.transaction().await.unwrap();
    tx.batch_execute("DECLARE c CURSOR FOR SUBSCRIBE totals")
        .await
        .unwrap();
    let rows = tx.query("FETCH ALL c", &[]).await.unwrap();
    let diffs = |rows: &[tokio_postgres::Row]| {
        let mut d: Vec<(i64, i64, i64)> = rows
            .iter()
            .map(|r| (r.get(1), r.get(2), r.get(3)))
            .collect();
        d.sort();
        d
    };
    assert_eq!(diffs(&rows), [(1, 2, 4)]);
    client
        .execute(
            "INSERT INTO every_type (id, i8) VALUES ($1, $2)",
            &[&3i32, &10i64],
        )
        .await
        .unwrap();
    let rows = tx
        .query("FETCH ALL c WITH (timeout = '10s')", &[])
        .await
        .unwrap();
    assert_eq!(diffs(&rows), [(-1, 2, 4), (1, 3, 14)]);
    tx.commit().await.unwrap();
    server.shutdown().await;
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
