//! The internal log: every committed transaction, durable before its client hears "OK".
//!
//! ```text
//!  committers ──append(lsn, body)──► channel ──► writer thread ──write──► segment file
//!      ▲                                            │  (drains every queued record,
//!      └──────── durable(lsn) / error ◄─────────────┘   one fdatasync for the group)
//! ```
//!
//! Layout: `<data-dir>/log/<first-lsn, 20 digits>.seg`, one ordered sequence of segments.
//! A record is one committed transaction:
//!
//! ```text
//!  u32 body length │ u32 CRC-32 of (lsn ‖ body) │ u64 lsn │ body
//!  body = u32 entry count (top bit set: a u64 commit time in µs since 1970 follows),
//!         then per entry: u64 table id │ u32 length │ Arrow IPC stream
//!         (the table's columns plus the `_weight` column)
//! ```
//!
//! One log for all tables (rather than one per table) keeps a transaction that writes several
//! tables a single atomic record. LSNs are dense: record n+1 follows record n.
//!
//! Group commit: callers assign LSNs in order under the engine's commit lock and send the record
//! to one writer thread, which writes everything queued, syncs once, then wakes every waiter.
//! Concurrent committers therefore share fsyncs.
//!
//! Recovery ([`Log::open`]): records are read in order and handed to the caller. A bad record at
//! the very end of the last segment is a torn write from a crash: it is cut off with a warning.
//! A bad record anywhere else is corruption: start-up fails naming the file and offset.
//!
//! Failure: if a write fails (typically 53100, disk full), the segment is cut back to its last
//! whole record and every append queued after it fails too; the engine then undoes what it had
//! applied of those records and calls [`Log::reset_after_failure`], and the next append tries
//! again — so writes work again as soon as there is space. If a sync fails (58030), or the cut
//! does, the log stops accepting appends until restart (after a failed fsync the kernel may have
//! dropped the dirty pages; PostgreSQL makes the same choice).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{Error, Result, sqlstate};
use crate::types::{Lsn, ObjectId, ZBatch};

const HEADER_LEN: usize = 16;
/// Start a new segment once the current one passes this size.
const SEGMENT_TARGET_BYTES: u64 = 64 << 20;
/// Largest record accepted on append (and believed on replay).
pub const MAX_RECORD_BYTES: usize = 1 << 30;

/// One committed transaction as stored in the log.
#[derive(Debug)]
pub struct LogRecord {
    pub lsn: Lsn,
    /// When it was committed (None in records written before commit times were logged).
    pub time: Option<SystemTime>,
    /// The engine's clock (µs since 1970) when it differs from `time`: a manual clock
    /// (`--clock manual`). Temporal filters read it as `now()`.
    pub clock: Option<i64>,
    pub changes: Vec<(ObjectId, ZBatch)>,
}

/// The count word's top bit: a commit time follows it.
const HAS_TIME: u32 = 1 << 31;
/// The count word's next bit: a clock value follows the commit time.
const HAS_CLOCK: u32 = 1 << 30;

/// Encodes the changes of one transaction into a record body (done by the committer, outside
/// the commit lock). `clock`: the engine's clock, when it is not the system clock.
pub fn encode_body(
    changes: &[(ObjectId, ZBatch)],
    time: SystemTime,
    clock: Option<i64>,
) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(256);
    let flags = HAS_TIME | if clock.is_some() { HAS_CLOCK } else { 0 };
    body.extend_from_slice(&(changes.len() as u32 | flags).to_le_bytes());
    let micros = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    body.extend_from_slice(&micros.to_le_bytes());
    if let Some(clock) = clock {
        body.extend_from_slice(&clock.to_le_bytes());
    }
    for (table, zbatch) in changes {
        let ipc = zbatch.to_ipc()?;
        body.extend_from_slice(&table.to_le_bytes());
        body.extend_from_slice(&(ipc.len() as u32).to_le_bytes());
        body.extend_from_slice(&ipc);
    }
    if body.len() > MAX_RECORD_BYTES {
        return Err(crate::err!(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            "transaction too large: {} bytes in one log record (limit {} bytes)",
            body.len(),
            MAX_RECORD_BYTES
        ));
    }
    Ok(body)
}

