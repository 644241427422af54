//! [`Session`]: one client connection's view of the engine — settings, the open transaction,
//! and statement execution. The server's only way into the engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{self, Statement};

use super::provider::{self, ReadState};
use super::{Engine, dml};
use crate::catalog::TableDef;
use crate::error::{Error, Result, sqlstate};
use crate::sql::{self, Parsed};
use crate::storage::log::Durable;
use crate::types::{ObjectId, ZBatch};
use crate::unsupported;

/// What a statement produced, for the server to encode.
pub enum Output {
    /// Rows; `tag` is the command tag ("SELECT", "SHOW", "EXPLAIN").
    Rows {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        tag: &'static str,
    },
    /// A command; `rows` is appended to the tag ("INSERT 0 3", "DELETE 2").
    Command {
        tag: &'static str,
        rows: Option<usize>,
    },
    /// BEGIN: the session is now in a transaction block.
    TransactionStart,
    /// COMMIT or ROLLBACK (the tag says which actually happened).
    TransactionEnd { tag: &'static str },
    /// COPY … FROM STDIN: the server now reads CopyData and calls [`Session::copy_rows`].
    CopyIn(CopyIn),
    /// COPY table | (query) TO STDOUT: the rows to send as CopyData in `format`.
    CopyOut {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        format: CopyFormat,
    },
    /// A warning (PostgreSQL sends these as NOTICE/WARNING) plus a command tag; each line of
    /// `message` is a notice of its own (`DROP TABLE IF EXISTS a, b` skipping both).
    Warning { tag: &'static str, message: String },
    /// `DEALLOCATE name` (`None`: `DEALLOCATE ALL`): the server drops the extended protocol's
    /// prepared statements, which it keeps.
    Deallocate { name: Option<String> },
    /// SUBSCRIBE: the server streams the subscription until it ends — as DataRows, or as COPY
    /// data in `copy`'s format for `COPY (SUBSCRIBE …) TO STDOUT`.
    Subscribe {
        subscription: Box<crate::subscribe::Subscription>,
        copy: Option<CopyFormat>,
    },
}

/// `COPY t FROM STDIN` in progress.
#[derive(Debug, Clone)]
pub struct CopyIn {
    pub table: Arc<TableDef>,
    /// Table column indices, in the order the data has them.
    pub columns: Vec<usize>,
    pub format: CopyFormat,
}

/// COPY options; the default is PostgreSQL's text format.
#[derive(Debug, Clone)]
pub struct CopyFormat {
    pub csv: bool,
    pub header: bool,
    pub delimiter: u8,
    pub null: String,
    pub quote: u8,
    pub escape: u8,
}

impl Default for CopyFormat {
    fn default() -> Self {
        CopyFormat {
            csv: false,
            header: false,
            delimiter: b'\t',
            null: "\\N".into(),
            quote: b'"',
            escape: b'"',
        }
    }
}

/// A statement parsed and described for the extended protocol.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub parsed: Parsed,
    /// Types of `$1…$n` as inferred (None: unknown, sent as text).
    pub param_types: Vec<Option<DataType>>,
    /// Columns of the result, when the statement returns rows.
    pub schema: Option<SchemaRef>,
}

struct Transaction {
    /// An error happened: everything but ROLLBACK/COMMIT fails with 25P02.
    failed: bool,
    /// The implicit transaction of a multi-statement simple query (no BEGIN): committed when
    /// the query's last statement succeeds, discarded when one fails.
    implicit: bool,
    /// The settings when it began: a ROLLBACK (or a failed transaction) goes back to them.
    settings_at_begin: BTreeMap<String, String>,
    /// What `SET LOCAL` (and the transaction's access mode) changed, with the values from
    /// before: they come back when it ends, however it ends.
    /// (None: it had no value.)
    local: BTreeMap<String, Option<String>>,
}

/// Session settings with PostgreSQL's names and defaults.
pub(super) fn default_settings() -> BTreeMap<String, String> {
    [
        ("application_name", ""),
        ("backfill_progress_interval", "1s"),
        ("default_transaction_read_only", "off"),
        ("client_encoding", "UTF8"),
        ("client_min_messages", "notice"),
        ("datestyle", "ISO, MDY"),
        ("default_transaction_isolation", "read committed"),
        ("extra_float_digits", "1"),
        ("integer_datetimes", "on"),
        ("intervalstyle", "postgres"),
        ("is_superuser", "on"),
        ("lc_messages", "C"),
        ("max_identifier_length", "63"),
        ("search_path", "public"),
        ("server_encoding", "UTF8"),
        ("server_version", crate::SERVER_VERSION),
        ("server_version_num", crate::SERVER_VERSION_NUM),
        ("standard_conforming_strings", "on"),
        ("statement_timeout", "0"),
        ("timezone", "UTC"),
        ("transaction_isolation", "read committed"),
        ("transaction_read_only", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Attempts of an UPDATE or DELETE outside a transaction block that concurrent commits make
/// fail with 40001: the last one runs alone (see the `write_lock`).
const UPDATE_ATTEMPTS: u32 = 3;

pub(super) const READ_ONLY_SETTINGS: &[&str] = &[
    "server_version",
    "server_version_num",
    "server_encoding",
    "integer_datetimes",
    "max_identifier_length",
    "is_superuser",
    "session_authorization",
];

/// The startup parameter under which the server passes the client's address to
/// [`Session::new`] (not a PostgreSQL parameter; clients cannot set it).
pub const CLIENT_ADDRESS: &str = "eddy.client_address";

pub struct Session {
    pub(super) engine: Arc<Engine>,
    pub(super) ctx: SessionContext,
    read: Arc<ReadState>,
    settings: super::pg_catalog::Settings,
    /// The settings the session started with (defaults and the startup packet's): what RESET
    /// goes back to.
    initial_settings: BTreeMap<String, String>,
    tx: Option<Transaction>,
    /// Who is connected (`user@address`) and the backend pid, for system views.
    pub(super) client: String,
    /// The session's role (the startup `user`).
    pub(super) user: String,
    pub(super) pid: i32,
    /// Open cursors (DECLARE), closed at the end of the transaction.
    pub(super) cursors: HashMap<String, super::subscribe::Cursor>,
    /// NOTICEs for the client from the last statements (see [`Session::take_notices`]).
    notices: Vec<String>,
    /// Where NOTICEs go while a statement runs (a backfill's progress), when the connection
    /// can send them then.
    live_notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Its row in pg_stat_activity (removed when the session is dropped).
    backend: Arc<super::activity::Backend>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.engine.backends().remove(&self.backend);
    }
}

impl Session {
    /// A session for a connection: `startup` holds the startup parameters (user, database,
    /// application_name), `backend_pid` the process id reported to the client.
    pub fn new(
        engine: Arc<Engine>,
        startup: &HashMap<String, String>,
        backend_pid: i32,
    ) -> Result<Session> {
        let read = Arc::new(ReadState::default());
        let user = startup
            .get("user")
            .cloned()
            .unwrap_or_else(|| "eddy".into());
        let mut initial = default_settings();
        if let Some(app) = startup.get("application_name") {
            initial.insert("application_name".into(), app.clone());
        }
        let superuser = engine.catalog().role(&user).is_some_and(|r| r.superuser);
        initial.insert("session_authorization".into(), user.clone());
        initial.insert(
            "is_superuser".into(),
            if superuser { "on" } else { "off" }.into(),
        );
        let initial_settings = initial.clone();
        let settings = Arc::new(parking_lot::Mutex::new(initial));
        let ctx = provider::session_context(engine.clone(), read.clone(), settings.clone())?;
        super::pg_functions::register_session_functions(&ctx, &engine, &user, backend_pid);
        if let Some(clock) = engine.manual_clock() {
            ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(
                super::clock::ManualNow::new(clock),
            ));
        }
        let client = match startup.get(CLIENT_ADDRESS) {
            Some(addr) => format!("{user}@{addr}"),
            None => user.clone(),
        };
        let backend = engine.backends().register(super::activity::Backend::new(
            backend_pid,
            &user,
            startup.get(CLIENT_ADDRESS).and_then(|a| a.parse().ok()),
            settings.clone(),
        ));
        Ok(Session {
            engine,
            ctx,
            read,
            settings,
            initial_settings,
            tx: None,
            client,
            user,
            pid: backend_pid,
            cursors: HashMap::new(),
            notices: Vec::new(),
            live_notices: None,
            backend,
        })
    }

    /// Its row in pg_stat_activity, which the server keeps up to date.
    pub fn backend(&self) -> &Arc<super::activity::Backend> {
        &self.backend
    }

    /// Its state between statements, in pg_stat_activity's words.
    pub fn backend_state(&self) -> &'static str {
        match &self.tx {
            None => "idle",
            Some(tx) if tx.failed => "idle in transaction (aborted)",
            Some(_) => "idle in transaction",
        }
    }

    /// The NOTICEs the statements run since the last call have for the client (late rows a
    /// write refused).
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// Sends the NOTICEs of statements still running to `notices` (None: keep them for
    /// [`Session::take_notices`]).
    pub fn set_live_notices(
        &mut self,
        notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) {
        self.live_notices = notices;
    }

    /// Where a `CREATE MATERIALIZED VIEW` run now reports its backfill's progress: the live
    /// NOTICEs every `backfill_progress_interval` (0 turns them off).
    pub(super) fn backfill_notices(&self) -> Option<super::BackfillNotices> {
        let notices = self.live_notices.clone()?;
        let ms = self
            .settings
            .lock()
            .get("backfill_progress_interval")
            .and_then(|v| parse_duration_ms(v))
            .unwrap_or(1000);
        (ms > 0).then(|| super::BackfillNotices {
            interval: std::time::Duration::from_millis(ms),
            notices,
        })
    }

    /// Notes what a write did that the client should hear of; returns how many rows were
    /// refused as late.
    fn note_appended(&mut self, appended: super::Appended) -> (Option<Durable>, usize) {
        let late = appended.late.iter().map(|l| l.rows as usize).sum();
        self.notices
            .extend(appended.late.iter().map(super::LateRows::notice));
        (appended.durable, late)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Sets a setting's value for this session as if it were its default (server-wide
    /// defaults that come from the command line).
    pub fn set_default(&mut self, name: &str, value: String) {
        self.settings.lock().insert(name.to_string(), value);
    }

    pub fn setting(&self, name: &str) -> Option<String> {
        self.settings.lock().get(&name.to_lowercase()).cloned()
    }

    /// Parses and describes one statement for the extended protocol.
    pub async fn prepare(&mut self, parsed: Parsed) -> Result<Prepared> {
        if parsed.advance_clock.is_some() || parsed.source.is_some() {
            let schema = matches!(parsed.source, Some(sql::source::SourceStatement::Show))
                .then(super::sources::show_sources_schema);
            return Ok(Prepared {
                parsed,
                param_types: vec![],
                schema,
            });
        }
        if parsed.explain_analyze_view.is_some() {
            return Ok(Prepared {
                parsed,
                param_types: vec![],
                schema: Some(single_text_schema("QUERY PLAN")),
            });
        }
        if let (Statement::Query(query), Some(options)) = (&parsed.stmt, &parsed.subscribe) {
            let schema = self.subscribe_schema(query, options).await?;
            return Ok(Prepared {
                parsed,
                param_types: vec![],
                schema: Some(schema),
            });
        }
        let (param_types, schema) = match &parsed.stmt {
            Statement::Fetch { .. } => (vec![], Some(self.fetch_schema(&parsed.stmt)?)),
            Statement::Copy { .. } | Statement::Declare { .. } if parsed.subscribe.is_some() => {
                (vec![], None)
            }
            Statement::Declare { stmts } => {
                match stmts.first().and_then(|d| d.for_query.as_deref()) {
                    // The cursor's query takes the parameters.
                    Some(query) => {
                        let select = super::subscribe::with_query(&parsed, query);
                        (param_types_of(&self.plan(&select.stmt).await?)?, None)
                    }
                    None => (vec![], None),
                }
            }
            Statement::Copy {
                source: ast::CopySource::Table { table_name, .. },
                to: false,
                ..
            } => {
                // Refused at Parse already: tokio-postgres's copy_in pipelines a Sync behind
                // its Execute, so a COPY refused at Execute leaves it out of step (two
                // ReadyForQuery) and it closes the connection.
                self.table_to_write(&sql::table_name(table_name)?)?;
                (vec![], None)
            }
            Statement::Explain { statement, .. }
                if matches!(statement.as_ref(), Statement::CreateView(_)) =>
            {
                (vec![], Some(single_text_schema("QUERY PLAN")))
            }
            Statement::ShowViews { .. } => (vec![], Some(super::views::show_views_schema())),
            Statement::Query(_) | Statement::Explain { .. } => {
                // Logical planning reads no rows: no snapshot needed.
                let plan = self.plan(&parsed.stmt).await?;
                let params = param_types_of(&plan)?;
                let schema = output_schema(&parsed.stmt, &plan);
                (params, Some(schema))
            }
            Statement::Insert(insert) => (dml::insert_param_types(self, insert).await?, None),
            Statement::Update(_) | Statement::Delete(_) => {
                (dml::param_types(self, &parsed.stmt).await?, None)
            }
            Statement::ShowVariable { variable } => {
                let name = show_name(variable);
                if name == "all" {
                    (vec![], Some(show_all_schema()))
                } else {
                    (vec![], Some(single_text_schema(&name)))
                }
            }
            Statement::ShowTables { .. } => (vec![], Some(single_text_schema("name"))),
            Statement::ShowCreate { .. } => (vec![], Some(show_create_schema())),
            _ => (vec![], None),
        };
        // Parameters where Eddy has no value to bind them to: refused at Parse, which drivers
        // report, rather than at Bind with a count mismatch.
        if sql::placeholders(&parsed.text) > param_types.len() {
            return Err(unsupported!(
                "parameters ($1…) in {}: write the values into the statement",
                if parsed.subscribe.is_some() {
                    "SUBSCRIBE".to_string()
                } else {
                    statement_kind(&parsed.stmt)
                }
            ));
        }
        Ok(Prepared {
            parsed,
            param_types,
            schema,
        })
    }

    /// Runs one statement with bound parameter values.
    pub async fn execute(&mut self, parsed: &Parsed, params: &[ScalarValue]) -> Result<Output> {
        let ends_tx = matches!(
            parsed.stmt,
            Statement::Commit { .. } | Statement::Rollback { .. }
        );
        if self.tx.as_ref().is_some_and(|t| t.failed) && !ends_tx {
            return Err(Error::new(
                sqlstate::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let result = self.execute_inner(parsed, params).await;
        self.read.release();
        if result.is_err()
            && let Some(tx) = self.tx.as_mut()
        {
            tx.failed = true;
        }
        result
    }

    /// Marks the open transaction failed (used by the server when an error happens outside
    /// `execute`, e.g. while decoding parameters or COPY data).
    pub fn fail_transaction(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.failed = true;
        }
    }

    async fn execute_inner(&mut self, parsed: &Parsed, params: &[ScalarValue]) -> Result<Output> {
        if let Some(command) = writes(&parsed.stmt)
            && self.read_only()
        {
            return Err(crate::err!(
                sqlstate::READ_ONLY_SQL_TRANSACTION,
                "cannot execute {command} in a read-only transaction"
            ));
        }
        if let Some(options) = &parsed.subscribe {
            return self.execute_subscribe(parsed, options).await;
        }
        if let Some(step) = parsed.advance_clock {
            return self.advance_clock(step).await;
        }
        if let Some(name) = &parsed.explain_analyze_view {
            return self.explain_analyze_view(name);
        }
        if let Some(stmt) = &parsed.source {
            if !matches!(stmt, sql::source::SourceStatement::Show) && !self.ddl_allowed() {
                let tag = match stmt {
                    sql::source::SourceStatement::Create { .. } => "CREATE SOURCE",
                    _ => "DROP SOURCE",
                };
                return Err(ddl_in_transaction(tag));
            }
            return self.engine.source_statement(stmt).await;
        }
        match &parsed.stmt {
            Statement::Query(_) => self.run_query_with(parsed, params).await,
            Statement::Declare { .. } => self.declare(parsed, params).await,
            Statement::Fetch { .. } => self.fetch(parsed).await,
            Statement::Close { cursor } => self.close_cursor(cursor),
            Statement::CreateView(cv) => self.create_view(cv, parsed.emit_on_window_close).await,
            Statement::ShowViews {
                materialized,
                show_options,
                ..
            } => {
                if !*materialized {
                    return Err(unsupported!("SHOW VIEWS (plain views)"));
                }
                let pattern = show_like(show_options)?;
                self.show_materialized_views(pattern.as_ref())
            }
            Statement::Explain { statement, .. } => {
                if let Statement::CreateView(cv) = statement.as_ref() {
                    return self
                        .explain_create_view(cv, parsed.emit_on_window_close)
                        .await;
                }
                self.pin_read_point(&parsed.stmt).await?;
                let plan = self.plan_with_params(&parsed.stmt, params).await?;
                let batches = self.ctx.execute_logical_plan(plan).await?.collect().await?;
                Ok(explain_output(&batches))
            }
            Statement::Insert(insert) => {
                let (table, change) = dml::insert(self, insert, params).await?;
                let n = change.num_rows();
                // Late rows are not inserted (a NOTICE says so).
                let late = self.write(table, change).await?;
                Ok(Output::Command {
                    tag: "INSERT",
                    rows: Some(n - late),
                })
            }
            Statement::Update(_) | Statement::Delete(_) => {
                let tag = if matches!(parsed.stmt, Statement::Update(_)) {
                    "UPDATE"
                } else {
                    "DELETE"
                };
                // Outside a transaction block, UPDATE and DELETE run concurrently: each reads
                // the latest rows and commits; one whose rows a concurrent commit changed
                // first fails to commit (its deletes no longer match) and runs again on the
                // newer rows, the last time alone, so it never fails with 40001 nor overwrites
                // the other's update. The next may start while this one's record syncs.
                let engine = self.engine.clone();
                let autocommit = self.tx.is_none();
                if autocommit {
                    engine.admit().await?;
                }
                let mut attempt = 1;
                let (durable, n) = loop {
                    let (_shared, _alone) = match (autocommit, attempt < UPDATE_ATTEMPTS) {
                        (false, _) => (None, None),
                        (true, true) => (Some(engine.write_lock.read().await), None),
                        (true, false) => (None, Some(engine.write_lock.write().await)),
                    };
                    let (table, change, n) =
                        dml::update_or_delete(self, &parsed.stmt, params).await?;
                    match self.stage(table, change) {
                        Ok((durable, _)) => break (durable, n),
                        Err(e)
                            if autocommit
                                && e.sqlstate == sqlstate::SERIALIZATION_FAILURE
                                && attempt < UPDATE_ATTEMPTS =>
                        {
                            attempt += 1;
                        }
                        Err(e) => return Err(e),
                    }
                };
                if let Some(durable) = durable {
                    durable.wait().await?;
                }
                Ok(Output::Command { tag, rows: Some(n) })
            }
            Statement::CreateTable(ct) => {
                if !self.ddl_allowed() {
                    return Err(ddl_in_transaction("CREATE TABLE"));
                }
                let (def, options) = sql::ddl::table_def(parsed, ct)?;
                self.validate_watermark(&def).await?;
                let created = self
                    .engine
                    .create_table(def, ct.if_not_exists, options.keep_late_rows)
                    .await?;
                if created {
                    Ok(Output::Command {
                        tag: "CREATE TABLE",
                        rows: None,
                    })
                } else {
                    Ok(Output::Warning {
                        tag: "CREATE TABLE",
                        message: format!(
                            "relation \"{}\" already exists, skipping",
                            sql::table_name(&ct.name)?
                        ),
                    })
                }
            }
            Statement::CreateRole(create) => {
                if !self.ddl_allowed() {
                    return Err(ddl_in_transaction("CREATE ROLE"));
                }
                self.create_role(create, parsed.create_user)
            }
            Statement::AlterRole { name, operation } => {
                if !self.ddl_allowed() {
                    return Err(ddl_in_transaction("ALTER ROLE"));
                }
                self.alter_role(name, operation)
            }
            Statement::Drop {
                object_type: ast::ObjectType::Role,
                if_exists,
                names,
                ..
            } => {
                if !self.ddl_allowed() {
                    return Err(ddl_in_transaction("DROP ROLE"));
                }
                self.drop_roles(names, *if_exists)
            }
            Statement::Drop {
                object_type,
                if_exists,
                names,
                cascade,
                ..
            } => {
                self.drop_objects(*object_type, names, *if_exists, *cascade)
                    .await
            }
            Statement::StartTransaction { modes, .. } => {
                match self.tx.as_mut() {
                    // BEGIN inside a multi-statement query makes its block explicit.
                    Some(tx) if tx.implicit => tx.implicit = false,
                    Some(_) => {
                        return Ok(Output::Warning {
                            tag: "BEGIN",
                            message: "there is already a transaction in progress".into(),
                        });
                    }
                    None => {
                        self.tx = Some(self.new_transaction(false));
                        self.read.clear_overlay();
                    }
                }
                if let Some(read_only) = access_mode(modes) {
                    self.set_local("transaction_read_only", on_off(read_only));
                }
                Ok(Output::TransactionStart)
            }
            Statement::Commit { .. } => {
                if self.tx.is_none() {
                    return Ok(Output::Warning {
                        tag: "COMMIT",
                        message: "there is no transaction in progress".into(),
                    });
                }
                let tag = self.commit_transaction().await?;
                Ok(Output::TransactionEnd { tag })
            }
            Statement::Rollback {
                savepoint: Some(_), ..
            } => Err(unsupported!("savepoints (ROLLBACK TO SAVEPOINT)")),
            Statement::Rollback { .. } => {
                self.cursors.clear();
                let Some(tx) = self.tx.take() else {
                    return Ok(Output::Warning {
                        tag: "ROLLBACK",
                        message: "there is no transaction in progress".into(),
                    });
                };
                *self.settings.lock() = tx.settings_at_begin;
                self.read.clear_overlay();
                Ok(Output::TransactionEnd { tag: "ROLLBACK" })
            }
            Statement::Set(set) => self.set(set),
            Statement::ShowVariable { variable } => self.show(variable),
            Statement::ShowTables { .. } => {
                let names: Vec<String> = self
                    .engine
                    .catalog()
                    .tables()
                    .map(|t| t.name.clone())
                    .collect();
                let schema = single_text_schema("name");
                Ok(rows_output(
                    schema,
                    vec![Arc::new(StringArray::from(names))],
                    "SHOW",
                ))
            }
            Statement::ShowCreate { obj_type, obj_name } => {
                let name = sql::table_name(obj_name)?;
                let (name, text) = match obj_type {
                    ast::ShowCreateObject::Table => {
                        let def = self.table(&name)?;
                        (def.name.clone(), def.create_sql())
                    }
                    ast::ShowCreateObject::View => {
                        let def = self.engine.catalog().view(&name).cloned().ok_or_else(|| {
                            crate::err!(sqlstate::UNDEFINED_TABLE, "view \"{name}\" does not exist")
                        })?;
                        (def.name.clone(), def.create_sql())
                    }
                    other => return Err(unsupported!("SHOW CREATE {other}")),
                };
                let schema = show_create_schema();
                Ok(rows_output(
                    schema,
                    vec![
                        Arc::new(StringArray::from(vec![name])),
                        Arc::new(StringArray::from(vec![text])),
                    ],
                    "SHOW",
                ))
            }
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                values,
            } => {
                if *to {
                    return self.copy_to(source, target, options, legacy_options).await;
                }
                if !matches!(target, ast::CopyTarget::Stdin) {
                    return Err(Error::new(
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        "COPY FROM a file or program is not allowed; use COPY … FROM STDIN",
                    ));
                }
                if !values.is_empty() {
                    return Err(unsupported!("inline COPY data in the query string"));
                }
                let ast::CopySource::Table {
                    table_name,
                    columns,
                } = source
                else {
                    return Err(unsupported!("COPY (query) FROM"));
                };
                let name = sql::table_name(table_name)?;
                let table = self.table_to_write(&name)?;
                let columns = target_columns(&table, columns)?;
                let format = copy_format(options, legacy_options)?;
                Ok(Output::CopyIn(CopyIn {
                    table,
                    columns,
                    format,
                }))
            }
            Statement::Discard { object_type } => {
                let tag = match object_type {
                    ast::DiscardObject::ALL => {
                        if self.tx.as_ref().is_some_and(|t| !t.implicit) {
                            return Err(crate::err!(
                                sqlstate::ACTIVE_SQL_TRANSACTION,
                                "DISCARD ALL cannot run inside a transaction block"
                            ));
                        }
                        self.cursors.clear();
                        *self.settings.lock() = self.initial_settings.clone();
                        "DISCARD ALL"
                    }
                    // Eddy caches no plans across statements, and has no sequences or
                    // temporary objects.
                    ast::DiscardObject::PLANS => "DISCARD PLANS",
                    ast::DiscardObject::SEQUENCES => "DISCARD SEQUENCES",
                    ast::DiscardObject::TEMP => "DISCARD TEMP",
                };
                Ok(Output::Command { tag, rows: None })
            }
            Statement::Reset(reset) => {
                match &reset.reset {
                    ast::Reset::ALL => {
                        let mut settings = self.settings.lock();
                        for (name, value) in &self.initial_settings {
                            if !READ_ONLY_SETTINGS.contains(&name.as_str())
                                && name != "transaction_read_only"
                            {
                                settings.insert(name.clone(), value.clone());
                            }
                        }
                    }
                    ast::Reset::ConfigurationParameter(name) => {
                        let name = name.to_string().to_lowercase();
                        let value = match self.initial_settings.get(&name) {
                            Some(v) => v.clone(),
                            None => "default".into(),
                        };
                        apply_setting(&mut self.settings.lock(), name, value)?;
                    }
                }
                Ok(Output::Command {
                    tag: "RESET",
                    rows: None,
                })
            }
            Statement::Deallocate { name, .. } => Ok(Output::Deallocate {
                name: (name.quote_style.is_some() || !name.value.eq_ignore_ascii_case("all"))
                    .then(|| name.value.clone()),
            }),
            // No session can LISTEN (0A000), so there is never a channel to stop listening to:
            // poolers send `UNLISTEN *` when they reset a connection.
            Statement::UNLISTEN { .. } => Ok(Output::Command {
                tag: "UNLISTEN",
                rows: None,
            }),
            other => Err(unsupported!("statement {}", statement_kind(other))),
        }
    }

    /// `COPY table [(columns)] | (query) TO STDOUT`: the rows of the table (or view) or query
    /// as of this statement, in text or CSV.
    async fn copy_to(
        &mut self,
        source: &ast::CopySource,
        target: &ast::CopyTarget,
        options: &[ast::CopyOption],
        legacy_options: &[ast::CopyLegacyOption],
    ) -> Result<Output> {
        if !matches!(target, ast::CopyTarget::Stdout) {
            return Err(Error::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "COPY TO a file or program is not allowed; use COPY … TO STDOUT (psql's \\copy … \
                 TO 'file' does that on the client)",
            ));
        }
        let format = copy_format(options, legacy_options)?;
        let query = match source {
            ast::CopySource::Table {
                table_name,
                columns,
            } => {
                let columns: Vec<String> = columns.iter().map(ToString::to_string).collect();
                let columns = if columns.is_empty() {
                    "*".to_string()
                } else {
                    columns.join(", ")
                };
                format!("SELECT {columns} FROM {table_name}")
            }
            ast::CopySource::Query(query) => query.to_string(),
        };
        let parsed = sql::parse_all(&query)?
            .pop()
            .ok_or_else(|| crate::internal!("COPY's query parsed to nothing"))?;
        match self.run_query(&parsed).await? {
            Output::Rows { schema, stream, .. } => Ok(Output::CopyOut {
                schema,
                stream,
                format,
            }),
            _ => Err(crate::internal!("COPY's query returned no rows")),
        }
    }

    /// Runs a SELECT to completion.
    pub(super) async fn run_query(&mut self, parsed: &Parsed) -> Result<Output> {
        self.run_query_with(parsed, &[]).await
    }

    pub(super) async fn run_query_with(
        &mut self,
        parsed: &Parsed,
        params: &[ScalarValue],
    ) -> Result<Output> {
        let Statement::Query(query) = &parsed.stmt else {
            return Err(crate::internal!("not a query"));
        };
        if query_has_locking(query) {
            return Err(unsupported!(
                "SELECT … FOR UPDATE/SHARE: Eddy has no row locks (reads see a consistent snapshot)"
            ));
        }
        self.pin_read_point(&parsed.stmt).await?;
        let plan = self.plan_with_params(&parsed.stmt, params).await?;
        let schema = output_schema(&parsed.stmt, &plan);
        // Run to completion here, not while the server drains the stream: a
        // CancelRequest interrupts only the statement's execution call.
        let run = async {
            let frame = self.ctx.execute_logical_plan(plan).await?;
            frame.collect().await.map_err(Error::from)
        };
        let batches = match self.statement_timeout() {
            // Dropping the plan's future stops its tasks.
            Some(limit) => tokio::time::timeout(limit, run).await.map_err(|_| {
                crate::err!(
                    sqlstate::QUERY_CANCELED,
                    "canceling statement due to statement timeout"
                )
            })??,
            None => run.await?,
        };
        let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
            schema.clone(),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ));
        let stream = rename_stream(stream, schema.clone());
        Ok(Output::Rows {
            schema,
            stream,
            tag: "SELECT",
        })
    }

