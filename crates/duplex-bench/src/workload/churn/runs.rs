//! The sequence numbers one subscription received on one channel, kept as
//! sorted half-open runs: in-order delivery extends the last run in place,
//! so the usual state is one run and no allocation per message.

/// How a received sequence number related to what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// Next after the last one, or the first.
    Next,
    /// Later than the next expected one: something in between is missing (so far).
    Gap,
    /// Earlier than one already received, and new.
    Reordered,
    /// Received before.
    Duplicate,
}

/// Received sequence numbers as sorted, disjoint, non-adjacent `[start, end)` runs.
#[derive(Debug, Default, Clone)]
pub(super) struct Runs {
    runs: Vec<(u64, u64)>,
}

impl Runs {
    /// Records `seq` (hot path: one comparison when in order).
    pub(super) fn observe(&mut self, seq: u64) -> Order {
        match self.runs.last_mut() {
            None => {
                self.runs.push((seq, seq + 1));
                Order::Next
            }
            Some(last) if last.1 == seq => {
                last.1 += 1;
                Order::Next
            }
            Some(last) if seq > last.1 => {
                self.runs.push((seq, seq + 1));
                Order::Gap
            }
            Some(_) => self.insert_earlier(seq),
        }
    }

    fn insert_earlier(&mut self, seq: u64) -> Order {
        // First run that ends after seq.
        let i = self.runs.partition_point(|r| r.1 <= seq);
        if let Some(r) = self.runs.get(i) {
            if r.0 <= seq {
                return Order::Duplicate;
            }
        }
        self.runs.insert(i, (seq, seq + 1));
        // Merge with the neighbours it now touches.
        if i + 1 < self.runs.len() && self.runs[i].1 == self.runs[i + 1].0 {
            self.runs[i].1 = self.runs[i + 1].1;
            self.runs.remove(i + 1);
        }
        if i > 0 && self.runs[i - 1].1 == self.runs[i].0 {
            self.runs[i - 1].1 = self.runs[i].1;
            self.runs.remove(i);
        }
        Order::Reordered
    }

    /// Whether `seq` was received.
    pub(super) fn contains(&self, seq: u64) -> bool {
        let i = self.runs.partition_point(|r| r.1 <= seq);
        self.runs.get(i).is_some_and(|r| r.0 <= seq)
    }

    /// Sequence numbers received.
    pub(super) fn count(&self) -> u64 {
        self.runs.iter().map(|r| r.1 - r.0).sum()
    }

    /// Gives back spare capacity (the record is kept until the end of the run).
    pub(super) fn shrink(&mut self) {
        self.runs.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_one_run() {
        let mut r = Runs::default();
        for s in 5..10 {
            assert_eq!(r.observe(s), Order::Next);
        }
        assert_eq!(r.runs, vec![(5, 10)]);
        assert!(r.contains(5) && r.contains(9) && !r.contains(10) && !r.contains(4));
        assert_eq!(r.count(), 5);
    }

    #[test]
    fn gaps_duplicates_and_late_arrivals() {
        let mut r = Runs::default();
        r.observe(1);
        assert_eq!(r.observe(4), Order::Gap);
        assert_eq!(r.observe(4 + 1), Order::Next);
        assert_eq!(r.observe(1), Order::Duplicate);
        assert_eq!(r.observe(4), Order::Duplicate);
        assert_eq!(r.observe(3), Order::Reordered);
        assert_eq!(r.runs, vec![(1, 2), (3, 6)]);
        assert_eq!(r.observe(2), Order::Reordered);
        assert_eq!(r.runs, vec![(1, 6)]);
        assert_eq!(r.observe(0), Order::Reordered);
        assert_eq!(r.runs, vec![(0, 6)]);
        assert_eq!(r.count(), 6);
        assert!(!r.contains(6));
    }
}
