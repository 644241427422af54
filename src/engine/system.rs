//! `eddy_catalog`: system views about what the server is doing, generated when scanned.
//!
//! - `eddy_catalog.subscriptions`: one row per active SUBSCRIBE (statement or cursor): what it
//!   reads, who runs it, the epoch it has delivered up to, and how far behind it is.
//! - `eddy_catalog.checkpoints`: one row about checkpoints since start: how many, the last one's
//!   LSN, time, duration and size, failures, and the state store's size on disk.
//! - `eddy_catalog.recovery`: one row about the last start-up: the checkpoint it loaded, rows
//!   and log records it read, views restored or backfilled, and how long it took.
//! - `eddy_catalog.watermarks`: one row per table with a `WATERMARK FOR`: its event-time
//!   column, the watermark expression, the current watermark, and how many late rows (behind
//!   the watermark when written) it refused.
//! - `eddy_catalog.dataflows`: one row per materialized view: its operators, and the rows and
//!   bytes (in memory) of state they hold as of its last epoch.
//! - `eddy_catalog.dataflow_operators`: one row per operator of each materialized view's
//!   dataflow: what it is, the operators it reads (`inputs`, their ids), its shards, the rows
//!   it received and emitted, the time it worked and the epochs it ran in since the dataflow
//!   started, and the state it holds now (the same as `EXPLAIN ANALYZE MATERIALIZED VIEW`).
//! - `eddy_catalog.materialized_views`: one row per materialized view: running or failed (and
//!   why), its rows, the epoch the views are at and how far behind the log's end that is, and
//!   its backfill (this server run): input rows done and in all, and seconds. A view being
//!   created shows as `backfilling` until its backfill is over.
//! - `eddy_catalog.sources`: one row per table (what events arrive in), with the SOURCE that
//!   feeds it if any: its rows now, the rows written since the server started and per second
//!   over the last 10 s, and the late rows refused (tables with a watermark).
//! - `eddy_catalog.view_watermarks`: one row per column of a materialized view that has a
//!   watermark (see `dataflow::watermark`): its value as of the view's last epoch, and the late
//!   rows refused by the tables the view reads.

use std::fmt;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;

use super::Engine;
use crate::dataflow::runtime::Backfill;

pub const SCHEMA: &str = "eddy_catalog";
const TABLES: &[&str] = &[
    "subscriptions",
    "checkpoints",
    "recovery",
    "memory",
    "watermarks",
    "view_watermarks",
    "dataflows",
    "dataflow_operators",
    "materialized_views",
    "sources",
];

struct System {
    engine: Arc<Engine>,
}

impl fmt::Debug for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EddyCatalog")
    }
}

pub fn schema(engine: Arc<Engine>) -> Arc<dyn SchemaProvider> {
    Arc::new(System { engine })
}

impl System {
    fn subscriptions(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("target", DataType::Utf8, false),
            Field::new("client", DataType::Utf8, false),
            Field::new("pid", DataType::Int32, false),
            Field::new(
                "started",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                false,
            ),
            Field::new("epoch", DataType::Int64, false),
            Field::new("lag_ms", DataType::Int64, false),
        ]));
        let active = self.engine.subscriptions().active();
        let micros = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0)
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                active.iter().map(|s| s.id as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                active.iter().map(|s| &s.target),
            )),
            Arc::new(StringArray::from_iter_values(
                active.iter().map(|s| &s.client),
            )),
            Arc::new(Int32Array::from_iter_values(active.iter().map(|s| s.pid))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    active.iter().map(|s| micros(s.started)),
                )
                .with_timezone("+00:00"),
            ),
            Arc::new(Int64Array::from_iter_values(active.iter().map(|s| {
                s.cursor.load(std::sync::atomic::Ordering::Relaxed) as i64
            }))),
            Arc::new(Int64Array::from_iter_values(
                active.iter().map(|s| s.lag().as_millis() as i64),
            )),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

/// A one-row table of the given columns.
fn one_row(columns: Vec<(&str, ScalarValue)>) -> DfResult<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, v)| Field::new(*name, v.data_type(), true))
            .collect::<Vec<_>>(),
    ));
    let arrays = columns
        .iter()
        .map(|(_, v)| v.to_array())
        .collect::<DfResult<Vec<ArrayRef>>>()?;
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn millis(d: std::time::Duration) -> ScalarValue {
    ScalarValue::Float64(Some(d.as_secs_f64() * 1000.0))
}

fn int(v: u64) -> ScalarValue {
    ScalarValue::Int64(Some(v as i64))
}

