//! Sources: `CREATE SOURCE`, `DROP SOURCE`, `SHOW SOURCES`, and the tasks that feed a source's
//! tables from its connector.
//!
//! A source owns its tables (SQL cannot write them; they are dropped with it). Its connector
//! makes the rows of any range of stream positions ([`crate::connectors`]); a generator thread
//! makes them a chunk at a time, paced to the source's rate, and a task commits each chunk to
//! all of the source's tables in one log record, like a client's transaction. The position
//! is therefore the number of rows its tables hold: after a crash the source goes on from
//! exactly there, with no event lost or written twice.
//!
//! ```text
//!  generator thread ──chunk (≤ 2 queued)──► commit task ──engine.commit──► log ─► views
//!     paced: events_per_second × elapsed
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parking_lot::Mutex;

use super::session::{Output, rows_output};
use super::{Engine, name_is_free};
use crate::catalog::{Connector, SourceDef};
use crate::connectors::nexmark;
use crate::error::{Result, sqlstate};
use crate::sql::source::SourceStatement;
use crate::types::{ObjectId, ZBatch};

/// Events per chunk when the rate is unlimited (about 1.5 MB of rows: a few per epoch).
const UNLIMITED_CHUNK: u64 = 10_000;

/// A rate-limited source commits at most this often (and at least one event at a time).
const PACED_TICK: Duration = Duration::from_millis(1);

/// A running source's progress, shared by its tasks and `SHOW SOURCES`.
#[derive(Debug, Default)]
pub struct SourceRun {
    /// Events written (durable).
    events: AtomicU64,
    done: AtomicBool,
    stop: AtomicBool,
    /// Why it stopped early (it resumes at the next start).
    error: Mutex<Option<String>>,
}

impl Engine {
    /// Runs a source statement.
    pub(super) async fn source_statement(
        self: &Arc<Self>,
        stmt: &SourceStatement,
    ) -> Result<Output> {
        match stmt {
            SourceStatement::Create {
                name,
                if_not_exists,
                connector,
                options,
            } => {
                let connector = match connector.as_str() {
                    "nexmark" => {
                        let now_ms = self.clock_now() / 1000;
                        Connector::Nexmark(nexmark::parse_options(options, now_ms)?)
                    }
                    other => {
                        return Err(crate::unsupported!(
                            "source connector {other} (the connectors are: NEXMARK)"
                        ));
                    }
                };
                if self.create_source(name, connector, *if_not_exists).await? {
                    Ok(Output::Command {
                        tag: "CREATE SOURCE",
                        rows: None,
                    })
                } else {
                    Ok(Output::Warning {
                        tag: "CREATE SOURCE",
                        message: format!("source \"{name}\" already exists, skipping"),
                    })
                }
            }
            SourceStatement::Drop {
                names,
                if_exists,
                cascade,
            } => {
                let mut skipped = Vec::new();
                for name in names {
                    if self.catalog().source(name).is_none() && *if_exists {
                        skipped.push(format!("source \"{name}\" does not exist, skipping"));
                        continue;
                    }
                    self.drop_source(name, *cascade).await?;
                }
                if skipped.is_empty() {
                    Ok(Output::Command {
                        tag: "DROP SOURCE",
                        rows: None,
                    })
                } else {
                    Ok(Output::Warning {
                        tag: "DROP SOURCE",
                        message: skipped.join("\n"),
                    })
                }
            }
            SourceStatement::Show => Ok(self.show_sources()),
        }
    }

