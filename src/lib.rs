//! Eddy: a streaming SQL database server speaking the PostgreSQL wire protocol.
//!
//! Modules, top to bottom (dependencies point downward only; see DESIGN.md §3):
//!
//! ```text
//!  server   pgwire handlers, Postgres encodings, COPY, cancel
//!  engine   sessions, statements, commits, DataFusion integration
//!  subscribe  SUBSCRIBE: snapshot, per-epoch changes, progress; each view's change history
//!  dataflow the incremental operators, the runtime, epochs
//!  connectors what feeds sources' tables (the Nexmark generator)
//!  sql      parsing (sqlparser + Eddy's clauses), DDL lowering, error mapping
//!  catalog  tables and their definitions, persisted
//!  storage  the internal log (group commit, replay) and RocksDB state
//!  types    SQL types, LSNs/epochs, Z-set batches
//! ```

pub mod catalog;
pub mod config;
pub mod connectors;
pub mod dataflow;
pub mod engine;
pub mod error;
pub mod server;
pub mod sql;
pub mod storage;
pub mod subscribe;
pub mod types;

/// The PostgreSQL version Eddy reports to clients (`server_version`).
pub const SERVER_VERSION: &str = "15.8";
pub const SERVER_VERSION_NUM: &str = "150008";
