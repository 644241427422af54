//! Operator state: the containers operators keep it in, and how it reaches durable storage.
//!
//! State lives in memory. At a checkpoint (between epochs) every stateful operator writes how
//! its state changed since the previous one into a [`StateSink`] as key-value entries of two
//! kinds: plain values ([`StateSink::put`], e.g. an aggregate group's accumulators) and counted
//! rows ([`StateSink::add`], a multiset such as one side of a join: a change just adds the
//! row's weight, so nothing needs reading back). The runtime prefixes the keys with the dataflow
//! and node and stores them in RocksDB ([`crate::storage::state`]); at restart a fresh operator
//! reads them back through a [`StateSource`]. Keys and values use Arrow's row format and the
//! little-endian encoding of [`StateWriter`], decoded with the operator's own converters.
//! [`CountLog`] records counted-row changes as they happen, cheaply, until the next checkpoint.
//!
//! [`Arrangement`]: rows indexed by a key, with weights — one side of a join. Rows and keys are
//! kept in Arrow's row format in one byte arena (no allocation per row); a hash table maps a key
//! to its bucket of rows.

use std::borrow::Borrow;
use std::cmp::Ordering;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::row::{Row, RowConverter};
use hashbrown::HashTable;

use crate::error::Result;

/// Stored values read back: (key after the prefix, value).
pub type StoredValues = Vec<(Vec<u8>, Vec<u8>)>;
pub use crate::storage::state::{CountVisitor, CountedRows, ValueVisitor};

/// A value in Arrow's row format, stored inline when short (numbers, dates, short strings), so
/// multisets of values need no allocation per value. Orders and hashes as its bytes.
#[derive(Clone)]
pub enum ValueKey {
    Inline { len: u8, bytes: [u8; 22] },
    Heap(Box<[u8]>),
}

impl ValueKey {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ValueKey::Inline { len, bytes } => &bytes[..*len as usize],
            ValueKey::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for ValueKey {
    fn from(b: &[u8]) -> Self {
        if b.len() <= 22 {
            let mut bytes = [0u8; 22];
            bytes[..b.len()].copy_from_slice(b);
            ValueKey::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            ValueKey::Heap(b.into())
        }
    }
}

impl Borrow<[u8]> for ValueKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for ValueKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for ValueKey {}
impl PartialOrd for ValueKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ValueKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            // Zero-padded inline bytes compare as two big-endian integers, then by length
            // (a proper prefix sorts first): the same order as the byte strings, without a
            // memcmp call.
            (ValueKey::Inline { len: la, bytes: a }, ValueKey::Inline { len: lb, bytes: b }) => {
                inline_words(a).cmp(&inline_words(b)).then(la.cmp(lb))
            }
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

fn inline_words(b: &[u8; 22]) -> (u128, u64) {
    let mut head = [0u8; 16];
    head.copy_from_slice(&b[..16]);
    let mut tail = [0u8; 8];
    tail[..6].copy_from_slice(&b[16..]);
    (u128::from_be_bytes(head), u64::from_be_bytes(tail))
}
impl std::hash::Hash for ValueKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

/// An ordered multiset of values (one group's min/max, DISTINCT or argument rows): a sorted
/// vector while small — one allocation, contiguous, binary-searched — and a B-tree once it
/// grows.
#[derive(Clone)]
pub enum ValueSet {
    Small(Vec<(ValueKey, i64)>),
    Large(std::collections::BTreeMap<ValueKey, i64>),
}

impl Default for ValueSet {
    fn default() -> Self {
        ValueSet::Small(Vec::new())
    }
}

impl ValueSet {
    const SMALL: usize = 256;

    /// Adds `w` to the multiplicity of `value`, removing it at zero.
    pub fn add(&mut self, value: &[u8], w: i64) {
        if w == 0 {
            return;
        }
        let probe = ValueKey::from(value);
        match self {
            ValueSet::Small(v) => match v.binary_search_by(|(k, _)| k.cmp(&probe)) {
                Ok(i) => {
                    v[i].1 += w;
                    if v[i].1 == 0 {
                        v.remove(i);
                    }
                }
                Err(i) => {
                    v.insert(i, (probe, w));
                    if v.len() > Self::SMALL {
                        *self = ValueSet::Large(std::mem::take(v).into_iter().collect());
                    }
                }
            },
            ValueSet::Large(m) => {
                if let Some(n) = m.get_mut(&probe) {
                    *n += w;
                    if *n == 0 {
                        m.remove(&probe);
                    }
                } else {
                    m.insert(probe, w);
                }
            }
        }
    }

