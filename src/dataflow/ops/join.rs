//! [`Join`]: equi-joins (inner, left, right, full outer) with a residual condition, and the semi
//! and anti joins that `IN` / `EXISTS` / `NOT EXISTS` / `INTERSECT` / `EXCEPT` become.
//!
//! Contract (L ⋈ R; a batch on one side is joined with the other side's current state, then
//! added to its own side, so Δ(L ⋈ R) = ΔL ⋈ R + L' ⋈ ΔR for any interleaving of batches):
//! - insert (+w) of a row on one side: joined with every stored row of the other side with an
//!   equal key (NULL keys never match, unless the join compares NULLs as equal, as set
//!   operations do) for which the residual condition is true; each pair is emitted with weight
//!   w × (weight of the other row). Then the row is stored;
//! - delete (−w): the same with −w (retracting exactly the pairs its insert produced), then w
//!   copies are removed from the side's state;
//! - outer joins: each row of a preserved side also carries its match count (the summed weight
//!   of the rows it currently joins with). A row with no match is emitted padded with NULLs;
//!   when its count moves from 0 to non-zero the padded row is retracted, and re-emitted when it
//!   returns to 0. Semi joins emit a left row while its count is non-zero, anti joins while it
//!   is zero, so `EXISTS`/`NOT EXISTS` flip as matching rows come and go;
//! - state: both sides, as [`Arrangement`]s keyed by the join key (Arrow row format), with
//!   per-row weights and match counts. Checkpoints store each side as counted rows (key: side,
//!   join key, row), adding the rows' weight changes since the previous checkpoint; match counts
//!   follow from the two sides, so they are recomputed on restore rather than stored;
//! - barrier: nothing held back; every change is emitted as its batch is processed;
//! - watermarks (inner joins): an equi-join key column with a watermark on both sides bounds
//!   what can still match: a left row whose key is below the right side's watermark will
//!   never meet another right row, and the other way round. Such rows are freed at the
//!   barrier, here and in the store (window joins keep only open windows). Likewise for
//!   interval joins: a residual conjunct `x ≥ y` (or `y ≤ x`, so `BETWEEN` too) with `x`
//!   non-decreasing in a column of one side and `y` in a column of the other frees the rows of
//!   `x`'s side whose `x` is below `y` at the other side's watermark;
//! - memory: once attached to the store (views' dataflows; not `NOT IN`, whose regime changes
//!   look at every row), a join key unchanged since the last durable checkpoint can be evicted:
//!   its rows on both sides leave memory together. A batch whose keys are not in memory reads
//!   them back first (both sides' rows, and match counts recomputed from them), and a restart
//!   reads none up front.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions,
    UInt32Array, new_null_array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::kernels::cmp::lt;
use datafusion::arrow::compute::{cast, filter, filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::physical_expr::PhysicalExpr;

use crate::dataflow::spec::{JoinKind, JoinSpec};
use crate::dataflow::state::{
    Arrangement, CountLog, FreedPrefixes, RowId, StateLookup, StateReader, StateWriter, append_key,
    key_parts,
};
use crate::dataflow::watermark::{
    IntervalBound, Watermarks, below_any, interval_bounds, pair_watermarks,
};
use crate::dataflow::{Operator, StateSink, StateSource};
use crate::error::{Result, sqlstate};
use crate::types::{Epoch, ZBatch};

const LEFT: usize = 0;
const RIGHT: usize = 1;

/// An equi-join key column (its index in the key) with the watermark below which left rows
/// are dead and the one below which right rows are (see `Join::key_bounds`).
type KeyBound = (usize, ScalarValue, ScalarValue);

/// An arranged row taken out for an interval check: (hash, key, row, weight, matches).
type StoredEntry = (u64, Box<[u8]>, Box<[u8]>, i64, i64);

pub struct Join {
    kind: JoinKind,
    keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    key_types: Vec<DataType>,
    key_converter: RowConverter,
    nulls_equal: bool,
    filter: Option<Arc<dyn PhysicalExpr>>,
    sides: [Arrangement; 2],
    schemas: [SchemaRef; 2],
    /// Left columns then right columns (the residual condition's input).
    pair_schema: SchemaRef,
    schema: SchemaRef,
    random_state: RandomState,
    /// `NOT IN (subquery)`: SQL's null-aware anti join.
    null_aware: Option<NullAware>,
    /// Rows stored or removed since the last checkpoint.
    unsaved: CountLog,
    /// Whether the null-aware regime changed since the last checkpoint.
    regime_unsaved: bool,
    /// Reads join keys back from the store (set by `attach`); without it every row stays in
    /// memory.
    lookup: Option<Box<dyn StateLookup>>,
    /// Every join key is in memory: one not found has no rows, no need to ask the store.
    complete: bool,
    /// Join keys in memory, while attached.
    held: HashMap<Box<[u8]>, HeldKey, RandomState>,
    /// Keys changed since the last checkpoint was collected, and in the one in flight.
    unsaved_keys: Vec<Box<[u8]>>,
    in_flight_keys: Vec<Box<[u8]>>,
    tick: u32,
    /// Per equi-join key (index into the key), the watermark below which left rows are dead
    /// (the right side's) and right rows are (the left side's).
    key_bounds: Vec<KeyBound>,
    /// `key_bounds` changed since the last sweep.
    bounds_moved: bool,
    /// Stored prefixes (side, key) of rows freed behind the watermarks.
    freed: FreedPrefixes,
    /// The pass over the stored rows in progress (see `sweep_store`): the last stored key read
    /// and the key bounds it frees below; and the bounds the last pass began with.
    store_sweep: Option<(Option<Vec<u8>>, Vec<KeyBound>)>,
    store_swept_at: Vec<KeyBound>,
    /// Residual conjuncts `x ≥ y` across the sides (interval joins), see the module docs.
    intervals: Vec<IntervalBound>,
    /// Per interval bound: the value below which its side's rows are dead, as of the last
    /// watermarks.
    interval_limits: Vec<Option<ScalarValue>>,
}

/// A join key in memory.
struct HeldKey {
    hash: u64,
    /// Changed since the last checkpoint was collected; changed in the one in flight.
    unsaved: bool,
    in_flight: bool,
    /// The barrier at which it last changed.
    last_used: u32,
}

/// A join key with its hash.
type HashedKey = (u64, Box<[u8]>);

/// Stored rows a barrier reads at most while a pass over the store is in progress.
const STORE_SWEEP_BATCH: usize = 4096;

/// Bytes per join key held, besides its rows.
const HELD_KEY_BYTES: usize = 96;

/// The key prefix of side `side`'s rows with join key `key`.
fn side_prefix(side: usize, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 9);
    append_key(&mut out, &[&[side as u8], key, &[]]);
    out
}

