//! The PostgreSQL wire protocol front end (pgwire): startup, simple and extended query, COPY,
//! cancel. It turns messages into [`Session`] calls and [`Output`]s into messages, and knows
//! nothing about storage or dataflow.
//!
//! ```text
//!  TCP ─► pgwire (framing, portal store) ─► Handlers ─► engine::Session ─► Output
//!                                             │ encode.rs: Arrow → DataRow (text/binary)
//!                                             │ params.rs: Bind bytes → ScalarValue
//!                                             └ copy.rs:   CopyData → text columns
//! ```

mod auth;
mod copy;
mod copy_out;
mod dashboard;
mod encode;
mod limits;
mod metrics;
mod subscribe;
mod tls;

pub use auth::AuthMode;
pub use encode::format_float;
mod params;

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionGuard, ConnectionHandle, ConnectionManager,
    ErrorHandler, PgWireServerHandlers, PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::DataRow;
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::engine::activity::{Backend, BackendControl};
use crate::engine::{CopyIn, Engine, EngineConfig, Output, Prepared, Session};
use crate::error::{Error, Result, sqlstate};
use crate::sql;

/// What the server allows its clients, beyond the engine's settings (see [`Config`]).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    /// Connections at once; the next one gets 53300.
    pub max_connections: usize,
    /// The longest statement text accepted (bytes); longer ones get 54000.
    pub max_statement_size: usize,
    /// The default of idle_in_transaction_session_timeout (zero: never).
    pub idle_in_transaction_timeout: std::time::Duration,
    /// PEM files of the certificate (chain) and key for TLS; none: no TLS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// How clients authenticate.
    pub auth: AuthMode,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the web dashboard (and `/metrics`), if anywhere.
    pub http_listen: Option<SocketAddr>,
}

impl ServerOptions {
    /// The defaults of the command line, listening on `listen`.
    pub fn new(listen: SocketAddr) -> ServerOptions {
        ServerOptions {
            listen,
            max_connections: 2000,
            max_statement_size: 16 << 20,
            idle_in_transaction_timeout: std::time::Duration::ZERO,
            tls: None,
            auth: AuthMode::for_listen(None, listen),
            metrics_listen: None,
            http_listen: None,
        }
    }
}

/// A running server: the engine plus the accept loop.
pub struct Server {
    engine: Arc<Engine>,
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    /// The background check of the state store started once serving (see
    /// [`Server::corruption`]), and the flag that stops it early.
    check: Option<tokio::task::JoinHandle<Result<()>>>,
    stop_check: Arc<AtomicBool>,
    /// The metrics endpoint's address and task, when serving one.
    metrics: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// The dashboard's, likewise.
    dashboard: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
}

impl Server {
    /// Opens the data directory and starts accepting connections.
    pub async fn start(config: &Config) -> Result<Server> {
        let engine_config = EngineConfig {
            data_dir: config.data_dir.clone(),
            retention: crate::subscribe::Retention {
                window: config.subscribe_retention,
                max_bytes: config.subscribe_history_mb << 20,
            },
            subscribe: crate::subscribe::Limits {
                progress_interval: config.subscribe_progress_interval,
                max_lag: config.subscribe_max_lag,
            },
            checkpoint_interval: config.checkpoint_interval,
            memory_budget: config.memory_budget,
            max_checkpoint_lag: config.max_checkpoint_lag,
            target_recovery_time: config.target_recovery_time,
            clock: config.clock,
            workers: match config.workers {
                0 => crate::engine::default_workers(),
                n => n as usize,
            },
            query_memory: config.query_memory,
        };
        let options = ServerOptions {
            listen: config.listen,
            max_connections: config.max_connections,
            max_statement_size: config.max_statement_size,
            idle_in_transaction_timeout: config.idle_in_transaction_timeout,
            tls: config.tls_cert.clone().zip(config.tls_key.clone()),
            auth: AuthMode::for_listen(config.auth, config.listen),
            metrics_listen: config.metrics_listen,
            http_listen: config.http_listen,
        };
        let server = Self::start_with_options(engine_config, options).await?;
        // The bootstrap role's password, for a first login over SCRAM (containers): from the
        // environment, never the command line (which other users of the machine can read).
        if let Ok(password) = std::env::var("EDDY_PASSWORD")
            && !password.is_empty()
        {
            server.engine.set_bootstrap_password(&password)?;
        }
        if AuthMode::for_listen(config.auth, config.listen) == AuthMode::Scram
            && server
                .engine
                .catalog()
                .roles()
                .iter()
                .all(|r| r.password.is_none())
        {
            tracing::warn!(
                "clients authenticate with passwords (--auth scram) but no role has one yet: \
                 start with EDDY_PASSWORD set to give the role \"eddy\" one"
            );
        }
        Ok(server)
    }

