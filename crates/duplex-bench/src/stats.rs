//! Delivery accounting: the latency histogram, and per subscriber the
//! received / duplicate / reordered counts from which loss follows.
//!
//! Every subscriber follows one stream of sequence numbers (the fan-out
//! channel, or its own channel), starting at 0. Messages published inside
//! the measured window (by their publish timestamp) are counted; warm-up
//! messages only feed the sequence tracking.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Gaps remembered per subscriber; older ones are forgotten (a late
/// arrival from a forgotten gap is then counted as a duplicate).
const MAX_GAPS: usize = 1024;

/// How one message relates to those seen before on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// The next expected sequence number, or a jump ahead (a gap).
    Ahead,
    /// Filled a gap left earlier: arrived after a later message.
    Reordered,
    /// Already seen.
    Duplicate,
}

/// Sequence tracking of one subscriber (small: a few words; the gap list
/// allocates only when messages go missing).
#[derive(Debug, Default, Clone)]
pub(crate) struct SubState {
    /// Connected and subscribed (only those are expected to receive).
    pub(crate) connected: bool,
    /// One past the highest sequence number seen.
    next: u64,
    /// Missing ranges `[start, end)` below `next`.
    gaps: Vec<(u64, u64)>,
    /// In-window messages received (duplicates included).
    pub(crate) received: u64,
    /// In-window duplicates.
    pub(crate) duplicates: u64,
    /// In-window late arrivals.
    pub(crate) reordered: u64,
}

impl SubState {
    /// Classifies `seq` and updates the tracking.
    pub(crate) fn observe(&mut self, seq: u64) -> Order {
        if seq >= self.next {
            if seq > self.next {
                if self.gaps.len() >= MAX_GAPS {
                    self.gaps.remove(0);
                }
                self.gaps.push((self.next, seq));
            }
            self.next = seq + 1;
            return Order::Ahead;
        }
        let Some(i) = self.gaps.iter().position(|&(s, e)| s <= seq && seq < e) else {
            return Order::Duplicate;
        };
        let (s, e) = self.gaps[i];
        match (seq == s, seq + 1 == e) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = seq + 1,
            (false, true) => self.gaps[i].1 = seq,
            (false, false) => {
                self.gaps[i].1 = seq;
                self.gaps.insert(i + 1, (seq + 1, e));
            }
        }
        Order::Reordered
    }
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50: u64,
    /// 90th percentile.
    pub(crate) p90: u64,
    /// 99th percentile.
    pub(crate) p99: u64,
    /// 99.9th percentile.
    pub(crate) p999: u64,
    /// Largest.
    pub(crate) max: u64,
    /// Mean, rounded.
    pub(crate) mean: u64,
}

/// Loss accounting summed over all subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Totals {
    /// Deliveries expected (per subscriber: messages published to its stream in the window).
    pub(crate) expected: u64,
    /// Deliveries received in the window, duplicates included.
    pub(crate) received: u64,
    /// Expected but never received.
    pub(crate) lost: u64,
    /// Received more than once.
    pub(crate) duplicates: u64,
    /// Received after a later message of the same stream.
    pub(crate) reordered: u64,
    /// Received though never published in the window (should stay 0).
    pub(crate) unexpected: u64,
    /// Subscribers that lost at least one message.
    pub(crate) subscribers_with_loss: u64,
}

