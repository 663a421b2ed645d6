//! Write coalescing (`write_delay`): instead of writing each frame to a
//! client's socket as it comes, a connection's frames wait up to the delay
//! and go out together in one `writev`. On loopback and LAN a write costs
//! about as much kernel time whatever its size up to a few KiB, so a client
//! that receives hundreds of messages a second costs a fraction of the CPU
//! per message, at the price of up to `write_delay` of added latency. Off
//! (0) by default: at ordinary per-client rates messages are further apart
//! than any acceptable delay, and coalescing buys nothing.
//!
//! No timer per connection: a producer that queues into an empty queue
//! marks the connection dirty on one of a few lanes; each lane's task
//! sleeps the delay once, then writes every dirty connection's queue. A
//! socket that cannot take everything is handed to its writer task, as
//! without coalescing.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Dirty connections of one lane.
#[derive(Debug, Default)]
struct Lane {
    dirty: Mutex<Vec<u64>>,
    wake: Notify,
}

/// The dirty lists and the delay; shared by the node's connections.
#[derive(Debug)]
pub(crate) struct Coalescer {
    lanes: Box<[Lane]>,
    delay: Duration,
}

impl Coalescer {
    /// One lane per runtime thread, so flushing runs on every core.
    pub(crate) fn new(delay: Duration, lanes: usize) -> Self {
        Coalescer {
            lanes: (0..lanes.max(1)).map(|_| Lane::default()).collect(),
            delay,
        }
    }

    /// How many lane tasks to run.
    pub(crate) fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Asks for connection `seq`'s queue to be written after the delay.
    pub(crate) fn mark(&self, seq: u64) {
        let lane = &self.lanes[seq as usize % self.lanes.len()];
        let mut dirty = lane.dirty.lock();
        let first = dirty.is_empty();
        dirty.push(seq);
        drop(dirty);
        if first {
            lane.wake.notify_one();
        }
    }
}

#[cfg(test)]
impl Coalescer {
    /// Empties lane `index`'s dirty list.
    pub(crate) fn take_dirty(&self, index: usize) -> Vec<u64> {
        std::mem::take(&mut *self.lanes[index].dirty.lock())
    }
}

/// Runs lane `index` until `shutdown`: waits for a dirty connection, lets
/// the delay pass, writes what every dirty connection has queued.
pub(crate) async fn run(node: Node, index: usize, shutdown: CancellationToken) {
    let Some(coalescer) = node.coalescer() else {
        return;
    };
    let lane = &coalescer.lanes[index];
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lane.wake.notified() => {}
        }
        tokio::time::sleep(coalescer.delay).await;
        std::mem::swap(&mut *lane.dirty.lock(), &mut batch);
        for &seq in &batch {
            if let Some(conn) = node.connection_by_seq(seq) {
                conn.outbound.flush_delayed();
            }
        }
        batch.clear();
        if batch.capacity() > 64 * 1024 {
            batch = Vec::new();
        }
    }
}
