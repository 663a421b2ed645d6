//! Results: one JSON object for scripts, a short human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::protocol::Protocol;
use crate::publish::Via;
use crate::stats::Latency;
use crate::workload::{ChurnReport, Drain, StalledReport};

/// The result of any workload.
#[derive(Debug)]
pub(crate) enum Report {
    /// `fanout` or `channels`.
    Delivery(Box<DeliveryReport>),
    /// `idle`.
    Idle(Box<IdleReport>),
    /// `churn`.
    Churn(Box<ChurnReport>),
}

impl Report {
    /// The JSON object (one line).
    pub(crate) fn to_json(&self) -> String {
        let value = match self {
            Report::Delivery(r) => serde_json::to_string(r),
            Report::Idle(r) => serde_json::to_string(r),
            Report::Churn(r) => serde_json::to_string(r),
        };
        value.unwrap_or_else(|e| format!("{{\"error\":\"serializing the report: {e}\"}}"))
    }

    /// A few lines for humans.
    pub(crate) fn summary(&self) -> String {
        match self {
            Report::Delivery(r) => r.summary(),
            Report::Idle(r) => r.summary(),
            Report::Churn(r) => r.summary(),
        }
    }
}

/// Result of `fanout` and `channels`.
#[derive(Debug, Serialize)]
pub(crate) struct DeliveryReport {
    /// `fanout` or `channels`.
    pub(crate) workload: &'static str,
    /// Client protocol.
    pub(crate) protocol: Protocol,
    /// Publishing path.
    pub(crate) via: Via,
    /// Subscribers asked for.
    pub(crate) subscribers: usize,
    /// Subscribers connected and subscribed.
    pub(crate) connected: usize,
    /// Subscribers whose connection ended during the run.
    pub(crate) disconnected: usize,
    /// Distinct channels.
    pub(crate) channels: usize,
    /// Messages per second asked for.
    pub(crate) rate: f64,
    /// Payload bytes.
    pub(crate) size: usize,
    /// Measured window, seconds.
    pub(crate) duration_s: f64,
    /// Warm-up, seconds.
    pub(crate) warmup_s: f64,
    /// Messages published (and accepted) in the window.
    pub(crate) published: u64,
    /// Messages published in all, warm-up included.
    pub(crate) published_total: u64,
    /// Messages the publisher sent only after the window (it fell behind).
    pub(crate) published_late: u64,
    /// Delivery accounting: expected, received, lost, duplicates, reordered...
    #[serde(flatten)]
    pub(crate) totals: crate::stats::Totals,
    /// End-to-end latency of in-window deliveries: publish to arrival at the
    /// client socket (kernel receive timestamp).
    pub(crate) latency_us: Latency,
    /// Publish to read by the generator (includes the generator's queueing).
    pub(crate) read_latency_us: Latency,
    /// Received deliveries per second of window.
    pub(crate) deliveries_per_s: f64,
    /// Connect time of all subscribers, seconds.
    pub(crate) connect_s: f64,
    /// Server CPU seconds over the window and drain.
    pub(crate) server_cpu_s: Option<f64>,
    /// Server CPU µs per received delivery.
    pub(crate) server_cpu_us_per_delivery: Option<f64>,
    /// Server RSS at the end, KiB.
    pub(crate) server_rss_kib: Option<u64>,
    /// Server peak RSS (VmHWM), KiB.
    pub(crate) server_peak_rss_kib: Option<u64>,
    /// Peak TCP socket memory of the whole machine during the run, KiB
    /// (`/proc/net/sockstat`; includes the generator's sockets).
    pub(crate) kernel_tcp_peak_kib: Option<u64>,
    /// Generator (whole process) CPU seconds over the window and drain.
    pub(crate) generator_cpu_s: f64,
    /// Generator CPU µs per received delivery.
    pub(crate) generator_cpu_us_per_delivery: Option<f64>,
    /// CPU seconds of the receive thread alone.
    pub(crate) receiver_cpu_s: f64,
    /// Receive thread CPU µs per received delivery.
    pub(crate) receiver_cpu_us_per_delivery: Option<f64>,
    /// Publisher thread CPU seconds (whole run).
    pub(crate) publisher_cpu_s: f64,
    /// Window + drain, seconds (the CPU measurement interval).
    pub(crate) measured_s: f64,
    /// How the wait for the last deliveries ended.
    pub(crate) drain: Drain,
    /// Payloads from the warm-up received.
    pub(crate) warmup_received: u64,
    /// Messages without a benchmark payload.
    pub(crate) other_messages: u64,
    /// Server pings answered.
    pub(crate) pings: u64,
    /// Error count.
    pub(crate) error_count: u64,
    /// Errors by message.
    pub(crate) errors: BTreeMap<String, u64>,
    /// What became of the `--stalled` clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stalled: Option<StalledReport>,
}

