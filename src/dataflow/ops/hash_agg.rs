//! [`HashAggregate`]: `GROUP BY` with aggregate functions, and global aggregates.
//!
//! Contract:
//! - insert (+w) of a row: its group (created if new) counts w more rows and each aggregate
//!   adds the row's argument w times; delete (−w): the same with −w. Nothing is emitted yet;
//!   the group is marked dirty;
//! - barrier: for each dirty group, the new output row is computed and compared with the one
//!   emitted last: unchanged → nothing; changed → −old, +new; a group whose row count reached 0
//!   → −old, and its state is freed. A global aggregate (no `GROUP BY`) always has exactly one
//!   row, emitted at the first barrier even over empty input (count 0, sum NULL, as PostgreSQL);
//! - state per group: the key (Arrow row format), the row count, the last emitted output row,
//!   and per aggregate: count → a count; sum/avg → sum and non-null count; min/max → a multiset
//!   of values (ordered), so deleting the current minimum finds the next; count(DISTINCT) → a
//!   multiset of values; bool_and/bool_or → counts of true and false; any other aggregate
//!   (string_agg, array_agg, DISTINCT forms, statistics…) → the multiset of its argument rows,
//!   from which the group's value is recomputed with DataFusion's accumulator when it changes.
//!   A checkpoint stores each group changed since the previous one as one value under its key
//!   (and deletes the keys of groups that were freed).
//! - watermarks: a group whose key is below the watermark of a group-by column (a window
//!   that has closed) can no longer change; its state is freed at the barrier, here and in
//!   the store, and its output row stays. Memory stays bounded on an unbounded stream grouped
//!   by window;
//! - memory: once attached to the store (views' dataflows), groups whose last change is durable
//!   can be evicted, least recently used first ([`Operator::evict`]), and a restart loads none:
//!   a key not in memory is looked up in the store (one batched read per input batch for all
//!   its missing keys) before it is taken for a new group.
//!
//! The choice between the invertible fast paths and the recompute fallback is made once, at
//! construction. Hot path: one hash and one probe per input row, typed loops over Arrow arrays,
//! no allocation except for new groups and new distinct values.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    UInt32Array, new_null_array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::ScalarValue;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashTable;

use crate::dataflow::spec::AggregateCall;
use crate::dataflow::state::{StateLookup, StateReader, StateWriter, ValueKey, ValueSet};
use crate::dataflow::watermark::{Watermarks, below_any};
use crate::dataflow::{Operator, StateSink, StateSource};
use crate::error::{Result, sqlstate};
use crate::types::{Epoch, ZBatch};

pub struct HashAggregate {
    group_by: Vec<Arc<dyn PhysicalExpr>>,
    /// No GROUP BY: one group (id 0) that always exists.
    global: bool,
    groups: Groups,
    row_count: Vec<i64>,
    aggs: Vec<Agg>,
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
    /// The output row last emitted per group (Arrow row format of the output schema).
    emitted: Vec<Option<Box<[u8]>>>,
    /// Groups changed since the last checkpoint (each once: see `is_unsaved`).
    unsaved: Vec<u32>,
    is_unsaved: Vec<bool>,
    /// Keys of groups freed since the last checkpoint.
    freed: Vec<Box<[u8]>>,
    out_converter: RowConverter,
    schema: SchemaRef,
    /// Reads groups back from the store (set by `attach`); without it every group stays in
    /// memory.
    lookup: Option<Box<dyn StateLookup>>,
    /// Every group is in memory (none evicted or left in the store): a key not found is a new
    /// group, no need to ask the store.
    complete: bool,
    /// Groups, and keys of freed groups, collected into a checkpoint that is not durable yet
    /// (only while attached).
    in_flight: Vec<u32>,
    is_in_flight: Vec<bool>,
    freed_in_flight: Vec<Box<[u8]>>,
    /// Keys of freed groups whose deletion is not durable yet: the store may still hold them.
    pending_deletes: HashSet<Box<[u8]>>,
    /// Per group: the barrier at which it last changed, for evicting the least recently used.
    last_used: Vec<u32>,
    tick: u32,
    /// Approximate bytes of each group in memory, and of all of them.
    sizes: Vec<u32>,
    bytes: usize,
    /// Watermarks of the group-by columns (see `dataflow::watermark`).
    key_watermarks: Watermarks,
    /// No group in memory has a key below this in the first watermarked group-by column (as
    /// of the last sweep): until a watermark passes it, nothing is to be freed.
    swept_below: Option<ScalarValue>,
    /// The pass over the stored groups in progress (see `sweep_store`), and the first
    /// watermark value at which the last pass began.
    store_sweep: Option<StoreSweep>,
    store_swept_at: Option<ScalarValue>,
}

/// A pass over the stored groups freeing those behind the watermarks it started with.
struct StoreSweep {
    /// The last stored key read.
    after: Option<Vec<u8>>,
    watermarks: Watermarks,
}

/// Stored groups a barrier reads at most while a pass over the store is in progress.
const STORE_SWEEP_BATCH: usize = 2048;

/// Bytes of a group besides its key, output row and aggregate states: hash, count, flags,
/// slots in the per-group vectors and the hash table.
const GROUP_OVERHEAD: usize = 64;

/// Group keys → dense group ids.
struct Groups {
    converter: Option<RowConverter>,
    table: HashTable<u32>,
    keys: Vec<Box<[u8]>>,
    hashes: Vec<u64>,
    free: Vec<u32>,
    random_state: RandomState,
    live: usize,
}

struct Agg {
    args: Vec<Arc<dyn PhysicalExpr>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    state: AggState,
    out_type: DataType,
}

/// A float sum with Neumaier compensation: deleting what was added gives back the exact earlier
/// sum far more often than plain addition (1e20 + 1 − 1e20 is 1, not 0).
#[derive(Clone, Copy, Default)]
struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