    /// A statement with a SUBSCRIBE clause: `SUBSCRIBE …`, `COPY (SUBSCRIBE …) TO STDOUT`,
    /// `DECLARE c CURSOR FOR SUBSCRIBE …`.
    async fn execute_subscribe(
        &mut self,
        parsed: &Parsed,
        options: &sql::Subscribe,
    ) -> Result<Output> {
        match &parsed.stmt {
            Statement::Declare { .. } => self.declare(parsed, &[]).await,
            Statement::Copy {
                to,
                target,
                options: copy_options,
                legacy_options,
                ..
            } => {
                if !*to {
                    return Err(crate::err!(
                        sqlstate::SYNTAX_ERROR,
                        "COPY (SUBSCRIBE …) works only TO STDOUT"
                    ));
                }
                if !matches!(target, ast::CopyTarget::Stdout) {
                    return Err(Error::new(
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        "COPY TO a file or program is not allowed; use COPY … TO STDOUT",
                    ));
                }
                let format = copy_format(copy_options, legacy_options)?;
                let query = super::subscribe::subscribe_query(&parsed.stmt)?;
                let subscription = Box::new(self.subscribe(query, options).await?);
                Ok(Output::Subscribe {
                    subscription,
                    copy: Some(format),
                })
            }
            Statement::Query(query) => {
                let subscription = Box::new(self.subscribe(query, options).await?);
                Ok(Output::Subscribe {
                    subscription,
                    copy: None,
                })
            }
            _ => Err(crate::internal!("SUBSCRIBE inside an unexpected statement")),
        }
    }

