//! [`ChangeHistory`]: one view's committed changes, epoch by epoch, kept for a retention window
//! and shared by every subscriber of the view.
//!
//! ```text
//!  runtime: append(e, delta) … publish epoch e … notify(e)
//!                  │
//!          entries: (e1, Δ1) (e2, Δ2) … (en, Δn)      every change after `oldest` is here
//!                  ▲            ▲
//!  subscriber A cursor    subscriber B cursor         (a cursor is just an epoch: no copies)
//! ```
//!
//! The dataflow appends a view's consolidated delta once per epoch in which the view changed,
//! before the epoch is committed, and wakes subscribers after. A subscriber delivers entries up
//! to the committed epoch, so it never sends an epoch that readers cannot see yet.
//!
//! Retention: entries older than the retention window, or beyond the byte budget (oldest
//! first), are dropped; `oldest` then moves to the last dropped epoch. Everything after
//! `oldest` stays available, so `AS OF e` works for any `e >= oldest`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::array::Array;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::error::Error;
use crate::types::{Epoch, ZBatch};

/// How much history each view keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Changes older than this are dropped.
    pub window: Duration,
    /// At most this many bytes of changes per view (Arrow memory), oldest dropped first.
    pub max_bytes: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            window: Duration::from_secs(3600),
            max_bytes: 64 << 20,
        }
    }
}

/// The changes of one epoch.
#[derive(Debug, Clone)]
pub struct Entry {
    pub epoch: Epoch,
    /// When the epoch was committed (wall clock).
    pub at: SystemTime,
    /// Consolidated: no row appears twice.
    pub delta: Arc<ZBatch>,
}

/// Why entries after some epoch are not available.
#[derive(Debug, Clone)]
pub enum Gap {
    /// They were dropped: only changes after `oldest` remain.
    Trimmed { oldest: Epoch },
    /// The view is gone or stopped.
    Closed(Error),
}

struct Inner {
    oldest: Epoch,
    entries: VecDeque<Entry>,
    bytes: usize,
    closed: Option<Error>,
}

pub struct ChangeHistory {
    inner: Mutex<Inner>,
    retention: Retention,
    /// The latest epoch with changes that is committed; subscribers wait on it. Also changed
    /// (to the same value) when the history is closed.
    latest: watch::Sender<Epoch>,
}

impl ChangeHistory {
    /// A history that starts at `start`: the view's contents at `start` are its snapshot; the
    /// changes after it will be appended.
    pub fn new(start: Epoch, retention: Retention) -> Arc<ChangeHistory> {
        Arc::new(ChangeHistory {
            inner: Mutex::new(Inner {
                oldest: start,
                entries: VecDeque::new(),
                bytes: 0,
                closed: None,
            }),
            retention,
            latest: watch::Sender::new(start),
        })
    }

    /// A history restored from a checkpoint: `entries` are every change after `oldest`.
    pub fn restored(
        oldest: Epoch,
        entries: Vec<Entry>,
        retention: Retention,
    ) -> Arc<ChangeHistory> {
        let latest = entries.last().map_or(oldest, |e| e.epoch);
        let bytes = entries.iter().map(|e| delta_bytes(&e.delta)).sum();
        let history = Arc::new(ChangeHistory {
            inner: Mutex::new(Inner {
                oldest,
                entries: entries.into(),
                bytes,
                closed: None,
            }),
            retention,
            latest: watch::Sender::new(latest),
        });
        {
            let mut inner = history.inner.lock();
            history.trim(&mut inner, SystemTime::now());
        }
        history
    }

    /// The oldest epoch and the entries after `after` (for a checkpoint).
    pub fn since(&self, after: Epoch) -> (Epoch, Vec<Entry>) {
        let inner = self.inner.lock();
        let start = inner.entries.partition_point(|e| e.epoch <= after);
        (
            inner.oldest,
            inner.entries.range(start..).cloned().collect(),
        )
    }

    /// Records the view's changes in `epoch`, committed at `at` (called by the runtime before it
    /// commits `epoch`).
    pub fn append(&self, epoch: Epoch, delta: ZBatch, at: SystemTime) {
        let now = SystemTime::now();
        let mut inner = self.inner.lock();
        debug_assert!(inner.entries.back().is_none_or(|e| e.epoch < epoch));
        inner.bytes += delta_bytes(&delta);
        inner.entries.push_back(Entry {
            epoch,
            at,
            delta: Arc::new(delta),
        });
        self.trim(&mut inner, now);
    }

    /// Wakes the subscribers: epoch `epoch`, in which the view changed, is committed.
    pub fn notify(&self, epoch: Epoch) {
        self.latest.send_replace(epoch);
    }

    /// Ends the history (the view was dropped or its dataflow stopped): subscribers end with
    /// `error` once they have delivered what came before.
    pub fn close(&self, error: Error) {
        self.inner.lock().closed = Some(error);
        self.latest.send_modify(|_| {});
    }

