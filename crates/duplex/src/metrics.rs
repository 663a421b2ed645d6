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
use crate::node::Node;
use crate::stats::Disconnect;

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

        let open = load(&s.connections);
        let native = load(&s.native_connections).min(open);
        labelled(
            &mut e,
            ("connections", "Open client connections", MetricType::Gauge),
            "transport",
            &[("plain", open - native), ("native", native)],
        )?;
        gauge(
            &mut e,
            "subscriptions",
            "Subscriptions held by open connections",
            gauge_of(load(&s.subscriptions)),
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
        gauge(
            &mut e,
            "write_batching",
            "1 while each client's messages are batched into one write because fan-out could not keep up with one write per delivery",
            gauge_of(load(&s.write_batching)),
        )?;
        counter(
            &mut e,
            "write_batching_starts",
            "Times write batching started because fan-out could not keep up",
            None,
            load(&s.write_batching_starts),
        )?;
        // Plain counters, one series each.
        let plain: [(&str, &str, &std::sync::atomic::AtomicU64); 10] = [
            ("connects", "Connections accepted", &s.connects),
            ("connections_refused", "Connections refused by node, address, user or handshake-rate limits", &s.connections_refused),
            ("client_messages", "Messages received from clients", &s.client_messages),
            ("publish_failures", "Publishes the broker refused (the publisher was told)", &s.publish_failures),
            ("broker_messages", "Publications received from the broker for local delivery (any publisher, Redis PUBLISH included)", &s.messages_received),
            ("deliveries", "Frames queued to clients, one per subscriber per message", &s.deliveries),
            ("handshake_timeouts", "HTTP connections closed for not sending request headers (or a TLS handshake) in time", &s.handshake_timeouts),
            ("auth_denials", "Tokens refused and commands denied by permissions", &s.auth_denials),
            ("hosts_refused", "HTTP requests refused with 421 because their Host is not one this node answers to (allowed_hosts)", &s.hosts_refused),
            ("request_timeouts", "HTTP requests whose body was not complete within request_timeout (408, connection closed)", &s.request_timeouts),
        ];
        for (name, help, value) in plain {
            counter(&mut e, name, help, None, load(value))?;
        }
        gauge(
            &mut e,
            "http_connections",
            "Open TCP connections not upgraded to WebSocket (HTTP requests, handshakes in progress)",
            gauge_of(load(&s.http_connections)),
        )?;
        labelled(
            &mut e,
            (
                "http_connections_dropped",
                "Connections the node closed to stay within max_http_connections and the fd limit, by reason",
                MetricType::Counter,
            ),
            "reason",
            &[
                ("evicted", load(&s.http_evictions)),
                ("refused", load(&s.sockets_refused)),
            ],
        )?;
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
        counter(
            &mut e,
            "client_received",
            "Payload bytes received from clients",
            Some(&Unit::Bytes),
            load(&s.client_bytes),
        )?;
        labelled(
            &mut e,
            (
                "publishes",
                "Publishes made through this node, by source",
                MetricType::Counter,
            ),
            "source",
            &[
                ("client", load(&s.client_publishes)),
                ("http", load(&s.http_publishes)),
            ],
        )?;
        counter(
            &mut e,
            "delivered",
            "Bytes of the frames queued to clients",
            Some(&Unit::Bytes),
            load(&s.delivered_bytes),
        )?;
        labelled(
            &mut e,
            (
                "dropped_messages",
                "Messages dropped, by reason (each also logged)",
                MetricType::Counter,
            ),
            "reason",
            &[("plain_publish_refused", load(&s.plain_publish_dropped))],
        )?;
        labelled(
            &mut e,
            (
                "forced_disconnects",
                "Clients cut by the node, by reason",
                MetricType::Counter,
            ),
            "reason",
            &[
                ("slow_consumer", load(&s.slow_consumer_disconnects)),
                ("heartbeat_timeout", load(&s.heartbeat_timeouts)),
                ("protocol_error", load(&s.protocol_errors)),
                ("connect_timeout", load(&s.connect_timeouts)),
                ("token_expired", load(&s.token_expirations)),
                ("disconnect_order", load(&s.api_disconnects)),
            ],
        )?;
        labelled(
            &mut e,
            (
                "upstream_messages",
                "Client messages up to the backends, by outcome (throttled: over a byte budget)",
                MetricType::Counter,
            ),
            "outcome",
            &[
                ("appended", load(&s.upstream_messages)),
                ("refused", load(&s.upstream_failures)),
                ("throttled", load(&s.upstream_throttled)),
            ],
        )?;
        counter(
            &mut e,
            "subscriptions_refused",
            "Subscribe commands and plain clients refused for max_subscriptions or max_subscriptions_per_ip",
            None,
            load(&s.subscriptions_refused),
        )?;
        counter(
            &mut e,
            "order_unsubscribes",
            "Connections removed from a channel by an unsubscribe order",
            None,
            load(&s.api_unsubscribes),
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
        counter(
            &mut e,
            "query_answers_dropped",
            "Node answers to connection queries dropped (late, unknown or unpublishable)",
            None,
            load(&s.query_answers_dropped),
        )?;
        counter(
            &mut e,
            "rpc_requests",
            "Client rpcs accepted (each then answered, timed out, failed or abandoned)",
            None,
            load(&s.rpc_requests),
        )?;
        labelled(
            &mut e,
            (
                "rpc_outcomes",
                "Client calls (rpcs, HTTP-upstream sends) ended other than by success, and rpc replies, by outcome",
                MetricType::Counter,
            ),
            "outcome",
            &[
                ("reply", load(&s.rpc_replies)),
                ("timeout", load(&s.rpc_timeouts)),
                ("refused", load(&s.rpc_refused)),
                ("failed", load(&s.rpc_failures)),
                ("abandoned", load(&s.rpc_abandoned)),
            ],
        )?;
        counter(
            &mut e,
            "rpc_late_replies",
            "Backend replies for no waiting call (late or unknown), dropped",
            None,
            load(&s.rpc_late_replies),
        )?;
        gauge(
            &mut e,
            "rpc_pending",
            "Calls waiting for a backend's answer",
            gauge_of(load(&s.rpc_pending)),
        )?;
        gauge(
            &mut e,
            "uptime_seconds",
            "Seconds since the node started",
            gauge_of(info.uptime_seconds),
        )?;
        Ok(())
    }
}
