//! The NATS broker: any number of nodes share channels through core NATS
//! subjects, and clients' messages up go to JetStream streams.
//!
//! - One NATS connection per node (`async-nats`), which reconnects with
//!   jittered backoff and subscribes everything again by itself; the node
//!   holds one NATS subscription per channel it holds, read by a task of
//!   its own (`channels`) that hands every message to the bounded,
//!   per-channel fair `Intake` queue without ever waiting.
//! - NATS acknowledges no SUB, so a subscribe is answered `Ok` after a
//!   round trip behind it (`link`): a probe published on this node's own
//!   sync subject comes back only once the server processed every earlier
//!   operation of this connection, the SUB included. The same round trip
//!   after a reconnect confirms the resubscriptions before the broker
//!   counts as connected again; publishes and subscribes are refused
//!   until then.
//! - Channel names map to subjects by `subject` (prefix, then the name with
//!   `%`, `.`, `*`, `>` escaped), so `nats pub chat hi` from any NATS
//!   client reaches WebSocket clients of `chat`; payloads travel verbatim,
//!   their text/binary kind inferred from UTF-8 validity as with Redis.
//! - Exclusions (a local sender with echo off, `exclude` on `/api/publish`)
//!   ride in the message itself, as a `Duplex-Exclude: <node>.<seq>`
//!   header the holding node reads: NATS carries headers, so no notice and
//!   no echo matching are needed (what `broker::echo` and
//!   `broker::exclusion` do for Redis, whose messages are bare bytes).
//! - Upstream streams (`upstream`): each a JetStream stream the node makes
//!   when missing, an entry one message (the `data` field its payload, the
//!   other fields `Duplex-<field>` headers), appended with the JetStream
//!   ack awaited; workers read them with durable pull consumers.
//! - No history, presence or ingest stream: those abilities are `None`
//!   and the config check refuses namespaces that need them.

mod channels;
mod link;
pub mod subject;
pub mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::{Client, HeaderMap, ServerAddr};
use duplex_protocol::channel::ChannelName;
use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::intake::Intake;
use super::{
    unix_now, BrokerError, BrokerHandler, BrokerState, BrokerStatus, Link, PubSub,
    RemoteConnection, Upstream, UpstreamLog,
};
use crate::message::Publication;
use crate::throttle::Throttle;

/// The header that names the connection (`<node>.<seq>`) a message skips.
pub const EXCLUDE_HEADER: &str = "Duplex-Exclude";

/// Settings of the NATS broker.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://[user:password@]host[:port]`, comma-separated for several
    /// servers of one cluster.
    pub url: String,
    /// Prepended to every subject (see `subject`).
    pub prefix: String,
    /// Bound on connects, publishes, each subscribe's round trip and each
    /// upstream append (its JetStream ack included).
    pub timeout: Duration,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
    /// Bytes of messages from NATS that may wait for fan-out before the
    /// busiest channels' new ones are dropped (see `broker::intake`).
    pub backlog_bytes: usize,
    /// Channels the node listens to for its whole life: its order channels.
    pub node_channels: Vec<String>,
    /// This node's id: exclusion headers naming `<id>.<seq>` are for it.
    pub node_id: String,
    /// Messages each upstream JetStream stream keeps (`max_msgs`, the
    /// oldest dropped first), when the node makes it.
    pub upstream_maxlen: usize,
}

/// Why the NATS broker cannot start with these settings.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A server address is not a NATS URL.
    #[error("{0}")]
    Url(String),
    /// The prefix would make invalid or shared subjects.
    #[error("nats_prefix {0}")]
    Prefix(&'static str),
}

/// Why `url` cannot name the NATS servers, with the form to use; None when it can.
pub fn nats_url_problem(url: &str) -> Option<String> {
    servers(url).err().map(|e| e.to_string())
}

