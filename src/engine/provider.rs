//! DataFusion integration: a per-session `SessionContext` whose `public` schema serves Eddy's
//! tables at the statement's snapshot, with the session's uncommitted transaction changes
//! applied on top.
//!
//! ```text
//!  SessionContext ─ catalog "eddy" ─┬─ schema public      → EddyTable (engine.scan + tx overlay)
//!                                   │                       EddyView (view store at the epoch)
//!                                   ├─ schema pg_catalog  → pg_class, pg_attribute, … (psql)
//!                                   └─ information_schema (DataFusion's, over the above)
//! ```

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, SchemaProvider, Session as DfSession, TableProvider,
};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::config::SessionConfig;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;

use super::{Engine, Snapshot};
use crate::catalog::{TableDef, ViewDef};
use crate::dataflow::ReadPin;
use crate::error::{Result, sqlstate};
use crate::types::{Epoch, ObjectId, ZBatch};

pub const CATALOG_NAME: &str = "eddy";

/// What the current statement of a session reads: the snapshot and the session's uncommitted
/// transaction changes. Set by the session before planning; read by table scans.
pub struct ReadState {
    snapshot: Mutex<Snapshot>,
    /// Keeps the statement's read point readable while it runs.
    pin: Mutex<Option<ReadPin>>,
    /// The committed epoch views are read at (set when the statement reads views).
    epoch: Mutex<Option<Epoch>>,
    overlay: Mutex<HashMap<ObjectId, Vec<ZBatch>>>,
}

impl fmt::Debug for ReadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadState({:?})", *self.snapshot.lock())
    }
}

impl Default for ReadState {
    fn default() -> Self {
        ReadState {
            snapshot: Mutex::new(Snapshot::Latest),
            pin: Mutex::new(None),
            epoch: Mutex::new(None),
            overlay: Mutex::new(HashMap::new()),
        }
    }
}

impl ReadState {
    /// Reads the latest state (writers computing a change).
    pub fn read_latest(&self) {
        *self.snapshot.lock() = Snapshot::Latest;
        *self.epoch.lock() = None;
    }

    /// Reads a snapshot at the durable LSN, pinned until [`ReadState::release`].
    pub fn read_durable(&self, engine: &Engine) {
        self.read_at(engine.pin_snapshot());
    }

    /// Reads tables (and views, if the pin has an epoch) at `pin` until [`ReadState::release`].
    pub fn read_at(&self, pin: ReadPin) {
        *self.snapshot.lock() = Snapshot::At(pin.lsn);
        *self.epoch.lock() = pin.epoch;
        *self.pin.lock() = Some(pin);
    }

    /// Ends the statement's pinned read point.
    pub fn release(&self) {
        self.pin.lock().take();
        *self.epoch.lock() = None;
    }

    /// The epoch views are read at: the pinned one, else the latest committed.
    pub fn view_epoch(&self, engine: &Engine) -> Epoch {
        self.epoch
            .lock()
            .unwrap_or_else(|| engine.runtime().epochs().committed().epoch)
    }

    pub fn snapshot(&self) -> Snapshot {
        *self.snapshot.lock()
    }
    pub fn push_overlay(&self, table: ObjectId, change: ZBatch) {
        self.overlay.lock().entry(table).or_default().push(change);
    }
    pub fn overlay(&self, table: ObjectId) -> Vec<ZBatch> {
        self.overlay.lock().get(&table).cloned().unwrap_or_default()
    }
    pub fn take_overlay(&self) -> HashMap<ObjectId, Vec<ZBatch>> {
        std::mem::take(&mut *self.overlay.lock())
    }
    pub fn clear_overlay(&self) {
        self.overlay.lock().clear();
    }
}

