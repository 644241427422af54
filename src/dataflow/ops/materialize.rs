//! [`Materialize`]: the sink of a view's dataflow — the view's contents, which `SELECT` reads.
//!
//! Contract:
//! - insert and delete alike: held until the barrier;
//! - barrier at epoch e: the epoch's changes are consolidated (a +1 and −1 of one row cancel),
//!   applied to the view's store as version e, and emitted (consolidated) for views that read
//!   this one;
//! - state: the view's rows ([`TableStore`], a multiset versioned by epoch). Readers pinned at
//!   an older epoch keep seeing it; history below the oldest pinned epoch is merged away.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use parking_lot::RwLock;

use crate::dataflow::{Epochs, Operator};
use crate::error::Result;
use crate::storage::table::TableStore;
use crate::types::{Epoch, Lsn, ZBatch};

pub struct Materialize {
    schema: SchemaRef,
    store: Arc<RwLock<TableStore>>,
    epochs: Arc<Epochs>,
    pending: Vec<ZBatch>,
}

impl Materialize {
    pub fn new(store: Arc<RwLock<TableStore>>, epochs: Arc<Epochs>) -> Self {
        let schema = store.read().schema().clone();
        Materialize {
            schema,
            store,
            epochs,
            pending: Vec::new(),
        }
    }
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
                crate::internal!("view contents went negative at epoch {}: {}", epoch.0, e.message)
            })?;
            let horizon = Lsn(self.epochs.epoch_horizon().0);
            store.commit(plan, Lsn(epoch.0), horizon)?;
        }
        out.push(delta);
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.store.read().live_rows()
    }
}
