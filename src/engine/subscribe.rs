//! `SUBSCRIBE`, and the cursors that read subscriptions (or queries) a FETCH at a time:
//! `DECLARE c CURSOR FOR SUBSCRIBE … | SELECT …`, `FETCH`, `CLOSE`.
//!
//! A subscription to a materialized view reads the view's shared change history (no dataflow
//! of its own). A subscription to anything else — a query, a table, a plain view — gets a
//! temporary dataflow, built like a materialized view's and dropped with the subscription.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast::{self, Statement};
use futures::TryStreamExt;

use super::Output;
use super::session::Session;
use crate::dataflow::{Runtime, ViewStatus};
use crate::error::{Error, Result, sqlstate};
use crate::sql::{self, Parsed};
use crate::subscribe::{self, Gap, Subscription};
use crate::types::{Epoch, ObjectId, ZBatch};

/// An open cursor.
pub enum Cursor {
    Subscribe(Box<Subscription>),
    /// A query's result, computed at DECLARE.
    Rows {
        schema: SchemaRef,
        batches: VecDeque<RecordBatch>,
    },
}

impl Cursor {
    fn schema(&self) -> SchemaRef {
        match self {
            Cursor::Subscribe(s) => s.schema().clone(),
            Cursor::Rows { schema, .. } => schema.clone(),
        }
    }
}

/// A subscription's temporary dataflow: dropped with it.
struct TempDataflow {
    id: ObjectId,
    runtime: Arc<Runtime>,
}

impl Drop for TempDataflow {
    fn drop(&mut self) {
        self.runtime.drop_view_detached(self.id);
    }
}

/// The query of a statement that carries a SUBSCRIBE clause.
pub(super) fn subscribe_query(stmt: &Statement) -> Result<&ast::Query> {
    match stmt {
        Statement::Query(q) => Ok(q),
        Statement::Copy {
            source: ast::CopySource::Query(q),
            ..
        } => Ok(q),
        Statement::Declare { stmts } => stmts
            .first()
            .and_then(|d| d.for_query.as_deref())
            .ok_or_else(|| crate::internal!("DECLARE without a query")),
        _ => Err(crate::internal!("not a SUBSCRIBE statement")),
    }
}

pub(super) fn with_query(parsed: &Parsed, query: &ast::Query) -> Parsed {
    Parsed {
        stmt: Statement::Query(Box::new(query.clone())),
        subscribe: None,
        ..parsed.clone()
    }
}

