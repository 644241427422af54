//! Checkpoints: the dataflows' state, the tables' rows and the views' change histories, written
//! to the state store together with the log position they cover, so that a restart loads them
//! and replays only the log after that position.
//!
//! ```text
//!  runtime thread, between epochs (every `interval`, and at shutdown):
//!    every operator's state changes since the last checkpoint ──► StateBatch
//!    + the tables' changes (log records) since then, the views' new history entries
//!    + the checkpoint record (LSN = epoch of the last committed epoch)
//!        └──► checkpoint thread: encode rows, one synced RocksDB write ──► delete log segments
//!                                                                         below the LSN
//! ```
//!
//! The runtime thread only collects: operators hand over what changed (cheap: dirty groups,
//! logged row changes), table changes and history entries are passed on as the Arrow batches
//! they already are. Encoding them and the write itself happen on the checkpoint thread, so
//! epochs keep running meanwhile. One checkpoint is in flight at a time; each builds on the
//! previous one, so if a write fails the next checkpoint is a full one (every key rewritten),
//! and until one succeeds the log keeps everything since the last good checkpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::storage::state::{
    CheckpointMeta, HISTORY, StateBatch, StateStore, StoreSnapshot, TABLE_ROWS, ViewCheckpoint,
    part_prefix,
};
use crate::storage::table::TableCodec;
use crate::subscribe::Entry;
use crate::types::{Epoch, Lsn, ObjectId, TableWatermark, ZBatch};

use super::replay_cost::ReplayBudget;
use super::state::{CountVisitor, StateLookup, StateSink, StateSource, ValueVisitor};

/// How the runtime checkpoints, and what the last checkpoint left to recover.
pub struct CheckpointSetup {
    pub store: Arc<StateStore>,
    /// Time between checkpoints while changes arrive.
    pub interval: Duration,
    /// Views whose state the last checkpoint holds (restored instead of backfilled).
    pub views: Vec<ViewCheckpoint>,
    /// Objects whose stored state is stale (dropped, or to be rebuilt): cleared by the first
    /// checkpoint.
    pub stale: Vec<ObjectId>,
    /// Called on the checkpoint thread after a checkpoint covering the log up to an LSN is
    /// durable (the engine deletes log segments below it).
    pub on_checkpoint: Box<dyn Fn(Lsn) + Send>,
    /// Bytes of operator state to keep in memory; beyond it, state that is durable is evicted
    /// (and read back from the store when needed).
    pub memory_budget: usize,
    /// The lag limit (see [`ReplayBudget`]): the runtime times its epochs into it, and a
    /// checkpoint is taken once half the limit of table changes is pending, not only every
    /// interval (at most [`CheckpointSetup::MAX_PENDING_BYTES`]).
    pub budget: Arc<ReplayBudget>,
    /// Tables' watermarks as of the last checkpoint (carried into the next ones).
    pub table_watermarks: Vec<TableWatermark>,
    /// The clock as of the last checkpoint (`i64::MIN` without one: the log's records set it).
    pub clock: i64,
}

impl CheckpointSetup {
    /// At most this many bytes of table changes are pending before a checkpoint is due: under a
    /// heavy load it bounds both a checkpoint's size and how much of the log a restart after a
    /// crash replays.
    pub const MAX_PENDING_BYTES: usize = 32 << 20;

    /// Pending bytes of table changes past which a checkpoint is due before the interval is up.
    pub fn max_pending_bytes(budget: &ReplayBudget) -> usize {
        match budget.limit() {
            0 => Self::MAX_PENDING_BYTES,
            limit => (limit / 2).clamp(1, Self::MAX_PENDING_BYTES),
        }
    }
}

/// Checkpoint activity, for observability and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStats {
    /// Checkpoints written since start.
    pub count: u64,
    /// The log position the last one covers.
    pub lsn: Lsn,
    pub at: Option<SystemTime>,
    /// Of the last checkpoint: time on the runtime thread (collecting) and in total (until
    /// durable), and the bytes written.
    pub collect: Duration,
    pub duration: Duration,
    pub bytes: u64,
    /// Bytes written by all checkpoints since start.
    pub total_bytes: u64,
    pub failures: u64,
    pub last_error: Option<Error>,
    pub in_flight: bool,
    /// Whether the last one was a full checkpoint.
    pub full: bool,
}

