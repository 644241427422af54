//! End-to-end tests with a real driver (tokio-postgres): the extended protocol with parameters
//! and binary results for every type, COPY FROM STDIN, cancel, and bad input that must not hurt
//! the server or other sessions.

use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use futures::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls};

mod common;
use common::{connect, start};

/// Sends a CancelRequest for `client`'s running statement after `delay`.
fn cancel_after(client: &Client, delay: Duration) -> tokio::task::JoinHandle<()> {
    let token = client.cancel_token();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        token.cancel_query(NoTls).await.unwrap();
    })
}

/// Raw binary value of any type, to check encodings tokio-postgres has no Rust type for.
struct Raw(Vec<u8>);
impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

#[tokio::test]
async fn extended_protocol_with_binary_types() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE t (k int PRIMARY KEY, b boolean, s smallint, l bigint, r real, d double precision,
               n numeric(10,2), txt text, v varchar(5), y bytea, dt date, tm time, ts timestamp,
               tz timestamptz, iv interval)",
        )
        .await
        .unwrap();

    let insert = client
        .prepare("INSERT INTO t (k, b, s, l, r, d, txt, v, y, dt, tm, ts, tz) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
        .await
        .unwrap();
    // The server infers every parameter's type from its column.
    assert_eq!(
        insert.params(),
        &[
            Type::INT4,
            Type::BOOL,
            Type::INT2,
            Type::INT8,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::TEXT,
            Type::TEXT,
            Type::BYTEA,
            Type::DATE,
            Type::TIME,
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ
        ]
    );
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let time = NaiveTime::from_hms_micro_opt(13, 14, 15, 500_000).unwrap();
    let ts: NaiveDateTime = date.and_time(time);
    let tz = Utc.from_utc_datetime(&ts);
    let n = client
        .execute(
            &insert,
            &[
                &1i32,
                &true,
                &-7i16,
                &i64::MAX,
                &1.5f32,
                &-0.1f64,
                &"héllo",
                &"abc",
                &vec![0u8, 255],
                &date,
                &time,
                &ts,
                &tz,
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    client
        .execute(
            &insert,
            &[
                &2i32,
                &None::<bool>,
                &None::<i16>,
                &None::<i64>,
                &None::<f32>,
                &None::<f64>,
                &None::<&str>,
                &None::<&str>,
                &None::<Vec<u8>>,
                &None::<NaiveDate>,
                &None::<NaiveTime>,
                &None::<NaiveDateTime>,
                &None::<chrono::DateTime<Utc>>,
            ],
        )
        .await
        .unwrap();
    // A bare parameter assigned to a column takes the column's type (not text).
    let update = client
        .prepare("UPDATE t SET s = $1, l = $2, tz = $3 WHERE k = $4")
        .await
        .unwrap();
    assert_eq!(
        update.params(),
        &[Type::INT2, Type::INT8, Type::TIMESTAMPTZ, Type::INT4]
    );
    client
        .execute(&update, &[&-7i16, &i64::MAX, &tz, &1i32])
        .await
        .unwrap();
    // Text parameters where the client sends text (numeric, interval).
    client
        .execute(
            "UPDATE t SET n = 123.45, iv = '1 day 02:00:00' WHERE k = $1",
            &[&1i32],
        )
        .await
        .unwrap();

    let select = client
        .prepare("SELECT * FROM t WHERE k = $1")
        .await
        .unwrap();
    assert_eq!(select.params(), &[Type::INT4]);
    let types: Vec<Type> = select.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        types,
        vec![
            Type::INT4,
            Type::BOOL,
            Type::INT2,
            Type::INT8,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::TEXT,
            Type::TEXT,
            Type::BYTEA,
            Type::DATE,
            Type::TIME,
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ,
            Type::INTERVAL
        ]
    );
    let row = client.query_one(&select, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>("k"), 1);
    assert!(row.get::<_, bool>("b"));
    assert_eq!(row.get::<_, i16>("s"), -7);
    assert_eq!(row.get::<_, i64>("l"), i64::MAX);
    assert_eq!(row.get::<_, f32>("r"), 1.5);
    assert_eq!(row.get::<_, f64>("d"), -0.1);
    assert_eq!(row.get::<_, &str>("txt"), "héllo");
    assert_eq!(row.get::<_, Vec<u8>>("y"), vec![0, 255]);
    assert_eq!(row.get::<_, NaiveDate>("dt"), date);
    assert_eq!(row.get::<_, NaiveTime>("tm"), time);
    assert_eq!(row.get::<_, NaiveDateTime>("ts"), ts);
    assert_eq!(row.get::<_, chrono::DateTime<Utc>>("tz"), tz);
    // numeric 123.45: 2 base-10000 digits, weight 0, positive, scale 2: 123, 4500.
    assert_eq!(
        row.get::<_, Raw>("n").0,
        vec![0, 2, 0, 0, 0, 0, 0, 2, 0, 123, 17, 148]
    );
    // interval: microseconds, days, months.
    let iv = row.get::<_, Raw>("iv").0;
    assert_eq!(
        i64::from_be_bytes(iv[0..8].try_into().unwrap()),
        7_200_000_000
    );
    assert_eq!(i32::from_be_bytes(iv[8..12].try_into().unwrap()), 1);

    let row = client.query_one(&select, &[&2i32]).await.unwrap();
    assert_eq!(row.get::<_, Option<bool>>("b"), None);
    assert_eq!(row.get::<_, Option<NaiveDateTime>>("ts"), None);
    assert_eq!(row.get::<_, Option<Raw>>("n").map(|r| r.0), None);

    // The same values in text format (simple protocol).
    let rows = client
        .simple_query("SELECT n, iv, tz, y FROM t WHERE k = 1")
        .await
        .unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(r) = &rows[1] else {
        panic!("no row: {rows:?}")
    };
    assert_eq!(r.get(0), Some("123.45"));
    assert_eq!(r.get(1), Some("1 day 02:00:00"));
    assert_eq!(r.get(2), Some("2024-02-29 13:14:15.5+00"));
    assert_eq!(r.get(3), Some("\\x00ff"));

    // Parameters in expressions, and type errors with SQLSTATEs.
    let row = client
        .query_one("SELECT $1::bigint + 1 AS x", &[&41i64])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>("x"), 42);
    let e = client
        .execute(
            &insert,
            &[
                &1i32,
                &true,
                &1i16,
                &1i64,
                &1f32,
                &1f64,
                &"",
                &"",
                &vec![1u8],
                &date,
                &time,
                &ts,
                &tz,
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505");
    let e = client
        .query("SELECT * FROM nope WHERE x = $1", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42P01");
    let e = client
        .execute("INSERT INTO t (k, v) VALUES ($1, $2)", &[&9i32, &"toolong"])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22001");

    // SHOW's column is described as it is sent: the setting's name.
    client
        .batch_execute("SET myapp.mode = 'fast'")
        .await
        .unwrap();
    for (show, column, value) in [
        ("SHOW TIME ZONE", "timezone", "UTC"),
        (
            "SHOW TRANSACTION ISOLATION LEVEL",
            "transaction_isolation",
            "read committed",
        ),
        ("SHOW myapp.mode", "myapp.mode", "fast"),
    ] {
        let statement = client.prepare(show).await.unwrap();
        assert_eq!(statement.columns()[0].name(), column, "{show}");
        let row = client.query_one(&statement, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), value, "{show}");
        let simple = client.simple_query(show).await.unwrap();
        let Some(row) = simple.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        }) else {
            panic!("{show}: no row");
        };
        assert_eq!(row.columns()[0].name(), column, "{show}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn transactions_over_the_extended_protocol() {
    let (server, _dir) = start().await;
    let mut client = connect(&server).await;
    client
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO a VALUES ($1, $2)", &[&1i32, &"x"])
        .await
        .unwrap();
    tx.execute("INSERT INTO a VALUES ($1, $2)", &[&2i32, &"y"])
        .await
        .unwrap();
    assert_eq!(tx.query("SELECT * FROM a", &[]).await.unwrap().len(), 2);
    tx.rollback().await.unwrap();
    assert_eq!(client.query("SELECT * FROM a", &[]).await.unwrap().len(), 0);
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO a VALUES ($1, $2)", &[&1i32, &"x"])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(client.query("SELECT * FROM a", &[]).await.unwrap().len(), 1);

    // A cursor's query takes parameters, as in PostgreSQL.
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO a VALUES ($1, $2)", &[&2i32, &"y"])
        .await
        .unwrap();
    let declare = tx
        .prepare("DECLARE c CURSOR FOR SELECT v FROM a WHERE id >= $1 ORDER BY id")
        .await
        .unwrap();
    assert_eq!(declare.params(), [tokio_postgres::types::Type::INT4]);
    tx.execute(&declare, &[&2i32]).await.unwrap();
    let rows = tx.query("FETCH ALL c", &[]).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get(0)).collect::<Vec<String>>(),
        ["y"]
    );
    tx.rollback().await.unwrap();
    // Where there is nothing to bind a parameter to: 0A000 at Parse, which drivers report.
    for sql in [
        "COPY (SUBSCRIBE (SELECT v FROM a WHERE id > $1)) TO STDOUT",
        "SET statement_timeout = $1",
        "CREATE MATERIALIZED VIEW m AS SELECT v FROM a WHERE id > $1",
    ] {
        let e = client.prepare(sql).await.unwrap_err();
        assert_eq!(code(&e), "0A000", "{sql}: {e}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn copy_from_stdin_text_and_csv() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute("CREATE TABLE c (id int PRIMARY KEY, name text, score double precision)")
        .await
        .unwrap();

    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{i}\tname {i}\t{}.5\n", i % 7));
    }
    data.push_str("20000\t\\N\t\\N\n");
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 20_001);

    let sink = client
        .copy_in("COPY c (score, id) FROM STDIN WITH (FORMAT csv, HEADER true)")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"score,id\n1.25,30000\n,30001\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);

    let row = client
        .query_one("SELECT count(*), count(name), sum(score) FROM c", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 20_003);
    assert_eq!(row.get::<_, i64>(1), 20_000);

    // A bad row rejects the whole COPY and names the line and column.
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"40000\ta\t1\n40001\tb\tnot-a-number\n",
    ))
    .await
    .unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(code(&e), "22P02");
    let detail = e
        .as_db_error()
        .unwrap()
        .detail()
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("line 2") && detail.contains("column score"),
        "{detail}"
    );
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\tdup\t1\n"))
        .await
        .unwrap();
    assert_eq!(code(&sink.finish().await.unwrap_err()), "23505");
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"50000\t\xff\xfe\t1\n"))
        .await
        .unwrap();
    assert_eq!(code(&sink.finish().await.unwrap_err()), "22021");

    let row = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 20_003, "failed COPYs wrote nothing");
    server.shutdown().await;
}

