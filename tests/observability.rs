//! What a running view is doing, through SQL: `EXPLAIN ANALYZE MATERIALIZED VIEW` and
//! `eddy_catalog.dataflow_operators` count the rows each operator received and emitted and
//! the state it holds.

use futures::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{connect, connect_with_notices, query_rows, start, start_with_server_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_has_the_system_views_counters_in_prometheus_text() {
    let (server, _dir) = start_with_server_options(|o| {
        o.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE bids (auction bigint, price bigint);
             CREATE MATERIALIZED VIEW top AS SELECT auction, max(price) AS top FROM bids GROUP BY auction;
             INSERT INTO bids VALUES (1, 10), (2, 20), (1, 30);",
        )
        .await
        .unwrap();
    assert_eq!(
        query_rows(&client, "SELECT count(*) FROM top").await,
        [["2"]]
    );
    let mut http = tokio::net::TcpStream::connect(server.metrics_addr().unwrap())
        .await
        .unwrap();
    http.write_all(b"GET /metrics HTTP/1.0\r\nHost: eddy\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    for line in [
        "eddy_connections 1",
        "# TYPE eddy_sources_rows_written counter",
        "eddy_sources_rows_written{table_name=\"bids\"} 3",
        "eddy_materialized_views_rows{view_name=\"top\",status=\"running\"} 2",
        "# TYPE eddy_dataflow_operators_rows_in counter",
    ] {
        assert!(
            response.lines().any(|l| l == line),
            "no {line:?} in\n{response}"
        );
    }
    assert!(
        response.lines().any(|l| l
            .starts_with("eddy_dataflow_operators_rows_out{view_name=\"top\",operator_id=\"")
            && l.contains("operator=\"Materialize: top\"")
            && l.ends_with(" 2")),
        "{response}"
    );
    drop(client);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_analyze_and_dataflow_operators_count_each_operators_rows() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE bids (auction bigint, price bigint);
             CREATE MATERIALIZED VIEW top AS
               SELECT auction, max(price) AS top FROM bids WHERE price > 10 GROUP BY auction;
             INSERT INTO bids SELECT value % 4, value FROM generate_series(1, 100);",
        )
        .await
        .unwrap();
    // A read of the view waits for the dataflow to catch up with the write.
    assert_eq!(
        query_rows(&client, "SELECT count(*) FROM top").await,
        [["4"]]
    );
    let operators = query_rows(
        &client,
        "SELECT operator, rows_in, rows_out, state_rows, state_bytes > 0 \
         FROM eddy_catalog.dataflow_operators \
         WHERE view_name = 'top' ORDER BY operator_id",
    )
    .await;
    let find = |prefix: &str| {
        operators
            .iter()
            .find(|r| r[0].starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {operators:?}"))
            .clone()
    };
    assert_eq!(find("Source: table bids")[1..3], ["100", "100"]);
    let filter = find("FilterProject: filter=");
    assert_eq!(filter[1..3], ["100", "90"], "{filter:?}");
    let aggregate = find("HashAggregate");
    assert_eq!(aggregate[1..4], ["90", "4", "4"], "{aggregate:?}");
    assert_eq!(aggregate[4], "t", "{aggregate:?}");
    // The view's rows are the sink's state.
    assert_eq!(find("Materialize: top")[1..5], ["4", "4", "4", "t"]);

    let plan: Vec<String> = query_rows(&client, "EXPLAIN ANALYZE MATERIALIZED VIEW top")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert!(
        plan[0].starts_with("Materialize: top (rows in 4, out 4; busy "),
        "{plan:?}"
    );
    assert!(
        plan.iter()
            .any(|l| l.trim_start().starts_with("HashAggregate:")
                && l.contains("(rows in 90, out 4; busy ")),
        "{plan:?}"
    );
    assert!(plan.last().unwrap().starts_with("Epoch "), "{plan:?}");
    // Sources: rows now and written since start (a delete is a row written too); views.
    client
        .batch_execute("DELETE FROM bids WHERE price > 90")
        .await
        .unwrap();
    let sources = query_rows(
        &client,
        "SELECT table_name, source_name, rows, rows_written, rows_per_second > 0, late_rows          FROM eddy_catalog.sources",
    )
    .await;
    assert_eq!(sources, [["bids", "NULL", "90", "110", "t", "0"]]);
    let views = query_rows(
        &client,
        "SELECT view_name, status, error, rows, behind_lsn >= 0 FROM eddy_catalog.materialized_views",
    )
    .await;
    assert_eq!(views, [["top", "running", "NULL", "4", "t"]]);
    let e = client
        .simple_query("EXPLAIN ANALYZE MATERIALIZED VIEW nope")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backfill_reports_its_progress_in_notices_and_the_system_view() {
    let (server, _dir) = start().await;
    let (client, mut notices) = connect_with_notices(&server).await;
    client
        .batch_execute(
            "CREATE TABLE events (id bigint, k bigint);
             INSERT INTO events SELECT i, i % 1000 FROM generate_series(1, 300000) AS s(i);
             SET backfill_progress_interval = '1ms';",
        )
        .await
        .unwrap();
    let create = tokio::spawn(async move {
        client
            .batch_execute(
                "CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n FROM events GROUP BY k",
            )
            .await
            .unwrap();
        client
    });
    // Progress comes while the statement runs, not after it.
    let first = tokio::time::timeout(std::time::Duration::from_secs(60), notices.recv())
        .await
        .expect("no progress NOTICE within 60 s")
        .unwrap();
    assert!(
        first.starts_with("materialized view \"per_k\": "),
        "{first}"
    );
    let client = create.await.unwrap();
    let mut reported = vec![first];
    while let Ok(n) = notices.try_recv() {
        reported.push(n);
    }
    // "backfilled N of 300000 input rows (P%, S s)", N growing.
    let done: Vec<u64> = reported
        .iter()
        .filter_map(|n| n.split("backfilled ").nth(1))
        .map(|rest| {
            assert!(rest.contains(" of 300000 input rows ("), "{rest}");
            rest.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(!done.is_empty(), "{reported:?}");
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{reported:?}");
    assert!(done.iter().all(|n| *n <= 300_000), "{reported:?}");
    assert_eq!(
        query_rows(
            &client,
            "SELECT status, backfill_rows_done, backfill_rows_total, backfill_seconds > 0
             FROM eddy_catalog.materialized_views WHERE view_name = 'per_k'"
        )
        .await,
        [["running", "300000", "300000", "t"]]
    );
    assert_eq!(
        query_rows(&client, "SELECT count(*), sum(n) FROM per_k").await,
        [["1000", "300000"]]
    );
    // Off: no NOTICE at all.
    client
        .batch_execute(
            "SET backfill_progress_interval = 0;
             CREATE MATERIALIZED VIEW per_k2 AS SELECT k, count(*) AS n FROM events GROUP BY k;",
        )
        .await
        .unwrap();
    assert!(notices.try_recv().is_err());
    let bad = client
        .batch_execute("SET backfill_progress_interval = 'soon'")
        .await
        .unwrap_err();
    assert_eq!(bad.code().unwrap().code(), "22023");
}

/// A connection with this application_name and user (loopback lets any user in).
async fn connect_as(
    server: &eddy::server::Server,
    user: &str,
    app: &str,
) -> tokio_postgres::Client {
    let conninfo = common::conninfo(server).replace("user=eddy", &format!("user={user}"));
    let (client, conn) = tokio_postgres::connect(
        &format!("{conninfo} application_name={app}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

/// pg_stat_activity lists each connection with what it is doing; pg_cancel_backend stops a
/// running statement (a subscription here), pg_terminate_backend ends a connection and its
/// open transaction; a role that is not a superuser may signal only its own sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_stat_activity_shows_sessions_and_pg_cancel_and_terminate_backend_stop_them() {
    let (server, _dir) = start().await;
    let admin = connect_as(&server, "eddy", "admin").await;
    admin
        .batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let writer = connect_as(&server, "eddy", "writer").await;
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    let subscriber = connect_as(&server, "eddy", "subscriber").await;
    let subscription = tokio::spawn(async move {
        let lines = subscriber
            .copy_out("COPY (SUBSCRIBE t) TO STDOUT")
            .await
            .unwrap();
        // The rows, until the error that ends them.
        let end = futures::TryStreamExt::try_collect::<Vec<_>>(lines).await;
        (subscriber, end)
    });
    // Wait until the subscription is running.
    let activity = "SELECT application_name, usename, state, query, client_addr, \
                    xact_start IS NOT NULL, backend_start <= query_start \
                    FROM pg_stat_activity ORDER BY application_name";
    let mut rows = Vec::new();
    for _ in 0..200 {
        rows = query_rows(&admin, activity).await;
        if rows.len() == 3 && rows[1][2] == "active" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        rows,
        [
            ["admin", "eddy", "active", activity, "127.0.0.1", "t", "t"],
            [
                "subscriber",
                "eddy",
                "active",
                "COPY (SUBSCRIBE t) TO STDOUT",
                "127.0.0.1",
                "t",
                "t"
            ],
            [
                "writer",
                "eddy",
                "idle in transaction",
                "BEGIN; INSERT INTO t VALUES (2)",
                "127.0.0.1",
                "t",
                "t"
            ],
        ]
    );
    let pid_of =
        |app: &str| format!("(SELECT pid FROM pg_stat_activity WHERE application_name = '{app}')");

    // Another role (not a superuser) sees that eddy's sessions exist, not what they run, and
    // may not signal them.
    let other = connect_as(&server, "bob", "other").await;
    assert_eq!(
        query_rows(
            &other,
            "SELECT current_setting('is_superuser'), state, query FROM pg_stat_activity \
             WHERE application_name = 'writer'"
        )
        .await,
        [["off", "NULL", "<insufficient privilege>"]]
    );
    let denied = other
        .simple_query(&format!(
            "SELECT pg_cancel_backend({})",
            pid_of("subscriber")
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code().unwrap().code(), "42501", "{denied}");
    assert_eq!(
        query_rows(
            &other,
            &format!("SELECT pg_cancel_backend({})", pid_of("other"))
        )
        .await,
        [["t"]]
    );

    // Cancel: the subscription ends with 57014; its connection stays.
    assert_eq!(
        query_rows(
            &admin,
            &format!("SELECT pg_cancel_backend({})", pid_of("subscriber"))
        )
        .await,
        [["t"]]
    );
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), subscription)
        .await
        .expect("the subscription still runs after pg_cancel_backend")
        .unwrap();
    let (subscriber, ended) = ended;
    let error = ended.expect_err("an error ends it");
    assert_eq!(error.code().unwrap().code(), "57014", "{error}");
    assert_eq!(query_rows(&subscriber, "SELECT 1").await, [["1"]]);

    // Terminate: the connection goes, and with it the transaction's insert.
    assert_eq!(
        query_rows(
            &admin,
            &format!("SELECT pg_terminate_backend({})", pid_of("writer"))
        )
        .await,
        [["t"]]
    );
    assert!(writer.simple_query("COMMIT").await.is_err());
    let mut apps = Vec::new();
    for _ in 0..200 {
        apps = query_rows(
            &admin,
            "SELECT application_name FROM pg_stat_activity ORDER BY 1",
        )
        .await;
        if apps.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(apps, [["admin"], ["other"], ["subscriber"]]);
    assert_eq!(query_rows(&admin, "SELECT count(*) FROM t").await, [["1"]]);
    // No such backend: false.
    assert_eq!(
        query_rows(
            &admin,
            "SELECT pg_cancel_backend(-7), pg_terminate_backend(-7)"
        )
        .await,
        [["f", "f"]]
    );

    // COPY FROM STDIN is active while its data streams in, idle once it is committed.
    let sink = subscriber.copy_in("COPY t FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"3\n4\n"))
        .await
        .unwrap();
    let loader = "SELECT state, query FROM pg_stat_activity WHERE application_name = 'subscriber'";
    assert_eq!(
        query_rows(&admin, loader).await,
        [["active", "COPY t FROM STDIN"]]
    );
    assert_eq!(sink.finish().await.unwrap(), 2);
    assert_eq!(
        query_rows(&admin, loader).await,
        [["idle", "COPY t FROM STDIN"]]
    );
}