    /// Every change after `oldest()` is available.
    pub fn oldest(&self) -> Epoch {
        self.inner.lock().oldest
    }

    /// Entries with `after < epoch <= upto`, oldest first, at most `max_rows` rows (but at
    /// least one entry when there is one), and whether that is all of them.
    pub fn read(
        &self,
        after: Epoch,
        upto: Epoch,
        max_rows: usize,
    ) -> Result<(Vec<Entry>, bool), Gap> {
        let inner = self.inner.lock();
        if after < inner.oldest {
            return Err(Gap::Trimmed {
                oldest: inner.oldest,
            });
        }
        let start = inner.entries.partition_point(|e| e.epoch <= after);
        let mut out = Vec::new();
        let mut rows = 0;
        let mut complete = true;
        for entry in inner.entries.range(start..) {
            if entry.epoch > upto {
                break;
            }
            if !out.is_empty() && rows + entry.delta.num_rows() > max_rows {
                complete = false;
                break;
            }
            rows += entry.delta.num_rows();
            out.push(entry.clone());
        }
        if out.is_empty()
            && let Some(e) = &inner.closed
        {
            return Err(Gap::Closed(e.clone()));
        }
        Ok((out, complete))
    }

    /// When the first change after `after` was committed, if there is one.
    pub fn first_after(&self, after: Epoch) -> Option<SystemTime> {
        let inner = self.inner.lock();
        let i = inner.entries.partition_point(|e| e.epoch <= after);
        inner.entries.get(i).map(|e| e.at)
    }

    pub fn watch(&self) -> watch::Receiver<Epoch> {
        self.latest.subscribe()
    }

    fn trim(&self, inner: &mut Inner, now: SystemTime) {
        let cutoff = now.checked_sub(self.retention.window);
        while let Some(front) = inner.entries.front() {
            let expired = cutoff.is_some_and(|c| front.at < c);
            // Keep the newest entry even if it alone exceeds the budget.
            let over = inner.bytes > self.retention.max_bytes && inner.entries.len() > 1;
            if !(expired || over) {
                break;
            }
            let Some(dropped) = inner.entries.pop_front() else {
                break;
            };
            inner.bytes -= delta_bytes(&dropped.delta);
            inner.oldest = dropped.epoch;
        }
    }
}

fn delta_bytes(delta: &ZBatch) -> usize {
    delta.data.get_array_memory_size() + delta.weights.get_array_memory_size()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn delta(values: &[i64]) -> ZBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
            .unwrap();
        ZBatch::uniform(data, 1)
    }

    fn epochs((entries, _): &(Vec<Entry>, bool)) -> Vec<u64> {
        entries.iter().map(|e| e.epoch.0).collect()
    }

    #[test]
    fn reads_between_epochs_and_reports_trimmed_history() {
        let h = ChangeHistory::new(Epoch(10), Retention::default());
        h.append(Epoch(12), delta(&[1]), SystemTime::now());
        h.append(Epoch(15), delta(&[2, 3]), SystemTime::now());
        h.append(Epoch(20), delta(&[4]), SystemTime::now());
        assert_eq!(
            epochs(&h.read(Epoch(10), Epoch(20), 100).unwrap()),
            [12, 15, 20]
        );
        assert_eq!(epochs(&h.read(Epoch(12), Epoch(19), 100).unwrap()), [15]);
        assert_eq!(
            epochs(&h.read(Epoch(13), Epoch(20), 100).unwrap()),
            [15, 20]
        );
        // The row budget splits between entries, never inside one.
        assert_eq!(epochs(&h.read(Epoch(10), Epoch(20), 2).unwrap()), [12]);
        assert_eq!(epochs(&h.read(Epoch(12), Epoch(20), 1).unwrap()), [15]);
        assert!(matches!(
            h.read(Epoch(9), Epoch(20), 100),
            Err(Gap::Trimmed { oldest: Epoch(10) })
        ));
    }

    #[test]
    fn the_byte_budget_drops_the_oldest_entries() {
        let one = delta_bytes(&delta(&[1]));
        let h = ChangeHistory::new(
            Epoch(0),
            Retention {
                window: Duration::from_secs(3600),
                max_bytes: one * 2,
            },
        );
        for e in 1..=5 {
            h.append(Epoch(e), delta(&[e as i64]), SystemTime::now());
        }
        assert_eq!(h.oldest(), Epoch(3));
        assert_eq!(epochs(&h.read(Epoch(3), Epoch(5), 100).unwrap()), [4, 5]);
    }

    #[test]
    fn a_closed_history_ends_readers_after_what_it_holds() {
        let h = ChangeHistory::new(Epoch(0), Retention::default());
        h.append(Epoch(1), delta(&[1]), SystemTime::now());
        h.close(crate::err!("42P01", "gone"));
        assert_eq!(epochs(&h.read(Epoch(0), Epoch(1), 100).unwrap()), [1]);
        assert!(matches!(
            h.read(Epoch(1), Epoch(1), 100),
            Err(Gap::Closed(_))
        ));
    }
}
