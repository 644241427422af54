//! Committed epochs and the read points readers pin.
//!
//! An epoch is committed when every dataflow has processed it; it covers the log up to an LSN.
//! A statement reads at one [`ReadPin`]: tables at an LSN, views at an epoch. Collections merge
//! (and forget) history only below the oldest pin, so a pinned read point stays readable for as
//! long as the statement runs.
//!
//! Tables merge up to [`Epochs::lsn_horizon`], never past the committed epoch's LSN, so a reader
//! can always pin the latest committed epoch without a race: whatever it pins is at or above
//! every horizon used so far.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::error::{Result, sqlstate};
use crate::types::{Epoch, Lsn};

/// The latest committed epoch and the last log record it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    pub epoch: Epoch,
    pub lsn: Lsn,
}

#[derive(Default)]
struct Pins {
    committed: Committed,
    lsns: BTreeMap<Lsn, usize>,
    epochs: BTreeMap<Epoch, usize>,
}

/// Shared by the runtime (which commits epochs) and readers (which pin them).
pub struct Epochs {
    pins: Mutex<Pins>,
    watch: watch::Sender<Committed>,
}

impl Epochs {
    pub fn new(start: Committed) -> Arc<Epochs> {
        Arc::new(Epochs {
            pins: Mutex::new(Pins {
                committed: start,
                ..Pins::default()
            }),
            watch: watch::Sender::new(start),
        })
    }

    pub fn committed(&self) -> Committed {
        self.pins.lock().committed
    }

    /// Makes `c` the committed epoch (called by the runtime only; never goes backwards).
    pub fn publish(&self, c: Committed) {
        let mut pins = self.pins.lock();
        debug_assert!(c.epoch >= pins.committed.epoch && c.lsn >= pins.committed.lsn);
        pins.committed = c;
        drop(pins);
        self.watch.send_replace(c);
    }

    /// Follows the committed epoch (subscribers wait on it).
    pub fn watch(&self) -> watch::Receiver<Committed> {
        self.watch.subscribe()
    }

    /// Pins the latest committed epoch (and its LSN) for a statement that reads views.
    pub fn pin_committed(self: &Arc<Self>) -> ReadPin {
        let mut pins = self.pins.lock();
        let c = pins.committed;
        *pins.lsns.entry(c.lsn).or_insert(0) += 1;
        *pins.epochs.entry(c.epoch).or_insert(0) += 1;
        ReadPin {
            epoch: Some(c.epoch),
            lsn: c.lsn,
            epochs: self.clone(),
        }
    }

    /// Pins `lsn` (at or above the committed epoch's LSN: the durable LSN) for a statement that
    /// reads only tables.
    pub fn pin_lsn(self: &Arc<Self>, lsn: Lsn) -> ReadPin {
        let mut pins = self.pins.lock();
        let lsn = lsn.max(pins.committed.lsn);
        *pins.lsns.entry(lsn).or_insert(0) += 1;
        ReadPin {
            epoch: None,
            lsn,
            epochs: self.clone(),
        }
    }

    /// Tables may forget history at or below this LSN.
    pub fn lsn_horizon(&self) -> Lsn {
        let pins = self.pins.lock();
        let committed = pins.committed.lsn;
        pins.lsns
            .keys()
            .next()
            .map_or(committed, |l| (*l).min(committed))
    }

    /// View stores may forget history at or below this epoch.
    pub fn epoch_horizon(&self) -> Epoch {
        let pins = self.pins.lock();
        let committed = pins.committed.epoch;
        pins.epochs
            .keys()
            .next()
            .map_or(committed, |e| (*e).min(committed))
    }

    /// Waits until an epoch covering `lsn` is committed. Fails with 57014 after `timeout`.
    pub async fn wait_for(&self, lsn: Lsn, timeout: Duration) -> Result<Committed> {
        let mut rx = self.watch.subscribe();
        let wait = rx.wait_for(|c| c.lsn >= lsn);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(c)) => Ok(*c),
            Ok(Err(_)) => Err(crate::err!(
                sqlstate::QUERY_CANCELED,
                "the dataflow runtime stopped"
            )),
            Err(_) => Err(crate::err!(
                sqlstate::QUERY_CANCELED,
                "canceling statement: views did not reach the latest write within {} ms",
                timeout.as_millis()
            )
            .with_hint("The dataflows are behind; see the server log.")),
        }
    }

    fn unpin(&self, lsn: Lsn, epoch: Option<Epoch>) {
        let mut pins = self.pins.lock();
        release(&mut pins.lsns, lsn);
        if let Some(e) = epoch {
            release(&mut pins.epochs, e);
        }
    }
}

fn release<K: Ord>(map: &mut BTreeMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// A statement's read point: tables at `lsn`, views at `epoch` (when it reads views). Readable
/// until dropped.
pub struct ReadPin {
    pub epoch: Option<Epoch>,
    pub lsn: Lsn,
    epochs: Arc<Epochs>,
}

impl std::fmt::Debug for ReadPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadPin(lsn {}, epoch {:?})", self.lsn, self.epoch)
    }
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        self.epochs.unpin(self.lsn, self.epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_stay_below_pins() {
        let epochs = Epochs::new(Committed {
            epoch: Epoch(1),
            lsn: Lsn(10),
        });
        let pin = epochs.pin_committed();
        epochs.publish(Committed {
            epoch: Epoch(2),
            lsn: Lsn(20),
        });
        assert_eq!(epochs.lsn_horizon(), Lsn(10));
        assert_eq!(epochs.epoch_horizon(), Epoch(1));
        drop(pin);
        assert_eq!(epochs.lsn_horizon(), Lsn(20));
        assert_eq!(epochs.epoch_horizon(), Epoch(2));
        let table_pin = epochs.pin_lsn(Lsn(25));
        assert_eq!(epochs.lsn_horizon(), Lsn(20));
        drop(table_pin);
    }
}
