//! [`SessionWindow`]: `SESSION(t, ts, gap, keys…)` — each row of the input with the bounds of
//! its session: a maximal run of rows of one key, ordered by `ts`, each less than `gap` after
//! the one before. `window_start` is the run's first `ts`, `window_end` its last plus `gap`.
//!
//! Contract:
//! - insert/delete: held until the barrier (a session's bounds depend on all of the epoch's
//!   rows);
//! - barrier, per key that changed: the sessions within reach of a changed time (starting less
//!   than `gap` after it, or ending less than `gap` before it — no other session can change)
//!   are emitted as deletes with their old bounds, the changes applied, and the sessions within
//!   reach then emitted as inserts with their new bounds; the output is consolidated, so rows
//!   whose session did not change cancel out. An insert that bridges two sessions moves the
//!   rows of both into one; a delete can split one;
//! - a row with a NULL time is a session of its own with NULL bounds (as the SQL form's
//!   window functions give);
//! - watermark on `ts`: a session whose last time plus `gap` is at or below it can no longer
//!   change (no later row can reach it); its rows are freed. The output's `window_end` keeps
//!   the watermark;
//! - state: the rows of every session not freed, per key, by time (counted rows).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::arrow::row::RowConverter;
use datafusion::common::ScalarValue;

use crate::dataflow::spec::SessionSpec;
use crate::dataflow::state::checkpoint_counted_rows;
use crate::dataflow::watermark::Watermarks;
use crate::dataflow::{Operator, StateSink, StateSource};
use crate::error::Result;
use crate::types::{Epoch, ZBatch};

/// One key's rows by time: (ts µs, row) → weight.
type Timeline = BTreeMap<(i64, Box<[u8]>), i64>;
/// A row to emit: its bytes, its session's bounds (µs; `None` for a NULL time), its weight.
type Emitted = (Box<[u8]>, Option<(i64, i64)>, i64);
/// A change held until the barrier: (ts µs, row, weight).
type Change = (i64, Box<[u8]>, i64);

/// See the module documentation.
pub struct SessionWindow {
    spec: SessionSpec,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    rows: RowConverter,
    /// Over the key columns (`None` without keys: one timeline).
    keys: Option<RowConverter>,
    timelines: HashMap<Box<[u8]>, Timeline>,
    /// This epoch's changes, per key: (ts, row, weight).
    pending: HashMap<Box<[u8]>, Vec<Change>>,
    /// Rows with a NULL time changed this epoch (emitted as they are, with NULL bounds).
    untimed: Vec<(Box<[u8]>, i64)>,
    /// Change of weight per row since the last checkpoint.
    unsaved: HashMap<Box<[u8]>, i64>,
    /// The time column's watermark (µs), and how far sessions were freed.
    watermark: Option<i64>,
    swept: Option<i64>,
    stored_rows: usize,
    bytes: usize,
}

impl SessionWindow {
    pub fn new(
        spec: SessionSpec,
        input_schema: SchemaRef,
        output_schema: SchemaRef,
    ) -> Result<Self> {
        let keys = if spec.keys.is_empty() {
            None
        } else {
            let fields: Vec<_> = spec
                .keys
                .iter()
                .map(|k| input_schema.field(*k).clone())
                .collect();
            let key_schema = datafusion::arrow::datatypes::Schema::new(fields);
            Some(crate::types::row_converter(&Arc::new(key_schema))?)
        };
        Ok(SessionWindow {
            rows: crate::types::row_converter(&input_schema)?,
            keys,
            spec,
            input_schema,
            output_schema,
            timelines: HashMap::new(),
            pending: HashMap::new(),
            untimed: Vec::new(),
            unsaved: HashMap::new(),
            watermark: None,
            swept: None,
            stored_rows: 0,
            bytes: 0,
        })
    }

    /// The key of each row of `data`.
    fn keys_of(&self, data: &RecordBatch) -> Result<Vec<Box<[u8]>>> {
        let Some(converter) = &self.keys else {
            return Ok(vec![Box::from([]); data.num_rows()]);
        };
        let columns: Vec<ArrayRef> = self
            .spec
            .keys
            .iter()
            .map(|k| data.column(*k).clone())
            .collect();
        let rows = converter.convert_columns(&columns)?;
        Ok((0..data.num_rows())
            .map(|i| Box::from(rows.row(i).as_ref()))
            .collect())
    }

