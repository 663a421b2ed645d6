//! Brokers carry publications between nodes.
//!
//! A broker is one backend (the embedded memory broker, Redis) seen through
//! separate abilities, one trait each, so that no trait grows into one
//! object with every method and a backend offers only what it can:
//!
//! - [`PubSub`] (every broker): node-wide subscriptions (never one per
//!   client) and publishing to every node that holds a channel. Its
//!   supertrait [`Link`] is the backend's connection: its state for
//!   `/health` and leaving it at shutdown.
//! - [`UpstreamLog`] (Redis and NATS): clients' messages appended to
//!   streams that backend workers read (NATS: JetStream streams).
//! - [`IngestLog`] (Redis only): a stream backends `XADD` publications to,
//!   which the nodes republish once each, in order (`broker::ingest`).
//! - [`History`] (memory and Redis): a channel's recent
//!   publications at offsets within an epoch, appended and published in
//!   one atomic step, and read back by range (`broker::history` holds the
//!   contract; Redis does it in a Redis Function library that backends can
//!   `FCALL` too, `broker/redis/history.rs`). The live copy of a recorded
//!   publication carries its [`Position`](crate::message::Position).
//! - [`Presence`] (memory and Redis): a channel's members (connection,
//!   user, info) under one lease per node that each node renews for all
//!   its channels in one call; users join on their first connection and
//!   leave after their last, and a vanished node's members are swept once
//!   its lease expires, their leaves answered exactly once to the node
//!   that swept (`broker::presence` holds the contract; Redis does it in
//!   the same Function library, `broker/redis/presence.rs`).
//!
//! The node holds a [`Broker`]: one `Arc` per ability, `None` where the
//! backend lacks it (asking for it then answers [`BrokerError::Unsupported`]
//! with what to configure instead). A backend is built by one constructor
//! on [`Broker`] and must pass the conformance suite in
//! `crates/duplex/tests/broker_conformance.rs`: adding a backend there is
//! one line plus its fixture.
//!
//! # The `PubSub` contract
//!
//! The node subscribes a channel when its first local client wants it and
//! unsubscribes when the last one leaves. Everything published on a channel
//! this node holds, including by this node, comes back through the
//! [`BrokerHandler`] given at construction, so every node (this one too)
//! sees one order per channel; nothing comes for channels it does not hold.
//! Delivery is at most once; per channel, messages from one publisher
//! arrive in publish order. A subscribe is answered `Ok` only once the
//! broker confirmed it (messages published after that reach this node),
//! and refused, with nothing left behind, while it cannot be; confirmed
//! subscriptions are kept across reconnects.
//!
//! # Where the next abilities plug in
//!
//! Each is a new trait here, a new `Option<Arc<dyn ...>>` field on
//! [`Broker`] with an accessor like [`Broker::upstream`], implemented by
//! the backends that can, and a group of conformance cases; [`PubSub`],
//! [`UpstreamLog`] and `History` stay as they are (History, issue 17, was
//! the first added this way: `broker/history/`; `IngestLog` the second,
//! `broker/ingest.rs`, its cases in `broker_conformance/ingest.rs`;
//! `Presence` the third, `broker/presence/`, its cases in
//! `broker_conformance/presence.rs`: join and leave pushes travel as
//! publications over [`PubSub`], sent by the node a change was answered to).
//!
//! - More backends (issue 19: Redis Cluster sharded Pub/Sub, Sentinel;
//!   NATS is `broker/nats/`, [`PubSub`] and [`UpstreamLog`]): each a new module implementing [`PubSub`] and whichever other
//!   abilities it can hold (history and presence keys hash-tagged by
//!   channel so they live on the shard that carries its messages), a
//!   constructor on [`Broker`], a fixture in the conformance suite. The
//!   Redis Cluster one is `broker/redis_cluster/` ([`Broker::redis_cluster`]). A
//!   backend that cannot hold an ability leaves it `None`, and the config
//!   check refuses at start the namespaces that need it.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::message::Publication;

mod echo;
pub mod exclusion;
pub mod history;
pub mod ingest;
mod intake;
pub mod memory;
pub mod nats;
mod overlap;
pub mod presence;
pub mod redis;
pub mod redis_cluster;

use self::history::History;
use self::ingest::IngestLog;
use self::memory::MemoryBroker;
use self::nats::{NatsBroker, NatsError, NatsSettings};
use self::presence::Presence;
use self::redis::{RedisBroker, RedisSettings};
use self::redis_cluster::{ClusterError, RedisClusterBroker};

