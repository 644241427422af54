//! [`TopK`]: `ORDER BY … LIMIT k [OFFSET n]` in a view, and `ROW_NUMBER()` / `RANK()` /
//! `DENSE_RANK() OVER (PARTITION BY … ORDER BY …)` filtered with `<= k`.
//!
//! Contract:
//! - insert (+w) / delete (−w) of a row: the row is added to / removed from its partition's
//!   ordered multiset; the partition is marked dirty; nothing is emitted yet;
//! - barrier: for each dirty partition the rows now in the top positions (with their rank, in
//!   the ranked form) are compared with those emitted last: rows that left are retracted, rows
//!   that entered are emitted. A row whose rank changed is retracted and re-emitted with the
//!   new rank. Ties are broken by the whole row, so the result is deterministic;
//! - state: every row of every partition (a delete can bring any row into the top), ordered by
//!   the sort key in Arrow's row format, plus the rows emitted last per partition. Checkpoints
//!   store the rows as counted rows keyed (partition, sort key, row) so that a partition's rows
//!   are one key range in sort order, adding the changes since the previous checkpoint; what was
//!   emitted last is the top of those rows, so it is recomputed on restore;
//! - watermarks: a partition whose key is below the watermark of a partition-by column (a
//!   window that has closed) can no longer change; it is freed at the barrier, here and in
//!   the store, and its emitted rows stay;
//! - memory: once attached to the store (views' dataflows), a partition unchanged since the last
//!   durable checkpoint can be trimmed to the rows near its top (the rest stays in the store, and
//!   changes past the rows in memory are kept as deltas) or evicted whole. When the rows in
//!   memory no longer fill the top, the next ones are read from the store in order, merged with
//!   the deltas; an evicted partition is read back when a change reaches it, and a restart reads
//!   none up front.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;

use crate::dataflow::spec::{RankKind, TopKSpec};
use crate::dataflow::state::{CountLog, FreedPrefixes, StateLookup};
use crate::dataflow::watermark::{Watermarks, below_any};
use crate::dataflow::{Operator, StateSink, StateSource};
use crate::error::{Result, sqlstate};
use crate::types::{Epoch, ZBatch};

/// A row's sort key and the row itself, both in Arrow's row format.
type KeyedRow = (Box<[u8]>, Box<[u8]>);
/// Rows on top of a partition, with their rank (0 when the output has no rank column).
type Ranked = Vec<(Box<[u8]>, u64)>;

/// Which of a partition's rows are in memory.
#[derive(Clone, PartialEq)]
enum Held {
    /// All of them.
    All,
    /// Those up to and including this one (none: `None`); the others are in the store.
    UpTo(Option<KeyedRow>),
}

impl Held {
    /// Whether `key` is past the rows in memory.
    fn past(&self, key: &KeyedRow) -> bool {
        match self {
            Held::All => false,
            Held::UpTo(None) => true,
            Held::UpTo(Some(last)) => key > last,
        }
    }
}

struct Partition {
    /// (sort key, row) → multiplicity, of the rows in memory (see `held`).
    rows: BTreeMap<KeyedRow, i64>,
    held: Held,
    /// Changes to rows past `held` since the last durable checkpoint: those collected into the
    /// checkpoint in flight, and those since.
    beyond_in_flight: BTreeMap<KeyedRow, i64>,
    beyond: BTreeMap<KeyedRow, i64>,
    /// Rows emitted last, with their rank (0 when the output has no rank column).
    emitted: Vec<(Box<[u8]>, u64)>,
    /// Changed since the last checkpoint was collected; changed in the one in flight.
    unsaved: bool,
    in_flight: bool,
    /// The barrier at which it last changed.
    last_used: u32,
    /// Approximate bytes in memory.
    bytes: usize,
}

impl Partition {
    fn new(held: Held) -> Partition {
        Partition {
            rows: BTreeMap::new(),
            held,
            beyond_in_flight: BTreeMap::new(),
            beyond: BTreeMap::new(),
            emitted: Vec::new(),
            unsaved: false,
            in_flight: false,
            last_used: 0,
            bytes: PARTITION_OVERHEAD,
        }
    }
}

