//! SUBSCRIBE freshness and fan-out, end to end over pgwire (server in-process, release build).
//!
//! Freshness: an open-loop writer inserts at a fixed rate (rows/s, batched into INSERTs every
//! millisecond or so, spread over several connections so a slow acknowledgement never delays
//! the schedule) and one subscriber reads `COPY (SUBSCRIBE v) TO STDOUT`. For every row:
//! INSERT acknowledged → its diff received (0 when the diff came first), and INSERT sent →
//! diff received.
//!
//! Fan-out: 1,000 subscribers on one view; the writer inserts at a fixed rate, then as fast as
//! it can; reported: diffs delivered per second (rows × subscribers) and the latency from
//! INSERT acknowledged to each subscriber's receipt.
//!
//! Run: `cargo bench --bench subscribe` (options: `-- --seconds 5 --rates 1000,10000,100000
//! --subscribers 1000 --checkpoint-interval-ms 1000`; `--subscribers 0` skips fan-out). Prints
//! Markdown tables for docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use tokio_postgres::Client;

#[path = "../tests/common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use common::{arg, arg_list, connect};

/// Writer connections: an INSERT waiting for its fsync does not hold back the next one.
const WRITERS: usize = 8;

/// Per row id: when its INSERT was sent and acknowledged.
#[derive(Default, Clone, Copy)]
struct Sent {
    sent: Option<Instant>,
    acked: Option<Instant>,
}

struct Percentiles {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn percentiles(mut v: Vec<Duration>) -> Percentiles {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        max: *v.last().unwrap(),
        n: v.len(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn insert_sql(ids: &[i64]) -> String {
    let mut sql = String::with_capacity(ids.len() * 16 + 32);
    sql.push_str("INSERT INTO events VALUES ");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("({id},'payload')"));
    }
    sql
}

/// Inserts `rate` rows/s for `seconds`, open loop: every tick sends the rows due by then,
/// whatever earlier INSERTs are doing. Row ids start at `first`.
async fn write_at_rate(
    writers: &[Arc<Client>],
    rate: u64,
    seconds: u64,
    first: i64,
    log: Arc<Mutex<Vec<Sent>>>,
) -> i64 {
    let start = Instant::now();
    let total = (rate * seconds) as i64;
    log.lock().resize((first + total) as usize, Sent::default());
    let tick = Duration::from_millis(1);
    let mut next = first;
    let mut tasks = Vec::new();
    let mut w = 0;
    while next < first + total {
        let due = first + ((start.elapsed().as_secs_f64() * rate as f64) as i64).min(total);
        if due > next {
            let ids: Vec<i64> = (next..due).collect();
            next = due;
            let client = writers[w % writers.len()].clone();
            w += 1;
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                {
                    let mut l = log.lock();
                    for id in &ids {
                        l[*id as usize].sent = Some(sent);
                    }
                }
                client.batch_execute(&insert_sql(&ids)).await.unwrap();
                let acked = Instant::now();
                let mut l = log.lock();
                for id in &ids {
                    l[*id as usize].acked = Some(acked);
                }
            }));
        }
        tokio::time::sleep(tick).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    first + total
}

/// Reads a subscription's lines; records when each row id arrived.
fn subscriber(
    client: Client,
    received: Arc<Mutex<Vec<Option<Instant>>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stream = client
            .copy_out("COPY (SUBSCRIBE v WITH (SNAPSHOT = false)) TO STDOUT")
            .await
            .unwrap();
        let mut stream = Box::pin(stream);
        while let Some(Ok(line)) = stream.next().await {
            let now = Instant::now();
            let text = std::str::from_utf8(&line).unwrap();
            // _epoch, _diff, id, payload
            let id: usize = text.split('\t').nth(2).unwrap().parse().unwrap();
            let mut r = received.lock();
            if r.len() <= id {
                r.resize(id + 1, None);
            }
            r[id] = Some(now);
        }
        drop(client);
    })
}

async fn setup(server: &eddy::server::Server) -> Vec<Arc<Client>> {
    let admin = connect(server).await;
    admin
        .batch_execute(
            "CREATE TABLE events (id bigint, payload text) APPEND ONLY;
             CREATE MATERIALIZED VIEW v AS SELECT id, payload FROM events WHERE id >= 0;",
        )
        .await
        .unwrap();
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(Arc::new(connect(server).await));
    }
    writers
}