enum SumKind {
    Int,
    Float,
    Decimal(i8),
}

enum AggState {
    /// count(x), count(*): non-null rows.
    Count(Vec<i64>),
    /// sum(x) / avg(x) over integers, floats, or (sum only) decimals.
    Sum {
        kind: SumKind,
        avg: bool,
        ints: Vec<i128>,
        floats: Vec<CompensatedSum>,
        counts: Vec<i64>,
    },
    /// min(x) / max(x): per group, value (row format, order-preserving) → multiplicity.
    MinMax {
        max: bool,
        converter: RowConverter,
        null_row: Box<[u8]>,
        values: Vec<ValueSet>,
    },
    /// min(x) / max(x) over an append-only input: only the extreme so far (rows never leave).
    Extreme {
        max: bool,
        converter: RowConverter,
        null_row: Box<[u8]>,
        best: Vec<Option<ValueKey>>,
    },
    /// bool_and / bool_or: counts of true and false per group.
    Bool {
        and: bool,
        trues: Vec<i64>,
        falses: Vec<i64>,
    },
    /// count(DISTINCT x): per group, value → multiplicity.
    CountDistinct {
        converter: RowConverter,
        values: Vec<ValueSet>,
    },
    /// Anything else: the multiset of argument rows, recomputed with DataFusion's accumulator.
    Recompute {
        call: AggregateCall,
        converter: RowConverter,
        rows: Vec<ValueSet>,
    },
}

impl HashAggregate {
    /// `append_only`: the input never deletes (an APPEND ONLY table through filters, projections
    /// and inner joins), so min/max need only the extreme so far.
    pub fn new(
        group_by: Vec<Arc<dyn PhysicalExpr>>,
        aggregates: Vec<AggregateCall>,
        input_schema: &SchemaRef,
        schema: SchemaRef,
        append_only: bool,
    ) -> Result<Self> {
        let global = group_by.is_empty();
        let converter = if global {
            None
        } else {
            let fields = group_by
                .iter()
                .map(|e| Ok(SortField::new(e.data_type(input_schema)?)))
                .collect::<Result<Vec<_>>>()?;
            Some(RowConverter::new(fields)?)
        };
        let aggs = aggregates
            .into_iter()
            .map(|call| Agg::new(call, input_schema, append_only))
            .collect::<Result<Vec<_>>>()?;
        let out_converter = crate::types::row_converter(&schema)?;
        let mut this = HashAggregate {
            group_by,
            global,
            groups: Groups {
                converter,
                table: HashTable::new(),
                keys: Vec::new(),
                hashes: Vec::new(),
                free: Vec::new(),
                random_state: RandomState::with_seed(0),
                live: 0,
            },
            row_count: Vec::new(),
            aggs,
            dirty: Vec::new(),
            is_dirty: Vec::new(),
            emitted: Vec::new(),
            unsaved: Vec::new(),
            is_unsaved: Vec::new(),
            freed: Vec::new(),
            out_converter,
            schema,
            lookup: None,
            complete: true,
            in_flight: Vec::new(),
            is_in_flight: Vec::new(),
            freed_in_flight: Vec::new(),
            pending_deletes: HashSet::new(),
            store_sweep: None,
            store_swept_at: None,
            last_used: Vec::new(),
            tick: 0,
            sizes: Vec::new(),
            bytes: 0,
            key_watermarks: Vec::new(),
            swept_below: None,
        };
        if this.global {
            // The one group exists from the start, so the first barrier emits its row.
            let g = this.alloc_group(Box::default(), 0);
            this.mark_dirty(g);
            this.is_unsaved[g as usize] = true;
            this.unsaved.push(g);
        }
        Ok(this)
    }

    fn alloc_group(&mut self, key: Box<[u8]>, hash: u64) -> u32 {
        self.groups.live += 1;
        if let Some(g) = self.groups.free.pop() {
            self.groups.keys[g as usize] = key;
            self.groups.hashes[g as usize] = hash;
            self.last_used[g as usize] = self.tick;
            return g;
        }
        let g = self.groups.keys.len() as u32;
        self.groups.keys.push(key);
        self.groups.hashes.push(hash);
        self.row_count.push(0);
        self.is_dirty.push(false);
        self.is_unsaved.push(false);
        self.is_in_flight.push(false);
        self.emitted.push(None);
        self.last_used.push(self.tick);
        self.sizes.push(0);
        for agg in &mut self.aggs {
            agg.state.grow(g as usize + 1);
        }
        g
    }

    /// Adds group `g` (allocated, with its key) to the hash table.
    fn index_group(&mut self, g: u32) {
        let hashes = &self.groups.hashes;
        self.groups
            .table
            .insert_unique(hashes[g as usize], g, |x| hashes[*x as usize]);
    }

    /// Removes group `g` from memory, returning its key; its slot is reused.
    fn release_group(&mut self, g: u32) -> Box<[u8]> {
        let gi = g as usize;
        let hash = self.groups.hashes[gi];
        if let Ok(entry) = self.groups.table.find_entry(hash, |x| *x == g) {
            entry.remove();
        }
        self.is_unsaved[gi] = false;
        self.is_in_flight[gi] = false;
        self.row_count[gi] = 0;
        self.emitted[gi] = None;
        for agg in &mut self.aggs {
            agg.state.reset(gi);
        }
        self.bytes -= std::mem::take(&mut self.sizes[gi]) as usize;
        self.groups.free.push(g);
        self.groups.live -= 1;
        std::mem::take(&mut self.groups.keys[gi])
    }

    /// The group's last row was deleted: its state is gone, here and (next checkpoint) stored.
    fn free_group(&mut self, g: u32) {
        let key = self.release_group(g);
        if self.lookup.is_some() {
            self.pending_deletes.insert(key.clone());
        }
        self.freed.push(key);
    }

