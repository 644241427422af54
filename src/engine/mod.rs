//! The engine: owns the catalog, the log and the tables, and runs statements for sessions.
//!
//! ```text
//!  server ──Session::execute──► engine ──plan/execute──► DataFusion (ad-hoc SELECT, DML sources)
//!                                  │
//!                                  ├─commit──► storage::log (group commit, fsync) ──► ack
//!                                  │              (LSN order = apply order)
//!                                  └─apply───► TableStore per table (rows visible at durable LSN)
//! ```
//!
//! The path of a write: a statement computes its change as [`ZBatch`]es (rows with ±1 weights);
//! [`Engine::commit`] takes the commit lock, validates the change against every table it touches
//! (keys, rows still present), queues the log record (getting its LSN) and applies it to the
//! tables, then releases the lock and waits for the log to report the record durable. Only then
//! does the client hear back. Readers see tables as of the durable LSN, so a row is never visible
//! before it is durable; writers validate against everything queued so concurrent commits cannot
//! both claim one key.
//!
//! The server talks to the engine only through [`Session`] (and [`Engine::open`]/[`Engine::close`]).

pub mod activity;
mod admission;
pub mod clock;
mod convert;
mod dml;
mod information_schema;
mod pg_catalog;
mod pg_functions;
mod provider;
mod roles;
mod session;
mod sources;
mod subscribe;
mod system;
mod views;
pub mod watermark;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};

use crate::catalog::{Catalog, TableDef, ViewDef};
use crate::dataflow::replay_cost::ReplayBudget;
use crate::dataflow::{CheckpointSetup, DataflowSpec, ReadPin, Runtime, TableScanner, ViewState};
use crate::error::{Error, Result, sqlstate};
use crate::storage::log::{Durable, Log, LogRecord, encode_body};
use crate::storage::state::{CheckpointMeta, StateStore, StoreSnapshot, TABLE_ROWS, part_prefix};
use crate::subscribe::{Limits, Registry, Retention};
use crate::types::{Lsn, ObjectId, TableWatermark, ZBatch};
use admission::{AdmissionStats, CheckpointLag};
use clock::{Clock, ClockSetting};
use watermark::WatermarkTracker;

pub use crate::storage::table::Snapshot;
use crate::storage::table::{self, Spill, TableBase, TableCodec, TableStore};
pub use roles::parse_verifier;
pub use session::{CLIENT_ADDRESS, CopyFormat, CopyIn, Output, Prepared, Session};
pub use system::tables as system_tables;

use crate::dataflow::TEMP_IDS;

/// Rows written to one table: the total, and samples of it at most a second apart over the
/// last [`Throughput::WINDOW`], for a rate.
#[derive(Default)]
struct Throughput {
    total: u64,
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Throughput {
    const WINDOW: Duration = Duration::from_secs(10);

    fn record(&mut self, now: Instant, rows: u64) {
        if self
            .samples
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
        {
            self.samples.push_back((now, self.total));
        }
        self.total += rows;
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Rows per second since the oldest sample within the window (0 when idle that long).
    fn rate(&self, now: Instant) -> f64 {
        match self
            .samples
            .iter()
            .find(|(at, _)| now.duration_since(*at) <= Self::WINDOW)
        {
            Some((at, before)) => {
                let secs = now.duration_since(*at).as_secs_f64().max(1.0);
                (self.total - before) as f64 / secs
            }
            None => 0.0,
        }
    }
}

/// Engine settings (from the command line).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// How much of each view's change history is kept for `SUBSCRIBE … AS OF`.
    pub retention: Retention,
    /// Progress interval and the slow-subscriber bound.
    pub subscribe: Limits,
    /// Time between checkpoints while changes arrive.
    pub checkpoint_interval: Duration,
    /// Bytes of dataflow state kept in memory (see [`CheckpointSetup::memory_budget`]).
    pub memory_budget: usize,
    /// Writes wait while this many bytes of the log are not covered by a durable checkpoint
    /// (0: never); see [`admission`].
    pub max_checkpoint_lag: usize,
    /// ... and lowered to what the views would replay within this long (zero: no target); see
    /// [`ReplayBudget`].
    pub target_recovery_time: Duration,
    /// What `now()` reads in temporal filters (see [`clock`]).
    pub clock: ClockSetting,
    /// Threads that run dataflows, each view's state sharded by key across them.
    pub workers: usize,
    /// Memory one ad-hoc query may use (DataFusion's memory pool per session); past it the
    /// query fails with 53200. 0: no limit.
    pub query_memory: usize,
}

impl EngineConfig {
    /// Default settings over `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            retention: Retention::default(),
            subscribe: Limits::default(),
            checkpoint_interval: Duration::from_secs(1),
            memory_budget: crate::types::system_memory() / 2,
            max_checkpoint_lag: DEFAULT_MAX_CHECKPOINT_LAG,
            target_recovery_time: DEFAULT_TARGET_RECOVERY_TIME,
            clock: ClockSetting::System,
            workers: default_workers(),
            query_memory: 0,
        }
    }
}

/// One dataflow worker per core the process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Clock-driven epochs (see [`clock`]) are at least this far apart: a temporal filter's rows
/// enter and leave within this long of their time when nothing else is written.
pub const MIN_TICK_INTERVAL: Duration = Duration::from_millis(10);

/// What [`Engine::append`] did.
#[derive(Default)]
pub struct Appended {
    /// The record to wait for (`None` when there was nothing to write).
    pub durable: Option<Durable>,
    /// The tables whose rows in the write were late (behind their watermark): not written.
    pub late: Vec<LateRows>,
}

/// Rows of one table refused by one write for being late.
#[derive(Debug, Clone)]
pub struct LateRows {
    pub table: String,
    pub rows: u64,
    /// The watermark they were behind (µs since 1970).
    pub watermark: Option<i64>,
    /// The table they were written to instead (`WITH (late_rows = 'keep')`).
    pub kept_in: Option<String>,
}

impl LateRows {
    /// The NOTICE a client gets.
    pub fn notice(&self) -> String {
        let rows = if self.rows == 1 { "row" } else { "rows" };
        let behind = self
            .watermark
            .map(|w| format!(" ({})", clock::format_micros(w)))
            .unwrap_or_default();
        let fate = match &self.kept_in {
            Some(t) => format!("written to \"{t}\" instead"),
            None => "not written (counted in eddy_catalog.watermarks)".into(),
        };
        format!(
            "{} {rows} of \"{}\" behind its watermark{behind}: {fate}",
            self.rows, self.table
        )
    }
}

/// See [`EngineConfig::max_checkpoint_lag`] (`--max-checkpoint-lag`).
pub const DEFAULT_MAX_CHECKPOINT_LAG: usize = 64 << 20;

/// See [`EngineConfig::target_recovery_time`] (`--target-recovery-time`).
pub const DEFAULT_TARGET_RECOVERY_TIME: Duration = Duration::from_secs(1);

