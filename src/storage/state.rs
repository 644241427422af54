//! Durable state in RocksDB: one DB per data directory (`<data-dir>/state`), holding the catalog
//! and the last checkpoint.
//!
//! Column families:
//!
//! | family | holds | written by |
//! |---|---|---|
//! | `catalog` | table and view definitions (JSON) | DDL, synced per statement |
//! | `rows` | multisets of rows: key = a row in Arrow's row format, value = its count (i64); counts add up through a merge operator, and a count of 0 is dropped at compaction | checkpoints |
//! | `state` | other operator state (aggregate groups, change history): plain values | checkpoints |
//! | `meta` | the checkpoint record: the LSN and epoch the state covers | checkpoints |
//!
//! Keys in `rows` and `state` start with the object (table or view) id and a part (u32, both
//! big-endian) — a dataflow node, a table's rows, a view's change history — so that everything
//! of an object, or one part of it, is one contiguous range ([`part_prefix`]).
//!
//! A checkpoint is one [`StateBatch`] — every change of state since the previous checkpoint plus
//! the new checkpoint record — written atomically and made durable by an atomic flush of every
//! family (see [`StateStore::write_checkpoint`]): after a crash the store holds one checkpoint or
//! the next, never a mix. RocksDB checksums its files and its write-ahead log, so
//! a corrupted file stops start-up with an error naming it rather than losing data silently.
//! Its `LOCK` file also keeps a second server process off the same data directory.

use std::path::Path;
use std::sync::Arc;

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, IteratorMode, MergeOperands, Options, ReadOptions,
    SnapshotWithThreadMode, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, sqlstate};
use crate::types::{ObjectId, TableWatermark};

const CATALOG_CF: &str = "catalog";
const ROWS_CF: &str = "rows";
const STATE_CF: &str = "state";
const META_CF: &str = "meta";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const CHECKPOINT_VERSION: u32 = 1;

/// Part of an object holding a table's rows.
pub const TABLE_ROWS: u32 = u32::MAX - 1;
/// Part of a view holding its change history (for `SUBSCRIBE … AS OF`).
pub const HISTORY: u32 = u32::MAX;

/// Length of [`part_prefix`].
pub const PREFIX_LEN: usize = 12;

/// The key prefix of part `part` of object `id`.
pub fn part_prefix(id: ObjectId, part: u32) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[..8].copy_from_slice(&id.to_be_bytes());
    p[8..].copy_from_slice(&part.to_be_bytes());
    p
}

/// Counted rows read back: (key after the prefix, count).
pub type CountedRows = Vec<(Vec<u8>, i64)>;

/// Called with each stored value's key (after the prefix) and value.
pub type ValueVisitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<()>;
/// Called with each stored row's key (after the prefix) and count.
pub type CountVisitor<'a> = &'a mut dyn FnMut(&[u8], i64) -> Result<()>;

/// What the last checkpoint covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub version: u32,
    /// Every log record up to this LSN is reflected in the stored state.
    pub lsn: u64,
    /// The epoch committed at that point (the next epoch numbers continue from it).
    pub epoch: u64,
    /// When it was taken (µs since 1970).
    pub time_micros: u64,
    /// Materialized views whose dataflow state is stored.
    pub views: Vec<ViewCheckpoint>,
    /// The watermark of every table that has one, at `lsn`.
    #[serde(default)]
    pub table_watermarks: Vec<TableWatermark>,
    /// The engine's clock as of the committed epoch (µs since 1970; see `engine::clock`).
    #[serde(default)]
    pub clock: Option<i64>,
}

impl CheckpointMeta {
    pub fn new(lsn: u64, views: Vec<ViewCheckpoint>) -> CheckpointMeta {
        CheckpointMeta {
            version: CHECKPOINT_VERSION,
            lsn,
            epoch: lsn,
            time_micros: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            views,
            table_watermarks: Vec::new(),
            clock: None,
        }
    }
}

/// One view's entry in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewCheckpoint {
    pub id: ObjectId,
    /// Of the dataflow the state belongs to: state is only loaded into the same dataflow.
    pub fingerprint: u64,
    /// Changes after this epoch are in the stored history.
    pub history_oldest: u64,
    /// How many shards its operators' state is split into (see `dataflow::exchange`).
    #[serde(default = "one_shard")]
    pub shards: u32,
}

/// Checkpoints from before dataflows had shards.
fn one_shard() -> u32 {
    1
}

pub struct StateStore {
    db: DB,
    cache: rocksdb::Cache,
}