fn per_delivery(cpu_s: f64, deliveries: u64) -> Option<f64> {
    (deliveries > 0).then(|| round3(cpu_s * 1e6 / deliveries as f64))
}

/// CPU µs per delivery, rounded.
pub(crate) fn cpu_per_delivery(cpu_s: Option<f64>, deliveries: u64) -> Option<f64> {
    cpu_s.and_then(|c| per_delivery(c, deliveries))
}

/// Rounds to 3 decimals (for readable JSON).
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn opt<T: std::fmt::Display>(v: &Option<T>, unit: &str) -> String {
    match v {
        Some(v) => format!("{v}{unit}"),
        None => "n/a".to_string(),
    }
}

fn write_errors(s: &mut String, count: u64, errors: &BTreeMap<String, u64>) {
    if count == 0 {
        let _ = writeln!(s, "  errors:      none");
        return;
    }
    let _ = writeln!(s, "  errors:      {count}");
    let mut sorted: Vec<_> = errors.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1));
    for (msg, n) in sorted.iter().take(10) {
        let _ = writeln!(s, "    {n:>7} × {msg}");
    }
    if sorted.len() > 10 {
        let _ = writeln!(s, "    ... {} more kinds (see JSON)", sorted.len() - 10);
    }
}

impl DeliveryReport {
    fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} / {} via {}: {} of {} subscribers on {} channel(s), {}/s × {} B for {}s (+{}s warm-up)",
            self.workload,
            self.protocol.name(),
            serde_json::to_string(&self.via).unwrap_or_default().trim_matches('"'),
            self.connected,
            self.subscribers,
            self.channels,
            self.rate,
            self.size,
            self.duration_s,
            self.warmup_s,
        );
        let _ = writeln!(
            s,
            "  deliveries:  {} received of {} expected ({} published): lost {}, duplicates {}, reordered {}, {:.0}/s",
            self.totals.received, self.totals.expected, self.published, self.totals.lost, self.totals.duplicates, self.totals.reordered, self.deliveries_per_s
        );
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "  latency µs:  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (publish → client socket)",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let l = &self.read_latency_us;
        let _ = writeln!(
            s,
            "  read µs:     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (publish → read by the generator)",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let _ = writeln!(
            s,
            "  server:      {} CPU/delivery, RSS {}",
            opt(&self.server_cpu_us_per_delivery, " µs"),
            opt(&self.server_rss_kib, " KiB")
        );
        let _ = writeln!(
            s,
            "  generator:   {} CPU/delivery ({} receive thread), {:.2} s CPU",
            opt(&self.generator_cpu_us_per_delivery, " µs"),
            opt(&self.receiver_cpu_us_per_delivery, " µs"),
            self.generator_cpu_s
        );
        if self.drain == Drain::Deadline {
            let _ = writeln!(
                s,
                "  --drain ran out while messages were still arriving: \"lost\" includes messages still on their way (the server is behind)"
            );
        }
        if self.published_late > 0 {
            let _ = writeln!(
                s,
                "  publisher fell behind: {} messages went out only after the window (not counted)",
                self.published_late
            );
        }
        if self.disconnected > 0 {
            let _ = writeln!(s, "  disconnected during the run: {}", self.disconnected);
        }
        let _ = writeln!(
            s,
            "  memory:      server peak RSS {}, peak TCP socket memory (whole machine) {}",
            opt(&self.server_peak_rss_kib, " KiB"),
            opt(&self.kernel_tcp_peak_kib, " KiB")
        );
        if let Some(st) = &self.stalled {
            let endings: Vec<String> = st
                .endings
                .iter()
                .map(|(k, v)| format!("{v} × {k}"))
                .collect();
            let _ = writeln!(
                s,
                "  stalled:     {} of {} subscribed, {} cut, {} still open, {} messages buffered for them; {}",
                st.connected, st.asked, st.cut, st.open, st.messages,
                if endings.is_empty() { "none cut".to_string() } else { endings.join(", ") }
            );
        }
        write_errors(&mut s, self.error_count, &self.errors);
        s.trim_end().to_string()
    }
}

