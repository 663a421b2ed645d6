//! The pub/sub liveness probe, for every broker other nodes share.
//!
//! A broker whose connections all look fine can still lose every message:
//! a subscriber left on a Redis master that a failover demoted, a link a
//! middlebox stopped forwarding before the health PING is due (Centrifugo
//! #1189: pub/sub silent after a Sentinel failover while health stayed
//! green). So every `broker_probe_interval` the node publishes a numbered
//! `probe` order on its own `#node:<id>` channel, through [`PubSub`] like
//! any publication, and expects it back within `redis_timeout`. When one
//! published without error does not come back, `/health` answers 503
//! `degraded` with the reason, the failure is logged and counted
//! (`duplex_broker_probe_failures_total`), and the broker is asked to drop
//! and redo its subscriber link ([`Link::relink`]): every channel is
//! subscribed again and history gaps repaired, as after any reconnect.
//! The next probe that comes back clears it.
//!
//! A probe the broker refused to publish (it is down) proves nothing: the
//! broker's own state already says so, and nothing is counted. Nor does a
//! late one while the broker reported an outage meanwhile or messages
//! waited for fan-out (it is queued behind them): cutting a busy link
//! would lose more than it repairs.
//!
//! [`PubSub`]: crate::broker::PubSub
//! [`Link::relink`]: crate::broker::Link::relink

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::Node;
use crate::control::Order;

/// What the probe found so far, read by `/health` and `/metrics`.
#[derive(Debug)]
pub(crate) struct Probe {
    /// The highest probe number heard back.
    heard: watch::Sender<u64>,
    /// Why the last probe failed, until one comes back.
    failing: Mutex<Option<String>>,
    sent: AtomicU64,
    failures: AtomicU64,
    relinks: AtomicU64,
    /// The last round trip, in microseconds.
    rtt_micros: AtomicU64,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            heard: watch::Sender::new(0),
            failing: Mutex::new(None),
            sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            relinks: AtomicU64::new(0),
            rtt_micros: AtomicU64::new(0),
        }
    }
}

/// The probe's counters, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeStats {
    /// Probes published.
    pub sent: u64,
    /// Probes published but not heard back in time.
    pub failures: u64,
    /// Subscriber links dropped and made again after a failure.
    pub relinks: u64,
    /// False from a failed probe until one comes back.
    pub ok: bool,
    /// The last round trip, in seconds (0 before the first).
    pub rtt_seconds: f64,
}

impl Probe {
    /// A probe order came back on `#node:<id>`.
    pub(super) fn heard(&self, seq: u64) {
        self.heard.send_if_modified(|top| {
            let newer = seq > *top;
            if newer {
                *top = seq;
            }
            newer
        });
    }
}

impl Node {
    /// Starts the probe on a shared broker, unless `broker_probe_interval` is 0.
    pub(super) fn start_probe(&self) {
        let every = self.config().broker_probe_interval;
        if !self.inner.broker.shared() || every.is_zero() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        self.inner.tasks.spawn(async move {
            for seq in 1.. {
                // A full interval after each probe, however it ended: a
                // failure stays on /health at least that long.
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                Node { inner }.probe_once(seq).await;
            }
        });
    }

    /// Sends probe `seq` and waits for it within `redis_timeout`.
    async fn probe_once(&self, seq: u64) {
        let probe = &self.inner.probe;
        let bound = self.config().redis_timeout;
        // Subscribed before publishing: an answer faster than the publish
        // reply is not missed.
        let mut heard = probe.heard.subscribe();
        let before = self.link_signs();
        let started = Instant::now();
        let order = Order::Probe { seq };
        if let Err(e) = self.publish_order_on(&self.node_channel(), &order).await {
            tracing::debug!(error = %e, "liveness probe not sent");
            return;
        }
        probe.sent.fetch_add(1, Relaxed);
        let wait = bound
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let back = tokio::time::timeout(wait, heard.wait_for(|top| *top >= seq)).await;
        if matches!(back, Ok(Ok(_))) {
            let rtt = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            probe.rtt_micros.store(rtt, Relaxed);
            if probe.failing.lock().take().is_some() {
                tracing::info!(
                    rtt_ms = rtt / 1000,
                    "broker liveness probe heard back again"
                );
            }
            return;
        }
        let after = self.link_signs();
        if after.0 != before.0 || after.1 != before.1 || before.2 || after.2 {
            // The broker noticed an outage itself, or messages wait for
            // fan-out (the probe is queued behind them): no verdict, and
            // no relink that would cut a busy link. Messages that merely
            // keep arriving prove nothing: a subscriber on the wrong server
            // can still hear others while this node's own publishes go
            // elsewhere.
            tracing::debug!(
                seq,
                "liveness probe late, but the broker is busy or reconnecting"
            );
            return;
        }
        let why = format!(
            "broker pub/sub probe: published on {} but heard nothing back within {bound:?}; subscriber link redone",
            self.node_channel()
        );
        tracing::error!(seq, "{why} (messages published meanwhile may not have reached this node; counted in duplex_broker_probe_failures_total)");
        probe.failures.fetch_add(1, Relaxed);
        *probe.failing.lock() = Some(why);
        self.inner.broker.pubsub().relink();
        probe.relinks.fetch_add(1, Relaxed);
    }

    /// What excuses a late probe: whether the broker is connected, its
    /// reconnects so far, and whether messages wait for fan-out.
    fn link_signs(&self) -> (bool, u64, bool) {
        let state = self.inner.broker.state();
        let connected = state.status == crate::broker::BrokerStatus::Connected;
        (connected, state.reconnects, state.backlog_bytes > 0)
    }

    /// Why `/health` says degraded: the last probe did not come back.
    pub fn probe_problem(&self) -> Option<String> {
        self.inner.probe.failing.lock().clone()
    }

    /// The probe's counters.
    pub fn probe_stats(&self) -> ProbeStats {
        let probe = &self.inner.probe;
        ProbeStats {
            sent: probe.sent.load(Relaxed),
            failures: probe.failures.load(Relaxed),
            relinks: probe.relinks.load(Relaxed),
            ok: probe.failing.lock().is_none(),
            rtt_seconds: probe.rtt_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}