fn rocks_err(context: &str, e: rocksdb::Error) -> Error {
    let text = e.to_string();
    let code = match e.kind() {
        rocksdb::ErrorKind::Corruption => sqlstate::DATA_CORRUPTED,
        _ if text.contains("lock") || text.contains("LOCK") => {
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
        }
        _ if text.contains("No space") => sqlstate::DISK_FULL,
        _ => sqlstate::IO_ERROR,
    };
    if code == sqlstate::DATA_CORRUPTED {
        return crate::err!(
            code,
            "{context}: {text}; refusing to go on rather than lose data (restore the data \
             directory from a backup)"
        );
    }
    crate::err!(code, "{context}: {text}")
}

/// Counts are little-endian i64s.
fn count_of(bytes: &[u8]) -> i64 {
    bytes.try_into().map(i64::from_le_bytes).unwrap_or_default()
}

/// The `rows` family's merge operator: counts add up.
fn add_counts(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut n = existing.map_or(0, count_of);
    for op in operands {
        n += count_of(op);
    }
    Some(n.to_le_bytes().to_vec())
}

/// Options of the families holding operator state: LZ4-compressed files, with bloom filters
/// (operators whose state does not fit the memory budget read evicted keys back one by one, most
/// of them for keys that were never stored) and a shared block cache.
fn state_options(cache: &rocksdb::Cache) -> Options {
    let mut options = Options::default();
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    options.set_block_based_table_factory(&table);
    options
}

fn rows_options(cache: &rocksdb::Cache) -> Options {
    let mut options = state_options(cache);
    options.set_merge_operator_associative("eddy.add_counts", add_counts);
    // A row whose count reached 0 is gone (RocksDB turns the removal into a tombstone, so an
    // older count further down cannot reappear).
    options.set_compaction_filter("eddy.drop_zero_counts", |_level, _key, value: &[u8]| {
        if count_of(value) == 0 {
            Decision::Remove
        } else {
            Decision::Keep
        }
    });
    options
}

impl StateStore {
    /// The size of RocksDB's block cache (uncompressed blocks of the state files, read back
    /// when operators fault in evicted state) for a memory budget of `budget` bytes: a quarter
    /// of it, between 4 and 64 MiB.
    pub fn block_cache_bytes(budget: usize) -> usize {
        (budget / 4).clamp(4 << 20, 64 << 20)
    }

