//! What the cases need of a backend, and one [`Fixture`] per backend.
//!
//! A node here is what a Duplex node holds of its broker: a [`Broker`] and
//! the handler it delivers to, which only records (the brokers are real).

use std::sync::Arc;
use std::time::Duration;

use duplex::broker::nats::NatsSettings;
use duplex::broker::redis::RedisSettings;
use duplex::broker::{Broker, BrokerHandler, BrokerStatus};
use duplex::message::Publication;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::support;
use crate::support::nats_server::NatsServer;
use crate::support::redis_server::RedisServer;

/// What a backend does with a message's text/binary kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KindRule {
    /// Delivered as published (memory).
    Kept,
    /// Only bytes travel: text when the bytes are UTF-8 (Redis).
    InferredFromUtf8,
}

/// One upstream stream entry: its fields in order.
pub(crate) type Entry = Vec<(String, Vec<u8>)>;

/// One backend under test.
pub(crate) trait Fixture: Sized + Send + 'static {
    /// Nodes that share channels on it (memory: only one node exists).
    const NODES: usize;
    /// What it does with the message kind.
    const KIND: KindRule;
    /// Whether it holds upstream streams.
    const UPSTREAM: bool;
    /// Whether it has the ingest stream.
    const INGEST: bool;

    /// Brings the backend up.
    async fn start() -> Self;
    /// A node on it, connected; `id` is its node id.
    async fn node(&self, id: &str) -> Node;
    /// Another node `id` sharing `node`'s backend for presence (memory:
    /// the same broker under another node id, which presence tells apart
    /// by the connection ids' node part).
    async fn peer(&self, node: &Node, id: &str) -> Node;
    /// Commands the backend has processed so far, when it counts them
    /// (Redis: `INFO stats` `total_commands_processed`, the `INFO` included).
    async fn commands_processed(&self) -> Option<u64>;
    /// Takes the backend away; false when it cannot go away (memory).
    fn stop(&mut self) -> bool;
    /// Brings it back, empty; false when it cannot go away (memory).
    fn restart(&mut self) -> bool;
    /// The entries of an upstream stream, as a worker reads them.
    async fn upstream_entries(&self, stream: &str) -> Vec<Entry>;
    /// Publishes `data` on `channel` as a backend does without history
    /// (Redis: a plain client's `PUBLISH`; memory: the node's `PubSub`).
    async fn raw_publish(&self, node: &Node, channel: &str, data: &str);
}

/// A broker as one node holds it, and what it delivered to that node.
pub(crate) struct Node {
    /// Its node id.
    pub(crate) id: String,
    pub(crate) broker: Broker,
    pub(crate) seen: Seen,
}

/// The publications a broker handed to its node, in order.
pub(crate) struct Seen(mpsc::UnboundedReceiver<Publication>);

impl Seen {
    /// The next one, waiting for it (a panic after [`support::WAIT`]).
    pub(crate) async fn next(&mut self) -> Publication {
        match tokio::time::timeout(support::WAIT, self.0.recv()).await {
            Ok(Some(publication)) => publication,
            Ok(None) => panic!("the broker dropped its handler"),
            Err(_) => panic!("nothing delivered within {:?}", support::WAIT),
        }
    }
}

/// The handler given to the broker: hands each publication to [`Seen`].
struct Record(mpsc::UnboundedSender<Publication>);

impl BrokerHandler for Record {
    fn handle_publication(&self, publication: Publication) -> BoxFuture<'_, ()> {
        let _ = self.0.send(publication);
        Box::pin(async {})
    }
}

fn recorder() -> (Arc<dyn BrokerHandler>, Seen) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Record(tx)), Seen(rx))
}

/// The embedded broker.
pub(crate) struct Memory;

impl Fixture for Memory {
    const NODES: usize = 1;
    const KIND: KindRule = KindRule::Kept;
    const UPSTREAM: bool = false;
    const INGEST: bool = false;

    async fn start() -> Self {
        Memory
    }

    async fn node(&self, id: &str) -> Node {
        let (handler, seen) = recorder();
        Node {
            id: id.to_string(),
            broker: Broker::memory(handler, &[]),
            seen,
        }
    }

