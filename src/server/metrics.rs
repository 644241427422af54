//! `--metrics-listen`: a Prometheus endpoint (`GET /metrics`) with the same counters as the
//! system views. Every numeric column of every `eddy_catalog` view becomes a metric named
//! `eddy_<view>_<column>`, labelled by the view's text columns (`view_name`, `operator`…), so
//! the two never disagree; plus the server's connections.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;

use super::limits::Limits;
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Columns that only grow while the server runs (Prometheus counters); the rest are gauges.
const COUNTERS: &[&str] = &[
    "rows_in",
    "rows_out",
    "busy_ms",
    "epochs",
    "rows_written",
    "late_rows",
    "evictions",
    "evicted_bytes",
    "count",
    "failures",
];

#[derive(Clone)]
pub(super) struct Shared {
    pub engine: Arc<Engine>,
    pub limits: Arc<Limits>,
}

/// Serves `/metrics` on `listen` — and the web dashboard ([`super::dashboard`]) when
/// `dashboard` — until `stop` turns true; returns the address bound.
pub async fn serve(
    listen: SocketAddr,
    engine: Arc<Engine>,
    limits: Arc<Limits>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    dashboard: bool,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let what = if dashboard { "HTTP" } else { "metrics" };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("listening for {what} on {listen}"), &e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(format!("reading the {what} address"), &e))?;
    let mut app = Router::new().route("/metrics", get(metrics));
    if dashboard {
        app = app.merge(super::dashboard::routes());
    }
    let app = app.with_state(Shared { engine, limits });
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "the {what} endpoint stopped");
        }
    });
    Ok((addr, task))
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    let body = match render(&shared).await {
        Ok(body) => body,
        Err(e) => format!("# error: {}\n", e.message),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn render(shared: &Shared) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP eddy_connections Client connections open now.\n# TYPE eddy_connections gauge\neddy_connections {}",
        shared.limits.connections()
    );
    for (view, batches) in system_views(&shared.engine).await? {
        write_view(&mut out, view, &batches);
    }
    Ok(out)
}

/// Every `eddy_catalog` view's rows now, by name.
pub(super) async fn system_views(
    engine: &Arc<Engine>,
) -> Result<Vec<(&'static str, Vec<RecordBatch>)>> {
    let ctx = SessionContext::new();
    let state = ctx.state();
    let mut views = Vec::new();
    for (view, provider) in crate::engine::system_tables(engine.clone())? {
        let plan = provider
            .scan(&state, None, &[], None)
            .await
            .map_err(Error::from)?;
        views.push((
            view,
            collect(plan, ctx.task_ctx()).await.map_err(Error::from)?,
        ));
    }
    Ok(views)
}

/// The metrics of one system view's rows.
fn write_view(out: &mut String, view: &str, batches: &[RecordBatch]) {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return;
    };
    // Text columns, and numeric ones that name rather than measure (`operator_id`, `pid`).
    let is_label = |c: usize| {
        let field = schema.field(c);
        field.data_type() == &DataType::Utf8
            || field.name().ends_with("_id")
            || field.name() == "id"
            || field.name() == "pid"
    };
    let labels: Vec<usize> = (0..schema.fields().len())
        .filter(|c| is_label(*c))
        .collect();
    for (c, field) in schema.fields().iter().enumerate() {
        let numeric = matches!(
            field.data_type(),
            DataType::Int64 | DataType::Int32 | DataType::Float64
        );
        if !numeric || is_label(c) {
            continue;
        }
        let name = format!("eddy_{view}_{}", field.name());
        let kind = if COUNTERS.contains(&field.name().as_str()) {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(
            out,
            "# HELP {name} {} of eddy_catalog.{view}.\n# TYPE {name} {kind}",
            field.name()
        );
        for batch in batches {
            let column = batch.column(c);
            for row in 0..batch.num_rows() {
                if column.is_null(row) {
                    continue;
                }
                let value = match field.data_type() {
                    DataType::Int64 => column.as_primitive::<Int64Type>().value(row) as f64,
                    DataType::Int32 => column.as_primitive::<Int32Type>().value(row) as f64,
                    _ => column.as_primitive::<Float64Type>().value(row),
                };
                let label_text: Vec<String> = labels
                    .iter()
                    .filter_map(|l| {
                        let col = batch.column(*l);
                        if col.is_null(row) {
                            return None;
                        }
                        let value = match col.data_type() {
                            DataType::Utf8 => col.as_string::<i32>().value(row).to_string(),
                            DataType::Int64 => {
                                col.as_primitive::<Int64Type>().value(row).to_string()
                            }
                            DataType::Int32 => {
                                col.as_primitive::<Int32Type>().value(row).to_string()
                            }
                            _ => return None,
                        };
                        Some(format!(
                            "{}=\"{}\"",
                            schema.field(*l).name(),
                            escape(&value)
                        ))
                    })
                    .collect();
                if label_text.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{}}} {value}", label_text.join(","));
                }
            }
        }
    }
}

/// A label value as the exposition format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