/// COPY … TO STDOUT through a driver (the extended protocol): what was copied in comes out in
/// text and CSV, and a copy out round-trips through COPY FROM STDIN.
#[tokio::test]
async fn copy_to_stdout_text_csv_and_round_trip() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE src (id int PRIMARY KEY, name text, at timestamp);
             INSERT INTO src SELECT i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n, \"' || i || E'\\t' END,
               TIMESTAMP '2024-01-01 00:00:00' + CAST(i || ' minutes' AS interval)
             FROM generate_series(1, 5000) AS s(i);
             CREATE TABLE dst (id int PRIMARY KEY, name text, at timestamp);",
        )
        .await
        .unwrap();
    let copy_out = |query: &'static str| {
        let client = &client;
        async move {
            let stream = client.copy_out(query).await.unwrap();
            let chunks: Vec<bytes::Bytes> =
                futures::TryStreamExt::try_collect(stream).await.unwrap();
            chunks.concat()
        }
    };
    let text = copy_out("COPY src TO STDOUT").await;
    assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 5000);
    let csv = copy_out("COPY (SELECT id, name FROM src WHERE id <= 3 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)").await;
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "id,name\n1,\"n, \"\"1\t\"\n2,\"n, \"\"2\t\"\n3,\n"
    );
    // The text copy loads into a table of the same columns and equals the source.
    let sink = client.copy_in("COPY dst FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(text)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    let differ = client
        .query_one(
            "SELECT count(*) FROM (SELECT * FROM src EXCEPT SELECT * FROM dst) AS d",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(differ.get::<_, i64>(0), 0);
    // To a server file: refused (42501).
    let e = client
        .copy_out("COPY src TO '/tmp/src.txt'")
        .await
        .err()
        .unwrap();
    assert_eq!(code(&e), "42501");
    server.shutdown().await;
}

#[tokio::test]
async fn cancel_request_stops_a_running_query() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    let canceller = cancel_after(&client, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let e = client
        .simple_query("SELECT count(*) FROM generate_series(1, 20000000000) a")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(30));
    canceller.await.unwrap();
    // The session is usable afterwards.
    assert_eq!(
        client
            .query_one("SELECT 1::int", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_never_hurts_the_server_or_other_sessions() {
    let (server, _dir) = start().await;
    let bystander = connect(&server).await;
    bystander
        .batch_execute("CREATE TABLE safe (id int PRIMARY KEY)")
        .await
        .unwrap();
    bystander
        .execute("INSERT INTO safe VALUES (1)", &[])
        .await
        .unwrap();

    // Random bytes on a raw socket, before and after a valid startup.
    for garbage in [
        &b"\x00\x00\x00\x08\xde\xad\xbe\xef"[..],
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xffu8; 4096][..],
    ] {
        let mut sock = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        let _ = sock.write_all(garbage).await;
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await;
    }

    let victim = connect(&server).await;
    // Malformed SQL, unknown objects, wrong types.
    for (sql, want) in [
        ("SELEC 1", "42601"),
        ("SELECT * FROM safe WHERE", "42601"),
        ("SELECT * FROM nothing", "42P01"),
        ("SELECT nothing FROM safe", "42703"),
        ("INSERT INTO safe VALUES ('x')", "22P02"),
        ("SELECT 1/0", "22012"),
        ("SELECT 'abc' + 1", "42883"),
        ("INSERT INTO safe VALUES (1)", "23505"),
    ] {
        let e = victim.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), want, "{sql}");
    }
    // A 10 MB statement is answered (a syntax error here), and a 20 MB one refused with 54000.
    let big = format!("SELECT '{}' garbage garbage", "x".repeat(10 << 20));
    assert_eq!(code(&victim.simple_query(&big).await.unwrap_err()), "42601");
    let huge = format!("SELECT '{}'", "x".repeat(20 << 20));
    assert_eq!(
        code(&victim.simple_query(&huge).await.unwrap_err()),
        "54000"
    );

    // The bystander never noticed.
    let row = bystander
        .query_one("SELECT count(*) FROM safe", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(
        victim
            .query_one("SELECT count(*) FROM safe", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_writers_all_land() {
    let (server, _dir) = start().await;
    let setup = connect(&server).await;
    setup
        .batch_execute("CREATE TABLE w (writer int, seq int, PRIMARY KEY (writer, seq))")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for writer in 0..8i32 {
        let client = connect(&server).await;
        tasks.push(tokio::spawn(async move {
            let stmt = client
                .prepare("INSERT INTO w VALUES ($1, $2)")
                .await
                .unwrap();
            for seq in 0..100i32 {
                client.execute(&stmt, &[&writer, &seq]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let row = setup
        .query_one("SELECT count(*), count(DISTINCT writer) FROM w", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (800, 8));
    server.shutdown().await;
}

/// Autocommit UPDATEs from many connections run concurrently; those that collide on a row are
/// run again on its newer version: none fails and no increment is lost, on a few hot rows and
/// on rows spread over a table whose rows are in memory and in the state store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_autocommit_updates_lose_nothing() {
    let (server, _dir) = common::start_with(|c| {
        c.checkpoint_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let setup = connect(&server).await;
    setup
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, balance bigint, touched int);
             INSERT INTO acct SELECT i, 0, 0 FROM generate_series(0, 999) AS s(i);",
        )
        .await
        .unwrap();
    let (writers, per_writer) = (8i32, 60i32);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let client = connect(&server).await;
        tasks.push(tokio::spawn(async move {
            let hot = client
                .prepare("UPDATE acct SET balance = balance + 1 WHERE id = $1")
                .await
                .unwrap();
            let spread = client
                .prepare(
                    "UPDATE acct SET balance = balance + 1, touched = touched + 1 WHERE id = $1",
                )
                .await
                .unwrap();
            for i in 0..per_writer {
                // Three hot rows every writer hits, and rows of its own.
                let n = client.execute(&hot, &[&(i % 3)]).await.unwrap();
                assert_eq!(n, 1);
                let own = 3 + (writer * per_writer + i) % 997;
                let n = client.execute(&spread, &[&own]).await.unwrap();
                // Rows from 990 on may be gone (writer 0's DELETE below).
                assert!(n == 1 || own >= 990, "{n} rows updated");
            }
            // A DELETE racing the others' UPDATEs of the same rows.
            if writer == 0 {
                client
                    .execute("DELETE FROM acct WHERE id >= 990", &[])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let hot: i64 = setup
        .query_one("SELECT sum(balance) FROM acct WHERE id < 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hot, (writers * per_writer) as i64);
    // Every row is either deleted or has balance = touched (the two move together).
    let row = setup
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE balance <> touched) FROM acct WHERE id >= 3",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (987, 0));
    server.shutdown().await;
}

/// An UPDATE in a transaction block whose row a concurrent commit updated first fails at
/// COMMIT with 40001 rather than overwrite that update.
#[tokio::test]
async fn a_transaction_does_not_overwrite_a_concurrent_update() {
    let (server, _dir) = start().await;
    let a = connect(&server).await;
    let b = connect(&server).await;
    a.batch_execute(
        "CREATE TABLE acct (id int PRIMARY KEY, balance bigint);
         INSERT INTO acct VALUES (1, 100), (2, 100);",
    )
    .await
    .unwrap();
    a.batch_execute("BEGIN; UPDATE acct SET balance = balance - 30 WHERE id = 1")
        .await
        .unwrap();
    b.execute("UPDATE acct SET balance = balance - 50 WHERE id = 1", &[])
        .await
        .unwrap();
    let err = a.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001", "{err}");
    let balance: i64 = b
        .query_one("SELECT balance FROM acct WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 50);
    // A transaction touching only other rows commits.
    a.batch_execute("BEGIN; UPDATE acct SET balance = balance - 30 WHERE id = 2")
        .await
        .unwrap();
    b.execute("UPDATE acct SET balance = balance - 50 WHERE id = 1", &[])
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let rows = b
        .query("SELECT id, balance FROM acct ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, 0), (2, 70)]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_statement_aborts_its_transaction() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let canceller = cancel_after(&client, Duration::from_millis(300));
    let e = client
        .simple_query("SELECT count(*) FROM generate_series(1, 20000000000) a")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "57014");
    canceller.await.unwrap();
    let e = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    let rows = client.simple_query("SELECT count(*) FROM t").await.unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(r) = &rows[1] else {
        panic!("no row")
    };
    assert_eq!(r.get(0), Some("0"));
    server.shutdown().await;
}

#[tokio::test]
async fn late_rows_are_left_out_of_the_command_tag_with_a_notice() {
    let (server, _dir) = start().await;
    let (client, mut notices) = common::connect_with_notices(&server).await;
    client
        .batch_execute(
            "CREATE TABLE bid (id int, ts timestamp,
               WATERMARK FOR ts AS ts - INTERVAL '10 seconds') APPEND ONLY;
             CREATE TABLE kept (id int, ts timestamp,
               WATERMARK FOR ts AS ts - INTERVAL '10 seconds') WITH (late_rows = 'keep') APPEND ONLY;
             INSERT INTO bid VALUES (1, '2026-01-01 00:01:00');
             INSERT INTO kept VALUES (1, '2026-01-01 00:01:00');",
        )
        .await
        .unwrap();
    // Two of three rows are behind the watermark (00:00:50): INSERT 0 1, and a NOTICE.
    let n = client
        .execute(
            "INSERT INTO bid VALUES (2, '2026-01-01 00:00:00'), (3, '2026-01-01 00:00:55'), \
             (4, '2026-01-01 00:00:01')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        notice,
        "2 rows of \"bid\" behind its watermark (2026-01-01 00:00:50): not written (counted in eddy_catalog.watermarks)"
    );
    let n = client
        .execute("INSERT INTO kept VALUES (2, '2026-01-01 00:00:00')", &[])
        .await
        .unwrap();
    assert_eq!(n, 0);
    let notice = notices.recv().await.unwrap();
    assert!(
        notice.ends_with("written to \"kept_late\" instead"),
        "{notice}"
    );
    // In a transaction block, rows are judged at COMMIT: the NOTICE comes then.
    client
        .batch_execute("BEGIN; INSERT INTO bid VALUES (5, '2026-01-01 00:00:00'); COMMIT")
        .await
        .unwrap();
    let notice = notices.recv().await.unwrap();
    assert!(notice.starts_with("1 row of \"bid\""), "{notice}");
    // COPY: the count is of the rows written.
    let sink = client.copy_in("COPY bid FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"6\t2026-01-01 00:00:00\n7\t2026-01-01 00:02:00\n",
    ))
    .await
    .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    let notice = notices.recv().await.unwrap();
    assert!(notice.starts_with("1 row of \"bid\""), "{notice}");
    let rows = client
        .query("SELECT id FROM bid ORDER BY id", &[])
        .await
        .unwrap();
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [1, 3, 7]);
    assert!(notices.try_recv().is_err(), "one NOTICE per late write");
}

#[tokio::test]
async fn a_parameter_inside_a_values_expression_is_counted_and_typed() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute("CREATE TABLE t (id int, v bigint)")
        .await
        .unwrap();
    // $2 is not a cell of its own: its type comes from the expression (bigint).
    let n = client
        .execute("INSERT INTO t VALUES ($1, $2 + 1)", &[&7i32, &41i64])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let v: i64 = client
        .query_one("SELECT v FROM t WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
}