fn decode_body(lsn: Lsn, body: &[u8]) -> std::result::Result<LogRecord, String> {
    let mut pos = 0usize;
    let mut take = |n: usize| -> std::result::Result<&[u8], String> {
        let s = body.get(pos..pos + n).ok_or("record body too short")?;
        pos += n;
        Ok(s)
    };
    let mut count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "bad count")?);
    let mut time = None;
    let mut clock = None;
    if count & HAS_TIME != 0 {
        let micros = u64::from_le_bytes(take(8)?.try_into().map_err(|_| "bad time")?);
        time = Some(UNIX_EPOCH + std::time::Duration::from_micros(micros));
        if count & HAS_CLOCK != 0 {
            clock = Some(i64::from_le_bytes(
                take(8)?.try_into().map_err(|_| "bad clock")?,
            ));
        }
        count &= !(HAS_TIME | HAS_CLOCK);
    }
    let mut changes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let table = u64::from_le_bytes(take(8)?.try_into().map_err(|_| "bad table id")?);
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "bad length")?) as usize;
        let ipc = take(len)?;
        for zbatch in ZBatch::from_ipc(ipc).map_err(|e| e.message)? {
            changes.push((table, zbatch));
        }
    }
    Ok(LogRecord {
        lsn,
        time,
        clock,
        changes,
    })
}

struct AppendRequest {
    lsn: Lsn,
    body: Vec<u8>,
    done: oneshot::Sender<Result<()>>,
}