/// A new DataFusion context for one session.
pub fn session_context(
    engine: Arc<Engine>,
    read: Arc<ReadState>,
    settings: super::pg_catalog::Settings,
) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG_NAME, "public")
        .with_create_default_catalog_and_schema(false)
        // Eddy's own information_schema (PostgreSQL's type names) is registered below.
        .with_information_schema(false)
        .with_target_partitions(2);
    let options = config.options_mut();
    options.sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
    options.sql_parser.map_string_types_to_utf8view = false;
    options.sql_parser.enable_ident_normalization = true;
    options.execution.time_zone = Some("+00:00".to_string());
    // Each session's queries share one pool: a session runs one query at a time, so this is
    // the memory one query may use.
    let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
    if engine.query_memory() > 0 {
        runtime = runtime.with_memory_limit(engine.query_memory(), 1.0);
    }
    let runtime = runtime.build_arc()?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let catalog = MemoryCatalogProvider::new();
    let pg_catalog = super::pg_catalog::schema(engine.clone(), settings.clone());
    catalog.register_schema(
        "public",
        Arc::new(EddySchema {
            engine: engine.clone(),
            read,
            pg_catalog: pg_catalog.clone(),
        }),
    )?;
    catalog.register_schema("pg_catalog", pg_catalog)?;
    catalog.register_schema(
        "information_schema",
        super::information_schema::schema(engine.clone()),
    )?;
    catalog.register_schema(super::system::SCHEMA, super::system::schema(engine.clone()))?;
    ctx.register_catalog(CATALOG_NAME, Arc::new(catalog));
    super::pg_functions::register(&ctx, engine, settings);
    super::pg_catalog::FUNCTIONS.get_or_init(|| {
        let state = ctx.state();
        let mut names: Vec<(String, &'static str)> = state
            .scalar_functions()
            .keys()
            .map(|n| (n.clone(), "f"))
            .chain(state.aggregate_functions().keys().map(|n| (n.clone(), "a")))
            .chain(state.window_functions().keys().map(|n| (n.clone(), "w")))
            .filter(|(n, _)| !n.starts_with("eddy_"))
            .collect();
        names.sort();
        names.dedup_by(|a, b| a.0 == b.0);
        names
    });
    Ok(ctx)
}

/// Rows of a table as the current statement sees them: the snapshot plus the transaction's
/// own changes (consolidated, so a row inserted then deleted in the transaction is gone).
pub fn visible_rows(engine: &Engine, read: &ReadState, def: &TableDef) -> Result<Vec<RecordBatch>> {
    let base = engine.scan(def.id, read.snapshot())?;
    with_overlay(base, read, def)
}

/// How a scan with filters on the primary key can read fewer rows than all.
enum KeyAccess {
    /// These primary keys (one array per key column).
    Keys(Vec<ArrayRef>),
    /// A range of the first key column: from `low` (inclusive), up to `high` (inclusive when
    /// its flag is set); one-row arrays of the column's type.
    Range {
        low: Option<ArrayRef>,
        high: Option<(ArrayRef, bool)>,
    },
}

/// The same, limited to (at least) the rows `access` names when the table can find them
/// without a scan; every row otherwise. Rows the transaction wrote are all included.
fn visible_rows_with_keys(
    engine: &Engine,
    read: &ReadState,
    def: &TableDef,
    access: Option<KeyAccess>,
) -> Result<Vec<RecordBatch>> {
    let base = match access {
        None => None,
        Some(KeyAccess::Keys(keys)) => engine.lookup(def.id, &keys, read.snapshot())?,
        Some(KeyAccess::Range { low, high }) => engine.scan_key_range(
            def.id,
            read.snapshot(),
            low.as_ref(),
            high.as_ref().map(|(h, inclusive)| (h, *inclusive)),
        )?,
    };
    match base {
        Some(base) => with_overlay(base, read, def),
        None => visible_rows(engine, read, def),
    }
}

/// `base` with the transaction's changes applied. A delete of a row `base` leaves out (a
/// lookup's result) consolidates to a negative count, which is dropped.
fn with_overlay(
    base: Vec<RecordBatch>,
    read: &ReadState,
    def: &TableDef,
) -> Result<Vec<RecordBatch>> {
    let overlay = read.overlay(def.id);
    if overlay.is_empty() {
        return Ok(base);
    }
    let schema = def.schema();
    let mut all: Vec<ZBatch> = base.into_iter().map(|b| ZBatch::uniform(b, 1)).collect();
    all.extend(overlay);
    Ok(vec![ZBatch::consolidate(&all, &schema)?.expand_positive()?])
}

/// The `public` schema: the user's tables and views. As in PostgreSQL, whose search path
/// starts with `pg_catalog`, an unqualified name of a catalog table (`pg_class`) means that.
struct EddySchema {
    engine: Arc<Engine>,
    read: Arc<ReadState>,
    pg_catalog: Arc<dyn SchemaProvider>,
}

impl fmt::Debug for EddySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EddySchema")
    }
}