    /// A server with the default [`ServerOptions`] on `listen`.
    pub async fn start_with(engine_config: EngineConfig, listen: SocketAddr) -> Result<Server> {
        Self::start_with_options(engine_config, ServerOptions::new(listen)).await
    }

    pub async fn start_with_options(
        engine_config: EngineConfig,
        options: ServerOptions,
    ) -> Result<Server> {
        let listen = options.listen;
        let tls = match &options.tls {
            Some((cert, key)) => Some(tls::acceptor(cert, key)?),
            None => None,
        };
        let certificate = match &options.tls {
            Some((cert, _)) => Some(
                std::fs::read(cert)
                    .map_err(|e| Error::io(format!("reading {}", cert.display()), &e))?,
            ),
            None => None,
        };
        let engine = tokio::task::spawn_blocking(move || Engine::open(engine_config))
            .await
            .map_err(|e| crate::internal!("start-up task failed: {e}"))??;
        engine.start().await?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(format!("listening on {listen}"), &e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listen address", &e))?;
        let limits = Arc::new(limits::Limits::new(&options));
        let handlers = Arc::new(Handlers {
            engine: engine.clone(),
            manager: Arc::new(ConnectionManager::new()),
            pids: Arc::new(RandomPidSecretKeyGenerator::default()),
            socket: None,
            limits: limits.clone(),
            auth: match options.auth {
                AuthMode::Trust => None,
                AuthMode::Scram => Some(Arc::new(auth::Authenticator::scram(
                    engine.clone(),
                    certificate.as_deref(),
                )?)),
            },
        });
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let metrics = match options.metrics_listen {
            Some(addr) => Some(
                metrics::serve(
                    addr,
                    engine.clone(),
                    limits.clone(),
                    stop.subscribe(),
                    false,
                )
                .await?,
            ),
            None => None,
        };
        let dashboard = match options.http_listen {
            Some(addr) => {
                Some(metrics::serve(addr, engine.clone(), limits, stop.subscribe(), true).await?)
            }
            None => None,
        };
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((socket, peer)) => {
                            let _ = socket.set_nodelay(true);
                            let handlers = Arc::new(handlers.for_connection(Some(
                                subscribe::SocketRef(std::os::fd::AsRawFd::as_raw_fd(&socket)),
                            )));
                            let tls = tls.clone();
                            connections.spawn(async move {
                                if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                                }
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            connections.shutdown().await;
        });
        let stop_check = Arc::new(AtomicBool::new(false));
        let check = tokio::task::spawn_blocking({
            let (engine, stop) = (engine.clone(), stop_check.clone());
            move || {
                let started = std::time::Instant::now();
                let bytes = match engine.verify_state(&stop) {
                    Ok(bytes) => bytes,
                    Err(e) if e.sqlstate == sqlstate::DATA_CORRUPTED => {
                        return Err(e);
                    }
                    // Not damage (an I/O error, say): reads report it themselves.
                    Err(e) => {
                        tracing::warn!(error = %e.message, "could not check the state store");
                        return Ok(());
                    }
                };
                if !stop.load(Ordering::Relaxed) {
                    tracing::info!(
                        mb = bytes >> 20,
                        ms = started.elapsed().as_millis() as u64,
                        "state store checked against its checksums"
                    );
                }
                Ok(())
            }
        });
        Ok(Server {
            engine,
            addr,
            stop,
            accept,
            check: Some(check),
            stop_check,
            metrics,
            dashboard,
        })
    }

    /// Resolves with the corruption the background check of the state store finds (every
    /// stored block read back against its checksum; start-up itself reads only what it
    /// loads); never if there is none. The binary then stops rather than serve damaged data.
    pub async fn corruption(&mut self) -> Error {
        if let Some(check) = &mut self.check {
            let outcome = check.await;
            self.check = None;
            if let Ok(Err(e)) = outcome {
                return e;
            }
        }
        std::future::pending().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// Where the web dashboard is served, when it is.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.dashboard.as_ref().map(|(addr, _)| *addr)
    }

    /// The engine behind the server (for tests and benchmarks that look inside).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops accepting, closes every connection, and syncs and closes the log.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        for (_, task) in self.metrics.into_iter().chain(self.dashboard) {
            let _ = task.await;
        }
        self.stop_check.store(true, Ordering::Relaxed);
        if let Some(check) = self.check {
            let _ = check.await;
        }
        self.engine.close();
    }
}

