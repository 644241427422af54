//! SUBSCRIBE end to end with tokio-postgres (and a raw protocol client where a driver would
//! hide what is being tested): every transport, progress, AS OF resumption, the end of a
//! subscription (DROP, cancel, hang-up, a client that stops reading), and fan-out.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, CopyOutStream, NoTls, SimpleQueryMessage};

mod common;

/// The server's allocator (as in the `eddy` binary), so memory measurements mean the same.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use common::{connect, start, start_with};

const WAIT: Duration = Duration::from_secs(20);

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// The lines of a `COPY (SUBSCRIBE …) TO STDOUT`.
struct Lines(Pin<Box<CopyOutStream>>);

impl Lines {
    async fn open(client: &Client, subscribe: &str) -> Lines {
        let stream = client
            .copy_out(&format!("COPY ({subscribe}) TO STDOUT"))
            .await
            .unwrap();
        Lines(Box::pin(stream))
    }

    async fn try_next(&mut self) -> Result<String, tokio_postgres::Error> {
        let line: Bytes = tokio::time::timeout(WAIT, self.0.next())
            .await
            .expect("a line within the timeout")
            .expect("the subscription is still open")?;
        Ok(String::from_utf8(line.to_vec())
            .unwrap()
            .trim_end_matches('\n')
            .to_string())
    }

    async fn next(&mut self) -> String {
        self.try_next().await.unwrap()
    }

    /// The next change: its lines up to and including their progress row (idle progress rows
    /// before it are skipped).
    async fn until_change(&mut self) -> Vec<String> {
        loop {
            let lines = self.until_progress().await;
            if lines.len() > 1 {
                return lines;
            }
        }
    }

    /// Lines up to and including the next progress row (`_progressed` = t).
    async fn until_progress(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let line = self.next().await;
            let progress = line.split('\t').nth(1) == Some("t");
            out.push(line);
            if progress {
                return out;
            }
        }
    }
}

