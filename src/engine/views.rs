//! Statements about views: `CREATE [MATERIALIZED] VIEW`, `DROP … VIEW`, `SHOW MATERIALIZED
//! VIEWS`, `EXPLAIN CREATE MATERIALIZED VIEW`, and how a query that reads views gets its read
//! point.
//!
//! A materialized view is compiled here: planned by DataFusion in the session's context, then
//! optimized and lowered by [`crate::sql::lower`] into a dataflow that the runtime backfills and
//! keeps current.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, Statement, Visit, VisitMut, Visitor, VisitorMut};

use super::Output;
use super::session::{Session, output_schema, rows_output, single_text_schema};
use crate::catalog::{Catalog, ViewDef};
use crate::dataflow::spec::NodeKind;
use crate::dataflow::{DataflowSpec, Input, ViewStatus};
use crate::error::{Result, sqlstate};
use crate::sql;
use crate::sql::lower::Resolved;
use crate::types::ObjectId;
use crate::unsupported;

/// A compiled materialized view.
pub(super) struct CompiledView {
    pub spec: DataflowSpec,
    /// The view's schema (its column names).
    pub schema: SchemaRef,
    pub columns: Vec<String>,
    pub depends_on: Vec<ObjectId>,
}

impl Session {
    /// Ends `spec` with an [`NodeKind::EmitOnWindowClose`], after checking that some output
    /// column has a watermark (else no row would ever be final).
    fn emit_on_window_close(&self, spec: &mut DataflowSpec) -> Result<()> {
        if !self.view_has_watermark(spec)? {
            return Err(unsupported!(
                "EMIT ON WINDOW CLOSE is not supported on a view none of whose columns has a watermark: output a window bound (window_start, window_end) or the event-time column of a table with WATERMARK FOR, grouped or carried through unchanged"
            ));
        }
        end_with_emit_on_window_close(spec);
        Ok(())
    }

    /// Whether an output column of `spec` has a watermark once its sources have one (an
    /// upstream view's watermarked columns count even before it has run an epoch).
    fn view_has_watermark(&self, spec: &DataflowSpec) -> Result<bool> {
        let columns = crate::dataflow::watermark::watermarked_columns(spec, &|id| {
            self.engine
                .view_state(id)
                .map(|v| v.watermarked.clone())
                .unwrap_or_default()
        })?;
        Ok(columns.contains(&true))
    }

