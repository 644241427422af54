//! [`TableStore`]: the contents of one versioned collection — a table, or a materialized view's
//! output — in memory, as Arrow chunks.
//!
//! Changes arrive as [`ZBatch`]es (from a commit or from log replay) and are applied by content:
//! a +1 row is appended, a -1 row removes one live row with equal values (found through a hash
//! index on the primary key, or on all columns for tables without one). Applying is two-phase —
//! [`TableStore::plan`] checks everything (duplicate keys, rows to delete exist) without changing
//! anything, [`TableStore::commit`] then cannot fail — so a transaction touching several tables
//! is all-or-nothing.
//!
//! Visibility by version. Each chunk remembers the version that inserted it and each row the
//! version that deleted it. Tables are versioned by LSN; view outputs by epoch (the epoch number
//! is stored as an [`Lsn`]). Writers see the latest state (including commits still waiting for their fsync);
//! readers ask for a snapshot at the durable LSN and so never see a row that a crash could take
//! back.
//!
//! State kept: chunks (Arrow batches), per-row delete LSNs, the key index. Small chunks (single-
//! row INSERTs) are merged once durable; rows deleted before the durable LSN are dropped then.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, DynComparator, RecordBatch, UInt32Array, make_comparator,
};
use datafusion::arrow::compute::{SortOptions, filter_record_batch, interleave_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::hash_utils::{RandomState, create_hashes};

use std::sync::Arc;

use super::state::StoreSnapshot;
use crate::error::{Error, Result, sqlstate};
use crate::types::{Lsn, ObjectId, ZBatch};

/// Chunks smaller than this are merged together once durable.
const SMALL_CHUNK_ROWS: usize = 4096;
/// Merge when this many small durable chunks have piled up.
const MERGE_THRESHOLD: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RowRef {
    chunk: u32,
    row: u32,
}

/// Keys of the index are already hashes.
#[derive(Default)]
struct IdentityHasher(u64);
impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("IdentityHasher only hashes u64")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}
type KeyIndex = HashMap<u64, Vec<RowRef>, BuildHasherDefault<IdentityHasher>>;

struct Chunk {
    batch: RecordBatch,
    inserted: Lsn,
    /// Per row: the LSN that deleted it, `Lsn::MAX` while live. Empty while no row is deleted.
    deleted: Vec<Lsn>,
    live: usize,
}

impl Chunk {
    fn is_live(&self, row: usize) -> bool {
        self.deleted.is_empty() || self.deleted[row] == Lsn::MAX
    }

    /// The memory it holds: its arrays and deletion marks.
    fn bytes(&self) -> usize {
        self.batch.get_array_memory_size() + self.deleted.capacity() * size_of::<Lsn>()
    }
}

/// Which rows a read sees.
#[derive(Debug, Clone, Copy)]
pub enum Snapshot {
    /// Everything committed, durable or not (writers).
    Latest,
    /// What was durable at this LSN (readers).
    At(Lsn),
}

/// A validated change, ready to [`TableStore::commit`].
pub struct Plan {
    deletes: Vec<RowRef>,
    /// Rows of the base to delete: their stored keys.
    base_deletes: Vec<Vec<u8>>,
    inserts: Option<RecordBatch>,
    insert_hashes: Vec<u64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.deletes.is_empty() && self.base_deletes.is_empty() && self.inserts.is_none()
    }
}

/// Where the older rows of a table with a primary key or an APPEND ONLY table (or of a view
/// whose contents only grow) live: in the state store, as of a durable checkpoint (read through
/// its snapshot), instead of in memory.
pub struct Spill {
    /// The part holding the rows, as counted rows ([`super::state::part_prefix`]).
    pub prefix: [u8; super::state::PREFIX_LEN],
    pub codec: Arc<TableCodec>,
    /// For a source's table whose rows its connector can make again: the first `n` rows of
    /// the table, in the order they were written. The state store then holds only the row
    /// count ([`TableCodec::counts_only`]), and reads of the stored part make the rows anew.
    pub generated: Option<GeneratedRows>,
}

/// The first `n` rows of a table, made anew by its source's connector.
pub type GeneratedRows = Arc<dyn Fn(usize) -> Result<Vec<RecordBatch>> + Send + Sync>;

/// The rows a spilling table had at checkpoint `lsn`, read from `snapshot` (`rows` of them).
pub struct TableBase {
    pub snapshot: Arc<StoreSnapshot>,
    pub lsn: Lsn,
    pub rows: usize,
}

pub struct TableStore {
    name: String,
    /// Set for tables whose rows move to the state store once checkpointed: APPEND ONLY tables
    /// and tables with a primary key (each stored row is then alone with its key, so a deleted
    /// one is named by its stored key).
    spill: Option<Spill>,
    /// The rows up to `base.lsn`, in the state store; every chunk is inserted after it.
    base: Option<TableBase>,
    /// Rows of the base deleted since `base.lsn`: their stored keys and the deleting LSNs.
    tombstones: HashMap<Vec<u8>, Lsn>,
    schema: SchemaRef,
    /// Columns of the index: the primary key, or every column when there is none.
    key_columns: Vec<usize>,
    key_names: Vec<String>,
    unique: bool,
    chunks: Vec<Option<Chunk>>,
    free_slots: Vec<u32>,
    /// Maintained for tables with a primary key; built on the first delete otherwise.
    index: Option<KeyIndex>,
    random_state: RandomState,
    live_rows: usize,
    /// The sum of the chunks' [`Chunk::bytes`].
    chunk_bytes: usize,
    /// The LSN of the last commit that deleted rows: the index holds live rows only, so a
    /// lookup below it could miss a row deleted since.
    last_delete: Lsn,
}

/// Compares rows of a probe with live rows of a table on some of its columns, building the
/// comparators of each chunk met once.
struct RowMatcher {
    /// The probe's columns, compared with table columns `columns` in order.
    probe: Vec<ArrayRef>,
    columns: Vec<usize>,
    comparators: HashMap<u32, Vec<DynComparator>>,
}

impl RowMatcher {
    fn new(probe: Vec<ArrayRef>, columns: Vec<usize>) -> RowMatcher {
        RowMatcher {
            probe,
            columns,
            comparators: HashMap::new(),
        }
    }

    /// For a probe with the table's schema, on table columns `columns`.
    fn on_columns(batch: &RecordBatch, columns: Vec<usize>) -> RowMatcher {
        let probe = columns.iter().map(|c| batch.column(*c).clone()).collect();
        RowMatcher::new(probe, columns)
    }

    /// Whether probe row `row` equals live row `at` of `table` on the columns.
    fn matches(&mut self, table: &TableStore, row: usize, at: RowRef) -> Result<bool> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.comparators.entry(at.chunk) {
            let chunk = table.chunks[at.chunk as usize]
                .as_ref()
                .ok_or_else(|| crate::internal!("index points at a freed chunk"))?;
            let comparators = self
                .probe
                .iter()
                .zip(&self.columns)
                .map(|(probe, c)| {
                    make_comparator(
                        probe.as_ref(),
                        chunk.batch.column(*c).as_ref(),
                        SortOptions::default(),
                    )
                    .map_err(Error::from)
                })
                .collect::<Result<Vec<_>>>()?;
            e.insert(comparators);
        }
        Ok(self.comparators[&at.chunk]
            .iter()
            .all(|cmp| cmp(row, at.row as usize) == Ordering::Equal))
    }
}

impl TableStore {
    /// A new empty collection. With a non-empty `primary_key` (column indices) keys are unique;
    /// without one it is a multiset.
    pub fn new(name: &str, schema: SchemaRef, primary_key: &[usize]) -> TableStore {
        let unique = !primary_key.is_empty();
        let key_columns: Vec<usize> = if unique {
            primary_key.to_vec()
        } else {
            (0..schema.fields().len()).collect()
        };
        TableStore {
            name: name.to_string(),
            spill: None,
            base: None,
            tombstones: HashMap::new(),
            key_names: key_columns
                .iter()
                .map(|i| schema.field(*i).name().clone())
                .collect(),
            schema,
            key_columns,
            unique,
            chunks: Vec::new(),
            free_slots: Vec::new(),
            index: if unique {
                Some(KeyIndex::default())
            } else {
                None
            },
            random_state: RandomState::with_seed(0),
            live_rows: 0,
            chunk_bytes: 0,
            last_delete: Lsn::ZERO,
        }
    }