/// The servers of a comma-separated list of NATS URLs.
fn servers(url: &str) -> Result<Vec<ServerAddr>, NatsError> {
    let parts: Vec<&str> = url.split(',').map(str::trim).collect();
    parts
        .iter()
        .map(|part| {
            let problem = |why: String| {
                NatsError::Url(format!(
                    "{:?} is not a NATS URL ({why}); the form is nats://[user:password@]host[:port], comma-separated for several servers",
                    redacted(part)
                ))
            };
            if !part.contains("://") {
                return Err(problem("the scheme is missing: nats://".to_string()));
            }
            part.parse::<ServerAddr>()
                .map_err(|e| problem(e.to_string()))
        })
        .collect()
}

struct Shared {
    settings: NatsSettings,
    /// Set once by the connecting task, right after the client is built.
    client: OnceLock<Client>,
    state: Mutex<BrokerState>,
    /// Bumped (under `state`'s lock) at every connect and disconnect: a
    /// round trip confirms only the connection it started on.
    generation: AtomicU64,
    /// Set at the first confirmed connect: later ones are reconnects.
    connected_before: AtomicBool,
    /// A connection was lost since the last confirmed one: the handler is
    /// owed a `reconnected`.
    lost: AtomicBool,
    probes: link::Probes,
    /// The JetStream side: upstream streams.
    upstream: upstream::Streams,
    /// The channels this node holds, each with its reader.
    channels: Mutex<HashMap<ChannelName, channels::Reader>>,
    intake: Intake,
    /// Messages `async-nats` dropped because a subscription's buffer was
    /// full (one slow-consumer event each), counted with the intake's.
    slow_dropped: AtomicU64,
    drop_warnings: Throttle,
    event_warnings: Throttle,
    handler: Arc<dyn BrokerHandler>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Broker backed by core NATS.
pub struct NatsBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("prefix", &self.shared.settings.prefix)
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Starts connecting in the background and returns at once, even while
    /// NATS is down (the node starts degraded and connects when it comes up).
    pub fn start(
        settings: NatsSettings,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<Self, NatsError> {
        let addrs = servers(&settings.url)?;
        if let Some(problem) = subject::prefix_problem(&settings.prefix) {
            return Err(NatsError::Prefix(problem));
        }
        let shared = Arc::new(Shared {
            probes: link::Probes::new(&settings.prefix),
            upstream: upstream::Streams::new(),
            intake: Intake::new(settings.backlog_bytes),
            slow_dropped: AtomicU64::new(0),
            settings,
            client: OnceLock::new(),
            state: Mutex::new(BrokerState::new("nats", BrokerStatus::Disconnected)),
            generation: AtomicU64::new(0),
            connected_before: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            channels: Mutex::default(),
            drop_warnings: Throttle::new(1000),
            event_warnings: Throttle::new(1000),
            handler,
            cancel: CancellationToken::new(),
            tasks: Mutex::default(),
        });
        let tasks = vec![
            tokio::spawn(link::run(Arc::clone(&shared), addrs)),
            tokio::spawn(deliver(Arc::clone(&shared))),
        ];
        shared.tasks.lock().extend(tasks);
        Ok(NatsBroker { shared })
    }
}

/// Hands what NATS sent to the node, one publication at a time (the
/// handler's await keeps each channel's order through the fan-out).
async fn deliver(shared: Arc<Shared>) {
    while let Some(publication) = shared.intake.pop().await {
        shared.handler.handle_publication(publication).await;
    }
}

impl Shared {
    /// The client while the connection is confirmed, else why not: an
    /// "ok" publish always means this node's own subscriptions were in
    /// place at the server, as with Redis.
    fn up(&self) -> Result<&Client, BrokerError> {
        let down = |why: &str| {
            BrokerError::Unavailable(format!("nats is unreachable ({why}); retry shortly"))
        };
        {
            let state = self.state.lock();
            if state.status != BrokerStatus::Connected {
                return Err(down(
                    state.last_error.as_deref().unwrap_or("not connected yet"),
                ));
            }
        }
        let client = self.client.get().ok_or_else(|| down("not connected yet"))?;
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err(down("connection lost"));
        }
        Ok(client)
    }