    /// Starts the implicit transaction of a multi-statement simple query (PostgreSQL runs such
    /// a query as one transaction unless it contains BEGIN/COMMIT).
    pub fn begin_implicit(&mut self) {
        if self.tx.is_none() {
            self.tx = Some(self.new_transaction(true));
            self.read.clear_overlay();
        }
    }

    fn new_transaction(&self, implicit: bool) -> Transaction {
        let mut settings = self.settings.lock();
        let settings_at_begin = settings.clone();
        // Its access mode starts as the default one.
        let read_only = settings_at_begin
            .get("default_transaction_read_only")
            .cloned()
            .unwrap_or_else(|| "off".into());
        let old = settings.insert("transaction_read_only".into(), read_only);
        Transaction {
            failed: false,
            implicit,
            settings_at_begin,
            local: BTreeMap::from([("transaction_read_only".to_string(), old)]),
        }
    }

    /// Sets `name` until the open transaction ends (`SET LOCAL`).
    fn set_local(&mut self, name: &str, value: &str) {
        let Some(tx) = self.tx.as_mut() else { return };
        let old = self
            .settings
            .lock()
            .insert(name.to_string(), value.to_string());
        tx.local.entry(name.to_string()).or_insert(old);
    }

    /// Ends the settings of transaction `tx`: a committed one keeps its plain SETs, and every
    /// SET LOCAL goes; a rolled back one keeps nothing.
    fn end_settings(&self, tx: Transaction, committed: bool) {
        let mut settings = self.settings.lock();
        if committed {
            for (name, old) in tx.local {
                match old {
                    Some(old) => settings.insert(name, old),
                    None => settings.remove(&name),
                };
            }
        } else {
            *settings = tx.settings_at_begin;
        }
    }