/// Shared state of the running server. Cheap to share behind an `Arc`.
pub struct Engine {
    config: EngineConfig,
    state: Arc<StateStore>,
    log: Log,
    catalog: RwLock<Arc<Catalog>>,
    tables: RwLock<HashMap<ObjectId, table::TableStore>>,
    /// The watermarks of tables that have one; changed under the commit lock.
    watermarks: Mutex<HashMap<ObjectId, WatermarkTracker>>,
    /// Held while validating a commit and queueing its log record: LSN order = apply order.
    commit_lock: Mutex<()>,
    /// The dataflows of materialized views, and the read points (epochs) statements pin. Small
    /// table chunks are merged only up to the oldest pinned LSN, so merging never hides rows
    /// from a running statement.
    runtime: Arc<Runtime>,
    /// Shared by read-modify-write statements (UPDATE/DELETE outside a transaction block, and
    /// COMMIT), which run concurrently; exclusive for DDL, and for such a statement's last
    /// attempt after concurrent commits made it fail with 40001 (see `Session::execute`).
    write_lock: tokio::sync::RwLock<()>,
    /// Active subscriptions.
    subscriptions: Arc<Registry>,
    /// Ids for subscriptions' temporary dataflows, above every catalog id.
    next_temp_id: std::sync::atomic::AtomicU64,
    /// From `open` to `start`: what recovery found.
    recovered: Mutex<Option<Recovered>>,
    /// How the last start-up went.
    recovery: Mutex<RecoveryStats>,
    /// The log not yet covered by a durable checkpoint; writes wait while it is too large.
    lag: Arc<CheckpointLag>,
    /// Rows written per table since start, and their recent rate.
    throughput: Mutex<HashMap<ObjectId, Throughput>>,
    /// What `now()` is for temporal filters.
    clock: Arc<Clock>,
    /// The lag limit admission applies, from the flags and the measured replay rate.
    budget: Arc<ReplayBudget>,
    /// The running sources (see [`sources`]).
    sources: Mutex<HashMap<ObjectId, Arc<sources::SourceRun>>>,
    /// The connected sessions (see [`activity`]).
    backends: activity::Backends,
}

/// What `open` found, for `start`: the checkpoint, and the log records after it (applied to the
/// tables and replayed through the views one epoch each).
struct Recovered {
    checkpoint: Option<CheckpointMeta>,
    tail: Vec<LogRecord>,
    stale: Vec<ObjectId>,
}

/// How the last start-up went (see `eddy_catalog.recovery`).
#[derive(Debug, Clone, Default)]
pub struct RecoveryStats {
    /// The LSN the loaded checkpoint covers (0: none).
    pub checkpoint_lsn: u64,
    pub table_rows_loaded: u64,
    /// Log records after the checkpoint, replayed.
    pub log_records_replayed: u64,
    pub views_restored: u64,
    pub views_backfilled: u64,
    /// From opening the data directory to serving.
    pub total: Duration,
    /// Loading tables and reading the log.
    pub open: Duration,
}

