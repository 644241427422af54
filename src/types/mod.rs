//! The data model shared by every layer: SQL column types, log positions and Z-set batches.
//!
//! A change is a row with a weight: +1 insert, -1 delete; an update is -1 old, +1 new. Many
//! changes travel together as a [`ZBatch`]: an Arrow `RecordBatch` of the table's columns plus an
//! `Int64` weight column. The internal log stores ZBatches; tables apply them; views (a later
//! issue) consume them.

mod sql_type;
mod zbatch;

pub use sql_type::{SqlType, parse_sql_type};
pub use zbatch::{WEIGHT_COLUMN, ZBatch};

/// Log sequence number: the position of one committed transaction in the internal log.
/// LSNs start at 1 and grow by one per committed transaction; 0 means "nothing yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
    /// Larger than every real LSN: "never" (e.g. a row that has not been deleted).
    pub const MAX: Lsn = Lsn(u64::MAX);

    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An epoch groups committed writes; barriers flow through dataflows per epoch (a later issue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

/// Identity of a catalog object; never reused, so log records of a dropped table are ignorable.
pub type ObjectId = u64;