    /// Whether writes are refused now: in a READ ONLY transaction, or by
    /// `default_transaction_read_only` outside one.
    fn read_only(&self) -> bool {
        let name = if self.tx.is_some() {
            "transaction_read_only"
        } else {
            "default_transaction_read_only"
        };
        self.settings.lock().get(name).is_some_and(|v| v == "on")
    }

    /// Ends the implicit transaction, if one is still open: commits unless a statement failed.
    pub async fn end_implicit(&mut self) -> Result<()> {
        if self.tx.as_ref().is_some_and(|t| t.implicit) {
            self.commit_transaction().await?;
        }
        Ok(())
    }

    /// Ends the open transaction: commits its writes, or discards them if it failed. Returns
    /// the tag of what happened.
    async fn commit_transaction(&mut self) -> Result<&'static str> {
        self.cursors.clear();
        let Some(tx) = self.tx.take() else {
            return Ok("COMMIT");
        };
        let overlay = self.read.take_overlay();
        let failed = tx.failed;
        self.end_settings(tx, !failed);
        if failed {
            return Ok("ROLLBACK");
        }
        let catalog = self.engine.catalog();
        let mut changes = Vec::new();
        for (id, batches) in overlay {
            let Some(def) = catalog.table_by_id(id) else {
                return Err(crate::err!(
                    sqlstate::UNDEFINED_TABLE,
                    "a table written by this transaction was dropped"
                ));
            };
            changes.push((id, ZBatch::consolidate(&batches, &def.schema())?));
        }
        let engine = self.engine.clone();
        if !changes.is_empty() {
            engine.admit().await?;
        }
        // Shared with autocommit UPDATE/DELETE (one that fails against this commit runs again,
        // its last attempt alone); held until the record is queued, not until it is durable.
        let appended = {
            let _shared = engine.write_lock.read().await;
            engine.append(changes)?
        };
        if let (Some(durable), _) = self.note_appended(appended) {
            durable.wait().await?;
        }
        Ok("COMMIT")
    }

    /// Whether DDL may run: outside a transaction block, or in an implicit one (DDL itself is
    /// not transactional).
    /// Sets the read point of a query: at a committed epoch when it reads views (waiting, bounded,
    /// for the epoch that covers this session's writes), else at the durable LSN.
    async fn pin_read_point(&mut self, stmt: &Statement) -> Result<()> {
        if self.reads_views(stmt) {
            let pin = self.engine.pin_views(self.view_wait_timeout()).await?;
            self.read.read_at(pin);
        } else {
            self.read.read_durable(&self.engine);
        }
        Ok(())
    }

    /// `statement_timeout`, when set (not 0): how long a query may run.
    fn statement_timeout(&self) -> Option<std::time::Duration> {
        self.settings
            .lock()
            .get("statement_timeout")
            .and_then(|v| parse_duration_ms(v))
            .filter(|ms| *ms > 0)
            .map(std::time::Duration::from_millis)
    }

    /// How long a read of views waits for the dataflows to catch up with the latest write:
    /// `statement_timeout` when set, else 10 s.
    pub(super) fn view_wait_timeout(&self) -> std::time::Duration {
        let ms = self
            .settings
            .lock()
            .get("statement_timeout")
            .and_then(|v| parse_duration_ms(v))
            .filter(|ms| *ms > 0)
            .unwrap_or(10_000);
        std::time::Duration::from_millis(ms)
    }

    /// `ADVANCE CLOCK`: moves the manual clock and waits until the epoch at the new time is
    /// durable (reads after it wait for views to reach it, as after a write).
    async fn advance_clock(&mut self, step: sql::temporal::ClockStep) -> Result<Output> {
        if !self.ddl_allowed() {
            return Err(crate::err!(
                sqlstate::ACTIVE_SQL_TRANSACTION,
                "ADVANCE CLOCK cannot run inside a transaction block"
            ));
        }
        let to = match step {
            sql::temporal::ClockStep::To(t) => t,
            sql::temporal::ClockStep::By(d) => self.engine.clock_now().saturating_add(d),
        };
        // The clock never goes back: a time past what timestamps can show would stop it there.
        const LAST_MICROS: i64 = 253_402_300_799_999_999; // 9999-12-31 23:59:59.999999 UTC
        if to > LAST_MICROS {
            return Err(crate::err!(
                sqlstate::DATETIME_FIELD_OVERFLOW,
                "ADVANCE CLOCK would pass 9999-12-31: timestamp out of range"
            ));
        }
        self.engine.advance_clock(to).await?;
        Ok(Output::Command {
            tag: "ADVANCE CLOCK",
            rows: None,
        })
    }

    pub(super) fn ddl_allowed(&self) -> bool {
        self.tx.as_ref().is_none_or(|t| t.implicit)
    }

    /// Validates `WATERMARK FOR col AS expr` by planning the expression over the table.
    async fn validate_watermark(&mut self, def: &TableDef) -> Result<()> {
        let Some(w) = &def.watermark else {
            return Ok(());
        };
        let schema = def.schema();
        let df_schema = datafusion::common::DFSchema::try_from(schema.as_ref().clone())?;
        let expr = self.ctx.parse_sql_expr(&w.expr, &df_schema).map_err(|e| {
            let e = Error::from(e);
            Error::new(
                e.sqlstate,
                format!("invalid WATERMARK expression: {}", e.message),
            )
        })?;
        let (_, field) = datafusion::logical_expr::ExprSchemable::to_field(&expr, &df_schema)
            .map_err(Error::from)?;
        let ty = field.data_type().clone();
        let col_ty = schema
            .field_with_name(&w.column)
            .map_err(Error::from)?
            .data_type()
            .clone();
        let ok = matches!(
            (&ty, &col_ty),
            (DataType::Timestamp(_, _), DataType::Timestamp(_, _))
                | (DataType::Date32, DataType::Date32)
        ) || (matches!(col_ty, DataType::Date32)
            && matches!(ty, DataType::Timestamp(_, _)));
        if !ok {
            return Err(crate::err!(
                sqlstate::DATATYPE_MISMATCH,
                "WATERMARK expression must have the type of column \"{}\", not {ty}",
                w.column
            ));
        }
        if !def.append_only {
            // Rows behind the watermark are refused; updates and deletes could move event
            // times behind it too, or take back rows windows already closed over.
            return Err(crate::err!(
                sqlstate::INVALID_TABLE_DEFINITION,
                "WATERMARK FOR needs an APPEND ONLY table"
            )
            .with_hint("Add APPEND ONLY after the column list."));
        }
        Ok(())
    }

    pub(super) fn table(&self, name: &str) -> Result<Arc<TableDef>> {
        self.engine.catalog().table(name).cloned().ok_or_else(|| {
            crate::err!(
                sqlstate::UNDEFINED_TABLE,
                "relation \"{name}\" does not exist"
            )
        })
    }

    /// Table `name`, to be written by INSERT, UPDATE, DELETE or COPY (a source's tables are
    /// written only by the source).
    pub(super) fn table_to_write(&self, name: &str) -> Result<Arc<TableDef>> {
        if let Some(view) = self.engine.catalog().view(name) {
            // PostgreSQL's words: views change only through their tables.
            return Err(if view.materialized {
                crate::err!(
                    sqlstate::WRONG_OBJECT_TYPE,
                    "cannot change materialized view \"{name}\""
                )
            } else {
                crate::err!(sqlstate::WRONG_OBJECT_TYPE, "cannot change view \"{name}\"")
            }
            .with_hint("A view changes when the tables it reads do."));
        }
        let table = self.table(name)?;
        self.engine.check_writable(&table)?;
        Ok(table)
    }

    pub(super) fn read_state(&self) -> &Arc<ReadState> {
        &self.read
    }

    pub(super) async fn plan(&self, stmt: &Statement) -> Result<LogicalPlan> {
        sql::check_supported(stmt)?;
        let state = self.ctx.state();
        let stmt = super::views::inline_views(stmt, &self.engine.catalog())?;
        let stmt = sql::windows::rewrite(&stmt)?;
        let table_functions = state.table_functions();
        let stmt = sql::postgres_forms::rewrite(&stmt, &|name| table_functions.contains_key(name));
        let plan_with = |stmt: Statement| {
            state.statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                stmt,
            )))
        };
        match plan_with(sql::dedupe_output_names(&stmt, false)).await {
            // `SELECT t.id, t.*` inside a derived table: only now known to repeat a name.
            Err(e) if e.to_string().contains("unique expression names") => {
                Ok(plan_with(sql::dedupe_output_names(&stmt, true)).await?)
            }
            planned => Ok(planned?),
        }
    }

    pub(super) async fn plan_with_params(
        &self,
        stmt: &Statement,
        params: &[ScalarValue],
    ) -> Result<LogicalPlan> {
        let plan = self.plan(stmt).await?;
        if params.is_empty() {
            return Ok(plan);
        }
        let types = plan.get_parameter_types()?;
        let mut values = params.to_vec();
        for (i, v) in values.iter_mut().enumerate() {
            if let Some(Some(ty)) = types.get(&format!("${}", i + 1))
                && v.data_type() != *ty
            {
                *v = super::convert::cast_scalar(v, ty)?;
            }
        }
        Ok(plan.with_param_values(values)?)
    }

    pub(super) async fn query_batches(
        &self,
        stmt: &Statement,
        params: &[ScalarValue],
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let plan = self.plan_with_params(stmt, params).await?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let batches = self.ctx.execute_logical_plan(plan).await?.collect().await?;
        Ok((schema, batches))
    }

    /// Applies a change now (autocommit) or adds it to the open transaction. Returns how many
    /// of its rows were refused as late (in a transaction, that is known at COMMIT).
    async fn write(&mut self, table: ObjectId, change: ZBatch) -> Result<usize> {
        if self.tx.is_none() && change.num_rows() > 0 {
            self.engine.admit().await?;
        }
        let (durable, late) = self.stage(table, change)?;
        if let Some(durable) = durable {
            durable.wait().await?;
        }
        Ok(late)
    }

    /// [`Session::write`] without waiting: in a transaction block the change joins the
    /// transaction; outside one it is committed and its record queued to the log, and the
    /// caller waits for it to be durable.
    fn stage(&mut self, table: ObjectId, change: ZBatch) -> Result<(Option<Durable>, usize)> {
        if change.num_rows() == 0 {
            return Ok((None, 0));
        }
        if self.tx.is_some() {
            dml::check_in_transaction(self, table, &change)?;
            self.read.push_overlay(table, change);
            Ok((None, 0))
        } else {
            let appended = self.engine.append(vec![(table, change)])?;
            Ok(self.note_appended(appended))
        }
    }

    /// Converts one chunk of COPY text columns (in `copy.columns` order) into table rows.
    /// On a bad value returns the row (within the chunk) and the error.
    pub fn copy_rows(
        &self,
        copy: &CopyIn,
        columns: Vec<StringArray>,
    ) -> std::result::Result<RecordBatch, (usize, usize, Error)> {
        dml::copy_rows(copy, columns)
    }

    /// Writes the rows of a finished COPY; returns the row count.
    pub async fn copy_commit(&mut self, copy: &CopyIn, batches: Vec<RecordBatch>) -> Result<usize> {
        if self.tx.as_ref().is_some_and(|t| t.failed) {
            return Err(Error::new(
                sqlstate::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let schema = copy.table.schema();
        let data = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        let n = data.num_rows();
        let result = self.write(copy.table.id, ZBatch::uniform(data, 1)).await;
        if result.is_err() {
            self.fail_transaction();
        }
        result.map(|late| n - late)
    }

    fn set(&mut self, set: &ast::Set) -> Result<Output> {
        let mut local = false;
        let (name, value) = match set {
            ast::Set::SingleAssignment {
                variable,
                values,
                scope,
                ..
            } => {
                local = matches!(scope, Some(ast::ContextModifier::Local));
                let name = variable.to_string().to_lowercase();
                let value = values
                    .iter()
                    .map(setting_value)
                    .collect::<Vec<_>>()
                    .join(", ");
                (name, value)
            }
            ast::Set::SetTimeZone { value, .. } => ("timezone".to_string(), setting_value(value)),
            ast::Set::SetNames { charset_name, .. } => {
                ("client_encoding".to_string(), charset_name.value.clone())
            }
            ast::Set::SetTransaction { modes, session, .. } => {
                // Isolation levels are accepted: every transaction reads one snapshot.
                if let Some(read_only) = access_mode(modes) {
                    if *session {
                        self.settings.lock().insert(
                            "default_transaction_read_only".into(),
                            on_off(read_only).into(),
                        );
                    } else if self.tx.is_some() {
                        self.set_local("transaction_read_only", on_off(read_only));
                    } else {
                        return Ok(Output::Warning {
                            tag: "SET",
                            message: "SET TRANSACTION can only be used in transaction blocks"
                                .into(),
                        });
                    }
                }
                return Ok(Output::Command {
                    tag: "SET",
                    rows: None,
                });
            }
            other => return Err(unsupported!("{other}")),
        };
        // SET x TO DEFAULT: the value the connection started with, as RESET x.
        let value = match self.initial_settings.get(&name) {
            Some(initial) if value.eq_ignore_ascii_case("default") => initial.clone(),
            _ => value,
        };
        if local {
            if self.tx.is_none() {
                return Ok(Output::Warning {
                    tag: "SET",
                    message: "SET LOCAL can only be used in transaction blocks".into(),
                });
            }
            let mut changed = self.settings.lock().clone();
            apply_setting(&mut changed, name.clone(), value)?;
            let value = changed.remove(&name).unwrap_or_default();
            self.set_local(&name, &value);
        } else {
            apply_setting(&mut self.settings.lock(), name.clone(), value)?;
            // A plain SET after a SET LOCAL of the same setting outlives the transaction.
            if let Some(tx) = self.tx.as_mut() {
                tx.local.remove(&name);
            }
        }
        Ok(Output::Command {
            tag: "SET",
            rows: None,
        })
    }

    fn show(&self, variable: &[ast::Ident]) -> Result<Output> {
        let name = show_name(variable);
        if name == "all" {
            let schema = show_all_schema();
            let settings = self.settings.lock();
            let names: Vec<&str> = settings.keys().map(|s| s.as_str()).collect();
            let values: Vec<&str> = settings.values().map(|s| s.as_str()).collect();
            let descriptions: Vec<&str> = names
                .iter()
                .map(|n| super::pg_catalog::setting_description(n))
                .collect();
            return Ok(rows_output(
                schema,
                vec![
                    Arc::new(StringArray::from(names)),
                    Arc::new(StringArray::from(values)),
                    Arc::new(StringArray::from(descriptions)),
                ],
                "SHOW",
            ));
        }
        let settings = self.settings.lock();
        let value = settings.get(&name).ok_or_else(|| {
            crate::err!(
                sqlstate::UNDEFINED_OBJECT,
                "unrecognized configuration parameter \"{name}\""
            )
        })?;
        let schema = single_text_schema(&name);
        Ok(rows_output(
            schema,
            vec![Arc::new(StringArray::from(vec![value.clone()]))],
            "SHOW",
        ))
    }
}

/// Sets `name` to `value` (`DEFAULT` for its default) in `settings` after checking that it
/// may be set to that: `SET` and `set_config()`.
pub(super) fn apply_setting(
    settings: &mut BTreeMap<String, String>,
    name: String,
    value: String,
) -> Result<()> {
    let value = if value.eq_ignore_ascii_case("default") {
        default_settings().get(&name).cloned().unwrap_or_default()
    } else {
        value
    };
    if READ_ONLY_SETTINGS.contains(&name.as_str()) {
        return Err(crate::err!(
            "55P02",
            "parameter \"{name}\" cannot be changed"
        ));
    }
    match name.as_str() {
        "timezone" => {
            let v = value.to_ascii_uppercase();
            if !matches!(
                v.as_str(),
                "UTC" | "GMT" | "ETC/UTC" | "Z" | "ZULU" | "+00:00" | "0" | "UCT"
            ) {
                return Err(unsupported!(
                    "time zone \"{value}\": Eddy's sessions run in UTC"
                ));
            }
        }
        "backfill_progress_interval" | "statement_timeout" => {
            if parse_duration_ms(&value).is_none() {
                return Err(crate::err!(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "invalid value for parameter \"{name}\": \"{value}\" (a duration such as '1s', '500ms' or 0 for none)"
                ));
            }
        }
        "client_encoding" => {
            let v = value.to_ascii_uppercase().replace(['-', '_'], "");
            if v != "UTF8" && v != "UNICODE" {
                return Err(unsupported!(
                    "client_encoding \"{value}\": only UTF8 is supported"
                ));
            }
        }
        _ => {
            if !settings.contains_key(&name)
                && !name.contains('.')
                && !KNOWN_SETTINGS.contains(&name.as_str())
            {
                return Err(crate::err!(
                    sqlstate::UNDEFINED_OBJECT,
                    "unrecognized configuration parameter \"{name}\""
                ));
            }
        }
    }
    settings.insert(name, value);
    Ok(())
}

/// Settings that may be SET though they have no default row above (accepted and remembered).
const KNOWN_SETTINGS: &[&str] = &[
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "synchronous_commit",
    "bytea_output",
    "row_security",
    "jit",
    "geqo",
    "work_mem",
    "maintenance_work_mem",
    "enable_seqscan",
    "enable_indexscan",
    "xmloption",
    "default_transaction_read_only",
    "default_transaction_deferrable",
    "session_replication_role",
    "check_function_bodies",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "search_path",
];

fn setting_value(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        ast::Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// The setting a SHOW names (its result column too): `SHOW TIME ZONE` is `timezone`,
/// `SHOW myapp.x` is `myapp.x`.
fn show_name(variable: &[ast::Ident]) -> String {
    let words: Vec<String> = variable.iter().map(|i| i.value.to_lowercase()).collect();
    match words.join(" ").as_str() {
        "transaction isolation level" => "transaction_isolation".into(),
        "time zone" => "timezone".into(),
        _ => words.join("."),
    }
}

/// Parses a PostgreSQL duration setting (`5000`, `5s`, `100ms`, `1min`) into milliseconds.
fn parse_duration_ms(v: &str) -> Option<u64> {
    let v = v.trim().trim_matches('\'');
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    // PostgreSQL's limit for a duration setting: an int of milliseconds.
    n.checked_mul(factor).filter(|ms| *ms <= i32::MAX as u64)
}

/// A SHOW's `LIKE 'pattern'` / `ILIKE` (pattern, case-insensitive), or none; other filters
/// get 0A000.
pub(super) fn show_like(options: &ast::ShowStatementOptions) -> Result<Option<(String, bool)>> {
    if options.show_in.is_some()
        || options.starts_with.is_some()
        || options.limit.is_some()
        || options.limit_from.is_some()
    {
        return Err(unsupported!("SHOW … IN, STARTS WITH or LIMIT"));
    }
    let filter = match &options.filter_position {
        None => return Ok(None),
        Some(
            ast::ShowStatementFilterPosition::Infix(f)
            | ast::ShowStatementFilterPosition::Suffix(f),
        ) => f,
    };
    match filter {
        ast::ShowStatementFilter::Like(p) => Ok(Some((p.clone(), false))),
        ast::ShowStatementFilter::ILike(p) => Ok(Some((p.clone(), true))),
        other => Err(unsupported!("SHOW … {other}: only LIKE and ILIKE")),
    }
}

/// The access mode among a transaction's modes (READ ONLY: true), if one is given.
fn access_mode(modes: &[ast::TransactionMode]) -> Option<bool> {
    modes.iter().rev().find_map(|m| match m {
        ast::TransactionMode::AccessMode(ast::TransactionAccessMode::ReadOnly) => Some(true),
        ast::TransactionMode::AccessMode(ast::TransactionAccessMode::ReadWrite) => Some(false),
        ast::TransactionMode::IsolationLevel(_) => None,
    })
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// The command a statement that writes (data or the catalog) is, for 25006 in a read-only
/// transaction; None for one that only reads.
fn writes(stmt: &Statement) -> Option<&'static str> {
    Some(match stmt {
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Copy { to: false, .. } => "COPY FROM",
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateView(_) => "CREATE VIEW",
        Statement::Drop { .. } => "DROP",
        Statement::CreateRole(_) => "CREATE ROLE",
        Statement::AlterRole { .. } => "ALTER ROLE",
        Statement::CreateIndex(_) => "CREATE INDEX",
        Statement::AlterTable(_) => "ALTER TABLE",
        _ => return None,
    })
}

pub(super) fn ddl_in_transaction(what: &str) -> Error {
    unsupported!("{what} inside a transaction block")
}

/// `SHOW ALL`'s columns, as in PostgreSQL.
fn show_all_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("setting", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
    ]))
}