/// Everything the receive path records; owned by the single receive thread.
#[derive(Debug)]
pub(crate) struct Stats {
    /// Per subscriber tracking.
    pub(crate) subs: Vec<SubState>,
    /// End-to-end latency of in-window, non-duplicate deliveries, µs:
    /// publish time to arrival at the client socket (kernel timestamp).
    pub(crate) latency: Histogram<u64>,
    /// Publish time to when this generator read the message, µs (adds the
    /// generator's own queueing).
    pub(crate) read_latency: Histogram<u64>,
    /// Measured window `[start, end)` in unix µs of publish time.
    pub(crate) window: (u64, u64),
    /// Payload messages published before the window (warm-up).
    pub(crate) warmup_received: u64,
    /// Payload messages published after the window.
    pub(crate) late_received: u64,
    /// Messages without a benchmark payload (replies, unknown pushes).
    pub(crate) other_messages: u64,
    /// Server pings answered (WebSocket and Pusher).
    pub(crate) pings: u64,
    /// In-window deliveries received so far (for the drain wait).
    pub(crate) window_received: u64,
    /// Lowest and highest in-window sequence numbers seen by anyone (what a
    /// `--listen-only` process expects, not knowing what was published).
    pub(crate) window_seqs: Option<(u64, u64)>,
    /// Errors by message.
    pub(crate) errors: Errors,
}

impl Stats {
    /// Stats for `subscribers` subscribers.
    pub(crate) fn new(subscribers: usize) -> Self {
        Stats {
            subs: vec![SubState::default(); subscribers],
            latency: new_histogram(),
            read_latency: new_histogram(),
            window: (u64::MAX, u64::MAX),
            warmup_received: 0,
            late_received: 0,
            other_messages: 0,
            pings: 0,
            window_received: 0,
            window_seqs: None,
            errors: Errors::default(),
        }
    }

    /// Records one payload received by subscriber `sub`: it reached the
    /// socket at `arrived` and was read at `read_at` (unix µs).
    pub(crate) fn on_payload(&mut self, sub: usize, seq: u64, ts: u64, arrived: u64, read_at: u64) {
        let Some(state) = self.subs.get_mut(sub) else {
            self.other_messages += 1;
            return;
        };
        let order = state.observe(seq);
        if ts < self.window.0 {
            self.warmup_received += 1;
            return;
        }
        if ts >= self.window.1 {
            self.late_received += 1;
            return;
        }
        state.received += 1;
        self.window_received += 1;
        self.window_seqs = Some(match self.window_seqs {
            Some((lo, hi)) => (lo.min(seq), hi.max(seq)),
            None => (seq, seq),
        });
        match order {
            Order::Duplicate => {
                state.duplicates += 1;
                return;
            }
            Order::Reordered => state.reordered += 1,
            Order::Ahead => {}
        }
        self.latency
            .saturating_record(arrived.saturating_sub(ts).max(1));
        self.read_latency
            .saturating_record(read_at.saturating_sub(ts).max(1));
    }

    /// Sums the accounting; `expected(sub)` is what subscriber `sub` should have received.
    pub(crate) fn totals(&self, expected: impl Fn(usize) -> u64) -> Totals {
        let mut t = Totals::default();
        for (i, s) in self.subs.iter().enumerate() {
            let want = if s.connected { expected(i) } else { 0 };
            let unique = s.received - s.duplicates;
            t.expected += want;
            t.received += s.received;
            t.duplicates += s.duplicates;
            t.reordered += s.reordered;
            if unique < want {
                t.lost += want - unique;
                t.subscribers_with_loss += 1;
            } else {
                t.unexpected += unique - want;
            }
        }
        t
    }
}

/// A latency histogram from 1 µs to 1 hour, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        // The bounds above are valid; this branch is unreachable in practice.
        Histogram::new(3).unwrap_or_else(|_| unreachable!("valid sigfig"))
    })
}

/// Percentiles of a histogram.
pub(crate) fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: h.mean().round() as u64,
    }
}

/// Errors counted by their message.
#[derive(Debug, Default, Clone)]
pub(crate) struct Errors {
    by_message: BTreeMap<String, u64>,
}

impl Errors {
    /// Counts one occurrence of `message`.
    pub(crate) fn add(&mut self, message: impl Into<String>) {
        *self.by_message.entry(message.into()).or_insert(0) += 1;
    }

