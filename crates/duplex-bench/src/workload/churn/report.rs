//! The `churn` result: counters, publisher totals, outage windows and the
//! delivery check, as JSON and as a few lines for humans.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::ledger::Check;

/// Client-side counters of a churn run.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Counters {
    /// Connections established (handshake done).
    pub(crate) connects: u64,
    /// Connections that failed before the handshake completed.
    pub(crate) connect_failures: u64,
    /// Clients that closed with a WebSocket close at the end of their life.
    pub(crate) closes_graceful: u64,
    /// Clients that reset their connection at the end of their life.
    pub(crate) closes_abrupt: u64,
    /// Clients still alive when the run ended (closed gracefully then).
    pub(crate) closed_at_stop: u64,
    /// Connections the server closed or that failed while open.
    pub(crate) dropped_by_server: u64,
    /// Subscriptions confirmed.
    pub(crate) subscribes: u64,
    /// Subscriptions refused (error reply).
    pub(crate) subscribe_refused: u64,
    /// Unsubscribe replies.
    pub(crate) unsubscribes: u64,
    /// Unsubscribes answered with an error.
    pub(crate) unsubscribe_refused: u64,
    /// Message pushes received (all).
    pub(crate) deliveries: u64,
    /// Pushes on a channel the client no longer (or never) held.
    pub(crate) strays: u64,
    /// Pushes whose sequence number skipped ahead (a gap, at the time).
    pub(crate) gaps: u64,
    /// Pushes that arrived after a later one.
    pub(crate) reordered: u64,
    /// Pushes received twice.
    pub(crate) duplicates: u64,
    /// Server pings answered.
    pub(crate) pings: u64,
    /// Other frames (unknown replies, disconnect pushes).
    pub(crate) other_messages: u64,
    /// Clients connected now.
    pub(crate) live: u64,
    /// Most clients connected at once.
    pub(crate) peak_live: u64,
}

/// One span the broker was away, seconds from the start of the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outage {
    /// Start, s.
    pub(crate) from_s: f64,
    /// End, s.
    pub(crate) to_s: f64,
}

/// Result of `churn`.
#[derive(Debug, Serialize)]
pub(crate) struct ChurnReport {
    /// `churn`.
    pub(crate) workload: &'static str,
    /// Target population.
    pub(crate) clients: usize,
    /// Channel pool size.
    pub(crate) channels: usize,
    /// Publishes per second asked for.
    pub(crate) rate: f64,
    /// Payload bytes.
    pub(crate) size: usize,
    /// Churn time asked for, s.
    pub(crate) duration_s: f64,
    /// Whole run, end of the final close included, s.
    pub(crate) elapsed_s: f64,
    /// Client counters.
    #[serde(flatten)]
    pub(crate) counters: Counters,
    /// Publishes the node accepted.
    pub(crate) published: u64,
    /// Publishes refused or failed.
    pub(crate) publish_refused: u64,
    /// Publishes without an answer when the run ended.
    pub(crate) publish_unanswered: u64,
    /// Publishes that started more than 1 s late.
    pub(crate) publish_late: u64,
    /// Spans `/health` was not OK.
    pub(crate) unhealthy: Vec<Outage>,
    /// Outage windows used by the check (unhealthy spans and refused publishes, with grace).
    pub(crate) outage_windows: Vec<Outage>,
    /// The delivery check.
    pub(crate) check: Check,
    /// Clients left when the final close gave up waiting.
    pub(crate) clients_left: u64,
    /// CPU seconds of the generator process.
    pub(crate) generator_cpu_s: f64,
    /// CPU seconds of the publisher thread.
    pub(crate) publisher_cpu_s: f64,
    /// Peak RSS of the generator, KiB.
    pub(crate) generator_peak_rss_kib: u64,
    /// Error count.
    pub(crate) error_count: u64,
    /// Errors by message (client and publisher).
    pub(crate) errors: BTreeMap<String, u64>,
}

impl ChurnReport {
    /// A few lines for humans.
    pub(crate) fn summary(&self) -> String {
        let c = &self.counters;
        let k = &self.check;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "churn: {} clients over {} channels, {}/s × {} B for {}s ({:.0}s in all)",
            self.clients, self.channels, self.rate, self.size, self.duration_s, self.elapsed_s
        );
        let _ = writeln!(
            s,
            "  clients:     {} connects ({} failed), peak {} live; closed {} graceful, {} reset, {} at stop, {} dropped by the server",
            c.connects, c.connect_failures, c.peak_live, c.closes_graceful, c.closes_abrupt, c.closed_at_stop, c.dropped_by_server
        );
        let _ = writeln!(
            s,
            "  subscribe:   {} confirmed, {} refused; {} unsubscribes ({} refused)",
            c.subscribes, c.subscribe_refused, c.unsubscribes, c.unsubscribe_refused
        );
        let _ = writeln!(
            s,
            "  publish:     {} accepted, {} refused, {} unanswered, {} late",
            self.published, self.publish_refused, self.publish_unanswered, self.publish_late
        );
        let _ = writeln!(
            s,
            "  delivery:    {} pushes; {} subscriptions checked: {} expected, {} lost ({} subscriptions with loss); strays {}, duplicates {}, reordered {}",
            c.deliveries, k.subscriptions, k.expected, k.lost, k.subscriptions_with_loss, c.strays, c.duplicates, c.reordered
        );
        let windows: Vec<String> = self
            .outage_windows
            .iter()
            .map(|o| format!("{:.1}-{:.1}s", o.from_s, o.to_s))
            .collect();
        let _ = writeln!(
            s,
            "  outages:     {} [{}]: {} accepted messages expected inside, {} of them not delivered",
            self.outage_windows.len(),
            windows.join(", "),
            k.outage_expected,
            k.outage_lost
        );
        let _ = write!(
            s,
            "  errors:      {}",
            if self.error_count == 0 {
                "none".to_string()
            } else {
                self.error_count.to_string()
            }
        );
        let mut sorted: Vec<_> = self.errors.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1));
        for (msg, n) in sorted.iter().take(10) {
            let _ = write!(s, "\n    {n:>7} × {msg}");
        }
        s
    }
}
