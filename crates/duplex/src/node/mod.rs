//! The node: the one place that wires the hub to the broker.
//!
//! A cheap-to-clone handle over everything a running node shares: config,
//! hub, broker, connection registry and counters. Sessions and the HTTP API
//! talk to the node, never to the broker or hub directly, so the rules live
//! here: the broker is subscribed when a channel gets its first local
//! subscriber and unsubscribed when it loses its last, with a striped lock
//! per channel so a concurrent first-subscribe and last-unsubscribe cannot
//! leave the broker out of step with the hub.

mod backends;
mod channels;
mod history;
mod ingest;
mod presence;
mod probe;
mod query;
mod registry;
mod reload;
mod repair;
mod tail;
mod tasks;
mod unsubscribe;

pub use probe::ProbeStats;
pub use query::{ConnectionList, QueryError};
mod rpc;
mod upstream;

pub(crate) use history::{fills_gap, history_query, kept, NO_HISTORY};
pub(crate) use presence::{info_json, Joiner};
pub(crate) use tail::Ticket;
pub(crate) use tasks::Tasks;
pub(crate) use upstream::{Message, Sent};

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::broker::redis::RedisSettings;
use crate::broker::redis_cluster::topology::is_cluster_url;
use crate::broker::{Broker, BrokerError, BrokerHandler, BrokerState, BrokerStatus};
use crate::config::reload::ReloadPlan;
use crate::config::Config;
use crate::conn::coalesce::Coalescer;
use crate::conn::outbound::{PushError, QueueLimits};
use crate::conn::Conn;
use crate::control::{CONTROL_CHANNEL, NODE_CHANNEL_PREFIX};
use crate::hub::Hub;
use crate::limits::{AddressSubscriptions, HandshakeLimit, SubscriptionLimit, UserLimit, UserSlot};
use crate::message::{Publication, Wire};
use crate::permissions::Permissions;
use crate::stats::{Stats, StatsSnapshot};
use crate::throttle::Throttle;

const STRIPES: usize = 256;
const REGISTRY_SHARDS: usize = 16;

type RegistryShard = Mutex<HashMap<u64, Arc<Conn>>>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Redis URL was refused by the client library.
    #[error("invalid redis configuration: {0}")]
    Redis(#[from] redis::RedisError),
    /// The NATS settings were refused.
    #[error("invalid nats configuration: {0}")]
    Nats(#[from] crate::broker::nats::NatsError),
    /// The `redis+cluster://` URL or its nodes.
    #[error(transparent)]
    RedisCluster(#[from] crate::broker::redis_cluster::ClusterError),
    /// The token key settings cannot be used.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// A namespace cannot be used.
    #[error(transparent)]
    Namespace(#[from] crate::permissions::InvalidNamespace),
    /// A namespace keeps presence and the broker cannot.
    #[error("a namespace sets presence = true, but {0}")]
    NoPresence(BrokerError),
}

/// Why a new connection was refused at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_connections` reached.
    #[error("this node is at its connection limit ({0}); try another node or later")]
    NodeFull(usize),
    /// `max_connections_per_ip` reached for the client's address.
    #[error("too many connections from your address (limit {0})")]
    AddressFull(usize),
    /// `max_handshakes_per_ip` exceeded.
    #[error(
        "too many connection attempts from your address (limit {0} per second); retry with backoff"
    )]
    HandshakeRate(u32),
}

