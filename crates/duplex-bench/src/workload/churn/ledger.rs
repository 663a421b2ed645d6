//! What the publisher sent and when the broker was away, and the delivery
//! check against it.
//!
//! The rule: a message on channel `c` is *expected* by a subscription to
//! `c` when the node accepted it (HTTP 200), it was sent after the
//! subscription was confirmed (`sent >= on`), it was accepted at least
//! [`TAIL_GRACE_US`] before the subscription ended (`acked + grace <= off`:
//! time to cross Redis and the node), and `[sent, acked]` does not touch an
//! outage window. Outage windows are the spans the node's `/health` was
//! not OK (from the last OK poll before to the first OK poll after) and the
//! spans of refused publishes, each extended by [`OUTAGE_GRACE_US`].
//! Accepted messages inside an outage window are checked the same way but
//! counted apart (`outage_*`): the node says what it does with them (not
//! delivered while it is not subscribed), they are not "loss".

use serde::Serialize;

use super::runs::Runs;

/// Time a message accepted by the node gets to reach a subscriber before
/// the subscription's end stops expecting it.
pub(super) const TAIL_GRACE_US: u64 = 2_000_000;
/// How long after an outage ends the broker still counts as recovering.
pub(super) const OUTAGE_GRACE_US: u64 = 1_000_000;
/// Lost messages described in the report, at most.
const EXAMPLES: usize = 10;

/// One publish attempt.
#[derive(Debug, Clone, Copy)]
pub(super) struct Publish {
    /// When the request was sent (unix µs; also in the payload).
    pub(super) sent: u64,
    /// When the answer came (0: none yet).
    pub(super) acked: u64,
    /// Accepted by the node.
    pub(super) ok: bool,
}

/// Every publish attempt per channel (index = sequence number), and the
/// spans `/health` was not OK.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    channels: Vec<Vec<Publish>>,
    unhealthy: Vec<(u64, u64)>,
}

/// One subscription's life and what it received.
#[derive(Debug)]
pub(super) struct SubRecord {
    /// Channel index in the pool.
    pub(super) ch: u32,
    /// Subscribe confirmed (reply read), unix µs.
    pub(super) on: u64,
    /// Unsubscribe sent, close started or connection lost, unix µs.
    pub(super) off: u64,
    /// Sequence numbers received.
    pub(super) runs: Runs,
}

/// One message a subscription should have had and did not get.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LostExample {
    channel: u32,
    seq: u64,
    sent_us: u64,
    acked_us: u64,
    subscribed_us: u64,
    ended_us: u64,
}

/// The delivery check over every finished subscription.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Check {
    /// Subscriptions checked (confirmed ones).
    pub(super) subscriptions: u64,
    /// Distinct messages those subscriptions received (expected or not).
    pub(super) received: u64,
    /// Messages expected by them, summed (outside outage windows).
    pub(super) expected: u64,
    /// Of those, not received.
    pub(super) lost: u64,
    /// Subscriptions that missed at least one expected message.
    pub(super) subscriptions_with_loss: u64,
    /// Accepted messages inside an outage window that subscriptions covered.
    pub(super) outage_expected: u64,
    /// Of those, not received.
    pub(super) outage_lost: u64,
    /// The first few losses, to investigate.
    pub(super) lost_examples: Vec<LostExample>,
}

impl Ledger {
    /// A ledger for `channels` channels.
    pub(super) fn new(channels: usize) -> Self {
        Ledger {
            channels: vec![Vec::new(); channels],
            unhealthy: Vec::new(),
        }
    }

    /// Records a publish about to be sent; returns its sequence number.
    pub(super) fn begin(&mut self, ch: usize, sent: u64) -> u64 {
        let list = &mut self.channels[ch];
        list.push(Publish {
            sent,
            acked: 0,
            ok: false,
        });
        list.len() as u64 - 1
    }

    /// Records the node's answer to publish `seq` on `ch`.
    pub(super) fn finish(&mut self, ch: usize, seq: u64, acked: u64, ok: bool) {
        if let Some(p) = self.channels[ch].get_mut(seq as usize) {
            p.acked = acked;
            p.ok = ok;
        }
    }

    /// `/health` was seen failing; `since` is the last OK poll before.
    pub(super) fn unhealthy_from(&mut self, since: u64) {
        self.unhealthy.push((since, u64::MAX));
    }

    /// `/health` is OK again at `at` (closes the open span).
    pub(super) fn healthy_at(&mut self, at: u64) {
        if let Some(last) = self.unhealthy.last_mut() {
            if last.1 == u64::MAX {
                last.1 = at;
            }
        }
    }

