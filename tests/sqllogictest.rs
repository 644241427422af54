//! Runs every `sql-tests/*.slt` file against a real Eddy server over pgwire.
//!
//! Each file gets its own server, started in-process on a free port with a temporary data
//! directory, and is run with sqllogictest-rs through tokio-postgres's simple query protocol
//! (what psql uses). One harness-only statement exists:
//!
//! ```text
//! statement ok
//! RESTART EDDY
//! ```
//!
//! shuts the server down cleanly and starts it again on the same data directory and port, then
//! reconnects — data must survive. (`kill -9` crashes are tested in `tests/crash.rs`.)
//!
//! Usage: `cargo test --test sqllogictest [-- <filter>]`; set `SLT_OVERRIDE=1` to rewrite the
//! expected output of the files (then read every changed line before committing).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use eddy::engine::EngineConfig;
use eddy::server::Server;
use libtest_mimic::{Arguments, Failed, Trial};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};
use tokio::sync::Mutex;
use tokio_postgres::{NoTls, SimpleQueryMessage};

struct Harness {
    data_dir: PathBuf,
    addr: SocketAddr,
    server: Option<Server>,
}

impl Harness {
    async fn start(data_dir: &Path) -> Harness {
        let server = Server::start_with(
            EngineConfig {
                data_dir: data_dir.to_path_buf(),
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .expect("server starts");
        Harness {
            data_dir: data_dir.to_path_buf(),
            addr: server.local_addr(),
            server: Some(server),
        }
    }

    async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let server = Server::start_with(
            EngineConfig {
                data_dir: self.data_dir.clone(),
            },
            self.addr,
        )
        .await
        .expect("server restarts");
        self.server = Some(server);
    }
}

#[derive(Debug)]
struct DbError {
    message: String,
    sqlstate: Option<String>,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for DbError {}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let mut message = db.message().to_string();
                if let Some(detail) = db.detail() {
                    message.push_str(&format!(" (DETAIL: {detail})"));
                }
                DbError {
                    message,
                    sqlstate: Some(db.code().code().to_string()),
                }
            }
            None => DbError {
                message: e.to_string(),
                sqlstate: None,
            },
        }
    }
}

struct EddyDb {
    client: tokio_postgres::Client,
    harness: Arc<Mutex<Harness>>,
}

async fn connect(addr: SocketAddr) -> Result<tokio_postgres::Client, DbError> {
    let conn_str = format!(
        "host={} port={} user=eddy dbname=eddy",
        addr.ip(),
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[async_trait]
impl AsyncDB for EddyDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        if sql
            .trim()
            .trim_end_matches(';')
            .eq_ignore_ascii_case("restart eddy")
        {
            let mut harness = self.harness.lock().await;
            harness.restart().await;
            self.client = connect(harness.addr).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut columns = None;
        let mut count = 0;
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(desc) => columns = Some(desc.len()),
                SimpleQueryMessage::Row(row) => {
                    columns = Some(row.len());
                    rows.push(
                        (0..row.len())
                            .map(|i| match row.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(v) => v.to_string(),
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        match columns {
            Some(n) => Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; n],
                rows,
            }),
            None => Ok(DBOutput::StatementComplete(count)),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "eddy"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await
    }

    async fn run_command(command: std::process::Command) -> std::io::Result<std::process::Output> {
        tokio::process::Command::from(command).output().await
    }

    fn error_sql_state(err: &DbError) -> Option<String> {
        err.sqlstate.clone()
    }
}

fn run_file(path: PathBuf) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    runtime.block_on(async move {
        let dir = tempfile::tempdir().map_err(|e| Failed::from(e.to_string()))?;
        let harness = Arc::new(Mutex::new(Harness::start(dir.path()).await));
        let make = {
            let harness = harness.clone();
            move || {
                let harness = harness.clone();
                async move {
                    let addr = harness.lock().await.addr;
                    Ok(EddyDb {
                        client: connect(addr).await?,
                        harness,
                    })
                }
            }
        };
        let mut runner = Runner::new(make);
        let result = if std::env::var("SLT_OVERRIDE").is_ok() {
            runner
                .update_test_file(
                    &path,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .map_err(|e| Failed::from(e.to_string()))
        } else {
            runner
                .run_file_async(&path)
                .await
                .map_err(|e| Failed::from(e.display(true).to_string()))
        };
        if let Some(server) = harness.lock().await.server.take() {
            server.shutdown().await;
        }
        result
    })
}

fn main() {
    let args = Arguments::from_args();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql-tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sql-tests exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    let trials = files
        .into_iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            Trial::test(name, move || run_file(path))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
