//! How much of the log may go without a durable checkpoint: what a restart after a crash
//! replays through the views, bounded in bytes (`--max-checkpoint-lag`) and in estimated
//! replay time (`--target-recovery-time`).
//!
//! A byte limit alone bounds replay time only for a given set of views: the same 64 MB of log
//! replays in well under a second through one cheap view and in several seconds through a
//! join, an aggregate and a top-k (5.2 s measured, docs/benchmarks.md). So the runtime times
//! every epoch it processes (`observe`) and keeps a decaying average of seconds per byte of
//! changes; the lag limit is the bytes that would replay within the target at that rate,
//! never above the byte limit and never below [`ReplayBudget::MIN_BYTES`] (so a slow view
//! slows writes down rather than stop them).
//!
//! Replay after a crash costs more than the same changes did live: the state they touch is
//! cold and read back from the store first (for a join key, both sides' rows). On the recovery
//! bench's views (an aggregate, a join, a top-k, every 100,000-row COPY touching every key)
//! two or three records of the log replayed at a third of the rate they were processed at
//! live, so the estimate is the live rate times [`ReplayBudget::COLD_FACTOR`].

use std::time::Duration;

use parking_lot::Mutex;

/// The lag limit, from the byte limit, the recovery-time target and the measured rate.
pub struct ReplayBudget {
    /// At most this many bytes (0: no byte limit).
    max_bytes: usize,
    /// At most this long to replay (zero: no time target).
    target: Duration,
    rate: Mutex<Rate>,
}

/// Exponentially decaying sums of epoch processing time and bytes processed.
#[derive(Default)]
struct Rate {
    secs: f64,
    bytes: f64,
}

impl ReplayBudget {
    /// The time target never pushes the limit below this.
    pub const MIN_BYTES: usize = 4 << 20;
    /// Older epochs' weight halves with every this many bytes processed since.
    const HALF_LIFE_BYTES: f64 = (64 << 20) as f64;
    /// Replay (cold state) against live processing (warm), measured (see above).
    const COLD_FACTOR: f64 = 3.0;
    /// No estimate until this many bytes were timed.
    const MIN_SAMPLE_BYTES: f64 = (1 << 20) as f64;

    pub fn new(max_bytes: usize, target: Duration) -> ReplayBudget {
        ReplayBudget {
            max_bytes,
            target,
            rate: Mutex::new(Rate::default()),
        }
    }

    /// The dataflows processed `bytes` of changes (their size in memory) in `took`.
    pub fn observe(&self, bytes: usize, took: Duration) {
        if bytes == 0 {
            return;
        }
        let mut rate = self.rate.lock();
        let decay = 0.5f64.powf(bytes as f64 / Self::HALF_LIFE_BYTES);
        rate.secs = rate.secs * decay + took.as_secs_f64();
        rate.bytes = rate.bytes * decay + bytes as f64;
    }

    /// Measured seconds per byte of changes, once enough was timed.
    fn secs_per_byte(&self) -> Option<f64> {
        let rate = self.rate.lock();
        (rate.bytes >= Self::MIN_SAMPLE_BYTES && rate.secs > 0.0)
            .then(|| rate.secs / rate.bytes * Self::COLD_FACTOR)
    }

    /// The lag limit in bytes now (0: none).
    pub fn limit(&self) -> usize {
        let by_time = match self.secs_per_byte() {
            Some(per_byte) if !self.target.is_zero() => {
                let bytes = self.target.as_secs_f64() / per_byte;
                Some((bytes.min(usize::MAX as f64) as usize).max(Self::MIN_BYTES))
            }
            _ => None,
        };
        match (self.max_bytes, by_time) {
            (0, None) => 0,
            (0, Some(t)) => t,
            (max, None) => max,
            (max, Some(t)) => max.min(t),
        }
    }

    /// How long replaying `bytes` of changes would take at the measured rate.
    pub fn estimate(&self, bytes: usize) -> Option<Duration> {
        self.secs_per_byte()
            .map(|per_byte| Duration::from_secs_f64(per_byte * bytes as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;

    #[test]
    fn the_limit_is_what_replays_within_the_target_between_the_floor_and_the_byte_limit() {
        let budget = ReplayBudget::new(64 * MB, Duration::from_secs(1));
        assert_eq!(
            budget.limit(),
            64 * MB,
            "nothing measured yet: the byte limit"
        );
        // 30 MB/s live, 10 MB/s replayed: 1 s of replay is 10 MB.
        budget.observe(60 * MB, Duration::from_secs(2));
        let limit = budget.limit();
        assert!((9 * MB..11 * MB).contains(&limit), "{limit}");
        let estimate = budget.estimate(5 * MB).unwrap();
        assert!((450..550).contains(&estimate.as_millis()), "{estimate:?}");
        // Much slower (the old rate decays away): the floor.
        budget.observe(200 * MB, Duration::from_secs(400));
        assert_eq!(budget.limit(), ReplayBudget::MIN_BYTES);
        // Much faster: the byte limit.
        budget.observe(1000 * MB, Duration::from_millis(100));
        assert_eq!(budget.limit(), 64 * MB);
    }

    #[test]
    fn either_bound_can_be_off() {
        let no_bytes = ReplayBudget::new(0, Duration::from_secs(1));
        assert_eq!(no_bytes.limit(), 0);
        no_bytes.observe(60 * MB, Duration::from_secs(2));
        assert!((9 * MB..11 * MB).contains(&no_bytes.limit()));
        let no_time = ReplayBudget::new(64 * MB, Duration::ZERO);
        no_time.observe(60 * MB, Duration::from_secs(2));
        assert_eq!(no_time.limit(), 64 * MB);
    }
}