pub(super) fn single_text_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]))
}

fn show_create_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("create_sql", DataType::Utf8, false),
    ]))
}

pub(super) fn rows_output(schema: SchemaRef, columns: Vec<ArrayRef>, tag: &'static str) -> Output {
    let batch = RecordBatch::try_new(schema.clone(), columns);
    let stream = futures::stream::iter(vec![batch.map_err(Into::into)]);
    Output::Rows {
        schema: schema.clone(),
        stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        tag,
    }
}

/// EXPLAIN output as PostgreSQL clients expect: one text column "QUERY PLAN", one row per line.
fn explain_output(batches: &[RecordBatch]) -> Output {
    let mut lines = Vec::new();
    for batch in batches {
        let (Some(kind), Some(plan)) = (
            batch.column(0).as_any().downcast_ref::<StringArray>(),
            batch.column(1).as_any().downcast_ref::<StringArray>(),
        ) else {
            continue;
        };
        for row in 0..batch.num_rows() {
            if batches.len() > 1 || batch.num_rows() > 1 {
                lines.push(format!("{}:", kind.value(row)));
            }
            lines.extend(plan.value(row).lines().map(|l| l.to_string()));
        }
    }
    rows_output(
        single_text_schema("QUERY PLAN"),
        vec![Arc::new(StringArray::from(lines))],
        "EXPLAIN",
    )
}

