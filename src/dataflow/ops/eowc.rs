//! [`EmitOnWindowClose`]: holds a view's changes back until they are final
//! (`CREATE MATERIALIZED VIEW … EMIT ON WINDOW CLOSE`).
//!
//! Contract:
//! - insert/delete: added to the pending rows (consolidated: a row inserted and later deleted
//!   while its window is open leaves nothing); nothing is emitted;
//! - barrier: the pending rows that are final — a watermarked column below its watermark (see
//!   `dataflow::watermark`), so no later change can touch them — are emitted, each once with
//!   its net weight, and forgotten. The output of a window whose aggregate changed ten times
//!   while open is one insert;
//! - state: the pending rows with their weights (Arrow row format → weight). A checkpoint
//!   adds each row's change of weight since the previous one.

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::array::{BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::RowConverter;

use crate::dataflow::state::checkpoint_counted_rows;
use crate::dataflow::watermark::{Watermarks, below_any};
use crate::dataflow::{Operator, StateSink, StateSource};
use crate::error::Result;
use crate::types::{Epoch, ZBatch};

/// See the module documentation.
pub struct EmitOnWindowClose {
    schema: SchemaRef,
    converter: RowConverter,
    pending: BTreeMap<Box<[u8]>, i64>,
    /// Change of weight per row since the last checkpoint.
    unsaved: HashMap<Box<[u8]>, i64>,
    watermarks: Watermarks,
    /// The watermarks changed since the last barrier looked at the pending rows.
    advanced: bool,
}

impl EmitOnWindowClose {
    pub fn new(schema: SchemaRef) -> Result<Self> {
        Ok(EmitOnWindowClose {
            converter: crate::types::row_converter(&schema)?,
            schema,
            pending: BTreeMap::new(),
            unsaved: HashMap::new(),
            watermarks: Vec::new(),
            advanced: false,
        })
    }

    fn change(&mut self, row: &[u8], n: i64) {
        let w = self.pending.entry(row.into()).or_default();
        *w += n;
        if *w == 0 {
            self.pending.remove(row);
        }
        *self.unsaved.entry(row.into()).or_default() += n;
    }

    /// Which pending rows are final: one of their watermarked columns is below its watermark.
    fn closed(&self, data: &RecordBatch) -> Result<BooleanArray> {
        let bounds = self.watermarks.iter().enumerate();
        let closed = below_any(
            data.columns(),
            bounds.filter_map(|(c, w)| Some((c, w.as_ref()?))),
        )?;
        Ok(BooleanArray::from(closed))
    }
}

impl Operator for EmitOnWindowClose {
    fn on_batch(&mut self, _port: usize, batch: ZBatch, _out: &mut Vec<ZBatch>) -> Result<()> {
        let rows = self.converter.convert_columns(batch.data.columns())?;
        for (i, w) in batch.weights.values().iter().enumerate() {
            self.change(rows.row(i).as_ref(), *w);
        }
        self.advanced = true;
        Ok(())
    }

    fn on_watermarks(&mut self, _inputs: &[&Watermarks], output: &Watermarks) {
        if *output != self.watermarks {
            self.watermarks = output.clone();
            self.advanced = true;
        }
    }

    fn on_barrier(&mut self, _epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()> {
        if !std::mem::take(&mut self.advanced)
            || self.pending.is_empty()
            || self.watermarks.iter().all(Option::is_none)
        {
            return Ok(());
        }
        let parser = self.converter.parser();
        let keys: Vec<&Box<[u8]>> = self.pending.keys().collect();
        let columns = self
            .converter
            .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        let closed = self.closed(&data)?;
        if closed.true_count() == 0 {
            return Ok(());
        }
        let final_rows: Vec<(Box<[u8]>, i64)> = keys
            .iter()
            .zip(closed.iter())
            .filter(|(_, c)| *c == Some(true))
            .map(|(k, _)| ((*k).clone(), self.pending[*k]))
            .collect();
        let emitted = datafusion::arrow::compute::filter_record_batch(&data, &closed)?;
        let weights = Int64Array::from_iter_values(final_rows.iter().map(|(_, w)| *w));
        for (row, w) in final_rows {
            self.change(&row, -w);
        }
        out.push(ZBatch::new(emitted, weights));
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.pending.len()
    }

    fn state_bytes(&self) -> usize {
        self.pending.keys().map(|k| k.len() + 48).sum()
    }

    /// Counted rows: each pending row with its weight.
    fn checkpoint(&mut self, full: bool, sink: &mut dyn StateSink) -> Result<()> {
        let all = self.pending.iter().map(|(row, w)| (row.as_ref(), *w));
        checkpoint_counted_rows(full, &mut self.unsaved, all, sink);
        Ok(())
    }

    fn restore(&mut self, source: &dyn StateSource) -> Result<()> {
        self.pending.clear();
        self.unsaved.clear();
        source.counts(&mut |row, n| {
            self.pending.insert(row.into(), n);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::common::ScalarValue;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("n", DataType::Int64, true),
        ]))
    }

    fn rows(rows: &[(i64, i64, i64)]) -> ZBatch {
        let start = TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0));
        let n = Int64Array::from_iter_values(rows.iter().map(|r| r.1));
        let data = RecordBatch::try_new(schema(), vec![Arc::new(start), Arc::new(n)]).unwrap();
        ZBatch::new(data, Int64Array::from_iter_values(rows.iter().map(|r| r.2)))
    }

    fn emitted(out: &[ZBatch]) -> Vec<(i64, i64, i64)> {
        let mut v = Vec::new();
        for z in out {
            let b = z
                .data
                .column(0)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            let n = z
                .data
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            for i in 0..z.num_rows() {
                v.push((b.value(i), n.value(i), z.weights.value(i)));
            }
        }
        v
    }

    #[test]
    fn a_window_is_emitted_once_with_its_final_value_when_the_watermark_passes() {
        let mut op = EmitOnWindowClose::new(schema()).unwrap();
        let wm = |v: i64| vec![Some(ScalarValue::TimestampMicrosecond(Some(v), None)), None];
        let mut out = Vec::new();
        // Window 0 counts 1, then 2 (the aggregate retracts 1); window 10 opens.
        op.on_batch(0, rows(&[(0, 1, 1)]), &mut out).unwrap();
        op.on_watermarks(&[], &wm(0));
        op.on_barrier(Epoch(1), &mut out).unwrap();
        op.on_batch(0, rows(&[(0, 1, -1), (0, 2, 1), (10, 1, 1)]), &mut out)
            .unwrap();
        op.on_watermarks(&[], &wm(0));
        op.on_barrier(Epoch(2), &mut out).unwrap();
        assert!(out.is_empty());
        // The watermark passes window 0 (its start is now below the window_start watermark).
        op.on_watermarks(&[], &wm(10));
        op.on_barrier(Epoch(3), &mut out).unwrap();
        assert_eq!(emitted(&out), vec![(0, 2, 1)]);
        assert_eq!(op.state_rows(), 1);
    }
}