    /// Opens (or creates) the store at `path`, with a block cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<StateStore> {
        let cache = rocksdb::Cache::new_lru_cache(cache_bytes);
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_keep_log_file_num(4);
        options.set_paranoid_checks(true);
        // Checkpoints are made durable by flushing every family together (see
        // `write_checkpoint`).
        options.set_atomic_flush(true);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CATALOG_CF, Options::default()),
            ColumnFamilyDescriptor::new(ROWS_CF, rows_options(&cache)),
            ColumnFamilyDescriptor::new(STATE_CF, state_options(&cache)),
            ColumnFamilyDescriptor::new(META_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(|e| {
            rocks_err(
                &format!(
                    "opening state store {} (is another eddy server using this data directory?)",
                    path.display()
                ),
                e,
            )
        })?;
        Ok(StateStore { db, cache })
    }

    /// Bytes held by the block cache, and by the write buffers (memtables) of all families.
    pub fn memory_usage(&self) -> (usize, usize) {
        let buffers = [CATALOG_CF, ROWS_CF, STATE_CF, META_CF]
            .iter()
            .filter_map(|name| self.db.cf_handle(name))
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
            })
            .sum::<u64>();
        (self.cache.get_usage(), buffers as usize)
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| crate::internal!("missing column family {name}"))
    }

    /// All catalog entries, in key order.
    pub fn catalog_entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = self.cf(CATALOG_CF)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| rocks_err("reading the catalog", e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Applies puts and deletes to the catalog atomically and durably (synced).
    pub fn write_catalog(&self, puts: &[(Vec<u8>, Vec<u8>)], deletes: &[Vec<u8>]) -> Result<()> {
        let cf = self.cf(CATALOG_CF)?;
        let mut batch = WriteBatch::default();
        for (k, v) in puts {
            batch.put_cf(cf, k, v);
        }
        for k in deletes {
            batch.delete_cf(cf, k);
        }
        self.write_synced(batch, "writing the catalog")
    }

    fn write_synced(&self, batch: WriteBatch, context: &str) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| rocks_err(context, e))
    }

    /// The last checkpoint, if one was taken.
    pub fn checkpoint(&self) -> Result<Option<CheckpointMeta>> {
        let cf = self.cf(META_CF)?;
        let Some(bytes) = self
            .db
            .get_cf(cf, CHECKPOINT_KEY)
            .map_err(|e| rocks_err("reading the checkpoint record", e))?
        else {
            return Ok(None);
        };
        let meta: CheckpointMeta = serde_json::from_slice(&bytes).map_err(|e| {
            crate::err!(
                sqlstate::DATA_CORRUPTED,
                "the checkpoint record in the state store is unreadable: {e}"
            )
        })?;
        if meta.version != CHECKPOINT_VERSION {
            return Err(crate::err!(
                sqlstate::DATA_CORRUPTED,
                "the checkpoint was written in format {} but this server reads format {}",
                meta.version,
                CHECKPOINT_VERSION
            ));
        }
        Ok(Some(meta))
    }

    /// A batch to fill with a checkpoint's changes.
    pub fn batch(self: &Arc<Self>) -> StateBatch {
        StateBatch {
            store: self.clone(),
            batch: WriteBatch::default(),
            ops: Vec::new(),
            arena: Vec::new(),
        }
    }

    /// Writes a checkpoint: `batch`'s changes and the record `meta`, atomically and durably.
    ///
    /// The batch bypasses RocksDB's write-ahead log and is then flushed to table files, all
    /// families at once (`atomic_flush`): the checkpoint is durable when the flush is recorded
    /// in RocksDB's manifest, and a crash before that leaves the previous checkpoint intact.
    /// So a checkpoint is written once, not to the log and again to files, and a restart after
    /// a crash has no write-ahead log of checkpoints to replay.
    pub fn write_checkpoint(&self, mut batch: StateBatch, meta: &CheckpointMeta) -> Result<()> {
        let json = serde_json::to_vec(meta)
            .map_err(|e| crate::internal!("serializing the checkpoint record: {e}"))?;
        batch.write_ops();
        batch.batch.put_cf(self.cf(META_CF)?, CHECKPOINT_KEY, json);
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db
            .write_opt(batch.batch, &options)
            .map_err(|e| rocks_err("writing a checkpoint", e))?;
        self.flush()
    }

    /// Calls `f(key, count)` for every row with a positive count in part `part` of object `id`,
    /// in key order (the key without the prefix).
    pub fn scan_counts(&self, id: ObjectId, part: u32, f: CountVisitor<'_>) -> Result<()> {
        self.scan(ROWS_CF, id, part, &mut |k, v| {
            let n = count_of(v);
            if n > 0 { f(k, n) } else { Ok(()) }
        })
    }

    /// Calls `f(key, value)` for every value in part `part` of object `id`, in key order.
    pub fn scan_values(&self, id: ObjectId, part: u32, f: ValueVisitor<'_>) -> Result<()> {
        self.scan(STATE_CF, id, part, f)
    }

    fn scan(&self, cf: &str, id: ObjectId, part: u32, f: ValueVisitor<'_>) -> Result<()> {
        scan_part(self, cf, ReadOptions::default(), &part_prefix(id, part), f)
    }

    /// A consistent view of the store as it is now (the last durable checkpoint, when taken
    /// right after it), unaffected by later writes.
    pub fn snapshot(self: &Arc<Self>) -> StoreSnapshot {
        let snapshot = self.db.snapshot();
        // SAFETY: the snapshot borrows `self.db`, which lives as long as the `Arc<StateStore>`
        // stored next to it; `StoreSnapshot` declares the snapshot first, so it is released
        // before that `Arc` is dropped.
        let snapshot = unsafe {
            std::mem::transmute::<SnapshotWithThreadMode<'_, DB>, SnapshotWithThreadMode<'static, DB>>(
                snapshot,
            )
        };
        StoreSnapshot {
            snapshot,
            store: self.clone(),
        }
    }

    /// Ids of every object that has rows or state stored, ascending.
    pub fn stored_objects(&self) -> Result<Vec<ObjectId>> {
        let mut ids = Vec::new();
        for cf in [ROWS_CF, STATE_CF] {
            let cf = self.cf(cf)?;
            let mut it = self.db.raw_iterator_cf(cf);
            it.seek_to_first();
            while let Some(k) = it.key() {
                let id = k
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| {
                        crate::err!(sqlstate::DATA_CORRUPTED, "malformed key in the state store")
                    })?;
                ids.push(id);
                match id.checked_add(1) {
                    Some(next) => it.seek(next.to_be_bytes()),
                    None => break,
                }
            }
            it.status()
                .map_err(|e| rocks_err("listing the state store", e))?;
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Writes the in-memory tables of every family to files (at shutdown: the next start
    /// then reads files instead of replaying RocksDB's write-ahead log).
    pub fn flush(&self) -> Result<()> {
        let cfs: Vec<&ColumnFamily> = [CATALOG_CF, ROWS_CF, STATE_CF, META_CF]
            .iter()
            .map(|name| self.cf(name))
            .collect::<Result<_>>()?;
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(|e| rocks_err("flushing the state store", e))
    }

    /// Reads every stored entry back, checking each file block against its checksum, and
    /// returns the bytes of keys and values read; a corrupted block is a
    /// [`sqlstate::DATA_CORRUPTED`] error naming its file. Start-up reads only part of the store
    /// (rows of tables and views that spill are read when queried), so the server runs this in
    /// the background once it serves. Stops early (with what it read) when `stop` is set.
    pub fn verify(&self, stop: &std::sync::atomic::AtomicBool) -> Result<u64> {
        let mut bytes = 0u64;
        for name in [CATALOG_CF, META_CF, ROWS_CF, STATE_CF] {
            let mut options = ReadOptions::default();
            options.set_verify_checksums(true);
            // A one-off pass: keep the blocks operators use in the cache.
            options.fill_cache(false);
            options.set_readahead_size(2 << 20);
            let mut it = self.db.raw_iterator_cf_opt(self.cf(name)?, options);
            it.seek_to_first();
            let mut entries = 0u64;
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                bytes += (k.len() + v.len()) as u64;
                entries += 1;
                if entries.is_multiple_of(4096) && stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(bytes);
                }
                it.next();
            }
            it.status()
                .map_err(|e| rocks_err("verifying the state store", e))?;
        }
        Ok(bytes)
    }

    /// Compacts everything (benchmarks and tests; RocksDB compacts on its own otherwise).
    pub fn compact(&self) -> Result<()> {
        for cf in [ROWS_CF, STATE_CF] {
            self.db
                .compact_range_cf(self.cf(cf)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Bytes the state store occupies on disk (SST files and write-ahead log).
    pub fn disk_bytes(&self) -> u64 {
        [ROWS_CF, STATE_CF, META_CF]
            .iter()
            .filter_map(|cf| self.cf(cf).ok())
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
            })
            .sum()
    }
}

