//! Client calls handed up to the backends: `rpc` (and, with an HTTP
//! upstream, `send`). On Redis the call is an entry in the upstream stream
//! naming this node's reply channel; with an upstream URL it is a POST. The
//! answer comes back through [`Node::finish_call`].
//!
//! Where a message goes is its [`Route`]: the namespace of the channel it
//! names (a plain client's channel, a native `send`/`rpc`'s `channel`) may
//! have its own stream and URL; otherwise the node's.
//!
//! Every message up costs its bytes against two byte budgets before it
//! goes: the connection's (`max_upstream_rate`, kept by the session) and
//! the node's for its destination (`max_upstream_node_rate`, one per stream
//! and per URL), so neither one client nor many together can push more than
//! a known number of bytes per second into Redis. What Redis then holds is
//! bounded by `upstream_maxlen` entries per stream (docs/UPSTREAM.md).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::payload::Encoding;
use serde::Serialize;
use serde_json::value::RawValue;

use super::http_upstream::Job;
use super::rpc::{Answer, Full};
use super::Node;
use crate::broker::{BrokerError, Upstream};
use crate::conn::Conn;
use crate::rate::{RateLimit, Verdict};
use crate::stats::Stats;
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
    warnings: Throttle,
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
    fn take(&self, destination: &str, cost: usize) -> bool {
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

/// Why a call was not handed to the backends.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// A bound on waiting calls was reached.
    #[error(transparent)]
    Full(#[from] Full),
    /// The broker could not take it (outage, timeout, or no upstream at all).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The JSON body POSTed to `upstream_url`: the stream entry's fields.
#[derive(Serialize)]
struct HttpCall<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<Encoding>,
    connection: &'a str,
    user: &'a str,
    node: &'a str,
    request: String,
    ts: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
}

/// Where one upstream message goes.
#[derive(Debug, Clone)]
pub(crate) struct Route<'a> {
    /// The Redis Stream (before `redis_prefix`); owned, as a reload may
    /// replace the config and namespaces it came from.
    pub(crate) stream: String,
    /// The HTTP endpoint, when there is one: `send` and `rpc` go there
    /// instead of the stream (plain frames always go to the stream).
    pub(crate) url: Option<Arc<str>>,
    /// The channel that picked the route, named in the entry or body.
    pub(crate) channel: Option<&'a str>,
}

