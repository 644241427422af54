//! The incremental dataflow engine: materialized views kept exact by push-based operators over
//! [`ZBatch`]es (Arrow rows with ±weights), never recomputed from scratch.
//!
//! ```text
//!  engine::commit ─(lsn, changes)─► Runtime queue ──(durable)──► one epoch = every durable record
//!                                                                 not yet processed
//!   per epoch, per dataflow (in creation order, so a view's dataflow runs after the views it reads):
//!     Source ─► FilterProject ─► HashAggregate ─► … ─► Materialize ─► view store (versioned by epoch)
//!        ▲                                                   │
//!        └── table changes, or the delta of an earlier view ◄┘
//!   then the epoch is committed: readers may read every view (and every table) at it.
//! ```
//!
//! What this module owns: the operators ([`ops`]), the description of a dataflow that planning
//! produces ([`spec`]), the runtime thread that feeds dataflows and commits epochs
//! ([`runtime`]), and the read points readers pin ([`epochs`]). What it does not: SQL. The `sql`
//! module lowers a query into a [`spec::DataflowSpec`] (with DataFusion *physical* expressions and
//! aggregate functions in it); this module never sees a logical plan.
//!
//! Operator contract ([`Operator`]): within an epoch, [`Operator::on_batch`] receives every input
//! batch of the epoch (port by port, in order); then [`Operator::on_barrier`] is called once, after
//! which the operator has emitted its whole output delta for the epoch. Operators are called in
//! topological order, so an operator's barrier comes after all its inputs' output for the epoch.
//! The output of an epoch, summed over all emitted batches, is exactly
//! `query(inputs after the epoch) − query(inputs before)`.

pub mod checkpoint;
pub mod epochs;
pub mod exchange;
pub mod ops;
pub mod replay_cost;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod watermark;

use crate::error::Result;
use crate::types::{Epoch, ZBatch};

pub use checkpoint::{CheckpointSetup, CheckpointStats};
pub use epochs::{Committed, Epochs, ReadPin};
pub use runtime::{MemoryStats, Runtime, TEMP_IDS, TableScanner, ViewState, ViewStatus};
pub use spec::{DataflowSpec, Input};
pub use state::{MemoryState, StateLookup, StateSink, StateSource};

/// A dataflow operator. See the module documentation for the calling contract; each
/// implementation documents what it does to inserts and deletes, the state it keeps and what it
/// emits at a barrier.
pub trait Operator: Send {
    /// Consumes one input batch arriving on `port`; may emit output right away into `out`.
    fn on_batch(&mut self, port: usize, batch: ZBatch, out: &mut Vec<ZBatch>) -> Result<()>;

    /// The epoch's time (the engine's clock, µs since 1970; never less than the last one),
    /// given before its input batches. An operator whose output depends on time (a temporal
    /// filter) emits what time alone changed since the last epoch.
    fn on_time(&mut self, _now: i64, _out: &mut Vec<ZBatch>) -> Result<()> {
        Ok(())
    }

    /// The earliest time at which the operator's output will change with no new input (a
    /// temporal filter's next row to enter or leave), if any: the runtime runs an epoch by
    /// then.
    fn next_time(&self) -> Option<i64> {
        None
    }

    /// The epoch's input is complete: emit whatever output was held back.
    fn on_barrier(&mut self, epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()>;

    /// The watermarks of the operator's inputs (per port) and output as of this epoch (see
    /// [`watermark`]), given before [`Operator::on_barrier`] to dataflows that have any: keys
    /// below them are final.
    fn on_watermarks(
        &mut self,
        _inputs: &[&watermark::Watermarks],
        _output: &watermark::Watermarks,
    ) {
    }

    /// Rows of state the operator keeps (for observability).
    fn state_rows(&self) -> usize {
        0
    }

    /// Writes into `sink` how the operator's state changed since its last checkpoint (or since
    /// it was built or restored). Called between epochs. Stateless operators have nothing to
    /// write.
    ///
    /// `full`: the checkpoints collected since the last durable one may be lost (a write
    /// failed). An operator that keeps all its state in memory then writes all of it (the
    /// runtime has cleared its stored part); one that [`Operator::evicts`] rewrites everything
    /// it changed since the last durable checkpoint, with puts and deletes, over what is stored.
    fn checkpoint(&mut self, _full: bool, _sink: &mut dyn StateSink) -> Result<()> {
        Ok(())
    }

    /// The last checkpoint collected from this operator is durable: what it wrote may now be
    /// evicted from memory and read back.
    fn checkpoint_durable(&mut self) {}

    /// Rebuilds the state of a freshly built operator from what its checkpoints stored, so that
    /// it continues exactly as the checkpointed one would have. An attached operator that
    /// evicts may read nothing yet: it faults state in as it needs it.
    fn restore(&mut self, _source: &dyn StateSource) -> Result<()> {
        Ok(())
    }

    /// Gives the operator point reads of its stored state (views' dataflows, before `restore`
    /// or backfill; never temporary ones). An operator that can keep only part of its state in
    /// memory evicts from then on.
    fn attach(&mut self, _lookup: Box<dyn StateLookup>) {}

    /// Whether the operator keeps part of its state only in the store (it was attached and
    /// supports eviction). Its stored part is never cleared by the runtime.
    fn evicts(&self) -> bool {
        false
    }

    /// Approximate bytes of state the operator holds in memory.
    fn state_bytes(&self) -> usize {
        0
    }

    /// Drops state that is durable and least recently used from memory until about `target`
    /// bytes remain; it is read back from the store when needed again. Only operators that
    /// [`Operator::evicts`] do anything.
    fn evict(&mut self, _target: usize) {}
}