    async fn peer(&self, node: &Node, id: &str) -> Node {
        let (_handler, seen) = recorder();
        Node {
            id: id.to_string(),
            broker: node.broker.clone(),
            seen,
        }
    }

    async fn commands_processed(&self) -> Option<u64> {
        None
    }

    fn stop(&mut self) -> bool {
        false
    }

    fn restart(&mut self) -> bool {
        false
    }

    async fn upstream_entries(&self, _stream: &str) -> Vec<Entry> {
        Vec::new()
    }

    async fn raw_publish(&self, node: &Node, channel: &str, data: &str) {
        let publication = Publication {
            channel: duplex_protocol::channel::ChannelName::parse(channel, usize::MAX)
                .expect("valid channel name"),
            payload: bytes::Bytes::copy_from_slice(data.as_bytes()),
            kind: duplex_protocol::ws::MessageKind::Text,
            exclude: None,
            position: None,
        };
        node.broker
            .pubsub()
            .publish(publication)
            .await
            .expect("publish");
    }
}

/// The Redis broker, nodes on one private redis-server.
pub(crate) struct Redis {
    server: RedisServer,
}

/// Every Redis key and channel of the fixture starts with it.
const PREFIX: &str = "conformance:";
/// The fixture's `redis_timeout`.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

impl Fixture for Redis {
    const NODES: usize = 2;
    const KIND: KindRule = KindRule::InferredFromUtf8;
    const UPSTREAM: bool = true;
    const INGEST: bool = true;

    async fn start() -> Self {
        Redis {
            server: RedisServer::start(),
        }
    }

    async fn node(&self, id: &str) -> Node {
        let (handler, seen) = recorder();
        let settings = RedisSettings {
            url: self.server.url(),
            prefix: PREFIX.to_string(),
            timeout: REDIS_TIMEOUT,
            health_interval: Duration::from_secs(1),
            max_backoff: Duration::from_millis(100),
            upstream_maxlen: 1000,
            backlog_bytes: 1 << 20,
            node_channels: Vec::new(),
            node_id: id.to_string(),
        };
        let broker = Broker::redis(settings, handler).expect("a valid Redis URL");
        support::eventually("the node's broker connects", || async {
            broker.state().status == BrokerStatus::Connected
        })
        .await;
        Node {
            id: id.to_string(),
            broker,
            seen,
        }
    }

    async fn peer(&self, _node: &Node, id: &str) -> Node {
        self.node(id).await
    }

    async fn commands_processed(&self) -> Option<u64> {
        let mut conn = self.server.connection().await;
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await
            .expect("INFO stats");
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
    }

    fn stop(&mut self) -> bool {
        self.server.kill();
        true
    }

    fn restart(&mut self) -> bool {
        self.server.restart();
        true
    }

    async fn upstream_entries(&self, stream: &str) -> Vec<Entry> {
        let mut conn = self.server.connection().await;
        let entries: Vec<(String, Entry)> = redis::cmd("XRANGE")
            .arg(format!("{PREFIX}{stream}"))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        entries.into_iter().map(|(_id, fields)| fields).collect()
    }

    async fn raw_publish(&self, _node: &Node, channel: &str, data: &str) {
        self.server
            .publish(&format!("{PREFIX}{channel}"), data.as_bytes())
            .await;
    }
}

/// The NATS broker, nodes on one private nats-server (channels, and
/// upstream streams on JetStream).
pub(crate) struct Nats {
    server: NatsServer,
}

/// Every subject of the fixture starts with it.
const NATS_PREFIX: &str = "conformance.";

impl Fixture for Nats {
    const NODES: usize = 2;
    const KIND: KindRule = KindRule::InferredFromUtf8;
    const UPSTREAM: bool = true;
    const INGEST: bool = false;

    async fn start() -> Self {
        Nats {
            server: NatsServer::start(),
        }
    }