#[async_trait]
impl SchemaProvider for EddySchema {
    fn table_names(&self) -> Vec<String> {
        let catalog = self.engine.catalog();
        let mut names: Vec<String> = catalog.tables().map(|t| t.name.clone()).collect();
        names.extend(catalog.views().iter().map(|v| v.name.clone()));
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if self.pg_catalog.table_exist(name) {
            return self.pg_catalog.table(name).await;
        }
        let catalog = self.engine.catalog();
        if let Some(def) = catalog.table(name) {
            return Ok(Some(Arc::new(EddyTable {
                def: def.clone(),
                schema: def.schema(),
                engine: self.engine.clone(),
                read: self.read.clone(),
            })));
        }
        let Some(def) = catalog.view(name).filter(|v| v.materialized) else {
            return Ok(None);
        };
        let state = self.engine.view_state(def.id).ok_or_else(|| {
            DataFusionError::External(Box::new(crate::err!(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "materialized view \"{name}\" is not running yet"
            )))
        })?;
        Ok(Some(Arc::new(EddyView {
            def: def.clone(),
            schema: state.schema(),
            state,
            engine: self.engine.clone(),
            read: self.read.clone(),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.pg_catalog.table_exist(name) || self.engine.catalog().relation_exists(name)
    }
}

struct EddyTable {
    def: Arc<TableDef>,
    schema: SchemaRef,
    engine: Arc<Engine>,
    read: Arc<ReadState>,
}

impl fmt::Debug for EddyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EddyTable({})", self.def.name)
    }
}

#[async_trait]
impl TableProvider for EddyTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Equalities on primary-key columns (`id = 5`, `id IN (1, 2)`) go to the scan, which
    /// looks those keys up instead of reading every row, and so do ranges of the first one
    /// (`id >= 5 AND id < 10`, `BETWEEN`), which read only that range of the stored rows.
    /// Inexact: the filter still runs.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if key_equality(&self.def, f).is_some() || key_bounds(&self.def, f).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let access = lookup_keys(&self.def, filters)
            .map(KeyAccess::Keys)
            .or_else(|| key_range(&self.def, filters));
        let batches = visible_rows_with_keys(&self.engine, &self.read, &self.def, access)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        memory_scan(batches, &self.schema, projection)
    }
}

/// Most keys a scan looks up one by one (a larger `IN` list, or the product of several
/// columns' lists, reads every row instead).
const MAX_LOOKUP_KEYS: usize = 1024;

