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

mod convert;
mod dml;
mod pg_catalog;
mod provider;
mod session;
mod subscribe;
mod system;
mod views;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

use crate::catalog::{Catalog, TableDef, ViewDef};
use crate::dataflow::{DataflowSpec, ReadPin, Runtime, TableScanner, ViewState};
use crate::error::{Error, Result, sqlstate};
use crate::storage::log::{Log, LogRecord, encode_body};
use crate::storage::state::StateStore;
use crate::subscribe::{Limits, Registry, Retention};
use crate::types::{Lsn, ObjectId, ZBatch};

pub use crate::storage::table::Snapshot;
use crate::storage::table::{self, TableStore};
pub use session::{CLIENT_ADDRESS, CopyFormat, CopyIn, Output, Prepared, Session};

/// Temporary dataflows (subscriptions to queries) get ids from here up.
const TEMP_IDS: ObjectId = 1 << 62;

/// Engine settings (from the command line).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// How much of each view's change history is kept for `SUBSCRIBE … AS OF`.
    pub retention: Retention,
    /// Progress interval and the slow-subscriber bound.
    pub subscribe: Limits,
}

impl EngineConfig {
    /// Default settings over `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            retention: Retention::default(),
            subscribe: Limits::default(),
        }
    }
}

/// Shared state of the running server. Cheap to share behind an `Arc`.
pub struct Engine {
    config: EngineConfig,
    state: StateStore,
    log: Log,
    catalog: RwLock<Arc<Catalog>>,
    tables: RwLock<HashMap<ObjectId, table::TableStore>>,
    /// Held while validating a commit and queueing its log record: LSN order = apply order.
    commit_lock: Mutex<()>,
    /// The dataflows of materialized views, and the read points (epochs) statements pin. Small
    /// table chunks are merged only up to the oldest pinned LSN, so merging never hides rows
    /// from a running statement.
    runtime: Arc<Runtime>,
    /// Serialises read-modify-write statements (UPDATE/DELETE outside a transaction, DDL) so
    /// they do not fail each other with 40001.
    write_lock: tokio::sync::Mutex<()>,
    /// Active subscriptions.
    subscriptions: Arc<Registry>,
    /// Ids for subscriptions' temporary dataflows, above every catalog id.
    next_temp_id: std::sync::atomic::AtomicU64,
    /// From `open` to `start`: the LSN the views start at, and the log records after it (those
    /// within the retention window), replayed through the views one epoch each.
    tail: Mutex<Option<(Lsn, Vec<TailRecord>)>>,
}

/// A log record within the retention window, kept from recovery until `start` applies it to
/// the tables and replays it through the views.
struct TailRecord {
    time: SystemTime,
    record: LogRecord,
}

impl Engine {
    /// Opens the data directory: loads the catalog, replays the log into the tables.
    pub fn open(config: EngineConfig) -> Result<Arc<Engine>> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating data directory {}", dir.display()), &e))?;
        let state = StateStore::open(&dir.join("state"))?;
        let catalog = Catalog::load(&state)?;
        let mut tables: HashMap<ObjectId, table::TableStore> = catalog
            .tables()
            .map(|t| (t.id, new_table_store(t)))
            .collect();
        let started = std::time::Instant::now();
        let mut records = 0u64;
        // Records committed within the retention window are kept aside: `start` builds the
        // views at the window's start, then applies those records to the tables and replays
        // them through the views, so that each view's change history covers the window.
        let cutoff = SystemTime::now().checked_sub(config.retention.window);
        let mut tail: Vec<TailRecord> = Vec::new();
        let mut tail_from = Lsn::ZERO;
        let runtime = Arc::new(Runtime::new(config.retention));
        let notify = runtime.clone();
        let log = Log::open(
            &dir.join("log"),
            |record: LogRecord| {
                records += 1;
                let recent = match (record.time, cutoff) {
                    (Some(t), Some(c)) => t >= c,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if tail.is_empty() && !recent {
                    return replay(&mut tables, &record, record.lsn);
                }
                if tail.is_empty() {
                    tail_from = Lsn(record.lsn.0 - 1);
                }
                tail.push(TailRecord {
                    time: record.time.unwrap_or_else(SystemTime::now),
                    record,
                });
                Ok(())
            },
            Box::new(move |lsn| notify.set_durable(lsn)),
        )?;
        if tail.is_empty() {
            tail_from = log.durable_lsn();
        }
        let rows: usize = tables.values().map(|t| t.live_rows()).sum();
        tracing::info!(
            data_dir = %dir.display(),
            tables = tables.len(),
            rows,
            log_records = records,
            to_replay_through_views = tail.len(),
            last_lsn = %log.durable_lsn(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered"
        );
        Ok(Arc::new(Engine {
            config,
            state,
            log,
            catalog: RwLock::new(Arc::new(catalog)),
            tables: RwLock::new(tables),
            commit_lock: Mutex::new(()),
            runtime,
            write_lock: tokio::sync::Mutex::new(()),
            subscriptions: Arc::new(Registry::default()),
            next_temp_id: std::sync::atomic::AtomicU64::new(TEMP_IDS),
            tail: Mutex::new(Some((tail_from, tail))),
        }))
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Starts the dataflow runtime and the dataflows of the catalog's materialized views, each
    /// backfilled from the tables as replayed from the log (in creation order, so a view's
    /// inputs are running before it).
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        let scanner = Arc::new(Scanner(Arc::downgrade(self)));
        let durable = self.log.durable_lsn();
        let (from, tail) = self.tail.lock().take().unwrap_or((durable, Vec::new()));
        self.runtime.start(from, durable, scanner)?;
        let views = self.catalog().views();
        let mut session = Session::new(self.clone(), &HashMap::new(), 0)?;
        for view in views.into_iter().filter(|v| v.materialized) {
            let started = std::time::Instant::now();
            // A view that cannot be rebuilt (its query fails over the current data, or no
            // longer plans) does not stop the server: it is kept as failed, its SELECTs report
            // why, and it can be dropped.
            let outcome = match session.plan_view(&view).await {
                Ok((spec, schema)) => self
                    .runtime
                    .create_view(view.id, &view.name, spec, schema.clone())
                    .await
                    .map_err(|e| (e, schema)),
                Err(e) => Err((e, Arc::new(datafusion::arrow::datatypes::Schema::empty()))),
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(view = %view.name, elapsed_ms = started.elapsed().as_millis() as u64, "materialized view backfilled")
                }
                Err((e, schema)) => {
                    tracing::error!(view = %view.name, error = %e, "materialized view could not be rebuilt; it is kept as failed");
                    self.runtime.add_failed_view(view.id, &view.name, schema, e);
                }
            }
        }
        // The views started at `from`; the records since go through them one epoch each, so
        // their change histories hold every epoch a subscriber may resume from.
        let replayed = tail.len();
        let started = std::time::Instant::now();
        for t in tail {
            {
                let _commit = self.commit_lock.lock();
                replay(&mut self.tables.write(), &t.record, t.record.lsn)?;
            }
            self.runtime
                .replay(t.record.lsn, Arc::new(t.record.changes), t.time);
        }
        if replayed > 0 {
            self.runtime
                .epochs()
                .wait_for(durable, Duration::from_secs(365 * 86400))
                .await?;
            tracing::info!(
                records = replayed,
                from_lsn = from.0,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "replayed the retention window through the views"
            );
        }
        Ok(())
    }