/// A connection that is closed when dropped (a tokio-postgres connection with a COPY still
/// streaming would otherwise stay open).
struct Reader {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    async fn connect(server: &eddy::server::Server) -> Reader {
        let (client, task) = common::connect_with_task(server).await;
        Reader { client, task }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(epoch, rest of the line)`.
fn split_epoch(line: &str) -> (i64, String) {
    let (epoch, rest) = line.split_once('\t').unwrap();
    (epoch.parse().unwrap(), rest.to_string())
}

async fn setup(client: &Client) {
    client
        .batch_execute(
            "CREATE TABLE bids (auction bigint, price bigint);
             CREATE MATERIALIZED VIEW hot AS
               SELECT auction, count(*) AS n, max(price) AS top FROM bids GROUP BY auction;
             INSERT INTO bids VALUES (1, 100), (2, 50);",
        )
        .await
        .unwrap();
}

async fn subscriptions(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM eddy_catalog.subscriptions", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until no subscription is listed.
async fn until_no_subscriptions(client: &Client) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while subscriptions(client).await > 0 {
        if tokio::time::Instant::now() > deadline {
            let rows = client
                .simple_query("SELECT target, client, epoch FROM eddy_catalog.subscriptions")
                .await
                .unwrap();
            panic!("subscriptions still listed: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn copy_streams_a_snapshot_then_each_epoch_with_progress() {
    let (server, _dir) = start().await;
    let writer = connect(&server).await;
    setup(&writer).await;
    let reader = connect(&server).await;
    let mut lines = Lines::open(&reader, "SUBSCRIBE hot WITH (PROGRESS)").await;
    let snapshot = lines.until_progress().await;
    let (e0, _) = split_epoch(&snapshot[0]);
    let mut rows: Vec<String> = snapshot.iter().map(|l| split_epoch(l).1).collect();
    rows.sort();
    assert_eq!(
        rows,
        ["f\t1\t1\t1\t100", "f\t1\t2\t1\t50", "t\t\\N\t\\N\t\\N\t\\N"]
    );
    assert!(snapshot.iter().all(|l| split_epoch(l).0 == e0));

    // An UPDATE of an aggregate: -1 old, +1 new in one epoch, then that epoch's progress row.
    writer
        .execute("INSERT INTO bids VALUES (1, 120)", &[])
        .await
        .unwrap();
    let change = lines.until_change().await;
    let (e1, _) = split_epoch(&change[0]);
    assert!(e1 > e0);
    assert_eq!(
        change.iter().map(|l| split_epoch(l)).collect::<Vec<_>>(),
        [
            (e1, "f\t-1\t1\t1\t100".to_string()),
            (e1, "f\t1\t1\t2\t120".to_string()),
            (e1, "t\t\\N\t\\N\t\\N\t\\N".to_string())
        ]
    );
    // Writes that do not change the view send nothing but, while idle, progress rows.
    let idle = lines.until_progress().await;
    assert_eq!(idle.len(), 1);
    // A delete down to empty.
    writer.execute("DELETE FROM bids", &[]).await.unwrap();
    let gone = lines.until_change().await;
    let mut gone: Vec<String> = gone.iter().map(|l| split_epoch(l).1).collect();
    gone.sort();
    assert_eq!(
        gone,
        [
            "f\t-1\t1\t2\t120",
            "f\t-1\t2\t1\t50",
            "t\t\\N\t\\N\t\\N\t\\N"
        ]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn plain_subscribe_streams_rows_in_the_simple_and_extended_protocol() {
    let (server, _dir) = start().await;
    let writer = connect(&server).await;
    setup(&writer).await;

    // Simple protocol: rows as text, as they come.
    let simple = connect(&server).await;
    let mut stream = Box::pin(
        simple
            .simple_query_raw("SUBSCRIBE TO hot WITH (SNAPSHOT = false)")
            .await
            .unwrap(),
    );
    // Extended protocol (binary): a snapshot first.
    let extended = connect(&server).await;
    let rows = extended
        .query_raw("SUBSCRIBE hot", Vec::<i64>::new())
        .await
        .unwrap();
    let mut rows = Box::pin(rows);
    let mut snapshot = Vec::new();
    for _ in 0..2 {
        let row = tokio::time::timeout(WAIT, rows.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let (diff, auction, n): (i64, i64, i64) = (row.get(1), row.get(2), row.get(3));
        assert_eq!(row.columns()[0].name(), "_epoch");
        snapshot.push((diff, auction, n));
    }
    snapshot.sort();
    assert_eq!(snapshot, [(1, 1, 1), (1, 2, 1)]);

    writer
        .execute("INSERT INTO bids VALUES (3, 7)", &[])
        .await
        .unwrap();
    let row = tokio::time::timeout(WAIT, rows.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((row.get::<_, i64>(1), row.get::<_, i64>(2)), (1, 3));
    loop {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            SimpleQueryMessage::Row(row) => {
                assert_eq!(row.get("_diff"), Some("1"));
                assert_eq!(row.get("auction"), Some("3"));
                assert_eq!(row.get("top"), Some("7"));
                break;
            }
            SimpleQueryMessage::RowDescription(columns) => {
                let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
                assert_eq!(names, ["_epoch", "_diff", "auction", "n", "top"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn fetch_waits_for_rows_or_the_timeout_in_both_protocols() {
    let (server, _dir) = start().await;
    let writer = connect(&server).await;
    setup(&writer).await;
    let client = connect(&server).await;

    // Outside a transaction block, as in PostgreSQL.
    let e = client
        .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE hot")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "25P01");

    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE hot WITH (SNAPSHOT = false)")
        .await
        .unwrap();
    // Nothing changed: the timeout passes and FETCH returns no rows.
    let empty = client
        .simple_query("FETCH ALL c WITH (timeout = '100ms')")
        .await
        .unwrap();
    assert!(
        !empty
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(_)))
    );
    // A FETCH without a timeout blocks until a change arrives.
    let insert = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .execute("INSERT INTO bids VALUES (1, 500), (5, 5)", &[])
            .await
            .unwrap();
        writer
    });
    // Extended protocol: FETCH is prepared (described from the cursor) and returns binary rows.
    let rows = tokio::time::timeout(WAIT, client.query("FETCH 2 c", &[]))
        .await
        .unwrap()
        .unwrap();
    let mut got: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| (r.get("_diff"), r.get("auction"), r.get("n")))
        .collect();
    got.sort();
    // An update of auction 1 (-1 old, +1 new) and the new auction 5: FETCH 2 takes two of them.
    assert_eq!(got.len(), 2);
    let rest = client
        .simple_query("FETCH ALL c WITH (timeout = '1s')")
        .await
        .unwrap();
    let rest = rest
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rest, 1);
    // Cursors close with the transaction.
    client.batch_execute("COMMIT").await.unwrap();
    let e = client.batch_execute("FETCH 1 c").await.unwrap_err();
    assert_eq!(code(&e), "34000");
    insert.await.unwrap();
    until_no_subscriptions(&client).await;
    server.shutdown().await;
}

#[tokio::test]
async fn as_of_resumes_with_no_gap_and_no_duplicate() {
    let (server, _dir) = start().await;
    let writer = connect(&server).await;
    setup(&writer).await;

    let reader = Reader::connect(&server).await;
    let mut lines = Lines::open(&reader.client, "SUBSCRIBE hot WITH (PROGRESS)").await;
    lines.until_progress().await;
    writer
        .execute("INSERT INTO bids VALUES (1, 120)", &[])
        .await
        .unwrap();
    let seen = lines.until_change().await;
    let (resume_at, _) = split_epoch(seen.last().unwrap());
    drop(lines);
    drop(reader);

    // Missed while disconnected: a new group, an update, a delete (three epochs).
    for sql in [
        "INSERT INTO bids VALUES (3, 30)",
        "UPDATE bids SET price = 60 WHERE auction = 2",
        "DELETE FROM bids WHERE auction = 3",
    ] {
        writer.execute(sql, &[]).await.unwrap();
    }

    let reader = connect(&server).await;
    let mut lines = Lines::open(
        &reader,
        &format!("SUBSCRIBE hot WITH (SNAPSHOT = false, PROGRESS) AS OF {resume_at}"),
    )
    .await;
    let mut missed = Vec::new();
    loop {
        let chunk = lines.until_progress().await;
        missed.extend(
            chunk
                .iter()
                .filter(|l| split_epoch(l).1.starts_with("f"))
                .cloned(),
        );
        if missed.len() >= 4 {
            break;
        }
    }
    let missed: Vec<String> = missed.iter().map(|l| split_epoch(l).1).collect();
    assert_eq!(
        missed,
        [
            "f\t1\t3\t1\t30",
            "f\t-1\t2\t1\t50",
            "f\t1\t2\t1\t60",
            "f\t-1\t3\t1\t30"
        ]
    );

    // With a snapshot, AS OF gives the contents at that epoch, then the changes since.
    let reader2 = connect(&server).await;
    let mut lines = Lines::open(&reader2, &format!("SUBSCRIBE hot AS OF {resume_at}")).await;
    let mut first = Vec::new();
    for _ in 0..6 {
        first.push(lines.next().await);
    }
    let snapshot: Vec<String> = first
        .iter()
        .filter(|l| split_epoch(l).0 == resume_at)
        .map(|l| split_epoch(l).1)
        .collect();
    let mut snapshot = snapshot;
    snapshot.sort();
    assert_eq!(snapshot, ["1\t1\t2\t120", "1\t2\t1\t50"]);
    assert!(first.iter().skip(2).all(|l| split_epoch(l).0 > resume_at));

    // Epochs the server never had, or no longer has.
    let e = writer
        .batch_execute("SUBSCRIBE hot AS OF 999999")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");
    server.shutdown().await;
}

#[tokio::test]
async fn as_of_resumes_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::restart(dir.path(), |_| {}).await;
    let writer = connect(&server).await;
    setup(&writer).await;
    let reader = Reader::connect(&server).await;
    let mut lines = Lines::open(&reader.client, "SUBSCRIBE hot WITH (PROGRESS)").await;
    lines.until_progress().await;
    writer
        .execute("INSERT INTO bids VALUES (1, 120)", &[])
        .await
        .unwrap();
    let (resume_at, _) = split_epoch(lines.until_change().await.last().unwrap());
    // Changes the subscriber never saw, some before and some after the restart.
    writer
        .execute("INSERT INTO bids VALUES (2, 70)", &[])
        .await
        .unwrap();
    drop(lines);
    drop(reader);
    server.shutdown().await;

    let server = common::restart(dir.path(), |_| {}).await;
    let writer = connect(&server).await;
    writer
        .execute("DELETE FROM bids WHERE auction = 1", &[])
        .await
        .unwrap();
    let reader = Reader::connect(&server).await;
    let mut lines = Lines::open(
        &reader.client,
        &format!("SUBSCRIBE hot WITH (SNAPSHOT = false, PROGRESS) AS OF {resume_at}"),
    )
    .await;
    let mut missed = Vec::new();
    while missed.len() < 3 {
        let chunk = lines.until_progress().await;
        missed.extend(
            chunk
                .iter()
                .map(|l| split_epoch(l).1)
                .filter(|l| l.starts_with('f')),
        );
    }
    assert_eq!(
        missed,
        ["f\t-1\t2\t1\t50", "f\t1\t2\t2\t70", "f\t-1\t1\t2\t120"]
    );
    // A snapshot AS OF an epoch before the restart is the contents then.
    let other = Reader::connect(&server).await;
    let mut lines = Lines::open(&other.client, &format!("SUBSCRIBE hot AS OF {resume_at}")).await;
    let mut snapshot = vec![
        split_epoch(&lines.next().await),
        split_epoch(&lines.next().await),
    ];
    snapshot.sort();
    assert_eq!(
        snapshot,
        [
            (resume_at, "1\t1\t2\t120".to_string()),
            (resume_at, "1\t2\t1\t50".to_string())
        ]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_epoch_outside_the_retained_history_is_55000_naming_the_oldest() {
    let (server, _dir) = start_with(|c| c.retention.max_bytes = 1).await;
    let client = connect(&server).await;
    setup(&client).await;
    let reader = connect(&server).await;
    let mut lines = Lines::open(&reader, "SUBSCRIBE hot WITH (PROGRESS)").await;
    let (first, _) = split_epoch(&lines.until_progress().await[0]);
    // Each INSERT waits for the previous one's epoch to reach the subscriber, so the three
    // are three epochs (a busy runtime may fold records written close together into one).
    for p in [10i64, 20, 30] {
        client
            .execute("INSERT INTO bids VALUES (9, $1)", &[&p])
            .await
            .unwrap();
        lines.until_change().await;
    }
    let other = connect(&server).await;
    let e = tokio::time::timeout(
        WAIT,
        other.batch_execute(&format!("SUBSCRIBE hot AS OF {first}")),
    )
    .await
    .expect("SUBSCRIBE … AS OF a trimmed epoch fails instead of streaming")
    .unwrap_err();
    assert_eq!(code(&e), "55000");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("the oldest available epoch is"),
        "{message}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_the_view_ends_its_subscriptions() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    setup(&client).await;
    let reader = connect(&server).await;
    let mut lines = Lines::open(&reader, "SUBSCRIBE hot").await;
    lines.next().await;
    lines.next().await;
    client
        .batch_execute("DROP MATERIALIZED VIEW hot")
        .await
        .unwrap();
    let e = lines.try_next().await.unwrap_err();
    assert_eq!(code(&e), "42P01");
    until_no_subscriptions(&client).await;
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_a_table_ends_the_subscriptions_to_queries_over_it() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    setup(&client).await;
    let views = server.engine().runtime().view_count();
    let reader = Reader::connect(&server).await;
    let mut lines = Lines::open(&reader.client, "SUBSCRIBE (SELECT auction FROM bids)").await;
    lines.next().await;
    lines.next().await;
    client
        .batch_execute("DROP MATERIALIZED VIEW hot; DROP TABLE bids")
        .await
        .unwrap();
    let e = lines.try_next().await.unwrap_err();
    assert_eq!(code(&e), "42P01");
    let message = e.as_db_error().unwrap().message();
    assert!(message.contains("\"bids\" was dropped"), "{message}");
    until_no_subscriptions(&client).await;
    assert_eq!(server.engine().runtime().view_count(), views - 1);
    server.shutdown().await;
}

#[tokio::test]
async fn subscribing_to_a_query_or_a_table_runs_a_dataflow_of_its_own() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    setup(&client).await;
    let views = server.engine().runtime().view_count();
    let reader = Reader::connect(&server).await;
    let mut lines = Lines::open(
        &reader.client,
        "SUBSCRIBE (SELECT auction, price * 2 AS double FROM bids WHERE price > 60)",
    )
    .await;
    assert_eq!(server.engine().runtime().view_count(), views + 1);
    assert_eq!(split_epoch(&lines.next().await).1, "1\t1\t200");
    client
        .execute("INSERT INTO bids VALUES (4, 70), (4, 10)", &[])
        .await
        .unwrap();
    assert_eq!(split_epoch(&lines.next().await).1, "1\t4\t140");
    let table_reader = Reader::connect(&server).await;
    let mut table = Lines::open(&table_reader.client, "SUBSCRIBE bids").await;
    let mut rows = Vec::new();
    for _ in 0..4 {
        rows.push(split_epoch(&table.next().await).1);
    }
    rows.sort();
    assert_eq!(rows, ["1\t1\t100", "1\t2\t50", "1\t4\t10", "1\t4\t70"]);
    // Something a dataflow cannot maintain is refused up front.
    let e = client
        .batch_execute("SUBSCRIBE (SELECT now())")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    drop(lines);
    drop(table);
    drop(reader);
    drop(table_reader);
    until_no_subscriptions(&client).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.engine().runtime().view_count() != views {
        assert!(
            tokio::time::Instant::now() < deadline,
            "temporary dataflows left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

/// Resident set size of this process.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_cancels_and_hang_ups_leave_nothing_behind() {
    const CYCLES: usize = 2500;
    let (server, _dir) = start().await;
    let admin = connect(&server).await;
    setup(&admin).await;
    let views = server.engine().runtime().view_count();
    // Warm up (lazily created runtime resources), then count descriptors and tasks.
    let client = connect(&server).await;
    let fds = open_fds();
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let mut rss_after_warm_up = 0;
    for i in 0..CYCLES {
        let query = if i % 2 == 0 {
            "COPY (SUBSCRIBE hot WITH (PROGRESS)) TO STDOUT"
        } else {
            "COPY (SUBSCRIBE (SELECT auction FROM bids)) TO STDOUT"
        };
        let mut stream = Box::pin(client.copy_out(query).await.unwrap());
        stream.next().await.unwrap().unwrap();
        client.cancel_token().cancel_query(NoTls).await.unwrap();
        let end = tokio::time::timeout(WAIT, stream.try_collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(code(&end.unwrap_err()), "57014");
        if i == 199 {
            rss_after_warm_up = rss_kib();
        }
        if i % 250 == 0 {
            eprintln!("cycle {i}: RSS {} KiB", rss_kib());
        }
    }
    // Memory: the cycles after the warm-up leave the process about where it was. (RSS first
    // climbs by ~100 MiB over ~1,000 cycles and then drops back in one go, with glibc's
    // allocator and mimalloc alike, so the window must span that.)
    let grown = rss_kib().saturating_sub(rss_after_warm_up);
    eprintln!(
        "after {CYCLES} cancels: RSS {} KiB (+{grown} KiB since cycle 200), {} tasks (before: {tasks})",
        rss_kib(),
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    );
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB over {} cycles",
        CYCLES - 200
    );
    // Hang-ups: the client's connection goes away while the subscription is idle.
    for _ in 0..100 {
        let reader = Reader::connect(&server).await;
        let mut stream = Box::pin(
            reader
                .client
                .copy_out("COPY (SUBSCRIBE (SELECT auction FROM bids)) TO STDOUT")
                .await
                .unwrap(),
        );
        stream.next().await.unwrap().unwrap();
    }
    until_no_subscriptions(&admin).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    while server.engine().runtime().view_count() != views
        || open_fds() > fds + 4
        || alive() > tasks + 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {} views (expected {views}), {} descriptors (expected {fds}), \
             {} tasks (expected {tasks})",
            server.engine().runtime().view_count(),
            open_fds(),
            alive()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection that cancelled a thousand times still works.
    client.batch_execute("SELECT 1").await.unwrap();
    server.shutdown().await;
}

/// A protocol-level client that can stop reading (a driver would buffer for us).
struct RawClient(tokio::net::TcpStream);

impl RawClient {
    async fn connect(port: u16) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        let mut c = RawClient(stream);
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes());
        for (k, v) in [("user", "eddy"), ("database", "eddy")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        c.0.write_all(&msg).await.unwrap();
        c.until(b'Z').await;
        c
    }

    async fn query(&mut self, sql: &str) {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.0.write_all(&msg).await.unwrap();
    }

    /// Reads messages until one of type `kind` (returning its body), or the end (None).
    async fn until(&mut self, kind: u8) -> Option<Vec<u8>> {
        loop {
            let mut header = [0u8; 5];
            if self.0.read_exact(&mut header).await.is_err() {
                return None;
            }
            let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize - 4;
            let mut body = vec![0u8; len];
            if self.0.read_exact(&mut body).await.is_err() {
                return None;
            }
            if header[0] == kind {
                return Some(body);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_ended_without_stalling_anyone() {
    let (server, _dir) = start_with(|c| c.subscribe.max_lag = Duration::from_secs(2)).await;
    let writer = connect(&server).await;
    writer
        .batch_execute(
            "CREATE TABLE events (id bigint, payload text);
             CREATE MATERIALIZED VIEW everything AS SELECT * FROM events;",
        )
        .await
        .unwrap();
    let mut slow = RawClient::connect(server.local_addr().port()).await;
    slow.query("COPY (SUBSCRIBE everything WITH (SNAPSHOT = false)) TO STDOUT")
        .await;
    slow.until(b'H').await.unwrap();
    // slow now stops reading.
    let fast_client = connect(&server).await;
    let mut fast = Lines::open(&fast_client, "SUBSCRIBE everything WITH (SNAPSHOT = false)").await;
    let admin = connect(&server).await;
    assert_eq!(subscriptions(&admin).await, 2);
    let payload = "x".repeat(10_000);
    let mut id = 0i64;
    let deadline = tokio::time::Instant::now() + WAIT;
    // Far more than the socket buffers hold; every INSERT is acknowledged and every change
    // reaches the subscriber that reads, while the one that does not is ended.
    while subscriptions(&admin).await == 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow subscriber was not ended"
        );
        for _ in 0..10 {
            id += 1;
            tokio::time::timeout(
                WAIT,
                writer.execute(
                    "INSERT INTO events VALUES ($1, $2)",
                    &[&id, &payload.as_str()],
                ),
            )
            .await
            .expect("an INSERT is never stalled by a subscriber")
            .unwrap();
        }
        for expected in id - 9..=id {
            let line = fast.next().await;
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields[2], expected.to_string());
        }
    }
    // The slow client, reading again, finds the reason at the end of what was sent.
    let error = slow
        .until(b'E')
        .await
        .expect("an error before the connection ends");
    let text = String::from_utf8_lossy(&error);
    assert!(text.contains("C53400"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_share_one_view() {
    let (server, _dir) = start().await;
    let writer = connect(&server).await;
    setup(&writer).await;
    let views = server.engine().runtime().view_count();
    let mut subscribers = Vec::new();
    for _ in 0..1000 {
        let reader = Reader::connect(&server).await;
        let lines = Lines::open(&reader.client, "SUBSCRIBE hot WITH (SNAPSHOT = false)").await;
        subscribers.push((reader, lines));
    }
    // No dataflow per subscriber.
    assert_eq!(server.engine().runtime().view_count(), views);
    writer
        .execute("INSERT INTO bids VALUES (7, 77)", &[])
        .await
        .unwrap();
    let received = futures::future::join_all(
        subscribers
            .iter_mut()
            .map(|(_, lines)| async move { split_epoch(&lines.next().await).1 }),
    )
    .await;
    assert_eq!(received.len(), 1000);
    assert!(received.iter().all(|l| l == "1\t7\t1\t77"));
    assert_eq!(subscriptions(&writer).await, 1000);
    drop(subscribers);
    until_no_subscriptions(&writer).await;
    server.shutdown().await;
}

/// Every connection has its own backend pid (CancelRequests are routed by it), so closing one
/// connection never cancels what another is running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_connection_does_not_cancel_another() {
    let (server, _dir) = start().await;
    let admin = connect(&server).await;
    setup(&admin).await;
    let pid = async |c: &Client| -> i32 {
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    };
    let a = Reader::connect(&server).await;
    let b = Reader::connect(&server).await;
    assert_ne!(pid(&a.client).await, pid(&b.client).await);
    b.client.batch_execute("BEGIN").await.unwrap();
    b.client
        .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE hot WITH (SNAPSHOT = false)")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let r = b
            .client
            .simple_query("FETCH ALL c WITH (timeout = '1s')")
            .await;
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(a);
    let (_b, fetched) = waiting.await.unwrap();
    fetched.expect("the FETCH ran to its timeout");
    server.shutdown().await;
}

/// A driver fetching a plain SUBSCRIBE a few rows per Execute (portal suspension) would need
/// rows the server cannot promise; it is told to use a cursor instead.
#[tokio::test]
async fn subscribe_with_a_row_limit_per_execute_is_refused() {
    let (server, _dir) = start().await;
    let mut client = connect(&server).await;
    setup(&client).await;
    let tx = client.transaction().await.unwrap();
    let statement = tx.prepare("SUBSCRIBE hot").await.unwrap();
    let portal = tx.bind(&statement, &[]).await.unwrap();
    let e = tx.query_portal(&portal, 10).await.unwrap_err();
    assert_eq!(code(&e), "0A000");
    drop(tx);
    client.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(subscriptions(&client).await, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_row_leaves_a_temporal_filter_when_its_time_passes_with_nothing_written() {
    // The system clock: the server makes the epoch of the retraction by itself.
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE ev (id int, ts timestamptz) APPEND ONLY;
             CREATE MATERIALIZED VIEW recent AS
               SELECT id FROM ev WHERE ts > now() - INTERVAL '300 milliseconds';",
        )
        .await
        .unwrap();
    let reader = Reader::connect(&server).await;
    let mut lines = Lines::open(
        &reader.client,
        "SUBSCRIBE recent WITH (SNAPSHOT false, PROGRESS)",
    )
    .await;
    client
        .batch_execute("INSERT INTO ev VALUES (1, now())")
        .await
        .unwrap();
    let inserted = std::time::Instant::now();
    let added = lines.until_change().await;
    assert_eq!(split_epoch(&added[0]).1, "f\t1\t1");
    let removed = lines.until_change().await;
    let after = inserted.elapsed();
    assert_eq!(split_epoch(&removed[0]).1, "f\t-1\t1");
    assert!(
        split_epoch(&removed[0]).0 > split_epoch(&added[0]).0,
        "the retraction comes in a later epoch: {added:?} then {removed:?}"
    );
    // Not before its time (the row was stamped before the insert returned).
    assert!(
        after >= Duration::from_millis(250),
        "the row left after {after:?}"
    );
    let rows = client.query("SELECT * FROM recent", &[]).await.unwrap();
    assert!(rows.is_empty());
}

#[tokio::test]
async fn a_temporal_view_created_after_a_quiet_spell_starts_at_the_current_time() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE ev (id int, ts timestamptz) APPEND ONLY;
             INSERT INTO ev VALUES (1, now());",
        )
        .await
        .unwrap();
    // Nothing is written for longer than the view's window: its row is already out when the
    // view is created, though the last epoch is older than that. (Without the epoch made at
    // creation the ticker would still retract it within ~10 ms, so this mostly guards the
    // result, not the race.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW recent AS
               SELECT id FROM ev WHERE ts > now() - INTERVAL '400 milliseconds'",
        )
        .await
        .unwrap();
    let rows = client.query("SELECT * FROM recent", &[]).await.unwrap();
    assert!(rows.is_empty(), "{} rows", rows.len());
}
