//! The crash harness: writers inserting, updating and deleting (alone and in transactions) with
//! every acknowledgement recorded, an APPEND ONLY ledger (whose checkpointed rows are read from
//! the state store), views of each stateful kind (aggregate, join, outer join, top-k, and an
//! aggregate and a join over the ledger) and a subscriber, while the real `eddy` binary is killed with `kill -9` at random
//! moments — half of them while a checkpoint is being written — and restarted. After each
//! restart:
//!
//! (a) every acknowledged write is there, and of the one operation each writer had in flight
//!     when the server died, all or nothing;
//! (b) every view equals its query recomputed from the tables;
//! (c) the subscriber, resuming `AS OF` the last epoch it saw completed, has received every
//!     epoch exactly once: no epoch twice, and its running sum of the diffs equals the view.
//!
//! The suite runs 20 cycles; `EDDY_CRASH_CYCLES=100 cargo test --release --test recovery` (or
//! `scripts/crash-soak.sh`) runs more. `EDDY_CRASH_SEED` picks the random sequence.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{EddyProcess, free_port, query_rows, sorted_rows as rows};
use futures::StreamExt;
use tokio_postgres::{Client, SimpleQueryMessage};

/// xorshift64*: a seeded sequence, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs the server with a checkpoint interval and memory budget from `settings` (a budget of 0
/// evicts every aggregate group as soon as it is durable, so the views read them back).
fn spawn(data_dir: &std::path::Path, port: u16, settings: (&str, &str)) -> EddyProcess {
    let (checkpoint_interval, memory_budget) = settings;
    EddyProcess::spawn_on(
        port,
        data_dir,
        &[
            "--checkpoint-interval",
            checkpoint_interval,
            "--memory-budget",
            memory_budget,
            "--subscribe-progress-interval",
            "100ms",
            // Sharded state, checkpointed and restored per shard, whatever the machine.
            "--workers",
            "3",
        ],
        &[("EDDY_TEST_CHECKPOINT_DELAY_MS", "50")],
    )
}

async fn connect(port: u16) -> Client {
    EddyProcess::connect_port(port).await
}

const SETUP: &str = "
    CREATE TABLE owners (id int PRIMARY KEY, region text);
    CREATE TABLE accounts (id int PRIMARY KEY, owner int, balance bigint);
    CREATE MATERIALIZED VIEW by_owner AS
        SELECT owner, count(*) AS n, sum(balance) AS total FROM accounts GROUP BY owner;
    CREATE MATERIALIZED VIEW by_region AS
        SELECT o.region, count(*) AS n, sum(a.balance) AS total
        FROM accounts a JOIN owners o ON a.owner = o.id GROUP BY o.region;
    CREATE MATERIALIZED VIEW orphans AS
        SELECT a.id, a.owner FROM accounts a LEFT JOIN owners o ON a.owner = o.id
        WHERE o.id IS NULL;
    CREATE MATERIALIZED VIEW richest AS
        SELECT id, balance FROM accounts ORDER BY balance DESC, id LIMIT 5;
    CREATE TABLE ledger (id bigint PRIMARY KEY, account int, amount bigint) APPEND ONLY;
    CREATE MATERIALIZED VIEW flows AS
        SELECT account % 10 AS g, count(*) AS n, sum(amount) AS total
        FROM ledger GROUP BY account % 10;
    CREATE MATERIALIZED VIEW owner_flows AS
        SELECT a.owner, count(*) AS n, sum(l.amount) AS total
        FROM ledger l JOIN accounts a ON l.account = a.id GROUP BY a.owner;
    CREATE MATERIALIZED VIEW big_moves AS
        SELECT id, account, amount FROM ledger WHERE amount > 300 OR amount < -200;
";

/// Each view and the query that recomputes it from the tables.
const VIEWS: &[(&str, &str)] = &[
    (
        "by_owner",
        "SELECT owner, count(*), sum(balance) FROM accounts GROUP BY owner",
    ),
    (
        "by_region",
        "SELECT o.region, count(*), sum(a.balance) FROM accounts a JOIN owners o \
         ON a.owner = o.id GROUP BY o.region",
    ),
    (
        "orphans",
        "SELECT a.id, a.owner FROM accounts a LEFT JOIN owners o ON a.owner = o.id \
         WHERE o.id IS NULL",
    ),
    (
        "richest",
        "SELECT id, balance FROM accounts ORDER BY balance DESC, id LIMIT 5",
    ),
    (
        "flows",
        "SELECT account % 10, count(*), sum(amount) FROM ledger GROUP BY account % 10",
    ),
    (
        "big_moves",
        "SELECT id, account, amount FROM ledger WHERE amount > 300 OR amount < -200",
    ),
    (
        "owner_flows",
        "SELECT a.owner, count(*), sum(l.amount) FROM ledger l JOIN accounts a \
         ON l.account = a.id GROUP BY a.owner",
    ),
];

