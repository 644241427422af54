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
//!   store the rows as counted rows (key: partition, sort key, row), adding the changes since
//!   the previous checkpoint; what was emitted last is the top of those rows, so it is
//!   recomputed on restore.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use crate::dataflow::spec::{RankKind, TopKSpec};
use crate::dataflow::state::{CountLog, append_key, key_parts};
use crate::dataflow::{Operator, StateSink, StateSource};
use crate::error::Result;
use crate::types::{Epoch, ZBatch};

/// A row's sort key and the row itself, both in Arrow's row format.
type KeyedRow = (Box<[u8]>, Box<[u8]>);

#[derive(Default)]
struct Partition {
    /// (sort key, row) → multiplicity.
    rows: BTreeMap<KeyedRow, i64>,
    /// Rows emitted last, with their rank (0 when the output has no rank column).
    emitted: Vec<(Box<[u8]>, u64)>,
}

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
        })
    }

    /// The rows in the top positions of a partition, with their rank.
    fn top(&self, p: &Partition) -> Vec<(Box<[u8]>, u64)> {
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
                            return out;
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
                            return out;
                        }
                        position += 1;
                        out.push((row.clone(), position as u64));
                    }
                }
                Some(kind) => {
                    let r = if kind == RankKind::Rank { rank } else { dense };
                    if r as usize > limit {
                        return out;
                    }
                    for _ in 0..n {
                        out.push((row.clone(), r));
                    }
                    position += n;
                }
            }
        }
        out
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
        for (i, w) in batch.weights.values().iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let pkey: &[u8] = partitions.as_ref().map_or(&[], |p| p.row(i).data());
            if !self.dirty.contains(pkey) {
                self.dirty.insert(pkey.into());
            }
            let partition = match self.partitions.get_mut(pkey) {
                Some(p) => p,
                None => self.partitions.entry(pkey.into()).or_default(),
            };
            self.unsaved
                .push(&[pkey, keys.row(i).data(), rows.row(i).data()], *w);
            let key = (
                Box::<[u8]>::from(keys.row(i).data()),
                Box::<[u8]>::from(rows.row(i).data()),
            );
            match partition.rows.entry(key) {
                Entry::Occupied(mut o) => {
                    *o.get_mut() += w;
                    if *o.get() == 0 {
                        o.remove();
                    }
                }
                Entry::Vacant(v) => {
                    v.insert(*w);
                }
            }
            self.rows = (self.rows as i64 + w).max(0) as usize;
        }
        Ok(())
    }

    fn on_barrier(&mut self, _epoch: Epoch, out: &mut Vec<ZBatch>) -> Result<()> {
        let mut removed: Vec<(Box<[u8]>, u64)> = Vec::new();
        let mut added: Vec<(Box<[u8]>, u64)> = Vec::new();
        for pkey in std::mem::take(&mut self.dirty) {
            let Some(partition) = self.partitions.get(&pkey) else {
                continue;
            };
            let new = self.top(partition);
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
            let partition = self
                .partitions
                .get_mut(&pkey)
                .ok_or_else(|| crate::internal!("top-k partition vanished"))?;
            partition.emitted = new;
            if partition.rows.is_empty() && partition.emitted.is_empty() {
                self.partitions.remove(&pkey);
            }
        }
        if !removed.is_empty() {
            out.push(self.output(&removed, -1)?);
        }
        if !added.is_empty() {
            out.push(self.output(&added, 1)?);
        }
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.rows
    }

    /// Counted rows: (partition key, sort key, row).
    fn checkpoint(&mut self, full: bool, sink: &mut dyn StateSink) -> Result<()> {
        if !full {
            self.unsaved.drain_into(sink);
            return Ok(());
        }
        self.unsaved.clear();
        let mut key = Vec::new();
        for (pkey, partition) in &self.partitions {
            for ((sort_key, row), n) in &partition.rows {
                key.clear();
                append_key(&mut key, &[pkey, sort_key, row]);
                sink.add(&key, *n);
            }
        }
        Ok(())
    }

    fn restore(&mut self, source: &dyn StateSource) -> Result<()> {
        source.counts(&mut |key, n| {
            let [pkey, sort_key, row] = key_parts::<3>(key)?;
            let partition = match self.partitions.get_mut(pkey) {
                Some(p) => p,
                None => self.partitions.entry(pkey.into()).or_default(),
            };
            partition.rows.insert((sort_key.into(), row.into()), n);
            self.rows += n as usize;
            Ok(())
        })?;
        // What was emitted last is what is on top now.
        let tops: Vec<_> = self.partitions.values().map(|p| self.top(p)).collect();
        for (p, top) in self.partitions.values_mut().zip(tops) {
            p.emitted = top;
        }
        Ok(())
    }
}