/// Receives what the broker delivers to this node.
pub trait BrokerHandler: Send + Sync + 'static {
    /// A publication on a channel this node subscribed. Brokers await it
    /// before handing over the next one, which keeps per-channel order even
    /// when the fan-out runs on several threads.
    fn handle_publication(&self, publication: Publication) -> BoxFuture<'_, ()>;

    /// The broker lost its connection and is about to subscribe again:
    /// what was published meanwhile never reached this node. Called before
    /// the first message of the new connection.
    fn reconnecting(&self) {}

    /// Every channel is subscribed again after a lost connection (the
    /// node may now read what it missed from history).
    fn reconnected(&self) {}
}

/// Why a broker operation failed; all are temporary from the caller's view.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection to the broker right now.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker did not answer within the configured bound.
    #[error("broker timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The broker is shut down.
    #[error("broker is closed")]
    Closed,
    /// This broker cannot do that (e.g. upstream messages on the memory broker).
    #[error("{0}")]
    Unsupported(&'static str),
}

/// A connection held by another node: its node id and its number there
/// (the connection id `<node>.<seq>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteConnection<'a> {
    /// The node holding it.
    pub node: &'a str,
    /// Its number on that node.
    pub seq: u64,
}

/// One message from a client up to the backends: the fields of a stream entry.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Stream (key) to append to.
    pub stream: String,
    /// Field-value pairs, in order.
    pub fields: Vec<(&'static str, Bytes)>,
}

/// Connection state shown by `/health` and `/api/info`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BrokerStatus {
    /// Usable.
    Connected,
    /// Trying to (re)connect; publishes fail, subscriptions are kept and restored.
    Disconnected,
}

/// Broker state plus when it last changed and why.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerState {
    /// `memory`, `redis` or `nats`.
    pub kind: &'static str,
    /// Usable or not.
    pub status: BrokerStatus,
    /// Seconds since the Unix epoch of the last change.
    pub since: u64,
    /// Last error seen, while disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Reconnects since start.
    pub reconnects: u64,
    /// Messages the broker sent that this node dropped because it could
    /// not fan them out as fast as they came (its backlog was full).
    pub dropped: u64,
    /// Bytes of messages from the broker waiting for fan-out now.
    pub backlog_bytes: u64,
}

