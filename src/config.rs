//! Command-line configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};

/// Eddy: a streaming SQL database server speaking the PostgreSQL wire protocol.
#[derive(Debug, Clone, Parser)]
#[command(name = "eddy", version, about, args_override_self = true)]
pub struct Config {
    /// A TOML file of settings whose keys are these flags' names (`listen = "0.0.0.0:5544"`,
    /// `max_connections = 200`). A flag on the command line, or its environment variable,
    /// wins over the file.
    #[arg(long, env = "EDDY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log lines as `text` (for people) or `json` (one object per line, for log collectors).
    #[arg(long, value_enum, default_value = "text", env = "EDDY_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Address to accept PostgreSQL connections on.
    #[arg(long, default_value = "127.0.0.1:5544", env = "EDDY_LISTEN")]
    pub listen: SocketAddr,

    /// Directory holding the log, the catalog and state. Created if missing.
    #[arg(long, default_value = "./eddy-data", env = "EDDY_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `eddy=debug`.
    #[arg(long, default_value = "info", env = "EDDY_LOG")]
    pub log_level: String,

    /// How long each materialized view keeps its changes for `SUBSCRIBE … AS OF`
    /// (e.g. `1h`, `15min`, `30s`).
    #[arg(long, default_value = "1h", value_parser = crate::types::parse_duration, env = "EDDY_SUBSCRIBE_RETENTION")]
    pub subscribe_retention: Duration,

    /// At most this many MiB of retained changes per view (oldest dropped first).
    #[arg(long, default_value_t = 64, env = "EDDY_SUBSCRIBE_HISTORY_MB")]
    pub subscribe_history_mb: usize,

    /// A subscription whose oldest unsent change is older than this is ended with 53400.
    #[arg(long, default_value = "5min", value_parser = crate::types::parse_duration, env = "EDDY_SUBSCRIBE_MAX_LAG")]
    pub subscribe_max_lag: Duration,

    /// How often an idle `SUBSCRIBE … WITH (PROGRESS)` sends a progress row.
    #[arg(long, default_value = "1s", value_parser = crate::types::parse_duration, env = "EDDY_SUBSCRIBE_PROGRESS_INTERVAL")]
    pub subscribe_progress_interval: Duration,

    /// How often state is checkpointed while changes arrive (also at shutdown). A restart
    /// replays the log written since the last checkpoint.
    #[arg(long, default_value = "1s", value_parser = crate::types::parse_duration, env = "EDDY_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Duration,

    /// Memory for dataflow state (e.g. `4GB`, `512MB`, or `25%` of the machine's). State that is
    /// checkpointed and least recently used is evicted past it, and read back from disk when
    /// needed. Default: half of the machine's memory (or of its container's limit).
    #[arg(long, default_value = "50%", value_parser = crate::types::parse_memory, env = "EDDY_MEMORY_BUDGET")]
    pub memory_budget: usize,

    /// Writes (INSERT, COPY, UPDATE, DELETE, COMMIT) wait while this much of the log (its
    /// changes' size in memory) is not covered by a durable checkpoint (e.g. `64MB`; `0` for no
    /// limit). It bounds what a restart after a crash replays, and the state that cannot be
    /// evicted meanwhile.
    #[arg(long, default_value = "64MB", value_parser = crate::types::parse_memory, env = "EDDY_MAX_CHECKPOINT_LAG")]
    pub max_checkpoint_lag: usize,

    /// Lowers that limit to what the views would replay within this long after a crash, at the
    /// rate they are measured to process changes (never below 4MB; `0s` for no target).
    #[arg(long, default_value = "1s", value_parser = crate::types::parse_duration, env = "EDDY_TARGET_RECOVERY_TIME")]
    pub target_recovery_time: Duration,

    /// What `now()` reads in materialized views' temporal filters: `system`, or a `manual`
    /// clock that moves only with `ADVANCE CLOCK` (for tests), e.g.
    /// `manual:2025-01-01T00:00:00Z` (`manual` alone starts at 1970-01-01).
    #[arg(long, default_value = "system", env = "EDDY_CLOCK")]
    pub clock: crate::engine::clock::ClockSetting,

    /// Threads that run materialized views' dataflows; each view's state is split by key
    /// across them. `0` (the default): one per core. Changing it rebuilds views' operator
    /// state at the next start (from their inputs), since it is stored split as it was; their
    /// contents and change history are kept. At most 1024.
    #[arg(long, default_value_t = 0, env = "EDDY_WORKERS", value_parser = clap::value_parser!(u64).range(0..=1024))]
    pub workers: u64,