pub(super) fn param_types_of(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>> {
    let mut types = plan.get_parameter_types()?;
    // DataFusion leaves `$1` untyped in `$1::bigint`; PostgreSQL types it by the cast.
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Expr, expr::Placeholder};
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::Cast(cast) = e
                    && let Expr::Placeholder(Placeholder { id, .. }) = cast.expr.as_ref()
                {
                    let slot = types.entry(id.clone()).or_insert(None);
                    if slot.is_none() {
                        *slot = Some(cast.field.data_type().clone());
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    let mut out = Vec::new();
    let n = types
        .keys()
        .filter_map(|k| k.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()))
        .max()
        .unwrap_or(0);
    for i in 1..=n {
        out.push(types.get(&format!("${i}")).cloned().flatten());
    }
    Ok(out)
}

/// The result columns, named as PostgreSQL would name them (see `sql::names`).
pub(super) fn output_schema(stmt: &Statement, plan: &LogicalPlan) -> SchemaRef {
    if matches!(stmt, Statement::Explain { .. }) {
        return single_text_schema("QUERY PLAN");
    }
    let arrow = plan.schema().as_arrow();
    let planned: Vec<&str> = arrow.fields().iter().map(|f| f.name().as_str()).collect();
    let names = sql::names::result_names(stmt, &planned);
    let fields: Vec<Field> = arrow
        .fields()
        .iter()
        .zip(names)
        .map(|(f, name)| f.as_ref().clone().with_name(name))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, arrow.metadata().clone()))
}