    /// Creates a source and its tables and starts feeding them; false if it exists and
    /// `if_not_exists`.
    async fn create_source(
        self: &Arc<Self>,
        name: &str,
        connector: Connector,
        if_not_exists: bool,
    ) -> Result<bool> {
        let tables = match &connector {
            Connector::Nexmark(_) => nexmark::table_defs(),
        };
        let def = {
            let _w = self.write_lock.write().await;
            let _commit = self.commit_lock.lock();
            let mut catalog = (**self.catalog.read()).clone();
            if catalog.source(name).is_some() {
                if if_not_exists {
                    return Ok(false);
                }
                return Err(crate::err!(
                    sqlstate::DUPLICATE_OBJECT,
                    "source \"{name}\" already exists"
                ));
            }
            for t in &tables {
                name_is_free(&catalog, &t.name, false).map_err(|e| {
                    e.with_detail(format!(
                        "Source \"{name}\" feeds tables named {}.",
                        table_names(&tables)
                    ))
                })?;
            }
            let source = SourceDef {
                id: 0,
                name: name.to_string(),
                connector,
                tables: Vec::new(),
            };
            let (def, tables) = catalog.create_source(&self.state, source, tables)?;
            for t in &tables {
                self.add_table_state(&catalog, t)?;
            }
            *self.catalog.write() = Arc::new(catalog);
            def
        };
        self.start_source(def);
        Ok(true)
    }

    /// Stops a source and drops it with its tables (and, with `cascade`, the views reading
    /// them; else those make it fail with 2BP01).
    async fn drop_source(&self, name: &str, cascade: bool) -> Result<()> {
        let _w = self.write_lock.write().await;
        let def = self.catalog().source(name).cloned().ok_or_else(|| {
            crate::err!(
                sqlstate::UNDEFINED_OBJECT,
                "source \"{name}\" does not exist"
            )
        })?;
        for id in &def.tables {
            if let Some(t) = self.catalog().table_by_id(*id).cloned() {
                self.drop_dependents(t.id, "table", &t.name, cascade)
                    .await?;
            }
        }
        if let Some(run) = self.sources.lock().remove(&def.id) {
            run.stop.store(true, Ordering::SeqCst);
        }
        self.remove_tables(|catalog| Ok(catalog.drop_source(&self.state, name)?.1))
            .await
    }

    /// Starts feeding every source of the catalog (at start-up, after recovery).
    pub(super) fn start_sources(self: &Arc<Self>) {
        let sources: Vec<Arc<SourceDef>> = self.catalog().sources().cloned().collect();
        for def in sources {
            self.start_source(def);
        }
    }