/// Result of `idle`.
#[derive(Debug, Serialize)]
pub(crate) struct IdleReport {
    /// Always `idle`.
    pub(crate) workload: &'static str,
    /// Client protocol.
    pub(crate) protocol: Protocol,
    /// Connections asked for.
    pub(crate) connections: usize,
    /// Connections established and subscribed.
    pub(crate) established: usize,
    /// Connections that failed to open.
    pub(crate) failed: usize,
    /// Connections still open after the hold.
    pub(crate) alive_after_hold: usize,
    /// Time to open them all, seconds.
    pub(crate) connect_s: f64,
    /// Established connections per second of ramp.
    pub(crate) connect_rate: f64,
    /// Handshakes in flight at once.
    pub(crate) concurrency: usize,
    /// Hold time, seconds.
    pub(crate) hold_s: f64,
    /// Server RSS before connecting, KiB.
    pub(crate) server_rss_before_kib: Option<u64>,
    /// Server RSS after the hold, KiB.
    pub(crate) server_rss_after_kib: Option<u64>,
    /// (after - before) / established, KiB.
    pub(crate) server_rss_per_connection_kib: Option<f64>,
    /// Server CPU seconds during the ramp.
    pub(crate) server_connect_cpu_s: Option<f64>,
    /// Server CPU µs per established connection.
    pub(crate) server_cpu_us_per_connect: Option<f64>,
    /// Generator CPU seconds during the ramp.
    pub(crate) generator_connect_cpu_s: f64,
    /// Generator RSS after the hold, KiB.
    pub(crate) generator_rss_kib: u64,
    /// Server pings answered.
    pub(crate) pings: u64,
    /// Error count.
    pub(crate) error_count: u64,
    /// Errors by message.
    pub(crate) errors: BTreeMap<String, u64>,
}

impl IdleReport {
    fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "idle / {}: {} of {} connections in {:.2} s = {:.0} handshakes/s (concurrency {}), {} alive after {}s hold",
            self.protocol.name(),
            self.established,
            self.connections,
            self.connect_s,
            self.connect_rate,
            self.concurrency,
            self.alive_after_hold,
            self.hold_s
        );
        let _ = writeln!(
            s,
            "  server RSS:  {} before, {} after, {} per connection",
            opt(&self.server_rss_before_kib, " KiB"),
            opt(&self.server_rss_after_kib, " KiB"),
            opt(&self.server_rss_per_connection_kib, " KiB")
        );
        let _ = writeln!(
            s,
            "  CPU:         server {} per connect, generator {:.2} s for the ramp (RSS {} KiB)",
            opt(&self.server_cpu_us_per_connect, " µs"),
            self.generator_connect_cpu_s,
            self.generator_rss_kib
        );
        write_errors(&mut s, self.error_count, &self.errors);
        s.trim_end().to_string()
    }
}