impl BrokerState {
    pub(crate) fn new(kind: &'static str, status: BrokerStatus) -> Self {
        BrokerState {
            kind,
            status,
            since: unix_now(),
            last_error: None,
            reconnects: 0,
            dropped: 0,
            backlog_bytes: 0,
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A backend's connection: what every ability of it shares.
pub trait Link: Send + Sync + 'static {
    /// Current state, for health checks.
    fn state(&self) -> BrokerState;
    /// Leaves the backend cleanly (unsubscribe, close connections).
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Whether other nodes can share it: only then do node heartbeats and
    /// questions to every node (`/api/connections`) mean anything.
    fn shared(&self) -> bool;
    /// Drops the link that receives subscriptions and makes it again, all
    /// channels subscribed anew (`reconnecting`/`reconnected` as after a
    /// lost connection): the liveness probe's repair when what this node
    /// publishes stops coming back (`node/probe.rs`). A backend without
    /// such a link does nothing.
    fn relink(&self) {}
}

/// Moves publications between nodes (or within one node): the ability
/// every broker has (the module doc holds the contract).
pub trait PubSub: Link {
    /// Publishes to every node that subscribed the channel, this one included.
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Publishes to every node but skips one connection held by another
    /// node (`exclude` on `/api/publish`: the sender, for a backend that
    /// publishes on a client's behalf). The holding node must learn which
    /// message to skip before the message itself, in order. A broker with
    /// one node has no other node's connections: it just publishes.
    fn publish_excluding(
        &self,
        publication: Publication,
        _excluded: RemoteConnection<'_>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.publish(publication)
    }
    /// Starts receiving a channel on this node; `Ok` once the broker
    /// confirmed it, an error (and nothing recorded) when it cannot; kept
    /// across reconnects once confirmed.
    fn subscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Stops receiving a channel on this node.
    fn unsubscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// Hands clients' messages to the backends: the entries of streams that
/// workers read (Redis: `XADD`, read with consumer groups).
pub trait UpstreamLog: Send + Sync + 'static {
    /// Appends one entry, its fields in order.
    fn append(&self, message: Upstream) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// What [`Broker::upstream`] answers on a backend without streams.
const NO_UPSTREAM: &str =
    "upstream messages need the Redis broker (--redis), NATS (--nats) or an HTTP upstream (--upstream-url)";

/// What [`Broker::ingest`] answers on a backend without streams.
const NO_INGEST: &str = "the ingest stream needs the Redis broker (--redis)";

/// What [`Broker::history`] answers on a backend without history.
const NO_HISTORY: &str =
    "this broker keeps no channel history: history needs Redis (--redis) or the embedded broker";

/// What [`Broker::presence`] answers on a backend without presence.
const NO_PRESENCE: &str =
    "this broker keeps no presence: presence needs Redis (--redis) or the embedded broker";

/// The broker a node runs on: one backend, seen through its abilities
/// (cheap to clone: every ability is shared).
#[derive(Clone)]
pub struct Broker {
    pubsub: Arc<dyn PubSub>,
    upstream: Option<Arc<dyn UpstreamLog>>,
    history: Option<Arc<dyn History>>,
    ingest: Option<Arc<dyn IngestLog>>,
    presence: Option<Arc<dyn Presence>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("kind", &self.pubsub.state().kind)
            .field("upstream", &self.upstream.is_some())
            .field("history", &self.history.is_some())
            .field("ingest", &self.ingest.is_some())
            .field("presence", &self.presence.is_some())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// The embedded broker of a single node; it holds `node_channels` (the
    /// node's order channels) for its whole life, as [`RedisSettings`] does.
    pub fn memory(handler: Arc<dyn BrokerHandler>, node_channels: &[String]) -> Self {
        let memory = Arc::new(MemoryBroker::new(handler, node_channels));
        Broker {
            pubsub: Arc::clone(&memory) as Arc<dyn PubSub>,
            upstream: None,
            history: Some(Arc::clone(&memory) as Arc<dyn History>),
            ingest: None,
            presence: Some(memory),
        }
    }

    /// The Redis broker; starts its tasks and returns at once, even while
    /// Redis is down (see [`RedisBroker::start`]).
    pub fn redis(
        settings: RedisSettings,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<Self, ::redis::RedisError> {
        let redis = Arc::new(RedisBroker::start(settings, handler)?);
        Ok(Broker {
            pubsub: Arc::clone(&redis) as Arc<dyn PubSub>,
            upstream: Some(Arc::clone(&redis) as Arc<dyn UpstreamLog>),
            history: Some(Arc::clone(&redis) as Arc<dyn History>),
            ingest: Some(Arc::clone(&redis) as Arc<dyn IngestLog>),
            presence: Some(redis),
        })
    }

    /// The NATS broker (`broker::nats`): channels, and upstream streams on
    /// JetStream; no history, ingest or presence; starts its tasks and
    /// returns at once, even while NATS is down.
    pub fn nats(
        settings: NatsSettings,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<Self, NatsError> {
        let nats = Arc::new(NatsBroker::start(settings, handler)?);
        Ok(Broker {
            pubsub: Arc::clone(&nats) as Arc<dyn PubSub>,
            upstream: Some(nats),
            history: None,
            ingest: None,
            presence: None,
        })
    }

    /// The Redis Cluster broker (sharded Pub/Sub; `redis+cluster://` URLs):
    /// channels, upstream streams, history and presence; no ingest stream
    /// yet (the config refuses it on a cluster); starts like [`Broker::redis`].
    pub fn redis_cluster(
        settings: RedisSettings,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<Self, ClusterError> {
        let cluster = Arc::new(RedisClusterBroker::start(settings, handler)?);
        Ok(Broker {
            pubsub: Arc::clone(&cluster) as Arc<dyn PubSub>,
            upstream: Some(Arc::clone(&cluster) as Arc<dyn UpstreamLog>),
            history: Some(Arc::clone(&cluster) as Arc<dyn History>),
            ingest: None,
            presence: Some(cluster),
        })
    }

    /// Channel delivery between nodes.
    pub fn pubsub(&self) -> &dyn PubSub {
        &*self.pubsub
    }

    /// Upstream streams, or why this backend has none.
    pub fn upstream(&self) -> Result<&dyn UpstreamLog, BrokerError> {
        self.upstream
            .as_deref()
            .ok_or(BrokerError::Unsupported(NO_UPSTREAM))
    }

    /// The ingest stream's steps, or why this backend has none.
    pub fn ingest(&self) -> Result<&dyn IngestLog, BrokerError> {
        self.ingest
            .as_deref()
            .ok_or(BrokerError::Unsupported(NO_INGEST))
    }

    /// Whether other nodes share this backend ([`Link::shared`]).
    pub fn shared(&self) -> bool {
        self.pubsub.shared()
    }

    /// Channel history, or why this backend has none (every backend has it today).
    pub fn history(&self) -> Result<&dyn History, BrokerError> {
        self.history
            .as_deref()
            .ok_or(BrokerError::Unsupported(NO_HISTORY))
    }

    /// Channel presence, or why this backend has none (every backend has it today).
    pub fn presence(&self) -> Result<&dyn Presence, BrokerError> {
        self.presence
            .as_deref()
            .ok_or(BrokerError::Unsupported(NO_PRESENCE))
    }

    /// The backend's connection state, for health checks.
    pub fn state(&self) -> BrokerState {
        self.pubsub.state()
    }

    /// Leaves the backend cleanly; once, whatever abilities share it.
    pub async fn close(&self) {
        self.pubsub.close().await;
    }
}
