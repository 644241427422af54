//! Subscriptions: a view's snapshot, then its changes epoch by epoch, as rows a client can read
//! (`SUBSCRIBE`), with progress rows and the slow-subscriber policy.
//!
//! ```text
//!  dataflow runtime ──append/notify──► ChangeHistory (one per view, shared)
//!                                            │ read(cursor, committed]
//!                          Subscription ◄────┘  (one per client: a cursor, no copy of the data)
//!                              │ next(): whole epochs as output rows
//!                              ▼
//!            server: DataRows / COPY lines / FETCH results, flushed per delivery
//! ```
//!
//! Output rows: `_epoch bigint`, `_progressed boolean` (only with PROGRESS), `_diff bigint`,
//! then the view's columns. An epoch's rows come together, consolidated, retractions first; a
//! progress row (`_progressed = true`, `_diff` and the data NULL) says "every change up to this
//! epoch has been sent".
//!
//! [`history`] sits below the dataflow runtime (which appends to it); [`Subscription`] reads the
//! runtime's committed epoch and sits above it.

pub mod history;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parking_lot::Mutex;
use tokio::sync::watch;

pub use history::{ChangeHistory, Entry, Gap, Retention};

use crate::dataflow::Committed;
use crate::error::{Error, Result, sqlstate};
use crate::types::{Epoch, ZBatch};

/// Rows per delivery, roughly: a delivery holds whole epochs, at least one.
const DELIVERY_ROWS: usize = 8192;

/// `WITH (SNAPSHOT, PROGRESS)` and `AS OF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub snapshot: bool,
    pub progress: bool,
    pub as_of: Option<Epoch>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            snapshot: true,
            progress: false,
            as_of: None,
        }
    }
}

/// Server-wide subscription settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// With PROGRESS, an idle subscription sends a progress row this often.
    pub progress_interval: Duration,
    /// A subscription whose oldest unsent change is older than this is ended with 53400.
    pub max_lag: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            progress_interval: Duration::from_secs(1),
            max_lag: Duration::from_secs(300),
        }
    }
}

/// The output columns for a view with `view` columns.
pub fn output_schema(view: &Schema, progress: bool) -> SchemaRef {
    let mut fields = vec![Field::new("_epoch", DataType::Int64, false)];
    if progress {
        fields.push(Field::new("_progressed", DataType::Boolean, false));
    }
    fields.push(Field::new("_diff", DataType::Int64, progress));
    for f in view.fields() {
        fields.push(
            f.as_ref()
                .clone()
                .with_nullable(f.is_nullable() || progress),
        );
    }
    Arc::new(Schema::new(fields))
}

/// Output that is ready to send: whole epochs (and progress rows).
pub struct Delivery {
    pub batches: Vec<RecordBatch>,
    /// When the oldest change in it was committed (None for a snapshot or progress only).
    pub committed_at: Option<SystemTime>,
}

/// One client's subscription to a view.
pub struct Subscription {
    schema: SchemaRef,
    progress: bool,
    history: Arc<ChangeHistory>,
    committed: watch::Receiver<Committed>,
    changed: watch::Receiver<Epoch>,
    /// Every change up to this epoch has been handed out (or is in `ready`).
    cursor: Epoch,
    /// Rows handed out by [`Subscription::next`] but not yet taken by a FETCH.
    ready: VecDeque<RecordBatch>,
    /// The first output: the snapshot (and its progress row).
    initial: Option<Delivery>,
    limits: Limits,
    info: Arc<Info>,
    /// Whatever must live as long as the subscription (a temporary dataflow, the registry
    /// entry); dropped with it.
    keep_alive: Vec<Box<dyn Send + Sync>>,
}

