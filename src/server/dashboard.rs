//! `--http-listen`: a web dashboard served by the server itself. `GET /` is one static page
//! (`dashboard.html`, no build step, no external assets) that polls `GET /api/state` every
//! second and draws each materialized view's dataflow graph with live per-operator rates,
//! state sizes and lag, the sources' rates, and the live subscriptions. Rates are the change
//! of the counters between two polls, computed in the page.
//!
//! `/api/state` is the system views as JSON, one array of row objects per view, so the
//! dashboard shows exactly what `eddy_catalog` and `/metrics` show:
//!
//! ```text
//! {"server": {"version": "…", "connections": 3, "unix_ms": …},
//!  "views": {"materialized_views": [{"view_name": "…", …}], "dataflow_operators": […], …}}
//! ```

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use datafusion::arrow::array::RecordBatch;

use super::metrics::{Shared, system_views};

const PAGE: &str = include_str!("dashboard.html");

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(page))
        .route("/api/state", get(state))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn state(State(shared): State<Shared>) -> Response {
    match render(&shared).await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.message).into_response(),
    }
}

async fn render(shared: &Shared) -> crate::error::Result<String> {
    let mut views = serde_json::Map::new();
    for (name, batches) in system_views(&shared.engine).await? {
        views.insert(name.to_string(), rows_json(&batches)?);
    }
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let body = serde_json::json!({
        "server": {
            "version": crate::SERVER_VERSION,
            "eddy": env!("CARGO_PKG_VERSION"),
            "connections": shared.limits.connections(),
            "unix_ms": unix_ms,
        },
        "views": views,
    });
    Ok(body.to_string())
}

/// Batches as a JSON array of objects, one per row (NULLs as `null`).
fn rows_json(batches: &[RecordBatch]) -> crate::error::Result<serde_json::Value> {
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for batch in batches {
        writer.write(batch).map_err(crate::error::Error::from)?;
    }
    writer.finish().map_err(crate::error::Error::from)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_slice(&bytes).map_err(|e| crate::internal!("the system views as JSON: {e}"))
}
