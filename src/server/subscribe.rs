//! Streaming a subscription to the client from inside the query handler, flushed per delivery
//! (pgwire would otherwise hold rows until 8 KiB), as DataRows or COPY lines.
//!
//! ```text
//!  do_query ─► stream(): RowDescription | CopyOutResponse, flush
//!                loop: Subscription::next() ─► DataRow/CopyData × n ─► flush
//!                      (racing: the client hanging up, the lag deadline)
//!  CancelRequest: pgwire drops the do_query future ─► the subscription is dropped
//! ```
//!
//! pgwire only reads the socket between statements, so while a subscription streams nobody
//! would notice the client hanging up until a write failed; [`SocketRef::closed`] watches the
//! socket for end-of-file (or a Terminate message) through a second descriptor.

use std::fmt::Debug;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use futures::{Sink, SinkExt};
use pgwire::api::results::{FieldInfo, Tag};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyOutResponse};
use pgwire::messages::data::{DataRow, RowDescription};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::copy_out::CopyWriter;
use super::encode;
use crate::engine::CopyFormat;
use crate::error::Error;
use crate::subscribe::{Delivery, Subscription};

/// After ending a subscription that is too far behind, how long the client gets to read what
/// was sent (and the error) before the connection is cut.
const SLOW_CLIENT_GRACE: Duration = Duration::from_secs(5);

/// The connection's socket as seen from a handler (pgwire owns it).
#[derive(Debug, Clone, Copy)]
pub struct SocketRef(pub RawFd);

impl SocketRef {
    /// A second descriptor for the socket.
    pub(super) fn dup(&self) -> io::Result<std::net::TcpStream> {
        // SAFETY: handlers run inside the connection's task while pgwire holds the socket, so
        // the descriptor is open for the duration of this call; the duplicate is independent.
        let fd = unsafe { BorrowedFd::borrow_raw(self.0) }.try_clone_to_owned()?;
        Ok(std::net::TcpStream::from(fd))
    }

    /// Resolves when the client has hung up (its end of the socket is closed, or it sent a
    /// Terminate message). Messages it pipelined (the Sync after an Execute) stay unread for
    /// pgwire; a hang-up behind them still shows, as the peer's read side closing.
    pub async fn closed(&self) {
        let Ok(stream) = self.dup() else {
            return std::future::pending().await;
        };
        // SAFETY: the stream owns the duplicate descriptor, which stays open (and the same) for
        // as long as the AsyncFd holds it.
        let Ok(fd) = (unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) })
        else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            if guard.ready().is_read_closed() {
                return;
            }
            let mut pending = [0u8; 512];
            match guard.get_inner().peek(&mut pending) {
                Ok(0) => return,
                Ok(n) if has_terminate(&pending[..n]) => return,
                Ok(_) => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(_) => return,
            }
        }
    }

    /// Shuts the socket down after `after`, from a detached task: whatever the handler is
    /// blocked writing then fails, and the connection ends.
    fn shutdown_after(&self, after: Duration) {
        let Ok(stream) = self.dup() else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = stream.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// Whether the frontend messages at the start of `bytes` include a Terminate.
fn has_terminate(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at + 5 <= bytes.len() {
        if bytes[at] == b'X' {
            return true;
        }
        let len = u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]);
        at += 1 + len as usize;
    }
    false
}

fn fatal(e: Error) -> PgWireError {
    let mut info = ErrorInfo::new("FATAL".to_owned(), e.sqlstate.to_owned(), e.message);
    info.detail = e.detail;
    info.hint = e.hint;
    PgWireError::UserError(Box::new(info))
}

/// Streams `sub` until it ends — always with an error: a dropped view, a slow client, the
/// client hanging up (a CancelRequest drops this future instead). `describe`: send a
/// RowDescription first (the simple protocol; the extended one described the portal already).
pub async fn stream<C>(
    client: &mut C,
    mut sub: Box<Subscription>,
    fields: Arc<Vec<FieldInfo>>,
    copy: Option<CopyFormat>,
    describe: bool,
    socket: Option<SocketRef>,
) -> PgWireResult<Tag>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let mut writer = copy.map(CopyWriter::new);
    match &mut writer {
        Some(w) => {
            let ncols = fields.len();
            client
                .feed(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
                    0,
                    ncols as i16,
                    vec![0; ncols],
                )))
                .await?;
            if w.header() {
                let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
                let mut line = BytesMut::new();
                w.write_header(&names, &mut line);
                client
                    .feed(PgWireBackendMessage::CopyData(CopyData::new(line.freeze())))
                    .await?;
            }
        }
        None if describe => {
            let description = RowDescription::new(fields.iter().map(Into::into).collect());
            client
                .feed(PgWireBackendMessage::RowDescription(description))
                .await?;
        }
        None => {}
    }
    client.flush().await?;
    let formats: Vec<_> = fields.iter().map(|f| f.format()).collect();
    let hung_up = async {
        match socket {
            Some(s) => s.closed().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(hung_up);
    loop {
        let delivery: Delivery = tokio::select! {
            d = sub.next() => d.map_err(super::user_error)?,
            _ = &mut hung_up => {
                return Err(PgWireError::IoError(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client hung up during SUBSCRIBE",
                )));
            }
        };
        // The client must take this delivery before its oldest change (or, for a snapshot or a
        // progress row, the delivery itself) is older than the lag limit.
        let since = delivery.committed_at.unwrap_or_else(SystemTime::now);
        let age = SystemTime::now().duration_since(since).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + sub.limits().max_lag.saturating_sub(age);
        tokio::select! {
            sent = send_delivery(client, &delivery, &formats, writer.as_mut()) => sent?,
            _ = tokio::time::sleep_until(deadline) => {
                let lag = SystemTime::now().duration_since(since).unwrap_or_default();
                tracing::warn!(lag_ms = lag.as_millis() as u64, "ending a subscription whose client stopped reading");
                if let Some(s) = socket {
                    s.shutdown_after(SLOW_CLIENT_GRACE);
                }
                return Err(fatal(sub.lag_error(lag)));
            }
        }
    }
}

async fn send_delivery<C>(
    client: &mut C,
    delivery: &Delivery,
    formats: &[pgwire::api::results::FieldFormat],
    mut copy: Option<&mut CopyWriter>,
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for batch in &delivery.batches {
        for row in 0..batch.num_rows() {
            let mut data = BytesMut::with_capacity(64);
            let message = match copy.as_deref_mut() {
                Some(w) => {
                    w.write_row(batch, row, &mut data);
                    PgWireBackendMessage::CopyData(CopyData::new(data.freeze()))
                }
                None => {
                    for (col, format) in batch.columns().iter().zip(formats) {
                        encode::encode_value(col.as_ref(), row, *format, &mut data);
                    }
                    PgWireBackendMessage::DataRow(DataRow::new(data, batch.num_columns() as i16))
                }
            };
            client.feed(message).await?;
        }
    }
    client.flush().await?;
    Ok(())
}