/// Handle to the log; cheap to share. Appends must be made in LSN order (the engine holds its
/// commit lock while calling [`Log::append`]).
pub struct Log {
    sender: Mutex<Option<mpsc::Sender<AppendRequest>>>,
    next_lsn: AtomicU64,
    durable: Arc<AtomicU64>,
    /// The highest LSN whose append has been answered (durable or failed).
    answered: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<Failure>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Why the log takes no appends.
#[derive(Debug, Clone)]
struct Failure {
    error: Error,
    /// A write failed but the segment was cut back to its last whole record: appends may be
    /// tried again once the failed ones are undone.
    recoverable: bool,
}

/// A pending append: await [`Durable::wait`] before acknowledging the client.
pub struct Durable {
    pub lsn: Lsn,
    rx: oneshot::Receiver<Result<()>>,
}

impl Durable {
    pub async fn wait(self) -> Result<Lsn> {
        match self.rx.await {
            Ok(Ok(())) => Ok(self.lsn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(crate::err!(sqlstate::IO_ERROR, "the log writer stopped")),
        }
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, calling `apply` for every record after `floor` (the
    /// LSN a checkpoint covers) in order, and starts the writer thread, which calls
    /// `on_durable(lsn)` each time the log is synced up to `lsn`. Fails with XX001 if records
    /// after `floor` are missing (segments deleted or lost).
    pub fn open(
        dir: &Path,
        floor: Lsn,
        mut apply: impl FnMut(LogRecord) -> Result<()>,
        on_durable: OnDurable,
    ) -> Result<Log> {
        fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
        let mut segments = list_segments(dir)?;
        let mut last_lsn = Lsn::ZERO;
        let n = segments.len();
        for (i, path) in segments.iter().enumerate() {
            let is_last = i + 1 == n;
            let first = segment_first_lsn(path);
            if i == 0 && first.is_some_and(|f| f.0 > floor.0 + 1) {
                return Err(crate::err!(
                    sqlstate::DATA_CORRUPTED,
                    "the log is missing records: the checkpoint covers LSNs up to {floor} but the \
                     oldest log segment, {}, starts after LSN {}; refusing to start rather than \
                     lose data",
                    path.display(),
                    floor.next()
                ));
            }
            last_lsn = replay_segment(path, is_last, floor, last_lsn, &mut apply)?;
        }
        let last_lsn = last_lsn.max(floor);
        let (path, file_len) = match segments.pop() {
            Some(path) => {
                let len = fs::metadata(&path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), &e))?
                    .len();
                (path, len)
            }
            None => (segment_path(dir, last_lsn.next()), 0),
        };
        let file = open_segment(&path)?;
        sync_dir(dir)?;

        let durable = Arc::new(AtomicU64::new(last_lsn.0));
        let answered = Arc::new(AtomicU64::new(last_lsn.0));
        let failure = Arc::new(Mutex::new(None));
        let (sender, receiver) = mpsc::channel();
        let writer = SegmentWriter {
            dir: dir.to_path_buf(),
            file,
            file_len,
            durable: durable.clone(),
            answered: answered.clone(),
            failure: failure.clone(),
            on_durable,
        };
        let handle = std::thread::Builder::new()
            .name("eddy-log-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| Error::io("starting the log writer", &e))?;
        Ok(Log {
            sender: Mutex::new(Some(sender)),
            next_lsn: AtomicU64::new(last_lsn.0 + 1),
            durable,
            answered,
            failure,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// The LSN of the last record known to be on disk.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    /// The LSN the next append will get.
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.next_lsn.load(Ordering::Acquire))
    }

    /// Whether the log has failed; a failed log takes no appends (see
    /// [`Log::reset_after_failure`]).
    pub fn failure(&self) -> Option<Error> {
        self.failure.lock().as_ref().map(|f| f.error.clone())
    }

    /// After a failed write: waits until every queued append has been answered (all of them
    /// failed), then forgets them — the next append reuses the LSN after the durable one — and
    /// accepts appends again. The caller holds the commit lock (no appends meanwhile) and has
    /// undone whatever it applied of the records after [`Log::durable_lsn`]. Fails with the
    /// original error when the failure cannot be recovered from (a failed sync).
    pub fn reset_after_failure(&self) -> Result<()> {
        let Some(failure) = self.failure.lock().clone() else {
            return Ok(());
        };
        if !failure.recoverable {
            return Err(failure.error);
        }
        let last = self.next_lsn.load(Ordering::Acquire) - 1;
        while self.answered.load(Ordering::Acquire) < last {
            if self.writer.lock().as_ref().is_none_or(|h| h.is_finished()) {
                return Err(failure.error);
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        self.next_lsn
            .store(self.durable.load(Ordering::Acquire) + 1, Ordering::Release);
        *self.failure.lock() = None;
        tracing::info!(
            durable_lsn = self.durable.load(Ordering::Acquire),
            "retrying log writes after a failed write"
        );
        Ok(())
    }

    /// Queues a record. The caller must hold the engine's commit lock so LSN order matches
    /// queue order; durability is awaited afterwards, without the lock.
    pub fn append(&self, body: Vec<u8>) -> Result<Durable> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let sender = self.sender.lock();
        let sender = sender
            .as_ref()
            .ok_or_else(|| crate::err!(sqlstate::IO_ERROR, "the log is closed"))?;
        let lsn = Lsn(self.next_lsn.fetch_add(1, Ordering::AcqRel));
        let (done, rx) = oneshot::channel();
        sender
            .send(AppendRequest { lsn, body, done })
            .map_err(|_| crate::err!(sqlstate::IO_ERROR, "the log writer stopped"))?;
        Ok(Durable { lsn, rx })
    }

    /// Stops the writer after it has written and synced everything queued.
    pub fn close(&self) {
        self.sender.lock().take();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

/// Called by the writer thread after each sync with the highest durable LSN.
pub type OnDurable = Box<dyn Fn(Lsn) + Send>;

struct SegmentWriter {
    dir: PathBuf,
    file: File,
    file_len: u64,
    durable: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<Failure>>>,
    on_durable: OnDurable,
}

impl SegmentWriter {
    fn run(mut self, receiver: mpsc::Receiver<AppendRequest>) {
        let mut buf = Vec::with_capacity(1 << 20);
        while let Ok(first) = receiver.recv() {
            // Group commit: take everything already queued, write it, sync once.
            let mut group = vec![first];
            while group.len() < 4096 && buf.len() < (16 << 20) {
                match receiver.try_recv() {
                    Ok(req) => group.push(req),
                    Err(_) => break,
                }
            }
            let existing = self.failure.lock().as_ref().map(|f| f.error.clone());
            let result = match existing {
                // Everything queued after a failure fails too, until the engine resets.
                Some(e) => Err(e),
                None => self.write_group(&group, &mut buf),
            };
            let last = group.last().map_or(0, |r| r.lsn.0);
            for req in group {
                let _ = req.done.send(result.clone());
            }
            self.answered.store(last, Ordering::Release);
        }
    }

    /// Writes and syncs a group. On failure the log is marked failed (recoverable if the
    /// segment could be cut back to its last whole record).
    fn write_group(&mut self, group: &[AppendRequest], buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        for req in group {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&req.lsn.0.to_le_bytes());
            hasher.update(&req.body);
            buf.extend_from_slice(&(req.body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&hasher.finalize().to_le_bytes());
            buf.extend_from_slice(&req.lsn.0.to_le_bytes());
            buf.extend_from_slice(&req.body);
        }
        let written = match injected_fault("write") {
            Some(e) => Err(e),
            None => self.file.write_all(buf),
        };
        if let Err(e) = written {
            let error = Error::io("writing the log", &e);
            // Whatever part of the group reached the file goes, so the segment ends with a
            // whole record and later appends can follow it.
            let cut = self.file.set_len(self.file_len);
            if let Err(cut) = &cut {
                tracing::error!(error = %cut, "could not cut a failed write off the log");
            }
            tracing::error!(error = %error, "log write failed; writes fail until it succeeds again");
            return Err(self.fail(error, cut.is_ok()));
        }
        let synced = match injected_fault("sync") {
            Some(e) => Err(e),
            None => self.file.sync_data(),
        };
        if let Err(e) = synced {
            let error = Error::io("syncing the log", &e);
            tracing::error!(error = %error, "log sync failed; refusing writes until restart");
            return Err(self.fail(error, false));
        }
        self.file_len += buf.len() as u64;
        let last = group.last().map(|r| r.lsn.0).unwrap_or(0);
        self.durable.store(last, Ordering::Release);
        (self.on_durable)(Lsn(last));
        if self.file_len >= SEGMENT_TARGET_BYTES {
            // The group is durable whatever happens here; a failure to start the next segment
            // fails the appends after it.
            let path = segment_path(&self.dir, Lsn(last + 1));
            match open_segment(&path).and_then(|f| sync_dir(&self.dir).map(|()| f)) {
                Ok(file) => {
                    self.file = file;
                    self.file_len = 0;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not start a new log segment");
                    self.fail(e, false);
                }
            }
        }
        Ok(())
    }

    fn fail(&self, error: Error, recoverable: bool) -> Error {
        *self.failure.lock() = Some(Failure {
            error: error.clone(),
            recoverable,
        });
        error
    }
}

/// Fault injection for tests: when `EDDY_TEST_FAULT_FILE` names a file whose contents mention
/// `op`, that operation fails: a log "write" with ENOSPC (disk full), a log "sync" with EIO, a
/// "checkpoint" write with EIO.
pub(crate) fn injected_fault(op: &str) -> Option<std::io::Error> {
    static PATH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let path = PATH
        .get_or_init(|| std::env::var_os("EDDY_TEST_FAULT_FILE").map(PathBuf::from))
        .as_ref()?;
    let faults = fs::read_to_string(path).ok()?;
    faults
        .contains(op)
        .then(|| std::io::Error::from_raw_os_error(if op == "write" { 28 } else { 5 }))
}

fn segment_path(dir: &Path, first: Lsn) -> PathBuf {
    dir.join(format!("{:020}.seg", first.0))
}

fn open_segment(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening log segment {}", path.display()), &e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), &e))
}

fn list_segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut segments = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), &e))?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "seg") {
            segments.push(path);
        }
    }
    segments.sort();
    Ok(segments)
}

fn corrupt(path: &Path, offset: usize, what: impl std::fmt::Display) -> Error {
    crate::err!(
        sqlstate::DATA_CORRUPTED,
        "log segment {} is corrupt at offset {offset}: {what}; refusing to start rather than lose data",
        path.display()
    )
}

/// The first LSN of a segment, from its name.
fn segment_first_lsn(path: &Path) -> Option<Lsn> {
    path.file_stem()?.to_str()?.parse().ok().map(Lsn)
}

/// Deletes the segments in `dir` whose records are all at or below `lsn` (never the newest
/// segment, which the writer appends to). Returns how many were deleted.
pub fn remove_segments_through(dir: &Path, lsn: Lsn) -> Result<usize> {
    let segments = list_segments(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        // A segment ends just before the next one starts.
        let Some(next_first) = segment_first_lsn(&pair[1]) else {
            break;
        };
        if next_first.0 > lsn.0 + 1 {
            break;
        }
        fs::remove_file(&pair[0])
            .map_err(|e| Error::io(format!("deleting log segment {}", pair[0].display()), &e))?;
        removed += 1;
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Replays one segment, handing records after `floor` to `apply`; returns the last LSN seen.
fn replay_segment(
    path: &Path,
    is_last: bool,
    floor: Lsn,
    mut last_lsn: Lsn,
    apply: &mut impl FnMut(LogRecord) -> Result<()>,
) -> Result<Lsn> {
    let data = fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), &e))?;
    let mut offset = 0usize;
    while offset < data.len() {
        let rest = &data[offset..];
        // A record that cannot be complete or whose checksum fails: a torn write if nothing
        // follows it in the last segment, corruption otherwise.
        let torn = |why: &str| -> Result<Option<usize>> {
            if is_last {
                Ok(Some(offset))
            } else {
                Err(corrupt(path, offset, why))
            }
        };
        let cut = if rest.len() < HEADER_LEN {
            torn("truncated record header")?
        } else {
            let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
            let lsn = Lsn(u64::from_le_bytes(
                rest[8..16].try_into().unwrap_or_default(),
            ));
            if len > MAX_RECORD_BYTES || HEADER_LEN + len > rest.len() {
                if rest.iter().all(|b| *b == 0) || HEADER_LEN + len > rest.len() {
                    torn("truncated record")?
                } else {
                    return Err(corrupt(path, offset, "impossible record length"));
                }
            } else {
                let body = &rest[HEADER_LEN..HEADER_LEN + len];
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&lsn.0.to_le_bytes());
                hasher.update(body);
                let end = offset + HEADER_LEN + len;
                if hasher.finalize() != crc {
                    if end == data.len() || data[end..].iter().all(|b| *b == 0) {
                        torn("checksum mismatch in the final record")?
                    } else {
                        return Err(corrupt(path, offset, "checksum mismatch"));
                    }
                } else {
                    // Records continue each other; the first one after the checkpoint
                    // follows it.
                    let expected = if lsn > floor {
                        Some(last_lsn.max(floor).next())
                    } else {
                        (last_lsn != Lsn::ZERO).then(|| last_lsn.next())
                    };
                    if let Some(expected) = expected
                        && lsn != expected
                    {
                        return Err(corrupt(
                            path,
                            offset,
                            format!("expected LSN {expected} but found {lsn}"),
                        ));
                    }
                    if lsn > floor {
                        let record =
                            decode_body(lsn, body).map_err(|e| corrupt(path, offset, e))?;
                        apply(record)?;
                    }
                    last_lsn = lsn;
                    offset = end;
                    None
                }
            }
        };
        if let Some(cut) = cut {
            tracing::warn!(
                segment = %path.display(),
                offset = cut,
                dropped_bytes = data.len() - cut,
                "cutting off a torn record at the end of the log (a crash interrupted its write; \
                 its client was never acknowledged)"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?;
            file.set_len(cut as u64)
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::io(format!("truncating {}", path.display()), &e))?;
            break;
        }
    }
    Ok(last_lsn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn change(v: i64, w: i64) -> (ObjectId, ZBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap();
        (7, ZBatch::uniform(data, w))
    }

    fn replay(dir: &Path) -> Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        let log = Log::open(
            dir,
            Lsn::ZERO,
            |r| {
                out.push(r);
                Ok(())
            },
            Box::new(|_| {}),
        )?;
        log.close();
        Ok(out)
    }

    fn write(dir: &Path, values: &[i64]) {
        let log = Log::open(dir, Lsn::ZERO, |_| Ok(()), Box::new(|_| {})).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for v in values {
            let d = log
                .append(encode_body(&[change(*v, 1)], SystemTime::now(), None).unwrap())
                .unwrap();
            rt.block_on(d.wait()).unwrap();
        }
        log.close();
    }

    #[test]
    fn replays_in_order_and_continues_lsns() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[1, 2, 3]);
        write(dir.path(), &[4]);
        let records = replay(dir.path()).unwrap();
        assert_eq!(
            records.iter().map(|r| r.lsn.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(records[3].changes[0].1.weights.value(0), 1);
        assert!(records.iter().all(|r| r.time.is_some()));
    }

    #[test]
    fn bodies_without_a_commit_time_still_decode() {
        let with_time = encode_body(&[change(7, 1)], SystemTime::now(), None).unwrap();
        // The same body as written before commit times: the count without its top bit, no time.
        let mut old = (1u32).to_le_bytes().to_vec();
        old.extend_from_slice(&with_time[12..]);
        let record = decode_body(Lsn(5), &old).unwrap();
        assert_eq!(record.time, None);
        assert_eq!(record.changes.len(), 1);
        let record = decode_body(Lsn(5), &with_time).unwrap();
        assert!(record.time.is_some());
        assert_eq!(record.clock, None);
    }

    #[test]
    fn a_manual_clock_value_travels_with_the_record() {
        let body = encode_body(&[change(7, 1)], SystemTime::now(), Some(-42)).unwrap();
        let record = decode_body(Lsn(9), &body).unwrap();
        assert_eq!(record.clock, Some(-42));
        assert_eq!(record.changes.len(), 1);
        // A tick: no changes, only times.
        let tick = decode_body(
            Lsn(10),
            &encode_body(&[], SystemTime::now(), Some(7)).unwrap(),
        );
        let tick = tick.unwrap();
        assert_eq!((tick.clock, tick.changes.len()), (Some(7), 0));
    }

    #[test]
    fn segments_below_a_checkpoint_are_deleted_and_missing_ones_detected() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[1, 2, 3]);
        // Start a second segment by hand (the writer rotates at 64 MiB).
        let log = Log::open(dir.path(), Lsn::ZERO, |_| Ok(()), Box::new(|_| {})).unwrap();
        log.close();
        fs::File::create(segment_path(dir.path(), Lsn(4))).unwrap();
        write(dir.path(), &[4, 5]);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 2);
        assert_eq!(remove_segments_through(dir.path(), Lsn(2)).unwrap(), 0);
        assert_eq!(remove_segments_through(dir.path(), Lsn(3)).unwrap(), 1);
        // A checkpoint at 3: only 4 and 5 are replayed; LSNs continue.
        let mut seen = Vec::new();
        let log = Log::open(
            dir.path(),
            Lsn(3),
            |r| {
                seen.push(r.lsn.0);
                Ok(())
            },
            Box::new(|_| {}),
        )
        .unwrap();
        assert_eq!(seen, [4, 5]);
        assert_eq!(log.next_lsn(), Lsn(6));
        log.close();
        // A checkpoint at 1 needs records 2 and 3, which are gone.
        let err = match Log::open(dir.path(), Lsn(1), |_| Ok(()), Box::new(|_| {})) {
            Err(e) => e,
            Ok(_) => panic!("opened a log with missing records"),
        };
        assert_eq!(err.sqlstate, sqlstate::DATA_CORRUPTED);
        assert!(err.message.contains("missing"), "{}", err.message);
        // A checkpoint past every record: LSNs continue after it.
        let log = Log::open(dir.path(), Lsn(9), |_| Ok(()), Box::new(|_| {})).unwrap();
        assert_eq!(log.next_lsn(), Lsn(10));
    }

    #[test]
    fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[1, 2]);
        let seg = list_segments(dir.path()).unwrap().pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        // Crash in the middle of writing the second record.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let records = replay(dir.path()).unwrap();
        assert_eq!(records.len(), 1);
        // The log keeps working after the cut.
        write(dir.path(), &[3]);
        assert_eq!(replay(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn corruption_before_the_tail_stops_startup() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[1, 2, 3]);
        let seg = list_segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER_LEN + 10] ^= 0xff; // inside the first record's body
        fs::write(&seg, bytes).unwrap();
        let err = replay(dir.path()).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::DATA_CORRUPTED);
        assert!(err.message.contains("offset 0"), "{}", err.message);
        assert!(err.message.contains(".seg"), "{}", err.message);
    }
}