/// Renames the stream's columns to `schema`'s names (data unchanged).
fn rename_stream(
    stream: SendableRecordBatchStream,
    schema: SchemaRef,
) -> SendableRecordBatchStream {
    use futures::StreamExt;
    let out_schema = schema.clone();
    let mapped = stream.map(move |batch| {
        let batch = batch?;
        RecordBatch::try_new_with_options(
            out_schema.clone(),
            batch.columns().to_vec(),
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(batch.num_rows())),
        )
        .map_err(Into::into)
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, mapped))
}

fn query_has_locking(query: &ast::Query) -> bool {
    !query.locks.is_empty()
}

/// Resolves an optional column list against a table.
pub(super) fn target_columns(table: &TableDef, columns: &[ast::Ident]) -> Result<Vec<usize>> {
    if columns.is_empty() {
        return Ok((0..table.columns.len()).collect());
    }
    let mut out = Vec::with_capacity(columns.len());
    for c in columns {
        let name = sql::normalize_ident(c);
        let idx = table.column_index(&name).ok_or_else(|| {
            crate::err!(
                sqlstate::UNDEFINED_COLUMN,
                "column \"{name}\" of relation \"{}\" does not exist",
                table.name
            )
        })?;
        if out.contains(&idx) {
            return Err(crate::err!(
                sqlstate::DUPLICATE_COLUMN,
                "column \"{name}\" specified more than once"
            ));
        }
        out.push(idx);
    }
    Ok(out)
}