    /// Approximate bytes group `g` holds in memory.
    fn group_bytes(&self, g: usize) -> usize {
        GROUP_OVERHEAD
            + self.groups.keys[g].len()
            + self.emitted[g].as_ref().map_or(0, |r| r.len())
            + self.aggs.iter().map(|a| a.state.bytes(g)).sum::<usize>()
    }

    /// Whether group `g` may leave memory: unchanged since the last durable checkpoint.
    fn evictable(&self, g: u32) -> bool {
        let gi = g as usize;
        !(self.global || self.is_dirty[gi] || self.is_unsaved[gi] || self.is_in_flight[gi])
    }

    /// Reads into memory the stored groups among the keys of `rows` that are not in memory
    /// (one batched read), so the caller finds them. Keys freed since the last durable
    /// checkpoint are new groups whatever the store holds.
    fn fault_in(&mut self, rows: &Rows, hashes: &[u64]) -> Result<()> {
        let Some(lookup) = &self.lookup else {
            return Ok(());
        };
        let keys = &self.groups.keys;
        let mut seen = HashSet::new();
        let mut missing: Vec<(&[u8], u64)> = Vec::new();
        for (i, hash) in hashes.iter().enumerate() {
            let key = rows.row(i).data();
            let found = self
                .groups
                .table
                .find(*hash, |g| keys[*g as usize].as_ref() == key)
                .is_some();
            if !found && !self.pending_deletes.contains(key) && seen.insert(key) {
                missing.push((key, *hash));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let probe: Vec<&[u8]> = missing.iter().map(|(k, _)| *k).collect();
        let values = lookup.values(&probe)?;
        for ((key, hash), value) in missing.into_iter().zip(values) {
            if let Some(value) = value {
                let g = self.alloc_group(key.into(), hash);
                self.index_group(g);
                self.decode_group(g, &value)?;
            }
        }
        Ok(())
    }

    /// Sets group `g`'s state from its stored value (see `checkpoint`).
    fn decode_group(&mut self, g: u32, value: &[u8]) -> Result<()> {
        let gi = g as usize;
        let mut r = StateReader::new(value);
        let _stored_hash = r.i64()?;
        self.row_count[gi] = r.i64()?;
        self.emitted[gi] = match r.i64()? {
            0 => None,
            _ => Some(r.bytes()?.into()),
        };
        for agg in &mut self.aggs {
            let mut state = StateReader::new(r.bytes()?);
            agg.state.load(gi, &mut state)?;
        }
        let size = self.group_bytes(gi);
        self.bytes += size;
        self.bytes -= std::mem::replace(&mut self.sizes[gi], size as u32) as usize;
        Ok(())
    }

    /// Group `g`'s stored value: hash, row count, last emitted row and, per aggregate, its
    /// state, encoded with [`StateWriter`].
    fn encode_group(&self, g: u32) -> Vec<u8> {
        let gi = g as usize;
        let mut w = StateWriter::default();
        w.i64(self.groups.hashes[gi] as i64);
        w.i64(self.row_count[gi]);
        match &self.emitted[gi] {
            Some(row) => {
                w.i64(1);
                w.bytes(row);
            }
            None => w.i64(0),
        }
        for agg in &self.aggs {
            let mut state = StateWriter::default();
            agg.state.save(gi, &mut state);
            w.bytes(&state.finish());
        }
        w.finish()
    }

    fn mark_dirty(&mut self, g: u32) {
        if !self.is_dirty[g as usize] {
            self.is_dirty[g as usize] = true;
            self.dirty.push(g);
        }
    }

    /// The group id of every row of `data`, creating groups as needed.
    fn group_ids(&mut self, data: &RecordBatch) -> Result<Vec<u32>> {
        let n = data.num_rows();
        if self.global {
            return Ok(vec![0; n]);
        }
        let columns = self
            .group_by
            .iter()
            .map(|e| Ok(e.evaluate(data)?.into_array(n)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let converter = self
            .groups
            .converter
            .as_ref()
            .ok_or_else(|| crate::internal!("grouped aggregate without a key converter"))?;
        let rows = converter.convert_columns(&columns)?;
        let mut hashes = vec![0u64; n];
        create_hashes(&columns, &self.groups.random_state, &mut hashes)?;
        if !self.complete {
            self.fault_in(&rows, &hashes)?;
        }
        let mut ids = Vec::with_capacity(n);
        for (i, hash) in hashes.iter().enumerate() {
            let key = rows.row(i);
            let key = key.as_ref();
            let keys = &self.groups.keys;
            let found = self
                .groups
                .table
                .find(*hash, |g| keys[*g as usize].as_ref() == key)
                .copied();
            let g = match found {
                Some(g) => g,
                None => {
                    let g = self.alloc_group(key.into(), *hash);
                    self.index_group(g);
                    g
                }
            };
            ids.push(g);
        }
        Ok(ids)
    }

    /// Output rows (group keys, then aggregates) of `groups`.
    fn output(&self, groups: &[u32]) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        if let Some(converter) = &self.groups.converter {
            let parser = converter.parser();
            columns.extend(
                converter.convert_rows(
                    groups
                        .iter()
                        .map(|g| parser.parse(&self.groups.keys[*g as usize])),
                )?,
            );
        }
        for agg in &self.aggs {
            let array = agg.state.output(groups)?;
            columns.push(if array.data_type() == &agg.out_type {
                array
            } else {
                cast(&array, &agg.out_type)?
            });
        }
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(groups.len())),
        )?)
    }
}