/// A read-only view of the store at one moment (see [`StateStore::snapshot`]): operators read
/// state they evicted through the snapshot of the last durable checkpoint, so a checkpoint
/// being written meanwhile does not show through.
pub struct StoreSnapshot {
    // Declared first: released before the store it belongs to.
    snapshot: SnapshotWithThreadMode<'static, DB>,
    store: Arc<StateStore>,
}

impl StoreSnapshot {
    fn read_options(&self) -> ReadOptions {
        let mut options = ReadOptions::default();
        options.set_snapshot(&self.snapshot);
        options
    }

    /// The values stored under `keys` (each after `prefix`), in order; `None` where there is
    /// none. One batched read (RocksDB's MultiGet), for operators faulting in evicted state.
    pub fn get_values(&self, prefix: &[u8], keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.store.cf(STATE_CF)?;
        let full: Vec<Vec<u8>> = keys.iter().map(|k| [prefix, k].concat()).collect();
        self.store
            .db
            .batched_multi_get_cf_opt(cf, &full, false, &self.read_options())
            .into_iter()
            .map(|r| {
                r.map(|v| v.map(|v| v.to_vec()))
                    .map_err(|e| rocks_err("reading state from the state store", e))
            })
            .collect()
    }

    /// How many rows the counted rows under `prefix` (a part's, [`part_prefix`]) hold, as kept
    /// by checkpoints in a counted row with an empty key (no row's key is empty: a row encodes
    /// at least one column). `None` if the part has rows but no count (written before counts
    /// were kept).
    pub fn row_count(&self, prefix: &[u8; PREFIX_LEN]) -> Result<Option<usize>> {
        let first = self.counts_after(prefix, &[], None, 1)?;
        Ok(match first.first() {
            None => Some(0),
            Some((key, n)) if key.is_empty() => Some(*n as usize),
            Some(_) => None,
        })
    }

    /// Calls `f(key, count)` for every row with a positive count under `prefix` (a part's,
    /// [`part_prefix`]), in key order (the key without the prefix).
    pub fn scan_counts(&self, prefix: &[u8; PREFIX_LEN], f: CountVisitor<'_>) -> Result<()> {
        scan_part(
            &self.store,
            ROWS_CF,
            self.read_options(),
            prefix,
            &mut |k, v| {
                let n = count_of(v);
                if n > 0 { f(k, n) } else { Ok(()) }
            },
        )
    }