/// Bytes of a partition besides its rows: the map, flags and its key in the partition table.
const PARTITION_OVERHEAD: usize = 128;
/// Bytes of a row in a partition's map besides its sort key and row.
const ENTRY_OVERHEAD: usize = 64;

/// Adds `w` to `key`'s count in `map` (removing it at 0); returns the change in bytes.
fn add_to(map: &mut BTreeMap<KeyedRow, i64>, key: KeyedRow, w: i64) -> isize {
    let size = (key.0.len() + key.1.len() + ENTRY_OVERHEAD) as isize;
    match map.entry(key) {
        Entry::Occupied(mut o) => {
            *o.get_mut() += w;
            if *o.get() == 0 {
                o.remove();
                return -size;
            }
            0
        }
        Entry::Vacant(v) => {
            v.insert(w);
            size
        }
    }
}

/// Bytes of the rows a partition emitted last.
fn emitted_bytes(emitted: &[(Box<[u8]>, u64)]) -> usize {
    emitted.iter().map(|(r, _)| r.len() + 24).sum()
}

/// A row's state key: the partition key (length-prefixed), the sort key, the row, then the sort
/// key's length (u32 big-endian). Arrow's row format is order-preserving and no encoded value
/// is a prefix of another, so a partition's keys are one range, in (sort key, row) order.
fn write_key(out: &mut Vec<u8>, pkey: &[u8], sort_key: &[u8], row: &[u8]) {
    out.extend_from_slice(&(pkey.len() as u32).to_be_bytes());
    out.extend_from_slice(pkey);
    out.extend_from_slice(sort_key);
    out.extend_from_slice(row);
    out.extend_from_slice(&(sort_key.len() as u32).to_be_bytes());
}

/// The key prefix of partition `pkey`'s rows.
/// Stored rows a barrier reads at most while a pass over the store is in progress.
const STORE_SWEEP_BATCH: usize = 4096;