impl HashAggregate {
    /// Emits the new output rows of the groups changed since the last barrier.
    fn emit(&mut self, _epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        let mut alive = Vec::with_capacity(dirty.len());
        let mut dead = Vec::new();
        self.tick = self.tick.wrapping_add(1);
        for g in &dirty {
            self.is_dirty[*g as usize] = false;
            self.last_used[*g as usize] = self.tick;
            if !self.is_unsaved[*g as usize] {
                self.is_unsaved[*g as usize] = true;
                self.unsaved.push(*g);
            }
            let n = self.row_count[*g as usize];
            if n < 0 {
                return Err(crate::internal!(
                    "aggregate group has a negative row count ({n})"
                ));
            }
            if self.global || n > 0 {
                alive.push(*g);
            } else {
                dead.push(*g);
            }
        }
        let new_batch = self.output(&alive)?;
        let new_rows: Rows = self.out_converter.convert_columns(new_batch.columns())?;
        let mut old: Vec<Box<[u8]>> = Vec::new();
        let mut take_new: Vec<u32> = Vec::new();
        for (j, g) in alive.iter().enumerate() {
            let row = new_rows.row(j);
            let bytes = row.as_ref();
            let slot = &mut self.emitted[*g as usize];
            match slot {
                // Unchanged output: nothing to say.
                Some(prev) if prev.as_ref() == bytes => {}
                // Changed: retract the old row, assert the new one.
                Some(_) => {
                    if let Some(prev) = slot.replace(bytes.into()) {
                        old.push(prev);
                    }
                    take_new.push(j as u32);
                }
                // New group.
                None => {
                    *slot = Some(bytes.into());
                    take_new.push(j as u32);
                }
            }
            let gi = *g as usize;
            let size = self.group_bytes(gi);
            self.bytes += size;
            self.bytes -= std::mem::replace(&mut self.sizes[gi], size as u32) as usize;
        }
        for g in dead {
            // Last row of the group deleted: retract its row, free its state.
            if let Some(prev) = self.emitted[g as usize].take() {
                old.push(prev);
            }
            self.free_group(g);
        }
        if !old.is_empty() {
            let parser = self.out_converter.parser();
            let columns = self
                .out_converter
                .convert_rows(old.iter().map(|b| parser.parse(b)))?;
            let data = RecordBatch::try_new(self.schema.clone(), columns)?;
            out.push(ZBatch::uniform(data, -1));
        }
        if !take_new.is_empty() {
            let data = if take_new.len() == new_batch.num_rows() {
                new_batch
            } else {
                datafusion::arrow::compute::take_record_batch(
                    &new_batch,
                    &UInt32Array::from(take_new),
                )?
            };
            out.push(ZBatch::uniform(data, 1));
        }
        Ok(())
    }

    /// Frees the groups in memory whose key is below a group-by column's watermark: no later
    /// change can reach them (their output rows stay emitted). Groups the store holds but
    /// memory does not are left there.
    fn free_closed_groups(&mut self) -> Result<()> {
        let Some((first, w)) = self
            .key_watermarks
            .iter()
            .enumerate()
            .find_map(|(c, w)| w.as_ref().map(|w| (c, w.clone())))
        else {
            return Ok(());
        };
        if self.swept_below.as_ref().is_some_and(|low| w <= *low) || self.groups.live == 0 {
            return Ok(());
        }
        let Some(converter) = &self.groups.converter else {
            return Ok(());
        };
        let ids: Vec<u32> = self.groups.table.iter().copied().collect();
        let parser = converter.parser();
        let keys = converter.convert_rows(
            ids.iter()
                .map(|g| parser.parse(&self.groups.keys[*g as usize])),
        )?;
        let bounds = self.key_watermarks.iter().enumerate();
        let closed = below_any(&keys, bounds.filter_map(|(c, w)| Some((c, w.as_ref()?))))?;
        let mut low: Option<ScalarValue> = None;
        for (i, g) in ids.iter().enumerate() {
            if closed[i] {
                self.free_group(*g);
            } else {
                let v = ScalarValue::try_from_array(&keys[first], i)?;
                if !v.is_null() && low.as_ref().is_none_or(|l| v < *l) {
                    low = Some(v);
                }
            }
        }
        // Nothing left below the first watermark, and nothing new can come below it.
        self.swept_below = Some(low.map_or(w.clone(), |l| if l < w { w } else { l }));
        Ok(())
    }
}

impl HashAggregate {
    /// Groups that were evicted (or left in the store at a restart) before their keys fell
    /// behind the watermark are not in memory for `free_closed_groups` to find. When the
    /// watermark has moved since the last pass, a pass over the stored groups — at most
    /// [`STORE_SWEEP_BATCH`] a barrier — frees those below the watermarks it started with (as
    /// freed groups: deleted at the next checkpoint, never read back).
    fn sweep_store(&mut self) -> Result<()> {
        if self.complete || self.global {
            return Ok(());
        }
        let (Some(lookup), Some(converter)) = (&self.lookup, &self.groups.converter) else {
            return Ok(());
        };
        if self.store_sweep.is_none() {
            let Some(first) = self.key_watermarks.iter().find_map(|w| w.clone()) else {
                return Ok(());
            };
            if self.store_swept_at.as_ref().is_some_and(|at| first <= *at) {
                return Ok(());
            }
            self.store_swept_at = Some(first);
            self.store_sweep = Some(StoreSweep {
                after: None,
                watermarks: self.key_watermarks.clone(),
            });
        }
        let Some(sweep) = &mut self.store_sweep else {
            return Ok(());
        };
        let stored = lookup.values_after(sweep.after.as_deref(), STORE_SWEEP_BATCH)?;
        let keys: Vec<&[u8]> = stored
            .iter()
            .map(|(k, _)| k.as_slice())
            .filter(|k| !k.is_empty() && !self.pending_deletes.contains(*k))
            .collect();
        let closed = if keys.is_empty() {
            Vec::new()
        } else {
            let parser = converter.parser();
            let columns = converter.convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            let bounds = sweep.watermarks.iter().enumerate();
            below_any(&columns, bounds.filter_map(|(c, w)| Some((c, w.as_ref()?))))?
        };
        sweep.after = match stored.last() {
            Some((last, _)) if stored.len() == STORE_SWEEP_BATCH => Some(last.clone()),
            _ => None,
        };
        let done = sweep.after.is_none();
        for (key, closed) in keys.into_iter().zip(closed) {
            if closed {
                let key: Box<[u8]> = key.into();
                self.pending_deletes.insert(key.clone());
                self.freed.push(key);
            }
        }
        if done {
            self.store_sweep = None;
        }
        Ok(())
    }
}