    /// At most this many client connections at once; the next gets SQLSTATE 53300 ("too many
    /// clients already"), as PostgreSQL's max_connections.
    #[arg(long, default_value_t = 2000, env = "EDDY_MAX_CONNECTIONS")]
    pub max_connections: usize,

    /// The longest statement text accepted (e.g. `16MB`); longer ones get 54000.
    #[arg(long, default_value = "16MB", value_parser = crate::types::parse_memory, env = "EDDY_MAX_STATEMENT_SIZE")]
    pub max_statement_size: usize,

    /// Memory one ad-hoc query may use for sorts, joins and aggregations (e.g. `1GB`, or `10%`
    /// of the machine's); past it the query fails with 53200 and other sessions are unaffected.
    /// `0` (the default): no limit. DataFusion's accounting overstates some aggregates by
    /// orders of magnitude (count(DISTINCT (a, b)) asks for gigabytes over a hundred rows),
    /// so a limit can refuse such queries.
    #[arg(long, default_value = "0", value_parser = crate::types::parse_memory, env = "EDDY_QUERY_MEMORY")]
    pub query_memory: usize,

    /// Ends a session that stays idle inside a transaction block this long (e.g. `10min`; `0s`
    /// never), rolling the transaction back: the server-wide default of the session setting
    /// idle_in_transaction_session_timeout.
    #[arg(long, default_value = "0s", value_parser = crate::types::parse_duration, env = "EDDY_IDLE_IN_TRANSACTION_TIMEOUT")]
    pub idle_in_transaction_timeout: Duration,

    /// How clients authenticate: `trust` (any user name, no password) or `scram` (the
    /// password of a role with LOGIN, by SCRAM-SHA-256). Default: `trust` when listening on
    /// loopback, `scram` otherwise. `EDDY_PASSWORD` in the environment sets the password of the
    /// role `eddy` at start-up.
    #[arg(long, value_enum, env = "EDDY_AUTH")]
    pub auth: Option<crate::server::AuthMode>,

    /// Address for the Prometheus endpoint (`GET /metrics`): the counters of the system views
    /// (e.g. `127.0.0.1:9544`). None by default.
    #[arg(long, env = "EDDY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Address for the web dashboard (`GET /`, e.g. `127.0.0.1:8544`): each materialized
    /// view's dataflow graph with live per-operator rates, state and lag, the sources and the
    /// live subscriptions; it serves `/metrics` too. None by default.
    #[arg(long, env = "EDDY_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// A PEM certificate (chain) for TLS; with `--tls-key`, clients may connect with
    /// `sslmode=require`.
    #[arg(long, env = "EDDY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "EDDY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The configuration from the command line, the environment and the config file (in that
    /// order of precedence); an error names what is wrong with the file.
    pub fn load() -> Result<Config, String> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let first = Config::try_parse_from(&args).unwrap_or_else(|e| e.exit());
        let Some(path) = &first.config else {
            return Ok(first);
        };
        let file = config_file_args(path)?;
        // The file's settings come first: the command line's, later, override them.
        let mut all = vec![args[0].clone()];
        all.extend(file);
        all.extend(args.into_iter().skip(1));
        Config::try_parse_from(all).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The flags a config file stands for (`--name=value`), leaving out those whose environment
/// variable is set (the environment wins over the file).
fn config_file_args(path: &std::path::Path) -> Result<Vec<std::ffi::OsString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("the config file {} is not valid TOML: {e}", path.display()))?;
    let command = Config::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && flag != "config")
            .ok_or_else(|| {
                format!(
                    "{}: unknown setting \"{key}\" (the settings are the flags of eddy --help)",
                    path.display()
                )
            })?;
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "{}: \"{key}\" must be a string, number or boolean, not {}",
                    path.display(),
                    other.type_str()
                ));
            }
        };
        out.push(format!("--{flag}={value}").into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_sets_flags_and_names_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eddy.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:6000\"\nmax_connections = 7\nquery-memory = \"64MB\"\n",
        )
        .unwrap();
        let args = config_file_args(&path).unwrap();
        let mut all: Vec<std::ffi::OsString> = vec!["eddy".into()];
        all.extend(args);
        all.push("--max-connections=9".into());
        let config = Config::try_parse_from(all).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:6000");
        assert_eq!(config.max_connections, 9, "the command line wins");
        assert_eq!(config.query_memory, 64 << 20);
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let e = config_file_args(&path).unwrap_err();
        assert!(e.contains("unknown setting \"lisen\""), "{e}");
        std::fs::write(&path, "listen = [1]\n").unwrap();
        assert!(
            config_file_args(&path)
                .unwrap_err()
                .contains("must be a string")
        );
    }
}
