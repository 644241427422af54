//! [`TemporalFilter`]: rows that enter and leave a view as time passes
//! (`WHERE ts > now() - INTERVAL '1 hour'`).
//!
//! Contract:
//! - each condition compares `now()` with an expression of the row (see
//!   [`TemporalBound`]); together they give the row a span of time `[from, until)` in which it is
//!   visible (a NULL makes it never visible, as SQL's comparison with NULL does);
//! - time: the engine's clock at each epoch ([`Operator::on_time`], never going back). When it
//!   moves, the rows whose span starts are emitted as inserts and those whose span ends as
//!   deletes — in the epoch whose time first reaches the moment, so a subscriber sees the
//!   retraction then;
//! - insert/delete of a row: emitted at once if the row is visible now; remembered if it will
//!   enter or leave later; forgotten if its span is over;
//! - state: the rows that will enter or leave later, with their weights (counted rows), and the
//!   time of the last epoch. Rows visible for good (no upper bound) are not kept;
//! - [`Operator::next_time`]: the earliest moment a remembered row enters or leaves, so that the
//!   runtime runs an epoch then even when nothing is written.

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::row::RowConverter;

use crate::dataflow::spec::{TemporalBound, TemporalBoundKind};
use crate::dataflow::state::checkpoint_counted_rows;
use crate::dataflow::{Operator, StateSink, StateSource};
use crate::error::Result;
use crate::types::{Epoch, ZBatch};

/// The stored value holding the time of the last epoch.
const NOW_KEY: &[u8] = b"now";
/// Rows evaluated at a time when restoring.
const RESTORE_CHUNK: usize = 8192;

/// See the module documentation.
pub struct TemporalFilter {
    schema: SchemaRef,
    converter: RowConverter,
    bounds: Vec<TemporalBound>,
    /// The time of the last epoch (µs since 1970).
    now: i64,
    /// `now` as the last checkpoint stored it.
    now_saved: Option<i64>,
    /// Rows not visible yet, by the time they enter: (from, row) → (until, weight).
    waiting: ByTime<(i64, i64)>,
    /// Rows visible until a known time: (until, row) → weight.
    leaving: ByTime<i64>,
    /// Change of weight of the kept rows since the last checkpoint.
    unsaved: HashMap<Box<[u8]>, i64>,
    bytes: usize,
}

/// Rows in the order of a time (µs) at which something happens to them.
type ByTime<V> = BTreeMap<(i64, Box<[u8]>), V>;

/// Never visible, or visible from `from` until `until` (exclusive); `i64::MIN`/`i64::MAX` when
/// unbounded.
type Span = Option<(i64, i64)>;

impl TemporalFilter {
    pub fn new(schema: SchemaRef, bounds: Vec<TemporalBound>) -> Result<Self> {
        Ok(TemporalFilter {
            converter: crate::types::row_converter(&schema)?,
            schema,
            bounds,
            now: i64::MIN,
            now_saved: None,
            waiting: BTreeMap::new(),
            leaving: BTreeMap::new(),
            unsaved: HashMap::new(),
            bytes: 0,
        })
    }

    /// Each row's span of visibility.
    fn spans(&self, data: &RecordBatch) -> Result<Vec<Span>> {
        let mut spans: Vec<Span> = vec![Some((i64::MIN, i64::MAX)); data.num_rows()];
        for bound in &self.bounds {
            let values = bound.expr.evaluate(data)?.into_array(data.num_rows())?;
            let micros = bound_micros(&values, bound.kind)?;
            for (span, m) in spans.iter_mut().zip(micros) {
                *span = match (*span, m) {
                    (Some((from, until)), Some(m)) => Some(match bound.kind {
                        TemporalBoundKind::After { .. } => (from.max(m), until),
                        TemporalBoundKind::Before { .. } => (from, until.min(m)),
                    }),
                    _ => None,
                };
            }
        }
        for span in &mut spans {
            if span.is_some_and(|(from, until)| from >= until) {
                *span = None;
            }
        }
        Ok(spans)
    }

    fn keep(&mut self, row: &[u8], n: i64) {
        let w = self.unsaved.entry(row.into()).or_default();
        *w += n;
        if *w == 0 {
            self.unsaved.remove(row);
        }
    }

