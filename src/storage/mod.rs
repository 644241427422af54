//! Storage: the internal log of committed changes, RocksDB-backed state, and the in-memory
//! versioned collections ([`table::TableStore`]) that hold tables and view outputs.
//!
//! ```text
//!  engine ──commit──► log (segments, group commit, fsync) ──replay on start──► engine
//!  engine ──catalog / state──► state (RocksDB)
//! ```
//!
//! This module knows bytes and files, not SQL: it never plans or executes queries.

pub mod log;
pub mod state;
pub mod table;