impl Subscription {
    /// A subscription whose output starts with `snapshot` (the view's rows at `start` with
    /// their multiplicities, when SNAPSHOT is on) and continues with the changes after `start`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        view_schema: &Schema,
        history: Arc<ChangeHistory>,
        committed: watch::Receiver<Committed>,
        start: Epoch,
        snapshot: Option<ZBatch>,
        progress: bool,
        limits: Limits,
        info: Arc<Info>,
    ) -> Result<Subscription> {
        let schema = output_schema(view_schema, progress);
        let changed = history.watch();
        let mut sub = Subscription {
            schema,
            progress,
            history,
            committed,
            changed,
            cursor: start,
            ready: VecDeque::new(),
            initial: None,
            limits,
            info,
            keep_alive: Vec::new(),
        };
        let mut batches = Vec::new();
        if let Some(rows) = snapshot
            && rows.num_rows() > 0
        {
            batches.push(sub.epoch_rows(start, &rows)?);
        }
        if progress {
            batches.push(sub.progress_row(start));
        }
        sub.info.cursor.store(start.0, Ordering::Relaxed);
        sub.initial = Some(Delivery {
            batches,
            committed_at: None,
        });
        Ok(sub)
    }

    /// Keeps `resource` alive until the subscription ends.
    pub fn keep(&mut self, resource: Box<dyn Send + Sync>) {
        self.keep_alive.push(resource);
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Waits for the next output: the snapshot first, then each time epochs in which the view
    /// changed are committed, their rows (several epochs at once when the subscriber is behind);
    /// with PROGRESS, a progress row after them and one every `progress_interval` while idle.
    ///
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Delivery> {
        if let Some(initial) = self.initial.take()
            && !initial.batches.is_empty()
        {
            return Ok(initial);
        }
        let mut idle = tokio::time::Instant::now() + self.limits.progress_interval;
        loop {
            // Seen before reading, so a notification after the read wakes the wait below.
            self.changed.borrow_and_update();
            let committed = self.committed.borrow().epoch;
            if let Some(delivery) = self.take(committed)? {
                return Ok(delivery);
            }
            tokio::select! {
                changed = self.changed.changed() => {
                    if changed.is_err() {
                        return Err(crate::err!(sqlstate::QUERY_CANCELED, "the server is shutting down"));
                    }
                }
                _ = tokio::time::sleep_until(idle), if self.progress => {
                    idle += self.limits.progress_interval;
                    let committed = self.committed.borrow().epoch;
                    // Changes up to `committed` would have been taken above or woken us.
                    if self.history.read(self.cursor, committed, 1).is_ok_and(|e| e.0.is_empty()) {
                        self.advance(committed);
                        return Ok(Delivery { batches: vec![self.progress_row(committed)], committed_at: None });
                    }
                }
            }
        }
    }

    /// FETCH: up to `max` rows (all that are ready when `None`), waiting up to `timeout`
    /// (forever when `None`) for at least one. An empty result means the timeout passed.
    pub async fn fetch(
        &mut self,
        max: Option<usize>,
        timeout: Option<Duration>,
    ) -> Result<Vec<RecordBatch>> {
        if self.ready.is_empty() {
            let next = match timeout {
                None => Some(self.next().await?),
                Some(t) => match tokio::time::timeout(t, self.next()).await {
                    Ok(d) => Some(d?),
                    Err(_) => None,
                },
            };
            if let Some(d) = next {
                self.ready.extend(d.batches);
            }
        }
        // Whatever else is already committed joins this FETCH without waiting.
        let committed = self.committed.borrow().epoch;
        if let Some(more) = self.take(committed)? {
            self.ready.extend(more.batches);
        }
        Ok(take_rows(&mut self.ready, max))
    }

    /// The committed changes after the cursor, up to `committed`, as a delivery.
    fn take(&mut self, committed: Epoch) -> Result<Option<Delivery>> {
        let (entries, complete) = match self.history.read(self.cursor, committed, DELIVERY_ROWS) {
            Ok(r) => r,
            Err(Gap::Trimmed { oldest }) => {
                return Err(crate::err!(
                    sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                    "subscription fell behind the retained history: changes after epoch {} are gone (the oldest available is {})",
                    self.cursor.0,
                    oldest.0
                )
                .with_hint("Read faster, or raise --subscribe-retention / --subscribe-history-mb."));
            }
            Err(Gap::Closed(e)) => return Err(e),
        };
        // Behind since the first unsent change was committed, or since the subscription began
        // (catching up on history is not falling behind).
        let committed_at = entries.first().map(|e| e.at.max(self.info.started));
        if let Some(at) = committed_at {
            let lag = SystemTime::now().duration_since(at).unwrap_or_default();
            if lag > self.limits.max_lag {
                return Err(self.lag_error(lag));
            }
        }
        let mut batches = Vec::with_capacity(entries.len() + 1);
        for entry in &entries {
            batches.push(self.epoch_rows(entry.epoch, &entry.delta)?);
        }
        let upto = if complete {
            committed
        } else {
            entries.last().map_or(self.cursor, |e| e.epoch)
        };
        if entries.is_empty() {
            // Nothing changed in the view up to `committed`.
            self.advance(upto);
            return Ok(None);
        }
        if self.progress && complete {
            batches.push(self.progress_row(upto));
        }
        self.advance(upto);
        Ok(Some(Delivery {
            batches,
            committed_at,
        }))
    }

    fn advance(&mut self, to: Epoch) {
        self.cursor = self.cursor.max(to);
        self.info.cursor.store(self.cursor.0, Ordering::Relaxed);
    }

    /// The error that ends a subscription `lag` behind.
    pub fn lag_error(&self, lag: Duration) -> Error {
        crate::err!(
            sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
            "subscription ended: it fell {} ms behind the changes of the view (the limit is {} ms)",
            lag.as_millis(),
            self.limits.max_lag.as_millis()
        )
        .with_hint(
            "The client is not reading fast enough. Resume with AS OF the last complete epoch; \
             --subscribe-max-lag sets the limit.",
        )
    }

    /// The rows of one epoch's changes: retractions first.
    fn epoch_rows(&self, epoch: Epoch, delta: &ZBatch) -> Result<RecordBatch> {
        let n = delta.num_rows();
        let weights = delta.weights.values();
        let (data, weights): (Vec<ArrayRef>, Int64Array) = if weights.iter().all(|w| *w > 0) {
            (delta.data.columns().to_vec(), delta.weights.clone())
        } else {
            let order: UInt32Array = (0..n as u32)
                .filter(|i| weights[*i as usize] < 0)
                .chain((0..n as u32).filter(|i| weights[*i as usize] > 0))
                .collect();
            let data = delta
                .data
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), &order, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let w = take(&delta.weights, &order, None)?;
            let w = w
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| crate::internal!("weights are not Int64"))?;
            (data, w)
        };
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_value(epoch.0 as i64, n))];
        if self.progress {
            columns.push(Arc::new(BooleanArray::from(vec![false; n])));
        }
        columns.push(Arc::new(weights));
        columns.extend(data);
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    fn progress_row(&self, epoch: Epoch) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_value(epoch.0 as i64, 1)),
            Arc::new(BooleanArray::from(vec![true])),
        ];
        for f in self.schema.fields().iter().skip(2) {
            columns.push(new_null_array(f.data_type(), 1));
        }
        // The schema is nullable wherever a progress row has NULL.
        RecordBatch::try_new(self.schema.clone(), columns)
            .unwrap_or_else(|_| RecordBatch::new_empty(self.schema.clone()))
    }
}