struct Handlers {
    engine: Arc<Engine>,
    manager: Arc<ConnectionManager>,
    /// One generator for the whole server: backend pids must be unique, since the connection
    /// manager (cancel) is keyed by them.
    pids: Arc<RandomPidSecretKeyGenerator>,
    /// The connection's socket (per-connection handlers only), for SUBSCRIBE to notice the
    /// client hanging up.
    socket: Option<subscribe::SocketRef>,
    limits: Arc<limits::Limits>,
    /// None: trust.
    auth: Option<Arc<auth::Authenticator>>,
}

type SessionCell = AsyncMutex<Session>;

/// COPY FROM STDIN in progress on a connection.
struct CopyState {
    copy: CopyIn,
    parser: copy::CopyParser,
    batches: Vec<RecordBatch>,
    chunk_first_line: usize,
    error: Option<Error>,
}

type CopyCell = parking_lot::Mutex<Option<CopyState>>;

fn user_error(e: Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e)))
}

/// An error that ends the connection (after startup failed).
fn fatal_error(e: Error) -> PgWireError {
    let mut info = error_info(e);
    info.severity = "FATAL".to_owned();
    PgWireError::UserError(Box::new(info))
}

fn error_info(e: Error) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".to_owned(), e.sqlstate.to_owned(), e.message);
    info.detail = e.detail;
    info.hint = e.hint;
    info
}

fn notice(severity: &str, code: &str, message: String) -> PgWireBackendMessage {
    PgWireBackendMessage::NoticeResponse(NoticeResponse::from(ErrorInfo::new(
        severity.to_owned(),
        code.to_owned(),
        message,
    )))
}

/// Sends the NOTICEs the session's last statement left (before its response).
async fn send_notices<C>(client: &mut C, cell: &SessionCell) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let notices = cell.lock().await.take_notices();
    for message in notices {
        client.feed(notice("NOTICE", "00000", message)).await?;
    }
    Ok(())
}

/// Runs a statement, sending the NOTICEs it reports while it runs (a materialized view's
/// backfill progress) as they come; the rest wait for [`send_notices`].
async fn execute_live<C>(
    client: &mut C,
    cell: &SessionCell,
    parsed: &crate::sql::Parsed,
    params: &[datafusion::common::ScalarValue],
) -> PgWireResult<crate::error::Result<Output>>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let (tx, mut live) = tokio::sync::mpsc::unbounded_channel();
    let run = async {
        let mut session = cell.lock().await;
        session.set_live_notices(Some(tx));
        let output = session.execute(parsed, params).await;
        session.set_live_notices(None);
        output
    };
    tokio::pin!(run);
    // A client gone mid-statement does not stop the statement: half a CREATE or a write must
    // not be left behind. Its error comes once the statement is over.
    let mut gone = None;
    let output = loop {
        tokio::select! {
            output = &mut run => break output,
            Some(message) = live.recv(), if gone.is_none() => {
                if let Err(e) = client.send(notice("NOTICE", "00000", message)).await {
                    gone = Some(PgWireError::from(e));
                }
            }
        }
    };
    if let Some(e) = gone {
        return Err(e);
    }
    while let Ok(message) = live.try_recv() {
        client.feed(notice("NOTICE", "00000", message)).await?;
    }
    Ok(output)
}

/// How `pg_cancel_backend` and `pg_terminate_backend` reach a connection.
struct ConnectionControl {
    /// What a CancelRequest fires.
    handle: Arc<ConnectionHandle>,
    /// The server's own descriptor for the connection's socket.
    stream: Option<Arc<std::net::TcpStream>>,
    secure: bool,
}

impl BackendControl for ConnectionControl {
    fn cancel(&self) {
        // As a CancelRequest, which arrives on its own connection: the statement calling
        // pg_cancel_backend does not wait for it.
        let handle = self.handle.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { handle.cancel().await });
            }
            Err(_) => {
                futures::executor::block_on(handle.cancel());
            }
        }
    }

    fn terminate(&self, idle: bool) {
        self.cancel();
        if let Some(stream) = &self.stream {
            let fatal = (idle && !self.secure).then(|| {
                Error::new(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                )
            });
            limits::end_connection(stream, fatal);
        }
    }
}

/// Shows a session as active in pg_stat_activity while a query runs, and idle (in its
/// transaction's state) once it ends, also when a CancelRequest drops it midway.
struct Active {
    backend: Option<Arc<Backend>>,
    cell: Arc<SessionCell>,
}

impl Active {
    fn start<C: ClientInfo>(client: &C, cell: &Arc<SessionCell>, query: &str) -> Active {
        let backend = client
            .session_extensions()
            .get::<Arc<Backend>>()
            .map(|b| Arc::clone(&*b));
        if let Some(backend) = &backend {
            backend.start(query);
        }
        Active {
            backend,
            cell: cell.clone(),
        }
    }

