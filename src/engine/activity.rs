//! What each connection is doing, for `pg_stat_activity`, and the means to stop it:
//! `pg_cancel_backend(pid)` and `pg_terminate_backend(pid)`.
//!
//! ```text
//!  Session::new ──► Backends::register ──► Backend (pid, user, client, settings)
//!  server, per statement: Backend::start(query) … Backend::finish(transaction state)
//!  server, at start-up:   Backend::set_control(cancel = CancelRequest's path,
//!                                              terminate = FATAL 57P01 and close the socket)
//!  Session dropped (the connection ended) ──► removed
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use super::pg_catalog::Settings;

/// How the server stops a connection's work.
pub trait BackendControl: Send + Sync {
    /// Cancels its running statement, as a CancelRequest does (57014).
    fn cancel(&self);
    /// Ends the connection (its open transaction rolls back); `idle`: it is between
    /// statements, so a FATAL message may be sent first.
    fn terminate(&self, idle: bool);
}

/// The connected sessions.
#[derive(Default)]
pub struct Backends {
    next: AtomicU64,
    by_id: Mutex<BTreeMap<u64, Arc<Backend>>>,
}

impl Backends {
    /// Lists a new session's backend (see [`Backend::new`]).
    pub fn register(&self, backend: Backend) -> Arc<Backend> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let backend = Arc::new(Backend { id, ..backend });
        self.by_id.lock().insert(id, backend.clone());
        backend
    }

    pub fn remove(&self, backend: &Backend) {
        self.by_id.lock().remove(&backend.id);
    }

    /// Every connected session's backend, oldest first.
    pub fn list(&self) -> Vec<Arc<Backend>> {
        self.by_id.lock().values().cloned().collect()
    }

    pub fn by_pid(&self, pid: i32) -> Option<Arc<Backend>> {
        self.by_id.lock().values().find(|b| b.pid == pid).cloned()
    }
}

/// One session: who it is and what it is doing.
pub struct Backend {
    id: u64,
    pub pid: i32,
    pub user: String,
    /// The client's address and port (none for a session without a connection).
    pub client: Option<std::net::SocketAddr>,
    pub started: SystemTime,
    /// The session's settings (its application_name as it is now).
    settings: Settings,
    activity: Mutex<Activity>,
    control: Mutex<Option<Arc<dyn BackendControl>>>,
}

/// What a session is doing, as `pg_stat_activity` shows it.
#[derive(Debug, Clone)]
pub struct Activity {
    /// `active`, `idle`, `idle in transaction` or `idle in transaction (aborted)`.
    pub state: &'static str,
    /// The statement running, or the last one.
    pub query: String,
    pub query_start: Option<SystemTime>,
    /// When its transaction began (the statement's start outside a block).
    pub xact_start: Option<SystemTime>,
    pub state_change: SystemTime,
}

impl Backend {
    pub fn new(
        pid: i32,
        user: &str,
        client: Option<std::net::SocketAddr>,
        settings: Settings,
    ) -> Backend {
        let now = SystemTime::now();
        Backend {
            id: 0,
            pid,
            user: user.to_string(),
            client,
            started: now,
            settings,
            activity: Mutex::new(Activity {
                state: "idle",
                query: String::new(),
                query_start: None,
                xact_start: None,
                state_change: now,
            }),
            control: Mutex::new(None),
        }
    }

    pub fn application_name(&self) -> String {
        self.settings
            .lock()
            .get("application_name")
            .cloned()
            .unwrap_or_default()
    }

    pub fn activity(&self) -> Activity {
        self.activity.lock().clone()
    }

    /// A statement (or a simple query's several) starts.
    pub fn start(&self, query: &str) {
        let now = SystemTime::now();
        let mut a = self.activity.lock();
        a.state = "active";
        a.query = query.to_string();
        a.query_start = Some(now);
        a.xact_start.get_or_insert(now);
        a.state_change = now;
    }

    /// It ended; `state` is the session's now (see [`super::Session::backend_state`]).
    pub fn finish(&self, state: &'static str) {
        let mut a = self.activity.lock();
        a.state = state;
        if state == "idle" {
            a.xact_start = None;
        }
        a.state_change = SystemTime::now();
    }

    pub fn set_control(&self, control: Arc<dyn BackendControl>) {
        *self.control.lock() = Some(control);
    }

    /// Cancels its running statement; false when it has no connection to signal.
    pub fn cancel(&self) -> bool {
        let control = self.control.lock().clone();
        control.map(|c| c.cancel()).is_some()
    }

    /// Ends its connection; false when it has none.
    pub fn terminate(&self) -> bool {
        let control = self.control.lock().clone();
        let idle = self.activity.lock().state != "active";
        control.map(|c| c.terminate(idle)).is_some()
    }
}