/// Takes up to `count` rows (all when `None`) off the front of `batches`, splitting a batch
/// when needed.
pub fn take_rows(batches: &mut VecDeque<RecordBatch>, count: Option<usize>) -> Vec<RecordBatch> {
    let mut left = count.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    while left > 0 {
        let Some(batch) = batches.pop_front() else {
            break;
        };
        if batch.num_rows() <= left {
            left -= batch.num_rows();
            out.push(batch);
        } else {
            out.push(batch.slice(0, left));
            batches.push_front(batch.slice(left, batch.num_rows() - left));
            left = 0;
        }
    }
    out
}

/// What the system view shows about one subscription.
pub struct Info {
    pub id: u64,
    /// The view subscribed to, or the query's text.
    pub target: String,
    /// `user@address`, and the backend pid.
    pub client: String,
    pub pid: i32,
    pub started: SystemTime,
    /// Every change up to this epoch has been handed out.
    pub cursor: AtomicU64,
    pub history: Arc<ChangeHistory>,
}

impl Info {
    /// How far behind the view the subscription is: the age of its oldest unsent change.
    pub fn lag(&self) -> Duration {
        let cursor = Epoch(self.cursor.load(Ordering::Relaxed));
        self.history
            .first_after(cursor)
            .and_then(|at| SystemTime::now().duration_since(at.max(self.started)).ok())
            .unwrap_or_default()
    }
}

/// The active subscriptions (for the system view and leak checks).
#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    active: Mutex<BTreeMap<u64, Arc<Info>>>,
}

impl Registry {
    /// Registers a subscription; it stays listed until the returned guard is dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        self: &Arc<Self>,
        target: String,
        client: String,
        pid: i32,
        start: Epoch,
        history: Arc<ChangeHistory>,
    ) -> (Arc<Info>, Registered) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(Info {
            id,
            target,
            client,
            pid,
            started: SystemTime::now(),
            cursor: AtomicU64::new(start.0),
            history,
        });
        self.active.lock().insert(id, info.clone());
        (
            info,
            Registered {
                id,
                registry: self.clone(),
            },
        )
    }

    pub fn active(&self) -> Vec<Arc<Info>> {
        self.active.lock().values().cloned().collect()
    }
}

/// Removes a subscription from the [`Registry`] when dropped.
pub struct Registered {
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.active.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn view_schema() -> Schema {
        Schema::new(vec![Field::new("v", DataType::Int64, false)])
    }

    fn delta(values: &[i64], weights: &[i64]) -> ZBatch {
        let data = RecordBatch::try_new(
            Arc::new(view_schema()),
            vec![Arc::new(Int64Array::from(values.to_vec()))],
        )
        .unwrap();
        ZBatch::new(data, Int64Array::from(weights.to_vec()))
    }