/// The part of a stored row's key naming the arrangement it belongs to.
const LEFT_NULLS: usize = 2;

/// State of a null-aware anti join (`x NOT IN (SELECT y …)`): a left row is emitted when the
/// right side is empty, or when its key is not NULL, no right key is NULL and nothing matches.
struct NullAware {
    right: Regime,
    /// Left rows with a NULL key (visible only while the right side is empty).
    left_nulls: Arrangement,
}

/// The right side's row count and NULL-key row count: all that decides visibility besides the
/// row's own match count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Regime {
    rows: i64,
    null_rows: i64,
}

impl Join {
    pub fn new(
        spec: &JoinSpec,
        left: SchemaRef,
        right: SchemaRef,
        pair_schema: SchemaRef,
        schema: SchemaRef,
    ) -> Result<Self> {
        let (lk, rk): (Vec<_>, Vec<_>) = spec.on.iter().cloned().unzip();
        let left_width = left.fields().len();
        let key_types = lk
            .iter()
            .map(|e| Ok(e.data_type(&left)?))
            .collect::<Result<Vec<_>>>()?;
        let key_converter = RowConverter::new(
            key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )?;
        let side = |s: &SchemaRef| -> Result<Arrangement> {
            Ok(Arrangement::new(crate::types::row_converter(s)?))
        };
        let null_aware = if spec.null_aware {
            Some(NullAware {
                right: Regime {
                    rows: 0,
                    null_rows: 0,
                },
                left_nulls: side(&left)?,
            })
        } else {
            None
        };
        Ok(Join {
            null_aware,
            kind: spec.kind,
            keys: [lk, rk],
            key_types,
            key_converter,
            nulls_equal: spec.nulls_equal,
            filter: spec.filter.clone(),
            sides: [side(&left)?, side(&right)?],
            schemas: [left, right],
            pair_schema,
            schema,
            random_state: RandomState::with_seed(0),
            unsaved: CountLog::default(),
            regime_unsaved: spec.null_aware,
            lookup: None,
            complete: true,
            held: HashMap::default(),
            unsaved_keys: Vec::new(),
            in_flight_keys: Vec::new(),
            tick: 0,
            key_bounds: Vec::new(),
            bounds_moved: false,
            freed: FreedPrefixes::default(),
            store_sweep: None,
            store_swept_at: Vec::new(),
            intervals: if spec.kind == JoinKind::Inner {
                interval_bounds(spec.filter.as_ref(), left_width)
            } else {
                Vec::new()
            },
            interval_limits: Vec::new(),
        })
    }

