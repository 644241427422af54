//! The [`Runtime`]: one thread that feeds committed changes through every dataflow, epoch by
//! epoch, and commits epochs.
//!
//! ```text
//!  commit (under the engine's commit lock) ── push(lsn, changes) ──► queue
//!  log writer, after fsync ───────────────── set_durable(lsn) ────► queue
//!  runtime thread: take every queued record with lsn ≤ durable = one epoch
//!     for each dataflow in creation order: feed table changes and earlier views' deltas,
//!     run the operators to the barrier, apply the view's delta to its store at the epoch
//!  → Epochs::publish(epoch, lsn): SELECTs and waiting sessions see the epoch
//! ```
//!
//! Epochs are as short as the load allows: an idle runtime wakes for each group commit; a busy
//! one takes everything that became durable while it worked. Creating and dropping views are
//! commands run between epochs, so a new view backfills from the tables at exactly the
//! committed LSN and then receives every later change.
//!
//! A dataflow that fails (a runtime error such as division by zero, or a bug) stops; its view
//! keeps the error, which `SELECT` reports. Other views keep running.
//!
//! Between epochs the runtime also takes checkpoints ([`super::checkpoint`]): every
//! `interval` while changes arrive, and at shutdown. At start-up a view whose dataflow state the
//! last checkpoint holds is restored from it instead of being backfilled.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::oneshot;

use super::Operator;
use super::checkpoint::{
    CheckpointSetup, CheckpointStats, Checkpointer, Job, PartLookup, PrefixSink, StoreSource,
    load_history,
};
use super::epochs::{Committed, Epochs};
use super::exchange::{self, Route};
use super::ops;
use super::spec::{DataflowSpec, Input, NodeId};
use super::watermark::Watermarks;
use crate::error::{Error, Result, sqlstate};
use crate::storage::state::{CheckpointMeta, HISTORY, StoreSnapshot, ViewCheckpoint, part_prefix};
use crate::storage::table::{Snapshot, Spill, TableBase, TableCodec, TableStore};
use crate::subscribe::{ChangeHistory, Retention};
use crate::types::{Epoch, Lsn, ObjectId, TableWatermark, ZBatch};

/// An epoch takes durable records until their changes reach this size (Arrow memory).
const MAX_EPOCH_BYTES: usize = 16 << 20;

/// A node's shards run in parallel when they have at least this many input rows in all;
/// below it, handing the work to other threads costs more than it saves.
const PARALLEL_ROWS: usize = 1024;

/// Dataflows with ids from here up are temporary (subscriptions' queries): never checkpointed.
pub const TEMP_IDS: ObjectId = 1 << 62;

fn runtime_stopped() -> Error {
    crate::err!(sqlstate::QUERY_CANCELED, "the dataflow runtime stopped")
}

/// Reads tables for backfills and checkpoints (implemented by the engine).
pub trait TableScanner: Send + Sync {
    /// The rows of table `id` as of `lsn`.
    fn scan_table(&self, id: ObjectId, lsn: Lsn) -> Result<Vec<RecordBatch>>;
    /// Every table: its id, columns and primary key (column indices).
    fn tables(&self) -> Vec<(ObjectId, SchemaRef, Vec<usize>)>;
    /// Whether table `id`'s rows are made anew by its source when read (then checkpoints
    /// store only its row count).
    fn is_generated(&self, _id: ObjectId) -> bool {
        false
    }
    /// The checkpoint at `lsn` is durable and `snapshot` reads it: tables that keep their
    /// checkpointed rows in the state store may drop them from memory.
    fn rebase(&self, snapshot: &Arc<StoreSnapshot>, lsn: Lsn) -> Result<()>;
}

/// Whether a view's dataflow is keeping it current.
#[derive(Debug, Clone)]
pub enum ViewStatus {
    Running,
    /// The dataflow stopped with this error at this epoch.
    Failed(Epoch, Error),
}

/// A materialized view's contents and status, shared with readers.
pub struct ViewState {
    pub name: String,
    store: Arc<RwLock<TableStore>>,
    status: Mutex<ViewStatus>,
    /// The view's changes per epoch since it was created (within the retention window), for
    /// subscribers.
    pub history: Arc<ChangeHistory>,
    /// Its output columns' watermarks as of the committed epoch (see [`super::watermark`]).
    pub watermarks: Mutex<Watermarks>,
    /// Which output columns have a watermark once its sources have one, even before it has
    /// seen a row ([`super::watermark::watermarked_columns`]).
    pub watermarked: Vec<bool>,
    /// Rows and approximate bytes of state its operators hold (in memory and in the store,
    /// as far as they know), as of its last epoch.
    pub state: Mutex<OperatorState>,
    /// Each operator's counters as of its last epoch, in plan order, the sink last.
    pub operators: Mutex<Vec<OperatorStats>>,
    /// The running dataflow's plan (to describe its operators).
    pub plan: Mutex<Option<DataflowSpec>>,
    /// Its backfill when it was created (this server run).
    pub backfill: Arc<Backfill>,
}

/// What a view's operators hold, for `eddy_catalog.dataflows`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OperatorState {
    pub operators: usize,
    pub rows: u64,
    pub bytes_in_memory: u64,
}

/// One operator of a running dataflow since it started (this server run), for
/// `eddy_catalog.dataflow_operators` and `EXPLAIN ANALYZE MATERIALIZED VIEW`.
#[derive(Debug, Clone, Default)]
pub struct OperatorStats {
    /// Its node in the view's plan ([`DataflowSpec`]); the last one is the Materialize sink.
    pub node: NodeId,
    pub shards: usize,
    /// Rows (with their weights' signs: a delete is a row too) it received and emitted.
    pub rows_in: u64,
    pub rows_out: u64,
    /// Time it spent working (wall time across its shards).
    pub busy: std::time::Duration,
    /// Epochs it ran in.
    pub epochs: u64,
    pub state_rows: u64,
    pub state_bytes: u64,
}

impl ViewState {
    pub fn schema(&self) -> SchemaRef {
        self.store.read().schema().clone()
    }

    pub fn status(&self) -> ViewStatus {
        self.status.lock().clone()
    }

    pub fn rows(&self) -> usize {
        self.store.read().live_rows()
    }

    /// The view's rows at `epoch`, or the error that stopped its dataflow.
    pub fn scan(&self, epoch: Epoch) -> Result<Vec<RecordBatch>> {
        if let ViewStatus::Failed(at, e) = &*self.status.lock() {
            return Err(Error {
                message: format!(
                    "materialized view \"{}\" stopped at epoch {}: {}",
                    self.name, at.0, e.message
                ),
                ..e.clone()
            });
        }
        self.store.read().scan(Snapshot::At(Lsn(epoch.0)))
    }
}

struct Record {
    lsn: Lsn,
    changes: Arc<Vec<(ObjectId, ZBatch)>>,
    /// When it was committed.
    time: SystemTime,
    /// The engine's clock then (µs since 1970): `now()` for temporal filters.
    clock: i64,
    /// The watermarks of the tables it wrote that have one, after it.
    watermarks: Vec<TableWatermark>,
    /// Replayed at start-up: an epoch of its own (so every LSN a subscriber may have seen as an
    /// epoch before the restart is an epoch again).
    solo: bool,
}

impl Record {
    /// Its changes' size in memory (bounds epochs and, summed, triggers checkpoints).
    fn bytes(&self) -> usize {
        changes_bytes(&self.changes)
    }
}

/// The size in memory of a log record's changes.
pub fn changes_bytes(changes: &[(ObjectId, ZBatch)]) -> usize {
    changes
        .iter()
        .map(|(_, z)| z.data.get_array_memory_size())
        .sum()
}

enum Command {
    Create {
        id: ObjectId,
        name: String,
        spec: DataflowSpec,
        schema: SchemaRef,
        backfill: Arc<Backfill>,
        reply: oneshot::Sender<Result<()>>,
    },
    Drop {
        id: ObjectId,
        /// For the error subscribers get.
        name: String,
        reply: oneshot::Sender<()>,
    },
}

#[derive(Default)]
struct Queue {
    records: VecDeque<Record>,
    durable: Lsn,
    commands: Vec<Command>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    epochs: Arc<Epochs>,
    views: RwLock<HashMap<ObjectId, Arc<ViewState>>>,
    retention: Retention,
    /// Shards per dataflow: the threads dataflows run on.
    workers: usize,
    /// Set once started.
    checkpoint_stats: Mutex<Option<Box<dyn Fn() -> CheckpointStats + Send + Sync>>>,
    memory: Mutex<MemoryStats>,
    /// The clock as of the committed epoch.
    clock: std::sync::atomic::AtomicI64,
    /// The earliest time at which some operator's output changes by itself (a temporal
    /// filter's row enters or leaves): an epoch is needed then even without writes.
    wakeup: tokio::sync::watch::Sender<Option<i64>>,
    /// The views being created whose backfill has not finished.
    backfills: Mutex<HashMap<ObjectId, Arc<Backfill>>>,
}