    /// The same for the keys (after `prefix`) from `low` (inclusive) up to `high` (exclusive);
    /// an open end where `None`.
    pub fn scan_counts_between(
        &self,
        prefix: &[u8; PREFIX_LEN],
        low: Option<&[u8]>,
        high: Option<&[u8]>,
        f: CountVisitor<'_>,
    ) -> Result<()> {
        let cf = self.store.cf(ROWS_CF)?;
        let mut options = self.read_options();
        options.set_iterate_upper_bound(match high {
            Some(high) => [prefix.as_slice(), high].concat(),
            None => range_end(prefix),
        });
        options.fill_cache(false);
        let mut it = self.store.db.raw_iterator_cf_opt(cf, options);
        it.seek([prefix.as_slice(), low.unwrap_or_default()].concat());
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let n = count_of(v);
            if n > 0 {
                f(&k[PREFIX_LEN..], n)?;
            }
            it.next();
        }
        it.status()
            .map_err(|e| rocks_err("reading state from the state store", e))
    }

    /// For each of `starts` (ascending), the counted rows with a positive count whose keys
    /// (after `prefix`) start with it; keys after `prefix`. One iterator for them all.
    ///
    /// Entries written after the snapshot (a checkpoint being written) are invisible to it, but
    /// a seek still steps over them one by one: seeking a key that is not stored would walk
    /// through every newer entry up to the next visible one. So the shared iterator stays within
    /// `prefix` and gives up after [`MAX_HIDDEN_SKIP`] entries; such a start is read again with an
    /// iterator bounded to it.
    pub fn counts_with_starts(&self, prefix: &[u8], starts: &[&[u8]]) -> Result<Vec<CountedRows>> {
        let cf = self.store.cf(ROWS_CF)?;
        let mut options = self.read_options();
        options.set_iterate_upper_bound(range_end(prefix));
        options.set_max_skippable_internal_keys(MAX_HIDDEN_SKIP);
        let mut it = self.store.db.raw_iterator_cf_opt(cf, options);
        let mut out = Vec::with_capacity(starts.len());
        for start in starts {
            let low = [prefix, start].concat();
            it.seek(&low);
            let rows = match read_counts(&mut it, prefix, &low, usize::MAX) {
                Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => {
                    let mut options = self.read_options();
                    options.set_iterate_upper_bound(range_end(&low));
                    let mut bounded = self.store.db.raw_iterator_cf_opt(cf, options);
                    bounded.seek(&low);
                    read_counts(&mut bounded, prefix, &low, usize::MAX)
                }
                rows => rows,
            };
            out.push(rows.map_err(|e| rocks_err("reading state from the state store", e))?);
        }
        Ok(out)
    }

    /// Up to `limit` values under `prefix` whose keys (after `prefix`) come after `after` (from
    /// the first when `None`), in key order; keys after `prefix`.
    pub fn values_after(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = self.store.cf(STATE_CF)?;
        let mut options = self.read_options();
        options.set_iterate_upper_bound(range_end(prefix));
        options.fill_cache(false);
        let mut it = self.store.db.raw_iterator_cf_opt(cf, options);
        seek_after(&mut it, prefix, after, prefix);
        let mut out = Vec::new();
        while out.len() < limit
            && let (Some(k), Some(v)) = (it.key(), it.value())
        {
            out.push((k[prefix.len()..].to_vec(), v.to_vec()));
            it.next();
        }
        it.status()
            .map_err(|e| rocks_err("reading state from the state store", e))?;
        Ok(out)
    }

    /// Up to `limit` counted rows with a positive count whose keys (after `prefix`) start with
    /// `start` and, if `after` is given, come after it; in key order, keys after `prefix`.
    pub fn counts_after(
        &self,
        prefix: &[u8],
        start: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<CountedRows> {
        let cf = self.store.cf(ROWS_CF)?;
        let low = [prefix, start].concat();
        let mut options = self.read_options();
        options.set_iterate_upper_bound(range_end(&low));
        let mut it = self.store.db.raw_iterator_cf_opt(cf, options);
        seek_after(&mut it, prefix, after, &low);
        read_counts(&mut it, prefix, &low, limit)
            .map_err(|e| rocks_err("reading state from the state store", e))
    }
}

/// Positions `it` on the first key after `prefix` + `after` (exclusive), or at `start` when
/// there is no `after`.
fn seek_after(
    it: &mut rocksdb::DBRawIteratorWithThreadMode<'_, DB>,
    prefix: &[u8],
    after: Option<&[u8]>,
    start: &[u8],
) {
    match after {
        Some(after) => {
            let after = [prefix, after].concat();
            it.seek(&after);
            if it.key() == Some(after.as_slice()) {
                it.next();
            }
        }
        None => it.seek(start),
    }
}

