//! Where publications from a networked broker wait for fan-out: bounded in
//! memory, served fairly across channels.
//!
//! Redis pushes messages as fast as backends publish them. A node that
//! cannot fan them out as fast must neither buffer them without bound (a
//! flood once took a node to 1 GB) nor stop reading its socket (Redis then
//! buffers them instead, up to its output-buffer limit, and cuts the node:
//! every channel loses messages while it reconnects). So the socket reader
//! never waits: it hands each message to [`Intake::push`], which drops it
//! when the backlog is full (counted, and logged by the caller), and one
//! delivery task takes them out with [`Intake::pop`], one channel at a time,
//! round robin, so a flooded channel delays a quiet one by at most one
//! message per busy channel.
//!
//! The bound: up to `limit` bytes are taken from any channel; beyond that,
//! only from channels holding less than their fair share (`limit` divided
//! by the number of channels waiting), and never more than twice `limit`
//! (an empty backlog takes any one message, however large). A flood on one channel therefore never keeps other channels' messages
//! out, and the backlog stays under `2 × limit` (plus one message).
//!
//! Order: per channel, messages leave in the order they came (what the
//! broker contract promises); across channels, only while nothing waits.

use std::collections::{HashMap, VecDeque};

use duplex_protocol::channel::ChannelName;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::message::Publication;

/// What one waiting message costs besides its payload and channel name:
/// the queue slot, the `Publication`, the payload's allocation header.
const PER_MESSAGE_OVERHEAD: usize = 96;

/// A bounded, per-channel fair queue of publications.
#[derive(Debug)]
pub(crate) struct Intake {
    limit: usize,
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Waiting messages per channel; a channel is here only while it has some.
    lanes: HashMap<ChannelName, Lane>,
    /// Channels with waiting messages, in the order they are served.
    turns: VecDeque<ChannelName>,
    /// Cost of everything waiting.
    bytes: usize,
    /// Messages refused since start.
    dropped: u64,
    closed: bool,
}

#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Publication>,
    bytes: usize,
}

/// A message [`Intake::push`] refused because the backlog was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Bytes waiting when it was refused.
    pub(crate) backlog: usize,
}

fn cost(p: &Publication) -> usize {
    p.payload.len() + p.channel.as_str().len() + PER_MESSAGE_OVERHEAD
}

impl Intake {
    /// A queue that holds about `limit` bytes (at most twice that, see the module doc).
    pub(crate) fn new(limit: usize) -> Self {
        Intake {
            limit: limit.max(1),
            state: Mutex::default(),
            ready: Notify::new(),
        }
    }

    /// Queues a publication, or refuses it when its channel has had its share.
    pub(crate) fn push(&self, publication: Publication) -> Result<(), Dropped> {
        let size = cost(&publication);
        let mut state = self.state.lock();
        let lane_bytes = state.lanes.get(&publication.channel).map_or(0, |l| l.bytes);
        let after = state.bytes + size;
        // An empty backlog takes anything: a message larger than the limit
        // is already in memory (Redis sent it whole), and refusing it would
        // refuse it forever.
        let fits = state.bytes == 0 || after <= self.limit || {
            let waiting = state.turns.len() + usize::from(lane_bytes == 0);
            after <= 2 * self.limit && lane_bytes + size <= self.limit / waiting
        };
        if !fits {
            state.dropped += 1;
            return Err(Dropped {
                backlog: state.bytes,
            });
        }
        state.bytes = after;
        let channel = publication.channel.clone();
        let lane = state.lanes.entry(channel.clone()).or_default();
        let was_idle = lane.queue.is_empty();
        lane.bytes += size;
        lane.queue.push_back(publication);
        if was_idle {
            state.turns.push_back(channel);
        }
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next publication, taking channels in turn; `None` once closed.
    pub(crate) async fn pop(&self) -> Option<Publication> {
        loop {
            let notified = self.ready.notified();
            if let Some(next) = self.try_pop() {
                return next;
            }
            notified.await;
        }
    }

    /// `Some(None)` when closed, `None` when nothing waits.
    fn try_pop(&self) -> Option<Option<Publication>> {
        let mut state = self.state.lock();
        if state.closed {
            return Some(None);
        }
        let State {
            lanes,
            turns,
            bytes,
            ..
        } = &mut *state;
        while let Some(channel) = turns.pop_front() {
            let Some(lane) = lanes.get_mut(&channel) else {
                continue;
            };
            let Some(publication) = lane.queue.pop_front() else {
                lanes.remove(&channel);
                continue;
            };
            let size = cost(&publication);
            lane.bytes -= size;
            *bytes -= size;
            if lane.queue.is_empty() {
                lanes.remove(&channel);
            } else {
                turns.push_back(channel);
            }
            return Some(Some(publication));
        }
        None
    }

    /// Ends [`Intake::pop`] for good (the broker is closing).
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_one();
    }