impl System {
    fn checkpoints(&self) -> DfResult<Arc<dyn TableProvider>> {
        let c = self.engine.runtime().checkpoint_stats();
        let a = self.engine.admission_stats();
        let at = c.at.and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        one_row(vec![
            ("checkpoints", int(c.count)),
            ("lsn", int(c.lsn.0)),
            (
                "taken_at",
                ScalarValue::TimestampMicrosecond(
                    at.map(|d| d.as_micros() as i64),
                    Some("+00:00".into()),
                ),
            ),
            ("collect_ms", millis(c.collect)),
            ("duration_ms", millis(c.duration)),
            ("bytes", int(c.bytes)),
            ("total_bytes", int(c.total_bytes)),
            ("full", ScalarValue::Boolean(Some(c.full))),
            ("in_flight", ScalarValue::Boolean(Some(c.in_flight))),
            ("failures", int(c.failures)),
            (
                "last_error",
                ScalarValue::Utf8(c.last_error.map(|e| e.message)),
            ),
            ("state_disk_bytes", int(self.engine.state_disk_bytes())),
            ("lag_bytes", int(a.lag_bytes)),
            ("max_lag_bytes", int(a.limit_bytes)),
            (
                "replay_estimate_ms",
                a.replay_estimate.map_or(ScalarValue::Float64(None), millis),
            ),
            ("writes_delayed", int(a.writes_delayed)),
            ("write_delay_ms", millis(a.delayed)),
        ])
    }

    fn recovery(&self) -> DfResult<Arc<dyn TableProvider>> {
        let r = self.engine.recovery_stats();
        one_row(vec![
            ("checkpoint_lsn", int(r.checkpoint_lsn)),
            ("table_rows_loaded", int(r.table_rows_loaded)),
            ("log_records_replayed", int(r.log_records_replayed)),
            ("views_restored", int(r.views_restored)),
            ("views_backfilled", int(r.views_backfilled)),
            ("open_ms", millis(r.open)),
            ("total_ms", millis(r.total)),
        ])
    }

    fn memory(&self) -> DfResult<Arc<dyn TableProvider>> {
        let m = self.engine.runtime().memory_stats();
        let (in_memory, stored) = self.engine.table_rows();
        let (cache, buffers) = self.engine.store_memory();
        let (view_rows, view_rows_stored) = self.engine.runtime().view_rows();
        one_row(vec![
            ("budget_bytes", int(m.budget as u64)),
            ("evictable_state_bytes", int(m.evictable_bytes as u64)),
            ("evictions", int(m.evictions)),
            ("evicted_bytes", int(m.evicted_bytes)),
            ("table_rows_in_memory", int(in_memory as u64)),
            ("table_rows_in_store", int(stored as u64)),
            ("view_rows_in_memory", int(view_rows as u64)),
            ("view_rows_in_store", int(view_rows_stored as u64)),
            ("store_cache_bytes", int(cache as u64)),
            ("store_write_buffer_bytes", int(buffers as u64)),
        ])
    }
}

impl System {
    fn watermarks(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("column_name", DataType::Utf8, false),
            Field::new("expression", DataType::Utf8, false),
            Field::new(
                "watermark",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("late_rows", DataType::Int64, false),
        ]));
        let catalog = self.engine.catalog();
        let mut rows: Vec<_> = self
            .engine
            .table_watermarks()
            .into_iter()
            .filter_map(|w| {
                let table = catalog.table_by_id(w.table)?;
                let def = table.watermark.as_ref()?;
                Some((table.name.clone(), def.clone(), w))
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.1.column),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.1.expr),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.2.micros))
                    .with_timezone("+00:00"),
            ),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.2.late_rows as i64),
            )),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

impl System {
    fn view_watermarks(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("view_name", DataType::Utf8, false),
            Field::new("column_name", DataType::Utf8, false),
            Field::new(
                "watermark",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("late_rows", DataType::Int64, false),
        ]));
        let catalog = self.engine.catalog();
        let late: std::collections::HashMap<u64, u64> = self
            .engine
            .table_watermarks()
            .into_iter()
            .map(|w| (w.table, w.late_rows))
            .collect();
        let mut rows: Vec<(String, String, Option<i64>, u64)> = Vec::new();
        let mut views: Vec<_> = catalog
            .views()
            .into_iter()
            .filter(|v| v.materialized)
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        for view in views {
            let Some(state) = self.engine.view_state(view.id) else {
                continue;
            };
            let marks = state.watermarks.lock().clone();
            let late_rows: u64 = catalog
                .tables_read(view.id)
                .iter()
                .filter_map(|t| late.get(t))
                .sum();
            for (c, w) in marks.iter().enumerate() {
                let (Some(w), Some(name)) = (w, view.columns.get(c)) else {
                    continue;
                };
                rows.push((view.name.clone(), name.clone(), micros_of(w), late_rows));
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
            Arc::new(
                TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.2))
                    .with_timezone("+00:00"),
            ),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.3 as i64),
            )),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