    async fn publish(&self, p: Publication, excluded: Option<String>) -> Result<(), BrokerError> {
        let client = self.up()?;
        let subject = subject::subject(&self.settings.prefix, p.channel.as_str());
        let mut headers = HeaderMap::new();
        if let Some(seq) = p.exclude {
            headers.append(EXCLUDE_HEADER, format!("{}.{seq}", self.settings.node_id));
        }
        if let Some(connection) = excluded {
            headers.append(EXCLUDE_HEADER, connection);
        }
        let sent = async {
            if headers.is_empty() {
                client.publish(subject, p.payload).await
            } else {
                client
                    .publish_with_headers(subject, headers, p.payload)
                    .await
            }
        };
        match tokio::time::timeout(self.settings.timeout, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BrokerError::Unavailable(format!(
                "nats publish failed: {e}"
            ))),
            Err(_) => Err(BrokerError::Timeout(self.settings.timeout)),
        }
    }

    fn set_connected(&self, generation: u64) {
        let mut state = self.state.lock();
        if self.generation.load(Ordering::SeqCst) != generation
            || state.status == BrokerStatus::Connected
        {
            return;
        }
        let first = !self.connected_before.swap(true, Ordering::Relaxed);
        state.status = BrokerStatus::Connected;
        state.since = unix_now();
        state.last_error = None;
        if !first {
            state.reconnects += 1;
        }
        drop(state);
        let channels = self.channels.lock().len();
        if first {
            tracing::info!("nats connected");
        } else {
            tracing::info!(channels, "nats reconnected; channels subscribed again");
        }
        if self.lost.swap(false, Ordering::SeqCst) {
            self.handler.reconnected();
        }
    }

    /// Marks the link down (a new generation); true when it was up.
    fn set_disconnected(&self, error: &str) -> bool {
        let mut state = self.state.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        let was_connected = state.status == BrokerStatus::Connected;
        state.status = BrokerStatus::Disconnected;
        state.last_error = Some(error.to_string());
        if was_connected {
            state.since = unix_now();
        }
        drop(state);
        if was_connected {
            tracing::error!(error, "nats connection lost; messages published meanwhile are not delivered here; reconnecting");
        }
        was_connected
    }
}

impl Link for NatsBroker {
    fn state(&self) -> BrokerState {
        let mut state = self.shared.state.lock().clone();
        state.dropped =
            self.shared.intake.dropped() + self.shared.slow_dropped.load(Ordering::Relaxed);
        state.backlog_bytes = self.shared.intake.backlog() as u64;
        state
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let shared = &self.shared;
            let timeout = shared.settings.timeout;
            shared.cancel.cancel();
            shared.intake.close();
            let readers: Vec<channels::Reader> =
                shared.channels.lock().drain().map(|(_, r)| r).collect();
            for reader in readers {
                reader.stop(timeout).await;
            }
            if let Some(client) = shared.client.get() {
                let _ = tokio::time::timeout(timeout, client.drain()).await;
            }
            let tasks = std::mem::take(&mut *shared.tasks.lock());
            for task in tasks {
                let _ = tokio::time::timeout(timeout, task).await;
            }
        }
        .boxed()
    }

    fn shared(&self) -> bool {
        true
    }
}

impl PubSub for NatsBroker {
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.shared.publish(publication, None).boxed()
    }

    fn publish_excluding(
        &self,
        publication: Publication,
        excluded: RemoteConnection<'_>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let connection = format!("{}.{}", excluded.node, excluded.seq);
        self.shared.publish(publication, Some(connection)).boxed()
    }

    fn subscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.shared.subscribe(channel).boxed()
    }

    fn unsubscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.shared.unsubscribe(channel).boxed()
    }
}

impl UpstreamLog for NatsBroker {
    fn append(&self, message: Upstream) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.shared.append(message).boxed()
    }
}

/// A URL as it may be shown: a password in it replaced by `***`.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