fn partition_prefix(pkey: &[u8]) -> Vec<u8> {
    let mut out = (pkey.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(pkey);
    out
}

/// Splits a key written by [`write_key`] into partition key, sort key and row.
fn split_key(key: &[u8]) -> Result<(&[u8], &[u8], &[u8])> {
    let corrupt = || crate::err!(sqlstate::DATA_CORRUPTED, "a stored top-k key is malformed");
    let u32_at = |b: Option<&[u8]>| -> Result<usize> {
        b.and_then(|b| b.try_into().ok())
            .map(|b| u32::from_be_bytes(b) as usize)
            .ok_or_else(corrupt)
    };
    let plen = u32_at(key.get(..4))?;
    let pkey = key.get(4..4 + plen).ok_or_else(corrupt)?;
    let rest = &key[4 + plen..];
    let tail = rest.len().checked_sub(4).ok_or_else(corrupt)?;
    let slen = u32_at(rest.get(tail..))?;
    let sort_key = rest.get(..slen).ok_or_else(corrupt)?;
    let row = rest.get(slen..tail).ok_or_else(corrupt)?;
    Ok((pkey, sort_key, row))
}

/// A partition column and the bound the store sweep frees below.
type PartitionBound = (usize, ScalarValue);

pub struct TopK {
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    partition_converter: Option<RowConverter>,
    order_by: Vec<Arc<dyn PhysicalExpr>>,
    sort_converter: RowConverter,
    row_converter: RowConverter,
    offset: usize,
    limit: Option<usize>,
    rank: Option<RankKind>,
    partitions: HashMap<Box<[u8]>, Partition>,
    dirty: HashSet<Box<[u8]>>,
    schema: SchemaRef,
    rows: usize,
    /// Row changes since the last checkpoint.
    unsaved: CountLog,
    /// Reads rows back from the store (set by `attach`); without it every row stays in memory.
    lookup: Option<Box<dyn StateLookup>>,
    /// Every partition is in memory: one not found is new, no need to ask the store.
    complete: bool,
    /// Partitions changed since the last checkpoint was collected, and in the one in flight
    /// (only while attached).
    unsaved_partitions: Vec<Box<[u8]>>,
    in_flight_partitions: Vec<Box<[u8]>>,
    tick: u32,
    bytes: usize,
    /// Per partition-by expression that is a watermarked column: its watermark.
    partition_bounds: Vec<(usize, ScalarValue)>,
    /// `partition_bounds` changed since the last sweep.
    bounds_moved: bool,
    /// The pass over the stored partitions in progress (see `sweep_store`): the last stored
    /// key read and the bounds it frees below; and the bounds the last pass began with.
    store_sweep: Option<(Option<Vec<u8>>, Vec<PartitionBound>)>,
    store_swept_at: Vec<(usize, ScalarValue)>,
    /// Stored prefixes of partitions freed behind the watermark.
    freed: FreedPrefixes,
}

impl TopK {
    pub fn new(spec: &TopKSpec, input: &SchemaRef, schema: SchemaRef) -> Result<Self> {
        let partition_converter = if spec.partition_by.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                spec.partition_by
                    .iter()
                    .map(|e| Ok(SortField::new(e.data_type(input)?)))
                    .collect::<Result<Vec<_>>>()?,
            )?)
        };
        let (order_by, sort_fields): (Vec<_>, Vec<_>) = if spec.order_by.is_empty() {
            // LIMIT without ORDER BY: any k rows will do; take the first by every column.
            input
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    (
                        Arc::new(datafusion::physical_expr::expressions::Column::new(
                            f.name(),
                            i,
                        )) as Arc<dyn PhysicalExpr>,
                        SortField::new(f.data_type().clone()),
                    )
                })
                .unzip()
        } else {
            spec.order_by
                .iter()
                .map(|s| {
                    Ok((
                        s.expr.clone(),
                        SortField::new_with_options(s.expr.data_type(input)?, s.options),
                    ))
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip()
        };
        Ok(TopK {
            partition_by: spec.partition_by.clone(),
            partition_converter,
            order_by,
            sort_converter: RowConverter::new(sort_fields)?,
            row_converter: crate::types::row_converter(input)?,
            offset: spec.offset,
            limit: spec.limit,
            rank: spec.rank,
            partitions: HashMap::new(),
            dirty: HashSet::new(),
            schema,
            rows: 0,
            unsaved: CountLog::default(),
            lookup: None,
            complete: true,
            unsaved_partitions: Vec::new(),
            in_flight_partitions: Vec::new(),
            tick: 0,
            bytes: 0,
            partition_bounds: Vec::new(),
            bounds_moved: false,
            store_sweep: None,
            store_swept_at: Vec::new(),
            freed: FreedPrefixes::default(),
        })
    }

    /// Frees the partitions whose key is below a partition-by watermark.
    fn free_closed_partitions(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.bounds_moved) || self.partitions.is_empty() {
            return Ok(());
        }
        let Some(converter) = &self.partition_converter else {
            return Ok(());
        };
        let pkeys: Vec<Box<[u8]>> = self.partitions.keys().cloned().collect();
        let parser = converter.parser();
        let columns = converter.convert_rows(pkeys.iter().map(|k| parser.parse(k)))?;
        let closed = below_any(&columns, self.partition_bounds.iter().map(|(i, w)| (*i, w)))?;
        for (pkey, _) in pkeys.into_iter().zip(closed).filter(|(_, c)| *c) {
            if let Some(p) = self.partitions.remove(&pkey) {
                let rows: i64 = p.rows.values().sum::<i64>() + p.beyond.values().sum::<i64>();
                self.rows = self.rows.saturating_sub(rows.max(0) as usize);
                self.bytes = self.bytes.saturating_sub(p.bytes);
                self.dirty.remove(&pkey);
                self.freed.push(partition_prefix(&pkey));
            }
        }
        Ok(())
    }

    /// Partitions evicted to the store (or left there by a restart) before they fell behind
    /// the watermark are not in memory for `free_closed_partitions` to find. When the bounds
    /// have moved since the last pass, a pass over the stored rows — at most
    /// [`STORE_SWEEP_BATCH`] a barrier — frees the closed partitions not in memory (cleared from
    /// the store at the next checkpoint; no row can come to them again).
    fn sweep_store(&mut self) -> Result<()> {
        let (Some(lookup), Some(converter)) = (&self.lookup, &self.partition_converter) else {
            return Ok(());
        };
        if self.store_sweep.is_none() {
            if self.partition_bounds.is_empty() || self.partition_bounds == self.store_swept_at {
                return Ok(());
            }
            self.store_swept_at = self.partition_bounds.clone();
            self.store_sweep = Some((None, self.partition_bounds.clone()));
        }
        let Some((after, bounds)) = &mut self.store_sweep else {
            return Ok(());
        };
        let stored = lookup.counts_after(&[], after.as_deref(), STORE_SWEEP_BATCH)?;
        let mut pkeys: Vec<&[u8]> = Vec::new();
        for (key, _) in &stored {
            let (pkey, _, _) = split_key(key)?;
            if pkeys.last() != Some(&pkey) && !self.partitions.contains_key(pkey) {
                pkeys.push(pkey);
            }
        }
        pkeys.dedup();
        let closed = if pkeys.is_empty() {
            Vec::new()
        } else {
            let parser = converter.parser();
            let columns = converter.convert_rows(pkeys.iter().map(|k| parser.parse(k)))?;
            below_any(&columns, bounds.iter().map(|(i, w)| (*i, w)))?
        };
        let freed: Vec<Vec<u8>> = pkeys
            .iter()
            .zip(closed)
            .filter(|(_, c)| *c)
            .map(|(k, _)| partition_prefix(k))
            .collect();
        *after = match stored.last() {
            Some((last, _)) if stored.len() == STORE_SWEEP_BATCH => Some(last.clone()),
            _ => None,
        };
        if after.is_none() {
            self.store_sweep = None;
        }
        for prefix in freed {
            self.freed.push(prefix);
        }
        Ok(())
    }

    /// Rows read from the store at a time when a partition's rows in memory run out.
    fn refill_rows(&self) -> usize {
        let need = self.offset.saturating_add(self.limit.unwrap_or(0));
        need.saturating_mul(2).clamp(64, 4096)
    }

    /// Reads partition `pkey` back from the store (it was evicted, or stored before a
    /// restart): what it emitted last is the top of its stored rows.
    fn fault_in(&mut self, pkey: &[u8]) -> Result<()> {
        let mut partition = Partition::new(Held::UpTo(None));
        partition.last_used = self.tick;
        self.bytes += partition.bytes;
        self.partitions.insert(pkey.into(), partition);
        let top = self.filled_top(pkey)?;
        if let Some(p) = self.partitions.get_mut(pkey) {
            let size = emitted_bytes(&top);
            p.bytes += size;
            self.bytes += size;
            p.emitted = top;
        }
        Ok(())
    }

    /// The top of partition `pkey`, reading more of its rows from the store while those in
    /// memory run out before the top is complete.
    fn filled_top(&mut self, pkey: &[u8]) -> Result<Vec<(Box<[u8]>, u64)>> {
        loop {
            let p = self
                .partitions
                .get(pkey)
                .ok_or_else(|| crate::internal!("top-k partition vanished"))?;
            let (top, ran_out) = self.top(p);
            if !ran_out || p.held == Held::All {
                return Ok(top);
            }
            self.refill(pkey)?;
        }
    }

    /// Reads the next rows of partition `pkey` past those in memory from the store (as of the
    /// last durable checkpoint) and applies the deltas recorded for them since.
    fn refill(&mut self, pkey: &[u8]) -> Result<()> {
        let limit = self.refill_rows();
        let lookup = self
            .lookup
            .as_ref()
            .ok_or_else(|| crate::internal!("top-k rows left the store unattached"))?;
        let p = self
            .partitions
            .get_mut(pkey)
            .ok_or_else(|| crate::internal!("top-k partition vanished"))?;
        let prefix = partition_prefix(pkey);
        let after = match &p.held {
            Held::All => return Ok(()),
            Held::UpTo(None) => None,
            Held::UpTo(Some((sort_key, row))) => {
                let mut key = Vec::new();
                write_key(&mut key, pkey, sort_key, row);
                Some(key)
            }
        };
        let stored = lookup.counts_after(&prefix, after.as_deref(), limit)?;
        let exhausted = stored.len() < limit;
        let mut bytes = 0isize;
        let mut last = None;
        for (key, n) in &stored {
            let (_, sort_key, row) = split_key(key)?;
            let keyed: KeyedRow = (sort_key.into(), row.into());
            last = Some(keyed.clone());
            bytes += add_to(&mut p.rows, keyed, *n);
        }
        p.held = if exhausted {
            Held::All
        } else {
            Held::UpTo(last)
        };
        // The deltas of rows now in memory join their counts.
        for map in [&mut p.beyond_in_flight, &mut p.beyond] {
            let now_held = match &p.held {
                Held::All => std::mem::take(map),
                Held::UpTo(Some(last)) => {
                    let mut rest = map.split_off(last);
                    if let Some(n) = rest.remove(last) {
                        map.insert(last.clone(), n);
                    }
                    std::mem::replace(map, rest)
                }
                Held::UpTo(None) => BTreeMap::new(),
            };
            for (key, w) in now_held {
                bytes -= (key.0.len() + key.1.len() + ENTRY_OVERHEAD) as isize;
                bytes += add_to(&mut p.rows, key, w);
            }
        }
        p.bytes = (p.bytes as isize + bytes) as usize;
        self.bytes = (self.bytes as isize + bytes) as usize;
        Ok(())
    }

    /// Every row of partition `pkey` now, with its count: those in memory, then the stored ones
    /// past them with their deltas (a full checkpoint's rewrite).
    fn all_rows(&self, pkey: &[u8], p: &Partition) -> Result<Vec<(KeyedRow, i64)>> {
        let mut out: Vec<(KeyedRow, i64)> = p.rows.iter().map(|(k, n)| (k.clone(), *n)).collect();
        if p.held == Held::All {
            return Ok(out);
        }
        let mut tail: BTreeMap<KeyedRow, i64> = BTreeMap::new();
        if let Some(lookup) = &self.lookup {
            let prefix = partition_prefix(pkey);
            let mut after = match &p.held {
                Held::UpTo(Some((sort_key, row))) => {
                    let mut key = Vec::new();
                    write_key(&mut key, pkey, sort_key, row);
                    Some(key)
                }
                _ => None,
            };
            loop {
                let stored = lookup.counts_after(&prefix, after.as_deref(), 4096)?;
                for (key, n) in &stored {
                    let (_, sort_key, row) = split_key(key)?;
                    add_to(&mut tail, (sort_key.into(), row.into()), *n);
                }
                match stored.last() {
                    Some((key, _)) if stored.len() == 4096 => after = Some(key.clone()),
                    _ => break,
                }
            }
        }
        for map in [&p.beyond_in_flight, &p.beyond] {
            for (key, w) in map {
                add_to(&mut tail, key.clone(), *w);
            }
        }
        out.extend(tail.into_iter().filter(|(_, n)| *n > 0));
        Ok(out)
    }

    /// Whether partition `p` may shrink: unchanged since the last durable checkpoint.
    fn clean(&self, pkey: &[u8], p: &Partition) -> bool {
        !(p.unsaved || p.in_flight || self.dirty.contains(pkey))
    }

    /// The rows in the top positions of a partition, with their rank, and whether the rows in
    /// memory ran out before the top was complete.
    fn top(&self, p: &Partition) -> (Ranked, bool) {
        let mut out = Vec::new();
        let limit = self.limit.unwrap_or(usize::MAX);
        let mut position = 0usize; // rows before this one (copies counted)
        let mut rank = 0u64;
        let mut dense = 0u64;
        let mut prev_key: Option<&[u8]> = None;
        for ((key, row), n) in &p.rows {
            let n = (*n).max(0) as usize;
            if n == 0 {
                continue;
            }
            let new_key = prev_key != Some(key.as_ref());
            if new_key {
                rank = position as u64 + 1;
                dense += 1;
                prev_key = Some(key);
            }
            match self.rank {
                None => {
                    for _ in 0..n {
                        if position >= self.offset.saturating_add(limit) {
                            return (out, false);
                        }
                        if position >= self.offset {
                            out.push((row.clone(), 0));
                        }
                        position += 1;
                    }
                }
                Some(RankKind::RowNumber) => {
                    for _ in 0..n {
                        if position >= limit {
                            return (out, false);
                        }
                        position += 1;
                        out.push((row.clone(), position as u64));
                    }
                }
                Some(kind) => {
                    let r = if kind == RankKind::Rank { rank } else { dense };
                    if r as usize > limit {
                        return (out, false);
                    }
                    for _ in 0..n {
                        out.push((row.clone(), r));
                    }
                    position += n;
                }
            }
        }
        (out, true)
    }

    fn output(&self, rows: &[(Box<[u8]>, u64)], weight: i64) -> Result<ZBatch> {
        let parser = self.row_converter.parser();
        let mut columns: Vec<ArrayRef> = self
            .row_converter
            .convert_rows(rows.iter().map(|(r, _)| parser.parse(r)))?;
        if self.rank.is_some() {
            let ranks: ArrayRef =
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|(_, r)| *r)));
            let target = self.schema.field(columns.len()).data_type();
            columns.push(if ranks.data_type() == target {
                ranks
            } else {
                cast(&ranks, target)?
            });
        }
        let data = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?;
        Ok(ZBatch::uniform(data, weight))
    }
}