/// Why an rpc cannot go anywhere.
const NO_UPSTREAM: &str =
    "rpc needs the Redis broker (--redis) or an HTTP upstream (--upstream-url, or a namespace upstream_url for the channel it names)";

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl Node {
    /// A connection's own byte budget up to the backends
    /// (`max_upstream_rate`, in bursts of one `max_message_size` message),
    /// closing after `max_publish_rate` refusals in a row as the publish
    /// rate limit does.
    pub(crate) fn connection_upstream_budget(&self) -> RateLimit {
        let config = self.config();
        let rate = config.max_upstream_rate;
        RateLimit::with_burst(
            rate as u64,
            rate.max(config.max_message_size) as u64,
            config.max_publish_rate,
        )
    }

    /// Charges a message of `cost` bytes up to `route` against the
    /// connection's budget (`own`) and then the node's for the route's
    /// destination; a refusal is counted (`upstream_throttled`) and logged
    /// (throttled), and takes nothing from either budget. A message with
    /// no upstream at all (memory broker, no URL) is not charged.
    pub(crate) fn charge_upstream(
        &self,
        conn: &Conn,
        own: &mut RateLimit,
        cost: usize,
        route: &Route<'_>,
    ) -> Result<(), OverBudget> {
        let config = self.config();
        if route.url.is_none() && config.redis_url().is_none() {
            // Nowhere to go: refused next (102), not charged.
            return Ok(());
        }
        let refused = match own.check_cost(cost as u64) {
            Verdict::Allow => {
                let destination = route.url.as_deref().unwrap_or(&route.stream);
                if self.inner.upstream_budget.take(destination, cost) {
                    return Ok(());
                }
                own.refund(cost as u64);
                OverBudget::Node(config.max_upstream_node_rate)
            }
            Verdict::Refuse => OverBudget::Connection(config.max_upstream_rate),
            Verdict::Close => OverBudget::KeptOn(config.max_upstream_rate),
        };
        Stats::bump(&self.inner.stats.upstream_throttled);
        if let Some(skipped) = self.inner.upstream_budget.warnings.allow() {
            tracing::warn!(
                conn = %conn.id,
                addr = %conn.remote,
                bytes = cost,
                stream = route.stream,
                url = route.url.as_deref().unwrap_or(""),
                refused = %refused,
                similar_skipped = skipped,
                "message up to the backends refused: over a byte budget (counted in upstream_throttled)"
            );
        }
        Err(refused)
    }

    /// Where a message about `channel` (or about no channel) goes, the most
    /// specific first: the channel's namespace's `upstream_url`, then its
    /// `upstream_stream`, then the node's `upstream_url`, then the node's
    /// `upstream_stream`.
    pub(crate) fn route<'a>(&self, channel: Option<&'a str>) -> Route<'a> {
        let permissions = self.permissions();
        let own = channel.map(|c| permissions.upstream(c)).unwrap_or_default();
        let node_url = self.inner.http.as_ref().and_then(|h| h.default_url());
        // A namespace that names its own stream keeps its messages off the node's URL.
        let url = match own.stream {
            Some(_) => own.url,
            None => own.url.or(node_url),
        };
        Route {
            stream: own
                .stream
                .map_or_else(|| self.config().upstream_stream.clone(), str::to_string),
            url: url.cloned(),
            channel,
        }
    }

    /// A stream entry for a client's message: `kind`, the data and its
    /// encoding, who sent it (connection, user, node), when, the routing
    /// channel, and `extra` fields (an rpc's method, request, reply_to).
    pub(super) fn upstream_entry(
        &self,
        conn: &Conn,
        kind: &'static str,
        (data, encoding): (Bytes, &'static str),
        extra: Vec<(&'static str, Bytes)>,
        route: &Route<'_>,
    ) -> Upstream {
        let mut fields = vec![
            ("kind", Bytes::from_static(kind.as_bytes())),
            ("data", data),
            ("encoding", Bytes::from_static(encoding.as_bytes())),
            ("connection", Bytes::copy_from_slice(conn.id.as_bytes())),
            (
                "user",
                Bytes::copy_from_slice(conn.user().unwrap_or("").as_bytes()),
            ),
            ("node", Bytes::copy_from_slice(self.inner.id.as_bytes())),
            ("ts", Bytes::from(unix_millis().to_string())),
        ];
        fields.extend(extra);
        if let Some(channel) = route.channel {
            fields.push(("channel", Bytes::copy_from_slice(channel.as_bytes())));
        }
        Upstream {
            stream: route.stream.to_string(),
            fields,
        }
    }

    /// The channel backends publish rpc replies to: this node's own, with
    /// the Redis prefix, exactly as a worker's `PUBLISH` must name it.
    pub fn reply_channel(&self) -> String {
        format!("{}{}", self.config().redis_prefix, self.node_channel())
    }

    /// Starts an rpc: the client's reply is queued when the backend answers,
    /// on timeout, or never if the connection ends first.
    pub(crate) async fn call_upstream(
        &self,
        conn: &Arc<Conn>,
        command: u64,
        method: &str,
        data: &RawValue,
        route: Route<'_>,
    ) -> Result<(), CallError> {
        if route.url.is_none() && self.config().redis_url().is_none() {
            return Err(BrokerError::Unsupported(NO_UPSTREAM).into());
        }
        let request = self.begin_call(conn, command, Answer::Rpc)?;
        if let Some(url) = route.url {
            let call = Call {
                request,
                answer: Answer::Rpc,
                method: Some(method),
                data,
                encoding: None,
                channel: route.channel,
            };
            return self.post_call(conn, call, url);
        }
        let entry = self.upstream_entry(
            conn,
            "rpc",
            (Bytes::copy_from_slice(data.get().as_bytes()), "json"),
            vec![
                ("method", Bytes::copy_from_slice(method.as_bytes())),
                ("request", Bytes::from(request.to_string())),
                ("reply_to", Bytes::from(self.reply_channel())),
            ],
            &route,
        );
        let appended = match self.inner.broker.upstream() {
            Ok(log) => log.append(entry).await,
            Err(unsupported) => Err(unsupported),
        };
        match appended {
            Ok(()) => Ok(()),
            // Already answered (timed out while Redis was slow): no second reply.
            Err(_) if !self.abandon_call(request) => Ok(()),
            Err(e) => {
                crate::stats::Stats::bump(&self.inner.stats.rpc_failures);
                Err(e.into())
            }
        }
    }

    /// A client's `send` through the HTTP upstream at `url`, acknowledged
    /// after the backend's 2xx (the data checked by the caller).
    pub(crate) fn send_upstream_http(
        &self,
        conn: &Arc<Conn>,
        command: u64,
        data: &RawValue,
        encoding: Encoding,
        channel: Option<&str>,
        url: Arc<str>,
    ) -> Result<(), CallError> {
        let request = self.begin_call(conn, command, Answer::Send)?;
        let call = Call {
            request,
            answer: Answer::Send,
            method: None,
            data,
            encoding: Some(encoding),
            channel,
        };
        self.post_call(conn, call, url)
    }

    /// A plain client's frame to the HTTP upstream, fire and forget: the
    /// POST's outcome is counted when it comes (`upstream_messages`, or
    /// `upstream_failures` and `plain_publish_dropped`); a full queue
    /// refuses it at once.
    pub(crate) fn post_frame(
        &self,
        conn: &Conn,
        payload: &[u8],
        kind: duplex_protocol::ws::MessageKind,
        channel: &str,
        url: Arc<str>,
    ) -> Result<(), CallError> {
        use base64::Engine as _;
        let (text, encoding) = match (kind, std::str::from_utf8(payload)) {
            (duplex_protocol::ws::MessageKind::Text, Ok(text)) => (text.to_string(), None),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(payload),
                Some(Encoding::Base64),
            ),
        };
        let data = serde_json::value::to_raw_value(&text)
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let body = HttpCall {
            kind: "send",
            method: None,
            data: &data,
            encoding,
            connection: &conn.id,
            user: conn.user().unwrap_or(""),
            node: &self.inner.id,
            request: String::new(),
            ts: unix_millis(),
            channel: Some(channel),
        };
        let full = || CallError::Full(Full::Node(self.config().max_inflight_rpcs));
        let (Some(http), Ok(body)) = (&self.inner.http, serde_json::to_vec(&body)) else {
            return Err(full());
        };
        let job = Job {
            request: 0,
            connection: Arc::clone(&conn.id),
            answer: None,
            body,
            url,
        };
        http.submit(job).map_err(|_| full())
    }

    /// Counts how a plain frame's POST ended.
    pub(super) fn frame_posted(&self, connection: &str, outcome: super::rpc::Outcome) {
        let stats = &self.inner.stats;
        match outcome {
            super::rpc::Outcome::Data(_) => crate::stats::Stats::bump(&stats.upstream_messages),
            other => {
                crate::stats::Stats::bump(&stats.upstream_failures);
                crate::stats::Stats::bump(&stats.plain_publish_dropped);
                tracing::debug!(conn = %connection, outcome = ?other, "plain client's message dropped: the HTTP upstream refused it");
            }
        }
    }

    fn post_call(&self, conn: &Conn, call: Call<'_>, url: Arc<str>) -> Result<(), CallError> {
        let Call {
            request, answer, ..
        } = call;
        let body = HttpCall {
            kind: if answer == Answer::Rpc { "rpc" } else { "send" },
            method: call.method,
            data: call.data,
            encoding: call.encoding,
            connection: &conn.id,
            user: conn.user().unwrap_or(""),
            node: &self.inner.id,
            request: request.to_string(),
            ts: unix_millis(),
            channel: call.channel,
        };
        let full = || {
            self.abandon_call(request);
            CallError::Full(Full::Node(self.config().max_inflight_rpcs))
        };
        let (Some(http), Ok(body)) = (&self.inner.http, serde_json::to_vec(&body)) else {
            return Err(full());
        };
        let job = Job {
            request,
            connection: Arc::clone(&conn.id),
            answer: Some(answer),
            body,
            url,
        };
        http.submit(job).map_err(|_| full())
    }
}

/// One call for the HTTP upstream, before it becomes a body.
struct Call<'a> {
    request: u64,
    answer: Answer,
    method: Option<&'a str>,
    data: &'a RawValue,
    encoding: Option<Encoding>,
    channel: Option<&'a str>,
}
