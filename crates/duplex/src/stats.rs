//! Node-wide counters. Every dropped message and every forced disconnect
//! increments one of these, so nothing is lost silently; `/api/info` shows
//! them, and the Prometheus exporter (later) will read the same atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Monotonic counters plus a few gauges; cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections currently open (gauge).
    pub connections: AtomicU64,
    /// Of those, native-protocol (`/ws`) ones (gauge); the rest are plain.
    pub native_connections: AtomicU64,
    /// Connections ended, by why (indexed by [`Disconnect`]).
    pub disconnects: [AtomicU64; Disconnect::ALL.len()],
    /// Messages clients sent (frames of complete messages).
    pub client_messages: AtomicU64,
    /// Payload bytes of those messages.
    pub client_bytes: AtomicU64,
    /// Publishes made by clients (native `publish`, plain frames).
    pub client_publishes: AtomicU64,
    /// Publishes made through the HTTP API.
    pub http_publishes: AtomicU64,
    /// Bytes of the frames queued to clients (deliveries × frame size).
    pub delivered_bytes: AtomicU64,
    /// Time from a publication's arrival from the broker to its last queued frame.
    pub fanout_seconds: FanoutHistogram,
    /// Wall-clock nanoseconds spent in fan-out (concurrent ones add up): how
    /// the node tells it cannot keep up.
    pub fanout_busy_nanos: AtomicU64,
    /// 1 while writes are batched because fan-out could not keep up (gauge).
    pub write_batching: AtomicU64,
    /// Times write batching started because fan-out could not keep up.
    pub write_batching_starts: AtomicU64,
    /// Subscriptions currently held by all connections (gauge).
    pub subscriptions: AtomicU64,
    /// Connections accepted since start.
    pub connects: AtomicU64,
    /// Publications received from the broker for local delivery.
    pub messages_received: AtomicU64,
    /// Frames queued to clients (one per subscriber per message).
    pub deliveries: AtomicU64,
    /// Publishes handed to the broker (from clients and the HTTP API).
    pub messages_published: AtomicU64,
    /// Publishes the broker refused (outage, timeout); the publisher was told.
    pub publish_failures: AtomicU64,
    /// Plain-client frames that could not be published (no error channel in plain mode).
    pub plain_publish_dropped: AtomicU64,
    /// Clients cut because their outbound queue overflowed.
    pub slow_consumer_disconnects: AtomicU64,
    /// Clients cut because they stopped answering pings.
    pub heartbeat_timeouts: AtomicU64,
    /// Clients cut for protocol violations (bad frames, oversized messages).
    pub protocol_errors: AtomicU64,
    /// HTTP connections closed for not sending their request headers in time.
    pub handshake_timeouts: AtomicU64,
    /// `/ws` clients cut for sending no command within `connect_timeout`.
    pub connect_timeouts: AtomicU64,
    /// HTTP requests refused with 421: their `Host` is not one this node
    /// answers to (`allowed_hosts`; DNS rebinding).
    pub hosts_refused: AtomicU64,
    /// HTTP requests whose body was not complete within `request_timeout`
    /// (answered 408, connection closed).
    pub request_timeouts: AtomicU64,
    /// TCP connections open and not upgraded to WebSocket: HTTP requests,
    /// idle keep-alive, handshakes in progress (gauge).
    pub http_connections: AtomicU64,
    /// Not-upgraded connections closed to admit a newcomer, because
    /// `max_http_connections` or the fd budget was full.
    pub http_evictions: AtomicU64,
    /// Connections closed at accept: no room under the fd limit and nothing
    /// to evict (answered 503 when the socket took it).
    pub sockets_refused: AtomicU64,
    /// Tokens refused (invalid, expired, missing) and commands denied for lack of rights.
    pub auth_denials: AtomicU64,
    /// Clients cut because their token expired without a refresh.
    pub token_expirations: AtomicU64,
    /// Connections refused at admission: node, address, user or handshake-rate limits.
    pub connections_refused: AtomicU64,
    /// Connections closed by a `disconnect` order (HTTP API or `#control`).
    pub api_disconnects: AtomicU64,
    /// Client `send` messages handed to the backends.
    pub upstream_messages: AtomicU64,
    /// Client `send` messages the broker refused (the client was told).
    pub upstream_failures: AtomicU64,
    /// Client messages up to the backends (`send`, `rpc`, plain frames)
    /// refused for being over a byte budget: the connection's
    /// `max_upstream_rate` or the node's `max_upstream_node_rate`.
    pub upstream_throttled: AtomicU64,
    /// Subscribe commands (and plain clients at the upgrade) refused for
    /// `max_subscriptions` or `max_subscriptions_per_ip`.
    pub subscriptions_refused: AtomicU64,
    /// Connections removed from a channel by an `unsubscribe` order (native
    /// ones told with a push, plain ones closed with 3502).
    pub api_unsubscribes: AtomicU64,
    /// `/api/connections` queries asked on this node.
    pub connection_queries: AtomicU64,
    /// Of those, answered `incomplete` (a live node did not answer in time).
    pub queries_incomplete: AtomicU64,
    /// Queries refused because too many were in flight on this node.
    pub queries_refused: AtomicU64,
    /// Node answers dropped: late, for an unknown query, or not publishable.
    pub query_answers_dropped: AtomicU64,
    /// Client `rpc`s accepted (each then answered, timed out, failed or abandoned).
    pub rpc_requests: AtomicU64,
    /// rpcs answered by a backend (data or the backend's error).
    pub rpc_replies: AtomicU64,
    /// rpcs answered with 113: no reply within `rpc_timeout`.
    pub rpc_timeouts: AtomicU64,
    /// Calls refused with 114: too many waiting on the connection or the node.
    pub rpc_refused: AtomicU64,
    /// rpcs the stream could not take (Redis outage, no upstream); the client was told.
    pub rpc_failures: AtomicU64,
    /// Waiting calls dropped because their connection ended.
    pub rpc_abandoned: AtomicU64,
    /// Replies for no waiting call (after the timeout or the disconnect, or unknown ids), dropped.
    pub rpc_late_replies: AtomicU64,
    /// Calls waiting for an answer now (gauge).
    pub rpc_pending: AtomicU64,
    /// Time from an rpc's start to the backend's reply.
    pub rpc_seconds: RpcHistogram,
}

