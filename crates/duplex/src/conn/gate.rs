//! Holding a channel's live messages for one connection while its new
//! subscription catches up from history: what it missed goes out first, in
//! offset order, then what was held, minus what the catch-up already
//! covered, so nothing arrives twice or out of order.
//!
//! Once open, a gate still drops the live copies at or below the covered
//! offset that reach the node late (the broker's live copy of a
//! publication can arrive after a history read that already returned it);
//! the first one above it shows the broker caught up, and the gate goes.
//!
//! Held frames count against the same bounds as the outbound queue: a
//! client that would fall further behind than its queue allows is cut as a
//! slow consumer, exactly as it would be without the gate.

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;

use super::outbound::QueueLimits;

/// The channels being caught up on one connection (usually none or one).
#[derive(Debug, Default)]
pub(crate) struct Gates {
    gates: Vec<Gate>,
}

#[derive(Debug)]
struct Gate {
    channel: ChannelName,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Catching up: live frames wait here, with their offsets.
    Holding {
        frames: Vec<(Option<u64>, Bytes)>,
        bytes: usize,
    },
    /// Caught up to this offset: late copies at or below it are dropped.
    Floor(u64),
}

/// What becomes of a live frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Held until the gate opens.
    Held,
    /// Already sent by the catch-up: dropped.
    Covered,
    /// Goes out now.
    Pass,
}

/// The gate would hold more than the queue may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow {
    /// Bytes it held.
    pub(crate) bytes: usize,
}

impl Gates {
    /// Starts holding `channel`'s frames.
    pub(crate) fn close(&mut self, channel: &ChannelName) {
        self.remove(channel);
        self.gates.push(Gate {
            channel: channel.clone(),
            state: State::Holding {
                frames: Vec::new(),
                bytes: 0,
            },
        });
    }

    /// What to do with a live frame of `channel` at `offset`.
    pub(crate) fn hold(
        &mut self,
        channel: &ChannelName,
        offset: Option<u64>,
        frame: &Bytes,
        limits: QueueLimits,
    ) -> Result<Verdict, Overflow> {
        let Some(i) = self.gates.iter().position(|g| &g.channel == channel) else {
            return Ok(Verdict::Pass);
        };
        match (&mut self.gates[i].state, offset) {
            (State::Holding { frames, bytes }, _) => {
                if frames.len() >= limits.max_frames
                    || (*bytes > 0 && *bytes + frame.len() > limits.max_bytes)
                {
                    return Err(Overflow { bytes: *bytes });
                }
                *bytes += frame.len();
                frames.push((offset, frame.clone()));
                Ok(Verdict::Held)
            }
            (State::Floor(floor), Some(at)) if at <= *floor => Ok(Verdict::Covered),
            (State::Floor(_), Some(_)) => {
                // The broker is past the catch-up: nothing late can follow.
                self.gates.swap_remove(i);
                Ok(Verdict::Pass)
            }
            // A raw publish has no offset: it is never covered.
            (State::Floor(_), None) => Ok(Verdict::Pass),
        }
    }

    /// Opens `channel`'s gate: its held frames, in arrival order, minus
    /// those at or below `covered` (already sent by the catch-up). Frames
    /// without an offset (a raw `PUBLISH`) are never covered. Late copies
    /// at or below `covered` are dropped from now on.
    pub(crate) fn open(&mut self, channel: &ChannelName, covered: u64) -> Vec<Bytes> {
        let Some(gate) = self.gates.iter_mut().find(|g| &g.channel == channel) else {
            return Vec::new();
        };
        match std::mem::replace(&mut gate.state, State::Floor(covered)) {
            State::Holding { frames, .. } => frames
                .into_iter()
                .filter(|(offset, _)| offset.is_none_or(|o| o > covered))
                .map(|(_, frame)| frame)
                .collect(),
            State::Floor(_) => Vec::new(),
        }
    }

    /// Forgets `channel`'s gate, held frames included.
    pub(crate) fn remove(&mut self, channel: &ChannelName) {
        self.gates.retain(|g| &g.channel != channel);
    }

    /// Whether no gate is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.gates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name, usize::MAX).unwrap()
    }

    const LIMITS: QueueLimits = QueueLimits {
        max_bytes: 10,
        max_frames: 3,
    };

    fn f(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn held_frames_come_out_in_order_minus_the_covered_ones() {
        let mut gates = Gates::default();
        let (news, other) = (channel("news"), channel("other"));
        gates.close(&news);
        assert_eq!(
            gates.hold(&other, Some(1), &f("x"), LIMITS),
            Ok(Verdict::Pass)
        );
        assert_eq!(
            gates.hold(&news, Some(4), &f("4"), LIMITS),
            Ok(Verdict::Held)
        );
        assert_eq!(
            gates.hold(&news, None, &f("raw"), LIMITS),
            Ok(Verdict::Held)
        );
        assert_eq!(
            gates.hold(&news, Some(5), &f("5"), LIMITS),
            Ok(Verdict::Held)
        );
        assert_eq!(gates.open(&news, 4), vec![f("raw"), f("5")]);
    }

    #[test]
    fn late_copies_of_what_the_catch_up_sent_are_dropped_until_the_broker_is_past_it() {
        let mut gates = Gates::default();
        let news = channel("news");
        gates.close(&news);
        assert!(gates.open(&news, 7).is_empty());
        assert_eq!(
            gates.hold(&news, Some(6), &f("6"), LIMITS),
            Ok(Verdict::Covered)
        );
        assert_eq!(
            gates.hold(&news, Some(7), &f("7"), LIMITS),
            Ok(Verdict::Covered)
        );
        assert_eq!(
            gates.hold(&news, None, &f("raw"), LIMITS),
            Ok(Verdict::Pass)
        );
        assert!(!gates.is_empty());
        assert_eq!(
            gates.hold(&news, Some(8), &f("8"), LIMITS),
            Ok(Verdict::Pass)
        );
        assert!(gates.is_empty(), "past the floor: the gate is gone");
        assert_eq!(
            gates.hold(&news, Some(3), &f("3"), LIMITS),
            Ok(Verdict::Pass)
        );
    }

    #[test]
    fn a_gate_holds_no_more_than_the_queue_may() {
        let mut gates = Gates::default();
        let news = channel("news");
        gates.close(&news);
        let big = Bytes::from_static(b"123456");
        assert_eq!(gates.hold(&news, Some(1), &big, LIMITS), Ok(Verdict::Held));
        assert_eq!(
            gates.hold(&news, Some(2), &big, LIMITS),
            Err(Overflow { bytes: 6 })
        );
    }
}
