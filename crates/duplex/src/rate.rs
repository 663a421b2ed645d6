//! Token buckets refilled at `rate` per second up to `burst`: the
//! per-connection publish rate limit (over it a client is told, error 108 on
//! `/ws`, and one that keeps going after `burst` refusals in a row is closed
//! with 3004, so a flood costs the node a bounded amount of work), and the
//! per-address handshake rate in `limits`.

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
}

impl RateLimit {
    pub(crate) fn new(rate: u32) -> Self {
        let burst = f64::from(rate.max(1));
        RateLimit {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
            refused_in_row: 0,
        }
    }

    /// Whether the bucket has refilled completely (an idle client).
    pub(crate) fn is_full(&self) -> bool {
        let elapsed = self.last.elapsed().as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    pub(crate) fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Allow;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_row += 1;
        if f64::from(self.refused_in_row) > self.burst {
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
            (0..3).map(|_| limit.check_at(t)).collect::<Vec<_>>(),
            [Verdict::Allow; 3]
        );
        assert_eq!(
            (0..3).map(|_| limit.check_at(t)).collect::<Vec<_>>(),
            [Verdict::Refuse; 3]
        );
        assert_eq!(limit.check_at(t), Verdict::Close);
        let later = t + Duration::from_secs(1);
        assert_eq!(limit.check_at(later), Verdict::Allow, "refilled");
    }

    #[test]
    fn zero_means_off() {
        let mut limit = RateLimit::new(0);
        assert!((0..10_000).all(|_| limit.check() == Verdict::Allow));
    }
}