/// A consistent-enough copy of the counters for JSON output.
#[derive(Debug, Serialize)]
pub struct StatsSnapshot {
    /// See [`Stats::connects`].
    pub connects: u64,
    /// See [`Stats::messages_received`].
    pub messages_received: u64,
    /// See [`Stats::deliveries`].
    pub deliveries: u64,
    /// See [`Stats::messages_published`].
    pub messages_published: u64,
    /// See [`Stats::publish_failures`].
    pub publish_failures: u64,
    /// See [`Stats::plain_publish_dropped`].
    pub plain_publish_dropped: u64,
    /// See [`Stats::slow_consumer_disconnects`].
    pub slow_consumer_disconnects: u64,
    /// See [`Stats::write_batching`].
    pub write_batching: u64,
    /// See [`Stats::write_batching_starts`].
    pub write_batching_starts: u64,
    /// See [`Stats::heartbeat_timeouts`].
    pub heartbeat_timeouts: u64,
    /// See [`Stats::protocol_errors`].
    pub protocol_errors: u64,
    /// See [`Stats::handshake_timeouts`].
    pub handshake_timeouts: u64,
    /// See [`Stats::connect_timeouts`].
    pub connect_timeouts: u64,
    /// See [`Stats::hosts_refused`].
    pub hosts_refused: u64,
    /// See [`Stats::request_timeouts`].
    pub request_timeouts: u64,
    /// See [`Stats::http_connections`].
    pub http_connections: u64,
    /// See [`Stats::http_evictions`].
    pub http_evictions: u64,
    /// See [`Stats::sockets_refused`].
    pub sockets_refused: u64,
    /// See [`Stats::auth_denials`].
    pub auth_denials: u64,
    /// See [`Stats::token_expirations`].
    pub token_expirations: u64,
    /// See [`Stats::connections_refused`].
    pub connections_refused: u64,
    /// See [`Stats::api_disconnects`].
    pub api_disconnects: u64,
    /// See [`Stats::upstream_messages`].
    pub upstream_messages: u64,
    /// See [`Stats::upstream_failures`].
    pub upstream_failures: u64,
    /// See [`Stats::upstream_throttled`].
    pub upstream_throttled: u64,
    /// See [`Stats::subscriptions_refused`].
    pub subscriptions_refused: u64,
    /// See [`Stats::api_unsubscribes`].
    pub api_unsubscribes: u64,
    /// See [`Stats::connection_queries`].
    pub connection_queries: u64,
    /// See [`Stats::queries_incomplete`].
    pub queries_incomplete: u64,
    /// See [`Stats::queries_refused`].
    pub queries_refused: u64,
    /// See [`Stats::query_answers_dropped`].
    pub query_answers_dropped: u64,
    /// See [`Stats::rpc_requests`].
    pub rpc_requests: u64,
    /// See [`Stats::rpc_replies`].
    pub rpc_replies: u64,
    /// See [`Stats::rpc_timeouts`].
    pub rpc_timeouts: u64,
    /// See [`Stats::rpc_refused`].
    pub rpc_refused: u64,
    /// See [`Stats::rpc_failures`].
    pub rpc_failures: u64,
    /// See [`Stats::rpc_abandoned`].
    pub rpc_abandoned: u64,
    /// See [`Stats::rpc_late_replies`].
    pub rpc_late_replies: u64,
    /// See [`Stats::rpc_pending`].
    pub rpc_pending: u64,
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

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connects: self.connects.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            messages_published: self.messages_published.load(Relaxed),
            publish_failures: self.publish_failures.load(Relaxed),
            plain_publish_dropped: self.plain_publish_dropped.load(Relaxed),
            slow_consumer_disconnects: self.slow_consumer_disconnects.load(Relaxed),
            write_batching: self.write_batching.load(Relaxed),
            write_batching_starts: self.write_batching_starts.load(Relaxed),
            heartbeat_timeouts: self.heartbeat_timeouts.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            handshake_timeouts: self.handshake_timeouts.load(Relaxed),
            connect_timeouts: self.connect_timeouts.load(Relaxed),
            hosts_refused: self.hosts_refused.load(Relaxed),
            request_timeouts: self.request_timeouts.load(Relaxed),
            http_connections: self.http_connections.load(Relaxed),
            http_evictions: self.http_evictions.load(Relaxed),
            sockets_refused: self.sockets_refused.load(Relaxed),
            auth_denials: self.auth_denials.load(Relaxed),
            token_expirations: self.token_expirations.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            api_disconnects: self.api_disconnects.load(Relaxed),
            upstream_messages: self.upstream_messages.load(Relaxed),
            upstream_failures: self.upstream_failures.load(Relaxed),
            upstream_throttled: self.upstream_throttled.load(Relaxed),
            subscriptions_refused: self.subscriptions_refused.load(Relaxed),
            api_unsubscribes: self.api_unsubscribes.load(Relaxed),
            connection_queries: self.connection_queries.load(Relaxed),
            queries_incomplete: self.queries_incomplete.load(Relaxed),
            queries_refused: self.queries_refused.load(Relaxed),
            query_answers_dropped: self.query_answers_dropped.load(Relaxed),
            rpc_requests: self.rpc_requests.load(Relaxed),
            rpc_replies: self.rpc_replies.load(Relaxed),
            rpc_timeouts: self.rpc_timeouts.load(Relaxed),
            rpc_refused: self.rpc_refused.load(Relaxed),
            rpc_failures: self.rpc_failures.load(Relaxed),
            rpc_abandoned: self.rpc_abandoned.load(Relaxed),
            rpc_late_replies: self.rpc_late_replies.load(Relaxed),
            rpc_pending: self.rpc_pending.load(Relaxed),
        }
    }
}