/// Calls `f(key, value)` for every key of the part with `prefix` in family `cf`, in key order
/// (the key without the prefix), reading with `options` (e.g. at a snapshot).
fn scan_part(
    store: &StateStore,
    cf: &str,
    mut options: ReadOptions,
    prefix: &[u8; PREFIX_LEN],
    f: ValueVisitor<'_>,
) -> Result<()> {
    let cf = store.cf(cf)?;
    options.set_iterate_upper_bound(range_end(prefix));
    options.fill_cache(false);
    let mut it = store.db.raw_iterator_cf_opt(cf, options);
    it.seek(prefix);
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        f(&k[PREFIX_LEN..], v)?;
        it.next();
    }
    it.status()
        .map_err(|e| rocks_err("reading state from the state store", e))
}

/// Up to `limit` counted rows with a positive count from `it`'s position on, while keys start
/// with `within`; keys without `prefix`.
fn read_counts(
    it: &mut rocksdb::DBRawIteratorWithThreadMode<'_, DB>,
    prefix: &[u8],
    within: &[u8],
    limit: usize,
) -> std::result::Result<CountedRows, rocksdb::Error> {
    let mut out = Vec::new();
    while out.len() < limit && it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !k.starts_with(within) {
            break;
        }
        let n = count_of(v);
        if n > 0 {
            out.push((k[prefix.len()..].to_vec(), n));
        }
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// See [`StoreSnapshot::counts_with_starts`].
const MAX_HIDDEN_SKIP: u64 = 1024;

/// The first key after every key starting with `prefix` (which is never all 0xff here).
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < u8::MAX {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// A column family of `store` (all are created at open, so it exists).
fn family<'a>(store: &'a StateStore, name: &str) -> &'a ColumnFamily {
    store
        .db
        .cf_handle(name)
        .expect("column families are created when the store is opened")
}

/// The changes of one checkpoint, applied atomically by [`StateStore::write_checkpoint`].
///
/// Point changes are buffered and go into the write batch sorted by key (stably, so changes of
/// one key keep their order), before each range deletion and when the batch is written: a
/// memtable inserts keys in order far faster than in random order (its skip list reuses the
/// last insert's position). Operators hand over their changes in hash order, so unsorted, the
/// skip list inserts were most of a checkpoint's time under a heavy load.
pub struct StateBatch {
    store: Arc<StateStore>,
    batch: WriteBatch,
    /// Point changes since the last range deletion; keys and values in `arena`.
    ops: Vec<PointOp>,
    arena: Vec<u8>,
}

/// A buffered put, delete or merge: key at `arena[at..at + key_len]`, value right after it.
struct PointOp {
    at: usize,
    key_len: u32,
    value_len: u32,
    kind: OpKind,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum OpKind {
    /// In the `rows` family.
    Add,
    /// In the `state` family.
    Put,
    Delete,
}

impl OpKind {
    fn family(self) -> &'static str {
        match self {
            OpKind::Add => ROWS_CF,
            OpKind::Put | OpKind::Delete => STATE_CF,
        }
    }
}

impl StateBatch {
    /// Sets `key` (after `prefix`) to `value`.
    pub fn put(&mut self, prefix: &[u8], key: &[u8], value: &[u8]) {
        self.push(OpKind::Put, prefix, key, value);
    }

    pub fn delete(&mut self, prefix: &[u8], key: &[u8]) {
        self.push(OpKind::Delete, prefix, key, &[]);
    }

    /// Adds `n` to the count of row `key` (after `prefix`).
    pub fn add(&mut self, prefix: &[u8], key: &[u8], n: i64) {
        if n != 0 {
            self.push(OpKind::Add, prefix, key, &n.to_le_bytes());
        }
    }

    fn push(&mut self, kind: OpKind, prefix: &[u8], key: &[u8], value: &[u8]) {
        let at = self.arena.len();
        self.arena.extend_from_slice(prefix);
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        self.ops.push(PointOp {
            at,
            key_len: (prefix.len() + key.len()) as u32,
            value_len: value.len() as u32,
            kind,
        });
    }

    /// Moves the buffered point changes into the write batch, each family's in key order.
    fn write_ops(&mut self) {
        let arena = &self.arena;
        let key = |op: &PointOp| &arena[op.at..op.at + op.key_len as usize];
        // Stable: a key's changes keep their order.
        self.ops
            .sort_by(|a, b| (a.kind.family(), key(a)).cmp(&(b.kind.family(), key(b))));
        for op in &self.ops {
            let cf = family(&self.store, op.kind.family());
            let k = key(op);
            let end = op.at + op.key_len as usize;
            let value = &arena[end..end + op.value_len as usize];
            match op.kind {
                OpKind::Add => self.batch.merge_cf(cf, k, value),
                OpKind::Put => self.batch.put_cf(cf, k, value),
                OpKind::Delete => self.batch.delete_cf(cf, k),
            }
        }
        self.ops.clear();
        self.arena = Vec::new();
    }

