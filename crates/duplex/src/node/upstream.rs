//! Client messages handed up to the backends, wired to this node: a native
//! `send` or a plain client's frame (fire and forget, or acknowledged after
//! an HTTP upstream's 2xx) and an `rpc` (answered through
//! [`Node::finish_call`]). The [`Route`] decides between the stream and a
//! URL; what travels is `crate::upstream::body`.
//!
//! Every message up costs its bytes against two byte budgets before it
//! goes: the connection's (`max_upstream_rate`, kept by the session) and
//! the node's for its destination (`max_upstream_node_rate`, one per stream
//! and per URL), so neither one client nor many together can push more than
//! a known number of bytes per second into Redis. What Redis then holds is
//! bounded by `upstream_maxlen` entries per stream (docs/UPSTREAM.md).

use std::sync::{Arc, Weak};

use bytes::Bytes;
use duplex_protocol::payload::Encoding;
use duplex_protocol::ws::MessageKind;
use serde_json::value::RawValue;

use super::{Inner, Node, Tasks};
use crate::broker::{BrokerError, Upstream};
use crate::config::Config;
use crate::conn::Conn;
use crate::permissions::Permissions;
use crate::rate::{RateLimit, Verdict};
use crate::stats::Stats;
use crate::upstream::body::{self, HttpCall, Sender};
use crate::upstream::http::{HttpUpstream, Job};
use crate::upstream::signature::Signer;
use crate::upstream::{Answer, CallError, Full, OverBudget, Route};

/// Why an rpc cannot go anywhere.
const NO_UPSTREAM: &str =
    "rpc needs the Redis broker (--redis), NATS (--nats) or an HTTP upstream (--upstream-url, or a namespace upstream_url for the channel it names)";

/// A client's message up: a native `send` or a plain client's frame.
#[derive(Debug)]
pub(crate) struct Message<'a> {
    /// The message bytes, as a stream entry carries them.
    pub(crate) payload: Bytes,
    /// Text or binary.
    pub(crate) kind: MessageKind,
    /// A native `send`: its command id (acknowledged after an HTTP
    /// upstream's 2xx) and its `data` as the client wrote it. `None`: a
    /// plain frame, fire and forget.
    pub(crate) send: Option<(u64, &'a RawValue, Encoding)>,
}

/// How a message up went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// In the stream: a `send` is acknowledged now.
    Appended,
    /// Queued for the HTTP upstream: a `send` is acknowledged (or a plain
    /// frame counted) when the POST ends.
    Posting,
}