/// What a writer's acknowledged operations left behind: its accounts (id → owner, balance),
/// its ledger entries (APPEND ONLY: id → account, amount) and, for writer 0, the owners (id →
/// region).
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    accounts: BTreeMap<i32, (i32, i64)>,
    ledger: BTreeMap<i64, (i32, i64)>,
    owners: BTreeMap<i32, String>,
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        id: i32,
        owner: i32,
        balance: i64,
    },
    AddBalance {
        id: i32,
        delta: i64,
    },
    Move {
        id: i32,
        owner: i32,
    },
    Delete {
        id: i32,
    },
    SetOwner {
        id: i32,
        region: String,
        exists: bool,
    },
    Ledger {
        id: i64,
        account: i32,
        amount: i64,
    },
    /// Several of the above in one transaction.
    Tx(Vec<Op>),
}

impl Op {
    fn apply(&self, m: &mut Model) {
        match self {
            Op::Insert { id, owner, balance } => {
                m.accounts.insert(*id, (*owner, *balance));
            }
            Op::AddBalance { id, delta } => {
                if let Some(a) = m.accounts.get_mut(id) {
                    a.1 += delta;
                }
            }
            Op::Move { id, owner } => {
                if let Some(a) = m.accounts.get_mut(id) {
                    a.0 = *owner;
                }
            }
            Op::Delete { id } => {
                m.accounts.remove(id);
            }
            Op::SetOwner { id, region, .. } => {
                m.owners.insert(*id, region.clone());
            }
            Op::Ledger {
                id,
                account,
                amount,
            } => {
                m.ledger.insert(*id, (*account, *amount));
            }
            Op::Tx(ops) => ops.iter().for_each(|op| op.apply(m)),
        }
    }

    async fn run(&self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        match self {
            Op::Tx(ops) => {
                let tx = client.transaction().await?;
                for op in ops {
                    op.statement(&tx).await?;
                }
                tx.commit().await
            }
            op => op.statement(client).await,
        }
    }

    async fn statement(
        &self,
        c: &impl tokio_postgres::GenericClient,
    ) -> Result<(), tokio_postgres::Error> {
        match self {
            Op::Insert { id, owner, balance } => {
                c.execute(
                    "INSERT INTO accounts VALUES ($1, $2, $3)",
                    &[id, owner, balance],
                )
                .await
            }
            Op::AddBalance { id, delta } => {
                c.execute(
                    "UPDATE accounts SET balance = balance + $2 WHERE id = $1",
                    &[id, delta],
                )
                .await
            }
            Op::Move { id, owner } => {
                c.execute("UPDATE accounts SET owner = $2 WHERE id = $1", &[id, owner])
                    .await
            }
            Op::Delete { id } => c.execute("DELETE FROM accounts WHERE id = $1", &[id]).await,
            Op::SetOwner { id, region, exists } => {
                let sql = if *exists {
                    "UPDATE owners SET region = $2 WHERE id = $1"
                } else {
                    "INSERT INTO owners VALUES ($1, $2)"
                };
                c.execute(sql, &[id, region]).await
            }
            Op::Ledger {
                id,
                account,
                amount,
            } => {
                c.execute(
                    "INSERT INTO ledger VALUES ($1, $2, $3)",
                    &[id, account, amount],
                )
                .await
            }
            Op::Tx(_) => unreachable!("transactions do not nest"),
        }
        .map(|_| ())
    }
}

/// Writers; writer `w` owns the accounts with ids ≡ `w` (mod WRITERS).
const WRITERS: i32 = 4;

/// One writer: accounts with ids ≡ `w` (mod WRITERS); writer 0 also keeps the owners.
struct Writer {
    w: i32,
    model: Model,
    next_id: i32,
    next_entry: i64,
    rng: Rng,
    acknowledged: u64,
}

impl Writer {
    fn pick(&mut self) -> Option<i32> {
        let n = self.model.accounts.len() as u64;
        (n > 0).then(|| {
            let i = self.rng.below(n) as usize;
            *self.model.accounts.keys().nth(i).unwrap()
        })
    }

    fn new_id(&mut self) -> i32 {
        self.next_id += WRITERS;
        self.next_id
    }

    fn ledger(&mut self, account: i32, amount: i64) -> Op {
        self.next_entry += WRITERS as i64;
        Op::Ledger {
            id: self.next_entry,
            account,
            amount,
        }
    }

    fn op(&mut self) -> Op {
        let roll = self.rng.below(100);
        let owner = self.rng.below(12) as i32;
        let amount = self.rng.below(1000) as i64 - 300;
        match (roll, self.pick()) {
            (0..30, _) | (_, None) => Op::Insert {
                id: self.new_id(),
                owner,
                balance: amount,
            },
            (30..50, Some(id)) => Op::AddBalance { id, delta: amount },
            (50..60, Some(id)) => Op::Move { id, owner },
            (60..72, Some(id)) => Op::Delete { id },
            (72..90, Some(id)) => {
                let other = self.pick().filter(|o| *o != id);
                let mut ops = vec![
                    Op::Insert {
                        id: self.new_id(),
                        owner,
                        balance: amount,
                    },
                    Op::AddBalance { id, delta: -amount },
                    self.ledger(id, -amount),
                ];
                ops.extend(other.map(|id| Op::Delete { id }));
                Op::Tx(ops)
            }
            (90..94, Some(_)) if self.w == 0 => {
                let oid = self.rng.below(10) as i32;
                Op::SetOwner {
                    id: oid,
                    region: format!("r{}", self.rng.below(4)),
                    exists: self.model.owners.contains_key(&oid),
                }
            }
            (94..98, Some(id)) => self.ledger(id, amount),
            (_, Some(id)) => Op::AddBalance { id, delta: 1 },
        }
    }