    /// Number of distinct values.
    pub fn len(&self) -> usize {
        match self {
            ValueSet::Small(v) => v.len(),
            ValueSet::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value with its multiplicity, in order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], i64)> + '_> {
        match self {
            ValueSet::Small(v) => Box::new(v.iter().map(|(k, n)| (k.as_bytes(), *n))),
            ValueSet::Large(m) => Box::new(m.iter().map(|(k, n)| (k.as_bytes(), *n))),
        }
    }

    pub fn first(&self) -> Option<&[u8]> {
        match self {
            ValueSet::Small(v) => v.first().map(|(k, _)| k.as_bytes()),
            ValueSet::Large(m) => m.keys().next().map(|k| k.as_bytes()),
        }
    }

    pub fn last(&self) -> Option<&[u8]> {
        match self {
            ValueSet::Small(v) => v.last().map(|(k, _)| k.as_bytes()),
            ValueSet::Large(m) => m.keys().next_back().map(|k| k.as_bytes()),
        }
    }
}

/// Where an operator writes its state changes at a checkpoint. Keys are the operator's own.
pub trait StateSink {
    /// Sets the value under `key`.
    fn put(&mut self, key: &[u8], value: &[u8]);
    /// Removes the value under `key`.
    fn delete(&mut self, key: &[u8]);
    /// Adds `n` to the count of the row `key` (a row whose count reaches 0 is gone).
    fn add(&mut self, key: &[u8], n: i64);
    /// Removes every value and counted row whose key starts with `start`.
    fn clear_prefix(&mut self, start: &[u8]);
}

