//! Differential test of materialized views: random tables, random rounds of INSERT / UPDATE /
//! DELETE, and a set of views covering every construct the dataflow engine maintains. After
//! every round each view must equal DataFusion's batch execution of the same query over the
//! same data (the "oracle" query, run ad hoc), and a subscriber to each view, adding up the
//! snapshot and every diff it received, must hold exactly the view's rows.
//!
//! The stream `ev` has a watermark (3 s behind its latest event) and gets events up to 8 s
//! out of order, so some are late and refused: the windowed views over it must equal the
//! batch recomputation over the rows that were on time (those in the table), and the EMIT ON
//! WINDOW CLOSE views the recomputation of the windows the watermark has passed. (SESSION
//! windows are recomputed by DataFusion as the window functions they stand for ad hoc.)
//!
//! `EDDY_DIFF_ROUNDS` (default 25) and `EDDY_DIFF_SEEDS` (default "1,2") make longer runs.

use tokio_postgres::{Client, SimpleQueryMessage};

mod common;

/// (name, view query, oracle query). The oracle is the same query, with views it reads inlined.
const VIEWS: &[(&str, &str, &str)] = &[
    (
        "v_proj",
        "SELECT id, k, v * 2 + 1 AS v2, upper(s) AS us, CASE WHEN b THEN 'y' ELSE 'n' END AS yb, coalesce(f, 0) + 1 AS f1 FROM t1 WHERE v > 3 OR s = 'a'",
        "",
    ),
    (
        "v_agg",
        "SELECT k, count(*) AS n, count(v) AS nv, sum(v) AS sv, avg(v) AS av, min(v) AS mn, max(v) AS mx, min(s) AS ms, max(s) AS xs, count(DISTINCT s) AS ds, bool_and(b) AS ba, bool_or(b) AS bo, sum(f) AS sf FROM t1 GROUP BY k",
        "",
    ),
    (
        "v_stragg",
        "SELECT k, string_agg(s, ',' ORDER BY s) AS ss, count(DISTINCT v) AS dv FROM t1 GROUP BY k",
        "",
    ),
    (
        "v_having",
        "SELECT s, sum(v) AS sv FROM t1 GROUP BY s HAVING count(*) > 1",
        "",
    ),
    (
        "v_global",
        "SELECT count(*) AS n, sum(v) AS sv, min(f) AS mf, max(s) AS ms, avg(f) AS af FROM t1",
        "",
    ),
    (
        "v_global_filtered",
        "SELECT count(*) AS n, sum(w) AS sw FROM t2 WHERE w > 20",
        "",
    ),
    ("v_distinct", "SELECT DISTINCT k, s FROM t1", ""),
    (
        "v_union_all",
        "SELECT k, s FROM t1 UNION ALL SELECT k, s FROM t2",
        "",
    ),
    ("v_union", "SELECT k FROM t1 UNION SELECT k FROM t3", ""),
    ("v_except", "SELECT k FROM t1 EXCEPT SELECT k FROM t2", ""),
    (
        "v_intersect",
        "SELECT k, s FROM t1 INTERSECT SELECT k, s FROM t2",
        "",
    ),
    (
        "v_join",
        "SELECT t1.id, t2.id AS id2, t1.v, t2.w FROM t1 JOIN t2 ON t1.k = t2.k",
        "",
    ),
    (
        "v_join_residual",
        "SELECT t1.id, t2.id AS id2 FROM t1 JOIN t2 ON t1.k = t2.k AND t1.v < t2.w",
        "",
    ),
    (
        "v_left",
        "SELECT t1.id, t2.id AS id2 FROM t1 LEFT JOIN t2 ON t1.k = t2.k AND t2.w > 5",
        "",
    ),
    (
        "v_right",
        "SELECT t1.id, t2.id AS id2 FROM t1 RIGHT JOIN t2 ON t1.k = t2.k",
        "",
    ),
    (
        "v_full",
        "SELECT t1.id, t2.id AS id2 FROM t1 FULL JOIN t2 ON t1.k = t2.k AND t1.s = t2.s",
        "",
    ),
    (
        "v_three_way",
        "SELECT t1.id, t2.id AS id2, t3.label FROM t1 JOIN t2 ON t1.k = t2.k JOIN t3 ON t2.k = t3.k",
        "",
    ),
    (
        "v_dup_join",
        "SELECT a.label, b.label AS l2 FROM t3 a JOIN t3 b ON a.k = b.k",
        "",
    ),
    (
        "v_exists",
        "SELECT id FROM t1 WHERE EXISTS (SELECT 1 FROM t2 WHERE t2.k = t1.k AND t2.w > t1.v)",
        "",
    ),
    (
        "v_not_exists",
        "SELECT id FROM t1 WHERE NOT EXISTS (SELECT 1 FROM t3 WHERE t3.k = t1.k)",
        "",
    ),
    (
        "v_not_in",
        "SELECT id, k FROM t1 WHERE k NOT IN (SELECT k FROM t2 WHERE w > 10)",
        "",
    ),
    (
        "v_in",
        "SELECT id FROM t1 WHERE k IN (SELECT k FROM t2 WHERE w > 3)",
        "",
    ),
    (
        "v_scalar",
        "SELECT id, (SELECT max(w) FROM t2 WHERE t2.k = t1.k) AS mw FROM t1",
        "",
    ),
    (
        "v_scalar_uncorrelated",
        "SELECT id, v, (SELECT max(w) FROM t2) AS mw FROM t1 WHERE v > (SELECT avg(v) FROM t1)",
        "",
    ),
    (
        "v_distinct_on",
        "SELECT DISTINCT ON (k) k, id, v FROM t1 ORDER BY k, v DESC NULLS LAST, id",
        "",
    ),
    (
        "v_agg_join",
        "SELECT t1.k, count(*) AS n, sum(t2.w) AS sw FROM t1 JOIN t2 ON t1.k = t2.k GROUP BY t1.k",
        "",
    ),
    (
        "v_topk",
        "SELECT id, v FROM t1 ORDER BY v DESC NULLS LAST, id LIMIT 3",
        "",
    ),
    (
        "v_topk_offset",
        "SELECT id, v FROM t1 ORDER BY v, id LIMIT 4 OFFSET 2",
        "",
    ),
    (
        "v_row_number",
        "SELECT * FROM (SELECT k, id, v, row_number() OVER (PARTITION BY k ORDER BY v DESC, id) AS r FROM t1) x WHERE r <= 2",
        "",
    ),
    (
        "v_rank",
        "SELECT * FROM (SELECT k, id, rank() OVER (PARTITION BY k ORDER BY v) AS r FROM t1) x WHERE r <= 2",
        "",
    ),
    (
        "v_dense_rank",
        "SELECT k, id, r FROM (SELECT k, id, v, dense_rank() OVER (PARTITION BY k ORDER BY v) AS r FROM t1) x WHERE r < 3 AND id > 2",
        "",
    ),
    (
        "v_on_view",
        "SELECT k, n * 10 AS n10, sv FROM v_agg WHERE n > 1",
        "SELECT k, n * 10 AS n10, sv FROM (SELECT k, count(*) AS n, sum(v) AS sv FROM t1 GROUP BY k) v WHERE n > 1",
    ),
    (
        "v_tumble",
        "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS sv, max(v) AS mx FROM TUMBLE(ev, ts, INTERVAL '5 seconds') GROUP BY window_start, window_end, k",
        "",
    ),
    (
        "v_hop",
        "SELECT window_start, count(*) AS n, min(v) AS mn FROM HOP(ev, ts, INTERVAL '2 seconds', INTERVAL '6 seconds') GROUP BY window_start",
        "",
    ),
    (
        "v_window_close",
        "SELECT window_start, window_end, count(*) AS n, sum(v) AS sv FROM TUMBLE(ev, ts, INTERVAL '5 seconds') GROUP BY window_start, window_end EMIT ON WINDOW CLOSE",
        "SELECT window_start, window_end, count(*) AS n, sum(v) AS sv FROM TUMBLE(ev, ts, INTERVAL '5 seconds') GROUP BY window_start, window_end HAVING window_end <= (SELECT max(watermark)::timestamp FROM eddy_catalog.watermarks WHERE table_name = 'ev')",
    ),
    (
        "v_window_top",
        "SELECT * FROM (SELECT window_start, id, v, row_number() OVER (PARTITION BY window_start ORDER BY v DESC, id) AS r FROM TUMBLE(ev, ts, INTERVAL '5 seconds')) x WHERE r <= 2",
        "",
    ),
    (
        "v_window_join",
        "SELECT a.window_start, a.id, b.id AS id2 FROM TUMBLE(ev, ts, INTERVAL '5 seconds') a JOIN TUMBLE(ev, ts, INTERVAL '5 seconds') b ON a.window_start = b.window_start AND a.k = b.k AND a.id < b.id",
        "",
    ),
    (
        "v_session",
        "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS sv FROM SESSION(ev, ts, INTERVAL '2 seconds', k) GROUP BY k, window_start, window_end",
        "",
    ),
    (
        "v_session_rows",
        "SELECT id, window_start, window_end FROM SESSION(ev, ts, INTERVAL '1 second') AS s",
        "",
    ),
    (
        "v_session_close",
        "SELECT k, window_start, window_end, count(*) AS n FROM SESSION(ev, ts, INTERVAL '2 seconds', k) GROUP BY k, window_start, window_end EMIT ON WINDOW CLOSE",
        "SELECT k, window_start, window_end, count(*) AS n FROM SESSION(ev, ts, INTERVAL '2 seconds', k) GROUP BY k, window_start, window_end HAVING window_end < (SELECT max(watermark)::timestamp FROM eddy_catalog.watermarks WHERE table_name = 'ev')",
    ),
    (
        "v_values",
        "SELECT * FROM (VALUES (1, 'one'), (2, 'two')) AS c(n, name) WHERE n IN (SELECT k FROM t3)",
        "",
    ),
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn opt<T: std::fmt::Display>(rng: &mut Rng, v: T) -> String {
    if rng.chance(12) {
        "NULL".into()
    } else {
        v.to_string()
    }
}

fn text(rng: &mut Rng) -> String {
    if rng.chance(10) {
        "NULL".into()
    } else {
        format!("'{}'", ["a", "b", "c", "d"][rng.below(4) as usize])
    }
}

/// One round of random writes as a list of statements.
/// The stream's event clock: seconds after 2026-01-01 00:00.
struct EventClock(u64);

fn round(
    rng: &mut Rng,
    next_id: &mut i64,
    live1: &mut Vec<i64>,
    live2: &mut Vec<i64>,
    clock: &mut EventClock,
) -> Vec<String> {
    let mut out = Vec::new();
    let ops = 1 + rng.below(6);
    for _ in 0..ops {
        match rng.below(14) {
            12 | 13 => {
                let n = 1 + rng.below(4);
                let rows: Vec<String> = (0..n)
                    .map(|_| {
                        *next_id += 1;
                        clock.0 += rng.below(3);
                        // Up to 8 s out of order: behind the watermark (3 s) now and then.
                        let secs = clock.0.saturating_sub(rng.below(9));
                        format!(
                            "({}, {}, {}, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{secs} seconds' + INTERVAL '{} milliseconds')",
                            next_id,
                            rng.below(3),
                            rng.below(50) as i64 - 10,
                            rng.below(1000)
                        )
                    })
                    .collect();
                out.push(format!("INSERT INTO ev VALUES {}", rows.join(", ")));
            }
            0..=3 => {
                let n = 1 + rng.below(4);
                let rows: Vec<String> = (0..n)
                    .map(|_| {
                        *next_id += 1;
                        live1.push(*next_id);
                        let k = rng.below(6);
                        let v = rng.below(25) as i64 - 5;
                        let f = format!("{}.{}", rng.below(50), rng.below(100));
                        let b = ["true", "false"][rng.below(2) as usize];
                        format!(
                            "({}, {}, {}, {}, {}, {})",
                            next_id,
                            opt(rng, k),
                            opt(rng, v),
                            opt(rng, f),
                            text(rng),
                            opt(rng, b)
                        )
                    })
                    .collect();
                out.push(format!("INSERT INTO t1 VALUES {}", rows.join(", ")));
            }
            4 | 5 => {
                let n = 1 + rng.below(3);
                let rows: Vec<String> = (0..n)
                    .map(|_| {
                        *next_id += 1;
                        live2.push(*next_id);
                        let k = rng.below(6);
                        let w = rng.below(30);
                        format!(
                            "({}, {}, {}, {})",
                            next_id,
                            opt(rng, k),
                            opt(rng, w),
                            text(rng)
                        )
                    })
                    .collect();
                out.push(format!("INSERT INTO t2 VALUES {}", rows.join(", ")));
            }
            6 => {
                let k = rng.below(6);
                let label = text(rng);
                out.push(format!(
                    "INSERT INTO t3 VALUES ({}, {label}), ({}, {label})",
                    opt(rng, k),
                    k
                ));
            }
            7 if !live1.is_empty() => {
                let id = live1[rng.below(live1.len() as u64) as usize];
                let v = rng.below(25) as i64 - 5;
                let k = rng.below(6);
                out.push(format!(
                    "UPDATE t1 SET v = {}, k = {}, s = {} WHERE id = {id}",
                    opt(rng, v),
                    opt(rng, k),
                    text(rng)
                ));
            }
            8 if !live1.is_empty() => {
                let at = rng.below(live1.len() as u64) as usize;
                let id = live1.swap_remove(at);
                out.push(format!("DELETE FROM t1 WHERE id = {id}"));
            }
            9 if !live2.is_empty() => {
                let at = rng.below(live2.len() as u64) as usize;
                let id = live2.swap_remove(at);
                out.push(format!("DELETE FROM t2 WHERE id = {id}"));
            }
            10 => {
                let k = rng.below(6);
                out.push(format!("DELETE FROM t3 WHERE k = {k}"));
                out.push(format!("UPDATE t2 SET w = w + 7 WHERE k = {k}"));
            }
            _ => {
                if rng.chance(30) {
                    // Everything goes, then comes back in later rounds.
                    out.push("DELETE FROM t1".into());
                    out.push("DELETE FROM t2".into());
                    live1.clear();
                    live2.clear();
                }
            }
        }
    }
    out
}

/// Rows as text, sorted by a rounded form (float sums depend on summation order).
async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let mut out = rows_in_order(client, sql).await?;
    sort_rows(&mut out);
    Ok(out)
}