    /// Deletes every key (rows and values) after `prefix` that starts with `start`.
    pub fn clear_prefix(&mut self, prefix: &[u8], start: &[u8]) {
        let low = [prefix, start].concat();
        let high = range_end(&low);
        self.clear_range(&low, &high);
    }

    /// Deletes every key (rows and values) of part `part` of object `id`.
    pub fn clear_part(&mut self, id: ObjectId, part: u32) {
        let prefix = part_prefix(id, part);
        self.clear_range(&prefix, &range_end(&prefix));
    }

    /// Deletes every key of object `id`.
    pub fn clear_object(&mut self, id: ObjectId) {
        let prefix = id.to_be_bytes();
        self.clear_range(&prefix, &range_end(&prefix));
    }

    /// Deletes every key of object `id` except those of the parts in `keep` (ascending).
    pub fn clear_object_except(&mut self, id: ObjectId, keep: &[u32]) {
        let mut from = id.to_be_bytes().to_vec();
        for part in keep {
            let prefix = part_prefix(id, *part);
            self.clear_range(&from, &prefix);
            from = range_end(&prefix);
        }
        let end = range_end(&id.to_be_bytes());
        self.clear_range(&from, &end);
    }

    /// Deletes the values of part `part` of object `id` with keys below `below` (after the
    /// prefix).
    pub fn clear_values_below(&mut self, id: ObjectId, part: u32, below: &[u8]) {
        let prefix = part_prefix(id, part);
        let end = [&prefix[..], below].concat();
        self.write_ops();
        let cf = family(&self.store, STATE_CF);
        self.batch.delete_range_cf(cf, prefix.to_vec(), end);
    }

    fn clear_range(&mut self, from: &[u8], to: &[u8]) {
        // It applies to the changes before it only.
        self.write_ops();
        for name in [ROWS_CF, STATE_CF] {
            let cf = family(&self.store, name);
            self.batch.delete_range_cf(cf, from, to);
        }
    }