impl Operator for TopK {
    fn on_batch(&mut self, _port: usize, batch: ZBatch, _out: &mut Vec<ZBatch>) -> Result<()> {
        // Inserts and deletes alike: update the partition's multiset; emit at the barrier.
        let data = &batch.data;
        let n = data.num_rows();
        let eval = |exprs: &[Arc<dyn PhysicalExpr>]| {
            exprs
                .iter()
                .map(|e| Ok(e.evaluate(data)?.into_array(n)?))
                .collect::<Result<Vec<ArrayRef>>>()
        };
        let partitions = match &self.partition_converter {
            Some(c) => Some(c.convert_columns(&eval(&self.partition_by)?)?),
            None => None,
        };
        let keys = self
            .sort_converter
            .convert_columns(&eval(&self.order_by)?)?;
        let rows = self.row_converter.convert_columns(data.columns())?;
        let attached = self.lookup.is_some();
        for (i, w) in batch.weights.values().iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let pkey: &[u8] = partitions.as_ref().map_or(&[], |p| p.row(i).data());
            if !self.partitions.contains_key(pkey) {
                if self.complete {
                    let p = Partition::new(Held::All);
                    self.bytes += p.bytes;
                    self.partitions.insert(pkey.into(), p);
                } else {
                    self.fault_in(pkey)?;
                }
            }
            if !self.dirty.contains(pkey) {
                self.dirty.insert(pkey.into());
            }
            let (sort_key, row) = (keys.row(i).data(), rows.row(i).data());
            self.unsaved
                .push_with(|out| write_key(out, pkey, sort_key, row), *w);
            let partition = self
                .partitions
                .get_mut(pkey)
                .ok_or_else(|| crate::internal!("top-k partition vanished"))?;
            if attached && !partition.unsaved {
                partition.unsaved = true;
                self.unsaved_partitions.push(pkey.into());
            }
            let key: KeyedRow = (sort_key.into(), row.into());
            let map = if partition.held.past(&key) {
                &mut partition.beyond
            } else {
                &mut partition.rows
            };
            let bytes = add_to(map, key, *w);
            partition.bytes = (partition.bytes as isize + bytes) as usize;
            self.bytes = (self.bytes as isize + bytes) as usize;
            self.rows = (self.rows as i64 + w).max(0) as usize;
        }
        Ok(())
    }

    fn on_barrier(&mut self, _epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()> {
        let mut removed: Vec<(Box<[u8]>, u64)> = Vec::new();
        let mut added: Vec<(Box<[u8]>, u64)> = Vec::new();
        self.tick = self.tick.wrapping_add(1);
        for pkey in std::mem::take(&mut self.dirty) {
            if !self.partitions.contains_key(&pkey) {
                continue;
            }
            let new = self.filled_top(&pkey)?;
            let partition = self
                .partitions
                .get_mut(&pkey)
                .ok_or_else(|| crate::internal!("top-k partition vanished"))?;
            // Multiset difference between what was emitted and what is now on top.
            let mut diff: HashMap<(&[u8], u64), i64> = HashMap::new();
            for (row, rank) in &partition.emitted {
                *diff.entry((row, *rank)).or_insert(0) -= 1;
            }
            for (row, rank) in &new {
                *diff.entry((row, *rank)).or_insert(0) += 1;
            }
            for ((row, rank), d) in diff {
                let list = if d < 0 { &mut removed } else { &mut added };
                for _ in 0..d.unsigned_abs() {
                    list.push((row.into(), rank));
                }
            }
            let (old, now) = (emitted_bytes(&partition.emitted), emitted_bytes(&new));
            partition.bytes = partition.bytes + now - old;
            self.bytes = self.bytes + now - old;
            partition.emitted = new;
            partition.last_used = self.tick;
            // An empty partition goes, unless the store may still hold its rows (attached:
            // it stays until its changes are durable and it is evicted).
            if self.lookup.is_none() && partition.rows.is_empty() && partition.emitted.is_empty() {
                self.bytes -= partition.bytes;
                self.partitions.remove(&pkey);
            }
        }
        if !removed.is_empty() {
            out.push(self.output(&removed, -1)?);
        }
        if !added.is_empty() {
            out.push(self.output(&added, 1)?);
        }
        self.free_closed_partitions()?;
        self.sweep_store()
    }

    fn on_watermarks(&mut self, inputs: &[&Watermarks], _output: &Watermarks) {
        let Some(input) = inputs.first() else {
            return;
        };
        let bounds: Vec<(usize, ScalarValue)> = self
            .partition_by
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let c = e
                    .downcast_ref::<datafusion::physical_expr::expressions::Column>()?
                    .index();
                input.get(c).cloned().flatten().map(|w| (i, w))
            })
            .collect();
        if bounds != self.partition_bounds {
            self.partition_bounds = bounds;
            self.bounds_moved = true;
        }
    }

    fn state_rows(&self) -> usize {
        self.rows
    }

    /// Counted rows: (partition key, sort key, row), see [`write_key`].
    fn checkpoint(&mut self, full: bool, sink: &mut dyn StateSink) -> Result<()> {
        let mut key = Vec::new();
        if full && self.lookup.is_none() {
            // Over a cleared part: freed partitions are simply not written.
            self.freed.clear();
            self.unsaved.clear();
            for (pkey, partition) in &self.partitions {
                for ((sort_key, row), n) in &partition.rows {
                    key.clear();
                    write_key(&mut key, pkey, sort_key, row);
                    sink.add(&key, *n);
                }
            }
            return Ok(());
        }
        if full {
            // The checkpoint in flight may be lost: every partition changed since the last
            // durable one is cleared and written whole.
            self.unsaved.clear();
            let mut changed = std::mem::take(&mut self.in_flight_partitions);
            changed.append(&mut self.unsaved_partitions);
            changed.sort_unstable();
            changed.dedup();
            for pkey in &changed {
                let Some(p) = self.partitions.get(pkey) else {
                    continue;
                };
                sink.clear_prefix(&partition_prefix(pkey));
                // Rewritten whole: its changes since the last durable checkpoint are all in
                // this one (see below).
                for ((sort_key, row), n) in self.all_rows(pkey, p)? {
                    key.clear();
                    write_key(&mut key, pkey, &sort_key, &row);
                    sink.add(&key, n);
                }
            }
            for pkey in &changed {
                if let Some(p) = self.partitions.get_mut(pkey) {
                    p.in_flight = false;
                    p.unsaved = true;
                }
            }
            self.unsaved_partitions = changed;
        } else {
            self.unsaved.drain_into(sink);
        }
        // Partitions freed behind the watermark, after the adds that may have stored rows.
        self.freed.write(full, self.lookup.is_some(), sink);
        for pkey in std::mem::take(&mut self.unsaved_partitions) {
            let Some(p) = self.partitions.get_mut(&pkey) else {
                continue;
            };
            p.unsaved = false;
            if !p.in_flight {
                p.in_flight = true;
                self.in_flight_partitions.push(pkey);
            }
            let mut bytes = 0isize;
            for (key, w) in std::mem::take(&mut p.beyond) {
                bytes -= (key.0.len() + key.1.len() + ENTRY_OVERHEAD) as isize;
                bytes += add_to(&mut p.beyond_in_flight, key, w);
            }
            p.bytes = (p.bytes as isize + bytes) as usize;
            self.bytes = (self.bytes as isize + bytes) as usize;
        }
        Ok(())
    }

    fn checkpoint_durable(&mut self) {
        self.freed.durable();
        for pkey in std::mem::take(&mut self.in_flight_partitions) {
            if let Some(p) = self.partitions.get_mut(&pkey) {
                p.in_flight = false;
                for (key, _) in std::mem::take(&mut p.beyond_in_flight) {
                    let size = key.0.len() + key.1.len() + ENTRY_OVERHEAD;
                    p.bytes -= size;
                    self.bytes -= size;
                }
            }
        }
    }

    fn restore(&mut self, source: &dyn StateSource) -> Result<()> {
        if self.lookup.is_some() {
            // Partitions are read back as changes reach them.
            self.complete = false;
            return Ok(());
        }
        source.counts(&mut |key, n| {
            let (pkey, sort_key, row) = split_key(key)?;
            if !self.partitions.contains_key(pkey) {
                self.partitions
                    .insert(pkey.into(), Partition::new(Held::All));
            }
            if let Some(p) = self.partitions.get_mut(pkey) {
                let bytes = add_to(&mut p.rows, (sort_key.into(), row.into()), n);
                p.bytes = (p.bytes as isize + bytes) as usize;
            }
            self.rows += n as usize;
            Ok(())
        })?;
        // What was emitted last is what is on top now.
        let tops: Vec<_> = self.partitions.values().map(|p| self.top(p).0).collect();
        for (p, top) in self.partitions.values_mut().zip(tops) {
            p.bytes += emitted_bytes(&top);
            p.emitted = top;
        }
        self.bytes = self.partitions.values().map(|p| p.bytes).sum();
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

    /// First trims every clean partition to the rows near its top (nothing lost: they are read
    /// back in order if the top shrinks), then evicts whole clean partitions, least recently
    /// changed first.
    fn evict(&mut self, target: usize) {
        if self.lookup.is_none() || self.bytes <= target {
            return;
        }
        if let Some(limit) = self.limit {
            let keep = self.offset.saturating_add(limit).saturating_mul(2).max(4);
            let clean: Vec<Box<[u8]>> = self
                .partitions
                .iter()
                .filter(|(k, p)| self.clean(k, p) && p.rows.len() > keep)
                .map(|(k, _)| k.clone())
                .collect();
            for pkey in clean {
                let Some(p) = self.partitions.get_mut(&pkey) else {
                    continue;
                };
                let Some(first_dropped) = p.rows.keys().nth(keep).cloned() else {
                    continue;
                };
                let dropped = p.rows.split_off(&first_dropped);
                let size: usize = dropped
                    .keys()
                    .map(|k| k.0.len() + k.1.len() + ENTRY_OVERHEAD)
                    .sum();
                p.held = Held::UpTo(p.rows.keys().next_back().cloned());
                p.bytes -= size;
                self.bytes -= size;
            }
        }
        if self.bytes <= target {
            return;
        }
        let mut candidates: Vec<(u32, Box<[u8]>)> = self
            .partitions
            .iter()
            .filter(|(k, p)| self.clean(k, p))
            .map(|(k, p)| (self.tick.wrapping_sub(p.last_used), k.clone()))
            .collect();
        // Oldest (largest age) first.
        candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        for (_, pkey) in candidates {
            if self.bytes <= target {
                break;
            }
            if let Some(p) = self.partitions.remove(&pkey) {
                self.bytes -= p.bytes;
                self.complete = false;
            }
        }
    }
}