    /// Adds all of `other`.
    pub(crate) fn merge(&mut self, other: &Errors) {
        for (k, v) in &other.by_message {
            *self.by_message.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Total count.
    pub(crate) fn total(&self) -> u64 {
        self.by_message.values().sum()
    }

    /// Counts by message.
    pub(crate) fn map(&self) -> &BTreeMap<String, u64> {
        &self.by_message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream() {
        let mut s = SubState::default();
        for i in 0..10 {
            assert_eq!(s.observe(i), Order::Ahead);
        }
        assert!(s.gaps.is_empty());
        assert_eq!(s.observe(3), Order::Duplicate);
    }

    #[test]
    fn gaps_reorders_and_duplicates() {
        let mut s = SubState::default();
        assert_eq!(s.observe(0), Order::Ahead);
        assert_eq!(s.observe(5), Order::Ahead); // 1..5 missing
        assert_eq!(s.gaps, vec![(1, 5)]);
        assert_eq!(s.observe(3), Order::Reordered); // splits
        assert_eq!(s.gaps, vec![(1, 3), (4, 5)]);
        assert_eq!(s.observe(3), Order::Duplicate);
        assert_eq!(s.observe(1), Order::Reordered);
        assert_eq!(s.observe(2), Order::Reordered);
        assert_eq!(s.observe(4), Order::Reordered);
        assert!(s.gaps.is_empty());
        assert_eq!(s.observe(5), Order::Duplicate);
        assert_eq!(s.observe(6), Order::Ahead);
    }

    #[test]
    fn first_message_late_counts_as_gap() {
        let mut s = SubState::default();
        assert_eq!(s.observe(1), Order::Ahead);
        assert_eq!(s.observe(0), Order::Reordered);
    }

    #[test]
    fn window_and_totals() {
        let mut st = Stats::new(4);
        for s in &mut st.subs[..3] {
            s.connected = true;
        }
        st.window = (100, 200);
        // Warm-up message: tracked but not counted.
        st.on_payload(0, 0, 50, 60, 60);
        // Subscriber 0 gets 1, 2, 3 in order.
        for seq in 1..4 {
            st.on_payload(0, seq, 100 + seq, 110 + seq, 110 + seq);
        }
        // Subscriber 1 misses 0 (warm-up) and 2, gets 3 then 1, then 3 again.
        st.on_payload(1, 3, 103, 150, 170);
        st.on_payload(1, 1, 101, 151, 151);
        st.on_payload(1, 3, 103, 152, 152);
        // Subscriber 2 gets a message after the window.
        st.on_payload(2, 0, 250, 260, 260);
        // An unknown subscriber index is not a crash.
        st.on_payload(9, 0, 150, 160, 160);

        let t = st.totals(|sub| if sub == 2 { 0 } else { 3 });
        assert_eq!(
            t,
            Totals {
                expected: 6,
                received: 6,
                lost: 1,
                duplicates: 1,
                reordered: 1,
                unexpected: 0,
                subscribers_with_loss: 1,
            }
        );
        assert_eq!(st.warmup_received, 1);
        assert_eq!(st.late_received, 1);
        assert_eq!(st.other_messages, 1);
        assert_eq!(st.window_received, 6);
        // Latencies: 10,10,10 (sub 0), 47, 50 (sub 1; the duplicate is not recorded).
        let l = latency(&st.latency);
        assert_eq!(st.latency.len(), 5);
        assert_eq!(l.max, 50);
        assert_eq!(l.p50, 10);
        // Read latency: the generator read sub 1's seq 3 later than it arrived.
        assert_eq!(latency(&st.read_latency).max, 67);
    }

    #[test]
    fn errors_count_by_message() {
        let mut e = Errors::default();
        e.add("a");
        e.add("a");
        e.add("b");
        let mut f = Errors::default();
        f.add("b");
        f.merge(&e);
        assert_eq!(f.total(), 4);
        assert_eq!(f.map()["b"], 2);
    }
}