    /// Bytes of changes in the batch (about: buffered changes without the batch's framing).
    pub fn size_in_bytes(&self) -> usize {
        self.batch.size_in_bytes() + self.arena.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.ops.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_checkpoints_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(StateStore::open(dir.path(), 4 << 20).unwrap());
            assert_eq!(store.checkpoint().unwrap(), None);
            let p = part_prefix(7, TABLE_ROWS);
            let mut b = store.batch();
            b.add(&p, b"a", 2);
            b.add(&p, b"b", 1);
            b.put(&part_prefix(7, 0), b"g", b"state");
            let meta = CheckpointMeta {
                version: CHECKPOINT_VERSION,
                lsn: 10,
                epoch: 10,
                ..Default::default()
            };
            store.write_checkpoint(b, &meta).unwrap();
            let mut b = store.batch();
            b.add(&p, b"a", -1);
            b.add(&p, b"b", -1);
            b.add(&part_prefix(8, TABLE_ROWS), b"x", 1);
            store
                .write_checkpoint(
                    b,
                    &CheckpointMeta {
                        lsn: 12,
                        ..meta.clone()
                    },
                )
                .unwrap();
        }
        let store = Arc::new(StateStore::open(dir.path(), 4 << 20).unwrap());
        assert_eq!(store.checkpoint().unwrap().unwrap().lsn, 12);
        let mut rows = Vec::new();
        store
            .scan_counts(7, TABLE_ROWS, &mut |k, n| {
                rows.push((k.to_vec(), n));
                Ok(())
            })
            .unwrap();
        assert_eq!(rows, vec![(b"a".to_vec(), 1)], "b's count reached 0");
        assert_eq!(store.stored_objects().unwrap(), vec![7, 8]);
        let mut b = store.batch();
        b.clear_object(7);
        store
            .write_checkpoint(b, &store.checkpoint().unwrap().unwrap())
            .unwrap();
        store.compact().unwrap();
        assert_eq!(store.stored_objects().unwrap(), vec![8]);
    }

    #[test]
    fn seeks_at_a_snapshot_do_not_walk_through_entries_written_after_it() {
        use rocksdb::perf::{PerfContext, PerfMetric, PerfStatsLevel, set_perf_stats};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path(), 4 << 20).unwrap());
        let p = part_prefix(7, TABLE_ROWS);
        let meta = CheckpointMeta {
            version: CHECKPOINT_VERSION,
            ..Default::default()
        };
        let mut b = store.batch();
        for i in 0..10 {
            b.add(&p, format!("a{i:04}").as_bytes(), 1);
        }
        b.add(&p, b"c", 2);
        store.write_checkpoint(b, &meta).unwrap();
        let snapshot = store.snapshot();
        // The next checkpoint (invisible to the snapshot): runs of keys after the absent ones
        // looked up below, in this part and in the next object's.
        let mut b = store.batch();
        for i in 0..20_000 {
            b.add(&p, format!("b{i:05}").as_bytes(), 1);
            b.add(&part_prefix(9, TABLE_ROWS), format!("{i:05}").as_bytes(), 1);
        }
        store.write_checkpoint(b, &meta).unwrap();

        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut perf = PerfContext::default();
        perf.reset();
        let starts: [&[u8]; 5] = [b"a0003", b"a5", b"b00001", b"c", b"d"];
        let found = snapshot.counts_with_starts(&p, &starts).unwrap();
        let skipped = perf.metric(PerfMetric::InternalRecentSkippedCount);
        set_perf_stats(PerfStatsLevel::Disable);
        assert_eq!(
            found,
            vec![
                vec![(b"a0003".to_vec(), 1)],
                vec![],
                vec![],
                vec![(b"c".to_vec(), 2)],
                vec![],
            ]
        );
        // Each absent start gives up after MAX_HIDDEN_SKIP entries, rather than stepping over
        // all 20,000 (or the next object's 20,000).
        assert!(
            skipped < 4 * MAX_HIDDEN_SKIP,
            "{skipped} invisible entries stepped over"
        );
    }

    #[test]
    fn a_batch_keeps_the_order_of_changes_to_a_key_and_of_range_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path(), 4 << 20).unwrap());
        let p = part_prefix(7, 0);
        let mut b = store.batch();
        b.put(&p, b"z", b"1");
        b.put(&p, b"a", b"1");
        b.delete(&p, b"a");
        b.delete(&p, b"b");
        b.put(&p, b"b", b"2");
        b.put(&p, b"b", b"3");
        b.add(&p, b"r", 5);
        b.add(&p, b"q", 1);
        b.clear_prefix(&p, b"q");
        b.add(&p, b"q", 2);
        b.add(&p, b"r", -1);
        store
            .write_checkpoint(
                b,
                &CheckpointMeta {
                    version: CHECKPOINT_VERSION,
                    ..Default::default()
                },
            )
            .unwrap();
        let mut values = Vec::new();
        store
            .scan_values(7, 0, &mut |k, v| {
                values.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            values,
            vec![
                (b"b".to_vec(), b"3".to_vec()),
                (b"z".to_vec(), b"1".to_vec())
            ]
        );
        let mut rows = Vec::new();
        store
            .scan_counts(7, 0, &mut |k, n| {
                rows.push((k.to_vec(), n));
                Ok(())
            })
            .unwrap();
        assert_eq!(rows, vec![(b"q".to_vec(), 2), (b"r".to_vec(), 4)]);
    }

    #[test]
    fn verify_reads_every_block_and_names_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = part_prefix(7, 0);
        let key = |i: u32| format!("{i:08}").into_bytes();
        {
            let store = Arc::new(StateStore::open(dir.path(), 4 << 20).unwrap());
            // Values that do not compress, so the file has many blocks.
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let mut b = store.batch();
            for i in 0..20_000 {
                let value: Vec<u8> = (0..100)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                b.put(&p, &key(i), &value);
            }
            store
                .write_checkpoint(b, &CheckpointMeta::default())
                .unwrap();
            let stop = std::sync::atomic::AtomicBool::new(false);
            assert!(store.verify(&stop).unwrap() > 2_000_000);
        }
        let sst = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sst"))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let mut bytes = std::fs::read(&sst).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&sst, bytes).unwrap();

        // Opening and reading elsewhere in the file work: only the check finds the damage.
        let store = Arc::new(StateStore::open(dir.path(), 4 << 20).unwrap());
        let first = store.snapshot().get_values(&p, &[&key(0)]).unwrap();
        assert!(first[0].is_some());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let err = store.verify(&stop).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::DATA_CORRUPTED);
        let name = sst.file_name().unwrap().to_str().unwrap();
        assert!(err.message.contains(name), "{}", err.message);
        // Stopped at once, it reads (almost) nothing and reports no error.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(store.verify(&stop).is_ok());
    }
}