/// Called with a backfill's progress while it runs (see [`Runtime::create_view`]).
pub type BackfillReport<'a> = dyn FnMut(&Backfill) + Send + 'a;

/// A new materialized view's backfill: its inputs' rows (known once they are read) and how
/// many of them have gone through its dataflow, for `eddy_catalog.materialized_views` and the
/// NOTICEs of `CREATE MATERIALIZED VIEW`. A view restored from a checkpoint has none to do.
#[derive(Debug)]
pub struct Backfill {
    pub view: String,
    pub started: Instant,
    pub rows_total: AtomicU64,
    pub rows_done: AtomicU64,
    /// How long it took, once it is over.
    finished: Mutex<Option<Duration>>,
}

impl Backfill {
    pub fn new(view: &str) -> Backfill {
        Backfill {
            view: view.to_string(),
            started: Instant::now(),
            rows_total: AtomicU64::new(0),
            rows_done: AtomicU64::new(0),
            finished: Mutex::new(None),
        }
    }

    /// Rows gone through and rows in all.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.rows_done.load(Ordering::Relaxed),
            self.rows_total.load(Ordering::Relaxed),
        )
    }

    /// How long it took, or has been running.
    pub fn elapsed(&self) -> Duration {
        self.finished
            .lock()
            .unwrap_or_else(|| self.started.elapsed())
    }

    pub fn is_finished(&self) -> bool {
        self.finished.lock().is_some()
    }

    fn finish(&self) {
        *self.finished.lock() = Some(self.started.elapsed());
    }
}

/// Dataflow state in memory against the budget (observability, `eddy_catalog.memory`).
#[derive(Debug, Clone, Default)]
pub struct MemoryStats {
    pub budget: usize,
    /// Bytes held by operators that can evict, as of the last checkpoint.
    pub evictable_bytes: usize,
    /// Times state was evicted since start, and the bytes evicted in all.
    pub evictions: u64,
    pub evicted_bytes: u64,
}