#[derive(Default)]
struct Shared {
    stats: Mutex<CheckpointStats>,
    done: Condvar,
}

/// A checkpoint collected on the runtime thread, finished on the checkpoint thread.
pub struct Job {
    pub batch: StateBatch,
    pub tables: Vec<(Arc<TableCodec>, ObjectId, ZBatch)>,
    pub history: Vec<(ObjectId, Entry)>,
    pub meta: CheckpointMeta,
    pub started: Instant,
    pub collect: Duration,
    pub full: bool,
}

/// The runtime's side of checkpointing: what changed since the last checkpoint, and the thread
/// that writes them.
pub struct Checkpointer {
    pub store: Arc<StateStore>,
    pub interval: Duration,
    shared: Arc<Shared>,
    sender: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub last: Instant,
    /// Whether the next checkpoint must rewrite everything (a write failed).
    pub needs_full: bool,
    /// Table changes (log records) since the last checkpoint.
    pub records: Vec<Arc<Vec<(ObjectId, ZBatch)>>>,
    /// Their size in memory: past [`CheckpointSetup::max_pending_bytes`] a checkpoint is due
    /// before the interval is up.
    pub records_bytes: usize,
    /// See [`CheckpointSetup::budget`].
    pub budget: Arc<ReplayBudget>,
    /// Objects whose stored state is to be deleted.
    pub dropped: Vec<ObjectId>,
    /// Objects whose stored state is to be deleted except these parts (ascending).
    pub stale_parts: Vec<(ObjectId, Vec<u32>)>,
    /// Encoders of tables' rows.
    pub codecs: HashMap<ObjectId, Arc<TableCodec>>,
    /// Whether anything changed since the last checkpoint.
    pub changed: bool,
    /// The LSN of the last checkpoint collected.
    pub lsn: Lsn,
    /// Views whose state the last checkpoint holds, until their dataflows are built.
    pub restorable: HashMap<ObjectId, ViewCheckpoint>,
    /// Dataflows the checkpoint in flight was collected from (told when it is durable).
    pub collected: Vec<ObjectId>,
    /// A checkpoint was submitted and the runtime has not yet seen it finish.
    pub awaiting: bool,
    /// The store as of the last durable checkpoint.
    pub durable: DurableSnapshot,
    /// See [`CheckpointSetup::memory_budget`].
    pub memory_budget: usize,
}

impl Checkpointer {
    pub fn start(setup: CheckpointSetup, lsn: Lsn) -> Result<Checkpointer> {
        let shared = Arc::new(Shared::default());
        let durable = Arc::new(parking_lot::RwLock::new(Arc::new(setup.store.snapshot())));
        let (sender, receiver) = mpsc::channel::<Job>();
        let thread = {
            let shared = shared.clone();
            let store = setup.store.clone();
            let on_checkpoint = setup.on_checkpoint;
            std::thread::Builder::new()
                .name("eddy-checkpoint".into())
                .spawn(move || {
                    while let Ok(job) = receiver.recv() {
                        write(&store, &shared, job, &on_checkpoint);
                    }
                })
                .map_err(|e| Error::io("starting the checkpoint thread", &e))?
        };
        Ok(Checkpointer {
            store: setup.store,
            interval: setup.interval,
            shared,
            sender: Some(sender),
            thread: Some(thread),
            last: Instant::now(),
            needs_full: false,
            records: Vec::new(),
            records_bytes: 0,
            budget: setup.budget,
            changed: !setup.stale.is_empty(),
            dropped: setup.stale,
            stale_parts: Vec::new(),
            codecs: HashMap::new(),
            lsn,
            restorable: setup.views.into_iter().map(|v| (v.id, v)).collect(),
            collected: Vec::new(),
            awaiting: false,
            durable,
            memory_budget: setup.memory_budget,
        })
    }

    /// Reads the current [`CheckpointStats`] from any thread.
    pub fn stats_reader(&self) -> Box<dyn Fn() -> CheckpointStats + Send + Sync> {
        let shared = self.shared.clone();
        Box::new(move || shared.stats.lock().clone())
    }

    /// Whether a checkpoint is being written.
    pub fn in_flight(&self) -> bool {
        self.shared.stats.lock().in_flight
    }