/// The HTTP upstream, when the node or a namespace names a URL; its
/// driver runs on the node's tasks and reports to [`Node::posted`].
pub(super) fn start_http(
    config: &Config,
    permissions: &Permissions,
    tasks: &Tasks,
    node: &Weak<Inner>,
) -> Option<HttpUpstream> {
    if config.upstream_url.is_empty() && !permissions.has_upstream_urls() {
        return None;
    }
    let node = node.clone();
    let finished = Box::new(move |job, outcome| {
        if let Some(inner) = node.upgrade() {
            Node { inner }.posted(job, outcome);
        }
    });
    let (upstream, driver) = HttpUpstream::start(
        Some(config.upstream_url.as_str()).filter(|u| !u.is_empty()),
        config.rpc_timeout,
        config.upstream_concurrency,
        config.max_inflight_rpcs,
        config.max_message_size,
        Signer::new(&config.upstream_secret),
        finished,
    );
    tasks.spawn(driver);
    Some(upstream)
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

    /// Whether a message on `route` has anywhere to go.
    fn has_upstream(&self, route: &Route<'_>) -> bool {
        route.url.is_some() || self.inner.broker.upstream().is_ok()
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
        if !self.has_upstream(route) {
            // Nowhere to go: refused next (102), not charged.
            return Ok(());
        }
        let config = self.config();
        let refused = match own.check_cost(cost as u64) {
            Verdict::Allow => {
                if self.inner.upstream_budget.take(route.destination(), cost) {
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

    /// Where a message about `channel` (or about no channel) goes
    /// ([`Route::resolve`]).
    pub(crate) fn route<'a>(&self, channel: Option<&'a str>) -> Route<'a> {
        let permissions = self.permissions();
        let own = channel.map(|c| permissions.upstream(c)).unwrap_or_default();
        let node_url = self.inner.http.as_ref().and_then(|h| h.default_url());
        Route::resolve(own, node_url, &self.config().upstream_stream, channel)
    }

    /// Who `conn` is, as entries and bodies name it.
    fn sender<'a>(&'a self, conn: &'a Conn) -> Sender<'a> {
        Sender {
            connection: &conn.id,
            user: conn.user().unwrap_or(""),
            node: &self.inner.id,
        }
    }

    /// The channel backends publish rpc replies to: this node's own, with
    /// the Redis prefix, exactly as a worker's `PUBLISH` must name it (on
    /// NATS: its subject, as a worker's `nats pub` must name it).
    pub fn reply_channel(&self) -> String {
        let config = self.config();
        match config.nats_url() {
            Some(_) => {
                crate::broker::nats::subject::subject(&config.nats_prefix, &self.node_channel())
            }
            None => format!("{}{}", config.redis_prefix, self.node_channel()),
        }
    }

    /// Hands a client's message to the backends on `route`: POSTed when
    /// the route has a URL, else appended to its stream. Every refusal is
    /// counted in `upstream_failures`; a stream append's success in
    /// `upstream_messages` (a POST's when it ends).
    pub(crate) async fn send_up(
        &self,
        conn: &Arc<Conn>,
        message: Message<'_>,
        route: &Route<'_>,
    ) -> Result<Sent, CallError> {
        let sent = match (&route.url, message.send) {
            (Some(url), Some((command, data, encoding))) => {
                let request = self.begin_call(conn, command, Answer::Send)?;
                let mut body = HttpCall::new(self.sender(conn), "send", data);
                body.encoding = Some(encoding);
                body.channel = route.channel;
                self.post(conn, body, request, Some(Answer::Send), url)
                    .map(|()| Sent::Posting)
            }
            (Some(url), None) => self.post_frame(conn, &message, route, url),
            (None, _) => self
                .append(conn, message, route)
                .await
                .map(|()| Sent::Appended),
        };
        if let Err(e) = &sent {
            Stats::bump(&self.inner.stats.upstream_failures);
            if let Some(skipped) = self.inner.publish_warnings.allow() {
                tracing::warn!(conn = %conn.id, error = %e, similar_skipped = skipped, "message up to the backends refused (counted in upstream_failures)");
            }
        }
        sent
    }

    /// A plain frame for the HTTP upstream, fire and forget.
    fn post_frame(
        &self,
        conn: &Conn,
        message: &Message<'_>,
        route: &Route<'_>,
        url: &Arc<str>,
    ) -> Result<Sent, CallError> {
        let (data, encoding) = body::frame_data(&message.payload, message.kind)
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut body = HttpCall::new(self.sender(conn), "send", &data);
        body.encoding = encoding;
        body.channel = route.channel;
        self.post(conn, body, 0, None, url).map(|()| Sent::Posting)
    }

    /// A message as an entry in the route's stream (docs/UPSTREAM.md).
    async fn append(
        &self,
        conn: &Conn,
        message: Message<'_>,
        route: &Route<'_>,
    ) -> Result<(), CallError> {
        let encoding = body::entry_encoding(message.kind);
        let entry = body::stream_entry(
            self.sender(conn),
            "send",
            (message.payload, encoding),
            Vec::new(),
            route,
        );
        self.append_entry(entry).await?;
        Stats::bump(&self.inner.stats.upstream_messages);
        Ok(())
    }

    async fn append_entry(&self, entry: Upstream) -> Result<(), BrokerError> {
        self.inner.broker.upstream()?.append(entry).await
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
        if !self.has_upstream(&route) {
            return Err(BrokerError::Unsupported(NO_UPSTREAM).into());
        }
        let request = self.begin_call(conn, command, Answer::Rpc)?;
        if let Some(url) = &route.url {
            let mut body = HttpCall::new(self.sender(conn), "rpc", data);
            body.method = Some(method);
            body.channel = route.channel;
            return self.post(conn, body, request, Some(Answer::Rpc), url);
        }
        let entry = body::stream_entry(
            self.sender(conn),
            "rpc",
            (Bytes::copy_from_slice(data.get().as_bytes()), "json"),
            vec![
                ("method", Bytes::copy_from_slice(method.as_bytes())),
                ("request", Bytes::from(request.to_string())),
                ("reply_to", Bytes::from(self.reply_channel())),
            ],
            &route,
        );
        match self.append_entry(entry).await {
            Ok(()) => Ok(()),
            // Already answered (timed out while Redis was slow): no second reply.
            Err(_) if !self.abandon_call(request) => Ok(()),
            Err(e) => {
                Stats::bump(&self.inner.stats.rpc_failures);
                Err(e.into())
            }
        }
    }

    /// Queues a body for the HTTP upstream at `url`; `answer` is what the
    /// client waits for (`None`: nothing, a plain frame). A full queue
    /// refuses it at once, withdrawing its call.
    fn post(
        &self,
        conn: &Conn,
        mut body: HttpCall<'_>,
        request: u64,
        answer: Option<Answer>,
        url: &Arc<str>,
    ) -> Result<(), CallError> {
        if answer.is_some() {
            body.request = request.to_string();
        }
        let full = || {
            if answer.is_some() {
                self.abandon_call(request);
            }
            CallError::Full(Full::Node(self.config().max_inflight_rpcs))
        };
        let (Some(http), Ok(body)) = (&self.inner.http, serde_json::to_vec(&body)) else {
            return Err(full());
        };
        let job = Job {
            request,
            connection: Arc::clone(&conn.id),
            answer,
            body: body.into(),
            url: Arc::clone(url),
        };
        http.submit(job).map_err(|_| full())
    }

    /// How an HTTP upstream request ended: a call is answered, a plain
    /// frame's POST only counted (`upstream_messages`, or
    /// `upstream_failures` and `plain_publish_dropped`).
    pub(super) fn posted(&self, job: Job, outcome: crate::upstream::Outcome) {
        if job.answer.is_some() {
            return self.finish_call(&job.request.to_string(), &job.connection, outcome);
        }
        let stats = &self.inner.stats;
        match outcome {
            crate::upstream::Outcome::Data(_) => Stats::bump(&stats.upstream_messages),
            other => {
                Stats::bump(&stats.upstream_failures);
                Stats::bump(&stats.plain_publish_dropped);
                tracing::debug!(conn = %job.connection, outcome = ?other, "plain client's message dropped: the HTTP upstream refused it");
            }
        }
    }
}