/// An operator's stored state, read back at restart.
pub trait StateSource {
    /// Every value, in key order.
    fn values(&self, f: ValueVisitor<'_>) -> Result<()>;
    /// Every row with a positive count, in key order.
    fn counts(&self, f: CountVisitor<'_>) -> Result<()>;
}

/// Point reads of an operator's stored state, for operators that keep only part of it in
/// memory (see [`crate::dataflow::Operator::attach`]): what the last durable checkpoint holds.
pub trait StateLookup: Send {
    /// The values stored under `keys`, in order; `None` where there is none.
    fn values(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Up to `limit` values (key, value) whose keys come after `after` (all from the first
    /// when `None`), in key order: for sweeping what is stored.
    fn values_after(&self, after: Option<&[u8]>, limit: usize) -> Result<StoredValues>;

    /// Up to `limit` counted rows with a positive count whose keys start with `start` and, if
    /// `after` is given, come after it, in key order.
    fn counts_after(&self, start: &[u8], after: Option<&[u8]>, limit: usize)
    -> Result<CountedRows>;

    /// For each of `starts` (ascending), every counted row with a positive count whose key
    /// starts with it.
    fn counts_with_starts(&self, starts: &[&[u8]]) -> Result<Vec<CountedRows>> {
        starts
            .iter()
            .map(|s| self.counts_after(s, None, usize::MAX))
            .collect()
    }
}

/// Writes the counted rows of an operator that keeps its state as rows with weights: with
/// `full`, every row of `all` (over a part the runtime cleared); else each row's change of
/// weight since the last checkpoint, drained from `unsaved`.
pub fn checkpoint_counted_rows<'a>(
    full: bool,
    unsaved: &mut std::collections::HashMap<Box<[u8]>, i64>,
    all: impl Iterator<Item = (&'a [u8], i64)>,
    sink: &mut dyn StateSink,
) {
    if full {
        unsaved.clear();
        for (row, w) in all {
            sink.add(row, w);
        }
        return;
    }
    for (row, n) in unsaved.drain() {
        if n != 0 {
            sink.add(&row, n);
        }
    }
}

/// A [`MemoryState`] shared with an operator that reads it back (tests).
impl StateLookup for std::sync::Arc<parking_lot::Mutex<MemoryState>> {
    fn values(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let state = self.lock();
        Ok(keys.iter().map(|k| state.values.get(*k).cloned()).collect())
    }

    fn values_after(&self, after: Option<&[u8]>, limit: usize) -> Result<StoredValues> {
        use std::ops::Bound;
        let state = self.lock();
        let low = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Unbounded,
        };
        Ok(state
            .values
            .range((low, Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn counts_after(
        &self,
        start: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<CountedRows> {
        use std::ops::Bound;
        let state = self.lock();
        let low = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(start.to_vec()),
        };
        Ok(state
            .counts
            .range((low, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(start))
            .filter(|(_, n)| **n > 0)
            .take(limit)
            .map(|(k, n)| (k.clone(), *n))
            .collect())
    }
}

/// State kept in memory: a [`StateSink`] and [`StateSource`] for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryState {
    pub values: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    pub counts: std::collections::BTreeMap<Vec<u8>, i64>,
}

impl StateSink for MemoryState {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.values.insert(key.to_vec(), value.to_vec());
    }
    fn delete(&mut self, key: &[u8]) {
        self.values.remove(key);
    }
    fn add(&mut self, key: &[u8], n: i64) {
        let c = self.counts.entry(key.to_vec()).or_insert(0);
        *c += n;
        if *c == 0 {
            self.counts.remove(key);
        }
    }
    fn clear_prefix(&mut self, start: &[u8]) {
        self.values.retain(|k, _| !k.starts_with(start));
        self.counts.retain(|k, _| !k.starts_with(start));
    }
}

impl StateSource for MemoryState {
    fn values(&self, f: ValueVisitor<'_>) -> Result<()> {
        self.values.iter().try_for_each(|(k, v)| f(k, v))
    }
    fn counts(&self, f: CountVisitor<'_>) -> Result<()> {
        self.counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .try_for_each(|(k, n)| f(k, *n))
    }
}

/// Changes to counted rows since the last checkpoint: keys made of length-prefixed parts, each
/// with a weight, in one byte arena (no allocation per change).
#[derive(Default)]
pub struct CountLog {
    bytes: Vec<u8>,
    entries: Vec<(usize, usize, i64)>,
}

impl CountLog {
    /// Records `n` more of the row whose key is `parts` (see [`key_parts`]).
    pub fn push(&mut self, parts: &[&[u8]], n: i64) {
        let start = self.bytes.len();
        append_key(&mut self.bytes, parts);
        self.entries.push((start, self.bytes.len(), n));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `n` more of the row whose key `write` appends.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>), n: i64) {
        let start = self.bytes.len();
        write(&mut self.bytes);
        self.entries.push((start, self.bytes.len(), n));
    }

    /// Writes every recorded change into `sink` and forgets them.
    pub fn drain_into(&mut self, sink: &mut dyn StateSink) {
        for (start, end, n) in self.entries.drain(..) {
            sink.add(&self.bytes[start..end], n);
        }
        self.bytes.clear();
    }

    /// Forgets every recorded change (a full checkpoint writes everything anyway).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes.clear();
    }
}

/// Appends a key made of `parts`: each but the last prefixed with its length (u32 big-endian),
/// so keys sharing leading parts sort together and split back apart with [`key_parts`].
pub fn append_key(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for (i, part) in parts.iter().enumerate() {
        if i + 1 < parts.len() {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        }
        out.extend_from_slice(part);
    }
}

/// A key made of `parts` (see [`append_key`]).
pub fn make_key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    append_key(&mut out, parts);
    out
}

/// Splits a key written by [`append_key`] back into `N` parts; malformed keys are corruption.
pub fn key_parts<const N: usize>(key: &[u8]) -> Result<[&[u8]; N]> {
    let corrupt = || {
        crate::err!(
            crate::error::sqlstate::DATA_CORRUPTED,
            "a stored state key is malformed"
        )
    };
    let mut parts = [&key[..0]; N];
    let mut rest = key;
    for (i, slot) in parts.iter_mut().enumerate() {
        if i + 1 == N {
            *slot = rest;
            break;
        }
        let len = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(corrupt)? as usize;
        *slot = rest.get(4..4 + len).ok_or_else(corrupt)?;
        rest = &rest[4 + len..];
    }
    Ok(parts)
}

/// Encodes scalar pieces of operator state (little-endian) into one byte string.
#[derive(Default)]
pub struct StateWriter(Vec<u8>);

impl StateWriter {
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i128(&mut self, v: i128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads what a [`StateWriter`] wrote; a short or malformed buffer is corruption.
pub struct StateReader<'a> {
    buf: &'a [u8],
}

impl<'a> StateReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        StateReader { buf }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(crate::err!(
                crate::error::sqlstate::DATA_CORRUPTED,
                "operator state is truncated"
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_le_bytes(
            self.take(16)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default());
        self.take(len as usize)
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Id of a row in an [`Arrangement`]; stable while the row is live.
pub type RowId = u32;

/// End of a bucket's row list.
const NONE: RowId = RowId::MAX;

struct Bucket {
    hash: u64,
    /// The key (inline when short, so a probe touches one cache line).
    key: ValueKey,
    /// First row of the bucket's list (rows link through `Arrangement::next`).
    head: RowId,
}

/// Rows grouped by key, each with a weight and a match count (used by outer, semi and anti
/// joins: how many rows of the other side it currently joins with).
///
/// Layout: buckets (one per distinct key, the key inline when short) sit directly in the hash
/// table and hold the head of an intrusive list of their rows; rows live in a byte arena
/// (Arrow row format). Inserting a row allocates nothing of its own; the arena is compacted
/// when most of it is garbage.
pub struct Arrangement {
    converter: RowConverter,
    table: HashTable<Bucket>,
    arena: Vec<u8>,
    offsets: Vec<(usize, u32)>,
    next: Vec<RowId>,
    weights: Vec<i64>,
    matches: Vec<i64>,
    free_rows: Vec<RowId>,
    live_rows: usize,
    live_bytes: usize,
}

/// The rows of one bucket.
pub struct BucketRows<'a> {
    next: &'a [RowId],
    at: RowId,
}

impl Iterator for BucketRows<'_> {
    type Item = RowId;
    fn next(&mut self) -> Option<RowId> {
        if self.at == NONE {
            return None;
        }
        let id = self.at;
        self.at = self.next[id as usize];
        Some(id)
    }
}

impl Arrangement {
    /// `converter` encodes (and decodes) whole rows of this side.
    pub fn new(converter: RowConverter) -> Self {
        Arrangement {
            converter,
            table: HashTable::new(),
            arena: Vec::new(),
            offsets: Vec::new(),
            next: Vec::new(),
            weights: Vec::new(),
            matches: Vec::new(),
            free_rows: Vec::new(),
            live_rows: 0,
            live_bytes: 0,
        }
    }

    pub fn converter(&self) -> &RowConverter {
        &self.converter
    }

    pub fn live_rows(&self) -> usize {
        self.live_rows
    }

    /// Rows with this key.
    pub fn lookup(&self, hash: u64, key: &[u8]) -> BucketRows<'_> {
        let at = self
            .table
            .find(hash, |b| b.key.as_bytes() == key)
            .map_or(NONE, |b| b.head);
        BucketRows {
            next: &self.next,
            at,
        }
    }

    pub fn row(&self, id: RowId) -> &[u8] {
        let (start, len) = self.offsets[id as usize];
        &self.arena[start..start + len as usize]
    }

    pub fn weight(&self, id: RowId) -> i64 {
        self.weights[id as usize]
    }

    pub fn matches(&self, id: RowId) -> i64 {
        self.matches[id as usize]
    }

    pub fn add_matches(&mut self, id: RowId, delta: i64) {
        self.matches[id as usize] += delta;
    }

    /// Every live row with its bucket's hash and key (for checkpoints).
    pub fn entries(&self) -> impl Iterator<Item = (u64, &[u8], RowId)> + '_ {
        self.table.iter().flat_map(|b| {
            BucketRows {
                next: &self.next,
                at: b.head,
            }
            .map(move |id| (b.hash, b.key.as_bytes(), id))
        })
    }