    /// A statement that answered with CopyInResponse is still running while the client sends
    /// its data: the session stays active until CopyDone or CopyFail ([`copy_finished`]).
    fn keep_through_copy_in<C: ClientInfo>(mut self, client: &C) {
        let copying = client
            .session_extensions()
            .get::<CopyCell>()
            .is_some_and(|copy| copy.lock().is_some());
        if copying {
            self.backend = None;
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(backend) = &self.backend {
            let state = self
                .cell
                .try_lock()
                .map_or("idle", |session| session.backend_state());
            backend.finish(state);
        }
    }
}

/// The COPY FROM STDIN that [`Active::keep_through_copy_in`] left active has ended.
fn copy_finished<C: ClientInfo>(client: &C, session: &Session) {
    if let Some(backend) = client.session_extensions().get::<Arc<Backend>>() {
        backend.finish(session.backend_state());
    }
}

fn session_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<SessionCell>> {
    client
        .session_extensions()
        .get::<SessionCell>()
        .ok_or_else(|| {
            user_error(Error::new(
                sqlstate::PROTOCOL_VIOLATION,
                "no session: startup has not completed",
            ))
        })
}

fn fields_of(schema: &SchemaRef, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    let n = schema.fields().len();
    if let Format::Individual(codes) = format
        && codes.len() != n
    {
        return Err(user_error(crate::err!(
            sqlstate::PROTOCOL_VIOLATION,
            "bind message has {} result formats but query has {n} columns",
            codes.len()
        )));
    }
    Ok(schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let ty = encode::pg_type(f.data_type());
            let size = encode::type_size(&ty);
            FieldInfo::new(f.name().clone(), None, None, ty, format.format_for(i))
                .with_type_size(size)
        })
        .collect())
}

/// Encodes a stream of record batches as DataRows.
fn row_stream(
    stream: datafusion::execution::SendableRecordBatchStream,
    fields: Arc<Vec<FieldInfo>>,
) -> impl futures::Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    stream.flat_map(move |batch| {
        let rows: Vec<PgWireResult<DataRow>> = match batch {
            Err(e) => vec![Err(user_error(Error::from(e)))],
            Ok(batch) => {
                let formats: Vec<FieldFormat> = fields.iter().map(|f| f.format()).collect();
                (0..batch.num_rows())
                    .map(|row| {
                        let mut data = bytes::BytesMut::with_capacity(64);
                        for (col, format) in batch.columns().iter().zip(&formats) {
                            encode::encode_value(col.as_ref(), row, *format, &mut data);
                        }
                        Ok(DataRow::new(data, batch.num_columns() as i16))
                    })
                    .collect()
            }
        };
        stream::iter(rows)
    })
}

impl Handlers {
    /// Turns an engine output into a pgwire response (sending notices first). `describe`: the
    /// simple protocol, where a streamed result (SUBSCRIBE) sends its own RowDescription.
    async fn respond<C>(
        &self,
        client: &mut C,
        output: Output,
        format: &Format,
        describe: bool,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(match output {
            // Statements the extended protocol parsed are kept by pgwire, and replaced when a
            // name is parsed again; DEALLOCATE ALL cannot list them, so it leaves them (psycopg
            // sends it after a DROP or ROLLBACK, and parses again before it uses a name).
            Output::Deallocate { name: None } => Response::Execution(Tag::new("DEALLOCATE ALL")),
            Output::Deallocate { name: Some(name) } => {
                if client.portal_store().get_statement(&name).is_none() {
                    return Err(user_error(Error::new(
                        sqlstate::INVALID_SQL_STATEMENT_NAME,
                        format!("prepared statement \"{name}\" does not exist"),
                    )));
                }
                client.portal_store().rm_statement(&name);
                Response::Execution(Tag::new("DEALLOCATE"))
            }
            Output::Rows {
                schema,
                stream,
                tag,
            } => {
                let fields = Arc::new(fields_of(&schema, format)?);
                let mut response = QueryResponse::new(fields.clone(), row_stream(stream, fields));
                response.set_command_tag(tag);
                Response::Query(response)
            }
            Output::Command { tag, rows } => Response::Execution(command_tag(tag, rows)),
            Output::CopyOut {
                schema,
                stream,
                format,
            } => {
                let rows = copy_out::send(client, &schema, stream, format).await?;
                Response::Execution(command_tag("COPY", Some(rows)))
            }
            Output::Subscribe { subscription, copy } => {
                let format = if copy.is_some() {
                    &Format::UnifiedText
                } else {
                    format
                };
                let fields = Arc::new(fields_of(subscription.schema(), format)?);
                let tag =
                    subscribe::stream(client, subscription, fields, copy, describe, self.socket)
                        .await?;
                Response::Execution(tag)
            }
            Output::TransactionStart => Response::TransactionStart(Tag::new("BEGIN")),
            Output::TransactionEnd { tag } => Response::TransactionEnd(Tag::new(tag)),
            Output::Warning { tag, message } => {
                let code = match tag {
                    "BEGIN" => sqlstate::ACTIVE_SQL_TRANSACTION,
                    "COMMIT" | "ROLLBACK" => sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                    _ => "00000",
                };
                let severity = if code == "00000" { "NOTICE" } else { "WARNING" };
                for line in message.lines() {
                    client
                        .feed(notice(severity, code, line.to_string()))
                        .await?;
                }
                Response::Execution(Tag::new(tag))
            }
            Output::CopyIn(copy) => {
                let names: Vec<String> = copy
                    .columns
                    .iter()
                    .map(|c| copy.table.columns[*c].name.clone())
                    .collect();
                let ncols = names.len();
                let parser =
                    copy::CopyParser::new(copy.format.clone(), copy.table.name.clone(), names);
                let first = 1 + copy.format.header as usize;
                let state = CopyState {
                    copy,
                    parser,
                    batches: Vec::new(),
                    chunk_first_line: first,
                    error: None,
                };
                client
                    .session_extensions()
                    .insert::<CopyCell>(parking_lot::Mutex::new(Some(state)));
                Response::CopyIn(CopyResponse::new(0, ncols, stream::empty()))
            }
        })
    }