impl System {
    fn dataflows(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("view_name", DataType::Utf8, false),
            Field::new("operators", DataType::Int64, false),
            Field::new("state_rows", DataType::Int64, false),
            Field::new("state_bytes_in_memory", DataType::Int64, false),
        ]));
        let catalog = self.engine.catalog();
        let mut views: Vec<_> = catalog
            .views()
            .into_iter()
            .filter(|v| v.materialized)
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        let rows: Vec<(String, crate::dataflow::runtime::OperatorState)> = views
            .iter()
            .filter_map(|v| {
                let state = self.engine.view_state(v.id)?;
                let s = *state.state.lock();
                Some((v.name.clone(), s))
            })
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.1.operators as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.1.rows as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.1.bytes_in_memory as i64),
            )),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

impl System {
    fn dataflow_operators(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("view_name", DataType::Utf8, false),
            Field::new("operator_id", DataType::Int64, false),
            Field::new("operator", DataType::Utf8, false),
            Field::new("inputs", DataType::Utf8, false),
            Field::new("shards", DataType::Int64, false),
            Field::new("epochs", DataType::Int64, false),
            Field::new("rows_in", DataType::Int64, false),
            Field::new("rows_out", DataType::Int64, false),
            Field::new("busy_ms", DataType::Float64, false),
            Field::new("state_rows", DataType::Int64, false),
            Field::new("state_bytes", DataType::Int64, false),
        ]));
        let catalog = self.engine.catalog();
        let mut views: Vec<_> = catalog
            .views()
            .into_iter()
            .filter(|v| v.materialized)
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        type Row = (
            String,
            String,
            String,
            crate::dataflow::runtime::OperatorStats,
        );
        let rows: Vec<Row> = views
            .iter()
            .flat_map(|v| {
                super::views::operator_rows(&self.engine, v)
                    .into_iter()
                    .map(|(label, inputs, stats)| {
                        let inputs: Vec<String> = inputs.iter().map(|i| i.to_string()).collect();
                        (v.name.clone(), label, inputs.join(","), stats)
                    })
            })
            .collect();
        let int = |f: &dyn Fn(&crate::dataflow::runtime::OperatorStats) -> u64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| f(&r.3) as i64),
            ))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
            int(&|s| s.node as u64),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.2))),
            int(&|s| s.shards as u64),
            int(&|s| s.epochs),
            int(&|s| s.rows_in),
            int(&|s| s.rows_out),
            Arc::new(datafusion::arrow::array::Float64Array::from_iter_values(
                rows.iter().map(|r| r.3.busy.as_secs_f64() * 1000.0),
            )),
            int(&|s| s.state_rows),
            int(&|s| s.state_bytes),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

