//! The Nexmark source (`CREATE SOURCE … FROM NEXMARK`): what it writes, what it refuses, and
//! every Nexmark query of `benches/nexmark/` as a materialized view equal to the same query
//! run ad hoc over the same events.

use std::time::Duration;

use tokio_postgres::Client;

mod common;
use common::{connect, nexmark_queries, sorted_rows, start};

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// Waits until `SHOW SOURCES` says source `name` is done; its event count.
async fn wait_done(client: &Client, name: &str) -> i64 {
    for _ in 0..6000 {
        let rows = sorted_rows(client, "SHOW SOURCES").await;
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("{name}|")))
            .unwrap_or_else(|| panic!("{name} is not in SHOW SOURCES: {rows:?}"));
        let fields: Vec<&str> = row.split('|').collect();
        assert_eq!(fields[4], "NULL", "the source stopped: {row}");
        if fields[3] == "t" {
            return fields[2].parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("source {name} did not finish in a minute");
}

/// Waits until a checkpoint covers all of the source's `events`: none is left in memory.
async fn wait_checkpointed(client: &Client, events: u64) {
    let memory = "SELECT table_rows_in_memory, table_rows_in_store FROM eddy_catalog.memory";
    for _ in 0..3000 {
        if sorted_rows(client, memory).await == [format!("0|{events}")] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no checkpoint took the events out of memory");
}

#[tokio::test]
async fn a_nexmark_source_feeds_its_tables_and_no_one_else_writes_them() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE SOURCE nexmark FROM NEXMARK WITH (max_events = 5000, seed = 1,
                 start_time = '2025-01-01 00:00:00')",
        )
        .await
        .unwrap();
    assert_eq!(wait_done(&client, "nexmark").await, 5000);
    wait_checkpointed(&client, 5000).await;
    // 1 person, 3 auctions and 46 bids of every 50 events, 10,000 events per second of
    // event time (rounded to the millisecond).
    assert_eq!(
        sorted_rows(
            &client,
            "SELECT 'bid', count(*), min(date_time), max(date_time) FROM bid
             UNION ALL SELECT 'person', count(*), min(date_time), max(date_time) FROM person
             UNION ALL SELECT 'auction', count(*), min(date_time), max(date_time) FROM auction"
        )
        .await,
        [
            "auction|300|2025-01-01 00:00:00|2025-01-01 00:00:00.495",
            "bid|4600|2025-01-01 00:00:00|2025-01-01 00:00:00.5",
            "person|100|2025-01-01 00:00:00|2025-01-01 00:00:00.495",
        ]
    );
    // The data are Nexmark's: seed 1 is the generator's own stream.
    assert_eq!(
        sorted_rows(
            &client,
            "SELECT id, name, city, state FROM person WHERE id < 1002"
        )
        .await,
        ["1000|vicky noris|cheyenne|az", "1001|peter smith|boise|wa"]
    );
    // Another seed, another (reproducible) stream.
    client.batch_execute("DROP SOURCE nexmark").await.unwrap();
    client
        .batch_execute("CREATE SOURCE nexmark FROM NEXMARK WITH (max_events = 50, seed = 2)")
        .await
        .unwrap();
    wait_done(&client, "nexmark").await;
    assert_ne!(
        sorted_rows(&client, "SELECT name FROM person").await,
        ["vicky noris"]
    );

    // Only the source writes its tables, and they go with it.
    for (sql, expected) in [
        (
            "INSERT INTO bid VALUES (1, 1, 1, 'c', 'u', '2025-01-01', 'x')",
            "42809",
        ),
        ("DELETE FROM person", "42809"),
        ("DROP TABLE bid", "2BP01"),
        ("CREATE SOURCE nexmark FROM NEXMARK", "42710"),
        ("CREATE SOURCE other FROM NEXMARK", "42P07"),
        ("CREATE SOURCE other FROM KAFKA", "0A000"),
        ("CREATE SOURCE other FROM NEXMARK WITH (speed = 1)", "22023"),
        (
            "CREATE SOURCE other FROM NEXMARK WITH (seed = 'x')",
            "22023",
        ),
        (
            "CREATE SOURCE other FROM NEXMARK WITH (start_time = 'soon')",
            "22007",
        ),
        ("CREATE SOURCE other NEXMARK", "42601"),
        ("DROP SOURCE missing", "42704"),
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(code(&e), expected, "{sql}: {e}");
    }
    let Err(e) = client
        .copy_in::<_, bytes::Bytes>("COPY bid FROM STDIN")
        .await
    else {
        panic!("COPY into a source's table started");
    };
    assert_eq!(code(&e), "42809");
    client
        .batch_execute(
            "CREATE SOURCE IF NOT EXISTS nexmark FROM NEXMARK; DROP SOURCE IF EXISTS missing",
        )
        .await
        .unwrap();
    client
        .batch_execute("CREATE MATERIALIZED VIEW names AS SELECT name FROM person")
        .await
        .unwrap();
    let e = client
        .batch_execute("DROP SOURCE nexmark")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "2BP01");
    let e = client
        .batch_execute("BEGIN; DROP SOURCE nexmark CASCADE")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "DDL in a transaction block: {e}");
    client.batch_execute("ROLLBACK").await.unwrap();
    client
        .batch_execute("DROP SOURCE nexmark CASCADE")
        .await
        .unwrap();
    assert!(sorted_rows(&client, "SHOW SOURCES").await.is_empty());
    for gone in ["SELECT * FROM bid", "SELECT * FROM names"] {
        let e = client.batch_execute(gone).await.unwrap_err();
        assert_eq!(code(&e), "42P01", "{gone}");
    }
}

#[tokio::test]
async fn every_nexmark_query_as_a_view_equals_the_query_run_ad_hoc() {
    let (server, _dir) = start().await;
    let client = connect(&server).await;
    let queries = nexmark_queries();
    assert!(queries.len() >= 8, "{queries:?}");
    // Views created before the events (kept current) and after them (backfilled).
    client
        .batch_execute(
            "CREATE SOURCE nexmark FROM NEXMARK WITH (max_events = 20000, events_per_second = 20000,
                 start_time = '2025-01-01 00:00:00')",
        )
        .await
        .unwrap();
    for (name, sql) in &queries[..queries.len() / 2] {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {sql}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    wait_done(&client, "nexmark").await;
    // Once a checkpoint covers them the events leave memory, and are made anew when read:
    // the views created now backfill from those rows, and the ad-hoc queries read them.
    wait_checkpointed(&client, 20_000).await;
    for (name, sql) in &queries[queries.len() / 2..] {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {sql}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, sql) in &queries {
        let view = sorted_rows(&client, &format!("SELECT * FROM {name}")).await;
        let ad_hoc = sorted_rows(&client, sql).await;
        assert!(!ad_hoc.is_empty(), "{name} is empty");
        assert!(view == ad_hoc, "{name}: the view differs from the query");
    }
}