    /// The spans `/health` was not OK, as recorded.
    pub(super) fn unhealthy(&self) -> &[(u64, u64)] {
        &self.unhealthy
    }

    /// Outage windows: unhealthy spans and refused publishes, each
    /// extended by the grace, merged and sorted.
    pub(super) fn windows(&self) -> Vec<(u64, u64)> {
        let mut spans: Vec<(u64, u64)> = self.unhealthy.clone();
        for list in &self.channels {
            for p in list.iter().filter(|p| !p.ok && p.acked > 0) {
                spans.push((p.sent, p.acked));
            }
        }
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in spans {
            let b = b.saturating_add(OUTAGE_GRACE_US);
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    /// (accepted, refused, unanswered) publish attempts.
    pub(super) fn totals(&self) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for p in self.channels.iter().flatten() {
            match (p.acked > 0, p.ok) {
                (true, true) => t.0 += 1,
                (true, false) => t.1 += 1,
                _ => t.2 += 1,
            }
        }
        t
    }

    /// Adds one subscription's expected and lost messages to `check`.
    pub(super) fn check(&self, windows: &[(u64, u64)], sub: &SubRecord, check: &mut Check) {
        let Some(list) = self.channels.get(sub.ch as usize) else {
            return;
        };
        check.subscriptions += 1;
        check.received += sub.runs.count();
        let first = list.partition_point(|p| p.sent < sub.on);
        let mut lost_here = 0;
        for (seq, p) in list.iter().enumerate().skip(first) {
            if p.sent > sub.off {
                break;
            }
            if !p.ok || p.acked == 0 || p.acked.saturating_add(TAIL_GRACE_US) > sub.off {
                continue;
            }
            let received = sub.runs.contains(seq as u64);
            if windows.iter().any(|w| p.sent <= w.1 && p.acked >= w.0) {
                check.outage_expected += 1;
                check.outage_lost += u64::from(!received);
                continue;
            }
            check.expected += 1;
            if !received {
                check.lost += 1;
                lost_here += 1;
                if check.lost_examples.len() < EXAMPLES {
                    check.lost_examples.push(LostExample {
                        channel: sub.ch,
                        seq: seq as u64,
                        sent_us: p.sent,
                        acked_us: p.acked,
                        subscribed_us: sub.on,
                        ended_us: sub.off,
                    });
                }
            }
        }
        if lost_here > 0 {
            check.subscriptions_with_loss += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn publish(l: &mut Ledger, ch: usize, sent: u64, ok: bool) -> u64 {
        let seq = l.begin(ch, sent);
        l.finish(ch, seq, sent + 1000, ok);
        seq
    }

    #[test]
    fn expects_what_was_accepted_while_subscribed() {
        let mut l = Ledger::new(2);
        for t in 0..20 {
            publish(&mut l, 0, 100 * S + t * S, true);
        }
        publish(&mut l, 1, 105 * S, true);
        let mut runs = Runs::default();
        // Subscribed at 104.5 s, ended at 112 s: seqs 5..=9 are expected
        // (seq 10 at 110 s is within the tail grace); seq 7 is missing.
        for s in [4, 5, 6, 8, 9, 10] {
            runs.observe(s);
        }
        let sub = SubRecord {
            ch: 0,
            on: 104 * S + S / 2,
            off: 112 * S,
            runs,
        };
        let mut check = Check::default();
        l.check(&l.windows(), &sub, &mut check);
        assert_eq!((check.expected, check.lost), (5, 1));
        assert_eq!(check.subscriptions_with_loss, 1);
        assert_eq!(check.lost_examples[0].seq, 7);
    }

    #[test]
    fn refused_and_unhealthy_spans_are_outage_not_loss() {
        let mut l = Ledger::new(1);
        for t in 0..30 {
            // Refused at 110 s; /health failed from 108 s to 112 s.
            publish(&mut l, 0, 100 * S + t * S, t != 10);
        }
        l.unhealthy_from(108 * S);
        l.healthy_at(112 * S);
        let windows = l.windows();
        assert_eq!(windows, vec![(108 * S, 113 * S)]);
        let sub = SubRecord {
            ch: 0,
            on: 100 * S,
            off: 130 * S,
            runs: Runs::default(),
        };
        let mut check = Check::default();
        l.check(&windows, &sub, &mut check);
        // 100..=127 acked before off - grace: 28 messages, one refused,
        // 108..=112 (5) in the window.
        assert_eq!(check.outage_expected, 5);
        assert_eq!(check.outage_lost, 5);
        assert_eq!(check.expected, 22);
        assert_eq!(l.totals(), (29, 1, 0));
    }
}
