//! What one client may take of the server: connections at once (53300), statement size
//! (54000), memory per query (53200), time idle in a transaction block (FATAL 25P03); and a
//! thousand connections at once, then a storm of short ones, with the server answering
//! throughout.

use std::time::Duration;

use eddy::engine::EngineConfig;
use eddy::server::{Server, ServerOptions};
use tokio_postgres::NoTls;

mod common;
use common::connect;

async fn start_limited(
    configure: impl FnOnce(&mut ServerOptions),
    engine: impl FnOnce(&mut EngineConfig),
) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path().to_path_buf());
    engine(&mut config);
    let mut options = ServerOptions::new("127.0.0.1:0".parse().unwrap());
    configure(&mut options);
    let server = Server::start_with_options(config, options).await.unwrap();
    (server, dir)
}

async fn try_connect(
    server: &Server,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=eddy dbname=eddy connect_timeout=20",
            server.local_addr().port()
        ),
        NoTls,
    )
    .await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_next_gets_53300_until_one_closes() {
    let (server, _dir) = start_limited(|o| o.max_connections = 3, |_| {}).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(try_connect(&server).await.unwrap());
    }
    let e = match try_connect(&server).await {
        Ok(_) => panic!("a fourth connection was accepted"),
        Err(e) => e,
    };
    let db = e.as_db_error().expect("an error from the server");
    assert_eq!(db.code().code(), "53300");
    assert_eq!(db.message(), "sorry, too many clients already");
    // The open ones still work; closing one makes room.
    for (client, _) in &open {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let (client, task) = open.pop().unwrap();
    drop(client);
    let _ = task.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match try_connect(&server).await {
            Ok((client, _)) => {
                client.simple_query("SELECT 1").await.unwrap();
                break;
            }
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no room made: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_max_statement_size_gets_54000() {
    let (server, _dir) = start_limited(|o| o.max_statement_size = 1000, |_| {}).await;
    let client = connect(&server).await;
    let long = format!("SELECT '{}'", "x".repeat(2000));
    for result in [
        client.simple_query(&long).await.map(|_| ()),
        client.query(&long, &[]).await.map(|_| ()),
    ] {
        let e = result.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("54000"), "{e}");
    }
    let short = format!("SELECT '{}'", "x".repeat(500));
    assert_eq!(client.query(&short, &[]).await.unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_memory_gets_53200_and_other_sessions_go_on() {
    let (server, _dir) = start_limited(|_| {}, |e| e.query_memory = 2 << 20).await;
    let client = connect(&server).await;
    let other = connect(&server).await;
    let e = client
        .simple_query(
            "SELECT v, count(*) FROM (SELECT value % 400000 AS v FROM generate_series(1, 2000000)) \
             GROUP BY v ORDER BY 2 DESC, 1",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("53200"), "{e}");
    let rows = other
        .query("SELECT count(*) FROM generate_series(1, 1000)", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1000);
    client.simple_query("SELECT 1").await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_idle_in_a_transaction_past_its_timeout_ends_and_rolls_back() {
    let (server, _dir) = start_limited(
        |o| o.idle_in_transaction_timeout = Duration::from_millis(400),
        |_| {},
    )
    .await;
    let reader = connect(&server).await;
    reader
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let show = reader
        .simple_query("SHOW idle_in_transaction_session_timeout")
        .await
        .unwrap();
    assert!(
        matches!(&show[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("400"))
    );

    // Idle outside a transaction block: kept.
    let (idle, _) = try_connect(&server).await.unwrap();
    // Idle inside one: ended, its write rolled back.
    let (client, task) = try_connect(&server).await.unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // A session that sets its own, longer timeout is kept.
    let (patient, _) = try_connect(&server).await.unwrap();
    patient
        .batch_execute("SET idle_in_transaction_session_timeout = '1h'; BEGIN; SELECT 1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(client.is_closed(), "the session ended: {e}");
    let _ = task.await;
    idle.simple_query("SELECT 1").await.unwrap();
    patient.batch_execute("COMMIT").await.unwrap();
    let rows = reader.query("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(
        rows[0].get::<_, i64>(0),
        0,
        "the idle transaction was rolled back"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_at_once_then_a_storm_and_the_server_answers() {
    let (server, _dir) = start_limited(|_| {}, |_| {}).await;
    let admin = connect(&server).await;
    admin
        .batch_execute(
            "CREATE TABLE hits (id int, n int); \
             CREATE MATERIALIZED VIEW total AS SELECT count(*) AS c FROM hits",
        )
        .await
        .unwrap();
    // 999 more, all open at once, each writing and reading.
    let mut connecting = tokio::task::JoinSet::new();
    for id in 0..999 {
        let port = server.local_addr().port();
        connecting.spawn(async move {
            let (client, conn) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user=eddy dbname=eddy connect_timeout=60"),
                NoTls,
            )
            .await
            .unwrap_or_else(|e| panic!("connection {id}: {e}"));
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
                .execute("INSERT INTO hits VALUES ($1, 1)", &[&id])
                .await
                .unwrap();
            client
        });
    }
    let mut clients = Vec::new();
    while let Some(client) = connecting.join_next().await {
        clients.push(client.unwrap());
    }
    assert_eq!(clients.len(), 999);
    for client in clients.iter().step_by(50) {
        let rows = client.query("SELECT c FROM total", &[]).await.unwrap();
        assert_eq!(rows[0].get::<_, i64>(0), 999);
    }
    let sessions = admin
        .query("SELECT count(*) FROM eddy_catalog.subscriptions", &[])
        .await;
    assert!(sessions.is_ok());
    drop(clients);
    // A storm: 2,000 short connections, 100 at a time, while the admin session keeps asking.
    let port = server.local_addr().port();
    let storm = tokio::spawn(async move {
        let mut failed = 0;
        for _ in 0..20 {
            let mut wave = tokio::task::JoinSet::new();
            for _ in 0..100 {
                wave.spawn(async move {
                    let (client, conn) = tokio_postgres::connect(
                        &format!(
                            "host=127.0.0.1 port={port} user=eddy dbname=eddy connect_timeout=60"
                        ),
                        NoTls,
                    )
                    .await?;
                    let task = tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    client.simple_query("SELECT 1").await?;
                    drop(client);
                    let _ = task.await;
                    Ok::<_, tokio_postgres::Error>(())
                });
            }
            while let Some(r) = wave.join_next().await {
                if r.unwrap().is_err() {
                    failed += 1;
                }
            }
        }
        failed
    });
    let mut answered = 0;
    while !storm.is_finished() {
        let started = std::time::Instant::now();
        admin.simple_query("SELECT 1").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server stopped answering during the storm"
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(storm.await.unwrap(), 0, "connections of the storm failed");
    assert!(answered > 0);
    let rows = admin.query("SELECT c FROM total", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 999);
    server.shutdown().await;
}