/// Handle to a running node; clone freely.
#[derive(Clone, Debug)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    /// Swapped whole by a reload (config::reload says which settings change).
    config: ArcSwap<Config>,
    /// Checks connection tokens; None when token auth is off.
    verifier: ArcSwapOption<Verifier>,
    /// Who may subscribe and publish where.
    permissions: ArcSwap<Permissions>,
    /// Connections per user.
    users: Arc<UserLimit>,
    /// Handshakes per second per address.
    handshakes: HandshakeLimit,
    started: Instant,
    stats: Arc<Stats>,
    hub: Arc<Hub<Conn>>,
    broker: Broker,
    registry: Box<[RegistryShard]>,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    next_seq: AtomicU64,
    publish_warnings: Throttle,
    /// Warnings about publications without offsets on history channels.
    unrecorded_warnings: Throttle,
    /// Repairs of history channels after a broker reconnect.
    repairs: Arc<repair::Repairs>,
    /// What the node saw of each history channel it holds.
    tails: Arc<tail::Tails>,
    /// Whether any namespace keeps history (shared with [`Deliver`]).
    keeps_history: Arc<std::sync::atomic::AtomicBool>,
    /// History reads in flight, shared by identical ones.
    flights: history::Flights,
    /// Open connections per client address, when that limit is set.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Write coalescing: always with `write_delay`, while behind without.
    coalescer: Arc<Coalescer>,
    /// Channels taken from native connections by `unsubscribe` orders.
    revoked: unsubscribe::Revoked,
    /// Connection queries across nodes, and the live nodes that answer them.
    queries: query::Queries,
    /// Calls waiting for a backend's answer.
    rpcs: rpc::Rpcs,
    /// Bytes per second up to each upstream, all connections together.
    upstream_budget: crate::upstream::NodeBudget,
    /// Subscriptions per client address.
    address_subscriptions: Arc<SubscriptionLimit>,
    /// The HTTP upstream, when `upstream_url` is set or a namespace has its own.
    http: Option<crate::upstream::http::HttpUpstream>,
    /// Every background task the node started, so shutdown can wait for them.
    tasks: Tasks,
    /// The ingest stream's consumer, when `ingest_stream` is set.
    ingest: ingest::Switch,
    /// This node's members of presence channels.
    presence: presence::Locals,
    /// The pub/sub liveness probe's findings.
    probe: probe::Probe,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Hands broker deliveries to the hub, and orders on `#control` to the node.
struct Deliver {
    hub: Arc<Hub<Conn>>,
    stats: Arc<Stats>,
    /// Repairs of history channels after a broker reconnect.
    repairs: Arc<repair::Repairs>,
    /// What the node saw of each history channel it holds.
    tails: Arc<tail::Tails>,
    /// Whether any namespace keeps history (set at start and reload).
    keeps_history: Arc<std::sync::atomic::AtomicBool>,
    /// The node, once built (the broker needs this handler before it exists).
    node: std::sync::OnceLock<std::sync::Weak<Inner>>,
}

impl Deliver {
    /// The handler for a node's broker, with the history state it shares
    /// with the node.
    fn new(hub: &Arc<Hub<Conn>>, stats: &Arc<Stats>, keeps_history: bool) -> Arc<Deliver> {
        Arc::new(Deliver {
            hub: Arc::clone(hub),
            stats: Arc::clone(stats),
            repairs: Arc::default(),
            tails: Arc::default(),
            keeps_history: Arc::new(std::sync::atomic::AtomicBool::new(keeps_history)),
            node: std::sync::OnceLock::new(),
        })
    }

    /// Counts a publication without an offset on a history channel (a raw
    /// Redis `PUBLISH`): delivered live, never recovered.
    fn count_unrecorded(&self, channel: &ChannelName) {
        // Most deployments keep no history: one load, not a node handle per message.
        if !self.keeps_history.load(Relaxed) {
            return;
        }
        let Some(inner) = self.node.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let node = Node { inner };
        if node.history_rule(channel).is_some() {
            Stats::bump(&self.stats.unrecorded_publishes);
            if let Some(skipped) = node.inner.unrecorded_warnings.allow() {
                tracing::warn!(%channel, similar_skipped = skipped, "publication without an offset on a history channel (a raw PUBLISH?): delivered live, not kept for recovery; publish with FCALL duplex_publish or the HTTP API (counted in unrecorded_publishes)");
            }
        }
    }
}

impl Deliver {
    /// Repairs the channels held for it, as one of the node's tasks.
    fn start_repair(&self) {
        if let Some(inner) = self.node.get().and_then(std::sync::Weak::upgrade) {
            let node = Node { inner };
            let repairing = node.clone();
            node.inner
                .tasks
                .spawn(async move { repairing.repair().await });
        }
    }
}

impl BrokerHandler for Deliver {
    fn reconnecting(&self) {
        self.repairs.close_all(&self.tails);
    }

    fn reconnected(&self) {
        self.start_repair();
    }