    /// Runs operations until one fails (the server died); returns the one in flight.
    async fn run(mut self, port: u16) -> (Writer, Option<Op>) {
        let mut client = connect(port).await;
        loop {
            let op = self.op();
            if let Err(e) = op.run(&mut client).await {
                // Only the crash may stop a writer.
                assert!(
                    e.is_closed() || e.code().is_none(),
                    "writer {}: {op:?} failed: {e}",
                    self.w
                );
                return (self, Some(op));
            }
            op.apply(&mut self.model);
            self.acknowledged += 1;
        }
    }

    /// Matches the model with what the server has after a restart: unchanged, or with the
    /// in-flight operation applied in full.
    fn reconcile(&mut self, cycle: usize, actual: &Model, in_flight: Option<Op>) {
        let mine = Model {
            accounts: actual
                .accounts
                .iter()
                .filter(|(id, _)| **id % WRITERS == self.w)
                .map(|(k, v)| (*k, *v))
                .collect(),
            ledger: actual
                .ledger
                .iter()
                .filter(|(id, _)| **id % WRITERS as i64 == self.w as i64)
                .map(|(k, v)| (*k, *v))
                .collect(),
            owners: if self.w == 0 {
                actual.owners.clone()
            } else {
                BTreeMap::new()
            },
        };
        if mine == self.model {
            return;
        }
        if let Some(op) = &in_flight {
            let mut with = self.model.clone();
            op.apply(&mut with);
            if mine == with {
                self.model = with;
                return;
            }
        }
        let lost: Vec<_> = self
            .model
            .accounts
            .iter()
            .filter(|(k, v)| mine.accounts.get(k) != Some(v))
            .take(5)
            .collect();
        let extra: Vec<_> = mine
            .accounts
            .iter()
            .filter(|(k, v)| self.model.accounts.get(k) != Some(v))
            .take(5)
            .collect();
        panic!(
            "cycle {cycle}, writer {}: the tables do not match the acknowledged writes \
             (in flight: {in_flight:?}); expected but not found: {lost:?}; found instead: \
             {extra:?}; owners expected {:?}, found {:?}; ledger entries expected {}, found {}",
            self.w,
            self.model.owners,
            mine.owners,
            self.model.ledger.len(),
            mine.ledger.len()
        );
    }
}

/// The subscriber's view of `by_owner`: rows with counts, from complete epochs only.
#[derive(Default)]
struct Subscriber {
    rows: HashMap<String, i64>,
    pending: Vec<(String, i64)>,
    /// The last epoch a progress row closed.
    complete: Option<i64>,
    epochs: u64,
    diffs: u64,
}

impl Subscriber {
    fn query(&self) -> String {
        match self.complete {
            None => "COPY (SUBSCRIBE by_owner WITH (PROGRESS)) TO STDOUT".into(),
            Some(e) => format!(
                "COPY (SUBSCRIBE by_owner WITH (SNAPSHOT = false, PROGRESS) AS OF {e}) TO STDOUT"
            ),
        }
    }

    /// Takes one line; returns whether it was a progress row.
    fn line(&mut self, cycle: usize, text: &str) -> bool {
        if std::env::var("EDDY_TRACE_SUBSCRIBER").is_ok() {
            eprintln!("SUB cycle {cycle}: {}", text.trim_end());
        }
        let fields: Vec<&str> = text.trim_end().split('\t').collect();
        let epoch: i64 = fields[0].parse().unwrap();
        if let Some(c) = self.complete {
            assert!(
                epoch >= c,
                "cycle {cycle}: epoch {epoch} arrived after epoch {c} was complete: delivered twice"
            );
        }
        if fields[1] == "t" {
            if !self.pending.is_empty() {
                self.epochs += 1;
            }
            for (row, diff) in self.pending.drain(..) {
                let n = self.rows.entry(row).or_insert(0);
                *n += diff;
                self.diffs += 1;
            }
            self.rows.retain(|_, n| *n != 0);
            self.complete = Some(epoch);
            return true;
        }
        assert!(
            self.complete != Some(epoch),
            "cycle {cycle}: a change in epoch {epoch} after its progress row"
        );
        let diff: i64 = fields[2].parse().unwrap();
        self.pending.push((fields[3..].join("|"), diff));
        false
    }

    fn contents(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (row, n) in &self.rows {
            assert!(*n > 0, "row {row} has count {n}");
            out.extend(std::iter::repeat_n(row.clone(), *n as usize));
        }
        out.sort();
        out
    }
}

