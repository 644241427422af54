//! Runs every `sql-tests/*.slt` file against a real Eddy server over pgwire.
//!
//! Each file gets its own server, started in-process on a free port with a temporary data
//! directory, and is run with sqllogictest-rs twice: through tokio-postgres's simple query
//! protocol (what psql uses, text results) and through the extended protocol (Parse/Describe/
//! Bind/Execute with binary results, decoded back to PostgreSQL's text forms here), so both
//! protocols and both encodings must give the expected output. One harness-only statement exists:
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

/// The server's settings for .slt files, so that output is deterministic: no idle progress
/// rows from `SUBSCRIBE … WITH (PROGRESS)` (they depend on timing; the progress row after each
/// change stays), and a manual clock starting at 2025-01-01 00:00:00 UTC that only
/// `ADVANCE CLOCK` moves (`now()` in views' temporal filters). Dataflows run as three shards
/// whatever the machine, so every view is checked split by key across workers.
fn config(data_dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(data_dir.to_path_buf());
    config.workers = 3;
    config.subscribe.progress_interval = std::time::Duration::from_secs(24 * 3600);
    config.clock = eddy::engine::clock::ClockSetting::Manual(1_735_689_600_000_000);
    config
}

struct Harness {
    data_dir: PathBuf,
    addr: SocketAddr,
    server: Option<Server>,
}

impl Harness {
    async fn start(data_dir: &Path) -> Harness {
        let server = Server::start_with(config(data_dir), "127.0.0.1:0".parse().unwrap())
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
        let server = Server::start_with(config(&self.data_dir), self.addr)
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

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Simple,
    Extended,
}

struct EddyDb {
    client: tokio_postgres::Client,
    harness: Arc<Mutex<Harness>>,
    protocol: Protocol,
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
        let single = eddy::sql::split(sql).map(|s| s.len() == 1).unwrap_or(false);
        if self.protocol == Protocol::Extended && single {
            return self.run_extended(sql).await;
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

impl EddyDb {
    /// One statement through Parse/Describe/Bind/Execute with binary results.
    async fn run_extended(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let stmt = self.client.prepare(sql).await?;
        if stmt.columns().is_empty() {
            let n = self.client.execute(&stmt, &[]).await?;
            return Ok(DBOutput::StatementComplete(n));
        }
        let rows = self.client.query(&stmt, &[]).await?;
        let ncols = stmt.columns().len();
        let rows = rows
            .iter()
            .map(|row| (0..ncols).map(|i| binary_text::value(row, i)).collect())
            .collect();
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; ncols],
            rows,
        })
    }
}