    /// Messages refused since start.
    pub(crate) fn dropped(&self) -> u64 {
        self.state.lock().dropped
    }

    /// Bytes waiting now (payloads, names and bookkeeping).
    pub(crate) fn backlog(&self) -> usize {
        self.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use duplex_protocol::ws::MessageKind;

    use super::*;

    fn publication(channel: &str, payload: &str) -> Publication {
        Publication {
            channel: ChannelName::parse(channel, 255).unwrap(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            kind: MessageKind::Text,
            exclude: None,
            position: None,
        }
    }

    fn drain(intake: &Intake) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some(Some(p)) = intake.try_pop() {
            out.push((
                p.channel.to_string(),
                String::from_utf8(p.payload.to_vec()).unwrap(),
            ));
        }
        out
    }

    #[test]
    fn channels_take_turns_and_keep_their_own_order() {
        let intake = Intake::new(1 << 20);
        for i in 0..3 {
            intake.push(publication("flood", &format!("f{i}"))).unwrap();
        }
        intake.push(publication("quiet", "q0")).unwrap();
        intake.push(publication("quiet", "q1")).unwrap();
        let order: Vec<String> = drain(&intake).into_iter().map(|(_, p)| p).collect();
        assert_eq!(order, ["f0", "q0", "f1", "q1", "f2"]);
        assert_eq!(intake.backlog(), 0);
    }

    #[test]
    fn a_flooded_channel_is_cut_off_and_quiet_ones_still_get_in() {
        let one = cost(&publication("flood", "x"));
        let intake = Intake::new(10 * one);
        let mut refused = 0;
        for _ in 0..1000 {
            if intake.push(publication("flood", "x")).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 990, "the flood fills the backlog, then is refused");
        assert_eq!(intake.dropped(), 990);
        // Quiet channels are below their fair share: let in beyond the limit.
        for name in ["a", "b", "c"] {
            intake.push(publication(name, "x")).unwrap();
        }
        assert!(intake.push(publication("flood", "x")).is_err());
        // Never more than twice the limit, whatever arrives.
        for i in 0..10_000 {
            let _ = intake.push(publication(&format!("ch{i}"), "x"));
        }
        assert!(intake.backlog() <= 20 * one + one, "{}", intake.backlog());
        let delivered = drain(&intake);
        assert_eq!(&delivered[1], &("a".to_string(), "x".to_string()));
        assert_eq!(intake.backlog(), 0);
    }

    #[tokio::test]
    async fn pop_waits_for_a_push_and_ends_on_close() {
        let intake = std::sync::Arc::new(Intake::new(1024));
        let waiter = tokio::spawn({
            let intake = std::sync::Arc::clone(&intake);
            async move { intake.pop().await.map(|p| p.payload) }
        });
        tokio::task::yield_now().await;
        intake.push(publication("a", "hello")).unwrap();
        assert_eq!(waiter.await.unwrap(), Some(Bytes::from_static(b"hello")));
        intake.close();
        assert!(intake.pop().await.is_none());
    }
}