    /// Waits until no checkpoint is being written.
    pub fn wait_idle(&self) {
        let mut stats = self.shared.stats.lock();
        while stats.in_flight {
            self.shared.done.wait(&mut stats);
        }
    }

    /// Whether the last write failed (then the next checkpoint must be full).
    pub fn failed(&self) -> bool {
        self.shared.stats.lock().last_error.is_some()
    }

    /// Hands a collected checkpoint to the checkpoint thread.
    pub fn submit(&mut self, job: Job) {
        self.shared.stats.lock().in_flight = true;
        self.awaiting = true;
        self.lsn = Lsn(job.meta.lsn);
        if let Some(sender) = &self.sender
            && sender.send(job).is_ok()
        {
            return;
        }
        let mut stats = self.shared.stats.lock();
        stats.in_flight = false;
        stats.last_error = Some(crate::internal!("the checkpoint thread stopped"));
    }

    /// Stops the checkpoint thread after it has written what it was given.
    pub fn stop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finishes and writes one checkpoint (on the checkpoint thread).
fn write(store: &StateStore, shared: &Shared, job: Job, on_checkpoint: &dyn Fn(Lsn)) {
    let Job {
        mut batch,
        tables,
        history,
        meta,
        started,
        collect,
        full,
    } = job;
    // What each kind of state contributes, for the debug log.
    let mut parts = (0u64, 0u64, 0u64);
    let result = (|| -> Result<()> {
        parts.0 = batch.size_in_bytes() as u64;
        // Per table, the changes summed (a row updated twice since the last checkpoint is
        // written once), then as counted rows.
        let mut per_table: HashMap<ObjectId, (Arc<TableCodec>, Vec<ZBatch>)> = HashMap::new();
        for (codec, id, change) in tables {
            per_table
                .entry(id)
                .or_insert_with(|| (codec, Vec::new()))
                .1
                .push(change);
        }
        for (id, (codec, changes)) in per_table {
            let prefix = part_prefix(id, TABLE_ROWS);
            if codec.stores_counts_only() {
                // Its source makes the rows anew when they are read: the count is enough.
                let n: i64 = changes
                    .iter()
                    .map(|c| c.weights.values().iter().sum::<i64>())
                    .sum();
                batch.add(&prefix, &[], n);
                continue;
            }
            let change = match changes.len() {
                1 => changes
                    .into_iter()
                    .next()
                    .ok_or_else(|| crate::internal!("no change"))?,
                _ => ZBatch::consolidate(&changes, codec.schema())?,
            };
            let rows = codec.encode(&change.data)?;
            for (i, w) in change.weights.values().iter().enumerate() {
                batch.add(&prefix, rows.row(i).as_ref(), *w);
            }
            // The table's row count (see `StoreSnapshot::row_count`).
            batch.add(&prefix, &[], change.weights.values().iter().sum());
        }
        parts.1 = batch.size_in_bytes() as u64 - parts.0;
        for (id, entry) in &history {
            batch.put(
                &part_prefix(*id, HISTORY),
                &entry.epoch.0.to_be_bytes(),
                &encode_entry(entry)?,
            );
        }
        let bytes = batch.size_in_bytes() as u64;
        parts.2 = bytes - parts.0 - parts.1;
        if let Some(delay) = test_write_delay() {
            // Widens the window in which a crash finds a checkpoint half done (crash tests).
            std::thread::sleep(delay);
        }
        if let Some(e) = crate::storage::log::injected_fault("checkpoint") {
            return Err(Error::io("writing a checkpoint (injected fault)", &e));
        }
        store.write_checkpoint(batch, &meta)?;
        let mut stats = shared.stats.lock();
        stats.count += 1;
        stats.lsn = Lsn(meta.lsn);
        stats.at = Some(SystemTime::now());
        stats.collect = collect;
        stats.duration = started.elapsed();
        stats.bytes = bytes;
        stats.total_bytes += bytes;
        stats.full = full;
        stats.last_error = None;
        Ok(())
    })();
    if let Err(e) = &result {
        tracing::error!(error = %e, lsn = meta.lsn, "checkpoint failed; the next one rewrites all state");
        let mut stats = shared.stats.lock();
        stats.failures += 1;
        stats.last_error = Some(e.clone());
    } else {
        tracing::debug!(
            lsn = meta.lsn,
            operator_bytes = parts.0,
            table_bytes = parts.1,
            history_bytes = parts.2,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        on_checkpoint(Lsn(meta.lsn));
    }
    shared.stats.lock().in_flight = false;
    shared.done.notify_all();
}

/// `EDDY_TEST_CHECKPOINT_DELAY_MS`: a pause before each checkpoint's write, for crash tests
/// that want to kill the server while a checkpoint is in flight.
fn test_write_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("EDDY_TEST_CHECKPOINT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

/// A history entry as stored: commit time (µs since 1970), then the delta as Arrow IPC.
fn encode_entry(entry: &Entry) -> Result<Vec<u8>> {
    let micros = entry
        .at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut out = micros.to_le_bytes().to_vec();
    out.extend_from_slice(&entry.delta.to_ipc()?);
    Ok(out)
}

/// Reads back a view's stored history entries.
pub fn load_history(store: &StateStore, id: ObjectId) -> Result<Vec<Entry>> {
    let corrupt = || {
        crate::err!(
            crate::error::sqlstate::DATA_CORRUPTED,
            "a stored change history entry is unreadable"
        )
    };
    let mut entries = Vec::new();
    store.scan_values(id, HISTORY, &mut |key, value| {
        let epoch = key
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt())?;
        let micros = value
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(corrupt)?;
        let mut batches = ZBatch::from_ipc(&value[8..])?;
        let delta = match batches.len() {
            1 => batches.pop().ok_or_else(corrupt)?,
            _ => return Err(corrupt()),
        };
        entries.push(Entry {
            epoch: Epoch(epoch),
            at: UNIX_EPOCH + Duration::from_micros(micros),
            delta: Arc::new(delta),
        });
        Ok(())
    })?;
    Ok(entries)
}

/// An operator's view of the batch: its keys go under its dataflow's and node's prefix.
pub struct PrefixSink<'a> {
    pub batch: &'a mut StateBatch,
    pub prefix: [u8; crate::storage::state::PREFIX_LEN],
}

impl StateSink for PrefixSink<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put(&self.prefix, key, value);
    }
    fn delete(&mut self, key: &[u8]) {
        self.batch.delete(&self.prefix, key);
    }
    fn add(&mut self, key: &[u8], n: i64) {
        self.batch.add(&self.prefix, key, n);
    }
    fn clear_prefix(&mut self, start: &[u8]) {
        self.batch.clear_prefix(&self.prefix, start);
    }
}

