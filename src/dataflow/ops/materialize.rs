//! [`Materialize`]: the sink of a view's dataflow — the view's contents, which `SELECT` reads.
//!
//! Contract:
//! - insert and delete alike: held until the barrier;
//! - barrier at epoch e: the epoch's changes are consolidated (a +1 and −1 of one row cancel),
//!   applied to the view's store as version e, and emitted (consolidated) for views that read
//!   this one;
//! - state: the view's rows ([`TableStore`], a multiset versioned by epoch). Readers pinned at
//!   an older epoch keep seeing it; history below the oldest pinned epoch is merged away.
//!   Checkpoints store it as counted rows (key: the row in Arrow's row format): each checkpoint
//!   adds the epochs' deltas since the previous one.
//! - a view whose query only ever inserts has a spilling store (see
//!   [`TableStore::spilling`]): its checkpointed rows are read from the state store, and the
//!   checkpoints also keep its row count ([`crate::storage::state::StoreSnapshot::row_count`]). Restoring it reads
//!   nothing: the runtime sets its base.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::RowConverter;
use parking_lot::RwLock;

use crate::dataflow::{Epochs, Operator, StateSink, StateSource};
use crate::error::Result;
use crate::storage::table::{Snapshot, TableStore};
use crate::types::{Epoch, Lsn, RowsToBatches, ZBatch};

pub struct Materialize {
    schema: SchemaRef,
    store: Arc<RwLock<TableStore>>,
    epochs: Arc<Epochs>,
    pending: Vec<ZBatch>,
    /// Whole rows ↔ state keys.
    converter: RowConverter,
    /// Deltas applied since the last checkpoint.
    unsaved: Vec<ZBatch>,
}

impl Materialize {
    pub fn new(store: Arc<RwLock<TableStore>>, epochs: Arc<Epochs>) -> Result<Self> {
        let schema = store.read().schema().clone();
        Ok(Materialize {
            converter: crate::types::row_converter(&schema)?,
            schema,
            store,
            epochs,
            pending: Vec::new(),
            unsaved: Vec::new(),
        })
    }
}

/// Adds the rows of `batches` (times their weights) to `sink` as counted rows.
pub fn add_counted_rows(
    converter: &RowConverter,
    batches: &[ZBatch],
    sink: &mut dyn StateSink,
) -> Result<()> {
    for z in batches {
        let rows = converter.convert_columns(z.data.columns())?;
        for (i, w) in z.weights.values().iter().enumerate() {
            sink.add(rows.row(i).as_ref(), *w);
        }
    }
    Ok(())
}

impl Operator for Materialize {
    fn on_batch(&mut self, _port: usize, batch: ZBatch, _out: &mut Vec<ZBatch>) -> Result<()> {
        // Held until the barrier, under the view's column names.
        let data = RecordBatch::try_new(self.schema.clone(), batch.data.columns().to_vec())?;
        self.pending.push(ZBatch::new(data, batch.weights));
        Ok(())
    }

    fn on_barrier(&mut self, epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let delta = ZBatch::consolidate(&std::mem::take(&mut self.pending), &self.schema)?;
        if delta.num_rows() == 0 {
            return Ok(());
        }
        {
            let mut store = self.store.write();
            let plan = store.plan(&delta).map_err(|e| {
                crate::internal!(
                    "view contents went negative at epoch {}: {}",
                    epoch.0,
                    e.message
                )
            })?;
            let horizon = Lsn(self.epochs.epoch_horizon().0);
            store.commit(plan, Lsn(epoch.0), horizon)?;
        }
        self.unsaved.push(delta.clone());
        out.push(delta);
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.store.read().live_rows()
    }

    fn state_bytes(&self) -> usize {
        self.store.read().bytes_in_memory()
    }

    fn checkpoint(&mut self, full: bool, sink: &mut dyn StateSink) -> Result<()> {
        let changes = if full {
            self.unsaved.clear();
            let rows = self.store.read().scan(Snapshot::Latest)?;
            rows.into_iter().map(|b| ZBatch::uniform(b, 1)).collect()
        } else {
            // The epochs' deltas summed: a row inserted and deleted since the last checkpoint
            // (an aggregate's old value, say) is not written at all.
            let deltas = std::mem::take(&mut self.unsaved);
            match deltas.len() {
                0 | 1 => deltas,
                _ => vec![ZBatch::consolidate(&deltas, &self.schema)?],
            }
        };
        if self.store.read().spills() {
            let added: i64 = changes.iter().flat_map(|z| z.weights.values()).sum();
            if added != 0 {
                sink.add(&[], added);
            }
        }
        add_counted_rows(&self.converter, &changes, sink)
    }

    /// Puts the stored rows back into an empty store, visible from every epoch on (a spilling
    /// store reads them from the checkpoint instead).
    fn restore(&mut self, source: &dyn StateSource) -> Result<()> {
        if self.store.read().spills() {
            return Ok(());
        }
        let mut rows = RowsToBatches::new(&self.converter, self.schema.clone());
        source.counts(&mut |key, n| rows.push(key, n))?;
        let mut store = self.store.write();
        for batch in rows.finish()? {
            store.load(&batch, Lsn::ZERO)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::epochs::Committed;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn rows(values: &[i64], weight: i64) -> ZBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
            .unwrap();
        ZBatch::uniform(data, weight)
    }

    fn sink() -> Materialize {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let store = Arc::new(RwLock::new(TableStore::new("v", schema, &[])));
        Materialize::new(store, Epochs::new(Committed::default())).unwrap()
    }

    fn count(m: &Materialize) -> usize {
        m.state_rows()
    }

    #[test]
    fn saved_contents_load_into_a_fresh_store_and_keep_changing() {
        let mut a = sink();
        let mut out = Vec::new();
        a.on_batch(0, rows(&[1, 2, 2, 3], 1), &mut out).unwrap();
        a.on_barrier(Epoch(1), &mut out).unwrap();
        let mut saved = crate::dataflow::MemoryState::default();
        a.checkpoint(false, &mut saved).unwrap();
        let mut b = sink();
        b.restore(&saved).unwrap();
        assert_eq!(count(&b), 4);
        // A delete of a loaded row applies, and the delta is emitted.
        let mut out = Vec::new();
        b.on_batch(0, rows(&[2], -1), &mut out).unwrap();
        b.on_barrier(Epoch(2), &mut out).unwrap();
        assert_eq!(count(&b), 3);
        assert_eq!(out.len(), 1);
        // The next checkpoint adds just the change; a full one writes the same.
        b.checkpoint(false, &mut saved).unwrap();
        let mut full = crate::dataflow::MemoryState::default();
        b.checkpoint(true, &mut full).unwrap();
        assert_eq!(saved, full);
        assert_eq!(saved.counts.values().sum::<i64>(), 3);
    }
}
