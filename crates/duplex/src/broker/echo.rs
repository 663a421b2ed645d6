//! Recognises this node's own plain publishes when Redis sends them back,
//! so a plain client with echo turned off does not get its own message.
//!
//! Only bytes travel through Redis (that is what keeps `PUBLISH` from any
//! client compatible), so the sender cannot ride along in the message.
//! Instead the node remembers, per channel, the payloads it published on
//! behalf of such clients, in order, and matches them as they come back.
//! Redis keeps per-connection order, so the match is almost always the
//! front entry. Caveat (documented): if another publisher sends identical
//! bytes to the same channel at the same moment, the sender may get that
//! copy instead of its own. Entries are bounded per channel and expire.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

const MAX_PER_CHANNEL: usize = 256;
const SCAN: usize = 32;
const TTL: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Expected {
    payload: Bytes,
    sender: u64,
    at: Instant,
}

/// Pending own publishes, by channel.
#[derive(Debug, Default)]
pub(crate) struct EchoFilter {
    pending: Mutex<HashMap<String, VecDeque<Expected>>>,
}

impl EchoFilter {
    /// Remembers a publish by `sender` that must not be echoed to it.
    pub(crate) fn expect(&self, channel: &str, payload: Bytes, sender: u64) {
        let mut pending = self.pending.lock();
        let queue = pending.entry(channel.to_string()).or_default();
        if queue.len() >= MAX_PER_CHANNEL {
            queue.pop_front();
        }
        queue.push_back(Expected {
            payload,
            sender,
            at: Instant::now(),
        });
    }

    /// Forgets a remembered publish that failed.
    pub(crate) fn forget(&self, channel: &str, payload: &Bytes, sender: u64) {
        let mut pending = self.pending.lock();
        if let Some(queue) = pending.get_mut(channel) {
            if let Some(i) = queue
                .iter()
                .rposition(|e| e.sender == sender && e.payload == *payload)
            {
                queue.remove(i);
            }
            if queue.is_empty() {
                pending.remove(channel);
            }
        }
    }

    /// The sender to skip for an incoming message, if it is one of ours.
    pub(crate) fn take(&self, channel: &str, payload: &[u8]) -> Option<u64> {
        let mut pending = self.pending.lock();
        let queue = pending.get_mut(channel)?;
        let i = queue
            .iter()
            .take(SCAN)
            .position(|e| e.payload.as_ref() == payload)?;
        let sender = queue.remove(i).map(|e| e.sender);
        if queue.is_empty() {
            pending.remove(channel);
        }
        sender
    }

    /// Drops entries whose echo never came (channel left, message lost).
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        self.pending.lock().retain(|_, queue| {
            queue.retain(|e| now.duration_since(e.at) < TTL);
            !queue.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_in_order_and_only_once() {
        let f = EchoFilter::default();
        f.expect("c", Bytes::from_static(b"a"), 1);
        f.expect("c", Bytes::from_static(b"b"), 2);
        assert_eq!(f.take("c", b"x"), None, "someone else's message");
        assert_eq!(f.take("c", b"b"), Some(2), "out of order still matches");
        assert_eq!(f.take("c", b"a"), Some(1));
        assert_eq!(f.take("c", b"a"), None);
        assert!(f.pending.lock().is_empty());
    }

    #[test]
    fn forget_and_bounds() {
        let f = EchoFilter::default();
        let p = Bytes::from_static(b"p");
        f.expect("c", p.clone(), 1);
        f.forget("c", &p, 1);
        assert_eq!(f.take("c", b"p"), None);
        for i in 0..(MAX_PER_CHANNEL as u64 + 10) {
            f.expect("c", Bytes::from(i.to_string()), i);
        }
        assert_eq!(f.pending.lock()["c"].len(), MAX_PER_CHANNEL);
        f.prune();
        assert_eq!(
            f.pending.lock()["c"].len(),
            MAX_PER_CHANNEL,
            "fresh entries stay"
        );
    }
}