    /// (epoch, progressed, diff, v) per row.
    fn rows(batches: &[RecordBatch]) -> Vec<(i64, bool, Option<i64>, Option<i64>)> {
        let mut out = Vec::new();
        for b in batches {
            let col = |i: usize| b.column(i).as_any().downcast_ref::<Int64Array>().unwrap();
            let progressed = b.column(1).as_any().downcast_ref::<BooleanArray>().unwrap();
            for r in 0..b.num_rows() {
                let opt = |a: &Int64Array| (!a.is_null(r)).then(|| a.value(r));
                out.push((
                    col(0).value(r),
                    progressed.value(r),
                    opt(col(2)),
                    opt(col(3)),
                ));
            }
        }
        out
    }

    struct Setup {
        history: Arc<ChangeHistory>,
        committed: watch::Sender<Committed>,
        sub: Subscription,
    }

    fn setup(start: u64, snapshot: Option<ZBatch>) -> Setup {
        let history = ChangeHistory::new(Epoch(start), Retention::default());
        let committed = watch::Sender::new(Committed {
            epoch: Epoch(start),
            lsn: crate::types::Lsn(start),
        });
        let registry = Arc::new(Registry::default());
        let (info, guard) =
            registry.register("v".into(), "test".into(), 1, Epoch(start), history.clone());
        let mut sub = Subscription::new(
            &view_schema(),
            history.clone(),
            committed.subscribe(),
            Epoch(start),
            snapshot,
            true,
            Limits {
                progress_interval: Duration::from_millis(20),
                max_lag: Duration::from_secs(60),
            },
            info,
        )
        .unwrap();
        sub.keep(Box::new(guard));
        Setup {
            history,
            committed,
            sub,
        }
    }

    fn commit(s: &Setup, epoch: u64, delta: ZBatch) {
        s.history.append(Epoch(epoch), delta, SystemTime::now());
        s.committed.send_replace(Committed {
            epoch: Epoch(epoch),
            lsn: crate::types::Lsn(epoch),
        });
        s.history.notify(Epoch(epoch));
    }

    #[tokio::test]
    async fn snapshot_then_epochs_in_order_with_progress() {
        let mut s = setup(5, Some(delta(&[1, 2], &[1, 3])));
        let first = s.sub.next().await.unwrap();
        assert_eq!(
            rows(&first.batches),
            [
                (5, false, Some(1), Some(1)),
                (5, false, Some(3), Some(2)),
                (5, true, None, None)
            ]
        );
        commit(&s, 7, delta(&[1, 9], &[1, -1]));
        commit(&s, 8, delta(&[4], &[1]));
        let next = s.sub.next().await.unwrap();
        // Both epochs, retractions first within an epoch, then one progress row.
        assert_eq!(
            rows(&next.batches),
            [
                (7, false, Some(-1), Some(9)),
                (7, false, Some(1), Some(1)),
                (8, false, Some(1), Some(4)),
                (8, true, None, None)
            ]
        );
        // Idle: a progress row at the committed epoch.
        let idle = s.sub.next().await.unwrap();
        assert_eq!(rows(&idle.batches), [(8, true, None, None)]);
    }

    #[tokio::test]
    async fn fetch_takes_rows_in_parts_and_times_out_empty() {
        let mut s = setup(0, None);
        // The initial progress row.
        let first = s.sub.fetch(Some(10), None).await.unwrap();
        assert_eq!(rows(&first), [(0, true, None, None)]);
        commit(&s, 3, delta(&[1, 2, 3], &[1, 1, 1]));
        let a = s.sub.fetch(Some(2), None).await.unwrap();
        assert_eq!(rows(&a).len(), 2);
        let b = s.sub.fetch(None, None).await.unwrap();
        assert_eq!(
            rows(&b),
            [(3, false, Some(1), Some(3)), (3, true, None, None)]
        );
        s.sub.progress = false;
        let none = s
            .sub
            .fetch(Some(1), Some(Duration::from_millis(30)))
            .await
            .unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn a_subscription_too_far_behind_ends_with_53400() {
        let mut s = setup(0, None);
        s.sub.limits.max_lag = Duration::from_millis(20);
        s.sub.next().await.unwrap();
        commit(&s, 1, delta(&[1], &[1]));
        // Not read for longer than the limit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = s.sub.fetch(None, None).await.err().unwrap();
        assert_eq!(e.sqlstate, sqlstate::CONFIGURATION_LIMIT_EXCEEDED);
    }

    #[tokio::test]
    async fn a_dropped_view_ends_the_subscription_after_its_last_changes() {
        let mut s = setup(0, None);
        s.sub.next().await.unwrap();
        commit(&s, 1, delta(&[1], &[1]));
        s.history.close(crate::err!("42P01", "view dropped"));
        assert_eq!(rows(&s.sub.next().await.unwrap().batches).len(), 2);
        let e = s.sub.next().await.err().unwrap();
        assert_eq!(e.sqlstate, "42P01");
    }
}