/// Binary result values → the text PostgreSQL would print, as the sqllogictest files expect.
mod binary_text {
    use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Timelike};
    use tokio_postgres::Row;
    use tokio_postgres::types::{FromSql, Kind, Type};

    struct Raw(Vec<u8>);
    impl<'a> FromSql<'a> for Raw {
        fn from_sql(
            _: &Type,
            raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Raw(raw.to_vec()))
        }
        fn accepts(_: &Type) -> bool {
            true
        }
    }

    fn or_null<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
        match v {
            None => "NULL".into(),
            Some(v) => {
                let s = f(v);
                if s.is_empty() { "(empty)".into() } else { s }
            }
        }
    }

    fn fraction(micros: u32) -> String {
        if micros == 0 {
            String::new()
        } else {
            format!(".{}", format!("{micros:06}").trim_end_matches('0'))
        }
    }

    use eddy::server::format_float as float;

    fn numeric(b: &[u8]) -> String {
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        let weight = i16::from_be_bytes([b[2], b[3]]) as i32;
        let sign = u16::from_be_bytes([b[4], b[5]]);
        let dscale = u16::from_be_bytes([b[6], b[7]]) as usize;
        let digits: Vec<u16> = (0..n)
            .map(|i| u16::from_be_bytes([b[8 + 2 * i], b[9 + 2 * i]]))
            .collect();
        let mut int_part = String::new();
        for k in 0..=weight.max(0) {
            let d = if weight >= 0 {
                digits.get(k as usize).copied().unwrap_or(0)
            } else {
                0
            };
            if int_part.is_empty() {
                int_part = d.to_string()
            } else {
                int_part.push_str(&format!("{d:04}"))
            }
            if weight < 0 {
                break;
            }
        }
        let mut frac = String::new();
        let mut k = weight + 1;
        while frac.len() < dscale {
            let d = if k >= 0 {
                digits.get(k as usize).copied().unwrap_or(0)
            } else {
                0
            };
            frac.push_str(&format!("{d:04}"));
            k += 1;
        }
        frac.truncate(dscale);
        let sign = if sign == 0x4000 { "-" } else { "" };
        if dscale > 0 {
            format!("{sign}{int_part}.{frac}")
        } else {
            format!("{sign}{int_part}")
        }
    }

    fn interval(b: &[u8]) -> String {
        let micros = i64::from_be_bytes(b[0..8].try_into().unwrap());
        let days = i32::from_be_bytes(b[8..12].try_into().unwrap());
        let months = i32::from_be_bytes(b[12..16].try_into().unwrap());
        let mut parts = Vec::new();
        let unit = |n: i64, one: &str, many: &str| {
            if n.abs() == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {many}")
            }
        };
        if months / 12 != 0 {
            parts.push(unit((months / 12) as i64, "year", "years"));
        }
        if months % 12 != 0 {
            parts.push(unit((months % 12) as i64, "mon", "mons"));
        }
        if days != 0 {
            parts.push(unit(days as i64, "day", "days"));
        }
        if micros != 0 || parts.is_empty() {
            let abs = micros.unsigned_abs();
            let secs = abs / 1_000_000;
            parts.push(format!(
                "{}{:02}:{:02}:{:02}{}",
                if micros < 0 { "-" } else { "" },
                secs / 3600,
                (secs / 60) % 60,
                secs % 60,
                fraction((abs % 1_000_000) as u32)
            ));
        }
        parts.join(" ")
    }

    pub fn value(row: &Row, i: usize) -> String {
        let ty = row.columns()[i].type_().clone();
        or_null(row.get::<_, Option<Raw>>(i), |v| text(&ty, &v.0))
    }

    /// One non-NULL binary value of type `ty` as PostgreSQL prints it.
    fn text(ty: &Type, raw: &[u8]) -> String {
        fn get<'a, T: FromSql<'a>>(ty: &Type, raw: &'a [u8]) -> T {
            T::from_sql(ty, raw).expect("binary value decodes")
        }
        match *ty {
            Type::BOOL => if get::<bool>(ty, raw) { "t" } else { "f" }.into(),
            Type::INT2 => get::<i16>(ty, raw).to_string(),
            Type::INT4 => get::<i32>(ty, raw).to_string(),
            Type::INT8 => get::<i64>(ty, raw).to_string(),
            Type::OID => get::<u32>(ty, raw).to_string(),
            Type::FLOAT4 => float(get::<f32>(ty, raw) as f64, true),
            Type::FLOAT8 => float(get::<f64>(ty, raw), false),
            Type::BYTEA => {
                let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                format!("\\x{hex}")
            }
            Type::DATE => get::<NaiveDate>(ty, raw).format("%Y-%m-%d").to_string(),
            Type::TIME => {
                let v = get::<NaiveTime>(ty, raw);
                format!(
                    "{}{}",
                    v.format("%H:%M:%S"),
                    fraction(v.nanosecond() / 1000)
                )
            }
            Type::TIMESTAMP => {
                let v = get::<NaiveDateTime>(ty, raw);
                format!(
                    "{}{}",
                    v.format("%Y-%m-%d %H:%M:%S"),
                    fraction(v.nanosecond() / 1000)
                )
            }
            Type::TIMESTAMPTZ => {
                let v = get::<chrono::DateTime<chrono::Utc>>(ty, raw);
                format!(
                    "{}{}+00",
                    v.format("%Y-%m-%d %H:%M:%S"),
                    fraction(v.nanosecond() / 1000)
                )
            }
            Type::NUMERIC => numeric(raw),
            Type::INTERVAL => interval(raw),
            _ => match ty.kind() {
                Kind::Array(element) => array(element, raw),
                _ => String::from_utf8_lossy(raw).to_string(),
            },
        }
    }

    /// A one-dimensional binary array in PostgreSQL's text form (`{1,"a b",NULL}`).
    fn array(element: &Type, raw: &[u8]) -> String {
        let int = |at: usize| i32::from_be_bytes(raw[at..at + 4].try_into().unwrap());
        let ndim = int(0);
        assert!(ndim <= 1, "arrays of one dimension");
        let len = if ndim == 0 { 0 } else { int(12) as usize };
        let mut at = if ndim == 0 { 12 } else { 20 };
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            let n = int(at);
            at += 4;
            if n < 0 {
                items.push("NULL".to_string());
                continue;
            }
            let item = text(element, &raw[at..at + n as usize]);
            at += n as usize;
            let quote = item.is_empty()
                || item.eq_ignore_ascii_case("null")
                || item
                    .chars()
                    .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
            items.push(if quote {
                format!("\"{}\"", item.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                item
            });
        }
        format!("{{{}}}", items.join(","))
    }
}

fn run_file(path: PathBuf, protocol: Protocol) -> Result<(), Failed> {
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
                        protocol,
                    })
                }
            }
        };
        let mut runner = Runner::new(make);
        let result = if std::env::var("SLT_OVERRIDE").is_ok() && protocol == Protocol::Simple {
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
    let mut trials = Vec::new();
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let p = path.clone();
        trials.push(Trial::test(format!("{name}::simple"), move || {
            run_file(p, Protocol::Simple)
        }));
        trials.push(Trial::test(format!("{name}::extended"), move || {
            run_file(path, Protocol::Extended)
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
