//! `eddy_catalog`: system views about what the server is doing, generated when scanned.
//!
//! - `eddy_catalog.subscriptions`: one row per active SUBSCRIBE (statement or cursor): what it
//!   reads, who runs it, the epoch it has delivered up to, and how far behind it is.

use std::fmt;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::Result as DfResult;

use super::Engine;

pub const SCHEMA: &str = "eddy_catalog";
const TABLES: &[&str] = &["subscriptions"];

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

#[async_trait]
impl SchemaProvider for System {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match name {
            "subscriptions" => self.subscriptions().map(Some),
            _ => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