impl Engine {
    /// Opens the data directory: loads the catalog and the last checkpoint's tables, and reads
    /// the log after it (applied by [`Engine::start`]).
    pub fn open(config: EngineConfig) -> Result<Arc<Engine>> {
        pg_functions::note_start();
        let started = std::time::Instant::now();
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating data directory {}", dir.display()), &e))?;
        let cache = StateStore::block_cache_bytes(config.memory_budget);
        let state = Arc::new(StateStore::open(&dir.join("state"), cache)?);
        let catalog = Catalog::load(&state)?;
        let checkpoint = state.checkpoint()?;
        let floor = Lsn(checkpoint.as_ref().map_or(0, |c| c.lsn));
        let mut tables: HashMap<ObjectId, table::TableStore> = HashMap::new();
        let mut rows = 0u64;
        // Tables whose rows spill are read from the checkpoint when scanned, not loaded.
        let snapshot = Arc::new(state.snapshot());
        for def in catalog.tables() {
            if spills(def) {
                let base = TableBase {
                    snapshot: snapshot.clone(),
                    lsn: floor,
                    rows: stored_row_count(&state, &snapshot, checkpoint.as_ref(), def.id)?,
                };
                tables.insert(def.id, new_table_store(&catalog, def, Some(base))?);
                continue;
            }
            let mut store = new_table_store(&catalog, def, None)?;
            let codec = TableCodec::new(def.schema(), &def.primary_key)?;
            for batch in codec.load(&state, def.id)? {
                rows += batch.weights.values().iter().sum::<i64>() as u64;
                store.load(&batch, floor)?;
            }
            tables.insert(def.id, store);
        }
        let mut watermarks = HashMap::new();
        for def in catalog.tables() {
            let stored = checkpoint
                .iter()
                .flat_map(|c| &c.table_watermarks)
                .find(|w| w.table == def.id)
                .copied();
            if let Some(tracker) = WatermarkTracker::new(def, stored)? {
                watermarks.insert(def.id, tracker);
            }
        }
        // State of objects no longer in the catalog (dropped after the checkpoint), or of views
        // the checkpoint does not cover, is stale.
        let restorable: Vec<ObjectId> = checkpoint
            .iter()
            .flat_map(|c| c.views.iter().map(|v| v.id))
            .collect();
        let stale = state
            .stored_objects()?
            .into_iter()
            .filter(|id| {
                let table = catalog.tables().any(|t| t.id == *id);
                let view = restorable.contains(id) && catalog.views().iter().any(|v| v.id == *id);
                !table && !view
            })
            .collect();
        let mut tail: Vec<LogRecord> = Vec::new();
        let runtime = Arc::new(Runtime::new(config.retention, config.workers));
        let notify = runtime.clone();
        let log = Log::open(
            &dir.join("log"),
            floor,
            |record: LogRecord| {
                tail.push(record);
                Ok(())
            },
            Box::new(move |lsn| notify.set_durable(lsn)),
        )?;
        tracing::info!(
            data_dir = %dir.display(),
            checkpoint_lsn = floor.0,
            tables = tables.len(),
            rows,
            log_records_after_checkpoint = tail.len(),
            last_lsn = %log.durable_lsn(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered tables"
        );
        let recovery = RecoveryStats {
            checkpoint_lsn: floor.0,
            table_rows_loaded: rows,
            log_records_replayed: tail.len() as u64,
            open: started.elapsed(),
            ..RecoveryStats::default()
        };
        let budget = Arc::new(ReplayBudget::new(
            config.max_checkpoint_lag,
            config.target_recovery_time,
        ));
        let lag = Arc::new(CheckpointLag::new(budget.clone()));
        let clock = Arc::new(Clock::new(config.clock));
        Ok(Arc::new(Engine {
            clock,
            config,
            state,
            log,
            catalog: RwLock::new(Arc::new(catalog)),
            tables: RwLock::new(tables),
            watermarks: Mutex::new(watermarks),
            commit_lock: Mutex::new(()),
            runtime,
            write_lock: tokio::sync::RwLock::new(()),
            subscriptions: Arc::new(Registry::default()),
            next_temp_id: std::sync::atomic::AtomicU64::new(TEMP_IDS),
            recovered: Mutex::new(Some(Recovered {
                checkpoint,
                tail,
                stale,
            })),
            recovery: Mutex::new(recovery),
            lag,
            throughput: Mutex::new(HashMap::new()),
            budget,
            sources: Mutex::new(HashMap::new()),
            backends: activity::Backends::default(),
        }))
    }

    /// Rows written to table `id` since the server started, and per second over the last
    /// [`Throughput::WINDOW`].
    pub fn table_throughput(&self, id: ObjectId) -> (u64, f64) {
        self.throughput
            .lock()
            .get(&id)
            .map_or((0, 0.0), |t| (t.total, t.rate(Instant::now())))
    }

    /// Memory one ad-hoc query may use.
    pub fn query_memory(&self) -> usize {
        self.config.query_memory
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Starts the dataflow runtime and the dataflows of the catalog's materialized views (in
    /// creation order, so a view's inputs are running before it): each restored from the
    /// checkpoint if it holds the view's state, else backfilled from the tables. Then replays
    /// the log records after the checkpoint through them, one epoch each, so that every epoch a
    /// subscriber may have seen before a restart is an epoch again.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        let started = std::time::Instant::now();
        let scanner = Arc::new(Scanner(Arc::downgrade(self)));
        let durable = self.log.durable_lsn();
        let Recovered {
            checkpoint,
            tail,
            stale,
        } = self
            .recovered
            .lock()
            .take()
            .ok_or_else(|| crate::internal!("the engine was started twice"))?;
        let from = Lsn(checkpoint.as_ref().map_or(0, |c| c.lsn));
        // Checkpoints written before the clock was stored: their own time is close.
        let clock = checkpoint
            .as_ref()
            .map_or(i64::MIN, |c| c.clock.unwrap_or(c.time_micros as i64));
        let (restorable, table_watermarks) = checkpoint
            .map(|c| (c.views, c.table_watermarks))
            .unwrap_or_default();
        let log_dir = self.config.data_dir.join("log");
        let lag = self.lag.clone();
        self.runtime.start(
            from,
            durable,
            scanner,
            CheckpointSetup {
                store: self.state.clone(),
                interval: self.config.checkpoint_interval,
                memory_budget: self.config.memory_budget,
                budget: self.budget.clone(),
                views: restorable.clone(),
                table_watermarks,
                clock,
                stale,
                on_checkpoint: Box::new(move |lsn| {
                    lag.checkpointed(lsn);
                    match crate::storage::log::remove_segments_through(&log_dir, lsn) {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(
                            segments = n,
                            through_lsn = lsn.0,
                            "deleted log segments covered by a checkpoint"
                        ),
                        Err(e) => tracing::warn!(error = %e, "could not delete old log segments"),
                    }
                }),
            },
        )?;
        let views = self.catalog().views();
        let mut session = Session::new(self.clone(), &HashMap::new(), 0)?;
        let (mut restored, mut backfilled) = (0u64, 0u64);
        for view in views.into_iter().filter(|v| v.materialized) {
            let view_started = std::time::Instant::now();
            // A view that cannot be rebuilt (its query fails over the current data, or no
            // longer plans) does not stop the server: it is kept as failed, its SELECTs report
            // why, and it can be dropped. Corrupt stored state does stop it.
            let outcome = match session.plan_view(&view).await {
                Ok((spec, schema)) => {
                    // With another number of workers the contents are restored and the
                    // operators' state is rebuilt (see `Worker::create`).
                    let from_checkpoint = restorable.iter().any(|v| {
                        v.id == view.id && v.fingerprint == spec.fingerprint(v.shards as usize)
                    });
                    self.runtime
                        .create_view(view.id, &view.name, spec, schema.clone(), None)
                        .await
                        .map(|()| from_checkpoint)
                        .map_err(|e| (e, schema))
                }
                Err(e) => Err((e, Arc::new(datafusion::arrow::datatypes::Schema::empty()))),
            };
            match outcome {
                Ok(from_checkpoint) => {
                    if from_checkpoint {
                        restored += 1;
                    } else {
                        backfilled += 1;
                    }
                    tracing::info!(
                        view = %view.name,
                        elapsed_ms = view_started.elapsed().as_millis() as u64,
                        "materialized view {}",
                        if from_checkpoint { "restored from the checkpoint" } else { "backfilled" }
                    )
                }
                Err((e, _)) if e.sqlstate == sqlstate::DATA_CORRUPTED => {
                    return Err(crate::err!(
                        sqlstate::DATA_CORRUPTED,
                        "restoring materialized view \"{}\": {}",
                        view.name,
                        e.message
                    ));
                }
                Err((e, schema)) => {
                    tracing::error!(view = %view.name, error = %e, "materialized view could not be rebuilt; it is kept as failed");
                    self.runtime.add_failed_view(view.id, &view.name, schema, e);
                }
            }
        }
        let replayed = tail.len();
        let replay_started = std::time::Instant::now();
        for record in tail {
            let watermarks = {
                let _commit = self.commit_lock.lock();
                replay(&mut self.tables.write(), &record, record.lsn)?;
                self.advance_watermarks(&record.changes, record.lsn, record.lsn)?
            };
            self.lag.record(
                record.lsn,
                crate::dataflow::runtime::changes_bytes(&record.changes),
            );
            let time = record.time.unwrap_or_else(SystemTime::now);
            let clock = record.clock.unwrap_or_else(|| clock::micros_of(time));
            self.runtime.replay(
                record.lsn,
                Arc::new(record.changes),
                time,
                clock,
                watermarks,
            );
        }
        if replayed > 0 {
            self.runtime
                .epochs()
                .wait_for(durable, Duration::from_secs(365 * 86400))
                .await?;
            tracing::info!(
                records = replayed,
                from_lsn = from.0,
                elapsed_ms = replay_started.elapsed().as_millis() as u64,
                "replayed the log after the checkpoint through the views"
            );
        }
        self.clock.catch_up(self.runtime.clock());
        self.spawn_ticker();
        self.start_sources();
        let mut recovery = self.recovery.lock();
        recovery.views_restored = restored;
        recovery.views_backfilled = backfilled;
        recovery.total = recovery.open + started.elapsed();
        tracing::info!(
            elapsed_ms = recovery.total.as_millis() as u64,
            views_restored = restored,
            views_backfilled = backfilled,
            "ready"
        );
        Ok(())
    }

    /// How the last start-up went.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery.lock().clone()
    }

