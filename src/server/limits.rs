//! What one client may take of the server: connections at once (53300 past the limit),
//! statement size (54000), and time idle inside a transaction block (the session ends with
//! FATAL 25P03, rolling the transaction back). Memory per query is the engine's (a DataFusion
//! memory pool per session, 53200).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use pgwire::api::results::Response;
use pgwire::error::ErrorInfo;
use pgwire::messages::PgWireBackendMessage;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ServerOptions;
use crate::engine::Session;
use crate::error::{Error, Result, sqlstate};

/// The session setting (PostgreSQL's name), in milliseconds or with a unit (`5s`).
pub const IDLE_IN_TRANSACTION_SETTING: &str = "idle_in_transaction_session_timeout";

pub struct Limits {
    max_connections: usize,
    max_statement_size: usize,
    /// The default of [`IDLE_IN_TRANSACTION_SETTING`].
    pub idle_in_transaction_timeout: Duration,
    connections: AtomicUsize,
}

impl Limits {
    pub fn new(options: &ServerOptions) -> Limits {
        Limits {
            max_connections: options.max_connections,
            max_statement_size: options.max_statement_size,
            idle_in_transaction_timeout: options.idle_in_transaction_timeout,
            connections: AtomicUsize::new(0),
        }
    }

    /// A connection slot, held for as long as the connection lasts; 53300 when all are taken.
    pub fn connect(self: &Arc<Self>) -> Result<Slot> {
        let n = self.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = Slot {
            limits: self.clone(),
        };
        if n > self.max_connections {
            drop(slot);
            return Err(crate::err!(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already"
            )
            .with_hint(format!(
                "The server accepts {} connections at once (--max-connections).",
                self.max_connections
            )));
        }
        Ok(slot)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub fn check_statement(&self, text: &str) -> Result<()> {
        if text.len() > self.max_statement_size {
            return Err(crate::err!(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                "statement is too long: {} bytes, the limit is {} (--max-statement-size)",
                text.len(),
                self.max_statement_size
            ));
        }
        Ok(())
    }
}

/// A connection's place among the `--max-connections`; given back when dropped (with the
/// connection's other state, when it ends).
pub struct Slot {
    limits: Arc<Limits>,
}

impl Slot {
    pub fn check_statement(&self, text: &str) -> Result<()> {
        self.limits.check_statement(text)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends the connection when its session stays idle inside a transaction block past its
/// idle_in_transaction_session_timeout: a task per connection waits for the deadline that
/// the end of each response sets (and each new message clears), then sends FATAL 25P03 and
/// shuts the socket down, so pgwire's loop ends and the session (with its transaction) goes.
pub struct IdleWatch {
    deadline: Arc<watch::Sender<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
    /// The timeout when the session has no value of its own (after DISCARD ALL).
    default: Duration,
}

impl IdleWatch {
    /// `stream`: the server's own descriptor for the connection's socket. `secure`: the
    /// connection is TLS, where the watch cannot write a message of its own, so it only shuts
    /// the socket down.
    pub fn start(
        stream: Option<Arc<std::net::TcpStream>>,
        default: Duration,
        secure: bool,
    ) -> IdleWatch {
        let (deadline, mut changes) = watch::channel(None::<Instant>);
        let task = tokio::spawn(async move {
            loop {
                let at = *changes.borrow_and_update();
                match at {
                    None => {
                        if changes.changed().await.is_err() {
                            return;
                        }
                    }
                    Some(at) => {
                        tokio::select! {
                            changed = changes.changed() => if changed.is_err() { return },
                            _ = tokio::time::sleep_until(at) => {
                                if let Some(stream) = &stream {
                                    terminate(stream, secure);
                                }
                                return;
                            }
                        }
                    }
                }
            }
        });
        IdleWatch {
            deadline: Arc::new(deadline),
            task,
            default,
        }
    }

    /// A message arrived: the session is not idle.
    pub fn busy(&self) {
        self.deadline.send_replace(None);
    }

    /// The session has answered: once the answer is sent (a row stream's end), it is idle,
    /// and the deadline starts when it is inside a transaction block.
    pub fn arm_after(&self, responses: &mut [Response], session: &Session) {
        let timeout = idle_timeout(session).unwrap_or(self.default);
        if timeout.is_zero() || !session.in_transaction() {
            return;
        }
        let arm = ArmOnDrop {
            deadline: self.deadline.clone(),
            timeout,
        };
        match responses.last_mut() {
            Some(Response::Query(query)) => {
                let rows =
                    std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
                let done =
                    futures::stream::once(async move { drop(arm) }).filter_map(|()| async { None });
                query.data_rows = Box::pin(rows.chain(done));
            }
            _ => drop(arm),
        }
    }
}

impl Drop for IdleWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets the deadline when dropped: at the end of a row stream, or when pgwire drops it early.
struct ArmOnDrop {
    deadline: Arc<watch::Sender<Option<Instant>>>,
    timeout: Duration,
}

impl Drop for ArmOnDrop {
    fn drop(&mut self) {
        self.deadline
            .send_replace(Some(Instant::now() + self.timeout));
    }
}

/// The session's idle_in_transaction_session_timeout (milliseconds, or a duration with a
/// unit), if it has one.
fn idle_timeout(session: &Session) -> Option<Duration> {
    let value = session.setting(IDLE_IN_TRANSACTION_SETTING)?;
    let value = value.trim();
    Some(match value.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => crate::types::parse_duration(value).unwrap_or(Duration::ZERO),
    })
}

/// Sends FATAL 25P03 and shuts the socket down. The session is idle, so pgwire is waiting to
/// read and writes nothing meanwhile.
fn terminate(stream: &std::net::TcpStream, secure: bool) {
    let error = Error::new(
        sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
        "terminating connection due to idle-in-transaction timeout",
    );
    end_connection(stream, Some(error).filter(|_| !secure));
    tracing::info!("ended a session idle in a transaction block past its timeout");
}

/// Shuts the connection's socket down, so pgwire's loop ends and the session (with its
/// transaction) goes; `fatal`, when given, is sent first as a FATAL message. Only while
/// pgwire writes nothing (the session is idle), and not over TLS, whose stream this
/// descriptor cannot write.
pub(super) fn end_connection(stream: &std::net::TcpStream, fatal: Option<Error>) {
    let mut buf = bytes::BytesMut::new();
    if let Some(error) = fatal {
        let info = ErrorInfo::new("FATAL".into(), error.sqlstate.into(), error.message);
        if PgWireBackendMessage::ErrorResponse(info.into())
            .encode(&mut buf)
            .is_ok()
        {
            let mut stream = stream;
            let _ = stream.write_all(&buf);
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