    fn copy_chunk(session: &Session, state: &mut CopyState) {
        if state.error.is_some() || state.parser.rows_buffered() == 0 {
            return;
        }
        let columns = state.parser.take_chunk();
        let first = state.chunk_first_line;
        state.chunk_first_line = state.parser.line;
        match session.copy_rows(&state.copy, columns) {
            Ok(batch) => state.batches.push(batch),
            Err((row, col, e)) => {
                let name = state
                    .copy
                    .columns
                    .get(col)
                    .map(|c| state.copy.table.columns[*c].name.clone());
                state.error = Some(copy::with_context(
                    e,
                    &state.copy.table.name,
                    first + row,
                    name.as_deref(),
                ));
            }
        }
    }
}

fn command_tag(tag: &str, rows: Option<usize>) -> Tag {
    match (tag, rows) {
        ("INSERT", Some(n)) => Tag::new("INSERT").with_oid(0).with_rows(n),
        (tag, Some(n)) => Tag::new(tag).with_rows(n),
        (tag, None) => Tag::new(tag),
    }
}

#[async_trait]
impl StartupHandler for Handlers {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let slot = self.limits.connect().map_err(fatal_error)?;
                client.session_extensions().insert::<limits::Slot>(slot);
                let Some(auth) = &self.auth else {
                    return self.start_session(client, None).await;
                };
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let outcome = auth
                    .driver
                    .begin_authentication(client, auth.mechanism(client.is_secure()))
                    .await
                    .map_err(|_| fatal_error(auth::failed(&user)))?;
                if let AuthOutcome::Authenticated { final_message, .. } = outcome {
                    self.start_session(client, final_message).await?;
                }
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let Some(auth) = &self.auth else {
                    return Err(fatal_error(crate::err!(
                        sqlstate::PROTOCOL_VIOLATION,
                        "unexpected password message: this server asks for none"
                    )));
                };
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let outcome = auth
                    .driver
                    .advance_authentication(client, message)
                    .await
                    .map_err(|_| fatal_error(auth::failed(&user)))?;
                if let AuthOutcome::Authenticated { final_message, .. } = outcome {
                    self.start_session(client, final_message).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Handlers {
    /// After authentication: the session, its pid and cancel key, and the rest of startup
    /// (AuthenticationOk, parameters, BackendKeyData, ReadyForQuery). `final_message`: the
    /// authentication's last message (SCRAM's server signature), sent first.
    async fn start_session<C>(
        &self,
        client: &mut C,
        final_message: Option<pgwire::messages::startup::Authentication>,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(message) = final_message {
            client
                .send(PgWireBackendMessage::Authentication(message))
                .await?;
        }
        let (pid, key) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, key.clone());
        let (handle, guard) = self.manager.register(pid, key);
        client
            .session_extensions()
            .insert::<Arc<ConnectionHandle>>(handle.clone());
        client.session_extensions().insert::<ConnectionGuard>(guard);
        let mut startup_params: HashMap<String, String> = client.metadata().clone();
        startup_params.insert(
            crate::engine::CLIENT_ADDRESS.to_string(),
            client.socket_addr().to_string(),
        );
        let mut session =
            Session::new(self.engine.clone(), &startup_params, pid).map_err(user_error)?;
        session.set_default(
            limits::IDLE_IN_TRANSACTION_SETTING,
            self.limits
                .idle_in_transaction_timeout
                .as_millis()
                .to_string(),
        );
        // The server's own descriptor for the socket: stays valid (and the same socket)
        // whatever happens to pgwire's, for the idle timeout and pg_terminate_backend.
        let stream = self
            .socket
            .and_then(|socket| socket.dup().ok())
            .map(Arc::new);
        let backend = session.backend().clone();
        backend.set_control(Arc::new(ConnectionControl {
            handle,
            stream: stream.clone(),
            secure: client.is_secure(),
        }));
        client.session_extensions().insert::<Arc<Backend>>(backend);
        client
            .session_extensions()
            .insert::<SessionCell>(AsyncMutex::new(session));
        if self.socket.is_some() {
            client
                .session_extensions()
                .insert::<limits::IdleWatch>(limits::IdleWatch::start(
                    stream,
                    self.limits.idle_in_transaction_timeout,
                    client.is_secure(),
                ));
        }
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = crate::SERVER_VERSION.to_string();
        params.time_zone = "UTC".to_string();
        params.date_style = "ISO, MDY".to_string();
        params.interval_style = "postgres".to_string();
        finish_authentication(client, &params).await
    }
}

#[async_trait]
impl SimpleQueryHandler for Handlers {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let cell = session_of(client)?;
        let active = Active::start(client, &cell, query);
        let idle = client.session_extensions().get::<limits::IdleWatch>();
        if let Some(idle) = &idle {
            idle.busy();
        }
        if let Err(e) = self.limits.check_statement(query) {
            cell.lock().await.fail_transaction();
            return Ok(vec![Response::Error(Box::new(error_info(e)))]);
        }
        let mut responses = self.simple_query(client, &cell, query).await?;
        if let Some(idle) = idle {
            idle.arm_after(&mut responses, &*cell.lock().await);
        }
        active.keep_through_copy_in(client);
        Ok(responses)
    }
}

