//! Token buckets refilled at `rate` per second up to `burst`: the
//! per-connection publish rate limit (over it a client is told, error 108 on
//! `/ws`, and one that keeps going after `burst` refusals in a row is closed
//! with 3004, so a flood costs the node a bounded amount of work), the
//! per-address handshake rate in `limits`, and the byte budgets of messages
//! up to the backends (each message costs its bytes; see `node::upstream`).

use std::time::Instant;

/// What the session does with one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the limit.
    Allow,
    /// Over the limit: refuse this one.
    Refuse,
    /// Over the limit and not slowing down: close the connection.
    Close,
}

/// The bucket; `rate == 0` disables it.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused_in_row: u32,
    /// Refusals in a row after which [`Verdict::Close`]; 0 = never.
    patience: u32,
}

impl RateLimit {
    /// `rate` events per second, burst as large; closes after as many
    /// refusals in a row.
    pub(crate) fn new(rate: u32) -> Self {
        let burst = rate.max(1);
        Self::with_burst(u64::from(rate), u64::from(burst), burst)
    }

    /// A budget of `rate` units (bytes) per second holding up to `burst`,
    /// that closes after `patience` refusals in a row (0 = never).
    pub(crate) fn with_burst(rate: u64, burst: u64, patience: u32) -> Self {
        let burst = burst.max(1) as f64;
        RateLimit {
            rate: rate as f64,
            burst,
            tokens: burst,
            last: Instant::now(),
            refused_in_row: 0,
            patience,
        }
    }

    /// Whether the bucket has refilled completely (an idle client).
    pub(crate) fn is_full(&self) -> bool {
        let elapsed = self.last.elapsed().as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// One event.
    pub(crate) fn check(&mut self) -> Verdict {
        self.check_cost_at(1, Instant::now())
    }

    /// An event costing `cost` units (a message of `cost` bytes): allowed
    /// when the bucket holds that much (never into debt).
    pub(crate) fn check_cost(&mut self, cost: u64) -> Verdict {
        self.check_cost_at(cost, Instant::now())
    }

    /// Gives back what an allowed event took, when it did not happen after all.
    pub(crate) fn refund(&mut self, cost: u64) {
        if self.rate != 0.0 {
            self.tokens = (self.tokens + cost as f64).min(self.burst);
        }
    }

    fn check_cost_at(&mut self, cost: u64, now: Instant) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Allow;
        }
        let cost = cost as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            self.refused_in_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_row = self.refused_in_row.saturating_add(1);
        if self.patience > 0 && self.refused_in_row > self.patience {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refuse_then_close_and_refill() {
        let mut limit = RateLimit::new(3);
        let t = limit.last;
        assert_eq!(
            (0..3)
                .map(|_| limit.check_cost_at(1, t))
                .collect::<Vec<_>>(),
            [Verdict::Allow; 3]
        );
        assert_eq!(
            (0..3)
                .map(|_| limit.check_cost_at(1, t))
                .collect::<Vec<_>>(),
            [Verdict::Refuse; 3]
        );
        assert_eq!(limit.check_cost_at(1, t), Verdict::Close);
        let later = t + Duration::from_secs(1);
        assert_eq!(limit.check_cost_at(1, later), Verdict::Allow, "refilled");
    }

    #[test]
    fn byte_budget_lets_one_burst_through_then_refills_by_rate() {
        // 1000 bytes per second, a burst of one 4096-byte message.
        let mut budget = RateLimit::with_burst(1000, 4096, 2);
        let t = budget.last;
        assert_eq!(budget.check_cost_at(4096, t), Verdict::Allow);
        assert_eq!(budget.check_cost_at(1, t), Verdict::Refuse, "no debt");
        assert_eq!(budget.check_cost_at(1, t), Verdict::Refuse);
        assert_eq!(budget.check_cost_at(1, t), Verdict::Close, "patience 2");
        // Half a second refills 500 bytes; an allowed message ends the row.
        let half = t + Duration::from_millis(500);
        assert_eq!(budget.check_cost_at(500, half), Verdict::Allow, "refilled");
        assert_eq!(budget.check_cost_at(1, half), Verdict::Refuse, "row reset");
        budget.refund(500);
        assert_eq!(budget.check_cost_at(500, half), Verdict::Allow, "refunded");
        assert_eq!(budget.check_cost_at(1, half), Verdict::Refuse);
        let mut never = RateLimit::with_burst(10, 10, 0);
        let t = never.last;
        assert!((0..100).all(|_| never.check_cost_at(11, t) == Verdict::Refuse));
    }

    #[test]
    fn zero_means_off() {
        let mut limit = RateLimit::new(0);
        assert!((0..10_000).all(|_| limit.check() == Verdict::Allow));
    }
}