impl Operator for HashAggregate {
    fn on_batch(&mut self, _port: usize, batch: ZBatch, _out: &mut Vec<ZBatch>) -> Result<()> {
        // Inserts and deletes alike: fold the weight into the group's state; emit at the barrier.
        let ids = self.group_ids(&batch.data)?;
        let weights = batch.weights.values();
        for (g, w) in ids.iter().zip(weights.iter()) {
            self.row_count[*g as usize] += *w;
            self.mark_dirty(*g);
        }
        for agg in &mut self.aggs {
            agg.update(&batch.data, &ids, &batch.weights)?;
        }
        Ok(())
    }

    fn on_watermarks(&mut self, _inputs: &[&Watermarks], output: &Watermarks) {
        if !self.global {
            self.key_watermarks = output[..self.group_by.len().min(output.len())].to_vec();
        }
    }

    fn on_barrier(&mut self, epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()> {
        self.emit(epoch, out)?;
        self.free_closed_groups()?;
        self.sweep_store()
    }

    fn state_rows(&self) -> usize {
        self.groups.live
    }

    /// One value per group under its key (see `encode_group`); the keys of freed groups are
    /// deleted.
    fn checkpoint(&mut self, full: bool, sink: &mut dyn StateSink) -> Result<()> {
        let attached = self.lookup.is_some();
        if full && !attached {
            // Everything, over a cleared part.
            self.freed.clear();
            self.unsaved.clear();
            self.is_unsaved.iter_mut().for_each(|u| *u = false);
            let groups: Vec<u32> = if self.global {
                vec![0]
            } else {
                self.groups.table.iter().copied().collect()
            };
            for g in groups {
                sink.put(&self.groups.keys[g as usize], &self.encode_group(g));
            }
            return Ok(());
        }
        if full {
            // The checkpoint in flight may be lost: write its changes again (puts and deletes
            // are idempotent).
            for g in std::mem::take(&mut self.in_flight) {
                if std::mem::take(&mut self.is_in_flight[g as usize])
                    && !self.is_unsaved[g as usize]
                {
                    self.is_unsaved[g as usize] = true;
                    self.unsaved.push(g);
                }
            }
            let mut freed = std::mem::take(&mut self.freed_in_flight);
            freed.append(&mut self.freed);
            self.freed = freed;
        }
        // Freed first: a key freed and then created again is put back below.
        for key in &self.freed {
            sink.delete(key);
        }
        if attached {
            self.freed_in_flight.append(&mut self.freed);
        } else {
            self.freed.clear();
        }
        for g in std::mem::take(&mut self.unsaved) {
            // A group freed since it was listed (or listed twice) has its flag cleared.
            if std::mem::take(&mut self.is_unsaved[g as usize]) {
                sink.put(&self.groups.keys[g as usize], &self.encode_group(g));
                if attached && !self.is_in_flight[g as usize] {
                    self.is_in_flight[g as usize] = true;
                    self.in_flight.push(g);
                }
            }
        }
        Ok(())
    }

    fn checkpoint_durable(&mut self) {
        for g in std::mem::take(&mut self.in_flight) {
            self.is_in_flight[g as usize] = false;
        }
        self.freed_in_flight.clear();
        self.pending_deletes = self.freed.iter().cloned().collect();
    }

    fn restore(&mut self, source: &dyn StateSource) -> Result<()> {
        self.dirty.clear();
        self.is_dirty.iter_mut().for_each(|d| *d = false);
        if let Some(lookup) = &self.lookup {
            // Groups are read as their keys come up; only the global group is read now.
            self.complete = false;
            if self.global
                && let Some(value) = lookup.values(&[&[]])?.pop().flatten()
            {
                self.decode_group(0, &value)?;
            }
        } else {
            source.values(&mut |key, value| {
                let g = if self.global {
                    0
                } else {
                    let hash = StateReader::new(value).i64()? as u64;
                    let g = self.alloc_group(key.into(), hash);
                    self.index_group(g);
                    g
                };
                self.decode_group(g, value)
            })?;
        }
        // A global aggregate stored before its first barrier has yet to emit its row.
        if self.global && self.emitted[0].is_none() {
            self.mark_dirty(0);
        }
        Ok(())
    }

    fn attach(&mut self, lookup: Box<dyn StateLookup>) {
        self.lookup = Some(lookup);
    }

    fn evicts(&self) -> bool {
        self.lookup.is_some()
    }

    fn state_bytes(&self) -> usize {
        self.bytes
    }

    fn evict(&mut self, target: usize) {
        if self.lookup.is_none() || self.bytes <= target {
            return;
        }
        let mut candidates: Vec<(u32, u32)> = self
            .groups
            .table
            .iter()
            .filter(|g| self.evictable(**g))
            .map(|g| (self.tick.wrapping_sub(self.last_used[*g as usize]), *g))
            .collect();
        // Oldest (largest age) first.
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for (_, g) in candidates {
            if self.bytes <= target {
                break;
            }
            self.release_group(g);
            self.complete = false;
        }
    }
}

impl Agg {
    fn new(call: AggregateCall, input_schema: &SchemaRef, append_only: bool) -> Result<Agg> {
        let func = &call.func;
        let args = func.expressions();
        let out_type = func.field().data_type().clone();
        let arg_types = args
            .iter()
            .map(|e| Ok(e.data_type(input_schema)?))
            .collect::<Result<Vec<_>>>()?;
        let name = func.fun().name().to_ascii_lowercase();
        let simple = args.len() == 1 && func.order_bys().is_empty() && !func.ignore_nulls();
        let distinct = func.is_distinct();
        let sum_kind = |t: &DataType| match t {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(SumKind::Int),
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Some(SumKind::Float),
            DataType::Decimal128(_, s) => Some(SumKind::Decimal(*s)),
            _ => None,
        };
        let state = match name.as_str() {
            "count" if simple && !distinct => AggState::Count(Vec::new()),
            "count" if simple && distinct => AggState::CountDistinct {
                converter: RowConverter::new(vec![SortField::new(arg_types[0].clone())])?,
                values: Vec::new(),
            },
            "sum" | "avg" if simple && !distinct => match sum_kind(&arg_types[0]) {
                Some(SumKind::Decimal(_)) if name == "avg" => {
                    recompute(&call, &arg_types, input_schema)?
                }
                Some(kind) => AggState::Sum {
                    kind,
                    avg: name == "avg",
                    ints: Vec::new(),
                    floats: Vec::new(),
                    counts: Vec::new(),
                },
                None => recompute(&call, &arg_types, input_schema)?,
            },
            "min" | "max" if simple => {
                let converter = RowConverter::new(vec![SortField::new(arg_types[0].clone())])?;
                let null = new_null_array(&arg_types[0], 1);
                let null_row: Box<[u8]> =
                    converter.convert_columns(&[null])?.row(0).as_ref().into();
                if append_only {
                    AggState::Extreme {
                        max: name == "max",
                        converter,
                        null_row,
                        best: Vec::new(),
                    }
                } else {
                    AggState::MinMax {
                        max: name == "max",
                        converter,
                        null_row,
                        values: Vec::new(),
                    }
                }
            }
            "bool_and" | "bool_or" if simple && !distinct && arg_types[0] == DataType::Boolean => {
                AggState::Bool {
                    and: name == "bool_and",
                    trues: Vec::new(),
                    falses: Vec::new(),
                }
            }
            _ => recompute(&call, &arg_types, input_schema)?,
        };
        let (args, filter) = match &state {
            AggState::Recompute { .. } => {
                let mut all = args;
                all.extend(func.order_bys().iter().map(|s| s.expr.clone()));
                (all, call.filter.clone())
            }
            _ => (args, call.filter.clone()),
        };
        Ok(Agg {
            args,
            filter,
            state,
            out_type,
        })
    }

