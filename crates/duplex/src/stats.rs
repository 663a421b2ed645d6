//! Node-wide counters, declared once. Every dropped message and every
//! forced disconnect increments one of these, so nothing is lost silently.
//! The [`counters!`] table below is the only list: it makes the fields of
//! [`Stats`], the `stats` object of `/api/info` (and so the console, which
//! shows every key) and the metric each counter feeds in `/metrics`
//! ([`METRICS`], read by `metrics.rs`). A counter cannot be in one and
//! missing from another.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// How a counter appears in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// A Prometheus counter (`duplex_<name>_total`).
    Counter,
    /// A Prometheus counter in bytes (`duplex_<name>_bytes_total`).
    Bytes,
    /// A Prometheus gauge.
    Gauge,
    /// Rendered by hand in `metrics.rs` (split or derived from others);
    /// `metrics.rs`'s tests check each such one appears.
    Custom,
}

/// One counter's place in `/metrics`: several counters with the same
/// `name` are one family, told apart by `label`.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The `Stats` field (and `/api/info` key).
    pub field: &'static str,
    /// Reads the counter.
    pub read: fn(&Stats) -> &AtomicU64,
    /// Family name without the `duplex_` prefix and suffixes.
    pub name: &'static str,
    /// `(label, value)` of this counter's series in a labelled family.
    pub label: Option<(&'static str, &'static str)>,
    /// Counter, gauge, bytes or by hand.
    pub shown: Shown,
    /// The family's help text.
    pub help: &'static str,
}

