//! The data model shared by every layer: SQL column types, log positions and Z-set batches.
//!
//! A change is a row with a weight: +1 insert, -1 delete; an update is -1 old, +1 new. Many
//! changes travel together as a [`ZBatch`]: an Arrow `RecordBatch` of the table's columns plus an
//! `Int64` weight column. The internal log stores ZBatches; tables apply them; views (a later
//! issue) consume them.

mod sql_type;
mod zbatch;

pub use sql_type::{SqlType, parse_sql_type};
pub use zbatch::{RowsToBatches, WEIGHT_COLUMN, ZBatch, row_converter};

use std::time::Duration;

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

/// An epoch groups committed writes; barriers flow through dataflows per epoch. An epoch is
/// named by the LSN of the last log record it covers, so epoch numbers grow with the log, are
/// the same after a restart, and "the view as of epoch e" means "the view over the log up to
/// LSN e" however records were grouped (which is what makes `SUBSCRIBE … AS OF e` resumable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

/// Identity of a catalog object; never reused, so log records of a dropped table are ignorable.
pub type ObjectId = u64;

/// A table's event-time watermark and how many late rows it refused, as of some log position
/// (see `engine::watermark`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableWatermark {
    pub table: ObjectId,
    /// µs since 1970 UTC; `None` until the table's first row.
    pub micros: Option<i64>,
    /// Rows refused as late since the table was created.
    pub late_rows: u64,
}

/// A duration with a unit, as PostgreSQL writes them: `250ms`, `10s`, `5min`, `1h`, `2d`
/// (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("invalid duration \"{text}\": expected a number and a unit such as 30s")
    })?;
    let seconds = match unit.trim().to_ascii_lowercase().as_str() {
        "us" | "microsecond" | "microseconds" => value / 1e6,
        "ms" | "millisecond" | "milliseconds" => value / 1e3,
        "" | "s" | "sec" | "secs" | "second" | "seconds" => value,
        "min" | "mins" | "minute" | "minutes" => value * 60.0,
        "h" | "hour" | "hours" => value * 3600.0,
        "d" | "day" | "days" => value * 86400.0,
        other => {
            return Err(format!(
                "invalid duration unit \"{other}\" in \"{text}\" (use us, ms, s, min, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration \"{text}\": {e}"))
}

/// Parses an amount of memory the way PostgreSQL's settings do — `512MB`, `4GB`, `64kB`
/// (multiples of 1024), also `MiB`/`GiB` and plain bytes — or as a share of the machine's
/// memory: `25%`.
pub fn parse_memory(text: &str) -> Result<usize, String> {
    let t = text.trim();
    if let Some(percent) = t.strip_suffix('%') {
        let p: f64 = percent
            .trim()
            .parse()
            .ok()
            .filter(|p| (0.0..=100.0).contains(p) && *p > 0.0)
            .ok_or_else(|| format!("invalid memory share \"{text}\": expected e.g. 25%"))?;
        return Ok((system_memory() as f64 * p / 100.0) as usize);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("invalid amount of memory \"{text}\": expected a number and a unit such as 512MB")
    })?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "kib" => 1 << 10,
        "mb" | "mib" => 1 << 20,
        "gb" | "gib" => 1 << 30,
        "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid memory unit \"{other}\" in \"{text}\" (use kB, MB, GB, TB or %)"
            ));
        }
    };
    Ok((value * scale as f64) as usize)
}

/// Bytes of memory this process may use: the machine's, or its control group's limit when
/// lower (containers). 4 GiB if neither can be read.
pub fn system_memory() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb << 10)
    });
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    match (total, limit) {
        (Some(t), Some(l)) => t.min(l),
        (Some(t), None) => t,
        (None, Some(l)) => l,
        (None, None) => 4 << 30,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_amounts_take_postgres_units_and_shares() {
        assert_eq!(parse_memory("512MB"), Ok(512 << 20));
        assert_eq!(parse_memory("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory("64kB"), Ok(64 << 10));
        assert_eq!(parse_memory("1000"), Ok(1000));
        assert_eq!(parse_memory("1.5GB"), Ok(3 << 29));
        let half = parse_memory("50%").unwrap();
        assert!(half > 0 && half <= system_memory());
        assert!(parse_memory("12 parsecs").is_err());
        assert!(parse_memory("150%").is_err());
        assert!(parse_memory("MB").is_err());
    }

    #[test]
    fn durations_take_postgres_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5 s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }
}
