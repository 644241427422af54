//! Shared by the test crates (and the benchmarks): an in-process server on a free port over a
//! temporary data directory, and a tokio-postgres connection to it.

#![allow(dead_code)]

use eddy::engine::EngineConfig;
use eddy::server::Server;
use tokio_postgres::{Client, NoTls};

/// Server processes the tests started and have not reaped yet (killed by the watchdog).
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Ends a test binary that runs longer than `EDDY_TEST_TIMEOUT_SECS` (default 15 minutes; 0
/// turns it off): a hung test fails the suite with a message naming the cause, instead of
/// running until CI's own limit ends everything. Benchmarks (built without `cfg(test)`) have
/// no limit.
fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if !cfg!(test) {
        return;
    }
    STARTED.call_once(|| {
        let secs = std::env::var("EDDY_TEST_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(15 * 60);
        if secs == 0 {
            return;
        }
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            // Straight to the process's stderr: `eprintln!` in a thread a test spawned is
            // captured with that test's output, which is never printed when the process exits.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\nthis test binary has run for over {secs} s (EDDY_TEST_TIMEOUT_SECS): a test \
                 is hung; the tests that were still running are listed above without a result"
            );
            for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
            std::process::exit(124);
        });
    });
}

/// A server on 127.0.0.1 with a fresh data directory in `parent` (the system's temporary
/// directory when `None`); keep the directory alive as long as the server.
pub async fn start_in(parent: Option<&std::path::Path>) -> (Server, tempfile::TempDir) {
    watchdog();
    let dir = match parent {
        Some(p) => tempfile::tempdir_in(p),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let server = Server::start_with(
        EngineConfig::new(dir.path().to_path_buf()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    (server, dir)
}

pub async fn start() -> (Server, tempfile::TempDir) {
    start_in(None).await
}

/// A server whose settings `configure` adjusts (over a fresh data directory).
pub async fn start_with(configure: impl FnOnce(&mut EngineConfig)) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = restart(dir.path(), configure).await;
    (server, dir)
}

/// A server over an existing data directory (to restart one).
pub async fn restart(dir: &std::path::Path, configure: impl FnOnce(&mut EngineConfig)) -> Server {
    watchdog();
    let mut config = EngineConfig::new(dir.to_path_buf());
    configure(&mut config);
    Server::start_with(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The rows of a query, each a list of its values as text (`NULL` for null).
pub async fn query_rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The rows of a query as text, sorted (a multiset to compare).
pub async fn sorted_rows(client: &Client, sql: &str) -> Vec<String> {
    let mut out: Vec<String> = query_rows(client, sql)
        .await
        .into_iter()
        .map(|r| r.join("|"))
        .collect();
    out.sort();
    out
}

/// The Nexmark queries of `benches/nexmark/*.sql`, by name, in query order.
pub fn nexmark_queries() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nexmark");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort_by_key(|(name, _)| name[1..].parse::<u32>().unwrap_or(u32::MAX));
    out
}

/// How to reach `server` as user `eddy`, database `eddy`.
pub fn conninfo(server: &Server) -> String {
    format!(
        "host=127.0.0.1 port={} user=eddy dbname=eddy",
        server.local_addr().port()
    )
}

/// A connection (user and database `eddy`) whose driver task runs in the background.
pub async fn connect(server: &Server) -> Client {
    connect_with_task(server).await.0
}

/// A connection and its driver task (abort the task to drop the connection at once).
pub async fn connect_with_task(server: &Server) -> (Client, tokio::task::JoinHandle<()>) {
    let (client, conn) = tokio_postgres::connect(&conninfo(server), NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, task)
}

/// A server with these options (on a free port) over a temporary data directory.
pub async fn start_with_server_options(
    configure: impl FnOnce(&mut eddy::server::ServerOptions),
) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = eddy::server::ServerOptions::new("127.0.0.1:0".parse().unwrap());
    configure(&mut options);
    let server = Server::start_with_options(EngineConfig::new(dir.path().to_path_buf()), options)
        .await
        .unwrap();
    (server, dir)
}

/// A connection whose NOTICEs arrive, in order, on the receiver.
pub async fn connect_with_notices(
    server: &Server,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (client, mut conn) = tokio_postgres::connect(&conninfo(server), NoTls)
        .await
        .unwrap();
    let (tx, notices) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    (client, notices)
}

/// A field of `/proc/<pid>/status` in kB (`VmHWM`: peak RSS, `VmRSS`: RSS now), as MB.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1e3)
}

/// The value after `name` on a benchmark's command line (`-- --rows 1000`), or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The comma-separated numbers after `name` on a benchmark's command line, or `default`'s.
pub fn arg_list(name: &str, default: &str) -> Vec<u64> {
    let args: Vec<String> = std::env::args().collect();
    let text = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string());
    text.split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `eddy` binary as a child process, killed (`kill -9`) when dropped — also when a
/// test fails.
pub struct EddyProcess {
    child: std::process::Child,
    pub port: u16,
}

impl EddyProcess {
    /// Starts the binary over `data_dir` on a free port, with extra `args` and environment
    /// `env`.
    pub fn spawn(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> EddyProcess {
        Self::spawn_on(free_port(), data_dir, args, env)
    }

    /// The same on a given port (to restart a server where its clients expect it).
    pub fn spawn_on(
        port: u16,
        data_dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> EddyProcess {
        watchdog();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log-level")
            .arg("warn")
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("eddy starts");
        CHILDREN.lock().unwrap().push(child.id());
        EddyProcess { child, port }
    }

    /// The binary run as its container image runs it: no arguments, every setting from the
    /// environment `env` (which must give the address, on `port`); stdout and stderr (its log)
    /// go to `log`.
    pub fn spawn_with_env(port: u16, env: &[(String, String)], log: std::fs::File) -> EddyProcess {
        watchdog();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("eddy starts");
        CHILDREN.lock().unwrap().push(child.id());
        EddyProcess { child, port }
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.reap();
    }

    /// SIGTERM (a clean shutdown), and waits for the process to exit.
    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.reap();
    }

    /// Waits for the exited process and forgets its pid.
    fn reap(&mut self) {
        self.child.wait().unwrap();
        self.forget();
    }

    /// Takes the process off the watchdog's list.
    fn forget(&self) {
        let pid = self.child.id();
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connection, retrying while the server starts.
    pub async fn connect(&self) -> Client {
        Self::connect_port(self.port).await
    }

    /// A connection to the server on `port`, retrying while it starts.
    pub async fn connect_port(port: u16) -> Client {
        Self::connect_within(port, std::time::Duration::from_secs(120)).await
    }

    /// A connection to the server on `port`, retrying for up to `wait` while it starts (a
    /// benchmark's server may be loading gigabytes of state or replaying a long log tail).
    pub async fn connect_within(port: u16, wait: std::time::Duration) -> Client {
        let tries = wait.as_millis() / 25;
        for _ in 0..tries {
            if let Ok((client, conn)) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user=eddy dbname=eddy"),
                NoTls,
            )
            .await
            {
                tokio::spawn(conn);
                return client;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("eddy did not accept connections on port {port}");
    }
}

impl Drop for EddyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.forget();
    }
}