impl Handlers {
    async fn simple_query<C>(
        &self,
        client: &mut C,
        cell: &Arc<SessionCell>,
        query: &str,
    ) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = match sql::parse_all(query) {
            Ok(s) => s,
            Err(e) => {
                cell.lock().await.fail_transaction();
                return Ok(vec![Response::Error(Box::new(error_info(e)))]);
            }
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        // Several statements in one query form one implicit transaction, as in PostgreSQL.
        let implicit = statements.len() > 1;
        if implicit {
            cell.lock().await.begin_implicit();
        }
        let mut responses = Vec::with_capacity(statements.len());
        for parsed in &statements {
            let output = execute_live(client, cell, parsed, &[]).await?;
            send_notices(client, cell).await?;
            match output {
                Ok(output) => {
                    let is_copy = matches!(output, Output::CopyIn(_));
                    if is_copy && implicit {
                        // COPY data arrives after this query; what came before commits first.
                        if let Err(e) = cell.lock().await.end_implicit().await {
                            responses.push(Response::Error(Box::new(error_info(e))));
                            return Ok(responses);
                        }
                    }
                    responses.push(
                        self.respond(client, output, &Format::UnifiedText, true)
                            .await?,
                    );
                    if is_copy {
                        return Ok(responses);
                    }
                    // After a COMMIT/ROLLBACK, the rest of the query is a new implicit block.
                    if implicit {
                        cell.lock().await.begin_implicit();
                    }
                }
                Err(e) => {
                    responses.push(Response::Error(Box::new(error_info(e))));
                    break;
                }
            }
        }
        if implicit && let Err(e) = cell.lock().await.end_implicit().await {
            responses.push(Response::Error(Box::new(error_info(e))));
        }
        send_notices(client, cell).await?;
        Ok(responses)
    }
}