    /// Bytes the state store occupies on disk.
    pub fn state_disk_bytes(&self) -> u64 {
        self.state.disk_bytes()
    }

    /// Reads the whole state store back against its checksums (see
    /// [`StateStore::verify`]): the bytes read, or the corruption found.
    pub fn verify_state(&self, stop: &std::sync::atomic::AtomicBool) -> Result<u64> {
        self.state.verify(stop)
    }

    /// Stops the log writer after it has synced everything queued, then the dataflows after
    /// they have run it and written a final checkpoint (so the next start replays nothing).
    pub fn close(&self) {
        self.log.close();
        self.runtime.stop();
        if let Err(e) = self.state.flush() {
            tracing::warn!(error = %e, "could not flush the state store at shutdown");
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn subscriptions(&self) -> &Arc<Registry> {
        &self.subscriptions
    }

    /// An id for a temporary dataflow (never a catalog id).
    fn temp_id(&self) -> ObjectId {
        self.next_temp_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A consistent snapshot of the catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    /// The connected sessions and what they are doing.
    pub fn backends(&self) -> &activity::Backends {
        &self.backends
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.log.durable_lsn()
    }

    /// Takes a snapshot at the durable LSN for a statement that reads only tables; it stays
    /// readable (no merge goes past it) until the returned pin is dropped.
    pub fn pin_snapshot(&self) -> ReadPin {
        self.runtime.epochs().pin_lsn(self.log.durable_lsn())
    }

    /// Takes a read point for a statement that reads views: the first committed epoch that
    /// covers everything durable when the statement started (so a session reads its own
    /// writes), waiting up to `timeout` for the dataflows to get there. Tables are read at the
    /// same point, so tables and views agree.
    pub async fn pin_views(&self, timeout: std::time::Duration) -> Result<ReadPin> {
        let target = self.log.durable_lsn();
        self.runtime.epochs().wait_for(target, timeout).await?;
        Ok(self.runtime.epochs().pin_committed())
    }

    /// The oldest LSN any running statement reads at (never past the committed epoch): rows
    /// inserted and deleted at or below it look the same to every reader.
    fn read_horizon(&self) -> Lsn {
        self.runtime.epochs().lsn_horizon()
    }

    /// A materialized view's contents and status.
    pub fn view_state(&self, id: ObjectId) -> Option<Arc<ViewState>> {
        self.runtime.view(id)
    }

    /// The rows of table `id` as of `snapshot`.
    pub fn scan(
        &self,
        id: ObjectId,
        snapshot: Snapshot,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        let tables = self.tables.read();
        let table = tables
            .get(&id)
            .ok_or_else(|| crate::err!(sqlstate::UNDEFINED_TABLE, "table was dropped"))?;
        // A commit is applied under this lock before its LSN can be read as durable, so every
        // record up to a durable LSN read earlier is in the table by now.
        table.scan(snapshot)
    }

    /// The rows of table `id` as of `snapshot` whose primary key is one of `keys` (see
    /// [`crate::storage::table::TableStore::lookup`]); `None` when only a scan can tell.
    pub fn lookup(
        &self,
        id: ObjectId,
        keys: &[datafusion::arrow::array::ArrayRef],
        snapshot: Snapshot,
    ) -> Result<Option<Vec<datafusion::arrow::array::RecordBatch>>> {
        let tables = self.tables.read();
        let table = tables
            .get(&id)
            .ok_or_else(|| crate::err!(sqlstate::UNDEFINED_TABLE, "table was dropped"))?;
        table.lookup(keys, snapshot)
    }

    /// At least the rows of table `id` as of `snapshot` in a range of its first primary-key
    /// column (see [`crate::storage::table::TableStore::scan_key_range`]); `None` when only a
    /// scan can tell.
    pub fn scan_key_range(
        &self,
        id: ObjectId,
        snapshot: Snapshot,
        low: Option<&datafusion::arrow::array::ArrayRef>,
        high: Option<(&datafusion::arrow::array::ArrayRef, bool)>,
    ) -> Result<Option<Vec<datafusion::arrow::array::RecordBatch>>> {
        let tables = self.tables.read();
        let table = tables
            .get(&id)
            .ok_or_else(|| crate::err!(sqlstate::UNDEFINED_TABLE, "table was dropped"))?;
        table.scan_key_range(snapshot, low, high)
    }

    /// For each row of `rows`, how many live rows of table `id` share its primary key.
    pub fn count_keys(
        &self,
        id: ObjectId,
        rows: &datafusion::arrow::array::RecordBatch,
    ) -> Result<Vec<usize>> {
        let tables = self.tables.read();
        let table = tables
            .get(&id)
            .ok_or_else(|| crate::err!(sqlstate::UNDEFINED_TABLE, "table was dropped"))?;
        table.count_keys(rows)
    }

    /// Live rows of a table, durable or not (for statistics such as pg_class.reltuples).
    pub fn row_count(&self, id: ObjectId) -> usize {
        self.tables
            .read()
            .get(&id)
            .map(|t| t.live_rows())
            .unwrap_or(0)
    }

    /// Bytes held by the state store's block cache and write buffers.
    pub fn store_memory(&self) -> (usize, usize) {
        self.state.memory_usage()
    }

    /// Rows of all tables held in memory, and rows of APPEND ONLY tables read from the state
    /// store instead (those a durable checkpoint covers).
    pub fn table_rows(&self) -> (usize, usize) {
        let tables = self.tables.read();
        let in_memory = tables.values().map(|t| t.rows_in_memory()).sum();
        let all: usize = tables.values().map(|t| t.live_rows()).sum();
        (in_memory, all - in_memory)
    }

    /// Makes `changes` durable and visible, atomically. Returns once the log record is synced.
    pub async fn commit(&self, changes: Vec<(ObjectId, ZBatch)>) -> Result<Lsn> {
        self.admit().await?;
        match self.append(changes)?.durable {
            Some(durable) => durable.wait().await,
            None => Ok(self.log.durable_lsn()),
        }
    }

    /// Waits while too much of the log is not covered by a durable checkpoint (see
    /// [`admission`]); every write calls it first, holding no lock.
    pub async fn admit(&self) -> Result<()> {
        self.lag
            .admit(|| self.runtime.checkpoint_stats().last_error)
            .await
    }

    /// What write admission did since start.
    pub fn admission_stats(&self) -> AdmissionStats {
        self.lag.stats()
    }

    /// The first half of [`Engine::commit`]: validates and applies `changes` and queues their
    /// record to the log, without waiting for it to be durable (the caller waits on the
    /// result; `None` when there is nothing to write). Applied changes are visible at once to
    /// readers of the latest rows (UPDATE and DELETE), which can go on while the log syncs:
    /// their own records come later in the log, so they are never durable without these.
    pub fn append(&self, changes: Vec<(ObjectId, ZBatch)>) -> Result<Appended> {
        let mut changes: Vec<(ObjectId, ZBatch)> = changes
            .into_iter()
            .filter(|(_, z)| z.num_rows() > 0)
            .collect();
        if changes.is_empty() {
            return Ok(Appended::default());
        }
        let late_rows;
        let time = SystemTime::now();
        let logged_clock = self.clock.logged();
        let clock = logged_clock.unwrap_or_else(|| clock::micros_of(time));
        let mut body = encode_body(&changes, time, logged_clock)?;
        let mut bytes = crate::dataflow::runtime::changes_bytes(&changes);
        let durable = {
            let _commit = self.commit_lock.lock();
            let mut tables = self.tables.write();
            if self.log.failure().is_some() {
                // A write failed (disk full?): undo what the failed records changed and try
                // again; if the disk is still full this append fails in turn.
                self.undo_failed_writes(&mut tables)?;
            }
            let late = self.drop_late_rows(&mut changes)?;
            late_rows = self.describe_late_rows(&late);
            if !late.is_empty() {
                // The record says how many rows it refused, so the counts are as durable as
                // the rows (a write of late rows only still writes a record).
                changes.push((watermark::LATE_ROWS, watermark::late_rows_change(&late)?));
                body = encode_body(&changes, time, logged_clock)?;
                bytes = crate::dataflow::runtime::changes_bytes(&changes);
            }
            let mut plans = Vec::with_capacity(changes.len());
            for (id, change) in &changes {
                if *id == watermark::LATE_ROWS {
                    continue;
                }
                let table = tables.get_mut(id).ok_or_else(|| {
                    crate::err!(
                        sqlstate::UNDEFINED_TABLE,
                        "a table written by this transaction was dropped concurrently"
                    )
                })?;
                plans.push((*id, table.plan(change)?));
            }
            let durable = self.log.append(body)?;
            self.lag.record(durable.lsn, bytes);
            {
                let now = Instant::now();
                let mut throughput = self.throughput.lock();
                for (id, change) in &changes {
                    if *id != watermark::LATE_ROWS {
                        throughput
                            .entry(*id)
                            .or_default()
                            .record(now, change.num_rows() as u64);
                    }
                }
            }
            let horizon = self.read_horizon();
            for (id, plan) in plans {
                if let Some(table) = tables.get_mut(&id) {
                    table.commit(plan, durable.lsn, horizon)?;
                }
            }
            let watermarks = self.advance_watermarks(&changes, durable.lsn, horizon)?;
            self.runtime
                .push(durable.lsn, Arc::new(changes), time, clock, watermarks);
            durable
        };
        Ok(Appended {
            durable: Some(durable),
            late: late_rows,
        })
    }

    /// Names the tables whose late rows `late` counts, with their watermarks (before the
    /// write) and where the rows were kept.
    fn describe_late_rows(&self, late: &HashMap<ObjectId, u64>) -> Vec<LateRows> {
        if late.is_empty() {
            return Vec::new();
        }
        let catalog = self.catalog();
        let watermarks = self.watermarks.lock();
        let mut out: Vec<LateRows> = late
            .iter()
            .map(|(id, n)| {
                let def = catalog.table_by_id(*id);
                LateRows {
                    table: def.map_or_else(|| "?".into(), |d| d.name.clone()),
                    rows: *n,
                    watermark: watermarks.get(id).and_then(|t| t.current().micros),
                    kept_in: def
                        .and_then(|d| d.late_rows_table)
                        .and_then(|t| catalog.table_by_id(t))
                        .map(|t| t.name.clone()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.table.cmp(&b.table));
        out
    }

    /// Takes the rows that are late (behind their table's watermark) out of `changes` and
    /// returns how many each table had; changes left empty are removed. The caller holds the
    /// commit lock.
    fn drop_late_rows(
        &self,
        changes: &mut Vec<(ObjectId, ZBatch)>,
    ) -> Result<HashMap<ObjectId, u64>> {
        let mut late: HashMap<ObjectId, u64> = HashMap::new();
        let watermarks = self.watermarks.lock();
        if watermarks.is_empty() {
            return Ok(late);
        }
        let catalog = self.catalog();
        let mut kept: Vec<(ObjectId, ZBatch)> = Vec::new();
        for (id, change) in changes.iter_mut() {
            let Some(tracker) = watermarks.get(id) else {
                continue;
            };
            let def = catalog.table_by_id(*id);
            let name = def.map_or("?", |t| t.name.as_str());
            if let Some((on_time, late_rows)) = tracker.split(name, change)? {
                *change = on_time;
                // Rows, not distinct rows: three equal late rows are a row of weight 3.
                let rows: i64 = late_rows.weights.values().iter().sum();
                *late.entry(*id).or_default() += rows.max(0) as u64;
                // Into its late-rows table, while that exists.
                if let Some(to) = def.and_then(|d| d.late_rows_table)
                    && catalog.table_by_id(to).is_some()
                {
                    kept.push((to, late_rows));
                }
            }
        }
        if !late.is_empty() {
            changes.retain(|(_, z)| z.num_rows() > 0);
            changes.extend(kept);
        }
        Ok(late)
    }

    /// Moves the watermarks of the tables that `changes` (a record at `lsn`, on-time rows
    /// only) wrote, adds the late rows it refused, and returns the new values of the tables it
    /// touched. The caller holds the commit lock.
    fn advance_watermarks(
        &self,
        changes: &[(ObjectId, ZBatch)],
        lsn: Lsn,
        horizon: Lsn,
    ) -> Result<Vec<TableWatermark>> {
        let mut watermarks = self.watermarks.lock();
        if watermarks.is_empty() {
            return Ok(Vec::new());
        }
        let mut next: Vec<TableWatermark> = Vec::new();
        let slot = |id: ObjectId, next: &mut Vec<TableWatermark>| {
            let tracker = watermarks.get(&id)?;
            Some(match next.iter().position(|w| w.table == id) {
                Some(i) => i,
                None => {
                    next.push(tracker.current());
                    next.len() - 1
                }
            })
        };
        for (id, change) in changes {
            if *id == watermark::LATE_ROWS {
                for (table, n) in watermark::late_rows_of(change)? {
                    if let Some(i) = slot(table, &mut next) {
                        next[i].late_rows += n;
                    }
                }
            } else if let Some(i) = slot(*id, &mut next) {
                let tracker = &watermarks[id];
                next[i].micros = tracker.advanced(next[i].micros, change)?;
            }
        }
        for w in &next {
            if let Some(tracker) = watermarks.get_mut(&w.table) {
                tracker.record(lsn, *w, horizon);
            }
        }
        Ok(next)
    }

    /// Appends a record with no changes at the clock's time and waits until it is durable:
    /// the epoch it makes lets temporal filters move on when nothing is written.
    pub async fn tick(&self) -> Result<Lsn> {
        let time = SystemTime::now();
        let durable = {
            let _commit = self.commit_lock.lock();
            if self.log.failure().is_some() {
                self.undo_failed_writes(&mut self.tables.write())?;
            }
            // Read under the commit lock: a manual clock advanced before this is in it.
            let logged_clock = self.clock.logged();
            let clock = logged_clock.unwrap_or_else(|| clock::micros_of(time));
            let durable = self.log.append(encode_body(&[], time, logged_clock)?)?;
            self.lag.record(durable.lsn, 0);
            self.runtime
                .push(durable.lsn, Arc::new(Vec::new()), time, clock, Vec::new());
            durable
        };
        durable.wait().await
    }

    /// Before a dataflow with a temporal filter starts on the system clock: an epoch now, so
    /// that it is backfilled at the current time rather than at the last write's.
    pub async fn tick_for(&self, spec: &DataflowSpec) -> Result<()> {
        let temporal = spec
            .nodes
            .iter()
            .any(|n| matches!(n.kind, crate::dataflow::spec::NodeKind::TemporalFilter(_)));
        if temporal && !self.clock.is_manual() {
            self.tick().await?;
        }
        Ok(())
    }

    /// `ADVANCE CLOCK`: moves a manual clock to `to` (µs since 1970) and makes an epoch there.
    pub async fn advance_clock(&self, to: i64) -> Result<Lsn> {
        self.clock.advance_to(to)?;
        self.tick().await
    }

    /// The clock now (µs since 1970).
    pub fn clock_now(&self) -> i64 {
        self.clock.now()
    }

    /// The clock, when it is manual (ad-hoc `now()` reads it then).
    pub fn manual_clock(&self) -> Option<Arc<Clock>> {
        self.clock.is_manual().then(|| self.clock.clone())
    }

    /// With the system clock: makes an epoch whenever a view waits for a time that no write
    /// reached (a temporal filter's row enters or leaves), at most every
    /// [`MIN_TICK_INTERVAL`]. A manual clock makes its epochs in [`Engine::advance_clock`].
    fn spawn_ticker(self: &Arc<Self>) {
        if self.clock.is_manual() {
            return;
        }
        let engine = Arc::downgrade(self);
        let mut wakeups = self.runtime.wakeups();
        tokio::spawn(async move {
            let mut last_tick = tokio::time::Instant::now();
            loop {
                let Some(at) = *wakeups.borrow_and_update() else {
                    if wakeups.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                let until_due = (at - clock::micros_of(SystemTime::now())).max(0) as u64;
                let due = (tokio::time::Instant::now() + Duration::from_micros(until_due))
                    .max(last_tick + MIN_TICK_INTERVAL);
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    changed = wakeups.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                if engine.runtime.clock() >= at {
                    // A write's epoch got there first.
                    continue;
                }
                last_tick = tokio::time::Instant::now();
                if let Err(e) = engine.tick().await {
                    if engine.runtime.stopped() {
                        // Shut down.
                        return;
                    }
                    tracing::warn!(error = %e, "could not write a clock tick");
                    drop(engine);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                drop(engine);
                // Let the runtime run the tick's epoch before looking again.
                let _ = tokio::time::timeout(MIN_TICK_INTERVAL, wakeups.changed()).await;
            }
        });
    }

    /// The current watermark of every table that has one.
    pub fn table_watermarks(&self) -> Vec<TableWatermark> {
        self.watermarks
            .lock()
            .values()
            .map(|t| t.current())
            .collect()
    }

    /// After a failed log write: rolls the tables and the dataflow queue back to the durable
    /// LSN and lets the log take appends again. The caller holds the commit lock.
    fn undo_failed_writes(&self, tables: &mut HashMap<ObjectId, TableStore>) -> Result<()> {
        self.log.reset_after_failure()?;
        let durable = self.log.durable_lsn();
        for table in tables.values_mut() {
            table.rollback_after(durable)?;
        }
        for tracker in self.watermarks.lock().values_mut() {
            tracker.rollback_after(durable);
        }
        self.runtime.discard_after(durable);
        self.lag.discard_after(durable);
        Ok(())
    }

    /// Creates a table; with `keep_late_rows`, also the table its late rows go to
    /// (`<name>_late`: the same columns, APPEND ONLY).
    async fn create_table(
        &self,
        mut def: TableDef,
        if_not_exists: bool,
        keep_late_rows: bool,
    ) -> Result<bool> {
        let _w = self.write_lock.write().await;
        let _commit = self.commit_lock.lock();
        let mut catalog = (**self.catalog.read()).clone();
        if !name_is_free(&catalog, &def.name, if_not_exists)? {
            return Ok(false);
        }
        if keep_late_rows {
            let late = TableDef {
                id: 0,
                name: format!("{}_late", def.name),
                columns: def.columns.clone(),
                primary_key: Vec::new(),
                append_only: true,
                watermark: None,
                late_rows_table: None,
                source: None,
            };
            name_is_free(&catalog, &late.name, false)?;
            let late = catalog.create_table(&self.state, late)?;
            self.tables
                .write()
                .insert(late.id, new_table_store(&catalog, &late, None)?);
            def.late_rows_table = Some(late.id);
        }
        let def = catalog.create_table(&self.state, def)?;
        self.add_table_state(&catalog, &def)?;
        *self.catalog.write() = Arc::new(catalog);
        Ok(true)
    }

    /// Adds the rows (none yet) and watermark tracker of a new table. The caller holds the
    /// commit lock; `catalog` has it.
    fn add_table_state(&self, catalog: &Catalog, def: &TableDef) -> Result<()> {
        let tracker = WatermarkTracker::new(def, None)?;
        self.tables
            .write()
            .insert(def.id, new_table_store(catalog, def, None)?);
        if let Some(tracker) = tracker {
            self.watermarks.lock().insert(def.id, tracker);
        }
        Ok(())
    }

    async fn drop_table(&self, name: &str, cascade: bool) -> Result<()> {
        let _w = self.write_lock.write().await;
        let id = self.catalog().table(name).map(|t| t.id).ok_or_else(|| {
            crate::err!(sqlstate::UNDEFINED_TABLE, "table \"{name}\" does not exist")
        })?;
        if let Some(source) = self
            .catalog()
            .table(name)
            .and_then(|t| t.source)
            .and_then(|s| self.catalog().source_by_id(s).cloned())
        {
            return Err(crate::err!(
                sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                "cannot drop table {name} because source {} feeds it",
                source.name
            )
            .with_hint(format!(
                "DROP SOURCE {} drops the source with its tables.",
                source.name
            )));
        }
        // A late-rows table goes with the table that keeps its late rows there, not alone.
        let catalog = self.catalog();
        if let Some(owner) = catalog
            .tables()
            .into_iter()
            .find(|t| t.late_rows_table == Some(id))
        {
            return Err(crate::err!(
                sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                "cannot drop table {name} because table {} keeps its late rows in it",
                owner.name
            )
            .with_hint(format!("DROP TABLE {} drops both.", owner.name)));
        }
        drop(catalog);
        // Its late-rows table goes with it.
        let late = self
            .catalog()
            .table(name)
            .and_then(|t| t.late_rows_table)
            .and_then(|l| self.catalog().table_by_id(l).cloned());
        self.drop_dependents(id, "table", name, cascade).await?;
        if let Some(late) = &late {
            self.drop_dependents(late.id, "table", &late.name, cascade)
                .await?;
        }
        self.remove_tables(|catalog| {
            let mut dropped = vec![catalog.drop_table(&self.state, name)?];
            if let Some(late) = &late {
                dropped.push(catalog.drop_table(&self.state, &late.name)?);
            }
            Ok(dropped)
        })
        .await
    }

    /// Removes from the catalog (with `remove`, which persists it) the tables it returns, then
    /// their rows, watermarks and dataflow state. The caller holds the write lock, and no view
    /// reads them any more.
    async fn remove_tables(
        &self,
        remove: impl FnOnce(&mut Catalog) -> Result<Vec<Arc<TableDef>>>,
    ) -> Result<()> {
        let dropped = {
            let _commit = self.commit_lock.lock();
            let mut catalog = (**self.catalog.read()).clone();
            let dropped = remove(&mut catalog)?;
            for def in &dropped {
                self.tables.write().remove(&def.id);
                self.watermarks.lock().remove(&def.id);
            }
            *self.catalog.write() = Arc::new(catalog);
            dropped
        };
        for def in dropped {
            self.runtime.drop_object(def.id, &def.name).await;
        }
        Ok(())
    }

    /// Fails with 2BP01 if views read object `id`, unless `cascade`: then drops them (latest
    /// first). The caller holds the write lock.
    async fn drop_dependents(
        &self,
        id: ObjectId,
        kind: &str,
        name: &str,
        cascade: bool,
    ) -> Result<()> {
        let catalog = self.catalog();
        let dependents = catalog.dependents_transitive(id);
        if dependents.is_empty() {
            return Ok(());
        }
        if !cascade {
            let detail: Vec<String> = catalog
                .dependents(id)
                .iter()
                .map(|v| format!("{} {} depends on {kind} {name}", v.kind(), v.name))
                .collect();
            return Err(crate::err!(
                sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                "cannot drop {kind} {name} because other objects depend on it"
            )
            .with_detail(detail.join("\n"))
            .with_hint("Use DROP ... CASCADE to drop the dependent objects too."));
        }
        for view in dependents {
            self.remove_view(&view).await?;
        }
        Ok(())
    }

    async fn remove_view(&self, view: &ViewDef) -> Result<()> {
        let mut catalog = (**self.catalog.read()).clone();
        catalog.drop_view(&self.state, &view.name)?;
        *self.catalog.write() = Arc::new(catalog);
        if view.materialized {
            self.runtime.drop_object(view.id, &view.name).await;
        }
        Ok(())
    }

    /// Creates a view. A materialized one is backfilled before this returns; if the backfill
    /// fails (e.g. division by zero over existing rows) nothing is created. While it runs,
    /// `progress` (if any) receives a NOTICE on how far it got at each of its intervals.
    async fn create_view(
        &self,
        mut def: ViewDef,
        dataflow: Option<(DataflowSpec, datafusion::arrow::datatypes::SchemaRef)>,
        if_not_exists: bool,
        progress: Option<BackfillNotices>,
    ) -> Result<bool> {
        let _w = self.write_lock.write().await;
        let mut catalog = (**self.catalog.read()).clone();
        if !name_is_free(&catalog, &def.name, if_not_exists)? {
            return Ok(false);
        }
        def.id = catalog.reserve_id(&self.state)?;
        *self.catalog.write() = Arc::new(catalog.clone());
        if let Some((spec, schema)) = dataflow {
            self.tick_for(&spec).await?;
            let mut report = |b: &crate::dataflow::runtime::Backfill| {
                if let Some(p) = &progress {
                    let _ = p.notices.send(backfill_notice(b));
                }
            };
            let report = progress.as_ref().map(|p| {
                (
                    p.interval,
                    &mut report as &mut crate::dataflow::runtime::BackfillReport<'_>,
                )
            });
            self.runtime
                .create_view(def.id, &def.name, spec, schema, report)
                .await?;
        }
        catalog.create_view(&self.state, def)?;
        *self.catalog.write() = Arc::new(catalog);
        Ok(true)
    }

    async fn drop_view(&self, name: &str, materialized: bool, cascade: bool) -> Result<()> {
        let _w = self.write_lock.write().await;
        let kind = if materialized {
            "materialized view"
        } else {
            "view"
        };
        let view = self
            .catalog()
            .view(name)
            .filter(|v| v.materialized == materialized)
            .cloned()
            .ok_or_else(|| {
                crate::err!(
                    sqlstate::UNDEFINED_TABLE,
                    "{kind} \"{name}\" does not exist"
                )
            })?;
        self.drop_dependents(view.id, kind, name, cascade).await?;
        self.remove_view(&view).await
    }
}

/// Where `CREATE MATERIALIZED VIEW` reports its backfill's progress while it runs: a NOTICE
/// every `interval`.
pub struct BackfillNotices {
    pub interval: std::time::Duration,
    pub notices: tokio::sync::mpsc::UnboundedSender<String>,
}

fn backfill_notice(b: &crate::dataflow::runtime::Backfill) -> String {
    let (done, total) = b.progress();
    let elapsed = b.elapsed().as_secs_f64();
    if total == 0 {
        return format!(
            "materialized view \"{}\": reading its inputs ({elapsed:.1} s)",
            b.view
        );
    }
    // Rounded down: 100% only once every row went through.
    let percent = done * 100 / total;
    format!(
        "materialized view \"{}\": backfilled {done} of {total} input rows ({percent}%, {elapsed:.1} s)",
        b.view
    )
}

/// Whether table `def`'s checkpointed rows move to the state store: APPEND ONLY tables, and
/// tables with a primary key (a deleted stored row is named by its key). A table without either
/// is a multiset with deletes, kept in memory.
fn spills(def: &TableDef) -> bool {
    def.append_only || !def.primary_key.is_empty()
}

/// The rows of table `def`: in memory, except for tables that spill, whose checkpointed rows
/// move to the state store (`base`: those of the checkpoint at start-up) — or, for a source's
/// table, are made anew by its connector when read.
fn new_table_store(
    catalog: &Catalog,
    def: &TableDef,
    base: Option<TableBase>,
) -> Result<TableStore> {
    if !spills(def) {
        return Ok(TableStore::new(&def.name, def.schema(), &def.primary_key));
    }
    let mut codec = TableCodec::new(def.schema(), &def.primary_key)?;
    let generated = generated_rows(catalog, def);
    if generated.is_some() {
        codec = codec.counts_only();
    }
    let spill = Spill {
        prefix: part_prefix(def.id, TABLE_ROWS),
        codec: Arc::new(codec),
        generated,
    };
    Ok(TableStore::spilling(
        &def.name,
        def.schema(),
        &def.primary_key,
        spill,
        base,
    ))
}

/// For a table of a source: its first `n` rows, made anew by the source's connector.
fn generated_rows(catalog: &Catalog, def: &TableDef) -> Option<table::GeneratedRows> {
    let source = catalog.source_by_id(def.source?)?;
    let index = source.tables.iter().position(|t| *t == def.id)?;
    let crate::catalog::Connector::Nexmark(options) = &source.connector;
    let generator = crate::connectors::nexmark::Generator::new(options);
    Some(Arc::new(move |n| generator.table_rows(index, n as u64)))
}

/// How many rows the last checkpoint holds for table `id`, as the checkpoints count them
/// (`StoreSnapshot::row_count`). A data directory from before the count has the rows counted
/// once here, and the count stored with the checkpoint it belongs to (a no-op for readers of
/// that checkpoint, which never take the empty key for a row).
fn stored_row_count(
    state: &Arc<StateStore>,
    snapshot: &StoreSnapshot,
    checkpoint: Option<&CheckpointMeta>,
    id: ObjectId,
) -> Result<usize> {
    let prefix = part_prefix(id, TABLE_ROWS);
    if let Some(n) = snapshot.row_count(&prefix)? {
        return Ok(n);
    }
    let mut n = 0;
    snapshot.scan_counts(&prefix, &mut |_, c| {
        n += c as usize;
        Ok(())
    })?;
    if let Some(meta) = checkpoint {
        let mut batch = state.batch();
        batch.add(&prefix, &[], n as i64);
        state.write_checkpoint(batch, meta)?;
    }
    Ok(n)
}

/// Whether `name` is free for a new table or view: `Ok(false)` if taken and `if_not_exists`,
/// else 42P07 if taken.
fn name_is_free(catalog: &Catalog, name: &str, if_not_exists: bool) -> Result<bool> {
    if !catalog.relation_exists(name) {
        return Ok(true);
    }
    if if_not_exists {
        return Ok(false);
    }
    Err(crate::err!(
        sqlstate::DUPLICATE_TABLE,
        "relation \"{name}\" already exists"
    ))
}

/// Backfill reads tables through this (weak, so the runtime thread does not keep the engine
/// alive).
struct Scanner(std::sync::Weak<Engine>);

impl TableScanner for Scanner {
    fn scan_table(
        &self,
        id: ObjectId,
        lsn: Lsn,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        let engine = self
            .0
            .upgrade()
            .ok_or_else(|| crate::err!(sqlstate::QUERY_CANCELED, "the server is shutting down"))?;
        engine.scan(id, Snapshot::At(lsn))
    }

    fn rebase(&self, snapshot: &Arc<StoreSnapshot>, lsn: Lsn) -> Result<()> {
        let Some(engine) = self.0.upgrade() else {
            return Ok(());
        };
        // Statements pin their snapshots at the committed epoch or above, so once the horizon
        // has reached `lsn` no statement can read below it any more.
        if engine.read_horizon() < lsn {
            return Ok(());
        }
        let mut tables = engine.tables.write();
        for table in tables.values_mut().filter(|t| t.spills()) {
            table.rebase(snapshot.clone(), lsn)?;
        }
        Ok(())
    }

    fn tables(
        &self,
    ) -> Vec<(
        ObjectId,
        datafusion::arrow::datatypes::SchemaRef,
        Vec<usize>,
    )> {
        let Some(engine) = self.0.upgrade() else {
            return Vec::new();
        };
        engine
            .catalog()
            .tables()
            .map(|t| (t.id, t.schema(), t.primary_key.clone()))
            .collect()
    }

    fn is_generated(&self, id: ObjectId) -> bool {
        self.0.upgrade().is_some_and(|e| {
            e.catalog()
                .table_by_id(id)
                .is_some_and(|t| t.source.is_some())
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// Applies one log record during start-up (tables may merge history up to `horizon`). Records
/// of dropped tables are skipped.
fn replay(
    tables: &mut HashMap<ObjectId, table::TableStore>,
    record: &LogRecord,
    horizon: Lsn,
) -> Result<()> {
    let mut plans = Vec::new();
    for (id, change) in &record.changes {
        if let Some(table) = tables.get_mut(id) {
            let plan = table.plan_replay(change).map_err(|e| {
                crate::err!(
                    sqlstate::DATA_CORRUPTED,
                    "replaying log record {} failed: {}",
                    record.lsn,
                    e.message
                )
            })?;
            plans.push((*id, plan));
        }
    }
    for (id, plan) in plans {
        if let Some(table) = tables.get_mut(&id) {
            table.commit(plan, record.lsn, horizon)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ColumnDef;
    use crate::types::SqlType;
    use datafusion::arrow::array::{Int64Array, RecordBatch};

    fn one_row(def: &TableDef, v: i64) -> ZBatch {
        let batch =
            RecordBatch::try_new(def.schema(), vec![Arc::new(Int64Array::from(vec![v]))]).unwrap();
        ZBatch::uniform(batch, 1)
    }

    #[tokio::test]
    async fn a_running_statements_snapshot_survives_later_commits_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        engine.start().await.unwrap();
        let def = TableDef {
            id: 0,
            name: "t".into(),
            columns: vec![ColumnDef {
                name: "v".into(),
                sql_type: SqlType::BigInt,
                not_null: false,
            }],
            primary_key: vec![],
            // Not APPEND ONLY: those tables do not merge chunks (each leaves memory once a
            // checkpoint covers it).
            append_only: false,
            watermark: None,
            late_rows_table: None,
            source: None,
        };
        engine.create_table(def, false, false).await.unwrap();
        let def = engine.catalog().table("t").unwrap().clone();
        let count = |snapshot| -> usize {
            engine
                .scan(def.id, snapshot)
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum()
        };
        for v in 0..10 {
            engine
                .commit(vec![(def.id, one_row(&def, v))])
                .await
                .unwrap();
        }
        let pin = engine.pin_snapshot();
        for v in 10..200 {
            engine
                .commit(vec![(def.id, one_row(&def, v))])
                .await
                .unwrap();
        }
        assert_eq!(count(Snapshot::At(pin.lsn)), 10);
        drop(pin);
        engine
            .commit(vec![(def.id, one_row(&def, 200))])
            .await
            .unwrap();
        assert_eq!(count(Snapshot::At(engine.durable_lsn())), 201);
        assert!(
            engine.tables.read()[&def.id].chunk_count() < 100,
            "small chunks were merged"
        );
    }
}