/// Rows as text, in the order they came.
async fn rows_in_order(client: &Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {:?}", e.as_db_error().map(|d| d.message())))?;
    let out: Vec<Vec<String>> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    Ok(out)
}

/// Sorts rows by a rounded form (float sums depend on summation order).
fn sort_rows(rows: &mut [Vec<String>]) {
    let rounded = |row: &Vec<String>| -> Vec<String> {
        row.iter()
            .map(|v| match v.parse::<f64>() {
                Ok(f) => format!("{:.3}", f + 0.0),
                Err(_) => v.clone(),
            })
            .collect()
    };
    rows.sort_by_key(rounded);
}

/// A subscriber's view of one view: the snapshot plus every diff, as row → multiplicity.
#[derive(Default)]
struct Accumulated {
    rows: std::collections::HashMap<Vec<String>, i64>,
    last_epoch: i64,
}

impl Accumulated {
    /// Adds what `FETCH ALL` returned (`_epoch`, `_diff`, columns…).
    fn add(&mut self, fetched: &[Vec<String>], name: &str) {
        let mut in_epoch = std::collections::HashSet::new();
        for row in fetched {
            let epoch: i64 = row[0].parse().unwrap();
            let diff: i64 = row[1].parse().unwrap();
            assert!(
                epoch >= self.last_epoch,
                "{name}: epoch {epoch} after {}",
                self.last_epoch
            );
            if epoch > self.last_epoch {
                in_epoch.clear();
                self.last_epoch = epoch;
            }
            let data = row[2..].to_vec();
            assert!(
                in_epoch.insert(data.clone()),
                "{name}: row {data:?} twice in epoch {epoch} (not consolidated)"
            );
            assert_ne!(diff, 0, "{name}: a zero diff");
            *self.rows.entry(data).or_default() += diff;
        }
        self.rows.retain(|_, n| *n != 0);
        if let Some((row, n)) = self.rows.iter().find(|(_, n)| **n < 0) {
            panic!("{name}: row {row:?} has multiplicity {n}");
        }
    }