type Lines = std::pin::Pin<Box<tokio_postgres::CopyOutStream>>;

/// (Re)subscribes `AS OF` the last complete epoch and reads until, with no writes running,
/// the sum of what the subscriber received equals the view. Returns the subscription.
async fn catch_up(port: u16, subscriber: &mut Subscriber, cycle: usize) -> (Client, Lines) {
    // Changes of an epoch the last subscription did not see completed come again.
    subscriber.pending.clear();
    let reader = connect(port).await;
    let mut lines = Box::pin(reader.copy_out(&subscriber.query()).await.unwrap());
    let checker = connect(port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await
            .unwrap_or_else(|_| panic!("cycle {cycle}: the subscription went silent"));
        let Some(Ok(line)) = line else {
            panic!("cycle {cycle}: the subscription ended: {line:?}");
        };
        if subscriber.line(cycle, std::str::from_utf8(&line).unwrap()) {
            let view = rows(&checker, "SELECT * FROM by_owner").await;
            if subscriber.contents() == view {
                return (reader, lines);
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: the subscriber's sum of diffs never matched the view:\n\
                 subscriber {:?}\nview       {view:?}",
                subscriber.contents()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_with_views_and_a_subscriber() {
    let cycles: usize = std::env::var("EDDY_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("EDDY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let settings = [("50ms", "1GB"), ("100ms", "0"), ("1s", "0"), ("50ms", "0")];
    let mut child = spawn(dir.path(), port, settings[0]);
    connect(port).await.batch_execute(SETUP).await.unwrap();

    let mut writers: Vec<Writer> = (0..WRITERS)
        .map(|w| Writer {
            w,
            model: Model::default(),
            next_id: w - WRITERS,
            next_entry: (w - WRITERS) as i64,
            rng: Rng(rng.next() | 1),
            acknowledged: 0,
        })
        .collect();
    let mut subscriber = Subscriber::default();
    let mut mid_checkpoint = 0;
    let started = Instant::now();
    for cycle in 0..cycles {
        let (_reader, mut lines) = catch_up(port, &mut subscriber, cycle).await;
        let checker = connect(port).await;

        // Writers run; the subscriber follows; then the server is killed: at a random moment,
        // or (every other cycle) as soon as a checkpoint is being written.
        let tasks: Vec<_> = writers
            .drain(..)
            .map(|w| tokio::spawn(w.run(port)))
            .collect();
        let run_for = Duration::from_millis(200 + rng.below(600));
        let crash_at = Instant::now() + run_for;
        while Instant::now() < crash_at {
            let wait = crash_at.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, lines.next()).await {
                Ok(Some(Ok(line))) => {
                    subscriber.line(cycle, std::str::from_utf8(&line).unwrap());
                }
                Ok(other) => panic!("cycle {cycle}: the subscription ended: {other:?}"),
                Err(_) => break,
            }
        }
        if cycle % 2 == 1 {
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let in_flight = checker
                    .simple_query("SELECT in_flight FROM eddy_catalog.checkpoints")
                    .await
                    .ok()
                    .and_then(|m| {
                        m.into_iter().find_map(|m| match m {
                            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
                            _ => None,
                        })
                    });
                if in_flight == Some(true) {
                    mid_checkpoint += 1;
                    break;
                }
            }
        }
        child.kill();
        drop(lines);
        let mut in_flight = Vec::new();
        for task in tasks {
            let (w, op) = task.await.unwrap();
            writers.push(w);
            in_flight.push(op);
        }

        child = spawn(dir.path(), port, settings[(cycle + 1) % settings.len()]);
        let client = connect(port).await;
        // (a) acknowledged writes, all-or-nothing for the one in flight.
        let mut actual = Model::default();
        for row in client
            .query("SELECT id, owner, balance FROM accounts", &[])
            .await
            .unwrap()
        {
            actual.accounts.insert(row.get(0), (row.get(1), row.get(2)));
        }
        for row in client
            .query("SELECT id, account, amount FROM ledger", &[])
            .await
            .unwrap()
        {
            actual.ledger.insert(row.get(0), (row.get(1), row.get(2)));
        }
        for row in client
            .query("SELECT id, region FROM owners", &[])
            .await
            .unwrap()
        {
            actual.owners.insert(row.get(0), row.get(1));
        }
        for (w, op) in writers.iter_mut().zip(in_flight) {
            w.reconcile(cycle, &actual, op);
        }
        // (b) every view equals its recomputation.
        for (view, query) in VIEWS {
            let got = rows(&client, &format!("SELECT * FROM {view}")).await;
            let expected = rows(&client, query).await;
            assert_eq!(
                got, expected,
                "cycle {cycle}: view {view} differs from its recomputation"
            );
        }
    }
    // (c) once more after the last restart.
    catch_up(port, &mut subscriber, cycles).await;
    let acknowledged: u64 = writers.iter().map(|w| w.acknowledged).sum();
    let accounts: usize = writers.iter().map(|w| w.model.accounts.len()).sum();
    let entries: usize = writers.iter().map(|w| w.model.ledger.len()).sum();
    eprintln!(
        "{cycles} kill -9 cycles ({mid_checkpoint} while a checkpoint was being written) in \
         {:.1} s: {acknowledged} acknowledged operations, {accounts} accounts and {entries} \
         ledger entries, all present; \
         {} views equal their recomputation after every restart; the subscriber got {} epochs \
         ({} diffs), each once",
        started.elapsed().as_secs_f64(),
        VIEWS.len(),
        subscriber.epochs,
        subscriber.diffs
    );
    drop(child);
}

/// Under a heavy load a checkpoint is taken once enough changes are pending, not only every
/// interval, so a crash during a long load replays a bounded part of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_load_is_checkpointed_before_the_interval_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = EddyProcess::spawn(&data, &["--checkpoint-interval", "1h"], &[]);
    let client = server.connect().await;
    create_blobs(&client).await;
    // 48 MiB of rows in 24 transactions, well past the 32 MiB that triggers a checkpoint.
    for tx in 0..24 {
        insert_blobs(&client, tx, 128).await;
    }
    assert_eq!(blob_count(&client).await, 24 * 128);
    let deadline = Instant::now() + Duration::from_secs(20);
    let lsn = loop {
        let lsn: i64 = client
            .query_one("SELECT lsn FROM eddy_catalog.checkpoints", &[])
            .await
            .unwrap()
            .get(0);
        if lsn > 1 || Instant::now() > deadline {
            break lsn;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(lsn > 1, "no checkpoint within the hour-long interval");
    drop(client);
    server.kill();
    let server = EddyProcess::spawn(&data, &[], &[]);
    let client = server.connect().await;
    let replayed: i64 = client
        .query_one(
            "SELECT log_records_replayed FROM eddy_catalog.recovery",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(replayed < 24, "replayed {replayed} of 24 transactions");
    assert_eq!(blob_count(&client).await, 24 * 128);
}

/// Table `blobs` and the view `sizes` over it.
async fn create_blobs(client: &Client) {
    client
        .batch_execute(
            "CREATE TABLE blobs (id int PRIMARY KEY, body text);
             CREATE MATERIALIZED VIEW sizes AS SELECT count(*) AS n, sum(length(body)) AS bytes FROM blobs;",
        )
        .await
        .unwrap();
}

/// Transaction number `tx` of a load into `blobs`: `rows` rows of 16 KiB each.
async fn insert_blobs(client: &Client, tx: usize, rows: usize) {
    let body = "x".repeat(16 << 10);
    let values = (0..rows)
        .map(|i| format!("({}, '{body}')", tx * rows + i))
        .collect::<Vec<_>>()
        .join(",");
    client
        .batch_execute(&format!("INSERT INTO blobs VALUES {values}"))
        .await
        .unwrap();
}

/// The row count the `sizes` view holds.
async fn blob_count(client: &Client) -> i64 {
    client
        .query_one("SELECT n FROM sizes", &[])
        .await
        .unwrap()
        .get(0)
}

/// Writes wait while the log since the last durable checkpoint is over `--max-checkpoint-lag`,
/// so however far a load outruns the checkpoints, a crash replays a bounded part of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_checkpoints_that_fall_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Every checkpoint takes at least 200 ms: a writer outruns them.
    let args = ["--checkpoint-interval", "1h", "--max-checkpoint-lag", "2MB"];
    let slow = [("EDDY_TEST_CHECKPOINT_DELAY_MS", "200")];
    let mut server = EddyProcess::spawn(&data, &args, &slow);
    let client = server.connect().await;
    create_blobs(&client).await;
    // 20 transactions of 1 MiB.
    for tx in 0..20 {
        insert_blobs(&client, tx, 64).await;
        let (_, lag) = limit_and_lag(&client).await;
        // Admitted below 2 MiB, plus this write's record.
        assert!(lag < 3 << 20, "{lag} bytes of log not checkpointed");
    }
    let delayed: i64 = client
        .query_one("SELECT writes_delayed FROM eddy_catalog.checkpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert!(delayed > 0, "no write waited for a checkpoint");
    assert_eq!(blob_count(&client).await, 20 * 64);
    drop(client);
    server.kill();
    let server = EddyProcess::spawn(&data, &[], &[]);
    let client = server.connect().await;
    let replayed: i64 = client
        .query_one(
            "SELECT log_records_replayed FROM eddy_catalog.recovery",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(replayed <= 3, "replayed {replayed} of 20 transactions");
    assert_eq!(blob_count(&client).await, 20 * 64);
}

/// `--target-recovery-time` lowers the lag limit to what the views would replay within it at
/// their measured rate: with a target of 1 ms that is the 4MB floor, whatever the byte limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_limit_follows_the_target_recovery_time() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--checkpoint-interval",
        "1h",
        "--max-checkpoint-lag",
        "64MB",
        "--target-recovery-time",
        "1ms",
    ];
    let slow = [("EDDY_TEST_CHECKPOINT_DELAY_MS", "200")];
    let server = EddyProcess::spawn(&dir.path().join("data"), &args, &slow);
    let client = server.connect().await;
    create_blobs(&client).await;
    assert_eq!(
        limit_and_lag(&client).await.0,
        64 << 20,
        "nothing timed yet"
    );
    for tx in 0..16 {
        insert_blobs(&client, tx, 64).await;
        // Below the 4 MiB floor when admitted, plus this write's MiB.
        let (_, lag) = limit_and_lag(&client).await;
        assert!(lag < 6 << 20, "{lag} bytes of log not checkpointed");
    }
    assert_eq!(blob_count(&client).await, 16 * 64);
    assert_eq!(limit_and_lag(&client).await.0, 4 << 20);
    let estimate: f64 = client
        .query_one(
            "SELECT replay_estimate_ms FROM eddy_catalog.checkpoints",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(estimate >= 0.0);
}

/// `max_lag_bytes` and `lag_bytes` of `eddy_catalog.checkpoints`.
async fn limit_and_lag(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT max_lag_bytes, lag_bytes FROM eddy_catalog.checkpoints",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A table's watermark and late-row count come back after a crash (from the log) and after a
/// clean restart (from the checkpoint), so a row late before the restart is late after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_survive_crashes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--checkpoint-interval", "1h"];
    let mut server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE bid (id int, ts timestamp, \
               WATERMARK FOR ts AS ts - INTERVAL '10 seconds') APPEND ONLY;
             INSERT INTO bid VALUES (1, '2026-01-01 00:01:00');",
        )
        .await
        .unwrap();
    // A statement of its own: a multi-statement query is one transaction, one write.
    client
        .batch_execute("INSERT INTO bid VALUES (2, '2026-01-01 00:00:00')")
        .await
        .unwrap();
    // Recovered from the log alone (no checkpoint was taken).
    server.kill();
    let mut server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    client
        .batch_execute("INSERT INTO bid VALUES (3, '2026-01-01 00:00:49.999')")
        .await
        .unwrap();
    let late = "2026-01-01T00:00:50Z".to_string();
    assert_eq!(watermark_of_bid(&client).await, (late.clone(), 2, 1));
    // A clean stop checkpoints: the watermark comes from there.
    server.terminate();
    let mut server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    assert_eq!(watermark_of_bid(&client).await, (late, 2, 1));
    // Checkpoint plus the log after it.
    client
        .batch_execute("INSERT INTO bid VALUES (4, '2026-01-01 00:02:00')")
        .await
        .unwrap();
    server.kill();
    let server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    client
        .batch_execute("INSERT INTO bid VALUES (5, '2026-01-01 00:01:49')")
        .await
        .unwrap();
    assert_eq!(
        watermark_of_bid(&client).await,
        ("2026-01-01T00:01:50Z".to_string(), 3, 2)
    );
}

/// The watermark of table `bid` (as text), its late rows and its row count.
async fn watermark_of_bid(client: &Client) -> (String, i64, i64) {
    let row = client
        .query_one(
            "SELECT watermark::text, late_rows FROM eddy_catalog.watermarks",
            &[],
        )
        .await
        .unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM bid", &[])
        .await
        .unwrap()
        .get(0);
    (row.get(0), row.get(1), count)
}

/// An EMIT ON WINDOW CLOSE view keeps its open windows' pending rows across a crash (replayed
/// from the log) and a clean restart (restored from the checkpoint): each window appears
/// once, with all its rows counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_closed_after_a_restart_count_rows_from_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--checkpoint-interval", "1h"];
    let mut server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE ev (v int, ts timestamp, WATERMARK FOR ts AS ts) APPEND ONLY;
             CREATE MATERIALIZED VIEW per_minute AS
               SELECT window_start, count(*) AS n, sum(v) AS total
               FROM TUMBLE(ev, ts, INTERVAL '1 minute') GROUP BY window_start
               EMIT ON WINDOW CLOSE;
             CREATE MATERIALIZED VIEW pairs AS
               SELECT a.window_start, a.v, b.v AS w
               FROM TUMBLE(ev, ts, INTERVAL '1 minute') a
               JOIN TUMBLE(ev, ts, INTERVAL '1 minute') b
                 ON a.window_start = b.window_start AND a.v < b.v;",
        )
        .await
        .unwrap();
    let insert = |v: i32, ts: &str| format!("INSERT INTO ev VALUES ({v}, '2026-01-01 {ts}')");
    client.batch_execute(&insert(1, "00:00:10")).await.unwrap();
    // EMIT ON WINDOW CLOSE over a view: it must be rebuilt at start-up, before that view has
    // run an epoch.
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW busy_minutes AS
               SELECT window_start, n FROM per_minute WHERE n >= 2 EMIT ON WINDOW CLOSE",
        )
        .await
        .unwrap();
    server.kill();
    let mut server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    client.batch_execute(&insert(2, "00:00:20")).await.unwrap();
    server.terminate();
    let server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    client.batch_execute(&insert(3, "00:00:30")).await.unwrap();
    let windows = "SELECT window_start, n, total FROM per_minute";
    assert!(rows(&client, windows).await.is_empty());
    client.batch_execute(&insert(4, "00:01:00")).await.unwrap();
    assert_eq!(
        rows(&client, windows).await,
        vec!["2026-01-01 00:00:00|3|6".to_string()]
    );
    assert_eq!(
        rows(&client, "SELECT window_start, n FROM busy_minutes").await,
        vec!["2026-01-01 00:00:00|3".to_string()]
    );
    // The window join freed the closed minute's rows, here and (at the next checkpoint) in
    // the store; a restart from that checkpoint still joins the open minute's rows.
    client.batch_execute(&insert(5, "00:01:10")).await.unwrap();
    let pairs = "SELECT window_start, v, w FROM pairs";
    let expected = [
        "2026-01-01 00:00:00|1|2",
        "2026-01-01 00:00:00|1|3",
        "2026-01-01 00:00:00|2|3",
        "2026-01-01 00:01:00|4|5",
    ];
    assert_eq!(rows(&client, pairs).await, expected);
    let mut server = server;
    server.terminate();
    let server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    client.batch_execute(&insert(6, "00:01:20")).await.unwrap();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.extend([
        "2026-01-01 00:01:00|4|6".into(),
        "2026-01-01 00:01:00|5|6".into(),
    ]);
    assert_eq!(rows(&client, pairs).await, expected);
}

#[tokio::test]
async fn temporal_filters_survive_crashes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--checkpoint-interval",
        "1h",
        "--clock",
        "manual:2025-01-01T00:00:00Z",
    ];
    let mut server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE ev (id int, ts timestamp) APPEND ONLY;
             CREATE MATERIALIZED VIEW recent AS
               SELECT id FROM ev WHERE ts > now() - INTERVAL '1 hour' AND ts <= now();",
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO ev VALUES (1, '2024-12-31 23:30:00'), (2, '2025-01-01 00:00:00'),
               (3, '2025-01-01 00:30:00')",
        )
        .await
        .unwrap();
    client
        .batch_execute("ADVANCE CLOCK TO '2025-01-01 00:20:00'")
        .await
        .unwrap();
    let recent = "SELECT id FROM recent ORDER BY id";
    assert_eq!(rows(&client, recent).await, ["1", "2"]);
    // From the log alone (no checkpoint yet): the clock and the view as they were.
    server.kill();
    let mut server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    assert_eq!(rows(&client, recent).await, ["1", "2"]);
    let back = client
        .batch_execute("ADVANCE CLOCK TO '2025-01-01 00:10:00'")
        .await
        .unwrap_err();
    assert_eq!(back.code().unwrap().code(), "22023", "{back}");
    client
        .batch_execute("ADVANCE CLOCK TO '2025-01-01 00:30:00'")
        .await
        .unwrap();
    assert_eq!(rows(&client, recent).await, ["2", "3"]);
    // From a checkpoint (a clean stop takes one).
    server.terminate();
    let mut server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    assert_eq!(rows(&client, recent).await, ["2", "3"]);
    client
        .batch_execute("ADVANCE CLOCK TO '2025-01-01 01:00:00'")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO ev VALUES (4, '2025-01-01 01:00:00')")
        .await
        .unwrap();
    // From the checkpoint and the log after it.
    server.kill();
    let server = EddyProcess::spawn(&data, &args, &[]);
    let client = server.connect().await;
    assert_eq!(rows(&client, recent).await, ["3", "4"]);
    client
        .batch_execute("ADVANCE CLOCK BY '30 minutes'")
        .await
        .unwrap();
    assert_eq!(rows(&client, recent).await, ["4"]);
}

