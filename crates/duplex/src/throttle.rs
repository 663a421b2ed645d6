//! Keeps repeated warnings from flooding the log: during a Redis outage
//! every publish fails, and one line per failure would bury everything
//! else. The counters in [`crate::stats`] stay exact; the log says how many
//! lines it skipped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Allows one event per interval and counts the rest.
#[derive(Debug)]
pub(crate) struct Throttle {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds since `start` of the last allowed event, plus one (0 = never).
    last: AtomicU64,
    skipped: AtomicU64,
}

impl Throttle {
    pub(crate) fn new(interval_ms: u64) -> Self {
        Throttle {
            start: Instant::now(),
            interval_ms,
            last: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(skipped since the last allowed event)` when this one may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Relaxed);
        if last != 0 && now < last + self.interval_ms {
            self.skipped.fetch_add(1, Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
        {
            self.skipped.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.skipped.swap(0, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_and_counts_the_rest() {
        let t = Throttle::new(60_000);
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        t.last.store(1, Relaxed);
        let t2 = Throttle {
            interval_ms: 0,
            ..t
        };
        assert_eq!(t2.allow(), Some(2));
    }
}