    /// Starts the generator thread and commit task of source `def`, from the events its
    /// tables hold.
    fn start_source(self: &Arc<Self>, def: Arc<SourceDef>) {
        let run = Arc::new(SourceRun::default());
        let from: u64 = def.tables.iter().map(|t| self.row_count(*t) as u64).sum();
        run.events.store(from, Ordering::SeqCst);
        self.sources.lock().insert(def.id, run.clone());
        let Connector::Nexmark(options) = &def.connector;
        let generator = nexmark::Generator::new(options);
        let max = options.max_events.unwrap_or(u64::MAX);
        let rate = options.events_per_second;
        if from >= max {
            run.done.store(true, Ordering::SeqCst);
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, [RecordBatch; 3])>(2);
        let producer_run = run.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("source {}", def.name))
            .spawn(move || {
                let started = Instant::now();
                let mut next = from;
                while next < max && !producer_run.stop.load(Ordering::Relaxed) {
                    let to = if rate == 0 {
                        (next + UNLIMITED_CHUNK).min(max)
                    } else {
                        let due = from + (started.elapsed().as_secs_f64() * rate as f64) as u64;
                        if due <= next {
                            if tx.is_closed() {
                                return;
                            }
                            std::thread::sleep(PACED_TICK);
                            continue;
                        }
                        due.min(next + UNLIMITED_CHUNK).min(max)
                    };
                    let rows = match generator.generate(next, to) {
                        Ok(rows) => rows,
                        Err(e) => {
                            *producer_run.error.lock() = Some(e.to_string());
                            return;
                        }
                    };
                    if tx.blocking_send((to, rows)).is_err() {
                        return;
                    }
                    next = to;
                }
            });
        if let Err(e) = spawned {
            *run.error.lock() = Some(format!("could not start its thread: {e}"));
            return;
        }
        let engine = Arc::downgrade(self);
        let tables = def.tables.clone();
        let name = def.name.clone();
        tokio::spawn(async move {
            while let Some((to, rows)) = rx.recv().await {
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                if run.stop.load(Ordering::SeqCst) {
                    return;
                }
                let changes: Vec<(ObjectId, ZBatch)> = tables
                    .iter()
                    .zip(rows)
                    .filter(|(_, b)| b.num_rows() > 0)
                    .map(|(t, b)| (*t, ZBatch::uniform(b, 1)))
                    .collect();
                if let Err(e) = engine.commit(changes).await {
                    if !engine.runtime.stopped() && !run.stop.load(Ordering::SeqCst) {
                        tracing::warn!(source = %name, error = %e, "source stopped");
                        *run.error.lock() = Some(e.to_string());
                    }
                    return;
                }
                run.events.store(to, Ordering::SeqCst);
            }
            if run.events.load(Ordering::SeqCst) >= max {
                run.done.store(true, Ordering::SeqCst);
            }
        });
    }

    /// `SHOW SOURCES`: name, connector, events written, done, error.
    fn show_sources(&self) -> Output {
        let catalog = self.catalog();
        let runs = self.sources.lock();
        let mut names = Vec::new();
        let mut connectors = Vec::new();
        let mut events = Vec::new();
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for def in catalog.sources() {
            let run = runs.get(&def.id);
            names.push(def.name.clone());
            connectors.push(def.connector.name());
            events.push(run.map_or(0, |r| r.events.load(Ordering::SeqCst) as i64));
            done.push(run.is_some_and(|r| r.done.load(Ordering::SeqCst)));
            errors.push(run.and_then(|r| r.error.lock().clone()));
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(connectors)),
            Arc::new(Int64Array::from(events)),
            Arc::new(BooleanArray::from(done)),
            Arc::new(StringArray::from(errors)),
        ];
        rows_output(show_sources_schema(), columns, "SHOW")
    }

    /// Whether table `id` is fed by a source: then SQL cannot write it.
    pub(super) fn check_writable(&self, table: &crate::catalog::TableDef) -> Result<()> {
        let Some(source) = table.source else {
            return Ok(());
        };
        let source = self
            .catalog()
            .source_by_id(source)
            .map_or_else(|| "?".to_string(), |s| s.name.clone());
        Err(crate::err!(
            sqlstate::WRONG_OBJECT_TYPE,
            "table \"{}\" is fed by source \"{source}\": INSERT, UPDATE, DELETE and COPY cannot write it",
            table.name
        ))
    }

    /// Waits until source `name` has written all its events (`max_events`), or fails if it
    /// stopped with an error. For benchmarks and tests.
    pub async fn wait_for_source(&self, name: &str) -> Result<u64> {
        loop {
            let id = self.catalog().source(name).map(|s| s.id).ok_or_else(|| {
                crate::err!(
                    sqlstate::UNDEFINED_OBJECT,
                    "source \"{name}\" does not exist"
                )
            })?;
            let run = self.sources.lock().get(&id).cloned();
            if let Some(run) = run {
                if run.done.load(Ordering::SeqCst) {
                    return Ok(run.events.load(Ordering::SeqCst));
                }
                if let Some(e) = run.error.lock().clone() {
                    return Err(crate::err!(
                        sqlstate::IO_ERROR,
                        "source \"{name}\" stopped: {e}"
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Columns of `SHOW SOURCES`.
pub(super) fn show_sources_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("connector", DataType::Utf8, false),
        Field::new("events", DataType::Int64, false),
        Field::new("done", DataType::Boolean, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn table_names(tables: &[crate::catalog::TableDef]) -> String {
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    names.join(", ")
}
