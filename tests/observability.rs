//! What a running view is doing, through SQL: `EXPLAIN ANALYZE MATERIALIZED VIEW` and
//! `eddy_catalog.dataflow_operators` count the rows each operator received and emitted and
//! the state it holds.

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
        "SELECT operator, rows_in, rows_out, state_rows FROM eddy_catalog.dataflow_operators \
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
    assert_eq!(find("Materialize: top")[1..3], ["4", "4"]);

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
