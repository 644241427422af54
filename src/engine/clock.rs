//! The engine's clock: what `now()` is in temporal filters.
//!
//! ```text
//!  commit ── clock.logged() ──► log record (commit time; the manual clock's value if manual)
//!  runtime: an epoch's time = max(its records' clock values, the previous epoch's time)
//!  temporal filter: rows enter and leave at times computed from their columns;
//!                   the runtime publishes the earliest such time it waits for
//!  ticker (system clock): at that time, if no write made an epoch since, append a tick —
//!                   an empty record — so the epoch that retracts the rows exists
//! ```
//!
//! The system clock is the default. A manual clock (`--clock manual[:start]`) only moves with
//! `ADVANCE CLOCK TO '…'` / `ADVANCE CLOCK BY '…'`, so tests of temporal filters are
//! deterministic; its value is logged with every record, so a restart replays the same times.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::{Result, sqlstate};
use crate::sql::temporal::parse_timestamp;

/// Which clock the engine reads (`--clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockSetting {
    /// The machine's clock.
    #[default]
    System,
    /// A clock that moves only when told, starting at this time (µs since 1970 UTC).
    Manual(i64),
}

impl std::str::FromStr for ClockSetting {
    type Err = String;

    /// `system`, `manual` (starting at 1970-01-01 00:00:00 UTC) or `manual:<timestamp>`
    /// (e.g. `manual:2025-01-01T00:00:00Z`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("system") {
            return Ok(ClockSetting::System);
        }
        let lower = s.to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix("manual") else {
            return Err(format!(
                "expected system, manual or manual:<timestamp>, not {s:?}"
            ));
        };
        match rest.strip_prefix(':') {
            None if rest.is_empty() => Ok(ClockSetting::Manual(0)),
            Some(start) => parse_timestamp(start.trim()).map(ClockSetting::Manual),
            None => Err(format!(
                "expected system, manual or manual:<timestamp>, not {s:?}"
            )),
        }
    }
}

/// µs since 1970 UTC of a system time.
pub fn micros_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Clock {
    /// The manual clock's value; `None` for the system clock.
    manual: Option<AtomicI64>,
}

impl Clock {
    pub fn new(setting: ClockSetting) -> Clock {
        Clock {
            manual: match setting {
                ClockSetting::System => None,
                ClockSetting::Manual(start) => Some(AtomicI64::new(start)),
            },
        }
    }

    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// The time now, µs since 1970 UTC.
    pub fn now(&self) -> i64 {
        match &self.manual {
            Some(m) => m.load(Ordering::SeqCst),
            None => micros_of(SystemTime::now()),
        }
    }

    /// The value to log with a record: the manual clock's (the record's commit time stands
    /// for the system clock).
    pub fn logged(&self) -> Option<i64> {
        self.manual.as_ref().map(|m| m.load(Ordering::SeqCst))
    }

    /// Moves a manual clock forward to `to` (never back).
    pub fn advance_to(&self, to: i64) -> Result<()> {
        let Some(manual) = &self.manual else {
            return Err(crate::err!(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "the server runs on the system clock; start it with --clock manual to advance the clock by hand"
            ));
        };
        let now = manual.load(Ordering::SeqCst);
        if to < now {
            return Err(crate::err!(
                sqlstate::INVALID_PARAMETER_VALUE,
                "the clock cannot move backwards (it is at {}, asked for {})",
                format_micros(now),
                format_micros(to)
            ));
        }
        manual.fetch_max(to, Ordering::SeqCst);
        Ok(())
    }

    /// After replaying the log: a manual clock never starts behind the times already logged.
    pub fn catch_up(&self, logged: i64) {
        if let Some(m) = &self.manual {
            m.fetch_max(logged, Ordering::SeqCst);
        }
    }
}

/// `now()` (and `current_timestamp`) in ad-hoc queries on a manual clock: its time, so that
/// `INSERT … VALUES (now())` stamps rows with the clock the views' temporal filters read.
#[derive(Debug)]
pub struct ManualNow {
    clock: std::sync::Arc<Clock>,
    signature: Signature,
    aliases: Vec<String>,
}

impl ManualNow {
    pub fn new(clock: std::sync::Arc<Clock>) -> ManualNow {
        ManualNow {
            clock,
            // Not Stable: the optimizer folds stable functions it can evaluate, which would turn
            // a view's temporal filter into a constant.
            signature: Signature::nullary(Volatility::Volatile),
            aliases: vec!["current_timestamp".into()],
        }
    }
}

impl PartialEq for ManualNow {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.clock, &other.clock)
    }
}

impl Eq for ManualNow {}

impl std::hash::Hash for ManualNow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "now".hash(state);
    }
}

impl ScalarUDFImpl for ManualNow {
    fn name(&self) -> &str {
        "now"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(now_type())
    }

    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
            Some(self.clock.now().saturating_mul(1000)),
            Some("+00:00".into()),
        )))
    }
}

/// What `now()` returns: a UTC timestamp in nanoseconds, as DataFusion's own.
fn now_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
}

/// `2025-01-01 00:00:00.000000` (UTC) for messages.
pub fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.f").to_string())
        .unwrap_or_else(|| format!("{micros} µs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!("system".parse(), Ok(ClockSetting::System));
        assert_eq!("manual".parse(), Ok(ClockSetting::Manual(0)));
        assert_eq!(
            "manual:2025-01-01 00:00:01".parse(),
            Ok(ClockSetting::Manual(1_735_689_601_000_000))
        );
        assert!("manual:yesterday".parse::<ClockSetting>().is_err());
        assert!("sundial".parse::<ClockSetting>().is_err());
    }

    #[test]
    fn a_manual_clock_moves_only_forward_and_only_when_told() {
        let clock = Clock::new(ClockSetting::Manual(100));
        assert_eq!((clock.now(), clock.logged()), (100, Some(100)));
        clock.advance_to(150).unwrap();
        assert_eq!(clock.now(), 150);
        let back = clock.advance_to(120).unwrap_err();
        assert_eq!(back.sqlstate, sqlstate::INVALID_PARAMETER_VALUE);
        clock.catch_up(90);
        assert_eq!(clock.now(), 150);
        let system = Clock::new(ClockSetting::System);
        assert_eq!(system.logged(), None);
        assert!(system.advance_to(0).is_err());
    }
}