/// Parses statements for the extended protocol and describes them.
struct Parser;

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql_text: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let cell = session_of(client)?;
        if let Some(idle) = client.session_extensions().get::<limits::IdleWatch>() {
            idle.busy();
        }
        if let Some(limits) = client.session_extensions().get::<limits::Slot>() {
            limits.check_statement(sql_text).map_err(user_error)?;
        }
        let mut statements = sql::parse_all(sql_text).map_err(user_error)?;
        if statements.len() > 1 {
            return Err(user_error(crate::err!(
                sqlstate::SYNTAX_ERROR,
                "cannot insert multiple commands into a prepared statement"
            )));
        }
        let Some(parsed) = statements.pop() else {
            return Ok(None);
        };
        let mut session = cell.lock().await;
        let prepared = session.prepare(parsed).await;
        if prepared.is_err() {
            session.fail_transaction();
        }
        prepared.map(Some).map_err(user_error)
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .param_types
            .iter()
            .map(|t| t.as_ref().map(encode::pg_type).unwrap_or(Type::TEXT))
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.schema {
            // A statement's Describe comes before Bind chose the formats: PostgreSQL reports
            // text (zero) for every column then. pgjdbc takes the codes it is given as the
            // formats to ask for, so binary here made it ask binary for types it cannot
            // decode (interval: NULL) and misread others.
            Some(schema) => fields_of(schema, format.unwrap_or(&Format::UnifiedText)),
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handlers {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::new(Parser)
    }

    /// Describe of a statement with parameters but no result rows (`INSERT … VALUES ($1)`)
    /// must answer ParameterDescription and NoData, as PostgreSQL does: pgwire sends an empty
    /// RowDescription instead, and pgjdbc then fails the INSERT with "A result was returned
    /// when none was expected" once it prepares it server-side.
    async fn on_describe<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::extendedquery::Describe,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use pgwire::api::results::DescribeResponse;
        use pgwire::messages::data::{NoData, ParameterDescription};
        use pgwire::messages::extendedquery::TARGET_TYPE_BYTE_STATEMENT;
        if message.target_type == TARGET_TYPE_BYTE_STATEMENT {
            let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
            if let Some(pgwire::api::store::Entry::Value(stmt)) =
                client.portal_store().get_statement(name)
            {
                let response = self.do_describe_statement(client, &stmt).await?;
                if response.fields().is_empty() {
                    let oids = response.parameters().unwrap_or_default();
                    client
                        .send(PgWireBackendMessage::ParameterDescription(
                            ParameterDescription::new(oids.iter().map(|t| t.oid()).collect()),
                        ))
                        .await?;
                    client
                        .send(PgWireBackendMessage::NoData(NoData::new()))
                        .await?;
                    return Ok(());
                }
            }
        }
        self._on_describe(client, message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let cell = session_of(client)?;
        let active = Active::start(client, &cell, &portal.statement.statement.parsed.text);
        let idle = client.session_extensions().get::<limits::IdleWatch>();
        if let Some(idle) = &idle {
            idle.busy();
        }
        let mut response = self.extended_query(client, portal, max_rows).await;
        if let (Some(idle), Ok(response)) = (idle, &mut response) {
            idle.arm_after(std::slice::from_mut(response), &*cell.lock().await);
        }
        active.keep_through_copy_in(client);
        response
    }
}

impl Handlers {
    async fn extended_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let cell = session_of(client)?;
        let prepared = &portal.statement.statement;
        if max_rows > 0
            && prepared.parsed.subscribe.is_some()
            && matches!(
                prepared.parsed.stmt,
                datafusion::sql::sqlparser::ast::Statement::Query(_)
            )
        {
            cell.lock().await.fail_transaction();
            return Err(user_error(crate::unsupported!(
                "SUBSCRIBE with a row limit per Execute (portal suspension, e.g. JDBC fetchSize): \
                 use DECLARE c CURSOR FOR SUBSCRIBE … and FETCH, or COPY (SUBSCRIBE …) TO STDOUT"
            )));
        }
        let params = match bind_params(portal) {
            Ok(p) => p,
            Err(e) => {
                cell.lock().await.fail_transaction();
                return Err(user_error(e));
            }
        };
        let output = execute_live(client, &cell, &prepared.parsed, &params).await?;
        send_notices(client, &cell).await?;
        let output = match output {
            Ok(output) => same_result_type(prepared, output),
            Err(e) => Err(user_error(e)),
        };
        if output.is_err() {
            cell.lock().await.fail_transaction();
        }
        self.respond(client, output?, &portal.result_column_format, false)
            .await
    }
}

/// Rows whose columns are not those Parse described (the table, view or cursor was recreated
/// with other columns since): the client would decode them wrongly, so this is the error
/// PostgreSQL gives, naming PostgreSQL's routine as asyncpg expects to prepare again.
fn same_result_type(prepared: &Prepared, output: Output) -> PgWireResult<Output> {
    if let (Some(described), Output::Rows { schema, .. }) = (&prepared.schema, &output) {
        let types = |s: &SchemaRef| -> Vec<Type> {
            s.fields()
                .iter()
                .map(|f| encode::pg_type(f.data_type()))
                .collect()
        };
        if types(described) != types(schema) {
            let mut info = error_info(Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "cached plan must not change result type",
            ));
            info.routine = Some("RevalidateCachedQuery".into());
            return Err(PgWireError::UserError(Box::new(info)));
        }
    }
    Ok(output)
}