    /// Plans `query` and lowers it into a dataflow; `names` overrides the column names.
    pub(super) async fn compile_view(
        &self,
        query: &ast::Query,
        names: &[String],
        emit_on_window_close: bool,
    ) -> Result<CompiledView> {
        let stmt = Statement::Query(Box::new(query.clone()));
        let plan = self.plan(&stmt).await?;
        if !plan.get_parameter_types()?.is_empty() {
            return Err(crate::err!(
                sqlstate::UNDEFINED_OBJECT,
                "a materialized view cannot have parameters"
            ));
        }
        let columns = view_columns(
            &output_schema(&stmt, &plan),
            names,
            "CREATE MATERIALIZED VIEW",
        )?;
        let state = self.ctx.state();
        let optimized = sql::lower::optimize(plan, &state)?;
        tracing::debug!(plan = %optimized.display_indent(), "view plan");
        let catalog = self.engine.catalog();
        let resolve = |t: &TableReference| -> Option<Resolved> {
            if t.schema().is_some_and(|s| s != "public") {
                return None;
            }
            let name = t.table();
            if let Some(table) = catalog.table(name) {
                return Some(Resolved {
                    input: Input::Table(table.id),
                    append_only: table.append_only,
                    watermark_column: table
                        .watermark
                        .as_ref()
                        .and_then(|w| table.column_index(&w.column)),
                });
            }
            catalog
                .view(name)
                .filter(|v| v.materialized)
                .map(|v| Resolved {
                    input: Input::View(v.id),
                    append_only: false,
                    watermark_column: None,
                })
        };
        let mut spec = sql::lower::lower(&optimized, &resolve)?;
        if emit_on_window_close {
            self.emit_on_window_close(&mut spec)?;
        }
        let out = &spec.nodes[spec.output()].schema;
        if out.fields().len() != columns.len() {
            return Err(crate::internal!(
                "the dataflow has {} columns, the query {}",
                out.fields().len(),
                columns.len()
            ));
        }
        let schema = Arc::new(Schema::new(
            out.fields()
                .iter()
                .zip(&columns)
                .map(|(f, name)| Field::new(name, f.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let depends_on = spec
            .inputs()
            .into_iter()
            .map(|i| match i {
                Input::Table(id) | Input::View(id) => id,
            })
            .collect();
        Ok(CompiledView {
            spec,
            schema,
            columns,
            depends_on,
        })
    }

    /// Re-plans a stored materialized view (at start-up).
    pub async fn plan_view(&mut self, view: &ViewDef) -> Result<(DataflowSpec, SchemaRef)> {
        let query = parse_query(&view.query)?;
        let mut compiled = self.compile_view(&query, &view.columns, false).await?;
        if view.emit_on_window_close {
            // Checked when the view was created; an upstream view's watermarks are not known
            // yet at start-up.
            end_with_emit_on_window_close(&mut compiled.spec);
        }
        Ok((compiled.spec, compiled.schema))
    }

    pub(super) async fn create_view(
        &mut self,
        cv: &ast::CreateView,
        emit_on_window_close: bool,
    ) -> Result<Output> {
        let tag = if cv.materialized {
            "CREATE MATERIALIZED VIEW"
        } else {
            "CREATE VIEW"
        };
        if !self.ddl_allowed() {
            return Err(super::session::ddl_in_transaction(tag));
        }
        if cv.or_replace || cv.or_alter {
            return Err(unsupported!("CREATE OR REPLACE VIEW"));
        }
        // Accepted by the parser, but nothing here would honour them.
        if cv.temporary {
            return Err(unsupported!(
                "{} TEMPORARY: views are permanent (DROP them when done)",
                tag
            ));
        }
        if !matches!(cv.options, ast::CreateTableOptions::None) {
            return Err(unsupported!(
                "{tag} options ({}): views take none",
                cv.options
            ));
        }
        if cv.comment.is_some() || cv.to.is_some() || !cv.cluster_by.is_empty() {
            return Err(unsupported!(
                "{tag} with COMMENT, TO or CLUSTER BY (dialects other than PostgreSQL's)"
            ));
        }
        let name = sql::table_name(&cv.name)?;
        let names: Vec<String> = cv
            .columns
            .iter()
            .map(|c| sql::normalize_ident(&c.name))
            .collect();
        let referenced = referenced_objects(&cv.query, &self.engine.catalog());
        let created = if cv.materialized {
            let compiled = self
                .compile_view(&cv.query, &names, emit_on_window_close)
                .await?;
            let mut depends_on = compiled.depends_on;
            for id in referenced {
                if !depends_on.contains(&id) {
                    depends_on.push(id);
                }
            }
            let def = ViewDef {
                id: 0,
                name: name.clone(),
                materialized: true,
                query: cv.query.to_string(),
                columns: compiled.columns,
                column_types: column_types(&compiled.schema),
                depends_on,
                emit_on_window_close,
            };
            self.engine
                .create_view(
                    def,
                    Some((compiled.spec, compiled.schema)),
                    cv.if_not_exists,
                    self.backfill_notices(),
                )
                .await?
        } else {
            // A plain view is stored as text and inlined into the queries that read it; planning
            // it now checks that it is valid and gives its column names.
            let stmt = Statement::Query(cv.query.clone());
            let plan = self.plan(&stmt).await?;
            let schema = output_schema(&stmt, &plan);
            let columns = view_columns(&schema, &names, "CREATE VIEW")?;
            let def = ViewDef {
                id: 0,
                name: name.clone(),
                materialized: false,
                query: cv.query.to_string(),
                columns,
                column_types: column_types(&schema),
                depends_on: referenced,
                emit_on_window_close: false,
            };
            self.engine
                .create_view(def, None, cv.if_not_exists, None)
                .await?
        };
        if created {
            Ok(Output::Command { tag, rows: None })
        } else {
            Ok(Output::Warning {
                tag,
                message: format!("relation \"{name}\" already exists, skipping"),
            })
        }
    }

    /// `DROP TABLE | VIEW | MATERIALIZED VIEW [IF EXISTS] names [CASCADE]`.
    pub(super) async fn drop_objects(
        &mut self,
        object_type: ast::ObjectType,
        names: &[ast::ObjectName],
        if_exists: bool,
        cascade: bool,
    ) -> Result<Output> {
        let (tag, kind) = match object_type {
            ast::ObjectType::Table => ("DROP TABLE", "table"),
            ast::ObjectType::MaterializedView => ("DROP MATERIALIZED VIEW", "materialized view"),
            ast::ObjectType::View => ("DROP VIEW", "view"),
            other => return Err(unsupported!("DROP {other}")),
        };
        if !self.ddl_allowed() {
            return Err(super::session::ddl_in_transaction(tag));
        }
        let mut skipped = Vec::new();
        for name in names {
            let name = sql::table_name(name)?;
            let catalog = self.engine.catalog();
            let exists = match object_type {
                ast::ObjectType::Table => catalog.table(&name).is_some(),
                ast::ObjectType::MaterializedView => {
                    catalog.view(&name).is_some_and(|v| v.materialized)
                }
                _ => catalog.view(&name).is_some_and(|v| !v.materialized),
            };
            if !exists {
                if let Some(other) = catalog
                    .view(&name)
                    .map(|v| v.kind())
                    .or_else(|| catalog.table(&name).map(|_| "table"))
                {
                    return Err(crate::err!(
                        sqlstate::WRONG_OBJECT_TYPE,
                        "\"{name}\" is not a {kind}"
                    )
                    .with_hint(format!(
                        "Use DROP {} to remove a {other}.",
                        other.to_uppercase()
                    )));
                }
                if if_exists {
                    skipped.push(format!("{kind} \"{name}\" does not exist, skipping"));
                    continue;
                }
                return Err(crate::err!(
                    sqlstate::UNDEFINED_TABLE,
                    "{kind} \"{name}\" does not exist"
                ));
            }
            match object_type {
                ast::ObjectType::Table => self.engine.drop_table(&name, cascade).await?,
                ast::ObjectType::MaterializedView => {
                    self.engine.drop_view(&name, true, cascade).await?
                }
                _ => self.engine.drop_view(&name, false, cascade).await?,
            }
        }
        if !skipped.is_empty() {
            return Ok(Output::Warning {
                tag,
                message: skipped.join("\n"),
            });
        }
        Ok(Output::Command { tag, rows: None })
    }

    /// `SHOW MATERIALIZED VIEWS [LIKE pattern]`: name, rows, status; `like`: the pattern, and
    /// whether ILIKE.
    pub(super) fn show_materialized_views(&self, like: Option<&(String, bool)>) -> Result<Output> {
        let catalog = self.engine.catalog();
        let mut names = Vec::new();
        let mut rows = Vec::new();
        let mut status = Vec::new();
        for view in catalog.views().into_iter().filter(|v| v.materialized) {
            names.push(view.name.clone());
            match self.engine.view_state(view.id) {
                Some(state) => {
                    rows.push(Some(state.rows() as i64));
                    status.push(match state.status() {
                        ViewStatus::Running => "running".to_string(),
                        ViewStatus::Failed(epoch, e) => {
                            format!("failed at epoch {}: {}", epoch.0, e.message)
                        }
                    });
                }
                None => {
                    rows.push(None);
                    status.push("starting".to_string());
                }
            }
        }
        let schema = show_views_schema();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(StringArray::from(status)),
        ];
        if let Some((pattern, case_insensitive)) = like {
            use datafusion::arrow::array::Scalar;
            use datafusion::arrow::compute::kernels::comparison;
            let pattern = Scalar::new(StringArray::from(vec![pattern.as_str()]));
            let shown = if *case_insensitive {
                comparison::ilike(&columns[0], &pattern)?
            } else {
                comparison::like(&columns[0], &pattern)?
            };
            columns = columns
                .iter()
                .map(|c| datafusion::arrow::compute::filter(c, &shown))
                .collect::<std::result::Result<_, _>>()?;
        }
        Ok(rows_output(schema, columns, "SHOW"))
    }

    /// `EXPLAIN ANALYZE MATERIALIZED VIEW v`: its running dataflow, one operator per line with
    /// the rows it received and emitted, the time it worked and the state it holds, since the
    /// dataflow started (this server run); then the epoch it is at.
    pub(super) fn explain_analyze_view(&self, name: &str) -> Result<Output> {
        let catalog = self.engine.catalog();
        let view = catalog
            .view(name)
            .filter(|v| v.materialized)
            .ok_or_else(|| {
                crate::err!(
                    crate::error::sqlstate::UNDEFINED_TABLE,
                    "materialized view \"{name}\" does not exist"
                )
            })?;
        let state = self.engine.view_state(view.id).ok_or_else(|| {
            crate::err!(
                crate::error::sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "materialized view \"{name}\" is not running yet"
            )
        })?;
        let plan = state.plan.lock().clone();
        let stats = state.operators.lock().clone();
        let Some(plan) = plan else {
            return Err(crate::err!(
                crate::error::sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "materialized view \"{name}\" has no running dataflow"
            ));
        };
        let by_node = |id: usize| stats.iter().find(|s| s.node == id);
        let sink = stats.last().filter(|s| s.node >= plan.nodes.len());
        let mut lines = vec![format!(
            "Materialize: {}{}",
            view.name,
            sink.map(annotate).unwrap_or_default()
        )];
        lines.extend(
            plan.explain_with(&|input| input_name(&catalog, input), &|id| {
                by_node(id).map(annotate).unwrap_or_default()
            })
            .into_iter()
            .map(|l| format!("  {l}")),
        );
        let committed = self.engine.runtime().epochs().committed();
        lines.push(format!(
            "Epoch {} (log written up to {}); {} rows in the view",
            committed.epoch.0,
            self.engine.durable_lsn().0,
            state.rows()
        ));
        Ok(rows_output(
            single_text_schema("QUERY PLAN"),
            vec![Arc::new(StringArray::from(lines))],
            "EXPLAIN",
        ))
    }

    /// `EXPLAIN CREATE MATERIALIZED VIEW …`: the dataflow, one operator per line.
    pub(super) async fn explain_create_view(
        &mut self,
        cv: &ast::CreateView,
        emit_on_window_close: bool,
    ) -> Result<Output> {
        if !cv.materialized {
            return Err(unsupported!("EXPLAIN CREATE VIEW (plain views)"));
        }
        let names: Vec<String> = cv
            .columns
            .iter()
            .map(|c| sql::normalize_ident(&c.name))
            .collect();
        let compiled = self
            .compile_view(&cv.query, &names, emit_on_window_close)
            .await?;
        let catalog = self.engine.catalog();
        let name_of = |input: Input| input_name(&catalog, input);
        let mut lines = vec![format!("Materialize: {}", sql::table_name(&cv.name)?)];
        lines.extend(
            compiled
                .spec
                .explain(&name_of)
                .into_iter()
                .map(|l| format!("  {l}")),
        );
        let schema = single_text_schema("QUERY PLAN");
        Ok(rows_output(
            schema,
            vec![Arc::new(StringArray::from(lines))],
            "EXPLAIN",
        ))
    }

    /// Whether `stmt` reads a materialized view (so it must read at a committed epoch).
    pub(super) fn reads_views(&self, stmt: &Statement) -> bool {
        let catalog = self.engine.catalog();
        if !catalog.views().iter().any(|v| v.materialized) {
            return false;
        }
        struct Relations<'a> {
            catalog: &'a crate::catalog::Catalog,
            found: bool,
        }
        impl Visitor for Relations<'_> {
            type Break = ();
            fn pre_visit_relation(&mut self, name: &ast::ObjectName) -> std::ops::ControlFlow<()> {
                if let Ok(name) = sql::table_name(name)
                    && self.catalog.view(&name).is_some()
                {
                    self.found = true;
                    return std::ops::ControlFlow::Break(());
                }
                std::ops::ControlFlow::Continue(())
            }
        }
        let mut v = Relations {
            catalog: &catalog,
            found: false,
        };
        let _ = stmt.visit(&mut v);
        v.found
    }
}

/// A view's column names: the query's, renamed by the CREATE statement's column list.
fn view_columns(named: &SchemaRef, names: &[String], what: &str) -> Result<Vec<String>> {
    let mut columns: Vec<String> = named.fields().iter().map(|f| f.name().clone()).collect();
    if names.len() > columns.len() {
        return Err(crate::err!(
            sqlstate::SYNTAX_ERROR,
            "{what} specifies more column names than columns"
        ));
    }
    for (i, n) in names.iter().enumerate() {
        columns[i] = n.clone();
    }
    let mut seen = HashSet::new();
    for c in &columns {
        if !seen.insert(c.as_str()) {
            return Err(crate::err!(
                sqlstate::DUPLICATE_COLUMN,
                "column \"{c}\" specified more than once"
            ));
        }
    }
    Ok(columns)
}

/// A dataflow input as EXPLAIN names it.
pub(super) fn input_name(catalog: &crate::catalog::Catalog, input: Input) -> String {
    match input {
        Input::Table(id) => catalog
            .table_by_id(id)
            .map_or(format!("table {id}"), |t| format!("table {}", t.name)),
        Input::View(id) => catalog.view_by_id(id).map_or(format!("view {id}"), |v| {
            format!("materialized view {}", v.name)
        }),
    }
}

/// A running view's operators: how each is described, the operators it reads (ids), and its
/// counters (the Materialize sink last, described as such).
pub(super) fn operator_rows(
    engine: &super::Engine,
    view: &crate::catalog::ViewDef,
) -> Vec<(String, Vec<usize>, crate::dataflow::runtime::OperatorStats)> {
    let Some(state) = engine.view_state(view.id) else {
        return Vec::new();
    };
    let catalog = engine.catalog();
    let plan = state.plan.lock().clone();
    let stats = state.operators.lock().clone();
    stats
        .into_iter()
        .map(|s| match &plan {
            Some(plan) if s.node < plan.nodes.len() => (
                plan.describe(s.node, &|input| input_name(&catalog, input)),
                plan.nodes[s.node].inputs.clone(),
                s,
            ),
            _ => (
                format!("Materialize: {}", view.name),
                plan.iter().map(|p| p.output()).collect(),
                s,
            ),
        })
        .collect()
}

/// `rows in 3, out 3, busy 0.21 ms, 12 epochs; state 2 rows (0.5 kB); 3 shards`.
fn annotate(s: &crate::dataflow::runtime::OperatorStats) -> String {
    let mut text = format!(
        " (rows in {}, out {}; busy {:.2} ms over {} epochs",
        s.rows_in,
        s.rows_out,
        s.busy.as_secs_f64() * 1000.0,
        s.epochs
    );
    if s.state_rows > 0 || s.state_bytes > 0 {
        text.push_str(&format!(
            "; state {} rows, {}",
            s.state_rows,
            super::pg_functions::size_pretty(s.state_bytes as i64)
        ));
    }
    if s.shards > 1 {
        text.push_str(&format!("; {} shards", s.shards));
    }
    text.push(')');
    text
}

/// The SQL types of a view's output columns (`text` for an Arrow type without one).
fn column_types(schema: &datafusion::arrow::datatypes::Schema) -> Vec<crate::types::SqlType> {
    schema
        .fields()
        .iter()
        .map(|f| {
            crate::types::SqlType::from_arrow(f.data_type()).unwrap_or(crate::types::SqlType::Text)
        })
        .collect()
}

/// Tables and views a query names (before plain views are inlined).
fn referenced_objects(query: &ast::Query, catalog: &Catalog) -> Vec<ObjectId> {
    struct Names<'a> {
        catalog: &'a Catalog,
        ids: Vec<ObjectId>,
    }
    impl Visitor for Names<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, name: &ast::ObjectName) -> ControlFlow<()> {
            if let Ok(name) = sql::table_name(name) {
                let id = self
                    .catalog
                    .table(&name)
                    .map(|t| t.id)
                    .or_else(|| self.catalog.view(&name).map(|v| v.id));
                if let Some(id) = id
                    && !self.ids.contains(&id)
                {
                    self.ids.push(id);
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names {
        catalog,
        ids: Vec::new(),
    };
    let _ = query.visit(&mut names);
    names.ids
}

/// Replaces every plain view named in `stmt` by its query, as a derived table under the
/// view's name (or the alias the query gave it), repeatedly for views on views.
pub(super) fn inline_views(stmt: &Statement, catalog: &Catalog) -> Result<Statement> {
    if !catalog.views().iter().any(|v| !v.materialized) {
        return Ok(stmt.clone());
    }
    struct Inliner<'a> {
        catalog: &'a Catalog,
        changed: bool,
        error: Option<crate::error::Error>,
    }
    impl VisitorMut for Inliner<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut ast::TableFactor) -> ControlFlow<()> {
            let ast::TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } = factor
            else {
                return ControlFlow::Continue(());
            };
            let Ok(table) = sql::table_name(name) else {
                return ControlFlow::Continue(());
            };
            let Some(view) = self.catalog.view(&table).filter(|v| !v.materialized) else {
                return ControlFlow::Continue(());
            };
            let query = match parse_query(&view.query) {
                Ok(q) => q,
                Err(e) => {
                    self.error = Some(e);
                    return ControlFlow::Break(());
                }
            };
            let mut alias = alias.clone().unwrap_or(ast::TableAlias {
                explicit: true,
                name: ast::Ident::with_quote('"', view.name.clone()),
                columns: vec![],
                at: None,
            });
            if alias.columns.is_empty() {
                alias.columns = view
                    .columns
                    .iter()
                    .map(|c| ast::TableAliasColumnDef {
                        name: ast::Ident::with_quote('"', c.clone()),
                        data_type: None,
                    })
                    .collect();
            }
            *factor = ast::TableFactor::Derived {
                lateral: false,
                subquery: Box::new(query),
                alias: Some(alias),
                sample: None,
            };
            self.changed = true;
            ControlFlow::Continue(())
        }
    }
    let mut stmt = stmt.clone();
    for _ in 0..64 {
        let mut inliner = Inliner {
            catalog,
            changed: false,
            error: None,
        };
        let _ = VisitMut::visit(&mut stmt, &mut inliner);
        if let Some(e) = inliner.error {
            return Err(e);
        }
        if !inliner.changed {
            return Ok(stmt);
        }
    }
    Err(crate::err!(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        "views are nested more than 64 levels deep"
    ))
}

/// Appends the [`NodeKind::EmitOnWindowClose`] node to `spec`.
fn end_with_emit_on_window_close(spec: &mut DataflowSpec) {
    let output = spec.output();
    let schema = spec.nodes[output].schema.clone();
    spec.add(NodeKind::EmitOnWindowClose, vec![output], schema);
    // Only final rows come out: the contents spill like an append-only view's.
    spec.append_only = true;
}

/// Columns of `SHOW MATERIALIZED VIEWS`.
pub(super) fn show_views_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, true),
        Field::new("status", DataType::Utf8, false),
    ]))
}

/// Parses a stored view query.
fn parse_query(text: &str) -> Result<ast::Query> {
    let parsed = sql::parse_all(text)?;
    match parsed.into_iter().next().map(|p| p.stmt) {
        Some(Statement::Query(q)) => Ok(*q),
        _ => Err(crate::err!(
            sqlstate::DATA_CORRUPTED,
            "stored view query is not a query: {text}"
        )),
    }
}