    fn handle_publication(&self, publication: Publication) -> BoxFuture<'_, ()> {
        if let Some(channel) = presence::pushes_for(&publication.channel) {
            if let Some(inner) = self.node.get().and_then(std::sync::Weak::upgrade) {
                Node { inner }.deliver_presence(channel, &publication.payload);
            }
            return async {}.boxed();
        }
        if is_order_channel(&publication.channel) {
            if let Some(inner) = self.node.get().and_then(std::sync::Weak::upgrade) {
                Node { inner }.apply_order(&publication.payload);
            }
            return async {}.boxed();
        }
        Stats::bump(&self.stats.messages_received);
        if publication.position.is_none() {
            self.count_unrecorded(&publication.channel);
        }
        let Some(publication) = self.repairs.admit(publication) else {
            return async {}.boxed();
        };
        let hub = &self.hub;
        let held = || hub.holds(publication.channel.as_str());
        if let Err(from) = self.tails.note_live(&publication, held) {
            // Live copies were lost (the intake dropped them): read them
            // back before this one rather than skip them.
            self.repairs.close_one(from, publication);
            self.start_repair();
            return async {}.boxed();
        }
        async move {
            let started = Instant::now();
            Hub::broadcast_parallel(&self.hub, publication).await;
            let spent = started.elapsed();
            self.stats.fanout_seconds.0.observe(spent.as_secs_f64());
            Stats::add_nanos(&self.stats.fanout_busy_nanos, spent);
        }
        .boxed()
    }
}

/// What `/api/info` reports.
#[derive(Debug, Serialize)]
pub struct NodeInfo {
    /// Node id.
    pub node: String,
    /// Server version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Open client connections.
    pub connections: u64,
    /// Subscriptions held by those connections.
    pub subscriptions: u64,
    /// Channels with at least one local subscriber.
    pub channels: usize,
    /// Broker state.
    pub broker: BrokerState,
    /// Counters since start.
    pub stats: StatsSnapshot,
}

impl Node {
    /// Builds a node and starts its broker (Redis: connects in the background).
    pub fn start(config: Config) -> Result<Node, NodeError> {
        let tasks = Tasks::default();
        let verifier = Verifier::from_config(&config)?.map(Arc::new);
        if let Some(v) = &verifier {
            if !config.token_jwks_url.is_empty() {
                tasks.spawn(Verifier::keep_jwks_fresh(Arc::downgrade(v)));
            }
        }
        let permissions = Permissions::new(config.namespaces.clone())?;
        let users = UserLimit::new(config.max_connections_per_user);
        let handshakes = HandshakeLimit::new(config.max_handshakes_per_ip);
        let stats = Arc::new(Stats::default());
        let hub = Arc::new(Hub::new(Arc::clone(&stats)));
        let deliver = Deliver::new(&hub, &stats, permissions.keeps_history());
        let handler: Arc<dyn BrokerHandler> = Arc::clone(&deliver) as Arc<dyn BrokerHandler>;
        let id = if config.node_id.is_empty() {
            format!("{:08x}", rand::random::<u32>())
        } else {
            config.node_id.clone()
        };
        let broker = start_broker(&config, &id, handler)?;
        presence::check_broker(&permissions, &broker)?;
        let lanes = std::thread::available_parallelism().map_or(1, |n| n.get());
        let coalescer = Arc::new(Coalescer::new(config.write_delay, lanes));
        let rpcs = rpc::Rpcs::new(&config);
        let upstream_budget = crate::upstream::NodeBudget::new(
            config.max_upstream_node_rate,
            config.max_message_size,
        );
        let address_subscriptions = SubscriptionLimit::new(config.max_subscriptions_per_ip);
        let node = Node {
            inner: Arc::new_cyclic(|weak| Inner {
                http: upstream::start_http(&config, &permissions, &tasks, weak),
                rpcs,
                upstream_budget,
                address_subscriptions,
                id,
                config: ArcSwap::from_pointee(config),
                verifier: ArcSwapOption::new(verifier),
                permissions: ArcSwap::from_pointee(permissions),
                users,
                handshakes,
                started: Instant::now(),
                stats,
                hub,
                broker,
                registry: (0..REGISTRY_SHARDS).map(|_| Mutex::default()).collect(),
                stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                hasher: Default::default(),
                next_seq: AtomicU64::new(registry::first_seq()),
                publish_warnings: Throttle::new(1000),
                unrecorded_warnings: Throttle::new(10_000),
                repairs: Arc::clone(&deliver.repairs),
                tails: Arc::clone(&deliver.tails),
                keeps_history: Arc::clone(&deliver.keeps_history),
                flights: Default::default(),
                coalescer,
                per_ip: Mutex::default(),
                revoked: Default::default(),
                queries: Default::default(),
                tasks,
                ingest: Default::default(),
                presence: Default::default(),
                probe: Default::default(),
            }),
        };
        let _ = deliver.node.set(Arc::downgrade(&node.inner));
        node.share_history_table();
        node.inner.tasks.spawn(node.clone().tick_presence());
        Ok(node)
    }

