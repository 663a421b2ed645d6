//! Exponential backoff with full jitter between retries against a backend,
//! so nodes that lost Redis together do not come back in lockstep, and a
//! loop that keeps failing waits instead of spinning.

use std::time::Duration;

/// Pauses that double from [`Backoff::FIRST`] up to a ceiling, each a
/// random part (half to all) of the current step.
#[derive(Debug)]
pub(crate) struct Backoff {
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// The first pause's ceiling.
    pub(crate) const FIRST: Duration = Duration::from_millis(50);

    /// Pauses that grow up to `max` (at least [`Self::FIRST`]).
    pub(crate) fn new(max: Duration) -> Self {
        Backoff {
            max,
            ceiling: Self::FIRST,
        }
    }

    /// The next pause, and the step doubled for the one after.
    pub(crate) fn next(&mut self) -> Duration {
        let pause = self.ceiling.mul_f64(rand::random_range(0.5..=1.0));
        self.ceiling = (self.ceiling * 2).min(self.max.max(Self::FIRST));
        pause
    }

    /// Back to the first step, after a success.
    pub(crate) fn reset(&mut self) {
        self.ceiling = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_ceiling_with_jitter_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(400));
        let first = b.next();
        assert!(first >= Duration::from_millis(25) && first <= Backoff::FIRST);
        for _ in 0..10 {
            assert!(b.next() <= Duration::from_millis(400));
        }
        assert!(b.next() >= Duration::from_millis(200));
        b.reset();
        assert!(b.next() <= Backoff::FIRST);
    }
}
