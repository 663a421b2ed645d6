//! `GET /metrics`: the node's counters in the Prometheus text format. The
//! counters are the same atomics `/api/info` shows, read at scrape time by a
//! collector, so the hot paths pay nothing for metrics beyond their atomics;
//! the fan-out latency (one observation per publication, not per delivery)
//! and the rpc latency (one per reply) are real histograms.

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::broker::BrokerStatus;
use crate::node::{Node, ProbeStats};
use crate::stats::{Disconnect, Shown, METRICS};

/// The registry of one node, built once at start.
pub fn registry(node: &Node) -> Registry {
    let mut registry = Registry::with_prefix("duplex");
    registry.register_with_unit(
        "fanout_duration",
        "Time from a publication's arrival from the broker to its last frame queued to a local client",
        Unit::Seconds,
        node.stats().fanout_seconds.0.clone(),
    );
    registry.register_with_unit(
        "rpc_duration",
        "Time from a client's rpc to the backend's reply (timeouts not included)",
        Unit::Seconds,
        node.stats().rpc_seconds.0.clone(),
    );
    registry.register_collector(Box::new(NodeCollector { node: node.clone() }));
    registry
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Reads the node's counters on every scrape.
#[derive(Debug)]
struct NodeCollector {
    node: Node,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One metric with a single label, one series per `(label value, value)`.
fn labelled(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    label: &str,
    series: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value_label, value) in series {
        let labels = [(label, *value_label)];
        let series_encoder = family.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => {
                ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(series_encoder)?
            }
            _ => ConstCounter::new(*value).encode(series_encoder)?,
        }
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.node;
        let s = node.stats();
        let info = node.info();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        let gauge_of = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);

        // Every counter declared in stats.rs, one family per name.
        let mut rest = METRICS;
        while let Some(first) = rest.first() {
            let len = rest.iter().take_while(|m| m.name == first.name).count();
            let (family, next) = rest.split_at(len);
            rest = next;
            match first.shown {
                Shown::Custom => {}
                _ if first.label.is_some() => {
                    let label = first.label.map_or("", |(l, _)| l);
                    let series: Vec<(&str, u64)> = family
                        .iter()
                        .map(|m| (m.label.map_or("", |(_, v)| v), load((m.read)(s))))
                        .collect();
                    let kind = match first.shown {
                        Shown::Gauge => MetricType::Gauge,
                        _ => MetricType::Counter,
                    };
                    labelled(&mut e, (first.name, first.help, kind), label, &series)?;
                }
                Shown::Gauge => gauge(
                    &mut e,
                    first.name,
                    first.help,
                    gauge_of(load((first.read)(s))),
                )?,
                Shown::Bytes => counter(
                    &mut e,
                    first.name,
                    first.help,
                    Some(&Unit::Bytes),
                    load((first.read)(s)),
                )?,
                Shown::Counter => {
                    counter(&mut e, first.name, first.help, None, load((first.read)(s)))?
                }
            }
        }

        // The counters marked Custom, and what is not a counter of Stats.
        let open = load(&s.connections);
        let native = load(&s.native_connections).min(open);
        labelled(
            &mut e,
            ("connections", "Open client connections", MetricType::Gauge),
            "transport",
            &[("plain", open - native), ("native", native)],
        )?;
        labelled(
            &mut e,
            (
                "connection_queries",
                "/api/connections queries asked on this node, by outcome",
                MetricType::Counter,
            ),
            "outcome",
            &[
                (
                    "complete",
                    load(&s.connection_queries)
                        .saturating_sub(load(&s.queries_incomplete) + load(&s.queries_refused)),
                ),
                ("incomplete", load(&s.queries_incomplete)),
                ("refused", load(&s.queries_refused)),
            ],
        )?;
        let busy = ConstCounter::new(load(&s.fanout_busy_nanos) as f64 / 1e9);
        busy.encode(e.encode_descriptor(
            "fanout_busy",
            "Seconds spent fanning out (concurrent fan-outs add up): near the number of cores per second of wall time, fan-out cannot keep up",
            Some(&Unit::Seconds),
            busy.metric_type(),
        )?)?;
        let reasons: Vec<(&str, u64)> = Disconnect::ALL
            .iter()
            .zip(s.disconnects.iter())
            .map(|(d, n)| (d.label(), load(n)))
            .collect();
        labelled(
            &mut e,
            (
                "disconnects",
                "Connections ended, by reason",
                MetricType::Counter,
            ),
            "reason",
            &reasons,
        )?;
        gauge(
            &mut e,
            "channels",
            "Channels with at least one local subscriber",
            gauge_of(info.channels as u64),
        )?;
        let broker = &info.broker;
        gauge(
            &mut e,
            "broker_up",
            "1 while the broker is connected, else 0",
            i64::from(broker.status == BrokerStatus::Connected),
        )?;
        counter(
            &mut e,
            "broker_reconnects",
            "Times the broker connection was re-established",
            None,
            broker.reconnects,
        )?;
        counter(
            &mut e,
            "broker_dropped",
            "Messages from the broker dropped because fan-out could not keep up and their channel's share of the backlog was full",
            None,
            broker.dropped,
        )?;
        gauge(
            &mut e,
            "broker_backlog_bytes",
            "Bytes of messages from the broker waiting for fan-out",
            gauge_of(broker.backlog_bytes),
        )?;
        probe_metrics(&mut e, &self.node.probe_stats())?;
        gauge(
            &mut e,
            "uptime_seconds",
            "Seconds since the node started",
            gauge_of(info.uptime_seconds),
        )?;
        Ok(())
    }
}

