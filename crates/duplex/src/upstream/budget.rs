//! The node's byte budgets up to the backends, one per destination, and
//! why a message went over one.

use std::collections::HashMap;

use crate::rate::{RateLimit, Verdict};
use crate::throttle::Throttle;

/// Why a message did not go up: over a byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OverBudget {
    /// Over the connection's `max_upstream_rate`: refuse this message.
    #[error("upstream byte budget exceeded: this connection may send {0} bytes per second to the backends (max_upstream_rate); slow down")]
    Connection(usize),
    /// Still over it after `max_publish_rate` refusals in a row: close.
    #[error(
        "kept sending over the upstream byte budget ({0} bytes per second, max_upstream_rate)"
    )]
    KeptOn(usize),
    /// Over the node's `max_upstream_node_rate` for this destination.
    #[error("upstream byte budget exceeded: this node takes at most {0} bytes per second for this upstream from all its clients (max_upstream_node_rate); retry later")]
    Node(usize),
}

/// The node's byte budgets, one per destination (stream or URL; as many as
/// the configuration names, so the map stays small).
#[derive(Debug)]
pub(crate) struct NodeBudget {
    rate: usize,
    burst: usize,
    buckets: parking_lot::Mutex<HashMap<Box<str>, RateLimit>>,
    pub(crate) warnings: Throttle,
}

impl NodeBudget {
    /// `rate` bytes per second per destination (0 = no limit), in bursts
    /// of up to one message of `max_message_size`.
    pub(crate) fn new(rate: usize, max_message_size: usize) -> NodeBudget {
        NodeBudget {
            rate,
            burst: rate.max(max_message_size),
            buckets: parking_lot::Mutex::default(),
            warnings: Throttle::new(1000),
        }
    }

    /// Takes `cost` bytes from `destination`'s budget, if it holds them.
    pub(crate) fn take(&self, destination: &str, cost: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock();
        let bucket = match buckets.get_mut(destination) {
            Some(bucket) => bucket,
            None => buckets
                .entry(destination.into())
                .or_insert_with(|| RateLimit::with_burst(self.rate as u64, self.burst as u64, 0)),
        };
        bucket.check_cost(cost as u64) == Verdict::Allow
    }
}