    /// Removes the rows that can no longer satisfy an interval bound.
    fn free_outside_intervals(&mut self) -> Result<()> {
        for i in 0..self.intervals.len() {
            let Some(limit) = self.interval_limits.get(i).cloned().flatten() else {
                continue;
            };
            let b = &self.intervals[i];
            let (side, x) = (b.side, b.x.clone());
            let entries: Vec<StoredEntry> = self.sides[side]
                .entries()
                .map(|(hash, key, id)| {
                    let a = &self.sides[side];
                    (
                        hash,
                        key.into(),
                        a.row(id).into(),
                        a.weight(id),
                        a.matches(id),
                    )
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            let converter = self.sides[side].converter();
            let parser = converter.parser();
            let columns = converter.convert_rows(entries.iter().map(|e| parser.parse(&e.2)))?;
            // The pair schema's batch: this side's columns, NULLs for the other's.
            let n = entries.len();
            let mut pair: Vec<ArrayRef> = Vec::with_capacity(self.pair_schema.fields().len());
            let left_width = self.schemas[LEFT].fields().len();
            for (i, f) in self.pair_schema.fields().iter().enumerate() {
                let mine = if side == LEFT {
                    i < left_width
                } else {
                    i >= left_width
                };
                if mine {
                    pair.push(columns[if side == LEFT { i } else { i - left_width }].clone());
                } else {
                    pair.push(new_null_array(f.data_type(), n));
                }
            }
            let batch = RecordBatch::try_new_with_options(
                self.pair_schema.clone(),
                pair,
                &RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
            let x = x.evaluate(&batch)?.into_array(n)?;
            let dead = lt(&x, &limit.to_scalar()?)?;
            for (i, e) in entries.iter().enumerate() {
                if dead.value(i) && !dead.is_null(i) {
                    let (hash, key, row, w, m) = e;
                    self.sides[side].update(*hash, key, row, -w, *m)?;
                    self.unsaved.push(&[&[side as u8], key, row], -w);
                    if self.lookup.is_some() {
                        self.mark_changed(*hash, key);
                    }
                }
            }
        }
        Ok(())
    }

    /// Frees the rows that can no longer match (see `key_bounds` and `intervals`).
    fn free_behind_watermarks(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.bounds_moved) {
            return Ok(());
        }
        self.free_outside_intervals()?;
        if self.key_bounds.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<(u64, Box<[u8]>)> = Vec::new();
        let mut seen = HashSet::new();
        for side in [LEFT, RIGHT] {
            for (hash, key) in self.sides[side].keys() {
                if seen.insert(key) {
                    keys.push((hash, key.into()));
                }
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let parser = self.key_converter.parser();
        let columns = self
            .key_converter
            .convert_rows(keys.iter().map(|(_, k)| parser.parse(k)))?;
        let dead = [
            below_any(&columns, self.key_bounds.iter().map(|(i, l, _)| (*i, l)))?,
            below_any(&columns, self.key_bounds.iter().map(|(i, _, r)| (*i, r)))?,
        ];
        for (k, (hash, key)) in keys.iter().enumerate() {
            for side in [LEFT, RIGHT] {
                if dead[side][k] && self.sides[side].lookup(*hash, key).next().is_some() {
                    self.sides[side].remove_key(*hash, key);
                    self.freed.push(side_prefix(side, key));
                }
            }
            if dead[LEFT][k] && dead[RIGHT][k] {
                self.held.remove(key);
            }
        }
        Ok(())
    }

    /// Join keys evicted to the store (or left there by a restart) before they fell behind the
    /// watermarks are not in memory for `free_behind_watermarks` to find. When the key bounds
    /// have moved since the last pass, a pass over the stored rows — at most
    /// [`STORE_SWEEP_BATCH`] a barrier — frees them the same way (window joins; the rows of
    /// interval joins that were evicted are not swept).
    fn sweep_store(&mut self) -> Result<()> {
        let Some(lookup) = &self.lookup else {
            return Ok(());
        };
        if self.complete {
            return Ok(());
        }
        if self.store_sweep.is_none() {
            if self.key_bounds.is_empty() || self.key_bounds == self.store_swept_at {
                return Ok(());
            }
            self.store_swept_at = self.key_bounds.clone();
            self.store_sweep = Some((None, self.key_bounds.clone()));
        }
        let Some((after, bounds)) = &mut self.store_sweep else {
            return Ok(());
        };
        let stored = lookup.counts_after(&[], after.as_deref(), STORE_SWEEP_BATCH)?;
        // (side, key) of the stored rows whose key is not in memory.
        let mut found: Vec<(usize, &[u8])> = Vec::new();
        for (stored_key, _) in &stored {
            let [side, key, _] = key_parts::<3>(stored_key)?;
            let side = side.first().copied().unwrap_or(u8::MAX) as usize;
            if (side == LEFT || side == RIGHT)
                && found.last() != Some(&(side, key))
                && !self.held.contains_key(key)
            {
                found.push((side, key));
            }
        }
        let mut freed: Vec<Vec<u8>> = Vec::new();
        if !found.is_empty() {
            let parser = self.key_converter.parser();
            let columns = self
                .key_converter
                .convert_rows(found.iter().map(|(_, k)| parser.parse(k)))?;
            let dead = [
                below_any(&columns, bounds.iter().map(|(i, l, _)| (*i, l)))?,
                below_any(&columns, bounds.iter().map(|(i, _, r)| (*i, r)))?,
            ];
            for (k, (side, key)) in found.iter().enumerate() {
                if dead[*side][k] {
                    freed.push(side_prefix(*side, key));
                }
            }
        }
        *after = match stored.last() {
            Some((last, _)) if stored.len() == STORE_SWEEP_BATCH => Some(last.clone()),
            _ => None,
        };
        if after.is_none() {
            self.store_sweep = None;
        }
        freed.dedup();
        for prefix in freed {
            self.freed.push(prefix);
        }
        Ok(())
    }

    /// Records that join key `key` changed (while attached).
    fn mark_changed(&mut self, hash: u64, key: &[u8]) {
        let tick = self.tick;
        match self.held.get_mut(key) {
            Some(h) => {
                h.last_used = tick;
                if !h.unsaved {
                    h.unsaved = true;
                    self.unsaved_keys.push(key.into());
                }
            }
            None => {
                self.held.insert(
                    key.into(),
                    HeldKey {
                        hash,
                        unsaved: true,
                        in_flight: false,
                        last_used: tick,
                    },
                );
                self.unsaved_keys.push(key.into());
            }
        }
    }

    /// Reads the rows of join keys `missing` (not in memory) back from the store, both sides,
    /// and recomputes their match counts.
    fn fault_in(&mut self, missing: &[(u64, &[u8])]) -> Result<()> {
        let lookup = self
            .lookup
            .as_ref()
            .ok_or_else(|| crate::internal!("join rows left the store unattached"))?;
        // Both sides' key ranges, in key order, read with one iterator.
        let mut ranges: Vec<(Vec<u8>, usize, usize)> = Vec::with_capacity(missing.len() * 2);
        for (i, (_, key)) in missing.iter().enumerate() {
            for side in [LEFT, RIGHT] {
                ranges.push((side_prefix(side, key), side, i));
            }
        }
        ranges.sort_unstable();
        let starts: Vec<&[u8]> = ranges.iter().map(|(s, _, _)| s.as_slice()).collect();
        let stored = lookup.counts_with_starts(&starts)?;
        for ((_, side, i), rows) in ranges.iter().zip(stored) {
            let (hash, key) = missing[*i];
            for (stored, n) in rows {
                let [_, _, row] = key_parts::<3>(&stored)?;
                self.sides[*side].update(hash, key, row, n, 0)?;
            }
        }
        let loaded: Vec<HashedKey> = missing.iter().map(|(h, k)| (*h, (*k).into())).collect();
        for (hash, key) in &loaded {
            self.held.insert(
                key.clone(),
                HeldKey {
                    hash: *hash,
                    unsaved: false,
                    in_flight: false,
                    last_used: self.tick,
                },
            );
        }
        for side in [LEFT, RIGHT] {
            if self.tracks(side) {
                self.restore_matches(side, Some(&loaded))?;
            }
        }
        Ok(())
    }

    /// Candidate pairs as rows of the pair schema: `mine` (columns of side `a`) beside
    /// `theirs` (the other side's), left columns first.
    fn pairs(
        &self,
        a: usize,
        mine: Vec<ArrayRef>,
        theirs: Vec<ArrayRef>,
        n: usize,
    ) -> Result<RecordBatch> {
        let (l, r) = if a == LEFT {
            (mine, theirs)
        } else {
            (theirs, mine)
        };
        Ok(RecordBatch::try_new_with_options(
            self.pair_schema.clone(),
            l.into_iter().chain(r).collect(),
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// The residual condition over candidate pairs (NULL counts as false); `None` without one.
    fn residual(&self, pairs: &RecordBatch) -> Result<Option<BooleanArray>> {
        let Some(f) = &self.filter else {
            return Ok(None);
        };
        let mask = f.evaluate(pairs)?.into_array(pairs.num_rows())?;
        let mask = mask.as_boolean_opt().cloned().ok_or_else(|| {
            crate::err!(sqlstate::DATATYPE_MISMATCH, "join condition is not boolean")
        })?;
        Ok(Some(match mask.nulls() {
            Some(nulls) => BooleanArray::new(mask.values() & nulls.inner(), None),
            None => mask,
        }))
    }

    /// The hash of each join key (Arrow row format), as [`Operator::on_batch`] computes it.
    fn key_hashes(&self, keys: &[&[u8]]) -> Result<Vec<u64>> {
        let mut hashes = vec![0u64; keys.len()];
        if !self.key_types.is_empty() && !keys.is_empty() {
            let parser = self.key_converter.parser();
            let columns = self
                .key_converter
                .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            create_hashes(&columns, &self.random_state, &mut hashes)?;
        }
        Ok(hashes)
    }

    /// Recomputes the match counts of side `a`'s rows from the other side (after a restore),
    /// of all rows or of those with the keys `only`.
    fn restore_matches(&mut self, a: usize, only: Option<&[HashedKey]>) -> Result<()> {
        let b = 1 - a;
        let mut pairs: Vec<(RowId, RowId)> = Vec::new();
        match only {
            None => {
                for (hash, key, id) in self.sides[a].entries() {
                    pairs.extend(self.sides[b].lookup(hash, key).map(|other| (id, other)));
                }
            }
            Some(keys) => {
                for (hash, key) in keys {
                    for id in self.sides[a].lookup(*hash, key) {
                        pairs.extend(self.sides[b].lookup(*hash, key).map(|other| (id, other)));
                    }
                }
            }
        }
        let mut totals: HashMap<RowId, i64> = HashMap::new();
        for chunk in pairs.chunks(8192) {
            let kept = if self.filter.is_some() {
                let (ids_a, ids_b): (Vec<RowId>, Vec<RowId>) = chunk.iter().copied().unzip();
                let (mine, theirs) = (self.sides[a].decode(&ids_a)?, self.sides[b].decode(&ids_b)?);
                let batch = self.pairs(a, mine, theirs, chunk.len())?;
                self.residual(&batch)?
            } else {
                None
            };
            for (j, (id, other)) in chunk.iter().enumerate() {
                if kept.as_ref().is_none_or(|m| m.value(j)) {
                    *totals.entry(*id).or_insert(0) += self.sides[b].weight(*other);
                }
            }
        }
        for (id, m) in totals {
            self.sides[a].add_matches(id, m);
        }
        Ok(())
    }

    /// Whether rows of `side` carry match counts (and unmatched rows are emitted or tracked).
    fn tracks(&self, side: usize) -> bool {
        match self.kind {
            JoinKind::Inner => false,
            JoinKind::Left => side == LEFT,
            JoinKind::Right => side == RIGHT,
            JoinKind::Full => true,
            JoinKind::LeftSemi | JoinKind::LeftAnti => side == LEFT,
        }
    }

    fn emits_pairs(&self) -> bool {
        matches!(
            self.kind,
            JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full
        )
    }

    /// Output rows for rows of `side` given as columns, in the "unmatched" form: padded with
    /// NULLs for outer joins, bare for semi/anti joins.
    fn single_side_output(
        &self,
        side: usize,
        columns: Vec<ArrayRef>,
        weights: Vec<i64>,
    ) -> Result<ZBatch> {
        let n = weights.len();
        let data = match self.kind {
            JoinKind::LeftSemi | JoinKind::LeftAnti => RecordBatch::try_new_with_options(
                self.schema.clone(),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(n)),
            )?,
            _ => {
                let other = 1 - side;
                let nulls: Vec<ArrayRef> = self.schemas[other]
                    .fields()
                    .iter()
                    .map(|f| new_null_array(f.data_type(), n))
                    .collect();
                let (l, r) = if side == LEFT {
                    (columns, nulls)
                } else {
                    (nulls, columns)
                };
                RecordBatch::try_new_with_options(
                    self.schema.clone(),
                    l.into_iter().chain(r).collect(),
                    &RecordBatchOptions::new().with_row_count(Some(n)),
                )?
            }
        };
        Ok(ZBatch::new(data, Int64Array::from(weights)))
    }

    /// Whether a row of the tracked side with `matches` is currently emitted on its own.
    fn single_visible(&self, matches: i64) -> bool {
        match self.kind {
            JoinKind::LeftSemi => matches != 0,
            _ => matches == 0,
        }
    }

    /// [`Join::single_visible`] for a row that may have a NULL key, under the right side's
    /// `regime` when the join is null-aware.
    fn visible(&self, regime: Option<Regime>, null_key: bool, matches: i64) -> bool {
        match regime {
            None => self.single_visible(if null_key { 0 } else { matches }),
            Some(r) => r.rows == 0 || (!null_key && r.null_rows == 0 && matches == 0),
        }
    }
}

impl Operator for Join {
    fn on_batch(&mut self, port: usize, batch: ZBatch, out: &mut Vec<ZBatch>) -> Result<()> {
        let a = port;
        let b = 1 - a;
        let data = &batch.data;
        let weights = batch.weights.values();
        let n = data.num_rows();

        // Keys of the incoming rows.
        let mut key_columns = Vec::with_capacity(self.keys[a].len());
        for (e, t) in self.keys[a].iter().zip(&self.key_types) {
            let c = e.evaluate(data)?.into_array(n)?;
            key_columns.push(if c.data_type() == t { c } else { cast(&c, t)? });
        }
        // A join without equality keys (a cross join) puts every row under one empty key.
        let key_rows = if key_columns.is_empty() {
            None
        } else {
            Some(self.key_converter.convert_columns(&key_columns)?)
        };
        let key = |i: usize| -> &[u8] { key_rows.as_ref().map_or(&[], |r| r.row(i).data()) };
        let mut hashes = vec![0u64; n];
        if !key_columns.is_empty() {
            create_hashes(&key_columns, &self.random_state, &mut hashes)?;
        }
        let null_key: Option<NullBuffer> = if self.nulls_equal {
            None
        } else {
            key_columns.iter().fold(None, |acc, c| {
                NullBuffer::union(acc.as_ref(), c.logical_nulls().as_ref())
            })
        };
        let is_null_key = |i: usize| null_key.as_ref().is_some_and(|nb| nb.is_null(i));

        // Attached: keys not in memory are read back first; every key of the batch changes.
        if self.lookup.is_some() {
            if !self.complete {
                let mut seen = HashSet::new();
                let missing: Vec<(u64, &[u8])> = (0..n)
                    .filter(|i| !is_null_key(*i) && !self.held.contains_key(key(*i)))
                    .filter(|i| seen.insert(key(*i)))
                    .map(|i| (hashes[i], key(i)))
                    .collect();
                if !missing.is_empty() {
                    self.fault_in(&missing)?;
                }
            }
            for i in 0..n {
                if weights[i] != 0 && !is_null_key(i) {
                    self.mark_changed(hashes[i], key(i));
                }
            }
        }

        // Probe the other side.
        let mut probe_rows: Vec<u32> = Vec::new();
        let mut other_rows: Vec<RowId> = Vec::new();
        for (i, hash) in hashes.iter().enumerate() {
            if is_null_key(i) {
                continue;
            }
            for id in self.sides[b].lookup(*hash, key(i)) {
                probe_rows.push(i as u32);
                other_rows.push(id);
            }
        }

        // Candidate pairs, then the residual condition.
        let mut kept: Option<BooleanArray> = None;
        let mut pairs: Option<RecordBatch> = None;
        if !probe_rows.is_empty() {
            let idx = UInt32Array::from(probe_rows.clone());
            let mine: Vec<ArrayRef> = data
                .columns()
                .iter()
                .map(|c| Ok(take(c.as_ref(), &idx, None)?))
                .collect::<Result<_>>()?;
            let theirs = self.sides[b].decode(&other_rows)?;
            let batch = self.pairs(a, mine, theirs, probe_rows.len())?;
            kept = self.residual(&batch)?;
            pairs = Some(batch);
        }
        let is_kept = |j: usize| kept.as_ref().is_none_or(|m| m.value(j));

        // Inner pairs.
        if self.emits_pairs()
            && let Some(pairs) = &pairs
        {
            let pair_weights: Vec<i64> = probe_rows
                .iter()
                .zip(&other_rows)
                .map(|(i, id)| weights[*i as usize] * self.sides[b].weight(*id))
                .collect();
            let pair_weights = Int64Array::from(pair_weights);
            let (rows, w) = match &kept {
                Some(mask) => (
                    filter_record_batch(pairs, mask)?,
                    filter(&pair_weights, mask)?.as_primitive().clone(),
                ),
                None => (pairs.clone(), pair_weights),
            };
            if rows.num_rows() > 0 {
                let data = if self.schema == self.pair_schema {
                    rows
                } else {
                    RecordBatch::try_new(self.schema.clone(), rows.columns().to_vec())?
                };
                out.push(ZBatch::new(data, w));
            }
        }

        // Match counts of the incoming rows (against the other side as it is now).
        let track_a = self.tracks(a);
        let mut matches = vec![0i64; if track_a { n } else { 0 }];
        let mut other_delta: HashMap<RowId, i64> = HashMap::new();
        let track_b = self.tracks(b);
        for (j, (i, id)) in probe_rows.iter().zip(&other_rows).enumerate() {
            if !is_kept(j) {
                continue;
            }
            if track_a {
                matches[*i as usize] += self.sides[b].weight(*id);
            }
            if track_b {
                *other_delta.entry(*id).or_insert(0) += weights[*i as usize];
            }
        }

        // Incoming rows of a tracked side shown on their own (unmatched / semi / anti).
        let regime = self.null_aware.as_ref().map(|na| na.right);
        if track_a {
            let visible: Vec<u32> = (0..n)
                .filter(|i| self.visible(regime, is_null_key(*i), matches[*i]))
                .map(|i| i as u32)
                .collect();
            if !visible.is_empty() {
                let idx = UInt32Array::from(visible.clone());
                let columns = data
                    .columns()
                    .iter()
                    .map(|c| Ok(take(c.as_ref(), &idx, None)?))
                    .collect::<Result<Vec<_>>>()?;
                let w = visible.iter().map(|i| weights[*i as usize]).collect();
                out.push(self.single_side_output(a, columns, w)?);
            }
        }

        // Null-aware anti join: the right side's row and NULL-key counts after this batch.
        let new_regime = match (&self.null_aware, a) {
            (Some(na), RIGHT) => {
                let mut r = na.right;
                for (i, w) in weights.iter().enumerate() {
                    r.rows += w;
                    if is_null_key(i) {
                        r.null_rows += w;
                    }
                }
                Some(r)
            }
            _ => regime,
        };

        // Rows of the other (tracked) side whose visibility changed: those whose match count
        // crossed zero — or, when the right side of a null-aware join became empty or
        // non-empty or gained or lost its last NULL key, possibly any row, so all are compared.
        let regime_changed = new_regime != regime;
        let ids: Vec<RowId> = if regime_changed {
            self.sides[b].all_rows().collect()
        } else if track_b {
            let mut touched: Vec<RowId> = other_delta.keys().copied().collect();
            touched.sort_unstable();
            touched
        } else {
            Vec::new()
        };
        let mut flipped: Vec<RowId> = Vec::new();
        let mut flip_weights: Vec<i64> = Vec::new();
        for id in ids {
            let before = self.sides[b].matches(id);
            let delta = other_delta.get(&id).copied().unwrap_or(0);
            self.sides[b].add_matches(id, delta);
            let was = self.visible(regime, false, before);
            let is = self.visible(new_regime, false, before + delta);
            if was != is {
                let w = self.sides[b].weight(id);
                flipped.push(id);
                flip_weights.push(if is { w } else { -w });
            }
        }
        if !flipped.is_empty() {
            let columns = self.sides[b].decode(&flipped)?;
            out.push(self.single_side_output(b, columns, flip_weights)?);
        }
        if regime_changed && let Some(na) = &self.null_aware {
            // Left rows with a NULL key are shown exactly while the right side is empty.
            let (was, is) = (
                self.visible(regime, true, 0),
                self.visible(new_regime, true, 0),
            );
            let ids: Vec<RowId> = na.left_nulls.all_rows().collect();
            if was != is && !ids.is_empty() {
                let w = ids
                    .iter()
                    .map(|id| na.left_nulls.weight(*id) * if is { 1 } else { -1 })
                    .collect();
                let columns = na.left_nulls.decode(&ids)?;
                out.push(self.single_side_output(b, columns, w)?);
            }
        }
        if let (Some(na), Some(r)) = (self.null_aware.as_mut(), new_regime) {
            self.regime_unsaved |= na.right != r;
            na.right = r;
        }

        // Finally store the incoming rows. Rows with a NULL key never match: nothing to store.
        // A side without columns (the one row of a SELECT without FROM, joined to a scalar
        // subquery) stores empty rows: arrow's row format cannot count rows of no columns.
        let rows = if data.num_columns() == 0 {
            None
        } else {
            Some(self.sides[a].converter().convert_columns(data.columns())?)
        };
        let row = |i: usize| -> &[u8] { rows.as_ref().map_or(&[], |r| r.row(i).data()) };
        for i in 0..n {
            if weights[i] == 0 {
                continue;
            }
            if is_null_key(i) {
                // Never matches; a null-aware anti join still needs its left ones.
                if a == LEFT
                    && let Some(na) = self.null_aware.as_mut()
                {
                    na.left_nulls.update(0, &[], row(i), weights[i], 0)?;
                    self.unsaved
                        .push(&[&[LEFT_NULLS as u8], &[], row(i)], weights[i]);
                }
                continue;
            }
            let m = if track_a { matches[i] } else { 0 };
            self.sides[a].update(hashes[i], key(i), row(i), weights[i], m)?;
            self.unsaved.push(&[&[a as u8], key(i), row(i)], weights[i]);
        }
        Ok(())
    }

    fn on_watermarks(&mut self, inputs: &[&Watermarks], _output: &Watermarks) {
        if self.kind != JoinKind::Inner || inputs.len() < 2 {
            return;
        }
        let column = |e: &Arc<dyn PhysicalExpr>| {
            e.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                .map(|c| c.index())
        };
        let mut bounds = Vec::new();
        for (i, (l, r)) in self.keys[LEFT].iter().zip(&self.keys[RIGHT]).enumerate() {
            let (Some(l), Some(r)) = (column(l), column(r)) else {
                continue;
            };
            if let (Some(Some(wl)), Some(Some(wr))) = (inputs[0].get(l), inputs[1].get(r)) {
                bounds.push((i, wr.clone(), wl.clone()));
            }
        }
        if bounds != self.key_bounds {
            self.key_bounds = bounds;
            self.bounds_moved = true;
        }
        // Interval bounds: y at the other side's watermark (y reads one column of the pair).
        let left_width = self.schemas[LEFT].fields().len();
        let pair_marks = pair_watermarks(inputs[0], inputs[1], left_width);
        let limits: Vec<Option<ScalarValue>> = self
            .intervals
            .iter()
            .map(|b| {
                pair_marks.get(b.other_column).cloned().flatten()?;
                crate::dataflow::watermark::at_watermark(&b.y, &self.pair_schema, &pair_marks)
                    .ok()
                    .flatten()
            })
            .collect();
        if limits != self.interval_limits {
            self.interval_limits = limits;
            self.bounds_moved = true;
        }
    }

    fn on_barrier(&mut self, _epoch: Epoch, _out: &mut Vec<ZBatch>) -> Result<()> {
        // Every change was emitted with the batch that caused it.
        self.tick = self.tick.wrapping_add(1);
        self.free_behind_watermarks()?;
        self.sweep_store()
    }

    /// Counted rows (side, join key, row) and, for a null-aware join, the right side's row
    /// counts as a value.
    fn checkpoint(&mut self, full: bool, sink: &mut dyn StateSink) -> Result<()> {
        let attached = self.lookup.is_some();
        if full && attached {
            // The checkpoint in flight may be lost: every key changed since the last durable
            // one is cleared and written whole, both sides.
            self.unsaved.clear();
            let mut changed = std::mem::take(&mut self.in_flight_keys);
            changed.append(&mut self.unsaved_keys);
            changed.sort_unstable();
            changed.dedup();
            let mut key = Vec::new();
            for k in &changed {
                let Some(h) = self.held.get_mut(k) else {
                    continue;
                };
                h.in_flight = false;
                h.unsaved = true;
                let hash = h.hash;
                for side in [LEFT, RIGHT] {
                    sink.clear_prefix(&side_prefix(side, k));
                    for id in self.sides[side].lookup(hash, k) {
                        key.clear();
                        append_key(&mut key, &[&[side as u8], k, self.sides[side].row(id)]);
                        sink.add(&key, self.sides[side].weight(id));
                    }
                }
            }
            self.unsaved_keys = changed;
        } else if full {
            self.unsaved.clear();
            let mut key = Vec::new();
            let sides = [(LEFT, &self.sides[LEFT]), (RIGHT, &self.sides[RIGHT])]
                .into_iter()
                .chain(
                    self.null_aware
                        .as_ref()
                        .map(|na| (LEFT_NULLS, &na.left_nulls)),
                );
            for (side, arrangement) in sides {
                for (_, k, id) in arrangement.entries() {
                    key.clear();
                    append_key(&mut key, &[&[side as u8], k, arrangement.row(id)]);
                    sink.add(&key, arrangement.weight(id));
                }
            }
        } else {
            self.unsaved.drain_into(sink);
        }
        // Rows freed behind the watermarks, after the adds that may have stored them.
        self.freed.write(full, attached, sink);
        for k in std::mem::take(&mut self.unsaved_keys) {
            if let Some(h) = self.held.get_mut(&k) {
                h.unsaved = false;
                if !h.in_flight {
                    h.in_flight = true;
                    self.in_flight_keys.push(k);
                }
            }
        }
        if let Some(na) = &self.null_aware
            && (full || self.regime_unsaved)
        {
            let mut w = StateWriter::default();
            w.i64(na.right.rows);
            w.i64(na.right.null_rows);
            sink.put(b"regime", &w.finish());
            self.regime_unsaved = false;
        }
        Ok(())
    }

    fn checkpoint_durable(&mut self) {
        self.freed.durable();
        for k in std::mem::take(&mut self.in_flight_keys) {
            if let Some(h) = self.held.get_mut(&k) {
                h.in_flight = false;
            }
        }
    }

    fn attach(&mut self, lookup: Box<dyn StateLookup>) {
        // NOT IN keeps everything: a change of the right side's regime looks at every row.
        if self.null_aware.is_none() {
            self.lookup = Some(lookup);
        }
    }

    fn evicts(&self) -> bool {
        self.lookup.is_some()
    }

    fn state_bytes(&self) -> usize {
        self.sides[LEFT].bytes()
            + self.sides[RIGHT].bytes()
            + self.held.len() * HELD_KEY_BYTES
            + self
                .null_aware
                .as_ref()
                .map_or(0, |na| na.left_nulls.bytes())
    }

    /// Evicts join keys unchanged since the last durable checkpoint, least recently changed
    /// first: both sides' rows of a key go together.
    fn evict(&mut self, target: usize) {
        if self.lookup.is_none() || self.state_bytes() <= target {
            return;
        }
        let mut candidates: Vec<(u32, Box<[u8]>, u64)> = self
            .held
            .iter()
            .filter(|(_, h)| !(h.unsaved || h.in_flight))
            .map(|(k, h)| (self.tick.wrapping_sub(h.last_used), k.clone(), h.hash))
            .collect();
        candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        for (_, key, hash) in candidates {
            if self.state_bytes() <= target {
                break;
            }
            self.sides[LEFT].remove_key(hash, &key);
            self.sides[RIGHT].remove_key(hash, &key);
            self.held.remove(&key);
            self.complete = false;
        }
    }

    fn restore(&mut self, source: &dyn StateSource) -> Result<()> {
        if self.lookup.is_some() {
            // Keys are read back as batches reach them.
            self.complete = false;
            return Ok(());
        }
        let corrupt = || crate::err!(sqlstate::DATA_CORRUPTED, "join state is unreadable");
        // Per arrangement: (join key, row, count).
        type Stored = Vec<(Vec<u8>, Vec<u8>, i64)>;
        let mut stored: [Stored; 3] = Default::default();
        source.counts(&mut |key, n| {
            let [side, k, row] = key_parts::<3>(key)?;
            let side = *side.first().ok_or_else(corrupt)? as usize;
            stored
                .get_mut(side)
                .ok_or_else(corrupt)?
                .push((k.to_vec(), row.to_vec(), n));
            Ok(())
        })?;
        for (side, rows) in stored.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            if side == LEFT_NULLS {
                let na = self.null_aware.as_mut().ok_or_else(corrupt)?;
                for (_, row, n) in rows {
                    na.left_nulls.update(0, &[], &row, n, 0)?;
                }
                continue;
            }
            let keys: Vec<&[u8]> = rows.iter().map(|(k, _, _)| k.as_slice()).collect();
            let hashes = self.key_hashes(&keys)?;
            for ((k, row, n), hash) in rows.iter().zip(hashes) {
                self.sides[side].update(hash, k, row, *n, 0)?;
            }
        }
        if let Some(na) = self.null_aware.as_mut() {
            let mut regime = None;
            source.values(&mut |_, v| {
                let mut r = StateReader::new(v);
                regime = Some(Regime {
                    rows: r.i64()?,
                    null_rows: r.i64()?,
                });
                Ok(())
            })?;
            na.right = regime.ok_or_else(corrupt)?;
            self.regime_unsaved = false;
        }
        for side in [LEFT, RIGHT] {
            if self.tracks(side) {
                self.restore_matches(side, None)?;
            }
        }
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.sides[LEFT].live_rows()
            + self.sides[RIGHT].live_rows()
            + self
                .null_aware
                .as_ref()
                .map_or(0, |na| na.left_nulls.live_rows())
    }
}