    /// Stops the dataflows, then the log writer after it has synced everything queued.
    pub fn close(&self) {
        self.runtime.stop();
        self.log.close();
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

    /// Makes `changes` durable and visible, atomically. Returns once the log record is synced.
    pub async fn commit(&self, changes: Vec<(ObjectId, ZBatch)>) -> Result<Lsn> {
        let changes: Vec<(ObjectId, ZBatch)> = changes
            .into_iter()
            .filter(|(_, z)| z.num_rows() > 0)
            .collect();
        if changes.is_empty() {
            return Ok(self.log.durable_lsn());
        }
        let time = SystemTime::now();
        let body = encode_body(&changes, time)?;
        let durable = {
            let _commit = self.commit_lock.lock();
            let mut tables = self.tables.write();
            let mut plans = Vec::with_capacity(changes.len());
            for (id, change) in &changes {
                let table = tables.get_mut(id).ok_or_else(|| {
                    crate::err!(
                        sqlstate::UNDEFINED_TABLE,
                        "a table written by this transaction was dropped concurrently"
                    )
                })?;
                plans.push((*id, table.plan(change)?));
            }
            let durable = self.log.append(body)?;
            let horizon = self.read_horizon();
            for (id, plan) in plans {
                if let Some(table) = tables.get_mut(&id) {
                    table.commit(plan, durable.lsn, horizon)?;
                }
            }
            self.runtime.push(durable.lsn, Arc::new(changes), time);
            durable
        };
        durable.wait().await
    }

    async fn create_table(&self, def: TableDef, if_not_exists: bool) -> Result<bool> {
        let _w = self.write_lock.lock().await;
        let _commit = self.commit_lock.lock();
        let mut catalog = (**self.catalog.read()).clone();
        if !name_is_free(&catalog, &def.name, if_not_exists)? {
            return Ok(false);
        }
        let def = catalog.create_table(&self.state, def)?;
        self.tables.write().insert(def.id, new_table_store(&def));
        *self.catalog.write() = Arc::new(catalog);
        Ok(true)
    }

    async fn drop_table(&self, name: &str, cascade: bool) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let id = self.catalog().table(name).map(|t| t.id).ok_or_else(|| {
            crate::err!(sqlstate::UNDEFINED_TABLE, "table \"{name}\" does not exist")
        })?;
        self.drop_dependents(id, "table", name, cascade).await?;
        let _commit = self.commit_lock.lock();
        let mut catalog = (**self.catalog.read()).clone();
        let def = catalog.drop_table(&self.state, name)?;
        self.tables.write().remove(&def.id);
        *self.catalog.write() = Arc::new(catalog);
        drop(_commit);
        self.runtime.drop_object(def.id, &def.name).await;
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
    /// fails (e.g. division by zero over existing rows) nothing is created.
    async fn create_view(
        &self,
        mut def: ViewDef,
        dataflow: Option<(DataflowSpec, datafusion::arrow::datatypes::SchemaRef)>,
        if_not_exists: bool,
    ) -> Result<bool> {
        let _w = self.write_lock.lock().await;
        let mut catalog = (**self.catalog.read()).clone();
        if !name_is_free(&catalog, &def.name, if_not_exists)? {
            return Ok(false);
        }
        def.id = catalog.reserve_id(&self.state)?;
        *self.catalog.write() = Arc::new(catalog.clone());
        if let Some((spec, schema)) = dataflow {
            self.runtime
                .create_view(def.id, &def.name, spec, schema)
                .await?;
        }
        catalog.create_view(&self.state, def)?;
        *self.catalog.write() = Arc::new(catalog);
        Ok(true)
    }

    async fn drop_view(&self, name: &str, materialized: bool, cascade: bool) -> Result<()> {
        let _w = self.write_lock.lock().await;
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

fn new_table_store(def: &TableDef) -> TableStore {
    TableStore::new(&def.name, def.schema(), &def.primary_key)
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
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.runtime.stop();
        self.log.close();
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
            let plan = table.plan(change).map_err(|e| {
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
            append_only: true,
            watermark: None,
        };
        engine.create_table(def, false).await.unwrap();
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