    fn wait(&mut self, from: i64, until: i64, row: &[u8], w: i64) {
        let key = (from, Box::<[u8]>::from(row));
        let entry = self.waiting.entry(key).or_insert((until, 0));
        entry.1 += w;
        if entry.1 == 0 {
            self.waiting.remove(&(from, row.into()));
            self.bytes = self.bytes.saturating_sub(row.len() + 64);
        } else if entry.1 == w {
            self.bytes += row.len() + 64;
        }
    }

    fn leave(&mut self, until: i64, row: &[u8], w: i64) {
        let entry = self.leaving.entry((until, row.into())).or_default();
        *entry += w;
        if *entry == 0 {
            self.leaving.remove(&(until, row.into()));
            self.bytes = self.bytes.saturating_sub(row.len() + 48);
        } else if *entry == w {
            self.bytes += row.len() + 48;
        }
    }

    /// Remembers a row that is not over: waiting to enter, or visible until a known time.
    /// Whether it is visible now.
    fn place(&mut self, (from, until): (i64, i64), row: &[u8], w: i64) -> bool {
        if until <= self.now {
            return false;
        }
        if from > self.now {
            self.wait(from, until, row, w);
            return false;
        }
        if until != i64::MAX {
            self.leave(until, row, w);
        }
        true
    }

    fn rows_batch(&self, rows: &[(Box<[u8]>, i64)]) -> Result<ZBatch> {
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(rows.iter().map(|(r, _)| parser.parse(r)))?;
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        let weights = Int64Array::from_iter_values(rows.iter().map(|(_, w)| *w));
        Ok(ZBatch::new(data, weights))
    }
}

/// A bound's values as µs since 1970, rounded so that comparing whole µs with them is exact:
/// the first µs at which the row is visible (`After`) or no longer visible (`Before`).
fn bound_micros(values: &ArrayRef, kind: TemporalBoundKind) -> Result<Vec<Option<i64>>> {
    // `now >= b` and `now < b` hold from ⌈b⌉; `now > b` and `now <= b` from ⌊b⌋ + 1.
    let ceil = matches!(
        kind,
        TemporalBoundKind::After { inclusive: true }
            | TemporalBoundKind::Before { inclusive: false }
    );
    let scale = |v: i64, per_micro: i64| -> i64 {
        if ceil {
            v.div_euclid(per_micro) + i64::from(v.rem_euclid(per_micro) != 0)
        } else {
            v.div_euclid(per_micro).saturating_add(1)
        }
    };
    let widen = |v: i64, micros_per: i64| -> i64 {
        let m = v.saturating_mul(micros_per);
        if ceil { m } else { m.saturating_add(1) }
    };
    fn each<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(
        a: &ArrayRef,
        f: impl Fn(i64) -> i64,
    ) -> Vec<Option<i64>>
    where
        T::Native: Into<i64>,
    {
        a.as_primitive::<T>()
            .iter()
            .map(|v| v.map(|v| f(v.into())))
            .collect()
    }
    Ok(match values.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            each::<TimestampSecondType>(values, |v| widen(v, 1_000_000))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            each::<TimestampMillisecondType>(values, |v| widen(v, 1_000))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            each::<TimestampMicrosecondType>(values, |v| widen(v, 1))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            each::<TimestampNanosecondType>(values, |v| scale(v, 1_000))
        }
        DataType::Date32 => each::<Date32Type>(values, |v| widen(v, 86_400_000_000)),
        DataType::Date64 => each::<Date64Type>(values, |v| widen(v, 1_000)),
        other => {
            return Err(crate::internal!(
                "a temporal filter bound of type {other} (expected a timestamp or date)"
            ));
        }
    })
}