/// The pub/sub liveness probe's series (node/probe.rs).
fn probe_metrics(e: &mut DescriptorEncoder, p: &ProbeStats) -> Result<(), std::fmt::Error> {
    let help = "Liveness probes this node published to itself through the broker";
    counter(e, "broker_probe_sent", help, None, p.sent)?;
    let help = "Probes published but not heard back within redis_timeout";
    counter(e, "broker_probe_failures", help, None, p.failures)?;
    let help = "Subscriber links the probe dropped and made again after a failure";
    counter(e, "broker_probe_relinks", help, None, p.relinks)?;
    let help = "0 from a probe that did not come back until one does, else 1";
    gauge(e, "broker_probe_ok", help, i64::from(p.ok))?;
    let rtt = ConstGauge::new(p.rtt_seconds);
    let help = "Round trip of the last probe that came back";
    rtt.encode(e.encode_descriptor(
        "broker_probe_rtt",
        help,
        Some(&Unit::Seconds),
        rtt.metric_type(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A family's counters are declared together, with one kind and help.
    #[test]
    fn families_are_contiguous_and_consistent() {
        let mut seen: Vec<&str> = Vec::new();
        for pair in METRICS.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.name == b.name {
                assert_eq!(
                    (a.shown, a.help),
                    (b.shown, b.help),
                    "{} / {}",
                    a.field,
                    b.field
                );
                assert_eq!(a.label.map(|l| l.0), b.label.map(|l| l.0), "{}", a.field);
            } else {
                seen.push(a.name);
                assert!(
                    !seen.contains(&b.name),
                    "{} declared apart from its family",
                    b.field
                );
            }
        }
    }

    /// Every counter declared in stats.rs is served in `/metrics` (the
    /// Custom ones by hand here) and in `/api/info`'s `stats`.
    #[tokio::test]
    async fn every_counter_is_served_in_metrics_and_info() {
        let node = Node::start(Config::default()).expect("node");
        let text = render(&registry(&node)).expect("render");
        for m in METRICS {
            let family = format!("# TYPE duplex_{}", m.name);
            assert!(
                text.contains(&family),
                "{} ({}) not in /metrics",
                m.field,
                m.name
            );
            if let Some((label, value)) = m.label {
                let series = format!("{label}=\"{value}\"");
                assert!(
                    text.contains(&series),
                    "{} series {series} not in /metrics",
                    m.field
                );
            }
        }
        let info = serde_json::to_value(node.stats().snapshot()).expect("json");
        for m in METRICS {
            assert!(info.get(m.field).is_some(), "{} not in /api/info", m.field);
        }
    }
}