impl Session {
    /// Starts a subscription: waits (like a SELECT of views) for the epoch that covers every
    /// write durable so far, takes the snapshot there (or at `AS OF`), and registers it.
    pub(super) async fn subscribe(
        &mut self,
        query: &ast::Query,
        options: &sql::Subscribe,
    ) -> Result<Subscription> {
        let engine = self.engine.clone();
        let catalog = engine.catalog();
        let named_view = match &options.object {
            Some(name) => {
                let name = sql::table_name(name)?;
                catalog.view(&name).filter(|v| v.materialized).cloned()
            }
            None => None,
        };
        let mut keep: Vec<Box<dyn Send + Sync>> = Vec::new();
        let (view, target) = match named_view {
            Some(def) => {
                let view = engine.view_state(def.id).ok_or_else(|| {
                    crate::err!(
                        sqlstate::UNDEFINED_TABLE,
                        "materialized view \"{}\" does not exist",
                        def.name
                    )
                })?;
                (view, def.name.clone())
            }
            None => {
                // Anything else gets a dataflow of its own.
                let compiled = self.compile_view(query, &[], false).await.map_err(|e| {
                    if e.sqlstate == sqlstate::FEATURE_NOT_SUPPORTED {
                        Error {
                            message: format!("SUBSCRIBE: {}", e.message),
                            ..e
                        }
                    } else {
                        e
                    }
                })?;
                let id = engine.temp_id();
                let target = match &options.object {
                    Some(name) => name.to_string(),
                    None => shorten(&query.to_string()),
                };
                engine.tick_for(&compiled.spec).await?;
                engine
                    .runtime()
                    .create_view(id, &target, compiled.spec, compiled.schema, None)
                    .await?;
                keep.push(Box::new(TempDataflow {
                    id,
                    runtime: engine.runtime().clone(),
                }));
                let view = engine
                    .view_state(id)
                    .ok_or_else(|| crate::internal!("temporary dataflow vanished"))?;
                (view, target)
            }
        };
        if let ViewStatus::Failed(at, e) = view.status() {
            return Err(crate::err!(
                e.sqlstate,
                "materialized view \"{}\" stopped at epoch {}: {}",
                view.name,
                at.0,
                e.message
            ));
        }
        let pin = engine.pin_views(self.view_wait_timeout()).await?;
        let current = pin
            .epoch
            .ok_or_else(|| crate::internal!("a view read point without an epoch"))?;
        let history = view.history.clone();
        let start = match options.as_of.map(Epoch) {
            None => current,
            Some(e) if e > current => {
                return Err(crate::err!(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "AS OF {}: that epoch has not happened yet (the latest is {})",
                    e.0,
                    current.0
                ));
            }
            Some(e) => {
                let oldest = history.oldest();
                if e < oldest {
                    return Err(not_retained(&target, e, oldest));
                }
                e
            }
        };
        let snapshot = if options.snapshot {
            let schema = view.schema();
            let mut parts: Vec<ZBatch> = view
                .scan(current)?
                .into_iter()
                .filter(|b| b.num_rows() > 0)
                .map(|b| ZBatch::uniform(b, 1))
                .collect();
            if start < current {
                // The contents at `start`: now, minus what changed since.
                let (entries, _) =
                    history
                        .read(start, current, usize::MAX)
                        .map_err(|gap| match gap {
                            Gap::Trimmed { oldest } => not_retained(&target, start, oldest),
                            Gap::Closed(e) => e,
                        })?;
                for entry in entries {
                    parts.push(negated(&entry.delta));
                }
            }
            let rows = ZBatch::consolidate(&parts, &schema)?;
            if rows.weights.values().iter().any(|w| *w < 0) {
                return Err(crate::internal!(
                    "the snapshot of \"{target}\" at epoch {} has negative multiplicities",
                    start.0
                ));
            }
            Some(rows)
        } else {
            None
        };
        drop(pin);
        let (info, registered) = engine.subscriptions().register(
            target,
            self.client.clone(),
            self.pid,
            start,
            history.clone(),
        );
        let mut subscription = Subscription::new(
            &view.schema(),
            history,
            engine.runtime().epochs().watch(),
            start,
            snapshot,
            options.progress,
            engine.config.subscribe,
            info,
        )?;
        subscription.keep(Box::new(registered));
        for k in keep {
            subscription.keep(k);
        }
        Ok(subscription)
    }

    /// The columns a SUBSCRIBE returns (for Describe), without starting it.
    pub(super) async fn subscribe_schema(
        &self,
        query: &ast::Query,
        options: &sql::Subscribe,
    ) -> Result<SchemaRef> {
        let stmt = Statement::Query(Box::new(query.clone()));
        let plan = self.plan(&stmt).await?;
        let schema = super::session::output_schema(&stmt, &plan);
        Ok(subscribe::output_schema(&schema, options.progress))
    }

    /// `DECLARE c CURSOR FOR SUBSCRIBE … | SELECT …` (inside a transaction block).
    pub(super) async fn declare(
        &mut self,
        parsed: &Parsed,
        params: &[ScalarValue],
    ) -> Result<Output> {
        let Statement::Declare { stmts } = &parsed.stmt else {
            return Err(crate::internal!("not a DECLARE"));
        };
        let [decl] = stmts.as_slice() else {
            return Err(crate::unsupported!("DECLARE of several cursors"));
        };
        if !self.in_transaction() {
            return Err(crate::err!(
                sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                "DECLARE CURSOR can only be used in transaction blocks"
            ));
        }
        if decl.scroll == Some(true) {
            return Err(crate::unsupported!(
                "SCROLL cursors (Eddy's cursors only move forward)"
            ));
        }
        if decl.hold == Some(true) {
            return Err(crate::unsupported!(
                "WITH HOLD cursors (cursors close at the end of their transaction)"
            ));
        }
        let name = sql::normalize_ident(
            decl.names
                .first()
                .ok_or_else(|| crate::internal!("DECLARE without a name"))?,
        );
        if self.cursors.contains_key(&name) {
            return Err(crate::err!(
                sqlstate::DUPLICATE_CURSOR,
                "cursor \"{name}\" already exists"
            ));
        }
        let query = decl
            .for_query
            .as_deref()
            .ok_or_else(|| crate::unsupported!("DECLARE without FOR <query>"))?;
        let cursor = match &parsed.subscribe {
            Some(options) => Cursor::Subscribe(Box::new(self.subscribe(query, options).await?)),
            None => {
                let select = with_query(parsed, query);
                let Output::Rows { schema, stream, .. } =
                    self.run_query_with(&select, params).await?
                else {
                    return Err(crate::internal!("a query returned no rows"));
                };
                let batches: Vec<RecordBatch> = stream.try_collect().await?;
                Cursor::Rows {
                    schema,
                    batches: batches.into(),
                }
            }
        };
        self.cursors.insert(name, cursor);
        Ok(Output::Command {
            tag: "DECLARE CURSOR",
            rows: None,
        })
    }