impl System {
    fn materialized_views(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("view_name", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("error", DataType::Utf8, true),
            Field::new("rows", DataType::Int64, false),
            Field::new("epoch", DataType::Int64, false),
            Field::new("log_lsn", DataType::Int64, false),
            Field::new("behind_lsn", DataType::Int64, false),
            Field::new("backfill_rows_done", DataType::Int64, true),
            Field::new("backfill_rows_total", DataType::Int64, true),
            Field::new("backfill_seconds", DataType::Float64, true),
        ]));
        let catalog = self.engine.catalog();
        let mut views: Vec<_> = catalog
            .views()
            .into_iter()
            .filter(|v| v.materialized)
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        let committed = self.engine.runtime().epochs().committed();
        let log = self.engine.durable_lsn().0;
        let mut names = Vec::new();
        let mut status = Vec::new();
        let mut errors: Vec<Option<String>> = Vec::new();
        let mut rows = Vec::new();
        let mut backfills: Vec<Option<Arc<Backfill>>> = Vec::new();
        for v in &views {
            names.push(v.name.clone());
            match self.engine.view_state(v.id) {
                None => {
                    status.push("starting".to_string());
                    errors.push(None);
                    rows.push(0);
                    backfills.push(None);
                }
                Some(state) => {
                    match state.status() {
                        crate::dataflow::ViewStatus::Running => {
                            status.push("running".into());
                            errors.push(None);
                        }
                        crate::dataflow::ViewStatus::Failed(_, e) => {
                            status.push("failed".into());
                            errors.push(Some(format!("{} ({})", e.message, e.sqlstate)));
                        }
                    }
                    rows.push(state.rows() as i64);
                    backfills.push(Some(state.backfill.clone()));
                }
            }
        }
        // Views being created: not in the catalog until their backfill is over.
        let mut running = self.engine.runtime().backfills();
        running.retain(|(id, _)| *id < crate::dataflow::TEMP_IDS);
        running.sort_by(|a, b| a.1.view.cmp(&b.1.view));
        for (_, backfill) in running {
            names.push(backfill.view.clone());
            status.push("backfilling".into());
            errors.push(None);
            rows.push(0);
            backfills.push(Some(backfill));
        }
        let n = names.len();
        // A view restored from a checkpoint had no backfill in this server run.
        let backfilled = |b: &Option<Arc<Backfill>>| {
            b.as_ref()
                .filter(|b| b.progress().1 > 0 || !b.is_finished())
                .cloned()
        };
        let backfills: Vec<Option<Arc<Backfill>>> = backfills.iter().map(backfilled).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(status)),
            Arc::new(StringArray::from(errors)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from(vec![committed.epoch.0 as i64; n])),
            Arc::new(Int64Array::from(vec![log as i64; n])),
            Arc::new(Int64Array::from(vec![
                log.saturating_sub(committed.lsn.0)
                    as i64;
                n
            ])),
            Arc::new(Int64Array::from_iter(
                backfills
                    .iter()
                    .map(|b| b.as_ref().map(|b| b.progress().0 as i64)),
            )),
            Arc::new(Int64Array::from_iter(
                backfills
                    .iter()
                    .map(|b| b.as_ref().map(|b| b.progress().1 as i64)),
            )),
            Arc::new(Float64Array::from_iter(
                backfills
                    .iter()
                    .map(|b| b.as_ref().map(|b| b.elapsed().as_secs_f64())),
            )),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }

    fn sources(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("source_name", DataType::Utf8, true),
            Field::new("rows", DataType::Int64, false),
            Field::new("rows_written", DataType::Int64, false),
            Field::new("rows_per_second", DataType::Float64, false),
            Field::new("late_rows", DataType::Int64, false),
        ]));
        let catalog = self.engine.catalog();
        let mut tables: Vec<_> = catalog.tables().cloned().collect();
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        let watermarks = self.engine.table_watermarks();
        let (mut names, mut source_names, mut rows, mut written, mut rates, mut late) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for t in &tables {
            let (n_written, rate) = self.engine.table_throughput(t.id);
            names.push(t.name.clone());
            source_names.push(
                t.source
                    .and_then(|s| catalog.source_by_id(s))
                    .map(|s| s.name.clone()),
            );
            rows.push(self.engine.row_count(t.id) as i64);
            written.push(n_written as i64);
            rates.push(rate);
            late.push(
                watermarks
                    .iter()
                    .find(|w| w.table == t.id)
                    .map_or(0, |w| w.late_rows as i64),
            );
        }
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(source_names)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from(written)),
            Arc::new(datafusion::arrow::array::Float64Array::from(rates)),
            Arc::new(Int64Array::from(late)),
        ];
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

/// A timestamp or date watermark as µs since 1970 UTC.
fn micros_of(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Date32(Some(d)) => Some(i64::from(*d) * 86_400_000_000),
        ScalarValue::TimestampMicrosecond(Some(us), _) => Some(*us),
        other => match other.cast_to(&DataType::Timestamp(TimeUnit::Microsecond, None)) {
            Ok(ScalarValue::TimestampMicrosecond(us, _)) => us,
            _ => None,
        },
    }
}

#[async_trait]
impl SchemaProvider for System {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.build(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}

/// Every system view, built now (for the metrics endpoint).
pub fn tables(
    engine: Arc<Engine>,
) -> crate::error::Result<Vec<(&'static str, Arc<dyn TableProvider>)>> {
    let system = System { engine };
    let mut out = Vec::new();
    for name in TABLES {
        if let Some(table) = system.build(name)? {
            out.push((*name, table));
        }
    }
    Ok(out)
}

/// The schema of each system view, for the catalogs (`pg_attribute`,
/// `information_schema.columns`).
pub fn schemas(
    engine: Arc<Engine>,
) -> Vec<(&'static str, datafusion::arrow::datatypes::SchemaRef)> {
    let system = System { engine };
    let mut out: Vec<_> = TABLES
        .iter()
        .filter_map(|name| Some((*name, system.build(name).ok()??.schema())))
        .collect();
    out.sort_by_key(|(name, _)| *name);
    out
}

impl System {
    fn build(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match name {
            "subscriptions" => self.subscriptions().map(Some),
            "checkpoints" => self.checkpoints().map(Some),
            "recovery" => self.recovery().map(Some),
            "memory" => self.memory().map(Some),
            "watermarks" => self.watermarks().map(Some),
            "view_watermarks" => self.view_watermarks().map(Some),
            "dataflows" => self.dataflows().map(Some),
            "dataflow_operators" => self.dataflow_operators().map(Some),
            "materialized_views" => self.materialized_views().map(Some),
            "sources" => self.sources().map(Some),
            _ => Ok(None),
        }
    }
}