/// Waits until `SHOW SOURCES` says source `name` is done.
async fn source_done(client: &Client, name: &str) {
    for _ in 0..12_000 {
        let rows = rows(client, "SHOW SOURCES").await;
        let row = rows.iter().find(|r| r.starts_with(&format!("{name}|")));
        if row.is_some_and(|r| r.split('|').nth(3) == Some("t")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("source {name} did not finish");
}

#[tokio::test]
async fn a_nexmark_source_resumes_after_kill_9_with_no_event_lost_or_repeated() {
    // The same stream twice: once with the server killed (twice) while the source writes,
    // once without; the tables and a view must come out identical.
    let create = "CREATE SOURCE nexmark FROM NEXMARK WITH (max_events = 30000,
                      events_per_second = 20000, start_time = '2025-01-01 00:00:00');
                  CREATE MATERIALIZED VIEW per_auction AS
                      SELECT auction, count(*) AS n, sum(price) AS total FROM bid GROUP BY auction";
    let fingerprint = "SELECT 'bid', count(*), count(DISTINCT (date_time, extra)), sum(price), sum(bidder) FROM bid
                       UNION ALL SELECT 'auction', count(*), count(DISTINCT id), sum(reserve), sum(seller) FROM auction
                       UNION ALL SELECT 'person', count(*), count(DISTINCT id), sum(length(name)), 0 FROM person
                       UNION ALL SELECT 'view', count(*), count(DISTINCT auction), sum(n), sum(total) FROM per_auction";
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = EddyProcess::spawn(&reference_dir.path().join("data"), &[], &[]);
    let reference_client = reference.connect().await;
    reference_client.batch_execute(create).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = EddyProcess::spawn(&data, &[], &[]);
    server.connect().await.batch_execute(create).await.unwrap();
    for pause in [300, 500] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill();
        server = EddyProcess::spawn(&data, &[], &[]);
    }
    let client = server.connect().await;
    source_done(&client, "nexmark").await;
    source_done(&reference_client, "nexmark").await;
    let expected = rows(&reference_client, fingerprint).await;
    assert!(
        expected[0].starts_with("auction|1800|1800|"),
        "{expected:?}"
    );
    assert_eq!(rows(&client, fingerprint).await, expected);
    assert_eq!(
        rows(&client, "SHOW SOURCES").await,
        ["nexmark|nexmark|30000|t|NULL"]
    );
}