    async fn node(&self, id: &str) -> Node {
        let (handler, seen) = recorder();
        let settings = NatsSettings {
            url: self.server.url(),
            prefix: NATS_PREFIX.to_string(),
            timeout: Duration::from_secs(1),
            max_backoff: Duration::from_millis(100),
            backlog_bytes: 1 << 20,
            node_channels: Vec::new(),
            node_id: id.to_string(),
            upstream_maxlen: 1000,
        };
        let broker = Broker::nats(settings, handler).expect("valid NATS settings");
        support::eventually("the node's broker connects", || async {
            broker.state().status == BrokerStatus::Connected
        })
        .await;
        Node {
            id: id.to_string(),
            broker,
            seen,
        }
    }

    async fn peer(&self, _node: &Node, id: &str) -> Node {
        self.node(id).await
    }

    async fn commands_processed(&self) -> Option<u64> {
        None
    }

    fn stop(&mut self) -> bool {
        self.server.kill();
        true
    }

    fn restart(&mut self) -> bool {
        self.server.restart();
        true
    }

    async fn upstream_entries(&self, stream: &str) -> Vec<Entry> {
        self.server.upstream_entries(NATS_PREFIX, stream).await
    }

    async fn raw_publish(&self, _node: &Node, channel: &str, data: &str) {
        // Names without '%', '.', '*' or '>' are their own subjects.
        self.server
            .publish(&format!("{NATS_PREFIX}{channel}"), data.as_bytes())
            .await;
    }
}

/// The Redis Cluster broker (sharded Pub/Sub), nodes on one private
/// cluster shared by the whole test binary (six redis-servers), each
/// fixture under a prefix of its own. It cannot be taken down per case:
/// the outage cases skip, and failover is exercised in `tests/redis_cluster.rs`.
pub(crate) struct RedisCluster {
    cluster: std::sync::Arc<support::redis_cluster::RedisCluster>,
    prefix: String,
}

impl Fixture for RedisCluster {
    const NODES: usize = 2;
    const KIND: KindRule = KindRule::InferredFromUtf8;
    const UPSTREAM: bool = true;
    const INGEST: bool = false;

    async fn start() -> Self {
        let cluster = tokio::task::spawn_blocking(support::redis_cluster::RedisCluster::shared)
            .await
            .expect("the cluster starts");
        RedisCluster {
            cluster,
            prefix: format!("conformance{:08x}:", rand::random::<u32>()),
        }
    }

    async fn node(&self, id: &str) -> Node {
        let (handler, seen) = recorder();
        let settings = RedisSettings {
            url: self.cluster.url(),
            prefix: self.prefix.clone(),
            timeout: REDIS_TIMEOUT,
            health_interval: Duration::from_secs(1),
            max_backoff: Duration::from_millis(100),
            upstream_maxlen: 1000,
            backlog_bytes: 1 << 20,
            node_channels: Vec::new(),
            node_id: id.to_string(),
        };
        let broker = Broker::redis_cluster(settings, handler).expect("a valid cluster URL");
        support::eventually("the node's broker connects", || async {
            broker.state().status == BrokerStatus::Connected
        })
        .await;
        Node {
            id: id.to_string(),
            broker,
            seen,
        }
    }

    async fn peer(&self, _node: &Node, id: &str) -> Node {
        self.node(id).await
    }

    async fn commands_processed(&self) -> Option<u64> {
        None
    }

    fn stop(&mut self) -> bool {
        false
    }

    /// Cannot come back empty per case (it is shared); the nodes made
    /// after see a fresh prefix instead, none of the earlier keys.
    fn restart(&mut self) -> bool {
        self.prefix = format!("conformance{:08x}:", rand::random::<u32>());
        false
    }

    async fn upstream_entries(&self, stream: &str) -> Vec<Entry> {
        let mut conn = self.cluster.connection().await;
        let entries: Vec<(String, Entry)> = redis::cmd("XRANGE")
            .arg(format!("{}{stream}", self.prefix))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        entries.into_iter().map(|(_id, fields)| fields).collect()
    }

    async fn raw_publish(&self, _node: &Node, channel: &str, data: &str) {
        let mut conn = self.cluster.connection().await;
        let _: i64 = redis::cmd("SPUBLISH")
            .arg(format!("{}{channel}", self.prefix))
            .arg(data)
            .query_async(&mut conn)
            .await
            .expect("SPUBLISH");
    }
}
