//! Command-line configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Eddy: a streaming SQL database server speaking the PostgreSQL wire protocol.
#[derive(Debug, Clone, Parser)]
#[command(name = "eddy", version, about)]
pub struct Config {
    /// Address to accept PostgreSQL connections on.
    #[arg(long, default_value = "127.0.0.1:5544", env = "EDDY_LISTEN")]
    pub listen: SocketAddr,

    /// Directory holding the log, the catalog and state. Created if missing.
    #[arg(long, default_value = "./eddy-data", env = "EDDY_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `eddy=debug`.
    #[arg(long, default_value = "info", env = "EDDY_LOG")]
    pub log_level: String,
}
