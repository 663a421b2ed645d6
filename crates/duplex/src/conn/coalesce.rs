//! Write coalescing: instead of writing each frame to a client's socket as
//! it comes, a connection's frames wait for a flush lane and go out
//! together in one `writev`. On loopback and LAN a write costs about as
//! much kernel time whatever its size up to a few KiB, so a client that
//! receives many messages between flushes costs a fraction of the CPU per
//! message.
//!
//! Two modes. With `write_delay` set, every connection's frames wait up to
//! that delay, always: the least CPU, at up to that much added latency.
//! With `write_delay` 0 (the default) frames are written at once while the
//! node keeps up, and batched only while fan-out cannot keep up (see
//! `pressure`): then the lanes let frames gather 1 ms per round, so each
//! batch holds whatever arrived meanwhile, and batches grow as the node
//! falls behind, until it catches up.
//!
//! No timer per connection: a producer that queues into an empty queue
//! marks the connection dirty on one of a few lanes; each lane's task
//! (waits out the delay, then) writes every dirty connection's queue. A
//! socket that cannot take everything is handed to its writer task, as
//! without coalescing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::pressure::{Load, Pressure, WINDOW};
use super::Conn;
use crate::stats::Stats;

/// Adaptive mode, while behind: how long a lane lets frames gather. Without
/// it the lanes race fan-out for the cores and each round writes about one
/// frame per connection, which saves nothing (measured in BENCHMARKS.md).
const BEHIND_DELAY: Duration = Duration::from_millis(1);

/// Dirty connections of one lane.
#[derive(Debug, Default)]
struct Lane {
    dirty: Mutex<Vec<u64>>,
    wake: Notify,
    /// Nanoseconds spent writing, for the pressure sampler.
    busy_nanos: AtomicU64,
}

/// The dirty lists and the delay; shared by the node's connections.
#[derive(Debug)]
pub(crate) struct Coalescer {
    lanes: Box<[Lane]>,
    /// Zero: adaptive (batch only while the node is behind).
    delay: Duration,
    /// Producers queue for the lanes instead of writing at once: always
    /// with a delay, while behind without.
    deferring: AtomicBool,
}

impl Coalescer {
    /// One lane per runtime thread, so flushing runs on every core.
    pub(crate) fn new(delay: Duration, lanes: usize) -> Self {
        Coalescer {
            lanes: (0..lanes.max(1)).map(|_| Lane::default()).collect(),
            delay,
            deferring: AtomicBool::new(!delay.is_zero()),
        }
    }

    /// How many lane tasks to run.
    pub(crate) fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// True when the node decides by itself when to batch.
    pub(crate) fn adaptive(&self) -> bool {
        self.delay.is_zero()
    }

    /// True when producers are to queue for a lane rather than write.
    pub(crate) fn deferring(&self) -> bool {
        self.deferring.load(Relaxed)
    }

    /// How long a lane lets frames gather before it writes them.
    fn round_delay(&self) -> Duration {
        if self.delay.is_zero() {
            BEHIND_DELAY
        } else {
            self.delay
        }
    }

    /// Asks for connection `seq`'s queue to be written by its lane.
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

    /// Nanoseconds the busiest lane has spent writing since start.
    fn busiest_lane_nanos(&self, last: &mut [u64]) -> u64 {
        let mut most = 0;
        for (lane, last) in self.lanes.iter().zip(last.iter_mut()) {
            let now = lane.busy_nanos.load(Relaxed);
            most = most.max(now.saturating_sub(*last));
            *last = now;
        }
        most
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
/// the round's delay pass, writes what every dirty connection has queued.
/// `connection` turns a connection number back into the connection (the
/// node's registry), so this module needs nothing above it.
pub(crate) async fn run<F>(
    coalescer: Arc<Coalescer>,
    index: usize,
    connection: F,
    shutdown: CancellationToken,
) where
    F: Fn(u64) -> Option<Arc<Conn>>,
{
    let lane = &coalescer.lanes[index];
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lane.wake.notified() => {}
        }
        tokio::time::sleep(coalescer.round_delay()).await;
        let started = Instant::now();
        std::mem::swap(&mut *lane.dirty.lock(), &mut batch);
        for &seq in &batch {
            if let Some(conn) = connection(seq) {
                conn.outbound.flush_delayed();
            }
        }
        batch.clear();
        if batch.capacity() > 64 * 1024 {
            batch = Vec::new();
        }
        Stats::add_nanos(&lane.busy_nanos, started.elapsed());
    }
}

/// Adaptive mode only: samples how busy fan-out and the lanes are every
/// [`WINDOW`] and turns batching on and off (see `pressure`).
pub(crate) async fn watch(
    coalescer: Arc<Coalescer>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    if !coalescer.adaptive() {
        return;
    }
    let mut pressure = Pressure::default();
    let mut lanes_seen = vec![0u64; coalescer.lanes()];
    let mut fanout_seen = stats.fanout_busy_nanos.load(Relaxed);
    let mut tick = tokio::time::interval(WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let window = now.duration_since(last).as_nanos().max(1) as f64;
        last = now;
        let fanout = stats.fanout_busy_nanos.load(Relaxed);
        let load = Load {
            fanout: fanout.saturating_sub(fanout_seen) as f64 / window,
            flush: coalescer.busiest_lane_nanos(&mut lanes_seen) as f64 / window,
        };
        fanout_seen = fanout;
        match pressure.observe(load) {
            Some(true) => {
                coalescer.deferring.store(true, Relaxed);
                Stats::bump(&stats.write_batching_starts);
                stats.write_batching.store(1, Relaxed);
                tracing::warn!(
                    fanout_busy = format_args!("{:.0}%", load.fanout * 100.0),
                    "fan-out cannot keep up with one write per delivery: batching each client's messages until it does"
                );
            }
            Some(false) => {
                coalescer.deferring.store(false, Relaxed);
                stats.write_batching.store(0, Relaxed);
                tracing::info!("fan-out keeps up again: writing each message at once");
            }
            None => {}
        }
    }
}