/// Handle to the dataflow runtime; cheap to share.
pub struct Runtime {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Runtime {
    /// A runtime that is not running yet: records pushed before [`Runtime::start`] wait. Each
    /// view keeps its changes for subscribers as `retention` says. Dataflows run on `workers`
    /// threads, their state sharded by key across them (see [`exchange`]); at least one.
    pub fn new(retention: Retention, workers: usize) -> Runtime {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            epochs: Epochs::new(Committed::default()),
            views: RwLock::new(HashMap::new()),
            retention,
            workers: workers.max(1),
            checkpoint_stats: Mutex::new(None),
            memory: Mutex::new(MemoryStats::default()),
            clock: std::sync::atomic::AtomicI64::new(i64::MIN),
            wakeup: tokio::sync::watch::Sender::new(None),
            backfills: Mutex::new(HashMap::new()),
        });
        Runtime {
            shared,
            thread: Mutex::new(None),
        }
    }

    /// Starts the runtime thread. Its first committed epoch covers the log up to `lsn` (the
    /// last checkpoint's); the log is durable up to `durable` (the records between are replayed
    /// with [`Runtime::replay`]). It checkpoints as `checkpoints` says.
    pub fn start(
        &self,
        lsn: Lsn,
        durable: Lsn,
        scanner: Arc<dyn TableScanner>,
        checkpoints: CheckpointSetup,
    ) -> Result<()> {
        let shared = self.shared.clone();
        {
            let mut queue = shared.queue.lock();
            queue.durable = queue.durable.max(durable);
        }
        let committed = Committed {
            epoch: Epoch(lsn.0),
            lsn,
        };
        shared.epochs.publish(committed);
        shared.memory.lock().budget = checkpoints.memory_budget;
        let table_watermarks = checkpoints
            .table_watermarks
            .iter()
            .map(|w| (w.table, *w))
            .collect();
        shared
            .clock
            .store(checkpoints.clock, std::sync::atomic::Ordering::SeqCst);
        let clock = checkpoints.clock;
        let checkpoints = Checkpointer::start(checkpoints, lsn)?;
        *shared.checkpoint_stats.lock() = Some(checkpoints.stats_reader());
        let pool = match shared.workers {
            1 => None,
            n => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("eddy-shard-{i}"))
                    .build()
                    .map_err(|e| crate::internal!("starting the dataflow workers: {e}"))?,
            )),
        };
        let handle = std::thread::Builder::new()
            .name("eddy-dataflow".into())
            .spawn(move || {
                Worker {
                    shared,
                    scanner,
                    dataflows: Vec::new(),
                    committed,
                    checkpoints,
                    collecting: Duration::ZERO,
                    table_watermarks,
                    clock,
                    pool,
                }
                .run()
            })
            .map_err(|e| Error::io("starting the dataflow runtime", &e))?;
        *self.thread.lock() = Some(handle);
        Ok(())
    }

    /// Shards per dataflow.
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Dataflow state in memory against the budget.
    pub fn memory_stats(&self) -> MemoryStats {
        self.shared.memory.lock().clone()
    }

    /// Checkpoint activity so far (default before start).
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        self.shared
            .checkpoint_stats
            .lock()
            .as_ref()
            .map(|f| f())
            .unwrap_or_default()
    }

    /// Stops the runtime thread after it has run every durable record and written a final
    /// checkpoint.
    pub fn stop(&self) {
        self.shared.queue.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(handle) = self.thread.lock().take() {
            let _ = handle.join();
        }
    }

    pub fn epochs(&self) -> &Arc<Epochs> {
        &self.shared.epochs
    }

    /// Whether [`Runtime::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.shared.queue.lock().stop
    }

    /// The clock as of the committed epoch (µs since 1970; `i64::MIN` before any).
    pub fn clock(&self) -> i64 {
        self.shared.clock.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Watches the earliest time at which a view changes by itself (see
    /// [`Operator::next_time`]): the engine makes an epoch then if no write does.
    pub fn wakeups(&self) -> tokio::sync::watch::Receiver<Option<i64>> {
        self.shared.wakeup.subscribe()
    }

    /// Queues a committed record. Called in LSN order, usually before the record is durable —
    /// but the log writer may have synced it already, so then the runtime is woken here.
    pub fn push(
        &self,
        lsn: Lsn,
        changes: Arc<Vec<(ObjectId, ZBatch)>>,
        time: SystemTime,
        clock: i64,
        watermarks: Vec<TableWatermark>,
    ) {
        self.enqueue(Record {
            lsn,
            changes,
            time,
            clock,
            watermarks,
            solo: false,
        });
    }

    /// Queues a record replayed from the log at start-up (after [`Runtime::start`] at an
    /// earlier LSN): it is processed as an epoch of its own.
    pub fn replay(
        &self,
        lsn: Lsn,
        changes: Arc<Vec<(ObjectId, ZBatch)>>,
        time: SystemTime,
        clock: i64,
        watermarks: Vec<TableWatermark>,
    ) {
        self.enqueue(Record {
            lsn,
            changes,
            time,
            clock,
            watermarks,
            solo: true,
        });
    }

    fn enqueue(&self, record: Record) {
        let lsn = record.lsn;
        let mut queue = self.shared.queue.lock();
        queue.records.push_back(record);
        if lsn <= queue.durable {
            drop(queue);
            self.shared.wake.notify_one();
        }
    }

    /// Forgets queued records after `lsn` (their log write failed; see
    /// [`crate::storage::log::Log::reset_after_failure`]).
    pub fn discard_after(&self, lsn: Lsn) {
        self.shared.queue.lock().records.retain(|r| r.lsn <= lsn);
    }

    /// The log is durable up to `lsn`: records up to it may be processed.
    pub fn set_durable(&self, lsn: Lsn) {
        let mut queue = self.shared.queue.lock();
        if lsn > queue.durable {
            queue.durable = lsn;
            drop(queue);
            self.shared.wake.notify_one();
        }
    }

    pub fn view(&self, id: ObjectId) -> Option<Arc<ViewState>> {
        self.shared.views.read().get(&id).cloned()
    }

    /// Starts a dataflow for view `id`: backfills it from the inputs at the committed epoch, then
    /// keeps it current. Returns once the backfill is committed (or failed: then nothing stays).
    ///
    /// While the backfill runs, `report` (if any) is called every `interval` with its progress.
    pub async fn create_view(
        &self,
        id: ObjectId,
        name: &str,
        spec: DataflowSpec,
        schema: SchemaRef,
        report: Option<(Duration, &mut BackfillReport<'_>)>,
    ) -> Result<()> {
        let (reply, mut rx) = oneshot::channel();
        let backfill = Arc::new(Backfill::new(name));
        self.shared.backfills.lock().insert(id, backfill.clone());
        let sent = self.command(Command::Create {
            id,
            name: name.to_string(),
            spec,
            schema,
            backfill: backfill.clone(),
            reply,
        });
        let done = match (sent, report) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => rx.await.map_err(|_| runtime_stopped())?,
            (Ok(()), Some((interval, report))) => {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    tokio::select! {
                        done = &mut rx => break done.map_err(|_| runtime_stopped())?,
                        _ = ticks.tick() => report(&backfill),
                    }
                }
            }
        };
        self.shared.backfills.lock().remove(&id);
        done
    }

    /// The views whose backfill is running, by id.
    pub fn backfills(&self) -> Vec<(ObjectId, Arc<Backfill>)> {
        let backfills = self.shared.backfills.lock();
        backfills.iter().map(|(id, b)| (*id, b.clone())).collect()
    }

    /// Registers view `id` as failed with `error` (it has no dataflow; SELECTs report the error).
    pub fn add_failed_view(&self, id: ObjectId, name: &str, schema: SchemaRef, error: Error) {
        let epoch = self.shared.epochs.committed().epoch;
        let history = ChangeHistory::new(epoch, self.shared.retention);
        history.close(error.clone());
        let view = ViewState {
            name: name.to_string(),
            store: Arc::new(RwLock::new(TableStore::new(name, schema, &[]))),
            status: Mutex::new(ViewStatus::Failed(epoch, error)),
            history,
            watermarks: Mutex::new(Vec::new()),
            watermarked: Vec::new(),
            state: Mutex::new(OperatorState::default()),
            operators: Mutex::new(Vec::new()),
            plan: Mutex::new(None),
            backfill: Arc::new(Backfill::new(name)),
        };
        self.shared.views.write().insert(id, Arc::new(view));
    }

    /// Object `id` (a table or a view, named `name`) is dropped: stops its dataflow if it has
    /// one and frees its state, and ends the subscriptions reading it. Views reading it must be
    /// dropped first.
    pub async fn drop_object(&self, id: ObjectId, name: &str) {
        let (reply, rx) = oneshot::channel();
        let name = name.to_string();
        if self.command(Command::Drop { id, name, reply }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops view `id`'s dataflow without waiting (a subscription's temporary dataflow, from
    /// a destructor).
    pub fn drop_view_detached(&self, id: ObjectId) {
        let (reply, _) = oneshot::channel();
        let name = String::new();
        let _ = self.command(Command::Drop { id, name, reply });
    }

    /// Rows of all views' contents held in memory, and rows read from the state store instead
    /// (views whose contents spill).
    pub fn view_rows(&self) -> (usize, usize) {
        let views = self.shared.views.read();
        let (mut in_memory, mut all) = (0, 0);
        for view in views.values() {
            let store = view.store.read();
            in_memory += store.rows_in_memory();
            all += store.live_rows();
        }
        (in_memory, all - in_memory)
    }

    /// How many views (materialized views and subscriptions' temporary dataflows) exist.
    pub fn view_count(&self) -> usize {
        self.shared.views.read().len()
    }

    fn command(&self, command: Command) -> Result<()> {
        let mut queue = self.shared.queue.lock();
        if queue.stop {
            return Err(crate::err!(
                sqlstate::QUERY_CANCELED,
                "the server is shutting down"
            ));
        }
        queue.commands.push(command);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(())
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new(Retention::default(), 1)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running dataflow: the spec's operators plus the view's [`ops::materialize::Materialize`]
/// sink as the last node.
struct Dataflow {
    id: ObjectId,
    nodes: Vec<NodeRt>,
    sources: Vec<(Input, NodeId)>,
    view: Arc<ViewState>,
    fingerprint: u64,
    /// History entries up to this epoch are in the last checkpoint.
    history_saved: Epoch,
    /// The history's oldest epoch as of the last checkpoint.
    history_oldest_saved: Epoch,
    /// What the store holds for this dataflow is its own state (it was restored from it, or
    /// a checkpoint of it is durable) rather than a stale earlier dataflow's of the same view.
    stored_is_own: bool,
    /// The plan, for carrying watermarks through it.
    spec: DataflowSpec,
    /// The watermarks its sources had at the last step.
    source_watermarks: HashMap<Input, Watermarks>,
}

impl Dataflow {
    fn persistent(&self) -> bool {
        self.id < TEMP_IDS
    }
}

/// A node of a running dataflow, as shards (see [`exchange`]).
struct NodeRt {
    /// One operator per shard; one only for a node that runs alone.
    shards: Vec<Box<dyn Operator>>,
    /// How each input port's rows are spread over the shards (`None`: all to the one).
    routes: Option<Vec<Route>>,
    /// Per input port, its schema when the port merges the output of several shards into an
    /// operator with state (see [`NodeRt::run`]).
    merges: Vec<Option<SchemaRef>>,
    consumers: Vec<(NodeId, usize)>,
    /// The epoch's input so far, per shard: (port, batch).
    pending: Vec<Vec<(usize, ZBatch)>>,
    /// What it has done since it started.
    stats: OperatorStats,
}

impl NodeRt {
    fn new(shards: Vec<Box<dyn Operator>>, routes: Option<Vec<Route>>) -> NodeRt {
        NodeRt {
            pending: (0..shards.len()).map(|_| Vec::new()).collect(),
            stats: OperatorStats {
                shards: shards.len(),
                ..OperatorStats::default()
            },
            shards,
            routes,
            merges: Vec::new(),
            consumers: Vec::new(),
        }
    }

    fn ops(&self) -> impl Iterator<Item = &dyn Operator> {
        self.shards.iter().map(|op| op.as_ref())
    }

    /// Queues `batch`, produced on shard `from` (of the producer), for input `port`.
    fn receive(&mut self, port: usize, from: usize, batch: ZBatch) -> Result<()> {
        let shards = self.shards.len();
        match self.routes.as_ref().and_then(|r| r.get(port)) {
            _ if shards == 1 => self.pending[0].push((port, batch)),
            None | Some(Route::Local) => self.pending[from % shards].push((port, batch)),
            Some(Route::Hash(key)) => {
                for (s, part) in exchange::partition(&batch, key, shards)?
                    .into_iter()
                    .enumerate()
                {
                    if let Some(part) = part {
                        self.pending[s].push((port, part));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs every shard through the epoch — in parallel on `pool` when there is enough input
    /// to be worth it — and returns each shard's output.
    ///
    /// A port fed by several shards gets their batches shard after shard, not in the order
    /// the changes were made: a row's delete can come before its insert. Operators with state
    /// expect a valid collection after every batch, so such a port's batches are consolidated
    /// into the epoch's net change first when any of them deletes (inserts alone cannot make
    /// a collection invalid in any order).
    fn run(
        &mut self,
        pool: Option<&rayon::ThreadPool>,
        epoch: Epoch,
        clock: i64,
        watermarks: Option<(&[&Watermarks], &Watermarks)>,
    ) -> Result<Vec<Vec<ZBatch>>> {
        let mut pending: Vec<Vec<(usize, ZBatch)>> =
            self.pending.iter_mut().map(std::mem::take).collect();
        for (port, schema) in self.merges.iter().enumerate() {
            let Some(schema) = schema else { continue };
            for input in &mut pending {
                let mut batches = input.iter().filter(|(p, _)| *p == port);
                let deletes = batches
                    .clone()
                    .any(|(_, b)| b.weights.values().iter().any(|w| *w < 0));
                if !deletes || batches.nth(1).is_none() {
                    continue;
                }
                let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(input)
                    .into_iter()
                    .partition(|(p, _)| *p == port);
                let mine: Vec<ZBatch> = mine.into_iter().map(|(_, b)| b).collect();
                *input = rest;
                input.push((port, ZBatch::consolidate(&mine, schema)?));
            }
        }
        let run_shard = |op: &mut Box<dyn Operator>, input: Vec<(usize, ZBatch)>| {
            let mut out = Vec::new();
            op.on_time(clock, &mut out)?;
            for (port, batch) in input {
                op.on_batch(port, batch, &mut out)?;
            }
            if let Some((inputs, output)) = watermarks {
                op.on_watermarks(inputs, output);
            }
            op.on_barrier(epoch, &mut out)?;
            Ok(out)
        };
        let rows: usize = pending.iter().flatten().map(|(_, b)| b.num_rows()).sum();
        let started = std::time::Instant::now();
        let out: Result<Vec<Vec<ZBatch>>> = match pool {
            Some(pool) if self.shards.len() > 1 && rows >= PARALLEL_ROWS => {
                use rayon::prelude::*;
                pool.install(|| {
                    self.shards
                        .par_iter_mut()
                        .zip(pending)
                        .map(|(op, input)| run_shard(op, input))
                        .collect()
                })
            }
            _ => self
                .shards
                .iter_mut()
                .zip(pending)
                .map(|(op, input)| run_shard(op, input))
                .collect(),
        };
        let out = out?;
        self.stats.busy += started.elapsed();
        self.stats.epochs += 1;
        self.stats.rows_in += rows as u64;
        self.stats.rows_out += out
            .iter()
            .flatten()
            .map(|b| b.num_rows() as u64)
            .sum::<u64>();
        Ok(out)
    }

    /// Its counters, with the state it holds now.
    fn stats(&self, node: NodeId) -> OperatorStats {
        OperatorStats {
            node,
            state_rows: self.ops().map(|op| op.state_rows() as u64).sum(),
            state_bytes: self.ops().map(|op| op.state_bytes() as u64).sum(),
            ..self.stats.clone()
        }
    }
}

/// The key of shard `shard` of node `node`'s stored state (shard 0's is the node's, as it was
/// before dataflows had shards).
fn shard_part(node: usize, shard: usize) -> u32 {
    (node | shard << 16) as u32
}

impl Dataflow {
    /// `fingerprint` is `spec`'s ([`DataflowSpec::fingerprint`]).
    /// Each node that can runs as `shards` shards.
    fn build(
        id: ObjectId,
        spec: &DataflowSpec,
        fingerprint: u64,
        shards: usize,
        view: Arc<ViewState>,
        epochs: Arc<Epochs>,
    ) -> Result<Dataflow> {
        if spec.nodes.is_empty() {
            return Err(crate::internal!("empty dataflow"));
        }
        let mut nodes = Vec::with_capacity(spec.nodes.len() + 1);
        let mut sources = Vec::new();
        for (i, node) in spec.nodes.iter().enumerate() {
            if let super::spec::NodeKind::Source(input) = node.kind {
                sources.push((input, i));
            }
            let routes = exchange::routes(spec, i);
            let n = if routes.is_some() { shards } else { 1 };
            let ops = (0..n)
                .map(|_| ops::build(spec, i))
                .collect::<Result<Vec<_>>>()?;
            let mut rt = NodeRt::new(ops, routes);
            rt.merges = node
                .inputs
                .iter()
                .enumerate()
                .map(|(port, input)| {
                    let several = nodes
                        .get(*input)
                        .is_some_and(|n: &NodeRt| n.shards.len() > 1);
                    let local = matches!(
                        rt.routes.as_ref().and_then(|r| r.get(port)),
                        Some(Route::Local)
                    );
                    (several && !local).then(|| spec.nodes[*input].schema.clone())
                })
                .collect();
            nodes.push(rt);
        }
        for (i, node) in spec.nodes.iter().enumerate() {
            for (port, input) in node.inputs.iter().enumerate() {
                if *input >= i {
                    return Err(crate::internal!("dataflow nodes out of order"));
                }
                nodes[*input].consumers.push((i, port));
            }
        }
        let sink = nodes.len();
        nodes[spec.output()].consumers.push((sink, 0));
        nodes.push(NodeRt::new(
            vec![Box::new(ops::materialize::Materialize::new(
                view.store.clone(),
                epochs,
            )?)],
            None,
        ));
        let start = view.history.oldest();
        *view.plan.lock() = Some(spec.clone());
        Ok(Dataflow {
            id,
            nodes,
            sources,
            view,
            fingerprint,
            history_saved: start,
            history_oldest_saved: start,
            stored_is_own: false,
            spec: spec.clone(),
            source_watermarks: HashMap::new(),
        })
    }

    /// Publishes what its operators hold (the view's contents excluded) and have done.
    fn publish_state(&self) {
        *self.view.operators.lock() = self
            .nodes
            .iter()
            .enumerate()
            .map(|(id, node)| node.stats(id))
            .collect();
        let ops = &self.nodes[..self.nodes.len() - 1];
        *self.view.state.lock() = OperatorState {
            operators: ops.len(),
            rows: ops
                .iter()
                .flat_map(NodeRt::ops)
                .map(|op| op.state_rows() as u64)
                .sum(),
            bytes_in_memory: ops
                .iter()
                .flat_map(NodeRt::ops)
                .map(|op| op.state_bytes() as u64)
                .sum(),
        };
    }

    /// The watermarks of its sources now, if any of them has one.
    fn current_source_watermarks(
        &self,
        sources: &WatermarkSource<'_>,
    ) -> HashMap<Input, Watermarks> {
        let mut out = HashMap::new();
        for (input, node) in &self.sources {
            if let Input::Table(id) = input
                && !self.spec.table_watermarks.iter().any(|(t, _)| t == id)
            {
                continue;
            }
            let w = sources.of(*input, &self.spec, *node);
            if w.iter().any(Option::is_some) {
                out.insert(*input, w);
            }
        }
        out
    }

    fn reads(&self, input: Input) -> bool {
        self.sources.iter().any(|(i, _)| *i == input)
    }

    /// The earliest time at which its output changes by itself (see [`Operator::next_time`]).
    fn next_time(&self) -> Option<i64> {
        self.nodes
            .iter()
            .flat_map(NodeRt::ops)
            .filter_map(|op| op.next_time())
            .min()
    }

    /// Runs one epoch: feeds each source its input's changes, then every operator in order to
    /// its barrier. Returns the view's (consolidated) delta.
    /// `clock`: the epoch's time. `source_watermarks`: [`Dataflow::current_source_watermarks`]
    /// for this epoch.
    /// `pool`: the workers that run a node's shards in parallel. `into_view`: false to stop
    /// before the view's Materialize node (its output is then dropped).
    fn step(
        &mut self,
        pool: Option<&rayon::ThreadPool>,
        epoch: Epoch,
        clock: i64,
        feed: &dyn Fn(Input) -> Vec<ZBatch>,
        source_watermarks: HashMap<Input, Watermarks>,
        into_view: bool,
    ) -> Result<Vec<ZBatch>> {
        self.feed(feed);
        // Watermarks, when a source has one: each operator learns its inputs' and its own.
        self.source_watermarks = source_watermarks;
        let watermarks = if self.source_watermarks.is_empty() {
            None
        } else {
            let known = &self.source_watermarks;
            let width = |input: Input| {
                self.sources
                    .iter()
                    .find(|(i, _)| *i == input)
                    .map_or(0, |(_, n)| self.spec.nodes[*n].schema.fields().len())
            };
            let all = super::watermark::propagate_all(&self.spec, &|input| {
                known
                    .get(&input)
                    .cloned()
                    .unwrap_or_else(|| vec![None; width(input)])
            })?;
            *self.view.watermarks.lock() = all[self.spec.output()].clone();
            Some(all)
        };
        let last = self.nodes.len() - if into_view { 1 } else { 2 };
        self.run_nodes(pool, epoch, clock, watermarks.as_deref(), last, false)
    }

    /// Part of a backfill: feeds the sources these rows and runs every operator but the view's
    /// Materialize node, which holds what it receives for the backfill's last step (and drops
    /// it unless `into_view`). No watermark moves: a window they close must have all its rows.
    fn step_held(
        &mut self,
        pool: Option<&rayon::ThreadPool>,
        epoch: Epoch,
        clock: i64,
        feed: &dyn Fn(Input) -> Vec<ZBatch>,
        into_view: bool,
    ) -> Result<()> {
        self.feed(feed);
        let last = self.nodes.len() - 2;
        self.run_nodes(pool, epoch, clock, None, last, into_view)?;
        // The backfill's chunks are steps of one epoch: only its last step counts it.
        for node in &mut self.nodes[..=last] {
            node.stats.epochs = node.stats.epochs.saturating_sub(1);
        }
        Ok(())
    }

    fn feed(&mut self, feed: &dyn Fn(Input) -> Vec<ZBatch>) {
        for (input, node) in &self.sources {
            let node = &mut self.nodes[*node];
            let shards = node.shards.len();
            for (shard, part) in exchange::spread(feed(*input), shards) {
                node.pending[shard].push((0, part));
            }
        }
    }

    /// Runs nodes `0..=last` to their barriers, each passing its output on to its consumers;
    /// returns the output of `last`, or passes it on too when `deliver_last`.
    fn run_nodes(
        &mut self,
        pool: Option<&rayon::ThreadPool>,
        epoch: Epoch,
        clock: i64,
        watermarks: Option<&[Watermarks]>,
        last: usize,
        deliver_last: bool,
    ) -> Result<Vec<ZBatch>> {
        for i in 0..=last {
            let inputs: Vec<&Watermarks> = match watermarks {
                Some(all) if i < all.len() => {
                    self.spec.nodes[i].inputs.iter().map(|n| &all[*n]).collect()
                }
                _ => Vec::new(),
            };
            let marks = match watermarks {
                Some(all) if i < all.len() => Some((inputs.as_slice(), &all[i])),
                _ => None,
            };
            let out = self.nodes[i].run(pool, epoch, clock, marks)?;
            if i == last && !deliver_last {
                self.publish_state();
                return Ok(out.into_iter().flatten().collect());
            }
            let consumers = std::mem::take(&mut self.nodes[i].consumers);
            for (c, port) in &consumers {
                for (shard, batches) in out.iter().enumerate() {
                    for batch in batches {
                        self.nodes[*c].receive(*port, shard, batch.clone())?;
                    }
                }
            }
            self.nodes[i].consumers = consumers;
        }
        self.publish_state();
        Ok(Vec::new())
    }
}

/// A backfill's first chunk of input rows.
const BACKFILL_FIRST_CHUNK_ROWS: usize = 64 * 1024;

/// A backfill's chunks grow (or shrink) until one takes about this long, or a sixteenth of
/// the time the backfill has run if that is longer: often enough for its progress to move
/// between NOTICEs, rarely enough that what each chunk costs every operator (a barrier, the
/// deltas its aggregates re-emit) stays a small part of the work however long it runs. Fixed
/// chunks of 64K rows made q16's backfill 20–30% slower (docs/benchmarks.md).
const BACKFILL_CHUNK_TIME: Duration = Duration::from_millis(250);

/// Some inputs' rows, each input's batches in order.
type Chunk = Vec<(Input, Vec<ZBatch>)>;

/// A backfill's input rows, handed out a chunk at a time, inputs one after the other
/// (batches are sliced where a chunk ends).
struct Chunks {
    inputs: VecDeque<(Input, VecDeque<ZBatch>)>,
    rows_left: usize,
}

impl Chunks {
    fn new(inputs: Vec<(Input, Vec<ZBatch>)>) -> Chunks {
        let rows_left = inputs
            .iter()
            .flat_map(|(_, b)| b)
            .map(ZBatch::num_rows)
            .sum();
        Chunks {
            inputs: inputs
                .into_iter()
                .map(|(input, batches)| (input, batches.into()))
                .collect(),
            rows_left,
        }
    }

    /// The next `rows` rows, or fewer at the end.
    fn take(&mut self, rows: usize) -> Chunk {
        let mut chunk: Chunk = Vec::new();
        let mut room = rows;
        while room > 0 {
            let Some((input, batches)) = self.inputs.front_mut() else {
                break;
            };
            let input = *input;
            let Some(batch) = batches.pop_front() else {
                self.inputs.pop_front();
                continue;
            };
            let n = batch.num_rows();
            let take = n.min(room);
            let part = if take == n {
                batch
            } else {
                batches.push_front(batch.slice(take, n - take));
                batch.slice(0, take)
            };
            room -= take;
            self.rows_left -= take;
            match chunk.last_mut() {
                Some((i, parts)) if *i == input => parts.push(part),
                _ => chunk.push((input, vec![part])),
            }
        }
        chunk
    }
}

/// The size of a backfill's next chunk, after one of `rows` rows took `took`, the backfill
/// having run for `elapsed`. It changes at most fourfold at a time.
fn next_chunk_rows(rows: usize, took: Duration, elapsed: Duration) -> usize {
    let target = BACKFILL_CHUNK_TIME.max(elapsed / 16);
    let scale = target.as_secs_f64() / took.as_secs_f64().max(1e-6);
    ((rows as f64 * scale.clamp(0.5, 4.0)) as usize).max(BACKFILL_FIRST_CHUNK_ROWS)
}

fn chunk_input(chunk: &Chunk, input: Input) -> Vec<ZBatch> {
    chunk
        .iter()
        .filter(|(i, _)| *i == input)
        .flat_map(|(_, b)| b.iter().cloned())
        .collect()
}

fn chunk_rows(chunk: &Chunk) -> u64 {
    chunk
        .iter()
        .flat_map(|(_, b)| b)
        .map(|b| b.num_rows() as u64)
        .sum()
}

/// Where sources' watermarks come from: tables' (as of the epoch being run) and upstream
/// views' (already run in this epoch).
struct WatermarkSource<'a> {
    tables: &'a HashMap<ObjectId, TableWatermark>,
    views: &'a RwLock<HashMap<ObjectId, Arc<ViewState>>>,
}

impl WatermarkSource<'_> {
    /// The watermarks of `input`, read by source node `node` of `spec`.
    fn of(&self, input: Input, spec: &DataflowSpec, node: NodeId) -> Watermarks {
        let schema = &spec.nodes[node].schema;
        match input {
            Input::Table(id) => {
                let mut w = vec![None; schema.fields().len()];
                let column = spec
                    .table_watermarks
                    .iter()
                    .find(|(t, _)| *t == id)
                    .map(|(_, c)| *c);
                if let (Some(c), Some(micros)) =
                    (column, self.tables.get(&id).and_then(|t| t.micros))
                    && c < w.len()
                {
                    w[c] = super::watermark::scalar_for(micros, schema.field(c).data_type());
                }
                w
            }
            Input::View(id) => self
                .views
                .read()
                .get(&id)
                .map(|v| v.watermarks.lock().clone())
                .unwrap_or_default(),
        }
    }
}

/// A sink that keeps nothing (for dataflows that are never checkpointed).
struct Discard;

impl super::StateSink for Discard {
    fn put(&mut self, _key: &[u8], _value: &[u8]) {}
    fn delete(&mut self, _key: &[u8]) {}
    fn add(&mut self, _key: &[u8], _n: i64) {}
    fn clear_prefix(&mut self, _start: &[u8]) {}
}

/// A view's delta for an epoch as one batch (None when it did not change).
fn one_batch(delta: &[ZBatch], view: &ViewState) -> Result<Option<ZBatch>> {
    match delta {
        [] => Ok(None),
        [one] => Ok((one.num_rows() > 0).then(|| one.clone())),
        many => {
            let whole = ZBatch::consolidate(many, &view.schema())?;
            Ok((whole.num_rows() > 0).then_some(whole))
        }
    }
}

/// Bytes of state held in memory by the operators that can evict.
fn evictable_bytes(dataflows: &[Dataflow]) -> usize {
    dataflows
        .iter()
        .flat_map(|d| d.nodes.iter())
        .flat_map(NodeRt::ops)
        .filter(|op| op.evicts())
        .map(|op| op.state_bytes())
        .sum()
}

/// Runs `f`, turning a panic into an internal error (a bug in one dataflow must not stop the
/// others).
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(crate::internal!("dataflow operator panicked: {what}"))
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    scanner: Arc<dyn TableScanner>,
    /// In creation order: a view's dataflow comes after those of the views it reads.
    dataflows: Vec<Dataflow>,
    committed: Committed,
    checkpoints: Checkpointer,
    /// Time spent collecting checkpoints since the last epoch (counted into its cost).
    collecting: Duration,
    /// Tables' watermarks as of the last committed epoch (stored with checkpoints).
    table_watermarks: HashMap<ObjectId, TableWatermark>,
    /// The clock as of the last committed epoch: the largest of its records' clocks and
    /// those before (so it never goes back, and a replay computes the same values).
    clock: i64,
    /// Threads running dataflows' shards in parallel (none with one worker).
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let (records, bytes, commands, stopping) = {
                let mut queue = self.shared.queue.lock();
                loop {
                    let ready = queue
                        .records
                        .front()
                        .is_some_and(|r| r.lsn <= queue.durable);
                    if ready || !queue.commands.is_empty() || queue.stop {
                        break;
                    }
                    // Sleep until woken, or until a checkpoint of pending changes is due.
                    match self.checkpoint_due() {
                        Some(wait) if wait.is_zero() => break,
                        Some(wait) => {
                            self.shared.wake.wait_for(&mut queue, wait);
                        }
                        None => self.shared.wake.wait(&mut queue),
                    }
                }
                let durable = queue.durable;
                let mut records = Vec::new();
                if queue.stop {
                    // Answer pending commands so no session waits forever, and run whatever
                    // is durable so the final checkpoint covers it.
                    for command in queue.commands.drain(..) {
                        if let Command::Create { reply, .. } = command {
                            let _ = reply.send(Err(crate::err!(
                                sqlstate::QUERY_CANCELED,
                                "the server is shutting down"
                            )));
                        }
                    }
                    while let Some(r) = queue.records.front()
                        && r.lsn <= durable
                    {
                        records.extend(queue.records.pop_front());
                    }
                    (records, 0, Vec::new(), true)
                } else {
                    // Every durable record, up to (or just) a replayed one, which is an epoch
                    // alone — and at most MAX_EPOCH_BYTES of changes, so that behind a burst
                    // epochs (and checkpoints between them) stay small.
                    let mut bytes = 0;
                    while let Some(r) = queue.records.front()
                        && r.lsn <= durable
                        && (!r.solo || records.is_empty())
                        && bytes < MAX_EPOCH_BYTES
                    {
                        let solo = r.solo;
                        bytes += r.bytes();
                        records.extend(queue.records.pop_front());
                        if solo {
                            break;
                        }
                    }
                    (records, bytes, std::mem::take(&mut queue.commands), false)
                }
            };
            if !records.is_empty() {
                let started = Instant::now();
                self.run_epoch(records);
                // The changes' cost, with the checkpoints collected since the last epoch:
                // replaying them would take both.
                let busy = std::mem::take(&mut self.collecting) + started.elapsed();
                self.checkpoints.budget.observe(bytes, busy);
                self.checkpoints.records_bytes += bytes;
            }
            let commanded = !commands.is_empty();
            for command in commands {
                match command {
                    Command::Create {
                        id,
                        name,
                        spec,
                        schema,
                        backfill,
                        reply,
                    } => {
                        let created = self.create(id, name, &spec, schema, &backfill);
                        backfill.finish();
                        let _ = reply.send(created);
                    }
                    Command::Drop { id, name, reply } => {
                        self.drop(id, &name);
                        self.table_watermarks.remove(&id);
                        let _ = reply.send(());
                    }
                }
            }
            if commanded {
                // A view created or dropped may change what the clock must wake for.
                self.publish_clock();
            }
            self.after_checkpoint();
            if stopping {
                self.checkpoint(true);
                self.checkpoints.stop();
                return;
            }
            if self.checkpoint_due().is_some_and(|d| d.is_zero()) {
                let started = Instant::now();
                self.checkpoint(false);
                self.collecting += started.elapsed();
            }
        }
    }

    /// How long until a checkpoint is due; `None` when nothing changed since the last one.
    /// (While one is being written, it says to look again shortly, not to spin.)
    fn checkpoint_due(&self) -> Option<Duration> {
        let c = &self.checkpoints;
        let large = c.records_bytes >= CheckpointSetup::max_pending_bytes(&c.budget);
        // Operators wait to hear that the checkpoint in flight is durable.
        let awaited = c.awaiting;
        if !(c.changed || large || c.failed() || awaited) {
            return None;
        }
        if c.in_flight() {
            return Some(Duration::from_millis(10));
        }
        if large || awaited {
            return Some(Duration::ZERO);
        }
        Some(c.interval.saturating_sub(c.last.elapsed()))
    }

    /// Takes a checkpoint of everything as of the committed epoch and hands it to the
    /// checkpoint thread — unless one is still being written (then it waits for the next
    /// chance), or `wait`: then it waits for that one, and for this one to be durable.
    fn checkpoint(&mut self, wait: bool) {
        if wait {
            self.checkpoints.wait_idle();
        } else if self.checkpoints.in_flight() {
            return;
        }
        self.after_checkpoint();
        if !self.checkpoints.changed && !self.checkpoints.failed() {
            return;
        }
        let started = Instant::now();
        // After a failed write the stored state is a checkpoint behind what operators consider
        // saved: rewrite everything.
        let full = self.checkpoints.failed() || self.checkpoints.needs_full;
        match self.collect(full, started) {
            Ok(job) => {
                self.checkpoints.needs_full = false;
                self.checkpoints.changed = false;
                self.checkpoints.submit(job);
            }
            Err(e) => {
                tracing::error!(error = %e, "collecting a checkpoint failed; the next one rewrites all state");
                self.checkpoints.needs_full = true;
                self.checkpoints.collected.clear();
            }
        }
        self.checkpoints.last = Instant::now();
        if wait {
            self.checkpoints.wait_idle();
        }
    }

    /// Once the checkpoint in flight is written: tells the operators it covered that their
    /// state is durable (if it failed, the next checkpoint is a full one instead), then keeps
    /// their state in memory within the budget.
    fn after_checkpoint(&mut self) {
        if !self.checkpoints.awaiting || self.checkpoints.in_flight() {
            return;
        }
        self.checkpoints.awaiting = false;
        let collected = std::mem::take(&mut self.checkpoints.collected);
        if self.checkpoints.failed() {
            return;
        }
        // Nothing writes state until the next checkpoint is submitted: the store is exactly
        // this checkpoint, which evicted state is read back from from now on.
        let snapshot = Arc::new(self.checkpoints.store.snapshot());
        *self.checkpoints.durable.write() = snapshot.clone();
        let lsn = self.checkpoints.lsn;
        if let Err(e) = self.scanner.rebase(&snapshot, lsn) {
            // The rows stay in memory; the next checkpoint tries again.
            tracing::error!(error = %e, "moving checkpointed table rows to the state store");
        }
        // Views whose contents spill: once no reader is below the checkpoint.
        let readers_above = self.shared.epochs.epoch_horizon().0 >= lsn.0;
        for df in self
            .dataflows
            .iter_mut()
            .filter(|d| collected.contains(&d.id))
        {
            if readers_above && let Err(e) = df.view.store.write().rebase(snapshot.clone(), lsn) {
                tracing::error!(error = %e, view = df.id, "moving checkpointed view rows to the state store");
            }
            df.stored_is_own = true;
            for op in df.nodes.iter_mut().flat_map(|n| n.shards.iter_mut()) {
                op.checkpoint_durable();
            }
        }
        self.evict();
    }

    /// Over the memory budget, evicts durable operator state, from every operator that can in
    /// proportion to what it holds, down to 90 % of the budget.
    fn evict(&mut self) {
        let budget = self.checkpoints.memory_budget;
        let held = evictable_bytes(&self.dataflows);
        if held <= budget {
            let mut stats = self.shared.memory.lock();
            stats.evictable_bytes = held;
            return;
        }
        let keep = (budget as f64 * 0.9) / held as f64;
        let started = Instant::now();
        for df in &mut self.dataflows {
            for op in df.nodes.iter_mut().flat_map(|n| n.shards.iter_mut()) {
                if op.evicts() {
                    let target = (op.state_bytes() as f64 * keep) as usize;
                    op.evict(target);
                }
            }
        }
        let after = evictable_bytes(&self.dataflows);
        {
            let mut stats = self.shared.memory.lock();
            stats.evictable_bytes = after;
            stats.evictions += 1;
            stats.evicted_bytes += held.saturating_sub(after) as u64;
        }
        tracing::debug!(
            before = held,
            after,
            budget,
            took_ms = started.elapsed().as_millis() as u64,
            "evicted operator state"
        );
    }

    /// The encoder of table `id`'s rows (`None` if it was dropped).
    fn codec(&mut self, id: ObjectId) -> Result<Option<Arc<TableCodec>>> {
        if let Some(c) = self.checkpoints.codecs.get(&id) {
            return Ok(Some(c.clone()));
        }
        let Some((_, schema, pk)) = self.scanner.tables().into_iter().find(|t| t.0 == id) else {
            return Ok(None);
        };
        let mut codec = TableCodec::new(schema, &pk)?;
        if self.scanner.is_generated(id) {
            codec = codec.counts_only();
        }
        let codec = Arc::new(codec);
        self.checkpoints.codecs.insert(id, codec.clone());
        Ok(Some(codec))
    }

    /// Collects a checkpoint as of the committed epoch.
    fn collect(&mut self, full: bool, started: Instant) -> Result<Job> {
        let Committed { epoch, lsn } = self.committed;
        let store = self.checkpoints.store.clone();
        let mut batch = store.batch();
        let mut tables = Vec::new();
        let records = std::mem::take(&mut self.checkpoints.records);
        self.checkpoints.records_bytes = 0;
        let dropped = std::mem::take(&mut self.checkpoints.dropped);
        // A full checkpoint clears them with the rest of their objects (their dataflows'
        // stored state is not their own yet).
        let stale_parts = std::mem::take(&mut self.checkpoints.stale_parts);
        if full {
            // Everything is rewritten except what operators that evict keep stored (they
            // rewrite their own changes since the last durable checkpoint over it) — unless
            // what is stored is not theirs yet: then they rewrite everything, which is all
            // changed since they were built.
            let mut kept = HashMap::new();
            for df in self
                .dataflows
                .iter()
                .filter(|d| d.persistent() && d.stored_is_own)
            {
                let mut evicting: Vec<u32> = Vec::new();
                for (i, node) in df.nodes.iter().enumerate() {
                    for (shard, op) in node.shards.iter().enumerate() {
                        if op.evicts() {
                            evicting.push(shard_part(i, shard));
                        }
                    }
                }
                // In key order, as clearing around them needs.
                evicting.sort_unstable();
                kept.insert(df.id, evicting);
            }
            for id in store.stored_objects()? {
                match kept.get(&id) {
                    None => batch.clear_object(id),
                    Some(evicting) => batch.clear_object_except(id, evicting),
                }
            }
            for (id, _, _) in self.scanner.tables() {
                let Some(codec) = self.codec(id)? else {
                    continue;
                };
                for rows in self.scanner.scan_table(id, lsn)? {
                    if rows.num_rows() > 0 {
                        tables.push((codec.clone(), id, ZBatch::uniform(rows, 1)));
                    }
                }
            }
        } else {
            for id in dropped {
                batch.clear_object(id);
            }
            for (id, keep) in stale_parts {
                batch.clear_object_except(id, &keep);
            }
            for record in records {
                for (id, change) in record.iter() {
                    if let Some(codec) = self.codec(*id)? {
                        tables.push((codec, *id, change.clone()));
                    }
                }
            }
        }
        let mut views = Vec::new();
        let mut history = Vec::new();
        // Temporary dataflows are not stored, but their operators' records of changes since the
        // last checkpoint are emptied all the same, or they would grow for as long as the
        // subscription runs.
        for df in self.dataflows.iter_mut().filter(|d| !d.persistent()) {
            for op in df.nodes.iter_mut().flat_map(|n| n.shards.iter_mut()) {
                guarded(|| op.checkpoint(false, &mut Discard))?;
            }
        }
        for df in self.dataflows.iter_mut().filter(|d| d.persistent()) {
            for (i, node) in df.nodes.iter_mut().enumerate() {
                for (shard, op) in node.shards.iter_mut().enumerate() {
                    let mut sink = PrefixSink {
                        batch: &mut batch,
                        prefix: part_prefix(df.id, shard_part(i, shard)),
                    };
                    guarded(|| op.checkpoint(full, &mut sink))?;
                }
            }
            self.checkpoints.collected.push(df.id);
            let after = if full { Epoch(0) } else { df.history_saved };
            let (oldest, entries) = df.view.history.since(after);
            if !full && oldest != df.history_oldest_saved {
                // Entries up to `oldest` were trimmed.
                batch.clear_values_below(df.id, HISTORY, &(oldest.0 + 1).to_be_bytes());
            }
            df.history_oldest_saved = oldest;
            if let Some(last) = entries.last() {
                df.history_saved = last.epoch;
            }
            history.extend(entries.into_iter().map(|e| (df.id, e)));
            views.push(ViewCheckpoint {
                id: df.id,
                fingerprint: df.fingerprint,
                history_oldest: oldest.0,
                shards: self.shared.workers as u32,
            });
        }
        debug_assert_eq!(epoch.0, lsn.0);
        Ok(Job {
            batch,
            tables,
            history,
            meta: CheckpointMeta {
                table_watermarks: self.table_watermarks.values().copied().collect(),
                clock: Some(self.clock),
                ..CheckpointMeta::new(lsn.0, views)
            },
            started,
            collect: started.elapsed(),
            full,
        })
    }

    /// Stops the dataflow of object `id` (if it is a view) and every dataflow still reading
    /// it — subscriptions' temporary dataflows, since the catalog's views reading it were
    /// dropped first. Their subscribers end with 42P01.
    fn drop(&mut self, id: ObjectId, name: &str) {
        let gone: Vec<ObjectId> = self
            .dataflows
            .iter()
            .filter(|d| d.id == id || d.reads(Input::Table(id)) || d.reads(Input::View(id)))
            .map(|d| d.id)
            .collect();
        self.dataflows.retain(|d| !gone.contains(&d.id));
        if id < TEMP_IDS {
            self.checkpoints.dropped.push(id);
            self.checkpoints.codecs.remove(&id);
            self.checkpoints.changed = true;
        }
        let mut views = self.shared.views.write();
        for dropped in gone.iter().chain(std::iter::once(&id)) {
            if let Some(view) = views.remove(dropped) {
                view.history.close(crate::err!(
                    sqlstate::UNDEFINED_TABLE,
                    "relation \"{name}\" was dropped"
                ));
            }
        }
    }

    fn run_epoch(&mut self, records: Vec<Record>) {
        let lsn = records.last().map_or(self.committed.lsn, |r| r.lsn);
        let epoch = Epoch(lsn.0);
        let time = records.last().map_or_else(SystemTime::now, |r| r.time);
        let clock = records.iter().map(|r| r.clock).fold(self.clock, i64::max);
        self.clock = clock;
        self.checkpoints
            .records
            .extend(records.iter().map(|r| r.changes.clone()));
        for w in records.iter().flat_map(|r| &r.watermarks) {
            self.table_watermarks.insert(w.table, *w);
        }
        self.checkpoints.changed = true;
        if self.dataflows.is_empty() {
            // No views: the epoch only moves the read point.
            self.committed = Committed { epoch, lsn };
            self.publish_clock();
            self.shared.epochs.publish(self.committed);
            return;
        }
        let mut deltas: HashMap<Input, Vec<ZBatch>> = HashMap::new();
        for record in &records {
            for (table, change) in record.changes.iter() {
                deltas
                    .entry(Input::Table(*table))
                    .or_default()
                    .push(change.clone());
            }
        }
        let mut failed: Vec<ObjectId> = Vec::new();
        let mut changed: Vec<Arc<ChangeHistory>> = Vec::new();
        let marks = WatermarkSource {
            tables: &self.table_watermarks,
            views: &self.shared.views,
        };
        let pool = self.pool.clone();
        for df in &mut self.dataflows {
            let upstream_failed = failed.iter().any(|f| df.reads(Input::View(*f)));
            let result = if upstream_failed {
                Err(crate::err!(
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "a view it reads stopped"
                ))
            } else {
                let watermarks = df.current_source_watermarks(&marks);
                let active = df.sources.iter().any(|(i, _)| deltas.contains_key(i))
                    || watermarks != df.source_watermarks
                    || df.next_time().is_some_and(|t| t <= clock);
                if !active {
                    continue;
                }
                let feed = |input: Input| deltas.get(&input).cloned().unwrap_or_default();
                guarded(|| df.step(pool.as_deref(), epoch, clock, &feed, watermarks, true))
            };
            match result.and_then(|delta| Ok((one_batch(&delta, &df.view)?, delta))) {
                Ok((whole, delta)) => {
                    if let Some(whole) = whole {
                        df.view.history.append(epoch, whole, time);
                        changed.push(df.view.history.clone());
                        deltas.insert(Input::View(df.id), delta);
                    }
                }
                Err(e) => {
                    tracing::error!(view = %df.view.name, epoch = epoch.0, error = %e, "materialized view stopped");
                    df.view.history.close(crate::err!(
                        e.sqlstate,
                        "materialized view \"{}\" stopped at epoch {}: {}",
                        df.view.name,
                        epoch.0,
                        e.message
                    ));
                    *df.view.status.lock() = ViewStatus::Failed(epoch, e);
                    failed.push(df.id);
                }
            }
        }
        self.dataflows.retain(|d| !failed.contains(&d.id));
        // A stopped view is rebuilt at restart: its stored state goes.
        self.checkpoints
            .dropped
            .extend(failed.iter().filter(|id| **id < TEMP_IDS));
        self.committed = Committed { epoch, lsn };
        self.publish_clock();
        self.shared.epochs.publish(self.committed);
        for history in changed {
            history.notify(epoch);
        }
    }

    fn create(
        &mut self,
        id: ObjectId,
        name: String,
        spec: &DataflowSpec,
        schema: SchemaRef,
        backfill: &Arc<Backfill>,
    ) -> Result<()> {
        let workers = self.shared.workers;
        let fingerprint = spec.fingerprint(workers);
        // The same dataflow checkpointed with another number of shards: its view's contents
        // and history are kept, its operators' state is rebuilt (it is split differently).
        let stored = self.checkpoints.restorable.remove(&id);
        let resharded = stored.as_ref().is_some_and(|v| {
            v.shards as usize != workers && v.fingerprint == spec.fingerprint(v.shards as usize)
        });
        let stored = stored.filter(|v| v.fingerprint == fingerprint || resharded);
        let history = match &stored {
            Some(v) => ChangeHistory::restored(
                Epoch(v.history_oldest),
                load_history(&self.checkpoints.store, id)?,
                self.shared.retention,
            ),
            None => ChangeHistory::new(self.committed.epoch, self.shared.retention),
        };
        let store = self.view_store(id, &name, spec, schema, stored.is_some())?;
        let watermarked = {
            let views = self.shared.views.read();
            super::watermark::watermarked_columns(spec, &|v| {
                views
                    .get(&v)
                    .map(|v| v.watermarked.clone())
                    .unwrap_or_default()
            })?
        };
        let view = Arc::new(ViewState {
            name,
            store: Arc::new(RwLock::new(store)),
            status: Mutex::new(ViewStatus::Running),
            history,
            watermarks: Mutex::new(Vec::new()),
            watermarked,
            state: Mutex::new(OperatorState::default()),
            operators: Mutex::new(Vec::new()),
            plan: Mutex::new(None),
            backfill: backfill.clone(),
        });
        let mut df = Dataflow::build(
            id,
            spec,
            fingerprint,
            self.shared.workers,
            view.clone(),
            self.shared.epochs.clone(),
        )?;
        if id < TEMP_IDS {
            for (i, node) in df.nodes.iter_mut().enumerate() {
                for (shard, op) in node.shards.iter_mut().enumerate() {
                    op.attach(Box::new(PartLookup {
                        durable: self.checkpoints.durable.clone(),
                        prefix: part_prefix(id, shard_part(i, shard)),
                    }));
                }
            }
        }
        if resharded {
            // The view's contents as of the checkpoint (where the runtime starts), and the
            // operators' state from the tables at that same point: the backfill's output is
            // those contents, so it is not applied again. The operators' old parts go at the
            // next checkpoint; until their own state is durable they read nothing stored.
            let last = df.nodes.len() - 1;
            let source = StoreSource {
                store: &self.checkpoints.store.clone(),
                id,
                part: last as u32,
            };
            guarded(|| df.nodes[last].shards[0].restore(&source))?;
            self.backfill_operators(&mut df, false, backfill)?;
            df.history_saved = self.committed.epoch;
            self.checkpoints
                .stale_parts
                .push((id, vec![last as u32, HISTORY]));
            self.checkpoints.changed = true;
        } else if stored.is_some() {
            // Restore: every operator's state as of the checkpoint, which is where the
            // runtime starts.
            let store = self.checkpoints.store.clone();
            for (i, node) in df.nodes.iter_mut().enumerate() {
                for (shard, op) in node.shards.iter_mut().enumerate() {
                    let source = StoreSource {
                        store: &store,
                        id,
                        part: shard_part(i, shard),
                    };
                    guarded(|| op.restore(&source))?;
                }
            }
            df.stored_is_own = true;
            df.history_saved = self.committed.epoch;
        } else {
            self.backfill_operators(&mut df, true, backfill)?;
            if id < TEMP_IDS {
                // Whatever an earlier dataflow of this view stored is stale.
                self.checkpoints.dropped.push(id);
                self.checkpoints.changed = true;
            }
        }
        self.shared.views.write().insert(id, view);
        self.dataflows.push(df);
        Ok(())
    }

    /// The contents of view `id`. A persistent view whose query only ever inserts keeps in
    /// memory only the rows no durable checkpoint covers (like an APPEND ONLY table); when
    /// `restored`, the rest are those of the checkpoint the runtime starts from.
    fn view_store(
        &self,
        id: ObjectId,
        name: &str,
        spec: &DataflowSpec,
        schema: SchemaRef,
        restored: bool,
    ) -> Result<TableStore> {
        if id >= TEMP_IDS || !spec.append_only {
            return Ok(TableStore::new(name, schema, &[]));
        }
        // The view's contents are the part of the Materialize node, after the spec's nodes.
        let prefix = part_prefix(id, spec.nodes.len() as u32);
        let base = if restored {
            let snapshot = self.checkpoints.durable.read().clone();
            // Spilling views' checkpoints always keep the count (it is in their fingerprint).
            let rows = snapshot.row_count(&prefix)?.unwrap_or(0);
            Some(TableBase {
                snapshot,
                lsn: self.committed.lsn,
                rows,
            })
        } else {
            None
        };
        let spill = Spill {
            prefix,
            codec: Arc::new(TableCodec::new(schema.clone(), &[])?),
            generated: None,
        };
        Ok(TableStore::spilling(name, schema, &[], spill, base))
    }

    /// Feeds a new dataflow its inputs' contents at the committed epoch, as inserts; their
    /// result goes into the view unless `into_view` is false (it is there already).
    ///
    /// The rows go through in chunks (see [`BACKFILL_CHUNK_TIME`]), so that `backfill` tells how
    /// far it got; the view receives the result of all of them at once, at the last.
    fn backfill_operators(
        &mut self,
        df: &mut Dataflow,
        into_view: bool,
        backfill: &Backfill,
    ) -> Result<()> {
        let Committed { epoch, lsn } = self.committed;
        let mut initial: Vec<(Input, Vec<ZBatch>)> = Vec::new();
        for (input, _) in &df.sources {
            if initial.iter().any(|(i, _)| i == input) {
                continue;
            }
            let batches = match input {
                Input::Table(t) => self.scanner.scan_table(*t, lsn)?,
                Input::View(v) => {
                    let upstream = self.shared.views.read().get(v).cloned().ok_or_else(|| {
                        crate::err!(sqlstate::UNDEFINED_TABLE, "a view it reads was dropped")
                    })?;
                    upstream.scan(epoch)?
                }
            };
            initial.push((
                *input,
                batches
                    .into_iter()
                    .filter(|b| b.num_rows() > 0)
                    .map(|b| ZBatch::uniform(b, 1))
                    .collect(),
            ));
        }
        let mut chunks = Chunks::new(initial);
        backfill
            .rows_total
            .store(chunks.rows_left as u64, Ordering::Relaxed);
        let pool = self.pool.as_deref();
        let clock = self.clock;
        let started = Instant::now();
        let mut rows = BACKFILL_FIRST_CHUNK_ROWS;
        let last = loop {
            // A remainder not much larger than a chunk goes with it.
            if chunks.rows_left <= rows + rows / 2 {
                break chunks.take(chunks.rows_left);
            }
            let chunk = chunks.take(rows);
            let chunk_started = Instant::now();
            let feed = |input: Input| chunk_input(&chunk, input);
            guarded(|| df.step_held(pool, epoch, clock, &feed, into_view))?;
            backfill
                .rows_done
                .fetch_add(chunk_rows(&chunk), Ordering::Relaxed);
            rows = next_chunk_rows(rows, chunk_started.elapsed(), started.elapsed());
        };
        let feed = |input: Input| chunk_input(&last, input);
        let marks = WatermarkSource {
            tables: &self.table_watermarks,
            views: &self.shared.views,
        };
        let watermarks = df.current_source_watermarks(&marks);
        guarded(|| df.step(pool, epoch, clock, &feed, watermarks, into_view))?;
        backfill
            .rows_done
            .fetch_add(chunk_rows(&last), Ordering::Relaxed);
        Ok(())
    }

    /// Publishes the committed clock and the earliest time a dataflow waits for.
    fn publish_clock(&self) {
        use std::sync::atomic::Ordering;
        self.shared.clock.store(self.clock, Ordering::SeqCst);
        let next = self.dataflows.iter().filter_map(Dataflow::next_time).min();
        self.shared.wakeup.send_if_modified(|w| {
            let changed = *w != next;
            *w = next;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(values: std::ops::Range<i64>) -> ZBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let column = Arc::new(Int64Array::from_iter_values(values));
        ZBatch::uniform(RecordBatch::try_new(schema, vec![column]).unwrap(), 1)
    }

    fn values(batches: &[ZBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let column = b.data.column(0).as_any().downcast_ref::<Int64Array>();
                column.unwrap().values().to_vec()
            })
            .collect()
    }

    #[test]
    fn chunks_hand_out_every_row_once_in_order() {
        let (a, b) = (Input::Table(1), Input::Table(2));
        let mut chunks = Chunks::new(vec![
            (a, vec![batch(0..5), batch(5..7)]),
            (b, vec![batch(100..104)]),
        ]);
        assert_eq!(chunks.rows_left, 11);
        let first = chunks.take(6);
        assert_eq!(values(&chunk_input(&first, a)), vec![0, 1, 2, 3, 4, 5]);
        assert!(chunk_input(&first, b).is_empty());
        let second = chunks.take(3);
        assert_eq!(values(&chunk_input(&second, a)), vec![6]);
        assert_eq!(values(&chunk_input(&second, b)), vec![100, 101]);
        let rest = chunks.take(100);
        assert_eq!(chunk_rows(&rest), 2);
        assert_eq!(chunks.rows_left, 0);
        assert!(chunks.take(10).is_empty());
    }

    #[test]
    fn chunks_grow_towards_their_time_and_with_the_backfill() {
        let rows = BACKFILL_FIRST_CHUNK_ROWS;
        let ms = Duration::from_millis;
        // Fast chunks grow, at most fourfold; slow ones shrink, at most by half, never below
        // the first chunk.
        assert_eq!(next_chunk_rows(rows, ms(1), ms(1)), 4 * rows);
        assert_eq!(next_chunk_rows(4 * rows, ms(125), ms(500)), 8 * rows);
        assert_eq!(next_chunk_rows(8 * rows, ms(2000), ms(3000)), 4 * rows);
        assert_eq!(next_chunk_rows(rows, ms(2000), ms(3000)), rows);
        // After 16 s a chunk may take a second.
        assert_eq!(next_chunk_rows(8 * rows, ms(500), ms(16_000)), 16 * rows);
    }
}