/// An operator's stored state: part `part` of object `id`.
pub struct StoreSource<'a> {
    pub store: &'a StateStore,
    pub id: ObjectId,
    pub part: u32,
}

impl StateSource for StoreSource<'_> {
    fn values(&self, f: ValueVisitor<'_>) -> Result<()> {
        self.store.scan_values(self.id, self.part, f)
    }
    fn counts(&self, f: CountVisitor<'_>) -> Result<()> {
        self.store.scan_counts(self.id, self.part, f)
    }
}

/// The store as of the last durable checkpoint, replaced by the runtime after each one.
pub type DurableSnapshot = Arc<parking_lot::RwLock<Arc<StoreSnapshot>>>;

/// Reads of one operator's stored state as of the last durable checkpoint (see
/// [`StateLookup`]).
pub struct PartLookup {
    pub durable: DurableSnapshot,
    pub prefix: [u8; crate::storage::state::PREFIX_LEN],
}

impl StateLookup for PartLookup {
    fn values(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let snapshot = self.durable.read().clone();
        snapshot.get_values(&self.prefix, keys)
    }

    fn values_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<crate::dataflow::state::StoredValues> {
        let snapshot = self.durable.read().clone();
        snapshot.values_after(&self.prefix, after, limit)
    }

    fn counts_after(
        &self,
        start: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<crate::storage::state::CountedRows> {
        let snapshot = self.durable.read().clone();
        snapshot.counts_after(&self.prefix, start, after, limit)
    }

    fn counts_with_starts(
        &self,
        starts: &[&[u8]],
    ) -> Result<Vec<crate::storage::state::CountedRows>> {
        let snapshot = self.durable.read().clone();
        snapshot.counts_with_starts(&self.prefix, starts)
    }
}
