//! Durable storage: the internal log of committed changes and RocksDB-backed state.
//!
//! ```text
//!  engine ──commit──► log (segments, group commit, fsync) ──replay on start──► engine
//!  engine ──catalog / state──► state (RocksDB)
//! ```
//!
//! This module knows bytes and files, not SQL: it never plans or executes queries.

pub mod log;
pub mod state;