#[tokio::test]
async fn views_stay_exact_when_the_number_of_workers_changes() {
    // Operator state is stored split by shard, so a restart with another `--workers` rebuilds
    // it from the tables and keeps the views' contents and change history; one with the same
    // number restores everything (after kill -9 or a clean stop). Either way every view
    // equals its query, before and after more writes, and a subscription resumes `AS OF` an
    // epoch from before the restart.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let views = [
        "SELECT g, count(*) AS n, sum(v) AS total, min(v) AS lo FROM t GROUP BY g",
        "SELECT t.g, u.name, sum(t.v) AS total FROM t JOIN u ON t.g = u.g GROUP BY t.g, u.name",
        "SELECT g, v FROM t ORDER BY v DESC, g LIMIT 7",
        "SELECT count(*) AS n, sum(v) AS total FROM t",
        "SELECT g, v, rn FROM (SELECT g, v, ROW_NUMBER() OVER (PARTITION BY g ORDER BY v DESC) AS rn FROM t) WHERE rn <= 2",
        "SELECT u.g, u.name FROM u WHERE u.g NOT IN (SELECT g FROM t WHERE v > 900)",
    ];
    let check = |client: Client| async move {
        for (i, query) in views.iter().enumerate() {
            assert_eq!(
                rows(&client, &format!("SELECT * FROM v{i}")).await,
                rows(&client, query).await,
                "v{i}: {query}"
            );
        }
        client
    };
    let mut server = EddyProcess::spawn(&data, &["--workers", "2"], &[]);
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, g int, v int);
             CREATE TABLE u (g int PRIMARY KEY, name text);
             INSERT INTO u SELECT g, 'name ' || g FROM generate_series(0, 40) AS s(g);
             INSERT INTO t SELECT i, i % 37, (i * 7919) % 1000 FROM generate_series(1, 5000) AS s(i);",
        )
        .await
        .unwrap();
    for (i, query) in views.iter().enumerate() {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW v{i} AS {query}"))
            .await
            .unwrap();
    }
    let client = check(client).await;
    client
        .batch_execute("DELETE FROM t WHERE id % 5 = 0; UPDATE t SET v = v + 1 WHERE id % 3 = 0")
        .await
        .unwrap();
    let mut writes = [
        "INSERT INTO t SELECT i, i % 41, (i * 31) % 1000 FROM generate_series(5001, 6000) AS s(i)",
        "DELETE FROM t WHERE g = 3; UPDATE u SET name = 'renamed' WHERE g % 2 = 0",
        "UPDATE t SET g = g + 1 WHERE v > 500",
    ]
    .into_iter();
    // The epoch of v1's contents now (the first column of its snapshot's rows), and their
    // rows as a subscription from that epoch sends them: epoch, diff, columns.
    let as_of = |client: Client, epoch: Option<String>| async move {
        let from = epoch.map_or(String::new(), |e| format!(" AS OF {e}"));
        let mut rows = query_rows(
            &client,
            &format!(
                "BEGIN; DECLARE c CURSOR FOR SUBSCRIBE v1 WITH (SNAPSHOT){from};
                 FETCH ALL c WITH (timeout = '1s'); COMMIT"
            ),
        )
        .await;
        rows.sort();
        (client, rows)
    };
    for (workers, kill) in [("1", true), ("1", false), ("3", true)] {
        // An epoch, then a write after it: a subscription AS OF that epoch gets its snapshot
        // and the write's changes, before the restart and after.
        let (client, now) = as_of(server.connect().await, None).await;
        let epoch = now[0][0].clone();
        client.batch_execute(writes.next().unwrap()).await.unwrap();
        check(client).await;
        // Let a checkpoint cover it, so the restart restores from it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, before) = as_of(server.connect().await, Some(epoch.clone())).await;
        assert!(before.iter().any(|r| r[0] != epoch), "{before:?}");
        if kill {
            server.kill();
        } else {
            server.terminate();
        }
        server = EddyProcess::spawn(&data, &["--workers", workers], &[]);
        let client = check(server.connect().await).await;
        let (_, after) = as_of(client, Some(epoch)).await;
        assert_eq!(after, before, "v1 AS OF an epoch before the restart");
    }
}