/// For a filter `col = literal`, `literal = col` or `col IN (literals)` on a primary-key
/// column: the column's position in the primary key and the values.
fn key_equality(def: &TableDef, filter: &Expr) -> Option<(usize, Vec<ScalarValue>)> {
    let key_position = |e: &Expr| match e {
        Expr::Column(c) => def
            .primary_key
            .iter()
            .position(|i| def.columns[*i].name == c.name),
        _ => None,
    };
    match filter {
        Expr::BinaryExpr(b) if b.op == Operator::Eq => match (&*b.left, &*b.right) {
            (col, Expr::Literal(v, _)) | (Expr::Literal(v, _), col) => {
                Some((key_position(col)?, vec![v.clone()]))
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated && list.list.len() <= MAX_LOOKUP_KEYS => {
            let values = list
                .list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => Some(v.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some((key_position(&list.expr)?, values))
        }
        _ => None,
    }
}

/// The primary keys the scan's `filters` restrict the table to, one array per key column (of
/// the column's type), when every key column has an equality; `None` otherwise, or when a
/// value does not convert to the column's type exactly.
fn lookup_keys(def: &TableDef, filters: &[Expr]) -> Option<Vec<ArrayRef>> {
    if def.primary_key.is_empty() {
        return None;
    }
    let mut values: Vec<Option<Vec<ScalarValue>>> = vec![None; def.primary_key.len()];
    for filter in filters {
        if let Some((position, v)) = key_equality(def, filter) {
            // Two equalities on one column: either narrows the rows; keep the shorter list.
            if values[position]
                .as_ref()
                .is_none_or(|old| v.len() < old.len())
            {
                values[position] = Some(v);
            }
        }
    }
    let values: Vec<Vec<ScalarValue>> = values.into_iter().collect::<Option<_>>()?;
    let combinations = values
        .iter()
        .try_fold(1usize, |n, v| n.checked_mul(v.len()))?;
    if combinations == 0 || combinations > MAX_LOOKUP_KEYS {
        return None;
    }
    // The cartesian product, one column at a time: column k repeats each value `inner` times,
    // inner being the product of the later columns' list lengths.
    let schema = def.schema();
    let mut keys = Vec::with_capacity(values.len());
    let mut inner = combinations;
    for (position, column_values) in values.iter().enumerate() {
        inner /= column_values.len();
        let repeated: Vec<ScalarValue> = (0..combinations)
            .map(|i| column_values[(i / inner) % column_values.len()].clone())
            .collect();
        let array = ScalarValue::iter_to_array(repeated).ok()?;
        let field = schema.field(def.primary_key[position]);
        if !stored_order_is_sql_order(field.data_type()) {
            return None;
        }
        keys.push(exact_cast(&array, field.data_type())?);
    }
    Some(keys)
}

/// `array` converted to `to`, if the conversion keeps every value: a key looked up (or a
/// bound) must be the very value the filter compares with, and one that changes it (5.5 to a
/// bigint 5) would find other rows, so the scan reads every row instead.
fn exact_cast(array: &ArrayRef, to: &datafusion::arrow::datatypes::DataType) -> Option<ArrayRef> {
    let converted = cast(array, to).ok()?;
    (cast(&converted, array.data_type()).ok()?.as_ref() == array.as_ref()).then_some(converted)
}

/// Whether values of type `t` that SQL finds equal are stored (and hashed) alike, in SQL's
/// order: not floats, where -0 = 0 in SQL but not in the stored encoding (nor NaN's place).
fn stored_order_is_sql_order(t: &datafusion::arrow::datatypes::DataType) -> bool {
    !t.is_floating()
}

/// One side of a range on the first primary-key column.
enum Bound {
    /// `col >= v` or `col > v` (read from `v` on: the filter drops `v` itself).
    Low(ScalarValue),
    /// `col <= v` (true) or `col < v` (false).
    High(ScalarValue, bool),
}

/// For `col op literal` or `literal op col` (op one of < <= > >=), or `col BETWEEN a AND b`,
/// on the first primary-key column: its bounds.
fn key_bounds(def: &TableDef, filter: &Expr) -> Option<Vec<Bound>> {
    let first = &def.columns[*def.primary_key.first()?].name;
    let is_first = |e: &Expr| matches!(e, Expr::Column(c) if &c.name == first);
    match filter {
        Expr::BinaryExpr(b) => {
            let (op, v) = match (&*b.left, &*b.right) {
                (col, Expr::Literal(v, _)) if is_first(col) => (b.op, v),
                (Expr::Literal(v, _), col) if is_first(col) => (b.op.swap()?, v),
                _ => return None,
            };
            let bound = match op {
                Operator::Gt | Operator::GtEq => Bound::Low(v.clone()),
                Operator::Lt => Bound::High(v.clone(), false),
                Operator::LtEq => Bound::High(v.clone(), true),
                _ => return None,
            };
            Some(vec![bound])
        }
        Expr::Between(between) if !between.negated && is_first(&between.expr) => {
            match (&*between.low, &*between.high) {
                (Expr::Literal(low, _), Expr::Literal(high, _)) => Some(vec![
                    Bound::Low(low.clone()),
                    Bound::High(high.clone(), true),
                ]),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The range of the first primary-key column the scan's `filters` restrict the table to (the
/// highest lower bound and the lowest upper bound), as values of the column's type; `None`
/// without one, or when a bound does not convert to the column's type exactly or is null.
fn key_range(def: &TableDef, filters: &[Expr]) -> Option<KeyAccess> {
    let (mut low, mut high): (Option<ScalarValue>, Option<(ScalarValue, bool)>) = (None, None);
    for bound in filters.iter().filter_map(|f| key_bounds(def, f)).flatten() {
        match bound {
            Bound::Low(v) => {
                if low
                    .as_ref()
                    .is_none_or(|old| v.partial_cmp(old) == Some(Ordering::Greater))
                {
                    low = Some(v);
                }
            }
            Bound::High(v, inclusive) => {
                let tighter = match &high {
                    None => true,
                    Some((old, old_inclusive)) => match v.partial_cmp(old) {
                        Some(Ordering::Less) => true,
                        Some(Ordering::Equal) => *old_inclusive && !inclusive,
                        _ => false,
                    },
                };
                if tighter {
                    high = Some((v, inclusive));
                }
            }
        }
    }
    if low.is_none() && high.is_none() {
        return None;
    }
    let field = def.schema().field(def.primary_key[0]).clone();
    if !stored_order_is_sql_order(field.data_type()) {
        return None;
    }
    let convert = |v: ScalarValue| -> Option<ArrayRef> {
        if v.is_null() {
            return None;
        }
        exact_cast(&v.to_array().ok()?, field.data_type())
    };
    let low = match low {
        Some(v) => Some(convert(v)?),
        None => None,
    };
    let high = match high {
        Some((v, inclusive)) => Some((convert(v)?, inclusive)),
        None => None,
    };
    Some(KeyAccess::Range { low, high })
}

/// A materialized view as a DataFusion table: its contents at the statement's epoch.
struct EddyView {
    def: Arc<ViewDef>,
    schema: SchemaRef,
    state: Arc<crate::dataflow::ViewState>,
    engine: Arc<Engine>,
    read: Arc<ReadState>,
}

impl fmt::Debug for EddyView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EddyView({})", self.def.name)
    }
}

#[async_trait]
impl TableProvider for EddyView {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let epoch = self.read.view_epoch(&self.engine);
        let batches = self
            .state
            .scan(epoch)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        memory_scan(batches, &self.schema, projection)
    }
}

/// A scan of in-memory batches, spread over two partitions so both cores work on big scans.
fn memory_scan(
    batches: Vec<RecordBatch>,
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let mut partitions = vec![Vec::new(), Vec::new()];
    for (i, b) in batches.into_iter().enumerate() {
        partitions[i % 2].push(b);
    }
    Ok(MemorySourceConfig::try_new_exec(
        &partitions,
        schema.clone(),
        projection.cloned(),
    )?)
}