macro_rules! counters {
    (
        @extra { $( $(#[doc = $xdoc:literal])* $xfield:ident : $xty:ty, )* }
        $( $(#[doc = $doc:literal])* $field:ident => $shown:ident $name:literal $([$label:literal = $value:literal])? , $help:literal ; )*
    ) => {
        /// Monotonic counters plus a few gauges; cheap to bump from any task.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $field: AtomicU64, )*
            $( $(#[doc = $xdoc])* pub $xfield: $xty, )*
        }

        /// A consistent-enough copy of the counters for JSON output
        /// (`/api/info`'s `stats`): every counter of [`Stats`].
        #[derive(Debug, Serialize)]
        pub struct StatsSnapshot {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        impl Stats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $field: self.$field.load(Relaxed), )* }
            }
        }

        /// Every counter's metric, in `/metrics` order.
        pub const METRICS: &[Metric] = &[
            $( Metric {
                field: stringify!($field),
                read: |s| &s.$field,
                name: $name,
                label: counters!(@label $($label, $value)?),
                shown: Shown::$shown,
                help: $help,
            }, )*
        ];
    };
    (@label) => { None };
    (@label $label:literal, $value:literal) => { Some(($label, $value)) };
}

counters! {
    @extra {
        /// Connections ended, by why (indexed by [`Disconnect`]).
        disconnects: [AtomicU64; Disconnect::ALL.len()],
        /// Time from a publication's arrival from the broker to its last queued frame.
        fanout_seconds: FanoutHistogram,
        /// Time from an rpc's start to the backend's reply.
        rpc_seconds: RpcHistogram,
    }
    /// Connections currently open (gauge).
    connections => Custom "connections", "Open client connections";
    /// Of those, native-protocol (`/ws`) ones (gauge); the rest are plain.
    native_connections => Custom "connections", "Open client connections";
    /// Subscriptions currently held by all connections (gauge).
    subscriptions => Gauge "subscriptions", "Subscriptions held by open connections";
    /// 1 while writes are batched because fan-out could not keep up (gauge).
    write_batching => Gauge "write_batching", "1 while each client's messages are batched into one write because fan-out could not keep up with one write per delivery";
    /// Times write batching started because fan-out could not keep up.
    write_batching_starts => Counter "write_batching_starts", "Times write batching started because fan-out could not keep up";
    /// Connections accepted since start.
    connects => Counter "connects", "Connections accepted";
    /// Connections refused at admission: node, address, user or handshake-rate limits.
    connections_refused => Counter "connections_refused", "Connections refused by node, address, user or handshake-rate limits";
    /// Messages clients sent (frames of complete messages).
    client_messages => Counter "client_messages", "Messages received from clients";
    /// Publishes the broker refused (outage, timeout); the publisher was told.
    publish_failures => Counter "publish_failures", "Publishes the broker refused (the publisher was told)";
    /// Publications received from the broker for local delivery.
    messages_received => Counter "broker_messages", "Publications received from the broker for local delivery (any publisher, Redis PUBLISH included)";
    /// Frames queued to clients (one per subscriber per message).
    deliveries => Counter "deliveries", "Frames queued to clients, one per subscriber per message";
    /// HTTP connections closed for not sending their request headers in time.
    handshake_timeouts => Counter "handshake_timeouts", "HTTP connections closed for not sending request headers (or a TLS handshake) in time";
    /// Tokens refused (invalid, expired, missing) and commands denied for lack of rights.
    auth_denials => Counter "auth_denials", "Tokens refused and commands denied by permissions";
    /// HTTP requests refused with 421: their `Host` is not one this node
    /// answers to (`allowed_hosts`; DNS rebinding).
    hosts_refused => Counter "hosts_refused", "HTTP requests refused with 421 because their Host is not one this node answers to (allowed_hosts)";
    /// HTTP requests whose body was not complete within `request_timeout`
    /// (answered 408, connection closed).
    request_timeouts => Counter "request_timeouts", "HTTP requests whose body was not complete within request_timeout (408, connection closed)";
    /// TCP connections open and not upgraded to WebSocket: HTTP requests,
    /// idle keep-alive, handshakes in progress (gauge).
    http_connections => Gauge "http_connections", "Open TCP connections not upgraded to WebSocket (HTTP requests, handshakes in progress)";
    /// Not-upgraded connections closed to admit a newcomer, because
    /// `max_http_connections` or the fd budget was full.
    http_evictions => Counter "http_connections_dropped" ["reason" = "evicted"], "Connections the node closed to stay within max_http_connections and the fd limit, by reason";
    /// Connections closed at accept: no room under the fd limit and nothing
    /// to evict (answered 503 when the socket took it).
    sockets_refused => Counter "http_connections_dropped" ["reason" = "refused"], "Connections the node closed to stay within max_http_connections and the fd limit, by reason";
    /// Payload bytes of the messages clients sent.
    client_bytes => Bytes "client_received", "Payload bytes received from clients";
    /// Publishes made by clients (native `publish`, plain frames).
    client_publishes => Counter "publishes" ["source" = "client"], "Publishes made through this node, by source";
    /// Publishes made through the HTTP API.
    http_publishes => Counter "publishes" ["source" = "http"], "Publishes made through this node, by source";
    /// Publishes handed to the broker (from clients and the HTTP API).
    messages_published => Counter "broker_publishes", "Publishes handed to the broker (clients, HTTP API, orders)";
    /// Bytes of the frames queued to clients (deliveries × frame size).
    delivered_bytes => Bytes "delivered", "Bytes of the frames queued to clients";
    /// Publications on history channels that arrived without an offset (a
    /// raw Redis `PUBLISH`): delivered live, never recovered.
    unrecorded_publishes => Counter "unrecorded_publishes", "Publications on history channels that arrived without an offset (a raw Redis PUBLISH): delivered live but not kept for recovery";
    /// Reads of channel history on the broker (subscribe positions,
    /// recoveries, `history` commands and API calls).
    history_reads => Counter "history_reads", "Reads of channel history on the broker (subscribe positions, recoveries, history commands and API calls)";
    /// History channels a node repaired by itself after a broker reconnect.
    history_repairs => Counter "history_repairs" ["outcome" = "repaired"], "History channels a node repaired after a broker reconnect or lost live copies, by outcome (failed: their native clients were closed with 3008 to recover)";
    /// History channels it could not repair (native clients closed with 3008).
    history_repairs_failed => Counter "history_repairs" ["outcome" = "failed"], "History channels a node repaired after a broker reconnect or lost live copies, by outcome (failed: their native clients were closed with 3008 to recover)";
    /// History reads answered by another identical read (a recovery storm
    /// costs a few reads per channel, not one per client).
    history_reads_shared => Counter "history_reads_shared", "History reads answered by another client's identical read instead of one of their own (recovery storms)";
    /// History reads a node answered from its run of the channel
    /// (`node::tail`) instead of the broker.
    history_reads_local => Counter "history_reads_local", "History reads (subscribe positions, recoveries) a node answered from the recent publications it holds for a channel instead of reading the broker";
    /// Channels whose history was found below what a reader saw in the
    /// same epoch (a failover lost publications): a new epoch was started.
    history_epochs_restarted => Counter "history_epochs_restarted", "History channels found below what a reader had seen in the same epoch (a Redis failover lost their newest publications), given a new epoch so the lost offsets are never reused for them";
    /// Subscribes with `recover` answered `recovered: true`.
    recoveries_recovered => Counter "recoveries" ["outcome" = "recovered"], "Subscribes that asked to recover, by outcome (not_recovered: epoch changed or the gap is larger than history holds)";
    /// Subscribes with `recover` answered `recovered: false`.
    recoveries_failed => Counter "recoveries" ["outcome" = "not_recovered"], "Subscribes that asked to recover, by outcome (not_recovered: epoch changed or the gap is larger than history holds)";
    /// Users who joined a presence channel by a change this node made.
    presence_joins => Counter "presence_changes" ["change" = "join"], "Users who joined or left a presence channel by a change this node made (each pushed once, when the namespace sets join_leave)";
    /// Users who left a presence channel by a change this node made (its
    /// members leaving, or a vanished node's members it swept).
    presence_leaves => Counter "presence_changes" ["change" = "leave"], "Users who joined or left a presence channel by a change this node made (each pushed once, when the namespace sets join_leave)";
    /// Lease renewals (one call for all channels of one lease length).
    presence_ticks => Counter "presence_ticks", "Presence lease renewals this node made (one broker call for all its channels of one presence_ttl)";
    /// Rejoins: the node's lease on a channel was lost and it added its members back.
    presence_rejoins => Counter "presence_rejoins", "Times this node found its presence lease on a channel lost (a long pause, Redis emptied) and added its members back";
    /// Presence calls to the broker that failed (retried, or logged).
    presence_failures => Counter "presence_failures", "Presence broker calls that failed (joins refused to the client; leaves retried at each tick; each logged)";
    /// Pushes arriving on `#presence:<channel>` that were not a valid push
    /// for a `join_leave` channel (a raw PUBLISH there), dropped.
    presence_pushes_refused => Counter "presence_pushes_refused", "Messages on #presence:<channel> that were not a join/leave push for a join_leave channel (a raw PUBLISH there?), dropped";
    /// Pushes older than one this node delivered for the same user (two
    /// nodes' pushes crossed on the way), dropped.
    presence_pushes_stale => Counter "presence_pushes_stale", "Join/leave pushes dropped because a newer change of the same user in that channel was delivered first (pushes from two nodes crossed on the way)";
    /// Ingest stream entries this node published (as the stream's leader).
    ingest_published => Counter "ingest_entries" ["outcome" = "published"], "Ingest stream entries this node handled as the stream's leader, by outcome (rejected: dropped as bad, each logged; repeated: published before, by a leader that crashed before acknowledging it)";
    /// Ingest stream entries dropped as bad (no or an invalid channel, bad
    /// base64, over max_message_size, trimmed before read), each logged.
    ingest_rejected => Counter "ingest_entries" ["outcome" = "rejected"], "Ingest stream entries this node handled as the stream's leader, by outcome (rejected: dropped as bad, each logged; repeated: published before, by a leader that crashed before acknowledging it)";
    /// Ingest stream entries found published already (a leader crashed
    /// between publishing and acknowledging them): not published again.
    ingest_repeated => Counter "ingest_entries" ["outcome" = "repeated"], "Ingest stream entries this node handled as the stream's leader, by outcome (rejected: dropped as bad, each logged; repeated: published before, by a leader that crashed before acknowledging it)";
    /// Plain-client frames that could not be published (no error channel in plain mode).
    plain_publish_dropped => Counter "dropped_messages" ["reason" = "plain_publish_refused"], "Messages dropped, by reason (each also logged)";
    /// Clients cut because their outbound queue overflowed.
    slow_consumer_disconnects => Counter "forced_disconnects" ["reason" = "slow_consumer"], "Clients cut by the node, by reason";
    /// Clients cut because they stopped answering pings.
    heartbeat_timeouts => Counter "forced_disconnects" ["reason" = "heartbeat_timeout"], "Clients cut by the node, by reason";
    /// Clients cut for protocol violations (bad frames, oversized messages).
    protocol_errors => Counter "forced_disconnects" ["reason" = "protocol_error"], "Clients cut by the node, by reason";
    /// `/ws` clients cut for sending no command within `connect_timeout`.
    connect_timeouts => Counter "forced_disconnects" ["reason" = "connect_timeout"], "Clients cut by the node, by reason";
    /// Clients cut because their token expired without a refresh.
    token_expirations => Counter "forced_disconnects" ["reason" = "token_expired"], "Clients cut by the node, by reason";
    /// Connections closed by a `disconnect` order (HTTP API or `#control`).
    api_disconnects => Counter "forced_disconnects" ["reason" = "disconnect_order"], "Clients cut by the node, by reason";
    /// Client `send` messages handed to the backends.
    upstream_messages => Counter "upstream_messages" ["outcome" = "appended"], "Client messages up to the backends, by outcome (throttled: over a byte budget)";
    /// Client `send` messages the broker refused (the client was told).
    upstream_failures => Counter "upstream_messages" ["outcome" = "refused"], "Client messages up to the backends, by outcome (throttled: over a byte budget)";
    /// Client messages up to the backends (`send`, `rpc`, plain frames)
    /// refused for being over a byte budget: the connection's
    /// `max_upstream_rate` or the node's `max_upstream_node_rate`.
    upstream_throttled => Counter "upstream_messages" ["outcome" = "throttled"], "Client messages up to the backends, by outcome (throttled: over a byte budget)";
    /// Subscribe commands (and plain clients at the upgrade) refused for
    /// `max_subscriptions` or `max_subscriptions_per_ip`.
    subscriptions_refused => Counter "subscriptions_refused", "Subscribe commands and plain clients refused for max_subscriptions or max_subscriptions_per_ip";
    /// Connections removed from a channel by an `unsubscribe` order (native
    /// ones told with a push, plain ones closed with 3502).
    api_unsubscribes => Counter "order_unsubscribes", "Connections removed from a channel by an unsubscribe order";
    /// `/api/connections` queries asked on this node.
    connection_queries => Custom "connection_queries", "/api/connections queries asked on this node, by outcome";
    /// Of those, answered `incomplete` (a live node did not answer in time).
    queries_incomplete => Custom "connection_queries", "/api/connections queries asked on this node, by outcome";
    /// Queries refused because too many were in flight on this node.
    queries_refused => Custom "connection_queries", "/api/connections queries asked on this node, by outcome";
    /// Node answers dropped: late, for an unknown query, or not publishable.
    query_answers_dropped => Counter "query_answers_dropped", "Node answers to connection queries dropped (late, unknown or unpublishable)";
    /// Client `rpc`s accepted (each then answered, timed out, failed or abandoned).
    rpc_requests => Counter "rpc_requests", "Client rpcs accepted (each then answered, timed out, failed or abandoned)";
    /// rpcs answered by a backend (data or the backend's error).
    rpc_replies => Counter "rpc_outcomes" ["outcome" = "reply"], "Client calls (rpcs, HTTP-upstream sends) ended other than by success, and rpc replies, by outcome";
    /// rpcs answered with 113: no reply within `rpc_timeout`.
    rpc_timeouts => Counter "rpc_outcomes" ["outcome" = "timeout"], "Client calls (rpcs, HTTP-upstream sends) ended other than by success, and rpc replies, by outcome";
    /// Calls refused with 114: too many waiting on the connection or the node.
    rpc_refused => Counter "rpc_outcomes" ["outcome" = "refused"], "Client calls (rpcs, HTTP-upstream sends) ended other than by success, and rpc replies, by outcome";
    /// rpcs the stream could not take (Redis outage, no upstream); the client was told.
    rpc_failures => Counter "rpc_outcomes" ["outcome" = "failed"], "Client calls (rpcs, HTTP-upstream sends) ended other than by success, and rpc replies, by outcome";
    /// Waiting calls dropped because their connection ended.
    rpc_abandoned => Counter "rpc_outcomes" ["outcome" = "abandoned"], "Client calls (rpcs, HTTP-upstream sends) ended other than by success, and rpc replies, by outcome";
    /// Replies for no waiting call (after the timeout or the disconnect, or unknown ids), dropped.
    rpc_late_replies => Counter "rpc_late_replies", "Backend replies for no waiting call (late or unknown), dropped";
    /// Calls waiting for an answer now (gauge).
    rpc_pending => Gauge "rpc_pending", "Calls waiting for a backend's answer";
    /// Wall-clock nanoseconds spent in fan-out (concurrent ones add up): how
    /// the node tells it cannot keep up.
    fanout_busy_nanos => Custom "fanout_busy_seconds", "Seconds spent fanning out (concurrent fan-outs add up): busy time per second near the number of cores means fan-out cannot keep up";
}

/// Why a connection ended, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client sent a close frame.
    ClientClose,
    /// The TCP stream ended without a close frame.
    Eof,
    /// Reading the socket failed (reset...).
    ReadError,
    /// The client broke the WebSocket protocol.
    ProtocolError,
    /// The session closed it (rate limit, bad token, policy...).
    SessionClose,
    /// The node cut it (slow consumer, heartbeat, token expiry, shutdown).
    ServerCut,
}

impl Disconnect {
    /// Every reason, in index order.
    pub const ALL: [Disconnect; 6] = [
        Disconnect::ClientClose,
        Disconnect::Eof,
        Disconnect::ReadError,
        Disconnect::ProtocolError,
        Disconnect::SessionClose,
        Disconnect::ServerCut,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Disconnect::ClientClose => "client_close",
            Disconnect::Eof => "eof",
            Disconnect::ReadError => "read_error",
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::SessionClose => "session_close",
            Disconnect::ServerCut => "server_cut",
        }
    }
}

/// The fan-out latency histogram (buckets from 50 µs to 1 s).
#[derive(Debug, Clone)]
pub struct FanoutHistogram(pub prometheus_client::metrics::histogram::Histogram);

impl Default for FanoutHistogram {
    fn default() -> Self {
        FanoutHistogram(prometheus_client::metrics::histogram::Histogram::new([
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0,
        ]))
    }
}

/// The rpc latency histogram (buckets from 1 ms to 30 s).
#[derive(Debug, Clone)]
pub struct RpcHistogram(pub prometheus_client::metrics::histogram::Histogram);

impl Default for RpcHistogram {
    fn default() -> Self {
        RpcHistogram(prometheus_client::metrics::histogram::Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]))
    }
}

impl Stats {
    /// Counts a connection's end.
    pub fn disconnected(&self, why: Disconnect) {
        let index = Disconnect::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.disconnects[index].fetch_add(1, Relaxed);
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Adds `spent` to a nanosecond counter (busy-time sums the load sampler reads).
    pub fn add_nanos(counter: &AtomicU64, spent: std::time::Duration) {
        counter.fetch_add(u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}
