//! Write admission: writes wait while too much of the log is not covered by a durable
//! checkpoint.
//!
//! A restart after a crash replays the log written since the last durable checkpoint through
//! the views, and state changed since that checkpoint cannot be evicted or spilled. Under a load
//! faster than checkpoints are written (or than the views keep up with), both would grow
//! without bound: before this, a `kill -9` after an 11 M-row load replayed ~100 records (55 s).
//! So each commit's log record is counted until a checkpoint covering it is durable, and a write
//! (INSERT, COPY, UPDATE, DELETE, COMMIT) first waits while the count is at or above the limit
//! (`--max-checkpoint-lag`, lowered to what would replay within `--target-recovery-time`: see
//! [`ReplayBudget`]). Below the limit a write is admitted whatever its size, so one larger than
//! the limit still goes through. Records count their changes' size in memory, the unit the
//! dataflows are timed in.
//!
//! ```text
//!  commit ──► record(lsn, bytes) ─┐
//!                                 ├─ lag = bytes of records above the last durable checkpoint
//!  checkpoint at lsn durable ─────┘   (checkpointed(lsn) drops them, wakes waiting writers)
//!  write ──► admit(): waits while lag ≥ limit
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::dataflow::replay_cost::ReplayBudget;
use crate::error::{Error, Result};
use crate::types::Lsn;

/// The log not yet covered by a durable checkpoint, and the writers waiting for it to shrink.
pub struct CheckpointLag {
    /// Writes wait while the lag is at or above its limit (0: never).
    budget: Arc<ReplayBudget>,
    inner: Mutex<Inner>,
    room: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    /// (LSN, bytes) of each record above the last durable checkpoint, in LSN order.
    records: VecDeque<(Lsn, usize)>,
    bytes: usize,
    stats: AdmissionStats,
}

/// What admission did since start (for `eddy_catalog.checkpoints`).
#[derive(Debug, Clone, Default)]
pub struct AdmissionStats {
    /// Bytes of the log above the last durable checkpoint, now.
    pub lag_bytes: u64,
    /// The limit now (0: none).
    pub limit_bytes: u64,
    /// How long replaying the lag would take, at the rate the views process changes.
    pub replay_estimate: Option<Duration>,
    /// Writes that had to wait, and their total wait.
    pub writes_delayed: u64,
    pub delayed: Duration,
}

impl CheckpointLag {
    pub fn new(budget: Arc<ReplayBudget>) -> CheckpointLag {
        CheckpointLag {
            budget,
            inner: Mutex::new(Inner::default()),
            room: tokio::sync::Notify::new(),
        }
    }

    /// A record of `bytes` at `lsn` was logged (or replayed at start-up).
    pub fn record(&self, lsn: Lsn, bytes: usize) {
        let mut inner = self.inner.lock();
        inner.records.push_back((lsn, bytes));
        inner.bytes += bytes;
    }

    /// A checkpoint covering the log up to `lsn` is durable.
    pub fn checkpointed(&self, lsn: Lsn) {
        let mut inner = self.inner.lock();
        while let Some(&(at, bytes)) = inner.records.front()
            && at <= lsn
        {
            inner.records.pop_front();
            inner.bytes -= bytes;
        }
        drop(inner);
        self.room.notify_waiters();
    }

    /// Records after `lsn` were rolled back (a failed log write).
    pub fn discard_after(&self, lsn: Lsn) {
        let mut inner = self.inner.lock();
        while let Some(&(at, bytes)) = inner.records.back()
            && at > lsn
        {
            inner.records.pop_back();
            inner.bytes -= bytes;
        }
    }

    pub fn stats(&self) -> AdmissionStats {
        let inner = self.inner.lock();
        AdmissionStats {
            lag_bytes: inner.bytes as u64,
            limit_bytes: self.budget.limit() as u64,
            replay_estimate: self.budget.estimate(inner.bytes),
            ..inner.stats.clone()
        }
    }

    /// Waits until the lag is below the limit. `failure` says whether the last checkpoint
    /// failed: then a waiting write fails with that error rather than wait for a checkpoint
    /// that may never come (it goes through again once one succeeds).
    pub async fn admit(&self, failure: impl Fn() -> Option<Error>) -> Result<()> {
        let mut waiting_since: Option<Instant> = None;
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a checkpoint finishing in between still wakes us.
            notified.as_mut().enable();
            let limit = self.budget.limit();
            {
                let mut inner = self.inner.lock();
                if limit == 0 || inner.bytes < limit {
                    if let Some(since) = waiting_since {
                        inner.stats.writes_delayed += 1;
                        inner.stats.delayed += since.elapsed();
                    }
                    return Ok(());
                }
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if let Some(e) = failure() {
                let mut inner = self.inner.lock();
                inner.stats.writes_delayed += 1;
                inner.stats.delayed += since.elapsed();
                return Err(Error {
                    message: format!(
                        "writes are paused until a checkpoint succeeds ({} MB of the log are not \
                         covered by one, the limit is {} MB), and the last checkpoint failed: {}",
                        inner.bytes >> 20,
                        limit >> 20,
                        e.message
                    ),
                    ..e
                });
            }
            // Woken when a checkpoint is durable; a failed one does not wake anyone, so look
            // again now and then.
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_wait_for_a_checkpoint_once_the_lag_reaches_the_limit() {
        let budget = Arc::new(ReplayBudget::new(100, Duration::ZERO));
        let lag = Arc::new(CheckpointLag::new(budget));
        lag.record(Lsn(1), 60);
        lag.admit(|| None).await.unwrap();
        lag.record(Lsn(2), 60);
        let waiting = tokio::spawn({
            let lag = lag.clone();
            async move { lag.admit(|| None).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "120 bytes ≥ 100: the write waits");
        lag.checkpointed(Lsn(1));
        waiting.await.unwrap().unwrap();
        let stats = lag.stats();
        assert_eq!((stats.lag_bytes, stats.writes_delayed), (60, 1));

        lag.record(Lsn(3), 60);
        lag.discard_after(Lsn(2));
        assert_eq!(
            lag.stats().lag_bytes,
            60,
            "a rolled-back record leaves the lag"
        );

        lag.record(Lsn(3), 60);
        let e = lag
            .admit(|| Some(crate::err!(crate::error::sqlstate::DISK_FULL, "no space")))
            .await
            .unwrap_err();
        assert_eq!(e.sqlstate, crate::error::sqlstate::DISK_FULL);
        assert!(
            e.message.contains("last checkpoint failed: no space"),
            "{}",
            e.message
        );
    }
}