fn copy_format(
    options: &[ast::CopyOption],
    legacy: &[ast::CopyLegacyOption],
) -> Result<CopyFormat> {
    let mut f = CopyFormat::default();
    let mut delimiter = None;
    let mut null = None;
    let mut escape = None;
    let single_byte = |c: char, what: &str| -> Result<u8> {
        if c.is_ascii() {
            Ok(c as u8)
        } else {
            Err(unsupported!(
                "COPY {what} must be a single one-byte character"
            ))
        }
    };
    for o in options {
        match o {
            ast::CopyOption::Format(name) => match name.value.to_lowercase().as_str() {
                "csv" => f.csv = true,
                "text" => f.csv = false,
                "binary" => return Err(unsupported!("COPY FORMAT binary")),
                other => {
                    return Err(crate::err!(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "COPY format \"{other}\" not recognized"
                    ));
                }
            },
            ast::CopyOption::Header(h) => f.header = *h,
            ast::CopyOption::Delimiter(c) => delimiter = Some(single_byte(*c, "delimiter")?),
            ast::CopyOption::Null(s) => null = Some(s.clone()),
            ast::CopyOption::Quote(c) => f.quote = single_byte(*c, "quote")?,
            ast::CopyOption::Escape(c) => escape = Some(single_byte(*c, "escape")?),
            ast::CopyOption::Encoding(e) => {
                let v = e.to_ascii_uppercase().replace(['-', '_'], "");
                if v != "UTF8" {
                    return Err(unsupported!("COPY ENCODING {e}: only UTF8"));
                }
            }
            ast::CopyOption::Freeze(_) => {}
            other => return Err(unsupported!("COPY option {other}")),
        }
    }
    for o in legacy {
        match o {
            ast::CopyLegacyOption::Csv(csv) => {
                f.csv = true;
                for o in csv {
                    match o {
                        ast::CopyLegacyCsvOption::Header => f.header = true,
                        ast::CopyLegacyCsvOption::Quote(c) => f.quote = single_byte(*c, "quote")?,
                        ast::CopyLegacyCsvOption::Escape(c) => {
                            escape = Some(single_byte(*c, "escape")?)
                        }
                        other => return Err(unsupported!("COPY option {other}")),
                    }
                }
            }
            ast::CopyLegacyOption::Header => f.header = true,
            ast::CopyLegacyOption::Delimiter(c) => delimiter = Some(single_byte(*c, "delimiter")?),
            ast::CopyLegacyOption::Null(s) => null = Some(s.clone()),
            other => return Err(unsupported!("COPY option {other}")),
        }
    }
    if f.csv {
        f.delimiter = delimiter.unwrap_or(b',');
        f.null = null.unwrap_or_default();
        f.escape = escape.unwrap_or(f.quote);
    } else {
        if f.header {
            // PostgreSQL allows HEADER for text since 15.
        }
        f.delimiter = delimiter.unwrap_or(b'\t');
        f.null = null.unwrap_or_else(|| "\\N".into());
    }
    Ok(f)
}

fn statement_kind(stmt: &Statement) -> String {
    let text = stmt.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    let kind: Vec<&str> = words
        .iter()
        .take_while(|w| w.chars().all(|c| c.is_ascii_alphabetic() || c == '_'))
        .copied()
        .collect();
    if kind.is_empty() {
        words.first().copied().unwrap_or("").to_string()
    } else {
        kind.join(" ")
    }
}
