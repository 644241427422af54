//! What a running view is doing, through SQL: `EXPLAIN ANALYZE MATERIALIZED VIEW` and
//! `eddy_catalog.dataflow_operators` count the rows each operator received and emitted and
//! the state it holds.

mod common;
use common::{connect, query_rows, start};

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