/// Decodes a portal's parameters with the client's declared types, or the inferred ones.
fn bind_params(portal: &Portal<Prepared>) -> Result<Vec<ScalarValue>> {
    let prepared = &portal.statement.statement;
    let declared = &portal.statement.parameter_types;
    let n = portal.parameters.len();
    if let Format::Individual(codes) = &portal.parameter_format
        && codes.len() != n
    {
        return Err(crate::err!(
            sqlstate::PROTOCOL_VIOLATION,
            "bind message has {} parameter formats but {n} parameters",
            codes.len()
        ));
    }
    let expected = prepared.param_types.len().max(declared.len());
    if n != expected {
        return Err(crate::err!(
            sqlstate::PROTOCOL_VIOLATION,
            "bind message supplies {n} parameters, but prepared statement requires {expected}"
        ));
    }
    (0..n)
        .map(|i| {
            let ty = declared
                .get(i)
                .cloned()
                .flatten()
                .or_else(|| {
                    prepared
                        .param_types
                        .get(i)
                        .cloned()
                        .flatten()
                        .map(|t| encode::pg_type(&t))
                })
                .unwrap_or(Type::TEXT);
            let binary = portal.parameter_format.is_binary(i);
            params::decode(portal.parameters[i].as_deref(), binary, &ty)
        })
        .collect()
}

#[async_trait]
impl CopyHandler for Handlers {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Errors are kept and reported at CopyDone: the client streams data without reading.
        let cell = session_of(client)?;
        let Some(copy) = client.session_extensions().get::<CopyCell>() else {
            return Ok(());
        };
        let session = cell.lock().await;
        let mut guard = copy.lock();
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        if state.error.is_some() {
            return Ok(());
        }
        if let Err(e) = state.parser.feed(&copy_data.data) {
            state.error = Some(e);
            return Ok(());
        }
        if state.parser.rows_buffered() >= copy::CHUNK_ROWS {
            Self::copy_chunk(&session, state);
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let cell = session_of(client)?;
        let state = client
            .session_extensions()
            .get::<CopyCell>()
            .and_then(|c| c.lock().take());
        let Some(mut state) = state else {
            return Err(user_error(Error::new(
                sqlstate::PROTOCOL_VIOLATION,
                "CopyDone without COPY",
            )));
        };
        let mut session = cell.lock().await;
        if state.error.is_none()
            && let Err(e) = state.parser.finish()
        {
            state.error = Some(e);
        }
        Self::copy_chunk(&session, &mut state);
        if let Some(e) = state.error {
            session.fail_transaction();
            copy_finished(client, &session);
            return Err(user_error(e));
        }
        let n = session.copy_commit(&state.copy, state.batches).await;
        copy_finished(client, &session);
        let notices = session.take_notices();
        drop(session);
        for message in notices {
            client.feed(notice("NOTICE", "00000", message)).await?;
        }
        let n = n.map_err(user_error)?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(n).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(c) = client.session_extensions().get::<CopyCell>() {
            c.lock().take();
        }
        if let Ok(cell) = session_of(client) {
            let mut session = cell.lock().await;
            session.fail_transaction();
            copy_finished(client, &session);
        }
        user_error(Error::new(
            sqlstate::QUERY_CANCELED,
            format!("COPY from stdin failed: {}", fail.message),
        ))
    }
}

/// Every error reaches this handler, including those pgwire raises itself (a Bind with the
/// wrong parameter count, a protocol violation): inside a transaction block each one aborts the
/// transaction, as in PostgreSQL.
impl ErrorHandler for Handlers {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        tracing::debug!(error = %error, "statement failed");
        if let Some(cell) = client.session_extensions().get::<SessionCell>() {
            // The session is not locked between statements; if it is, the failing statement
            // ran inside the engine, which has already marked the transaction.
            if let Ok(mut session) = cell.try_lock() {
                session.fail_transaction();
            }
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(self.clone_handle())
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(self.clone_handle())
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(self.clone_handle())
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        Arc::new(self.clone_handle())
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(self.clone_handle())
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.manager.clone()))
    }
}

impl Handlers {
    fn clone_handle(&self) -> Handlers {
        self.for_connection(self.socket)
    }

    /// The handlers of one connection.
    fn for_connection(&self, socket: Option<subscribe::SocketRef>) -> Handlers {
        Handlers {
            engine: self.engine.clone(),
            manager: self.manager.clone(),
            pids: self.pids.clone(),
            socket,
            limits: self.limits.clone(),
            auth: self.auth.clone(),
        }
    }
}