    /// Every key with rows, with its hash.
    pub fn keys(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.table.iter().map(|b| (b.hash, b.key.as_bytes()))
    }

    /// Every live row (for rare whole-side recomputations).
    pub fn all_rows(&self) -> impl Iterator<Item = RowId> + '_ {
        self.table.iter().flat_map(|b| BucketRows {
            next: &self.next,
            at: b.head,
        })
    }

    /// Adds `weight` copies of `row` under `key`. A positive weight adds a new entry (with
    /// `matches`); a negative one is taken from live entries with equal bytes. Fails if there
    /// are not enough (the input was not a valid collection: a bug upstream).
    pub fn update(
        &mut self,
        hash: u64,
        key: &[u8],
        row: &[u8],
        weight: i64,
        matches: i64,
    ) -> Result<()> {
        let missing = || crate::internal!("join state: deleting a row that is not there");
        if weight > 0 {
            let id = self.alloc_row(row, weight, matches);
            match self.table.find_mut(hash, |b| b.key.as_bytes() == key) {
                Some(bucket) => {
                    self.next[id as usize] = bucket.head;
                    bucket.head = id;
                }
                None => {
                    self.table.insert_unique(
                        hash,
                        Bucket {
                            hash,
                            key: key.into(),
                            head: id,
                        },
                        |b| b.hash,
                    );
                }
            }
            return Ok(());
        }
        let mut remaining = -weight;
        let mut head = self
            .table
            .find(hash, |b| b.key.as_bytes() == key)
            .ok_or_else(missing)?
            .head;
        let mut prev = NONE;
        let mut at = head;
        while remaining > 0 {
            if at == NONE {
                return Err(missing());
            }
            let next = self.next[at as usize];
            if self.row(at) == row {
                let take = remaining.min(self.weights[at as usize]);
                self.weights[at as usize] -= take;
                remaining -= take;
                if self.weights[at as usize] == 0 {
                    // Unlink and free; `prev` stays.
                    if prev == NONE {
                        head = next;
                    } else {
                        self.next[prev as usize] = next;
                    }
                    self.free_row(at);
                    at = next;
                    continue;
                }
            }
            prev = at;
            at = next;
        }
        if let Ok(entry) = self.table.find_entry(hash, |b| b.key.as_bytes() == key) {
            if head == NONE {
                entry.remove();
            } else {
                entry.into_mut().head = head;
            }
        }
        self.maybe_compact();
        Ok(())
    }

    /// Removes every row with this key (evicting it from memory).
    pub fn remove_key(&mut self, hash: u64, key: &[u8]) {
        let Ok(entry) = self.table.find_entry(hash, |b| b.key.as_bytes() == key) else {
            return;
        };
        let (bucket, _) = entry.remove();
        let mut at = bucket.head;
        while at != NONE {
            let next = self.next[at as usize];
            self.free_row(at);
            at = next;
        }
        self.maybe_compact();
    }

    /// Approximate bytes in memory: rows, their per-row slots, buckets.
    pub fn bytes(&self) -> usize {
        self.live_bytes + self.live_rows * 40 + self.table.len() * 48
    }

    fn alloc_row(&mut self, row: &[u8], weight: i64, matches: i64) -> RowId {
        let start = self.arena.len();
        self.arena.extend_from_slice(row);
        self.live_rows += 1;
        self.live_bytes += row.len();
        let entry = (start, row.len() as u32);
        match self.free_rows.pop() {
            Some(id) => {
                self.offsets[id as usize] = entry;
                self.weights[id as usize] = weight;
                self.matches[id as usize] = matches;
                self.next[id as usize] = NONE;
                id
            }
            None => {
                self.offsets.push(entry);
                self.weights.push(weight);
                self.matches.push(matches);
                self.next.push(NONE);
                (self.offsets.len() - 1) as RowId
            }
        }
    }

    fn free_row(&mut self, id: RowId) {
        self.live_rows -= 1;
        self.live_bytes -= self.offsets[id as usize].1 as usize;
        self.offsets[id as usize] = (0, 0);
        self.matches[id as usize] = 0;
        self.next[id as usize] = NONE;
        self.free_rows.push(id);
    }

    /// Rewrites the arena once most of it is garbage.
    fn maybe_compact(&mut self) {
        if self.arena.len() > 1 << 20 && self.live_bytes * 2 < self.arena.len() {
            let mut arena = Vec::with_capacity(self.live_bytes * 3 / 2);
            let ids: Vec<RowId> = self.all_rows().collect();
            for id in ids {
                let (start, len) = self.offsets[id as usize];
                let new_start = arena.len();
                arena.extend_from_slice(&self.arena[start..start + len as usize]);
                self.offsets[id as usize] = (new_start, len);
            }
            self.arena = arena;
        }
    }

    /// The rows `ids` as Arrow columns.
    pub fn decode(&self, ids: &[RowId]) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        let rows: Vec<Row<'_>> = ids.iter().map(|id| parser.parse(self.row(*id))).collect();
        Ok(self.converter.convert_rows(rows)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::arrow::row::SortField;
    use std::sync::Arc;

    #[test]
    fn weights_add_and_cancel() {
        let conv = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let rows = conv
            .convert_columns(&[Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef])
            .unwrap();
        let mut a = Arrangement::new(conv);
        let (r1, r2) = (rows.row(0), rows.row(1));
        a.update(7, b"k", r1.as_ref(), 2, 0).unwrap();
        a.update(7, b"k", r2.as_ref(), 1, 0).unwrap();
        assert_eq!(a.lookup(7, b"k").count(), 2);
        a.update(7, b"k", r1.as_ref(), -1, 0).unwrap();
        assert_eq!(a.live_rows(), 2);
        a.update(7, b"k", r1.as_ref(), -1, 0).unwrap();
        a.update(7, b"k", r2.as_ref(), -1, 0).unwrap();
        assert_eq!(a.lookup(7, b"k").count(), 0);
        assert!(a.update(7, b"k", r2.as_ref(), -1, 0).is_err());
    }

    #[test]
    fn compaction_keeps_live_rows_readable() {
        let conv = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let values: Vec<i64> = (0..100_000).collect();
        let rows = conv
            .convert_columns(&[Arc::new(Int64Array::from(values)) as ArrayRef])
            .unwrap();
        let mut a = Arrangement::new(conv);
        let key = |i: usize| ((i % 1000) as u64, (i % 1000).to_be_bytes());
        for i in 0..100_000 {
            let (h, k) = key(i);
            a.update(h, &k, rows.row(i).as_ref(), 1, 0).unwrap();
        }
        for i in (0..100_000).filter(|i| i % 10 != 0) {
            let (h, k) = key(i);
            a.update(h, &k, rows.row(i).as_ref(), -1, 0).unwrap();
        }
        assert_eq!(a.live_rows(), 10_000);
        let (h, k) = key(20);
        let found: Vec<Vec<u8>> = a.lookup(h, &k).map(|id| a.row(id).to_vec()).collect();
        assert_eq!(found.len(), 100, "rows 20, 1020, …, 99020 are under key 20");
        assert!(
            found
                .iter()
                .any(|r| r.as_slice() == rows.row(99_020).as_ref())
        );
    }

    #[test]
    fn value_keys_order_as_their_bytes() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1],
            vec![1, 255],
            vec![255; 22],
            vec![255; 23],
            vec![7; 16],
            [vec![7; 16], vec![0]].concat(),
            [vec![7; 16], vec![1]].concat(),
        ];
        for a in &keys {
            for b in &keys {
                let (ka, kb) = (ValueKey::from(&a[..]), ValueKey::from(&b[..]));
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn value_set_keeps_order_across_its_two_forms() {
        let mut set = ValueSet::default();
        for v in (0u16..600).rev() {
            set.add(&v.to_be_bytes(), 1);
        }
        assert!(matches!(set, ValueSet::Large(_)));
        assert_eq!(set.first(), Some(&0u16.to_be_bytes()[..]));
        assert_eq!(set.last(), Some(&599u16.to_be_bytes()[..]));
        set.add(&599u16.to_be_bytes(), -1);
        set.add(&0u16.to_be_bytes(), -1);
        assert_eq!(set.first(), Some(&1u16.to_be_bytes()[..]));
        assert_eq!(set.last(), Some(&598u16.to_be_bytes()[..]));
        let mut small = ValueSet::default();
        small.add(b"b", 2);
        small.add(b"a", 1);
        small.add(b"a", -1);
        assert_eq!(small.first(), Some(&b"b"[..]));
        small.add(b"b", -2);
        assert_eq!(small.first(), None);
    }
}

/// Key prefixes of state an operator freed (behind a watermark): each is cleared from the
/// store by the next checkpoint, and again by every full one until a checkpoint is durable.
#[derive(Default)]
pub struct FreedPrefixes {
    pending: Vec<Vec<u8>>,
    in_flight: Vec<Vec<u8>>,
}

impl FreedPrefixes {
    pub fn push(&mut self, prefix: Vec<u8>) {
        self.pending.push(prefix);
    }

    /// Clears the freed prefixes in `sink`, after whatever the checkpoint already wrote.
    /// `tracked`: the operator is told when checkpoints are durable ([`Self::durable`]);
    /// otherwise (temporary dataflows) a full checkpoint rewrites everything anyway.
    pub fn write(&mut self, full: bool, tracked: bool, sink: &mut dyn super::StateSink) {
        if full {
            let mut again = std::mem::take(&mut self.in_flight);
            again.append(&mut self.pending);
            self.pending = again;
        }
        for prefix in &self.pending {
            sink.clear_prefix(prefix);
        }
        if tracked {
            self.in_flight.append(&mut self.pending);
        } else {
            self.pending.clear();
        }
    }

    /// Forgets what was written to a checkpoint that is durable.
    pub fn durable(&mut self) {
        self.in_flight.clear();
    }

    /// Forgets everything (a full checkpoint over a cleared part).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.in_flight.clear();
    }
}