    /// Node id, unique among nodes sharing a broker.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The settings the node runs with now (a reload may change them:
    /// read them where they are used rather than keeping them).
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.inner.config.load()
    }

    /// The token checker, when clients must present tokens.
    pub(crate) fn verifier(&self) -> Option<Arc<Verifier>> {
        self.inner.verifier.load_full()
    }

    /// Channel permissions.
    pub(crate) fn permissions(&self) -> Guard<Arc<Permissions>> {
        self.inner.permissions.load()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The counters as a handle of their own, for tables that outlive a borrow
    /// (the socket table).
    pub(crate) fn stats_handle(&self) -> Arc<Stats> {
        Arc::clone(&self.inner.stats)
    }

    /// Milliseconds since start: a cheap monotonic clock for liveness.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// Broker state, for health checks.
    pub fn broker_state(&self) -> BrokerState {
        self.inner.broker.state()
    }

    /// True while publishes can succeed.
    pub fn is_healthy(&self) -> bool {
        self.inner.broker.state().status == BrokerStatus::Connected
    }

    /// Everything `/api/info` shows.
    pub fn info(&self) -> NodeInfo {
        let stats = &self.inner.stats;
        NodeInfo {
            node: self.inner.id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            connections: stats.connections.load(Relaxed),
            subscriptions: stats.subscriptions.load(Relaxed),
            channels: self.inner.hub.channel_count(),
            broker: self.inner.broker.state(),
            stats: stats.snapshot(),
        }
    }

    /// Leaves the broker cleanly (the ingest stream's lease given back first).
    pub async fn close_broker(&self) {
        self.stop_ingest().await;
        self.inner.broker.close().await;
    }
}

/// The broker the config asks for, holding the node's order channels from its start (Redis, NATS: connects in the background).
fn start_broker(
    config: &Config,
    id: &str,
    handler: Arc<dyn BrokerHandler>,
) -> Result<Broker, NodeError> {
    let node_channels = vec![
        CONTROL_CHANNEL.to_string(),
        format!("{NODE_CHANNEL_PREFIX}{id}"),
    ];
    if let Some(nats) = config.nats_settings(id, &node_channels) {
        return Ok(Broker::nats(nats, handler)?);
    }
    let settings = |url: &str| RedisSettings {
        url: url.to_string(),
        prefix: config.redis_prefix.clone(),
        timeout: config.redis_timeout,
        health_interval: config.redis_health_interval,
        max_backoff: config.redis_max_backoff,
        upstream_maxlen: config.upstream_maxlen,
        backlog_bytes: config.redis_backlog_bytes,
        node_channels: node_channels.clone(),
        node_id: id.to_string(),
    };
    Ok(match config.redis_url() {
        None => Broker::memory(handler, &node_channels),
        Some(url) if is_cluster_url(url) => Broker::redis_cluster(settings(url), handler)?,
        Some(url) => Broker::redis(settings(url), handler)?,
    })
}

/// `#control` and `#node:<id>`: channels the node subscribes to for itself.
pub(crate) fn is_order_channel(channel: &ChannelName) -> bool {
    let name = channel.as_str();
    name == CONTROL_CHANNEL || name.starts_with(NODE_CHANNEL_PREFIX)
}