    /// The same, for a table whose checkpointed rows move to the state store (see
    /// [`TableStore::rebase`]), starting from `base` (read at start-up, instead of loading the
    /// rows). It must be APPEND ONLY or have a primary key.
    pub fn spilling(
        name: &str,
        schema: SchemaRef,
        primary_key: &[usize],
        spill: Spill,
        base: Option<TableBase>,
    ) -> TableStore {
        let mut store = TableStore::new(name, schema, primary_key);
        store.spill = Some(spill);
        store.base = base;
        store
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn live_rows(&self) -> usize {
        self.live_rows + self.base.as_ref().map_or(0, |b| b.rows) - self.tombstones.len()
    }

    /// Whether checkpointed rows leave memory for the state store.
    pub fn spills(&self) -> bool {
        self.spill.is_some()
    }

    /// Rows held in memory (not in the state store).
    pub fn rows_in_memory(&self) -> usize {
        self.live_rows
    }

    /// Approximate bytes held in memory: the rows' arrays (deleted rows included until their
    /// chunk is merged or freed), the key index and the tombstones.
    pub fn bytes_in_memory(&self) -> usize {
        // A key: its hash, its list of rows and that list's first allocation (4 refs).
        let per_key = size_of::<u64>() + size_of::<Vec<RowRef>>() + 4 * size_of::<RowRef>();
        let index = self.index.as_ref().map_or(0, |i| i.capacity() * per_key);
        let tombstones = self.tombstones.capacity() * (size_of::<Vec<u8>>() + size_of::<Lsn>());
        self.chunk_bytes + index + tombstones
    }

    /// Whether the base row with stored key `key` is deleted as of `snapshot`.
    fn tombstoned(&self, key: &[u8], snapshot: Snapshot) -> bool {
        self.tombstones.get(key).is_some_and(|lsn| match snapshot {
            Snapshot::Latest => true,
            Snapshot::At(at) => *lsn <= at,
        })
    }

    /// Moves the rows inserted at or below `lsn` to the state store: `snapshot` is the store as
    /// of the durable checkpoint at `lsn`, which holds them. Those of its rows deleted after
    /// `lsn` become tombstones; tombstones at or below `lsn` go (the checkpoint has their
    /// deletes). The caller makes sure no reader uses a snapshot below `lsn` (it is at or below
    /// the read horizon). A no-op for tables that do not spill.
    pub fn rebase(&mut self, snapshot: Arc<StoreSnapshot>, lsn: Lsn) -> Result<()> {
        let Some(spill) = &self.spill else {
            return Ok(());
        };
        if self.base.as_ref().is_some_and(|b| b.lsn >= lsn) {
            return Ok(());
        }
        // Rows the checkpoint holds that are deleted since: (deleting LSN, stored key).
        let mut deleted_since = Vec::new();
        // Rows of the moving chunks the checkpoint holds, and those alive now.
        let (mut stored, mut live) = (0, 0);
        for slot in 0..self.chunks.len() {
            let Some(chunk) = self.chunks[slot].take_if(|c| c.inserted <= lsn) else {
                continue;
            };
            self.chunk_bytes -= chunk.bytes();
            self.free_slots.push(slot as u32);
            live += chunk.live;
            let later: Vec<u32> = (0..chunk.deleted.len())
                .filter(|r| chunk.deleted[*r] != Lsn::MAX && chunk.deleted[*r] > lsn)
                .map(|r| r as u32)
                .collect();
            stored += chunk.live + later.len();
            if !later.is_empty() {
                let rows = datafusion::arrow::compute::take_record_batch(
                    &chunk.batch,
                    &UInt32Array::from(later.clone()),
                )?;
                let keys = spill.codec.encode(&rows)?;
                for (i, r) in later.iter().enumerate() {
                    deleted_since.push((chunk.deleted[*r as usize], keys.row(i).data().to_vec()));
                }
            }
        }
        self.live_rows -= live;
        let covered = self.tombstones.len();
        self.tombstones.retain(|_, deleted| *deleted > lsn);
        let covered = covered - self.tombstones.len();
        for (deleted, key) in deleted_since {
            self.tombstones.insert(key, deleted);
        }
        let rows = self.base.as_ref().map_or(0, |b| b.rows) - covered + stored;
        self.base = Some(TableBase {
            snapshot,
            lsn,
            rows,
        });
        self.index = None;
        if self.unique {
            self.ensure_index()?;
        }
        Ok(())
    }

    /// Number of Arrow chunks holding the rows (small ones are merged over time).
    pub fn chunk_count(&self) -> usize {
        self.chunks.iter().flatten().count()
    }

    /// The table's rows as of `snapshot`.
    pub fn scan(&self, snapshot: Snapshot) -> Result<Vec<RecordBatch>> {
        self.scan_within(snapshot, None, None)
    }

    /// At least the rows visible at `snapshot` whose first primary-key column is at least
    /// `low` and below `high` (or at most `high`, when `high_inclusive`), each bound a one-row
    /// array of the column's type; open where `None`. The stored rows are read from that key
    /// range only (rows are stored in key order); the rows in memory (the changes since the
    /// last checkpoint) are all returned, for the caller's filter. `None` for a table that
    /// does not keep rows in the store by primary key: the caller scans.
    pub fn scan_key_range(
        &self,
        snapshot: Snapshot,
        low: Option<&ArrayRef>,
        high: Option<(&ArrayRef, bool)>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let Some(spill) = self
            .spill
            .as_ref()
            .filter(|s| self.base.is_some() && s.generated.is_none())
        else {
            return Ok(None);
        };
        let encode = |bound: &ArrayRef| spill.codec.encode_first_key(bound);
        let low = match low {
            Some(low) => match encode(low)? {
                Some(low) => Some(low),
                None => return Ok(None),
            },
            None => None,
        };
        let high = match high {
            Some((high, inclusive)) => match encode(high)? {
                // Every stored key starting with the bound's encoding has that first column.
                Some(high) if inclusive => Some(super::state::range_end(&high)),
                Some(high) => Some(high),
                None => return Ok(None),
            },
            None => None,
        };
        self.scan_within(snapshot, low.as_deref(), high.as_deref())
            .map(Some)
    }

    /// [`TableStore::scan`], reading the stored rows from `low` up to `high` (stored keys).
    fn scan_within(
        &self,
        snapshot: Snapshot,
        low: Option<&[u8]>,
        high: Option<&[u8]>,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        if let (Some(base), Some(spill)) = (&self.base, &self.spill) {
            if let Snapshot::At(lsn) = snapshot
                && lsn < base.lsn
            {
                return Err(crate::internal!(
                    "table \"{}\" read at LSN {lsn}, below its stored rows' LSN {}",
                    self.name,
                    base.lsn
                ));
            }
            let stored = if let Some(generate) = &spill.generated {
                // Rows are only ever appended to a source's table: no tombstones.
                out.extend(generate(base.rows)?);
                Vec::new()
            } else {
                spill.codec.decode(|f| {
                    base.snapshot
                        .scan_counts_between(&spill.prefix, low, high, &mut |key, n| {
                            if self.tombstoned(key, snapshot) {
                                Ok(())
                            } else {
                                f(key, n)
                            }
                        })
                })?
            };
            for rows in stored {
                if rows.weights.values().iter().all(|w| *w == 1) {
                    out.push(rows.data);
                } else {
                    out.push(rows.expand_positive()?);
                }
            }
        }
        for chunk in self.chunks.iter().flatten() {
            let visible_insert = match snapshot {
                Snapshot::Latest => true,
                Snapshot::At(lsn) => chunk.inserted <= lsn,
            };
            if !visible_insert {
                continue;
            }
            let any_deleted = match snapshot {
                Snapshot::Latest => chunk.live < chunk.batch.num_rows(),
                Snapshot::At(lsn) => chunk.deleted.iter().any(|d| *d <= lsn),
            };
            if !any_deleted {
                out.push(chunk.batch.clone());
                continue;
            }
            let mask: BooleanArray = chunk
                .deleted
                .iter()
                .map(|d| {
                    Some(match snapshot {
                        Snapshot::Latest => *d == Lsn::MAX,
                        Snapshot::At(lsn) => *d > lsn,
                    })
                })
                .collect();
            let filtered = filter_record_batch(&chunk.batch, &mask)?;
            if filtered.num_rows() > 0 {
                out.push(filtered);
            }
        }
        Ok(out)
    }

    fn hashes(&self, batch: &RecordBatch) -> Result<Vec<u64>> {
        let arrays: Vec<&ArrayRef> = self.key_columns.iter().map(|i| batch.column(*i)).collect();
        let mut hashes = vec![0u64; batch.num_rows()];
        create_hashes(arrays, &self.random_state, &mut hashes)?;
        Ok(hashes)
    }

    /// The rows visible at `snapshot` whose primary key is one of `keys` (one array per
    /// primary-key column, in the key's order, of the columns' types), found through the key
    /// index and, for a table with stored rows, by seeking the keys in the store. `None` when
    /// that cannot be done and a scan is needed: a table without a primary key, or a snapshot
    /// older than the last delete (the index holds only the latest live rows).
    pub fn lookup(
        &self,
        keys: &[ArrayRef],
        snapshot: Snapshot,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let Some(index) = self.index.as_ref().filter(|_| self.unique) else {
            return Ok(None);
        };
        if keys.len() != self.key_columns.len() {
            return Ok(None);
        }
        if let Snapshot::At(lsn) = snapshot
            && lsn < self.last_delete
        {
            return Ok(None);
        }
        let mut out = Vec::new();
        if let (Some(base), Some(spill)) = (&self.base, &self.spill) {
            if let Snapshot::At(lsn) = snapshot
                && lsn < base.lsn
            {
                return Ok(None);
            }
            if let Some(encoded) = spill.codec.encode_key_columns(keys)? {
                let mut starts: Vec<&[u8]> = (0..encoded.num_rows())
                    .map(|i| encoded.row(i).data())
                    .collect();
                starts.sort();
                starts.dedup();
                let found = base.snapshot.counts_with_starts(&spill.prefix, &starts)?;
                let stored = spill.codec.decode(|f| {
                    for (key, n) in found.iter().flatten() {
                        if !self.tombstoned(key, snapshot) {
                            f(key, *n)?;
                        }
                    }
                    Ok(())
                })?;
                for rows in stored {
                    out.push(rows.expand_positive()?);
                }
            }
        }
        let mut hashes = vec![0u64; keys[0].len()];
        create_hashes(keys, &self.random_state, &mut hashes)?;
        let mut matcher = RowMatcher::new(keys.to_vec(), self.key_columns.clone());
        let mut take: Vec<(usize, usize)> = Vec::new();
        let mut sources: HashMap<u32, usize> = HashMap::new();
        let mut batches: Vec<&RecordBatch> = Vec::new();
        let mut seen: HashSet<RowRef> = HashSet::new();
        for (row, h) in hashes.iter().enumerate() {
            for at in index.get(h).into_iter().flatten() {
                let chunk = self.chunks[at.chunk as usize]
                    .as_ref()
                    .ok_or_else(|| crate::internal!("index points at a freed chunk"))?;
                if let Snapshot::At(lsn) = snapshot
                    && chunk.inserted > lsn
                {
                    continue;
                }
                let equal = matcher.matches(self, row, *at)?;
                if equal && seen.insert(*at) {
                    let source = *sources.entry(at.chunk).or_insert_with(|| {
                        batches.push(&chunk.batch);
                        batches.len() - 1
                    });
                    take.push((source, at.row as usize));
                }
            }
        }
        if !take.is_empty() {
            out.push(interleave_record_batch(&batches, &take)?);
        }
        Ok(Some(out))
    }

    fn ensure_index(&mut self) -> Result<()> {
        if self.index.is_some() {
            return Ok(());
        }
        let mut index = KeyIndex::default();
        for (slot, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            let hashes = self.hashes(&chunk.batch)?;
            for (row, h) in hashes.into_iter().enumerate() {
                if chunk.is_live(row) {
                    index.entry(h).or_default().push(RowRef {
                        chunk: slot as u32,
                        row: row as u32,
                    });
                }
            }
        }
        self.index = Some(index);
        Ok(())
    }

    fn key_text(&self, batch: &RecordBatch, row: usize) -> String {
        self.key_columns
            .iter()
            .map(|c| array_value_to_string(batch.column(*c), row).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn duplicate_key(&self, batch: &RecordBatch, row: usize) -> Error {
        crate::err!(
            sqlstate::UNIQUE_VIOLATION,
            "duplicate key value violates unique constraint \"{}_pkey\"",
            self.name
        )
        .with_detail(format!(
            "Key ({})=({}) already exists.",
            self.key_names.join(", "),
            self.key_text(batch, row)
        ))
    }

    /// For each row of `rows` (full table rows), how many live rows (latest state) have the same
    /// key. Only meaningful for tables with a primary key.
    pub fn count_keys(&self, rows: &RecordBatch) -> Result<Vec<usize>> {
        let Some(index) = self.index.as_ref().filter(|_| self.unique) else {
            return Ok(vec![0; rows.num_rows()]);
        };
        let stored = self.stored_keys(rows, &[])?;
        let hashes = self.hashes(rows)?;
        let mut matcher = RowMatcher::on_columns(rows, self.key_columns.clone());
        let mut out = Vec::with_capacity(rows.num_rows());
        for (row, h) in hashes.iter().enumerate() {
            let mut n = 0;
            for at in index.get(h).into_iter().flatten() {
                if matcher.matches(self, row, *at)? {
                    n += 1;
                }
            }
            out.push(n + stored.get(row).copied().unwrap_or(0));
        }
        Ok(out)
    }

    /// For each row of `rows`, how many rows with its primary key the state store holds and
    /// are not deleted (none for tables without a base), leaving out `deleting` (stored keys).
    /// One iterator seeks each key's start, in key order.
    fn stored_keys(&self, rows: &RecordBatch, deleting: &[Vec<u8>]) -> Result<Vec<usize>> {
        let (Some(base), Some(spill)) = (&self.base, &self.spill) else {
            return Ok(Vec::new());
        };
        let Some(keys) = spill.codec.encode_keys(rows)? else {
            return Ok(Vec::new());
        };
        let mut order: Vec<usize> = (0..rows.num_rows()).collect();
        order.sort_by(|a, b| keys.row(*a).cmp(&keys.row(*b)));
        let starts: Vec<&[u8]> = order.iter().map(|i| keys.row(*i).data()).collect();
        let found = base.snapshot.counts_with_starts(&spill.prefix, &starts)?;
        let mut out = vec![0; rows.num_rows()];
        for (i, rows) in order.into_iter().zip(found) {
            out[i] = rows
                .iter()
                .filter(|(key, _)| {
                    !self.tombstoned(key, Snapshot::Latest) && !deleting.contains(key)
                })
                .map(|(_, n)| *n as usize)
                .sum();
        }
        Ok(out)
    }

    /// The stored keys of rows `wanted` of `batch` (repeats allowed), each a distinct row of
    /// the base not deleted yet; 40001 if one is not there (a concurrent write deleted it).
    fn base_rows(&self, batch: &RecordBatch, wanted: &[u32]) -> Result<Vec<Vec<u8>>> {
        let missing = || {
            crate::err!(
                sqlstate::SERIALIZATION_FAILURE,
                "could not serialize access due to concurrent update of table \"{}\"",
                self.name
            )
        };
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let (Some(base), Some(spill)) = (&self.base, &self.spill) else {
            return Err(missing());
        };
        let rows = datafusion::arrow::compute::take_record_batch(
            batch,
            &UInt32Array::from(wanted.to_vec()),
        )?;
        let encoded = spill.codec.encode(&rows)?;
        let mut keys: Vec<&[u8]> = (0..encoded.num_rows())
            .map(|i| encoded.row(i).data())
            .collect();
        keys.sort();
        let mut starts = keys.clone();
        starts.dedup();
        let found = base.snapshot.counts_with_starts(&spill.prefix, &starts)?;
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
        for (start, rows) in starts.iter().zip(found) {
            // The row itself (a longer key starting with it would be another row's encoding,
            // which the row format rules out, but compare whole keys anyway).
            let stored: i64 = rows
                .iter()
                .filter(|(key, _)| key.as_slice() == *start)
                .map(|(_, n)| *n)
                .sum();
            // A stored key is one row (the table has a primary key): it is deleted once.
            let wanted = keys.iter().filter(|k| *k == start).count();
            if wanted > 1 || stored < 1 || self.tombstoned(start, Snapshot::Latest) {
                return Err(missing());
            }
            out.push(start.to_vec());
        }
        Ok(out)
    }

    /// Checks `change` against the latest state and returns what [`TableStore::commit`] will
    /// do. Deletes are matched first, so an update of a key to itself passes. Fails with 23505
    /// for a duplicate key and 40001 when a row to delete is no longer there (a concurrent
    /// write got there first).
    pub fn plan(&mut self, change: &ZBatch) -> Result<Plan> {
        self.plan_checking(change, true)
    }

    /// The same for a change that was checked when it was logged (replay at start-up): primary
    /// keys are not looked up among the rows in the state store, a seek per row.
    pub fn plan_replay(&mut self, change: &ZBatch) -> Result<Plan> {
        self.plan_checking(change, false)
    }

    fn plan_checking(&mut self, change: &ZBatch, check_stored: bool) -> Result<Plan> {
        let batch = &change.data;
        let weights = change.weights.values();
        let has_deletes = weights.iter().any(|w| *w < 0);
        if has_deletes {
            self.ensure_index()?;
        }
        let hashes = if has_deletes || self.unique {
            self.hashes(batch)?
        } else {
            Vec::new()
        };
        let mut rows = RowMatcher::on_columns(batch, (0..batch.num_columns()).collect());
        let mut keys = RowMatcher::on_columns(batch, self.key_columns.clone());

        // Deletes: find a distinct live row for each -1, in memory or else in the base. The
        // whole row must match, not just its key: a row a concurrent commit updated since the
        // change read it is gone (40001), as a stored row is (its stored key is the whole row),
        // rather than its newer version being overwritten.
        let mut deletes = Vec::new();
        let mut deleting: HashSet<RowRef> = HashSet::new();
        let mut not_in_memory = Vec::new();
        for (row, w) in weights.iter().enumerate() {
            for _ in 0..(-*w).max(0) {
                let candidates = self.index.as_ref().and_then(|ix| ix.get(&hashes[row]));
                let mut found = None;
                for at in candidates.into_iter().flatten() {
                    if !deleting.contains(at) && rows.matches(self, row, *at)? {
                        found = Some(*at);
                        break;
                    }
                }
                match found {
                    Some(at) => {
                        deleting.insert(at);
                        deletes.push(at);
                    }
                    None => not_in_memory.push(row as u32),
                }
            }
        }
        let base_deletes = self.base_rows(batch, &not_in_memory)?;

        // Inserts: each +w row, w times; keys must be new (or freed by a delete above).
        let mut take: Vec<(usize, usize)> = Vec::new();
        let mut insert_hashes = Vec::new();
        let mut pending: HashMap<u64, Vec<usize>> = HashMap::new();
        for (row, w) in weights.iter().enumerate() {
            for _ in 0..(*w).max(0) {
                if self.unique {
                    let h = hashes[row];
                    if let Some(candidates) = self.index.as_ref().and_then(|ix| ix.get(&h)) {
                        for at in candidates {
                            if !deleting.contains(at) && keys.matches(self, row, *at)? {
                                return Err(self.duplicate_key(batch, row));
                            }
                        }
                    }
                    if let Some(earlier) = pending.get(&h) {
                        for other in earlier {
                            let same = self.key_columns.iter().all(|c| {
                                let col = batch.column(*c);
                                make_comparator(col.as_ref(), col.as_ref(), SortOptions::default())
                                    .map(|cmp| cmp(*other, row) == Ordering::Equal)
                                    .unwrap_or(false)
                            });
                            if same {
                                return Err(self.duplicate_key(batch, row));
                            }
                        }
                    }
                    pending.entry(h).or_default().push(row);
                }
                take.push((0, row));
                if !hashes.is_empty() {
                    insert_hashes.push(hashes[row]);
                }
            }
        }
        let inserts = if take.is_empty() {
            None
        } else if take.len() == batch.num_rows() && take.iter().enumerate().all(|(i, t)| t.1 == i) {
            Some(batch.clone())
        } else {
            Some(interleave_record_batch(&[batch], &take)?)
        };
        if self.unique
            && check_stored
            && let Some(inserted) = &inserts
            && let Some(row) = self
                .stored_keys(inserted, &base_deletes)?
                .iter()
                .position(|n| *n > 0)
        {
            return Err(self.duplicate_key(inserted, row));
        }
        if self.index.is_some() && inserts.is_some() && insert_hashes.is_empty() {
            let inserted = inserts.as_ref().map(|b| self.hashes(b)).transpose()?;
            insert_hashes = inserted.unwrap_or_default();
        }
        Ok(Plan {
            deletes,
            base_deletes,
            inserts,
            insert_hashes,
        })
    }

    /// Applies a plan made by [`TableStore::plan`] with no change in between. Small chunks at
    /// or below `horizon` (the oldest snapshot any reader may use) may then be merged.
    pub fn commit(&mut self, plan: Plan, lsn: Lsn, horizon: Lsn) -> Result<()> {
        if !plan.deletes.is_empty() || !plan.base_deletes.is_empty() {
            self.last_delete = lsn;
        }
        for key in plan.base_deletes {
            self.tombstones.insert(key, lsn);
        }
        for at in &plan.deletes {
            let chunk = self.chunks[at.chunk as usize]
                .as_mut()
                .ok_or_else(|| crate::internal!("delete in a freed chunk"))?;
            if chunk.deleted.is_empty() {
                chunk.deleted = vec![Lsn::MAX; chunk.batch.num_rows()];
                self.chunk_bytes += chunk.deleted.capacity() * size_of::<Lsn>();
            }
            chunk.deleted[at.row as usize] = lsn;
            chunk.live -= 1;
            self.live_rows -= 1;
        }
        if self.index.is_some() {
            // Remove deleted refs from their hash slots.
            let mut by_slot: HashMap<u32, Vec<u32>> = HashMap::new();
            for at in &plan.deletes {
                by_slot.entry(at.chunk).or_default().push(at.row);
            }
            for (slot, rows) in by_slot {
                self.unindex(slot, &rows)?;
            }
        }
        if let Some(batch) = plan.inserts {
            self.add_chunk(batch, lsn, &plan.insert_hashes);
        }
        self.maybe_merge(horizon)
    }

    /// Stores `batch` as a new chunk inserted at `lsn`; `hashes` are its rows' key hashes
    /// (for the index, when there is one).
    fn add_chunk(&mut self, batch: RecordBatch, lsn: Lsn, hashes: &[u64]) {
        let rows = batch.num_rows();
        let slot = self.alloc_slot(Chunk {
            batch,
            inserted: lsn,
            deleted: Vec::new(),
            live: rows,
        });
        if let Some(index) = self.index.as_mut() {
            for (row, h) in hashes.iter().enumerate() {
                index.entry(*h).or_default().push(RowRef {
                    chunk: slot,
                    row: row as u32,
                });
            }
        }
        self.live_rows += rows;
    }

    /// Adds rows read back from a checkpoint, each `weight` times, at version `lsn`: they are
    /// a valid collection by construction, so no key is checked (start-up speed).
    pub fn load(&mut self, rows: &ZBatch, lsn: Lsn) -> Result<()> {
        let weights = rows.weights.values();
        let batch = if weights.iter().all(|w| *w == 1) {
            rows.data.clone()
        } else {
            let take: Vec<(usize, usize)> = weights
                .iter()
                .enumerate()
                .flat_map(|(i, w)| std::iter::repeat_n((0, i), (*w).max(0) as usize))
                .collect();
            interleave_record_batch(&[&rows.data], &take)?
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let hashes = if self.index.is_some() {
            self.hashes(&batch)?
        } else {
            Vec::new()
        };
        self.add_chunk(batch, lsn, &hashes);
        Ok(())
    }

    /// Undoes every commit after `lsn` (their log records failed to be written): chunks
    /// inserted after it go, rows deleted after it are live again. Such chunks are never
    /// merged (merging stops at the read horizon, at or below the durable LSN).
    pub fn rollback_after(&mut self, lsn: Lsn) -> Result<()> {
        self.tombstones.retain(|_, deleted| *deleted <= lsn);
        for slot in 0..self.chunks.len() {
            let Some(chunk) = self.chunks[slot].as_ref().filter(|c| c.inserted > lsn) else {
                continue;
            };
            let live: Vec<u32> = (0..chunk.batch.num_rows())
                .filter(|r| chunk.is_live(*r))
                .map(|r| r as u32)
                .collect();
            self.unindex(slot as u32, &live)?;
            self.live_rows -= live.len();
            if let Some(chunk) = self.chunks[slot].take() {
                self.free_slot(slot as u32, &chunk);
            }
        }
        for slot in 0..self.chunks.len() {
            let Some(chunk) = self.chunks[slot].as_mut() else {
                continue;
            };
            let mut revived = Vec::new();
            for (row, deleted) in chunk.deleted.iter_mut().enumerate() {
                if *deleted != Lsn::MAX && *deleted > lsn {
                    *deleted = Lsn::MAX;
                    revived.push(row as u32);
                }
            }
            chunk.live += revived.len();
            self.live_rows += revived.len();
            if !revived.is_empty() && self.index.is_some() {
                let rows = datafusion::arrow::compute::take_record_batch(
                    &chunk.batch,
                    &UInt32Array::from(revived.clone()),
                )?;
                let hashes = self.hashes(&rows)?;
                if let Some(index) = self.index.as_mut() {
                    for (row, h) in revived.iter().zip(hashes) {
                        index.entry(h).or_default().push(RowRef {
                            chunk: slot as u32,
                            row: *row,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes rows `rows` of chunk `slot` from the key index.
    fn unindex(&mut self, slot: u32, rows: &[u32]) -> Result<()> {
        if self.index.is_none() || rows.is_empty() {
            return Ok(());
        }
        let chunk = self.chunks[slot as usize]
            .as_ref()
            .ok_or_else(|| crate::internal!("unindexing a freed chunk"))?;
        let subset = datafusion::arrow::compute::take_record_batch(
            &chunk.batch,
            &UInt32Array::from(rows.to_vec()),
        )?;
        let hashes = self.hashes(&subset)?;
        if let Some(index) = self.index.as_mut() {
            for (row, h) in rows.iter().zip(hashes) {
                if let Some(refs) = index.get_mut(&h) {
                    refs.retain(|r| !(r.chunk == slot && r.row == *row));
                    if refs.is_empty() {
                        index.remove(&h);
                    }
                }
            }
        }
        Ok(())
    }

    /// Slot `slot`, which held `chunk`, is free.
    fn free_slot(&mut self, slot: u32, chunk: &Chunk) {
        self.chunk_bytes -= chunk.bytes();
        self.free_slots.push(slot);
    }

    fn alloc_slot(&mut self, chunk: Chunk) -> u32 {
        self.chunk_bytes += chunk.bytes();
        match self.free_slots.pop() {
            Some(slot) => {
                self.chunks[slot as usize] = Some(chunk);
                slot
            }
            None => {
                self.chunks.push(Some(chunk));
                (self.chunks.len() - 1) as u32
            }
        }
    }

    /// Merges small chunks inserted at or below `horizon` into one, dropping rows deleted at or
    /// below it: no reader can tell the difference, since every snapshot in use is at or above
    /// the horizon. Keeps single-row INSERTs from leaving millions of one-row batches behind.
    fn maybe_merge(&mut self, horizon: Lsn) -> Result<()> {
        // A spilling table's chunks leave memory at the next checkpoint (a merged chunk could
        // straddle its LSN).
        if self.spill.is_some() {
            return Ok(());
        }
        let mergeable = |c: &Chunk| {
            c.inserted <= horizon
                && c.batch.num_rows() < SMALL_CHUNK_ROWS
                && c.deleted.iter().all(|d| *d == Lsn::MAX || *d <= horizon)
        };
        let slots: Vec<u32> = self
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(mergeable))
            .map(|(i, _)| i as u32)
            .collect();
        if slots.len() < MERGE_THRESHOLD {
            return Ok(());
        }
        let mut batches = Vec::with_capacity(slots.len());
        let mut take = Vec::new();
        let mut moved = Vec::new();
        let mut inserted = Lsn::ZERO;
        for (b, slot) in slots.iter().enumerate() {
            let Some(chunk) = self.chunks[*slot as usize].take() else {
                continue;
            };
            self.free_slot(*slot, &chunk);
            inserted = inserted.max(chunk.inserted);
            for row in 0..chunk.batch.num_rows() {
                if chunk.is_live(row) {
                    take.push((b, row));
                    moved.push(RowRef {
                        chunk: *slot,
                        row: row as u32,
                    });
                }
            }
            batches.push(chunk.batch);
        }
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let merged = interleave_record_batch(&refs, &take)?;
        let hashes = if self.index.is_some() {
            self.hashes(&merged)?
        } else {
            Vec::new()
        };
        let rows = merged.num_rows();
        let new_slot = self.alloc_slot(Chunk {
            batch: merged,
            inserted,
            deleted: Vec::new(),
            live: rows,
        });
        if let Some(index) = self.index.as_mut() {
            // Rewrite each reference exactly once: the new slot may reuse a merged slot's number,
            // so rewriting one old reference at a time could catch a reference already rewritten.
            let remap: HashMap<RowRef, RowRef> = moved
                .iter()
                .enumerate()
                .map(|(row, old)| {
                    (
                        *old,
                        RowRef {
                            chunk: new_slot,
                            row: row as u32,
                        },
                    )
                })
                .collect();
            let buckets: HashSet<u64> = hashes.iter().copied().collect();
            for h in buckets {
                if let Some(refs) = index.get_mut(&h) {
                    for r in refs.iter_mut() {
                        if let Some(new) = remap.get(r) {
                            *r = *new;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// How a table's rows are kept in the state store: as counted rows (see
/// [`crate::storage::state`]) keyed by Arrow's row format of the columns, primary key columns
/// first, so that a key's prefix is the row's primary key.
pub struct TableCodec {
    converter: datafusion::arrow::row::RowConverter,
    /// Of the primary key columns alone (`None` without a primary key): their encoding is the
    /// start of a stored row's key.
    key_converter: Option<datafusion::arrow::row::RowConverter>,
    /// Of the first primary-key column alone, for key ranges.
    first_key_converter: Option<datafusion::arrow::row::RowConverter>,
    primary_key: Vec<usize>,
    /// Stored column i is table column `order[i]`.
    order: Vec<usize>,
    stored: SchemaRef,
    schema: SchemaRef,
    /// Checkpoints store the table's row count only (see [`Spill::generated`]).
    counts_only: bool,
}

impl TableCodec {
    pub fn new(schema: SchemaRef, primary_key: &[usize]) -> Result<TableCodec> {
        let mut order = primary_key.to_vec();
        order.extend((0..schema.fields().len()).filter(|i| !primary_key.contains(i)));
        let stored = Arc::new(datafusion::arrow::datatypes::Schema::new(
            order
                .iter()
                .map(|i| schema.field(*i).clone())
                .collect::<Vec<_>>(),
        ));
        let converter_of =
            |columns: usize| -> Result<Option<datafusion::arrow::row::RowConverter>> {
                if primary_key.is_empty() {
                    return Ok(None);
                }
                let key =
                    datafusion::arrow::datatypes::Schema::new(stored.fields()[..columns].to_vec());
                Ok(Some(crate::types::row_converter(&key)?))
            };
        Ok(TableCodec {
            converter: crate::types::row_converter(&stored)?,
            key_converter: converter_of(primary_key.len())?,
            first_key_converter: converter_of(1)?,
            primary_key: primary_key.to_vec(),
            order,
            stored,
            schema,
            counts_only: false,
        })
    }

    /// The same, for a table whose checkpoints store only its row count (its rows are made
    /// anew when read: [`Spill::generated`]).
    pub fn counts_only(mut self) -> TableCodec {
        self.counts_only = true;
        self
    }

    /// Whether checkpoints store only the table's row count.
    pub fn stores_counts_only(&self) -> bool {
        self.counts_only
    }

    /// The table's columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The state-store keys of `batch`'s rows.
    pub fn encode(&self, batch: &RecordBatch) -> Result<datafusion::arrow::row::Rows> {
        let columns: Vec<ArrayRef> = self
            .order
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        Ok(self.converter.convert_columns(&columns)?)
    }

    /// The starts of the stored keys of rows with `batch`'s primary keys (`None` without a
    /// primary key).
    pub fn encode_keys(&self, batch: &RecordBatch) -> Result<Option<datafusion::arrow::row::Rows>> {
        let columns: Vec<ArrayRef> = self
            .primary_key
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        self.encode_key_columns(&columns)
    }

    /// The encoding of a value of the first primary-key column (a one-row array of its type):
    /// the start of the stored key of every row with that value there, ordered as the values
    /// are (`None` without a primary key).
    pub fn encode_first_key(&self, value: &ArrayRef) -> Result<Option<Vec<u8>>> {
        let Some(converter) = &self.first_key_converter else {
            return Ok(None);
        };
        let rows = converter.convert_columns(std::slice::from_ref(value))?;
        Ok((rows.num_rows() == 1).then(|| rows.row(0).data().to_vec()))
    }

    /// The same for primary keys given as one array per key column, in the key's order.
    pub fn encode_key_columns(
        &self,
        columns: &[ArrayRef],
    ) -> Result<Option<datafusion::arrow::row::Rows>> {
        let Some(converter) = &self.key_converter else {
            return Ok(None);
        };
        Ok(Some(converter.convert_columns(columns)?))
    }

    /// Table `id`'s rows as of the last checkpoint, in the table's column order (a row's count
    /// is its weight).
    pub fn load(&self, store: &super::state::StateStore, id: ObjectId) -> Result<Vec<ZBatch>> {
        self.decode(|f| store.scan_counts(id, super::state::TABLE_ROWS, f))
    }

    /// The rows stored under `prefix`, read at `snapshot`.
    pub fn load_at(
        &self,
        snapshot: &super::state::StoreSnapshot,
        prefix: &[u8; super::state::PREFIX_LEN],
    ) -> Result<Vec<ZBatch>> {
        self.decode(|f| snapshot.scan_counts(prefix, f))
    }

    /// The counted rows `scan` visits, as batches in the table's column order (the empty key
    /// is not a row but the row count, see `StoreSnapshot::row_count`).
    fn decode(
        &self,
        scan: impl FnOnce(super::state::CountVisitor<'_>) -> Result<()>,
    ) -> Result<Vec<ZBatch>> {
        let mut batches = crate::types::RowsToBatches::new(&self.converter, self.stored.clone());
        scan(&mut |key, n| {
            if key.is_empty() {
                Ok(())
            } else {
                batches.push(key, n)
            }
        })?;
        let mut out = Vec::new();
        for z in batches.finish()? {
            let mut columns: Vec<Option<ArrayRef>> = vec![None; self.order.len()];
            for (stored, table) in self.order.iter().enumerate() {
                columns[*table] = Some(z.data.column(stored).clone());
            }
            let columns = columns.into_iter().flatten().collect();
            let data = RecordBatch::try_new(self.schema.clone(), columns)?;
            out.push(ZBatch::new(data, z.weights));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ColumnDef, TableDef};
    use crate::types::SqlType;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    fn store(def: &TableDef) -> TableStore {
        TableStore::new(&def.name, def.schema(), &def.primary_key)
    }

    fn def(pk: bool) -> TableDef {
        TableDef {
            id: 1,
            name: "t".into(),
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    sql_type: SqlType::BigInt,
                    not_null: pk,
                },
                ColumnDef {
                    name: "v".into(),
                    sql_type: SqlType::Text,
                    not_null: false,
                },
            ],
            primary_key: if pk { vec![0] } else { vec![] },
            append_only: false,
            watermark: None,
            late_rows_table: None,
            source: None,
        }
    }

    fn rows(schema: &SchemaRef, ids: &[i64], vs: &[&str], weights: &[i64]) -> ZBatch {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
                Arc::new(StringArray::from(vs.to_vec())),
            ],
        )
        .unwrap();
        ZBatch::new(batch, Int64Array::from(weights.to_vec()))
    }

    fn apply(store: &mut TableStore, z: ZBatch, lsn: u64) -> Result<()> {
        let plan = store.plan(&z)?;
        store.commit(plan, Lsn(lsn), Lsn(lsn))
    }

    fn count(store: &TableStore, snap: Snapshot) -> usize {
        store.scan(snap).unwrap().iter().map(|b| b.num_rows()).sum()
    }

    #[test]
    fn primary_key_rejects_duplicates_and_allows_update_in_place() {
        let mut s = store(&def(true));
        let sc = s.schema().clone();
        apply(&mut s, rows(&sc, &[1, 2], &["a", "b"], &[1, 1]), 1).unwrap();
        let err = apply(&mut s, rows(&sc, &[2], &["x"], &[1]), 2).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::UNIQUE_VIOLATION);
        assert_eq!(err.detail.as_deref(), Some("Key (id)=(2) already exists."));
        let err = apply(&mut s, rows(&sc, &[3, 3], &["x", "y"], &[1, 1]), 2).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::UNIQUE_VIOLATION);
        // Update: -1 old, +1 new with the same key.
        apply(&mut s, rows(&sc, &[2, 2], &["b", "c"], &[-1, 1]), 2).unwrap();
        assert_eq!(s.live_rows(), 2);
        assert_eq!(count(&s, Snapshot::At(Lsn(1))), 2);
    }

    #[test]
    fn snapshots_hide_later_changes() {
        let mut s = store(&def(false));
        let sc = s.schema().clone();
        apply(&mut s, rows(&sc, &[1, 1], &["a", "a"], &[1, 1]), 1).unwrap();
        let plan = s.plan(&rows(&sc, &[1], &["a"], &[-1])).unwrap();
        s.commit(plan, Lsn(2), Lsn(1)).unwrap();
        assert_eq!(count(&s, Snapshot::At(Lsn(1))), 2);
        assert_eq!(count(&s, Snapshot::At(Lsn(2))), 1);
        assert_eq!(count(&s, Snapshot::Latest), 1);
        let err = apply(&mut s, rows(&sc, &[1], &["a"], &[-2]), 3).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::SERIALIZATION_FAILURE);
        assert_eq!(s.live_rows(), 1, "a failed plan changes nothing");
    }

    #[test]
    fn merging_never_changes_what_a_snapshot_at_the_horizon_sees() {
        let mut s = store(&def(false));
        let sc = s.schema().clone();
        // A reader pinned a snapshot at LSN 10 while 100 more single-row commits arrive.
        for lsn in 1..=10u64 {
            apply(&mut s, rows(&sc, &[lsn as i64], &["old"], &[1]), lsn).unwrap();
        }
        let plan = s.plan(&rows(&sc, &[1], &["old"], &[-1])).unwrap();
        s.commit(plan, Lsn(11), Lsn(10)).unwrap();
        for lsn in 12..=110u64 {
            let plan = s.plan(&rows(&sc, &[lsn as i64], &["new"], &[1])).unwrap();
            s.commit(plan, Lsn(lsn), Lsn(10)).unwrap();
        }
        assert!(
            s.chunks.iter().flatten().count() < 110,
            "old chunks were merged"
        );
        assert_eq!(
            count(&s, Snapshot::At(Lsn(10))),
            10,
            "the pinned snapshot is unchanged"
        );
        assert_eq!(count(&s, Snapshot::At(Lsn(11))), 9);
        assert_eq!(count(&s, Snapshot::Latest), 108);
    }

    #[test]
    fn small_chunks_merge_and_index_follows() {
        let mut s = store(&def(true));
        let sc = s.schema().clone();
        for i in 0..200 {
            apply(&mut s, rows(&sc, &[i], &["v"], &[1]), i as u64 + 1).unwrap();
        }
        assert!(s.chunks.iter().flatten().count() < 40);
        let err = apply(&mut s, rows(&sc, &[5], &["v"], &[1]), 500).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::UNIQUE_VIOLATION);
        apply(&mut s, rows(&sc, &[5], &["v"], &[-1]), 501).unwrap();
        assert_eq!(s.live_rows(), 199);
    }

    #[test]
    fn bytes_in_memory_follow_the_chunks_held() {
        let mut s = store(&def(false));
        let sc = s.schema().clone();
        assert_eq!(s.bytes_in_memory(), 0);
        // Single-row commits, merged along the way: the count follows each chunk in and out.
        for i in 0..200 {
            apply(&mut s, rows(&sc, &[i], &["v"], &[1]), i as u64 + 1).unwrap();
        }
        let held = |s: &TableStore| -> usize { s.chunks.iter().flatten().map(Chunk::bytes).sum() };
        assert_eq!(s.chunk_bytes, held(&s));
        apply(&mut s, rows(&sc, &[7], &["v"], &[-1]), 201).unwrap();
        assert_eq!(s.chunk_bytes, held(&s));
        assert!(s.bytes_in_memory() >= s.chunk_bytes && s.chunk_bytes > 0);
        s.rollback_after(Lsn::ZERO).unwrap();
        assert_eq!(s.chunk_bytes, 0);
    }

    #[test]
    fn rollback_undoes_inserts_and_deletes_after_an_lsn() {
        for pk in [true, false] {
            let mut s = store(&def(pk));
            let sc = s.schema().clone();
            apply(&mut s, rows(&sc, &[1, 2], &["a", "b"], &[1, 1]), 1).unwrap();
            apply(&mut s, rows(&sc, &[2], &["b"], &[-1]), 2).unwrap(); // builds the index
            let plan = s.plan(&rows(&sc, &[1, 3], &["a", "c"], &[-1, 1])).unwrap();
            s.commit(plan, Lsn(3), Lsn(2)).unwrap();
            let plan = s.plan(&rows(&sc, &[4], &["d"], &[1])).unwrap();
            s.commit(plan, Lsn(4), Lsn(2)).unwrap();
            s.rollback_after(Lsn(2)).unwrap();
            assert_eq!(s.live_rows(), 1);
            assert_eq!(count(&s, Snapshot::Latest), 1);
            // The index agrees: row 1 can be deleted again, 3 and 4 inserted again.
            apply(
                &mut s,
                rows(&sc, &[1, 3, 4], &["a", "c", "d"], &[-1, 1, 1]),
                3,
            )
            .unwrap();
            assert_eq!(s.live_rows(), 2);
            let err = apply(&mut s, rows(&sc, &[1], &["a"], &[-1]), 4).unwrap_err();
            assert_eq!(err.sqlstate, sqlstate::SERIALIZATION_FAILURE);
        }
    }

    #[test]
    fn duplicate_rows_survive_merges_into_a_reused_slot() {
        // Found by the differential test: merging moved two equal rows into a slot number that
        // one of them had used, and the index then pointed twice at one row.
        let mut s = store(&def(false));
        let sc = s.schema().clone();
        apply(&mut s, rows(&sc, &[1], &["x"], &[1]), 1).unwrap();
        let plan = s.plan(&rows(&sc, &[1], &["x"], &[-1])).unwrap(); // builds the index
        s.commit(plan, Lsn(2), Lsn(2)).unwrap();
        for lsn in 3..=200u64 {
            apply(&mut s, rows(&sc, &[7], &["dup"], &[1]), lsn).unwrap();
        }
        assert_eq!(s.live_rows(), 198);
        apply(&mut s, rows(&sc, &[7], &["dup"], &[-198]), 201).unwrap();
        assert_eq!(s.live_rows(), 0);
    }

    /// A spilling (APPEND ONLY) table over a state store, and a way to checkpoint its rows.
    struct Spilled {
        _dir: tempfile::TempDir,
        state: Arc<crate::storage::state::StateStore>,
        codec: Arc<TableCodec>,
        table: TableStore,
    }

    impl Spilled {
        fn new(pk: bool) -> Spilled {
            let dir = tempfile::tempdir().unwrap();
            let state = Arc::new(
                crate::storage::state::StateStore::open(&dir.path().join("s"), 4 << 20).unwrap(),
            );
            let def = def(pk);
            let codec = Arc::new(TableCodec::new(def.schema(), &def.primary_key).unwrap());
            let spill = Spill {
                generated: None,
                prefix: crate::storage::state::part_prefix(
                    def.id,
                    crate::storage::state::TABLE_ROWS,
                ),
                codec: codec.clone(),
            };
            let table =
                TableStore::spilling(&def.name, def.schema(), &def.primary_key, spill, None);
            Spilled {
                _dir: dir,
                state,
                codec,
                table,
            }
        }

        /// Writes `rows` (the changes since the last checkpoint) as the checkpoint at `lsn`,
        /// then moves the rows up to it out of memory.
        fn checkpoint(&mut self, rows: &ZBatch, lsn: u64) {
            use crate::storage::state::{CheckpointMeta, TABLE_ROWS, part_prefix};
            let mut batch = self.state.batch();
            let keys = self.codec.encode(&rows.data).unwrap();
            for (i, w) in rows.weights.values().iter().enumerate() {
                batch.add(&part_prefix(1, TABLE_ROWS), keys.row(i).as_ref(), *w);
            }
            let n = rows.weights.values().iter().sum();
            batch.add(&part_prefix(1, TABLE_ROWS), &[], n);
            self.state
                .write_checkpoint(batch, &CheckpointMeta::new(lsn, Vec::new()))
                .unwrap();
            let snapshot = Arc::new(self.state.snapshot());
            self.table.rebase(snapshot, Lsn(lsn)).unwrap();
        }

        fn ids(&self, snap: Snapshot) -> Vec<i64> {
            ids(&self.table.scan(snap).unwrap())
        }
    }

    #[test]
    fn a_spilling_table_reads_checkpointed_rows_from_the_store() {
        let mut s = Spilled::new(false);
        let sc = s.table.schema().clone();
        let first = rows(&sc, &[1, 2, 2], &["a", "b", "b"], &[1, 1, 1]);
        apply(&mut s.table, first.clone(), 1).unwrap();
        apply(&mut s.table, rows(&sc, &[3], &["c"], &[1]), 2).unwrap();
        s.checkpoint(&first, 1);
        // Rows up to LSN 1 left memory; the row of LSN 2 stays until a checkpoint covers it.
        assert_eq!(s.table.rows_in_memory(), 1);
        assert_eq!(s.table.live_rows(), 4);
        assert_eq!(s.ids(Snapshot::Latest), vec![1, 2, 2, 3]);
        assert_eq!(s.ids(Snapshot::At(Lsn(1))), vec![1, 2, 2]);
        let err = s.table.scan(Snapshot::At(Lsn(0))).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::INTERNAL_ERROR);
        // A later commit, rolled back: the stored rows stay.
        apply(&mut s.table, rows(&sc, &[4], &["d"], &[1]), 3).unwrap();
        s.table.rollback_after(Lsn(2)).unwrap();
        assert_eq!(s.ids(Snapshot::Latest), vec![1, 2, 2, 3]);
        // A second checkpoint adds to the first; an older one is ignored.
        s.checkpoint(&rows(&sc, &[3], &["c"], &[1]), 2);
        assert_eq!(s.table.rows_in_memory(), 0);
        assert_eq!(s.ids(Snapshot::Latest), vec![1, 2, 2, 3]);
        s.table
            .rebase(Arc::new(s.state.snapshot()), Lsn(1))
            .unwrap();
        assert_eq!(s.table.live_rows(), 4);
    }

    #[test]
    fn a_spilling_table_checks_primary_keys_against_stored_rows() {
        let mut s = Spilled::new(true);
        let sc = s.table.schema().clone();
        let first = rows(&sc, &[10, 20, 30], &["a", "b", "c"], &[1, 1, 1]);
        apply(&mut s.table, first.clone(), 1).unwrap();
        s.checkpoint(&first, 1);
        apply(&mut s.table, rows(&sc, &[40], &["d"], &[1]), 2).unwrap();
        for (dup, lsn) in [(20, 3), (40, 3)] {
            let err = apply(
                &mut s.table,
                rows(&sc, &[5, dup], &["x", "y"], &[1, 1]),
                lsn,
            )
            .unwrap_err();
            assert_eq!(err.sqlstate, sqlstate::UNIQUE_VIOLATION);
            assert_eq!(
                err.detail.as_deref(),
                Some(format!("Key (id)=({dup}) already exists.").as_str())
            );
        }
        let probe = rows(&sc, &[30, 31, 40, 10], &["", "", "", ""], &[1, 1, 1, 1]);
        assert_eq!(s.table.count_keys(&probe.data).unwrap(), vec![1, 0, 1, 1]);
        apply(&mut s.table, rows(&sc, &[31, 11], &["e", "f"], &[1, 1]), 3).unwrap();
        assert_eq!(s.ids(Snapshot::Latest), vec![10, 11, 20, 30, 31, 40]);
        // Lookups by key: stored rows and rows in memory, each at most once.
        let found = s
            .table
            .lookup(&keys(&[40, 10, 99, 31, 10]), Snapshot::At(Lsn(2)))
            .unwrap()
            .unwrap();
        assert_eq!(ids(&found), vec![10, 40]);
        assert!(
            s.table
                .lookup(&keys(&[10]), Snapshot::At(Lsn(0)))
                .unwrap()
                .is_none()
        );
    }

    /// (id, v) pairs of `batches`, sorted.
    fn pairs(batches: &[RecordBatch]) -> Vec<(i64, String)> {
        let mut out: Vec<(i64, String)> = batches
            .iter()
            .flat_map(|b| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let vs = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                (0..b.num_rows())
                    .map(|i| (ids.value(i), vs.value(i).to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    fn pair(id: i64, v: &str) -> (i64, String) {
        (id, v.to_string())
    }

    #[test]
    fn a_spilling_table_with_a_primary_key_deletes_stored_rows_through_tombstones() {
        let mut s = Spilled::new(true);
        let sc = s.table.schema().clone();
        let first = rows(&sc, &[10, 20, 30], &["a", "b", "c"], &[1, 1, 1]);
        apply(&mut s.table, first.clone(), 1).unwrap();
        s.checkpoint(&first, 1);
        assert_eq!(s.table.rows_in_memory(), 0);
        // An update and a delete of stored rows.
        let update = rows(&sc, &[20, 20], &["b", "B"], &[-1, 1]);
        apply(&mut s.table, update.clone(), 2).unwrap();
        let delete = rows(&sc, &[30], &["c"], &[-1]);
        apply(&mut s.table, delete.clone(), 3).unwrap();
        let at = |s: &Spilled, snap| pairs(&s.table.scan(snap).unwrap());
        assert_eq!(
            at(&s, Snapshot::At(Lsn(1))),
            [pair(10, "a"), pair(20, "b"), pair(30, "c")]
        );
        assert_eq!(
            at(&s, Snapshot::At(Lsn(2))),
            [pair(10, "a"), pair(20, "B"), pair(30, "c")]
        );
        assert_eq!(at(&s, Snapshot::Latest), [pair(10, "a"), pair(20, "B")]);
        assert_eq!(s.table.live_rows(), 2);
        // Lookups leave out the deleted rows too.
        let found = s
            .table
            .lookup(&keys(&[20, 30]), Snapshot::At(Lsn(3)))
            .unwrap();
        assert_eq!(pairs(&found.unwrap()), [pair(20, "B")]);
        let found = s
            .table
            .lookup(&keys(&[20, 30]), Snapshot::At(Lsn(1)))
            .unwrap();
        assert!(
            found.is_none(),
            "below the last delete the index is not enough"
        );
        // A deleted row cannot be deleted again; its key can be inserted again, a live
        // stored key cannot.
        let err = apply(&mut s.table, delete.clone(), 4).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::SERIALIZATION_FAILURE);
        let err = apply(&mut s.table, rows(&sc, &[10], &["x"], &[1]), 4).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::UNIQUE_VIOLATION);
        apply(&mut s.table, rows(&sc, &[30], &["C"], &[1]), 4).unwrap();
        apply(&mut s.table, rows(&sc, &[10], &["a"], &[-1]), 5).unwrap();
        let probe = rows(&sc, &[10, 20, 30], &["", "", ""], &[1, 1, 1]);
        assert_eq!(s.table.count_keys(&probe.data).unwrap(), vec![0, 1, 1]);
        // Rolling back LSNs 4 and 5 brings back the stored row 10 and drops row 30 again.
        s.table.rollback_after(Lsn(3)).unwrap();
        assert_eq!(at(&s, Snapshot::Latest), [pair(10, "a"), pair(20, "B")]);
        assert_eq!(s.table.live_rows(), 2);

        // The checkpoint at LSN 3 has the update and the delete: the tombstones go, the
        // updated row leaves memory.
        let changes = ZBatch::consolidate(&[update, delete], &sc).unwrap();
        s.checkpoint(&changes, 3);
        assert_eq!(s.table.rows_in_memory(), 0);
        assert_eq!(s.table.live_rows(), 2);
        assert_eq!(at(&s, Snapshot::Latest), [pair(10, "a"), pair(20, "B")]);
        // A row inserted before the next checkpoint and deleted after it becomes a tombstone.
        let insert = rows(&sc, &[40], &["d"], &[1]);
        apply(&mut s.table, insert.clone(), 4).unwrap();
        apply(&mut s.table, rows(&sc, &[40], &["d"], &[-1]), 5).unwrap();
        s.checkpoint(&insert, 4);
        assert_eq!(s.table.rows_in_memory(), 0);
        assert_eq!(
            at(&s, Snapshot::At(Lsn(4))),
            [pair(10, "a"), pair(20, "B"), pair(40, "d")]
        );
        assert_eq!(at(&s, Snapshot::Latest), [pair(10, "a"), pair(20, "B")]);
        assert_eq!(s.table.live_rows(), 2);
        apply(&mut s.table, insert, 6).unwrap();
        assert_eq!(s.table.live_rows(), 3);
    }

    #[test]
    fn a_key_range_reads_only_that_range_of_the_stored_rows() {
        let mut s = Spilled::new(true);
        let sc = s.table.schema().clone();
        let all: Vec<i64> = (-5..=20).map(|i| i * 10).collect();
        let names: Vec<String> = all.iter().map(|i| format!("r{i}")).collect();
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let stored = rows(&sc, &all, &names, &vec![1; all.len()]);
        apply(&mut s.table, stored.clone(), 1).unwrap();
        s.checkpoint(&stored, 1);
        // Changes since the checkpoint are in memory: returned whatever the range.
        apply(&mut s.table, rows(&sc, &[1000], &["new"], &[1]), 2).unwrap();
        apply(&mut s.table, rows(&sc, &[30], &["r30"], &[-1]), 3).unwrap();
        let bound = |v: i64| keys(&[v]).remove(0);
        let range = |low: Option<i64>, high: Option<(i64, bool)>| {
            let (low, high) = (low.map(bound), high.map(|(h, i)| (bound(h), i)));
            let found = s
                .table
                .scan_key_range(
                    Snapshot::Latest,
                    low.as_ref(),
                    high.as_ref().map(|(h, i)| (h, *i)),
                )
                .unwrap()
                .unwrap();
            ids(&found)
        };
        // Negative keys sort below positive ones in the stored encoding too.
        assert_eq!(range(Some(-20), Some((10, false))), [-20, -10, 0, 1000]);
        assert_eq!(range(Some(-20), Some((10, true))), [-20, -10, 0, 10, 1000]);
        assert_eq!(
            range(Some(25), Some((45, true))),
            [40, 1000],
            "30 is deleted"
        );
        assert_eq!(range(None, Some((-40, true))), [-50, -40, 1000]);
        assert_eq!(range(Some(190), None), [190, 200, 1000]);
        assert_eq!(range(Some(500), None), [1000]);
        // A table keeping its rows in memory: the caller scans.
        let bag = store(&def(true));
        assert!(
            bag.scan_key_range(Snapshot::Latest, Some(&bound(1)), None)
                .unwrap()
                .is_none()
        );
    }

    fn keys(ids: &[i64]) -> Vec<ArrayRef> {
        vec![Arc::new(Int64Array::from(ids.to_vec()))]
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        let mut ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                a.values().to_vec()
            })
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn lookups_by_key_see_the_snapshot_or_defer_to_a_scan() {
        let mut s = store(&def(true));
        let sc = s.schema().clone();
        apply(
            &mut s,
            rows(&sc, &[1, 2, 3], &["a", "b", "c"], &[1, 1, 1]),
            1,
        )
        .unwrap();
        apply(&mut s, rows(&sc, &[4], &["d"], &[1]), 2).unwrap();
        let at = |s: &TableStore, ids: &[i64], snap| s.lookup(&keys(ids), snap).unwrap();
        assert_eq!(
            ids(&at(&s, &[2, 4, 9], Snapshot::Latest).unwrap()),
            vec![2, 4]
        );
        assert_eq!(
            ids(&at(&s, &[2, 4], Snapshot::At(Lsn(1))).unwrap()),
            vec![2]
        );
        // An update at LSN 3: the index has only the new row, so a read at LSN 2 scans.
        apply(&mut s, rows(&sc, &[2, 2], &["b", "B"], &[-1, 1]), 3).unwrap();
        assert!(at(&s, &[2], Snapshot::At(Lsn(2))).is_none());
        let found = at(&s, &[2], Snapshot::At(Lsn(3))).unwrap();
        let v = found[0]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!((found[0].num_rows(), v.value(0)), (1, "B"));
        // Wrong arity, and a table without a primary key: a scan.
        let two = [keys(&[1]), keys(&[1])].concat();
        assert!(s.lookup(&two, Snapshot::Latest).unwrap().is_none());
        let bag = store(&def(false));
        assert!(bag.lookup(&keys(&[1]), Snapshot::Latest).unwrap().is_none());
    }
}