    /// Adds `w` to `row` (at `ts`) in its key's timeline.
    fn apply(&mut self, key: &[u8], ts: i64, row: Box<[u8]>, w: i64) {
        let timeline = self.timelines.entry(key.into()).or_default();
        let len = row.len();
        let entry = timeline.entry((ts, row.clone())).or_insert(0);
        let was = *entry;
        *entry += w;
        if *entry == 0 {
            timeline.remove(&(ts, row.clone()));
            self.stored_rows -= 1;
            self.bytes = self.bytes.saturating_sub(len + 56);
            if timeline.is_empty() {
                self.timelines.remove(key);
            }
        } else if was == 0 {
            self.stored_rows += 1;
            self.bytes += len + 56;
        }
        let u = self.unsaved.entry(row).or_default();
        *u += w;
    }

    /// Emits (into `out`) the rows of the sessions of `timeline` within reach of the times
    /// `changed`, with weight `sign` × theirs.
    fn reached(timeline: &Timeline, gap: i64, changed: &[i64], sign: i64, out: &mut Vec<Emitted>) {
        let mut seen: Vec<i64> = Vec::new();
        for &c in changed {
            let before = timeline
                .range(..(c.saturating_add(1), Box::<[u8]>::from([])))
                .next_back()
                .map(|((t, _), _)| *t);
            let after = timeline
                .range((c.saturating_add(1), Box::<[u8]>::from([]))..)
                .next()
                .map(|((t, _), _)| *t);
            for t in before.into_iter().chain(after) {
                let (start, last) = session_around(timeline, gap, t);
                let reaches = c < last.saturating_add(gap) && c > start.saturating_sub(gap);
                if reaches && !seen.contains(&start) {
                    seen.push(start);
                    let end = last.saturating_add(gap);
                    let from = (start, Box::<[u8]>::from([]));
                    let to = (last.saturating_add(1), Box::<[u8]>::from([]));
                    for ((_, row), w) in timeline.range(from..to) {
                        out.push((row.clone(), Some((start, end)), sign * w));
                    }
                }
            }
        }
    }

    fn output(&self, rows: Vec<Emitted>) -> Result<Option<ZBatch>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let parser = self.rows.parser();
        let mut columns = self
            .rows
            .convert_rows(rows.iter().map(|(r, _, _)| parser.parse(r)))?;
        let n = self.input_schema.fields().len();
        let starts: Vec<Option<i64>> = rows.iter().map(|(_, s, _)| s.map(|s| s.0)).collect();
        let ends: Vec<Option<i64>> = rows.iter().map(|(_, s, _)| s.map(|s| s.1)).collect();
        columns.push(micros_to(starts, self.output_schema.field(n).data_type())?);
        columns.push(micros_to(
            ends,
            self.output_schema.field(n + 1).data_type(),
        )?);
        let data = RecordBatch::try_new(self.output_schema.clone(), columns)?;
        let weights = Int64Array::from_iter_values(rows.iter().map(|(_, _, w)| *w));
        let batch = ZBatch::new(data, weights);
        let whole = ZBatch::consolidate(&[batch], &self.output_schema)?;
        Ok((whole.num_rows() > 0).then_some(whole))
    }

    /// Frees the sessions no row at or above the watermark can reach.
    fn free_closed(&mut self) {
        let Some(wm) = self.watermark else {
            return;
        };
        if self.swept.is_some_and(|s| s >= wm) {
            return;
        }
        self.swept = Some(wm);
        let gap = self.spec.gap;
        let mut freed: Vec<(Box<[u8]>, Change)> = Vec::new();
        for (key, timeline) in &self.timelines {
            let mut cursor = timeline.keys().next().map(|(t, _)| *t);
            while let Some(t) = cursor {
                let (start, last) = session_around(timeline, gap, t);
                if last.saturating_add(gap) > wm {
                    break;
                }
                let from = (start, Box::<[u8]>::from([]));
                let to = (last.saturating_add(1), Box::<[u8]>::from([]));
                for ((ts, row), w) in timeline.range(from..to.clone()) {
                    freed.push((key.clone(), (*ts, row.clone(), *w)));
                }
                cursor = timeline.range(to..).next().map(|((t, _), _)| *t);
            }
        }
        for (key, (ts, row, w)) in freed {
            self.apply(&key, ts, row, -w);
        }
    }
}