    fn expanded(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for (row, n) in &self.rows {
            for _ in 0..*n {
                out.push(row.clone());
            }
        }
        sort_rows(&mut out);
        out
    }
}

/// Equal, with floats equal up to a relative 1e-9.
fn same(a: &[Vec<String>], b: &[Vec<String>]) -> bool {
    let value = |x: &String, y: &String| {
        x == y
            || match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(p), Ok(q)) => (p - q).abs() <= 1e-9 * p.abs().max(q.abs()).max(1.0),
                _ => false,
            }
    };
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(r, s)| r.len() == s.len() && r.iter().zip(s).all(|(x, y)| value(x, y)))
}

/// `evicting`: a memory budget of 0 and frequent checkpoints, so operators evict whatever is
/// durable and read it back from the store.
async fn run(seed: u64, rounds: usize, evicting: bool) {
    let (server, _dir) = common::start_with(|config| {
        if evicting {
            config.memory_budget = 0;
            config.checkpoint_interval = std::time::Duration::from_millis(5);
        }
    })
    .await;
    let client = common::connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE t1 (id int PRIMARY KEY, k int, v bigint, f double precision, s text, b boolean);
             CREATE TABLE t2 (id int PRIMARY KEY, k int, w bigint, s text);
             CREATE TABLE t3 (k int, label text);
             CREATE TABLE ev (id int, k int, v bigint, ts timestamp,
               WATERMARK FOR ts AS ts - INTERVAL '3 seconds') APPEND ONLY;
             INSERT INTO t3 VALUES (0, 'w'), (1, 'x'), (2, 'y'), (3, 'z'), (4, 'x'), (5, 'y');",
        )
        .await
        .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let (mut next_id, mut live1, mut live2) = (0i64, Vec::new(), Vec::new());
    let mut clock = EventClock(0);
    // Some data before the views exist, so backfill is tested too.
    for stmt in round(&mut rng, &mut next_id, &mut live1, &mut live2, &mut clock) {
        client.batch_execute(&stmt).await.unwrap();
    }
    for (name, query, _) in VIEWS {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {query}"))
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }
    // One subscription per view, read with FETCH after every round.
    let subscriber = common::connect(&server).await;
    subscriber.batch_execute("BEGIN").await.unwrap();
    let mut accumulated = std::collections::HashMap::new();
    for (name, _, _) in VIEWS {
        subscriber
            .batch_execute(&format!("DECLARE c_{name} CURSOR FOR SUBSCRIBE {name}"))
            .await
            .unwrap();
        accumulated.insert(*name, Accumulated::default());
    }
    let mut seen_rows = std::collections::HashSet::new();
    for r in 0..=rounds {
        let stmts = if r == 0 {
            Vec::new()
        } else {
            round(&mut rng, &mut next_id, &mut live1, &mut live2, &mut clock)
        };
        // Sometimes one atomic multi-statement transaction, sometimes statement by statement.
        if rng.chance(50) && !stmts.is_empty() {
            client.batch_execute(&stmts.join(";\n")).await.unwrap();
        } else {
            for stmt in &stmts {
                client.batch_execute(stmt).await.unwrap();
            }
        }
        for (name, query, oracle) in VIEWS {
            let oracle = if oracle.is_empty() { query } else { oracle };
            let context = || {
                format!(
                    "seed {seed}, round {r}, last writes:\n{}",
                    stmts.join(";\n")
                )
            };
            let got = rows(&client, &format!("SELECT * FROM {name}"))
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", context()));
            let want = rows(&client, oracle)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", context()));
            if !got.is_empty() {
                seen_rows.insert(*name);
            }
            assert!(
                same(&got, &want),
                "seed {seed}, round {r}: view {name} differs from batch execution\nlast writes:\n{}\nview:  {got:?}\nbatch: {want:?}",
                stmts.join(";\n")
            );
            // The SELECT waited for the epoch covering the writes: FETCH without waiting gets
            // every change up to it.
            let fetched = rows_in_order(
                &subscriber,
                &format!("FETCH ALL c_{name} WITH (timeout = '0s')"),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", context()));
            let acc = accumulated.get_mut(name).unwrap();
            acc.add(&fetched, name);
            let subscribed = acc.expanded();
            assert!(
                same(&subscribed, &got),
                "seed {seed}, round {r}: the subscription to {name} adds up to something else\nlast writes:\n{}\nsubscribed: {subscribed:?}\nview:       {got:?}",
                stmts.join(";\n")
            );
        }
    }
    let late: i64 = client
        .query_one(
            "SELECT late_rows FROM eddy_catalog.watermarks WHERE table_name = 'ev'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(late > 0, "seed {seed}: no event was ever late");
    if evicting {
        let evictions: i64 = client
            .query_one("SELECT evictions FROM eddy_catalog.memory", &[])
            .await
            .unwrap()
            .get(0);
        assert!(evictions > 0, "seed {seed}: nothing was ever evicted");
    }
    // A view that never had a row tested nothing.
    for (name, _, _) in VIEWS {
        assert!(
            seen_rows.contains(name),
            "seed {seed}: view {name} was always empty"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_equal_batch_recomputation() {
    let rounds: usize = std::env::var("EDDY_DIFF_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let seeds: Vec<u64> = std::env::var("EDDY_DIFF_SEEDS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    for (i, seed) in seeds.into_iter().enumerate() {
        // Every other seed runs under a memory budget of nothing.
        run(seed, rounds, i % 2 == 1).await;
    }
}