async fn freshness(rates: &[u64], seconds: u64, checkpoint_interval: Duration) {
    println!("| rate (rows/s) | rows | ack → diff p50 | p99 | max | sent → diff p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &rate in rates {
        let (server, _dir) =
            common::start_with(|c| c.checkpoint_interval = checkpoint_interval).await;
        let writers = setup(&server).await;
        let received = Arc::new(Mutex::new(Vec::new()));
        let reader = subscriber(connect(&server).await, received.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let end = write_at_rate(&writers, rate, seconds, 0, log.clone()).await;
        // Let the last diffs arrive.
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.lock().iter().filter(|r| r.is_some()).count() < end as usize
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log = log.lock().clone();
        let got = received.lock().clone();
        let (mut from_ack, mut from_sent) = (Vec::new(), Vec::new());
        for (id, s) in log.iter().enumerate() {
            let Some(r) = got.get(id).copied().flatten() else {
                panic!("row {id} never arrived");
            };
            from_ack.push(r.saturating_duration_since(s.acked.unwrap()));
            from_sent.push(r.saturating_duration_since(s.sent.unwrap()));
        }
        let a = percentiles(from_ack);
        let s = percentiles(from_sent);
        println!(
            "| {rate} | {} | {} | {} | {} | {} | {} | {} |",
            a.n,
            ms(a.p50),
            ms(a.p99),
            ms(a.max),
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
        reader.abort();
        server.shutdown().await;
    }
}

async fn fan_out(subscribers: usize, rate: u64, seconds: u64) {
    let (server, _dir) = common::start().await;
    let writers = setup(&server).await;
    let mut received = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let r = Arc::new(Mutex::new(Vec::new()));
        readers.push(subscriber(connect(&server).await, r.clone()));
        received.push(r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Until every subscriber has every row below `end` (or two minutes pass).
    let wait_for = |end: i64, received: Vec<Arc<Mutex<Vec<Option<Instant>>>>>| async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        // (subscriber, rows below this id are all there)
        let mut pending: Vec<(usize, usize)> = (0..received.len()).map(|i| (i, 0)).collect();
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain_mut(|(i, verified)| {
                let r = received[*i].lock();
                while *verified < (end as usize).min(r.len()) && r[*verified].is_some() {
                    *verified += 1;
                }
                *verified < end as usize
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // At a fixed rate: latency to every subscriber.
    let log = Arc::new(Mutex::new(Vec::new()));
    let end = write_at_rate(&writers, rate, seconds, 0, log.clone()).await;
    wait_for(end, received.clone()).await;
    let log = log.lock().clone();
    let mut lat = Vec::new();
    for r in &received {
        let r = r.lock();
        for (id, s) in log.iter().enumerate() {
            if let Some(t) = r.get(id).copied().flatten() {
                lat.push(t.saturating_duration_since(s.acked.unwrap()));
            }
        }
    }
    let delivered = lat.len();
    let p = percentiles(lat);
    println!("| subscribers | rate (rows/s) | diffs delivered | ack → diff p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {subscribers} | {rate} | {delivered} of {} | {} | {} | {} |",
        log.len() * subscribers,
        ms(p.p50),
        ms(p.p99),
        ms(p.max)
    );
    // As fast as the writer goes: deliveries per second.
    let started = Instant::now();
    let first = end;
    let total: i64 = arg("--burst-rows", 100_000) as i64;
    let log = Arc::new(Mutex::new(Vec::new()));
    log.lock().resize((first + total) as usize, Sent::default());
    let mut tasks = Vec::new();
    for (i, w) in writers.iter().enumerate() {
        let w = w.clone();
        let per = total / WRITERS as i64;
        let from = first + i as i64 * per;
        tasks.push(tokio::spawn(async move {
            let mut id = from;
            while id < from + per {
                let ids: Vec<i64> = (id..(id + 1000).min(from + per)).collect();
                id += ids.len() as i64;
                w.batch_execute(&insert_sql(&ids)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = first + (total / WRITERS as i64) * WRITERS as i64;
    wait_for(end, received.clone()).await;
    let elapsed = started.elapsed();
    let delivered: usize = received
        .iter()
        .map(|r| {
            r.lock()[first as usize..end as usize]
                .iter()
                .filter(|t| t.is_some())
                .count()
        })
        .sum();
    println!();
    println!("| subscribers | rows inserted | diffs delivered | seconds | diffs/s |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {subscribers} | {} | {delivered} | {:.2} | {:.0} |",
        end - first,
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64()
    );
    for r in readers {
        r.abort();
    }
    server.shutdown().await;
}

fn main() {
    let seconds = arg("--seconds", 5);
    let rates = arg_list("--rates", "1000,10000,100000");
    let subscribers = arg("--subscribers", 1000) as usize;
    let checkpoint_interval = Duration::from_millis(arg("--checkpoint-interval-ms", 1000));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "## Freshness: INSERT → SUBSCRIBE diff ({seconds} s per rate, checkpoint every {} ms)\n",
            checkpoint_interval.as_millis()
        );
        freshness(&rates, seconds, checkpoint_interval).await;
        if subscribers > 0 {
            println!("\n## Fan-out: {subscribers} subscribers on one view\n");
            fan_out(subscribers, 1000, seconds).await;
        }
    });
}
