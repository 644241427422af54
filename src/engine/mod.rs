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
pub mod table;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::catalog::{Catalog, TableDef};
use crate::error::{Error, Result, sqlstate};
use crate::storage::log::{Log, LogRecord, encode_body};
use crate::storage::state::StateStore;
use crate::types::{Lsn, ObjectId, ZBatch};

pub use session::{CopyFormat, CopyIn, Output, Prepared, Session};
pub use table::Snapshot;

/// Engine settings (from the command line).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
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
    /// Serialises read-modify-write statements (UPDATE/DELETE outside a transaction, DDL) so
    /// they do not fail each other with 40001.
    write_lock: tokio::sync::Mutex<()>,
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
            .map(|t| (t.id, table::TableStore::new(t)))
            .collect();
        let started = std::time::Instant::now();
        let mut records = 0u64;
        let log = Log::open(&dir.join("log"), |record: LogRecord| {
            records += 1;
            replay(&mut tables, record)
        })?;
        let rows: usize = tables.values().map(|t| t.live_rows()).sum();
        tracing::info!(
            data_dir = %dir.display(),
            tables = tables.len(),
            rows,
            log_records = records,
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
            write_lock: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Stops the log writer after it has synced everything queued.
    pub fn close(&self) {
        self.log.close();
    }

    /// A consistent snapshot of the catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.log.durable_lsn()
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
        let body = encode_body(&changes)?;
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
            let durable_lsn = self.log.durable_lsn();
            for (id, plan) in plans {
                if let Some(table) = tables.get_mut(&id) {
                    table.commit(plan, durable.lsn, durable_lsn)?;
                }
            }
            durable
        };
        durable.wait().await
    }

    async fn create_table(&self, def: TableDef, if_not_exists: bool) -> Result<bool> {
        let _w = self.write_lock.lock().await;
        let _commit = self.commit_lock.lock();
        let mut catalog = (**self.catalog.read()).clone();
        if catalog.table(&def.name).is_some() {
            if if_not_exists {
                return Ok(false);
            }
            return Err(crate::err!(
                sqlstate::DUPLICATE_TABLE,
                "relation \"{}\" already exists",
                def.name
            ));
        }
        let def = catalog.create_table(&self.state, def)?;
        self.tables
            .write()
            .insert(def.id, table::TableStore::new(&def));
        *self.catalog.write() = Arc::new(catalog);
        Ok(true)
    }

    async fn drop_table(&self, name: &str) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let _commit = self.commit_lock.lock();
        let mut catalog = (**self.catalog.read()).clone();
        let def = catalog.drop_table(&self.state, name)?;
        self.tables.write().remove(&def.id);
        *self.catalog.write() = Arc::new(catalog);
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.log.close();
    }
}

/// Applies one log record during start-up. Records of dropped tables are skipped.
fn replay(tables: &mut HashMap<ObjectId, table::TableStore>, record: LogRecord) -> Result<()> {
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
            table.commit(plan, record.lsn, record.lsn)?;
        }
    }
    Ok(())
}