impl Operator for TemporalFilter {
    fn on_time(&mut self, now: i64, out: &mut Vec<ZBatch>) -> Result<()> {
        if now <= self.now {
            return Ok(());
        }
        self.now = now;
        let mut changed: Vec<(Box<[u8]>, i64)> = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, row), (until, w)) = entry.remove_entry();
            self.bytes = self.bytes.saturating_sub(row.len() + 64);
            if until <= now {
                // Its whole span passed between two epochs.
                self.keep(&row, -w);
                continue;
            }
            if until == i64::MAX {
                self.keep(&row, -w);
            } else {
                self.leave(until, &row, w);
            }
            changed.push((row, w));
        }
        while let Some(entry) = self.leaving.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, row), w) = entry.remove_entry();
            self.bytes = self.bytes.saturating_sub(row.len() + 48);
            self.keep(&row, -w);
            changed.push((row, -w));
        }
        if !changed.is_empty() {
            out.push(self.rows_batch(&changed)?);
        }
        Ok(())
    }

    fn next_time(&self) -> Option<i64> {
        let waiting = self.waiting.first_key_value().map(|((t, _), _)| *t);
        let leaving = self.leaving.first_key_value().map(|((t, _), _)| *t);
        waiting.into_iter().chain(leaving).min()
    }

    fn on_batch(&mut self, _port: usize, batch: ZBatch, out: &mut Vec<ZBatch>) -> Result<()> {
        let spans = self.spans(&batch.data)?;
        let rows = self.converter.convert_columns(batch.data.columns())?;
        let mut visible = Vec::with_capacity(spans.len());
        for (i, span) in spans.into_iter().enumerate() {
            let Some(span) = span else {
                visible.push(false);
                continue;
            };
            let w = batch.weights.value(i);
            let row = rows.row(i);
            let (from, until) = span;
            if until > self.now && (from > self.now || until != i64::MAX) {
                self.keep(row.as_ref(), w);
            }
            visible.push(self.place(span, row.as_ref(), w));
        }
        let mask = BooleanArray::from(visible);
        if mask.true_count() == 0 {
            return Ok(());
        }
        let data = filter_record_batch(&batch.data, &mask)?;
        let weights = datafusion::arrow::compute::filter(&batch.weights, &mask)?
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .clone();
        out.push(ZBatch::new(data, weights));
        Ok(())
    }

    fn on_barrier(&mut self, _epoch: Epoch, _out: &mut Vec<ZBatch>) -> Result<()> {
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.waiting.len() + self.leaving.len()
    }

    fn state_bytes(&self) -> usize {
        self.bytes
    }

    /// Counted rows (each remembered row with its weight) and the time of the last epoch.
    fn checkpoint(&mut self, full: bool, sink: &mut dyn StateSink) -> Result<()> {
        let waiting = self.waiting.iter().map(|((_, r), (_, w))| (r.as_ref(), *w));
        let leaving = self.leaving.iter().map(|((_, r), w)| (r.as_ref(), *w));
        checkpoint_counted_rows(full, &mut self.unsaved, waiting.chain(leaving), sink);
        if full || self.now_saved != Some(self.now) {
            sink.put(NOW_KEY, &self.now.to_be_bytes());
            self.now_saved = Some(self.now);
        }
        Ok(())
    }

    fn restore(&mut self, source: &dyn StateSource) -> Result<()> {
        self.waiting.clear();
        self.leaving.clear();
        self.unsaved.clear();
        self.bytes = 0;
        source.values(&mut |key, value| {
            if key == NOW_KEY {
                let bytes: [u8; 8] = value
                    .try_into()
                    .map_err(|_| crate::internal!("a stored temporal filter time is damaged"))?;
                self.now = i64::from_be_bytes(bytes);
                self.now_saved = Some(self.now);
            }
            Ok(())
        })?;
        let mut stored: Vec<(Box<[u8]>, i64)> = Vec::new();
        source.counts(&mut |row, n| {
            stored.push((row.into(), n));
            Ok(())
        })?;
        for chunk in stored.chunks(RESTORE_CHUNK) {
            let batch = self.rows_batch(chunk)?;
            let spans = self.spans(&batch.data)?;
            for ((row, w), span) in chunk.iter().zip(spans) {
                if let Some(span) = span {
                    self.place(span, row, *w);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// What a bound of nanosecond timestamps `values` gives, in µs.
    fn bound_of(kind: TemporalBoundKind, values: Vec<Option<i64>>) -> Vec<Option<i64>> {
        let a: ArrayRef = Arc::new(datafusion::arrow::array::TimestampNanosecondArray::from(
            values,
        ));
        bound_micros(&a, kind).unwrap()
    }

    use datafusion::arrow::array::TimestampMicrosecondArray;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::PhysicalExpr;
    use datafusion::physical_expr::expressions::Column;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        )]))
    }

    fn rows(rows: &[(i64, i64)]) -> ZBatch {
        let ts = TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0));
        let data = RecordBatch::try_new(schema(), vec![Arc::new(ts)]).unwrap();
        ZBatch::new(data, Int64Array::from_iter_values(rows.iter().map(|r| r.1)))
    }

    fn emitted(out: &mut Vec<ZBatch>) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        for z in out.drain(..) {
            let ts = z.data.column(0).as_primitive::<TimestampMicrosecondType>();
            for i in 0..z.num_rows() {
                v.push((ts.value(i), z.weights.value(i)));
            }
        }
        v.sort();
        v
    }

    /// `ts > now() - 10` and `ts <= now()`: visible from ts until ts + 10 (µs).
    fn last_ten() -> TemporalFilter {
        let ts: Arc<dyn PhysicalExpr> = Arc::new(Column::new("ts", 0));
        let plus_ten: Arc<dyn PhysicalExpr> =
            Arc::new(datafusion::physical_expr::expressions::BinaryExpr::new(
                ts.clone(),
                datafusion::logical_expr::Operator::Plus,
                Arc::new(datafusion::physical_expr::expressions::Literal::new(
                    datafusion::common::ScalarValue::DurationMicrosecond(Some(10)),
                )),
            ));
        TemporalFilter::new(
            schema(),
            vec![
                TemporalBound {
                    expr: plus_ten,
                    kind: TemporalBoundKind::Before { inclusive: false },
                },
                TemporalBound {
                    expr: ts,
                    kind: TemporalBoundKind::After { inclusive: true },
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_enter_and_leave_as_time_passes() {
        let mut op = last_ten();
        let mut out = Vec::new();
        op.on_time(100, &mut out).unwrap();
        // 95: visible until 105. 120: in the future. 80: over already.
        op.on_batch(0, rows(&[(95, 1), (120, 1), (80, 1)]), &mut out)
            .unwrap();
        assert_eq!(emitted(&mut out), vec![(95, 1)]);
        assert_eq!(op.next_time(), Some(105));
        op.on_time(104, &mut out).unwrap();
        assert!(out.is_empty());
        op.on_time(105, &mut out).unwrap();
        assert_eq!(emitted(&mut out), vec![(95, -1)]);
        assert_eq!(op.next_time(), Some(120));
        // Time jumps past 120's whole span: it never shows.
        op.on_time(500, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!((op.state_rows(), op.next_time()), (0, None));
    }

    #[test]
    fn a_delete_cancels_what_its_insert_scheduled() {
        let mut op = last_ten();
        let mut out = Vec::new();
        op.on_time(100, &mut out).unwrap();
        op.on_batch(0, rows(&[(95, 1), (130, 1)]), &mut out)
            .unwrap();
        op.on_batch(0, rows(&[(95, -1), (130, -1)]), &mut out)
            .unwrap();
        assert_eq!(emitted(&mut out), vec![(95, -1), (95, 1)]);
        assert_eq!((op.state_rows(), op.next_time()), (0, None));
        assert!(op.unsaved.is_empty());
    }

    #[test]
    fn a_restored_filter_goes_on_where_it_was() {
        let mut op = last_ten();
        let mut out = Vec::new();
        op.on_time(100, &mut out).unwrap();
        op.on_batch(0, rows(&[(95, 2), (103, 1), (150, 1)]), &mut out)
            .unwrap();
        assert_eq!(emitted(&mut out), vec![(95, 2)]);
        let mut state = crate::dataflow::state::MemoryState::default();
        op.checkpoint(false, &mut state).unwrap();
        let mut again = last_ten();
        again.restore(&state).unwrap();
        assert_eq!(again.next_time(), op.next_time());
        let mut theirs = Vec::new();
        for t in [105, 113, 150, 170] {
            op.on_time(t, &mut out).unwrap();
            again.on_time(t, &mut theirs).unwrap();
            assert_eq!(emitted(&mut out), emitted(&mut theirs), "at {t}");
        }
    }

    #[test]
    fn nanosecond_bounds_round_to_the_exact_microsecond() {
        use TemporalBoundKind::*;
        let b = vec![Some(1_500), Some(2_000), None];
        // now >= 1.5 µs from 2; now > 2 µs from 3; now < 1.5 µs until 2; now <= 2 µs until 3.
        assert_eq!(
            bound_of(After { inclusive: true }, b.clone()),
            vec![Some(2), Some(2), None]
        );
        assert_eq!(
            bound_of(After { inclusive: false }, b.clone()),
            vec![Some(2), Some(3), None]
        );
        assert_eq!(
            bound_of(Before { inclusive: false }, b.clone()),
            vec![Some(2), Some(2), None]
        );
        assert_eq!(
            bound_of(Before { inclusive: true }, b),
            vec![Some(2), Some(3), None]
        );
    }
}