    fn update(&mut self, data: &RecordBatch, ids: &[u32], weights: &Int64Array) -> Result<()> {
        let n = data.num_rows();
        let filtered;
        let weights = match &self.filter {
            None => weights,
            Some(f) => {
                // FILTER (WHERE …): rows it rejects count with weight 0.
                let mask = f.evaluate(data)?.into_array(n)?;
                let mask = mask.as_boolean_opt().ok_or_else(|| {
                    crate::err!(
                        sqlstate::DATATYPE_MISMATCH,
                        "FILTER condition is not boolean"
                    )
                })?;
                filtered = Int64Array::from_iter_values(weights.values().iter().enumerate().map(
                    |(i, w)| {
                        if mask.is_valid(i) && mask.value(i) {
                            *w
                        } else {
                            0
                        }
                    },
                ));
                &filtered
            }
        };
        let args = self
            .args
            .iter()
            .map(|e| Ok(e.evaluate(data)?.into_array(n)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        self.state.update(&args, ids, weights.values())
    }
}

fn recompute(
    call: &AggregateCall,
    arg_types: &[DataType],
    input_schema: &SchemaRef,
) -> Result<AggState> {
    if arg_types.is_empty() {
        return Err(crate::unsupported!(
            "aggregate {}() without arguments in a materialized view",
            call.func.fun().name()
        ));
    }
    let mut fields: Vec<SortField> = arg_types
        .iter()
        .map(|t| SortField::new(t.clone()))
        .collect();
    for s in call.func.order_bys() {
        fields.push(SortField::new(s.expr.data_type(input_schema)?));
    }
    Ok(AggState::Recompute {
        call: call.clone(),
        converter: RowConverter::new(fields)?,
        rows: Vec::new(),
    })
}

impl AggState {
    /// Appends group `g`'s state to `w` (see `HashAggregate::checkpoint`).
    fn save(&self, g: usize, w: &mut StateWriter) {
        let multiset = |w: &mut StateWriter, entries: &mut dyn Iterator<Item = (&[u8], i64)>| {
            let entries: Vec<(&[u8], i64)> = entries.collect();
            w.i64(entries.len() as i64);
            for (v, n) in entries {
                w.bytes(v);
                w.i64(n);
            }
        };
        match self {
            AggState::Count(c) => w.i64(c[g]),
            AggState::Sum {
                ints,
                floats,
                counts,
                ..
            } => {
                w.i128(ints[g]);
                w.f64(floats[g].sum);
                w.f64(floats[g].compensation);
                w.i64(counts[g]);
            }
            AggState::MinMax { values, .. }
            | AggState::CountDistinct { values, .. }
            | AggState::Recompute { rows: values, .. } => multiset(w, &mut values[g].iter()),
            AggState::Extreme { best, .. } => match &best[g] {
                Some(b) => {
                    w.i64(1);
                    w.bytes(b.as_bytes());
                }
                None => w.i64(0),
            },
            AggState::Bool { trues, falses, .. } => {
                w.i64(trues[g]);
                w.i64(falses[g]);
            }
        }
    }

    /// Restores group `g`'s state from what [`AggState::save`] wrote.
    fn load(&mut self, g: usize, r: &mut StateReader<'_>) -> Result<()> {
        match self {
            AggState::Count(c) => c[g] = r.i64()?,
            AggState::Sum {
                ints,
                floats,
                counts,
                ..
            } => {
                ints[g] = r.i128()?;
                floats[g] = CompensatedSum {
                    sum: r.f64()?,
                    compensation: r.f64()?,
                };
                counts[g] = r.i64()?;
            }
            AggState::MinMax { values, .. }
            | AggState::CountDistinct { values, .. }
            | AggState::Recompute { rows: values, .. } => {
                for _ in 0..r.i64()? {
                    let v = r.bytes()?;
                    values[g].add(v, r.i64()?);
                }
            }
            AggState::Extreme { best, .. } => {
                best[g] = if r.i64()? == 1 {
                    Some(r.bytes()?.into())
                } else {
                    None
                };
            }
            AggState::Bool { trues, falses, .. } => {
                trues[g] = r.i64()?;
                falses[g] = r.i64()?;
            }
        }
        if !r.is_empty() {
            return Err(crate::err!(
                sqlstate::DATA_CORRUPTED,
                "aggregate state has trailing bytes"
            ));
        }
        Ok(())
    }

    /// Approximate bytes of group `g`'s state.
    fn bytes(&self, g: usize) -> usize {
        // Per value of a multiset: the value (inline up to a few words) and its count.
        const VALUE: usize = 48;
        match self {
            AggState::Count(_) => 8,
            AggState::Sum { .. } => 48,
            AggState::Bool { .. } => 16,
            AggState::Extreme { best, .. } => {
                24 + best[g].as_ref().map_or(0, |b| b.as_bytes().len())
            }
            AggState::MinMax { values, .. }
            | AggState::CountDistinct { values, .. }
            | AggState::Recompute { rows: values, .. } => 24 + values[g].len() * VALUE,
        }
    }

    fn grow(&mut self, n: usize) {
        match self {
            AggState::Count(c) => c.resize(n, 0),
            AggState::Sum {
                ints,
                floats,
                counts,
                ..
            } => {
                ints.resize(n, 0);
                floats.resize(n, CompensatedSum::default());
                counts.resize(n, 0);
            }
            AggState::MinMax { values, .. }
            | AggState::CountDistinct { values, .. }
            | AggState::Recompute { rows: values, .. } => values.resize_with(n, ValueSet::default),
            AggState::Extreme { best, .. } => best.resize(n, None),
            AggState::Bool { trues, falses, .. } => {
                trues.resize(n, 0);
                falses.resize(n, 0);
            }
        }
    }

    fn reset(&mut self, g: usize) {
        match self {
            AggState::Count(c) => c[g] = 0,
            AggState::Sum {
                ints,
                floats,
                counts,
                ..
            } => {
                ints[g] = 0;
                floats[g] = CompensatedSum::default();
                counts[g] = 0;
            }
            AggState::MinMax { values, .. }
            | AggState::CountDistinct { values, .. }
            | AggState::Recompute { rows: values, .. } => values[g] = ValueSet::default(),
            AggState::Extreme { best, .. } => best[g] = None,
            AggState::Bool { trues, falses, .. } => {
                trues[g] = 0;
                falses[g] = 0;
            }
        }
    }

    fn update(&mut self, args: &[ArrayRef], ids: &[u32], weights: &[i64]) -> Result<()> {
        match self {
            AggState::Count(counts) => {
                let arg = &args[0];
                if arg.null_count() == 0 {
                    for (g, w) in ids.iter().zip(weights) {
                        counts[*g as usize] += w;
                    }
                } else {
                    for (i, (g, w)) in ids.iter().zip(weights).enumerate() {
                        if arg.is_valid(i) {
                            counts[*g as usize] += w;
                        }
                    }
                }
            }
            AggState::Sum {
                kind,
                ints,
                floats,
                counts,
                ..
            } => {
                let arg = &args[0];
                match kind {
                    SumKind::Int => {
                        let arg = cast(arg, &DataType::Int64)?;
                        let values = arg.as_primitive::<Int64Type>();
                        for (i, (g, w)) in ids.iter().zip(weights).enumerate() {
                            if values.is_valid(i) {
                                ints[*g as usize] += values.value(i) as i128 * *w as i128;
                                counts[*g as usize] += w;
                            }
                        }
                    }
                    SumKind::Float => {
                        let arg = cast(arg, &DataType::Float64)?;
                        let values = arg.as_primitive::<Float64Type>();
                        for (i, (g, w)) in ids.iter().zip(weights).enumerate() {
                            if values.is_valid(i) {
                                floats[*g as usize].add(values.value(i) * *w as f64);
                                counts[*g as usize] += w;
                            }
                        }
                    }
                    SumKind::Decimal(_) => {
                        let values = arg.as_primitive::<Decimal128Type>();
                        for (i, (g, w)) in ids.iter().zip(weights).enumerate() {
                            if values.is_valid(i) {
                                ints[*g as usize] += values.value(i) * *w as i128;
                                counts[*g as usize] += w;
                            }
                        }
                    }
                }
            }
            AggState::MinMax {
                converter, values, ..
            } => {
                let rows = converter.convert_columns(&args[..1])?;
                let arg = &args[0];
                for (i, (g, w)) in ids.iter().zip(weights).enumerate() {
                    if arg.is_valid(i) {
                        values[*g as usize].add(rows.row(i).as_ref(), *w);
                    }
                }
            }
            AggState::Extreme {
                max,
                converter,
                best,
                ..
            } => {
                let rows = converter.convert_columns(&args[..1])?;
                let arg = &args[0];
                for (i, (g, w)) in ids.iter().zip(weights).enumerate() {
                    if *w < 0 {
                        return Err(crate::internal!(
                            "a delete reached min/max over an append-only input"
                        ));
                    }
                    if *w == 0 || !arg.is_valid(i) {
                        continue;
                    }
                    let value = rows.row(i);
                    let value = value.as_ref();
                    let slot = &mut best[*g as usize];
                    let better = match slot {
                        None => true,
                        Some(b) if *max => value > b.as_bytes(),
                        Some(b) => value < b.as_bytes(),
                    };
                    if better {
                        *slot = Some(value.into());
                    }
                }
            }
            AggState::Bool { trues, falses, .. } => {
                let arg = args[0].as_boolean_opt().ok_or_else(|| {
                    crate::err!(
                        sqlstate::DATATYPE_MISMATCH,
                        "bool_and/bool_or need booleans"
                    )
                })?;
                for (i, (g, w)) in ids.iter().zip(weights).enumerate() {
                    if arg.is_valid(i) {
                        if arg.value(i) {
                            trues[*g as usize] += w;
                        } else {
                            falses[*g as usize] += w;
                        }
                    }
                }
            }
            AggState::CountDistinct { converter, values } => {
                let rows = converter.convert_columns(&args[..1])?;
                let arg = &args[0];
                for (i, (g, w)) in ids.iter().zip(weights).enumerate() {
                    if arg.is_valid(i) {
                        values[*g as usize].add(rows.row(i).as_ref(), *w);
                    }
                }
            }
            AggState::Recompute {
                converter, rows, ..
            } => {
                let encoded = converter.convert_columns(args)?;
                for (i, (g, w)) in ids.iter().zip(weights).enumerate() {
                    rows[*g as usize].add(encoded.row(i).as_ref(), *w);
                }
            }
        }
        Ok(())
    }

    /// The aggregate's current value for each group of `groups`.
    fn output(&self, groups: &[u32]) -> Result<ArrayRef> {
        Ok(match self {
            AggState::Count(counts) => Arc::new(Int64Array::from_iter_values(
                groups.iter().map(|g| counts[*g as usize]),
            )),
            AggState::Sum {
                kind,
                avg,
                ints,
                floats,
                counts,
            } => {
                let valid = |g: &u32| counts[*g as usize] > 0;
                match (kind, avg) {
                    (SumKind::Int, false) => {
                        let mut out = Vec::with_capacity(groups.len());
                        for g in groups {
                            out.push(if valid(g) {
                                Some(i64::try_from(ints[*g as usize]).map_err(|_| {
                                    crate::err!(
                                        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                                        "bigint out of range"
                                    )
                                })?)
                            } else {
                                None
                            });
                        }
                        Arc::new(Int64Array::from(out))
                    }
                    (SumKind::Int, true) => {
                        Arc::new(Float64Array::from_iter(groups.iter().map(|g| {
                            valid(g).then(|| ints[*g as usize] as f64 / counts[*g as usize] as f64)
                        })))
                    }
                    (SumKind::Float, false) => Arc::new(Float64Array::from_iter(
                        groups
                            .iter()
                            .map(|g| valid(g).then(|| floats[*g as usize].value())),
                    )),
                    (SumKind::Float, true) => {
                        Arc::new(Float64Array::from_iter(groups.iter().map(|g| {
                            valid(g)
                                .then(|| floats[*g as usize].value() / counts[*g as usize] as f64)
                        })))
                    }
                    (SumKind::Decimal(s), _) => Arc::new(
                        Decimal128Array::from_iter(
                            groups.iter().map(|g| valid(g).then(|| ints[*g as usize])),
                        )
                        .with_precision_and_scale(38, *s)?,
                    ),
                }
            }
            AggState::MinMax {
                max,
                converter,
                null_row,
                values,
            } => {
                let parser = converter.parser();
                let rows = groups.iter().map(|g| {
                    let set = &values[*g as usize];
                    let best = if *max { set.last() } else { set.first() };
                    parser.parse(best.unwrap_or(null_row))
                });
                converter.convert_rows(rows)?.remove(0)
            }
            AggState::Extreme {
                converter,
                null_row,
                best,
                ..
            } => {
                let parser = converter.parser();
                let rows = groups.iter().map(|g| {
                    parser.parse(
                        best[*g as usize]
                            .as_ref()
                            .map_or(null_row.as_ref(), |b| b.as_bytes()),
                    )
                });
                converter.convert_rows(rows)?.remove(0)
            }
            AggState::Bool { and, trues, falses } => {
                Arc::new(BooleanArray::from_iter(groups.iter().map(|g| {
                    let (t, f) = (trues[*g as usize], falses[*g as usize]);
                    (t + f > 0).then_some(if *and { f == 0 } else { t > 0 })
                })))
            }
            AggState::CountDistinct { values, .. } => Arc::new(Int64Array::from_iter_values(
                groups.iter().map(|g| values[*g as usize].len() as i64),
            )),
            AggState::Recompute {
                call,
                converter,
                rows,
            } => {
                let parser = converter.parser();
                let mut results = Vec::with_capacity(groups.len());
                for g in groups {
                    let mut acc = call.func.create_accumulator()?;
                    let set = &rows[*g as usize];
                    if !set.is_empty() {
                        let expanded = set.iter().flat_map(|(row, n)| {
                            std::iter::repeat_n(row, n.max(0) as usize).map(|r| parser.parse(r))
                        });
                        let columns = converter.convert_rows(expanded)?;
                        acc.update_batch(&columns)?;
                    }
                    results.push(acc.evaluate()?);
                }
                if results.is_empty() {
                    new_null_array(call.func.field().data_type(), 0)
                } else {
                    ScalarValue::iter_to_array(results)?
                }
            }
        })
    }
}