    /// `FETCH [n | ALL | NEXT | FORWARD …] c [WITH (timeout = …)]`: a subscription cursor waits
    /// up to the timeout (forever without one) for at least one row.
    pub(super) async fn fetch(&mut self, parsed: &Parsed) -> Result<Output> {
        let Statement::Fetch {
            name, direction, ..
        } = &parsed.stmt
        else {
            return Err(crate::internal!("not a FETCH"));
        };
        let count = fetch_count(direction)?;
        let name = sql::normalize_ident(name);
        let cursor = self.cursors.get_mut(&name).ok_or_else(|| {
            crate::err!(
                sqlstate::INVALID_CURSOR_NAME,
                "cursor \"{name}\" does not exist"
            )
        })?;
        let schema = cursor.schema();
        let batches = match cursor {
            Cursor::Subscribe(sub) => {
                if count == Some(0) {
                    Vec::new()
                } else {
                    sub.fetch(count, parsed.fetch_timeout).await?
                }
            }
            Cursor::Rows { batches, .. } => subscribe::take_rows(batches, count),
        };
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        Ok(Output::Rows {
            schema: schema.clone(),
            stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
            tag: "FETCH",
        })
    }

    /// The columns a FETCH from cursor `name` returns (for Describe).
    pub(super) fn fetch_schema(&self, stmt: &Statement) -> Result<SchemaRef> {
        let Statement::Fetch { name, .. } = stmt else {
            return Err(crate::internal!("not a FETCH"));
        };
        let name = sql::normalize_ident(name);
        self.cursors.get(&name).map(|c| c.schema()).ok_or_else(|| {
            crate::err!(
                sqlstate::INVALID_CURSOR_NAME,
                "cursor \"{name}\" does not exist"
            )
        })
    }

    /// `CLOSE c | ALL`.
    pub(super) fn close_cursor(&mut self, cursor: &ast::CloseCursor) -> Result<Output> {
        match cursor {
            ast::CloseCursor::All => self.cursors.clear(),
            ast::CloseCursor::Specific { name } => {
                let name = sql::normalize_ident(name);
                if self.cursors.remove(&name).is_none() {
                    return Err(crate::err!(
                        sqlstate::INVALID_CURSOR_NAME,
                        "cursor \"{name}\" does not exist"
                    ));
                }
            }
        }
        Ok(Output::Command {
            tag: "CLOSE CURSOR",
            rows: None,
        })
    }
}

/// How many rows a FETCH direction asks for (`None`: all).
fn fetch_count(direction: &ast::FetchDirection) -> Result<Option<usize>> {
    use ast::FetchDirection as D;
    let number = |v: &ast::ValueWithSpan| -> Result<usize> {
        v.to_string().parse::<usize>().map_err(|_| {
            crate::err!(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "cursor can only scan forward"
            )
            .with_hint("FETCH takes a non-negative count.")
        })
    };
    match direction {
        D::Next => Ok(Some(1)),
        D::All | D::ForwardAll => Ok(None),
        D::Count { limit } => number(limit).map(Some),
        D::Forward { limit: Some(limit) } => number(limit).map(Some),
        D::Forward { limit: None } => Ok(Some(1)),
        _ => Err(crate::err!(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cursor can only scan forward"
        )
        .with_hint("Eddy's cursors support FETCH [n | ALL | NEXT | FORWARD n]")),
    }
}

fn negated(delta: &ZBatch) -> ZBatch {
    let weights = delta.weights.values().iter().map(|w| -w).collect();
    ZBatch::new(delta.data.clone(), weights)
}

fn not_retained(target: &str, epoch: Epoch, oldest: Epoch) -> Error {
    crate::err!(
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "epoch {} is not available for \"{target}\": the oldest available epoch is {}",
        epoch.0,
        oldest.0
    )
    .with_hint(
        "Resume AS OF a later epoch, or start over without AS OF (a new snapshot). \
         --subscribe-retention sets how long changes are kept.",
    )
}

/// A query's text for the subscriptions view, cut to a readable length.
fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
