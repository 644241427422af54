//! A minimal `pg_catalog` so psql and drivers can introspect tables.

use std::sync::Arc;

use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::prelude::SessionContext;

use super::Engine;

pub fn schema(_engine: Arc<Engine>) -> Arc<dyn SchemaProvider> {
    Arc::new(MemorySchemaProvider::new())
}

pub fn register_functions(_ctx: &SessionContext) {}