/// The first and last time of the session of `timeline` that holds time `t` (present).
fn session_around(timeline: &Timeline, gap: i64, t: i64) -> (i64, i64) {
    let mut start = t;
    while let Some(((prev, _), _)) = timeline.range(..(start, Box::<[u8]>::from([]))).next_back() {
        if prev.saturating_add(gap) > start {
            start = *prev;
        } else {
            break;
        }
    }
    let mut last = t;
    while let Some(((next, _), _)) = timeline
        .range((last.saturating_add(1), Box::<[u8]>::from([]))..)
        .next()
    {
        if last.saturating_add(gap) > *next {
            last = *next;
        } else {
            break;
        }
    }
    (start, last)
}

/// Timestamps or dates as µs since 1970 UTC (NULL stays NULL).
fn micros_of(a: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let us = match a.data_type() {
        DataType::Timestamp(_, tz) => {
            cast(a, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))?
        }
        _ => cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?,
    };
    let ints = cast(&us, &DataType::Int64)?;
    Ok(ints.as_primitive::<Int64Type>().iter().collect())
}

/// µs since 1970 UTC as an array of type `to` (a timestamp, with its time zone, or a date).
fn micros_to(values: Vec<Option<i64>>, to: &DataType) -> Result<ArrayRef> {
    let tz = match to {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    let us: ArrayRef = Arc::new(TimestampMicrosecondArray::from(values).with_timezone_opt(tz));
    Ok(cast(&us, to)?)
}

/// A watermark value as µs since 1970 UTC.
fn scalar_micros(v: &ScalarValue) -> Option<i64> {
    let array = v.to_array().ok()?;
    micros_of(&array).ok()?.first().copied().flatten()
}

impl Operator for SessionWindow {
    fn on_batch(&mut self, _port: usize, batch: ZBatch, _out: &mut Vec<ZBatch>) -> Result<()> {
        let times = micros_of(batch.data.column(self.spec.ts))?;
        let keys = self.keys_of(&batch.data)?;
        let rows = self.rows.convert_columns(batch.data.columns())?;
        for (i, (ts, key)) in times.into_iter().zip(keys).enumerate() {
            let row: Box<[u8]> = rows.row(i).as_ref().into();
            let w = batch.weights.value(i);
            match ts {
                Some(ts) => self.pending.entry(key).or_default().push((ts, row, w)),
                None => self.untimed.push((row, w)),
            }
        }
        Ok(())
    }

    fn on_watermarks(&mut self, inputs: &[&Watermarks], _output: &Watermarks) {
        self.watermark = inputs
            .first()
            .and_then(|w| w.get(self.spec.ts))
            .and_then(|v| v.as_ref())
            .and_then(scalar_micros);
    }

    fn on_barrier(&mut self, _epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()> {
        let gap = self.spec.gap;
        let mut changes: Vec<Emitted> = self
            .untimed
            .drain(..)
            .map(|(row, w)| (row, None, w))
            .collect();
        for (key, rows) in std::mem::take(&mut self.pending) {
            let mut times: Vec<i64> = rows.iter().map(|(t, _, _)| *t).collect();
            times.sort_unstable();
            times.dedup();
            if let Some(timeline) = self.timelines.get(&key) {
                Self::reached(timeline, gap, &times, -1, &mut changes);
            }
            for (ts, row, w) in rows {
                self.apply(&key, ts, row, w);
            }
            if let Some(timeline) = self.timelines.get(&key) {
                Self::reached(timeline, gap, &times, 1, &mut changes);
            }
        }
        if let Some(batch) = self.output(changes)? {
            out.push(batch);
        }
        self.free_closed();
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.stored_rows
    }

    fn state_bytes(&self) -> usize {
        self.bytes
    }

    /// Counted rows: every row kept, with its weight.
    fn checkpoint(&mut self, full: bool, sink: &mut dyn StateSink) -> Result<()> {
        let all = self
            .timelines
            .values()
            .flatten()
            .map(|((_, row), w)| (row.as_ref(), *w));
        checkpoint_counted_rows(full, &mut self.unsaved, all, sink);
        Ok(())
    }

    fn restore(&mut self, source: &dyn StateSource) -> Result<()> {
        self.timelines.clear();
        self.unsaved.clear();
        self.stored_rows = 0;
        self.bytes = 0;
        let mut stored: Vec<(Box<[u8]>, i64)> = Vec::new();
        source.counts(&mut |row, n| {
            stored.push((row.into(), n));
            Ok(())
        })?;
        for chunk in stored.chunks(8192) {
            let parser = self.rows.parser();
            let columns = self
                .rows
                .convert_rows(chunk.iter().map(|(r, _)| parser.parse(r)))?;
            let data = RecordBatch::try_new(self.input_schema.clone(), columns)?;
            let times = micros_of(data.column(self.spec.ts))?;
            let keys = self.keys_of(&data)?;
            for (((row, w), ts), key) in chunk.iter().zip(times).zip(keys) {
                if let Some(ts) = ts {
                    self.apply(&key, ts, row.clone(), *w);
                }
            }
        }
        self.unsaved.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    fn ts_type() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, None)
    }

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", ts_type(), true),
        ]))
    }

    fn output_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", ts_type(), true),
            Field::new("window_start", ts_type(), true),
            Field::new("window_end", ts_type(), true),
        ]))
    }

    fn op() -> SessionWindow {
        let spec = SessionSpec {
            ts: 1,
            gap: 10,
            keys: vec![0],
        };
        SessionWindow::new(spec, input_schema(), output_schema()).unwrap()
    }

    fn rows(rows: &[(&str, i64, i64)]) -> ZBatch {
        let k = StringArray::from_iter_values(rows.iter().map(|r| r.0));
        let ts = TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1));
        let data = RecordBatch::try_new(input_schema(), vec![Arc::new(k), Arc::new(ts)]).unwrap();
        ZBatch::new(data, Int64Array::from_iter_values(rows.iter().map(|r| r.2)))
    }

    /// (key, ts, start, end, weight), sorted.
    fn emitted(out: &mut Vec<ZBatch>) -> Vec<(String, i64, i64, i64, i64)> {
        let mut v = Vec::new();
        for z in out.drain(..) {
            let k = z.data.column(0).as_string::<i32>();
            let col = |c: usize| {
                z.data
                    .column(c)
                    .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
                    .clone()
            };
            let (ts, s, e) = (col(1), col(2), col(3));
            for i in 0..z.num_rows() {
                v.push((
                    k.value(i).to_string(),
                    ts.value(i),
                    s.value(i),
                    e.value(i),
                    z.weights.value(i),
                ));
            }
        }
        v.sort();
        v
    }

    #[test]
    fn a_row_bridging_two_sessions_merges_them() {
        let mut op = op();
        let mut out = Vec::new();
        op.on_batch(
            0,
            rows(&[("a", 0, 1), ("a", 5, 1), ("a", 20, 1), ("b", 7, 1)]),
            &mut out,
        )
        .unwrap();
        op.on_barrier(Epoch(1), &mut out).unwrap();
        assert_eq!(
            emitted(&mut out),
            vec![
                ("a".into(), 0, 0, 15, 1),
                ("a".into(), 5, 0, 15, 1),
                ("a".into(), 20, 20, 30, 1),
                ("b".into(), 7, 7, 17, 1),
            ]
        );
        // 12 is less than 10 after 5 and 20 is less than 10 after it: one session 0..30.
        op.on_batch(0, rows(&[("a", 12, 1)]), &mut out).unwrap();
        op.on_barrier(Epoch(2), &mut out).unwrap();
        assert_eq!(
            emitted(&mut out),
            vec![
                ("a".into(), 0, 0, 15, -1),
                ("a".into(), 0, 0, 30, 1),
                ("a".into(), 5, 0, 15, -1),
                ("a".into(), 5, 0, 30, 1),
                ("a".into(), 12, 0, 30, 1),
                ("a".into(), 20, 0, 30, 1),
                ("a".into(), 20, 20, 30, -1),
            ]
        );
        // Deleting it splits them again; b never changed.
        op.on_batch(0, rows(&[("a", 12, -1)]), &mut out).unwrap();
        op.on_barrier(Epoch(3), &mut out).unwrap();
        assert_eq!(emitted(&mut out).len(), 7);
        assert_eq!(op.state_rows(), 4);
    }

    #[test]
    fn closed_sessions_are_freed_behind_the_watermark() {
        let mut op = op();
        let mut out = Vec::new();
        op.on_batch(0, rows(&[("a", 0, 1), ("a", 5, 1), ("a", 40, 1)]), &mut out)
            .unwrap();
        let wm = |v: i64| vec![None, Some(ScalarValue::TimestampMicrosecond(Some(v), None))];
        op.on_watermarks(&[&wm(15)], &vec![]);
        op.on_barrier(Epoch(1), &mut out).unwrap();
        // 0..15 can no longer change: freed; 40 stays.
        assert_eq!(op.state_rows(), 1);
        let mut state = crate::dataflow::state::MemoryState::default();
        op.checkpoint(false, &mut state).unwrap();
        let mut again =
            super::SessionWindow::new(op.spec.clone(), input_schema(), output_schema()).unwrap();
        again.restore(&state).unwrap();
        assert_eq!(again.state_rows(), 1);
    }
}
