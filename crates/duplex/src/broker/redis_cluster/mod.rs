//! The Redis Cluster broker: channels over sharded Pub/Sub (`SSUBSCRIBE`,
//! `SPUBLISH`, Redis 7), so a channel's traffic touches only the shard that
//! owns its hash slot.
//!
//! - Subscriptions (`subscriber`): one connection per master the node
//!   needs (not per channel, not per client), changes batched by slot,
//!   repaired by the node itself after a `-MOVED`, a `sunsubscribe` the
//!   server sends when a slot migrates, a lost master (failover) or a
//!   changed `CLUSTER SHARDS`; what arrives waits for fan-out in the same
//!   bounded [`Intake`] queue as on a single Redis.
//! - Publishing, upstream `XADD`s, and the Function library's calls go
//!   through a second redis-rs cluster connection, which routes each
//!   command to its slot's master and follows `-MOVED`/`-ASK`.
//! - History (`history`) and presence (`presence`): the single-Redis
//!   Function library, every key declared and hash-tagged by channel, so
//!   each call runs on the channel's shard (presence leases are per
//!   channel, so they live there too).
//! - Node-level channels are channels like any other: `#control`,
//!   `#node:<id>`, `#exclude:<id>`, `#user:<id>`, `#conn:<node>.<n>` each
//!   live on their own name's slot, so they spread over the shards
//!   (docs/SCALING.md, "Redis Cluster").
//!
//! Why redis-rs (already the project's client) rather than fred: its
//! `cluster-async` connection speaks RESP3 pushes, routes `SSUBSCRIBE` and
//! `SPUBLISH` by slot and follows redirections; the one thing it gets wrong
//! for us (a server `sunsubscribe` ends its tracking) the subscriber task
//! repairs, and keeping one client keeps one set of error and timeout
//! behaviours across both Redis brokers.

mod history;
mod presence;
mod subscriber;
pub mod topology;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duplex_protocol::channel::ChannelName;
use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::ProtocolVersion;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::echo::EchoFilter;
use super::exclusion::{self, EXCLUDE_CHANNEL_PREFIX};
use super::intake::Intake;
use super::redis::RedisSettings;
use super::{
    unix_now, BrokerError, BrokerHandler, BrokerState, BrokerStatus, Link, PubSub,
    RemoteConnection, Upstream, UpstreamLog,
};
use crate::message::Publication;
use crate::throttle::Throttle;
use subscriber::Op;

/// Why the cluster broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `redis+cluster://` URL does not name nodes.
    #[error("invalid redis cluster URL: {0}")]
    Url(#[from] topology::SeedError),
    /// redis-rs refused the seed nodes.
    #[error("invalid redis cluster configuration: {0}")]
    Client(#[from] redis::RedisError),
}

struct Shared {
    settings: RedisSettings,
    /// `redis://` URLs of the seed nodes.
    seeds: Vec<String>,
    state: Mutex<BrokerState>,
    connected_before: AtomicBool,
    echo: EchoFilter,
    /// `<prefix>#exclude:<node id>`: notices are filed in `echo` on arrival.
    exclude_channel: String,
    intake: Intake,
    drop_warnings: Throttle,
    handler: Arc<dyn BrokerHandler>,
}

/// Broker backed by a Redis Cluster's sharded Pub/Sub.
pub struct RedisClusterBroker {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
    /// The command connection, made on first use, dropped when broken.
    publisher: tokio::sync::Mutex<Option<ClusterConnection>>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// This run's presence lease token (as on a single Redis).
    presence_run: String,
}

impl std::fmt::Debug for RedisClusterBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterBroker")
            .field("seeds", &self.shared.seeds.len())
            .field("prefix", &self.shared.settings.prefix)
            .finish_non_exhaustive()
    }
}

/// A cluster client for `seeds`, RESP3, every connect and reply bounded
/// by `timeout`, few quick retries (the node's own loop retries longer).
fn client_builder(seeds: &[String], timeout: Duration) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .use_protocol(ProtocolVersion::RESP3)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(3)
        .min_retry_wait(20)
        .max_retry_wait(200)
}

/// A Redis error as an operator reads it.
fn describe(e: &redis::RedisError) -> String {
    e.to_string()
}

/// Whether the connection that gave this error should be replaced.
fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

impl RedisClusterBroker {
    /// Starts the subscriber and delivery tasks; returns at once even if
    /// the cluster is down (the node starts degraded and connects later).
    pub fn start(
        mut settings: RedisSettings,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<Self, ClusterError> {
        let seeds = topology::seeds(&settings.url)?;
        // Refuses bad node URLs now rather than at each connect.
        client_builder(&seeds, settings.timeout).build()?;
        let exclusions = format!("{EXCLUDE_CHANNEL_PREFIX}{}", settings.node_id);
        let exclude_channel = format!("{}{exclusions}", settings.prefix);
        settings.node_channels.push(exclusions);
        let shared = Arc::new(Shared {
            intake: Intake::new(settings.backlog_bytes),
            settings,
            seeds,
            state: Mutex::new(BrokerState::new(
                "redis-cluster",
                BrokerStatus::Disconnected,
            )),
            connected_before: AtomicBool::new(false),
            echo: EchoFilter::default(),
            exclude_channel,
            drop_warnings: Throttle::new(1000),
            handler,
        });
        let (ops, rx) = mpsc::channel(4096);
        let cancel = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(subscriber::run(Arc::clone(&shared), rx, cancel.clone())),
            tokio::spawn(deliver(Arc::clone(&shared))),
        ];
        Ok(RedisClusterBroker {
            shared,
            ops,
            publisher: tokio::sync::Mutex::new(None),
            cancel,
            tasks: Mutex::new(tasks),
            presence_run: format!("{:016x}", rand::random::<u64>()),
        })
    }

    /// Publishes are refused while some subscription is not in place (a
    /// failover under way): an "ok" means delivered here too.
    fn subscriber_up(&self) -> Result<(), BrokerError> {
        if self.shared.state.lock().status != BrokerStatus::Connected {
            return Err(BrokerError::Unavailable(
                "redis cluster subscriptions are being restored; retry shortly".to_string(),
            ));
        }
        Ok(())
    }

    /// Runs one command on the command connection, bounded like [`Self::on_conn`].
    async fn command<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, BrokerError> {
        self.on_conn(|mut conn| async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// Runs `request` on the command connection (made first if needed),
    /// everything within `redis_timeout`; a broken connection is dropped
    /// so the next request makes a new one.
    async fn on_conn<T, F, Fut>(&self, request: F) -> Result<T, BrokerError>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let timeout = self.shared.settings.timeout;
        let attempt = async { request(self.connection(timeout).await?).await };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if is_broken(&e) {
                    self.publisher.lock().await.take();
                }
                Err(BrokerError::Unavailable(describe(&e)))
            }
            Err(_) => {
                self.publisher.lock().await.take();
                Err(BrokerError::Timeout(timeout))
            }
        }
    }

    /// The command connection, made now if there is none.
    async fn connection(&self, timeout: Duration) -> redis::RedisResult<ClusterConnection> {
        let mut slot = self.publisher.lock().await;
        if let Some(conn) = &*slot {
            return Ok(conn.clone());
        }
        let conn = client_builder(&self.shared.seeds, timeout)
            .build()?
            .get_async_connection()
            .await?;
        Ok(slot.insert(conn).clone())
    }

    async fn do_publish(&self, p: Publication) -> Result<(), BrokerError> {
        self.subscriber_up()?;
        let key = format!("{}{}", self.shared.settings.prefix, p.channel);
        if let Some(sender) = p.exclude {
            self.shared.echo.expect(&key, p.payload.clone(), sender);
        }
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(&key).arg(p.payload.as_ref());
        let result = self.command::<i64>(cmd).await.map(|_receivers| ());
        if let (Err(_), Some(sender)) = (&result, p.exclude) {
            self.shared.echo.forget(&key, &p.payload, sender);
        }
        result
    }

    /// The notice for the holding node, answered, then the message. They
    /// live on two shards, so unlike on one Redis no single connection
    /// orders them: the notice is in the holder's socket before Redis
    /// answers it, one round trip ahead of the message.
    async fn do_publish_excluding(
        &self,
        p: Publication,
        excluded: RemoteConnection<'_>,
    ) -> Result<(), BrokerError> {
        self.subscriber_up()?;
        let prefix = &self.shared.settings.prefix;
        let connection = format!("{}.{}", excluded.node, excluded.seq);
        // In the message itself: a notice would travel on another shard,
        // out of order with it (`exclusion::ENVELOPE`).
        let mut publish = redis::cmd("SPUBLISH");
        publish
            .arg(format!("{prefix}{}", p.channel))
            .arg(exclusion::wrap(&connection, &p.payload));
        self.command::<i64>(publish).await.map(|_| ())
    }

    /// `XADD <prefix><stream> MAXLEN ~ <max> * field value ...` on the
    /// stream's shard.
    async fn do_append(&self, message: Upstream) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(format!("{}{}", self.shared.settings.prefix, message.stream))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.shared.settings.upstream_maxlen)
            .arg("*");
        for (field, value) in &message.fields {
            cmd.arg(*field).arg(value.as_ref());
        }
        self.command::<String>(cmd).await.map(|_id| ())
    }

    /// Asks the subscriber task for a change and waits for the answer.
    async fn change(&self, channel: ChannelName, subscribe: bool) -> Result<(), BrokerError> {
        let key = format!("{}{}", self.shared.settings.prefix, channel);
        let (done, answer) = oneshot::channel();
        let op = Op {
            channel: key.clone(),
            subscribe,
            done,
        };
        self.ops.send(op).await.map_err(|_| BrokerError::Closed)?;
        // The task bounds each cluster call by the timeout; a batch may
        // wait behind one, hence twice.
        let timeout = self.shared.settings.timeout * 2;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => {
                if subscribe {
                    let (done, _) = oneshot::channel();
                    let undo = Op {
                        channel: key,
                        subscribe: false,
                        done,
                    };
                    let _ = self.ops.send(undo).await;
                }
                Err(BrokerError::Timeout(timeout))
            }
        }
    }
}

/// Hands what the cluster sent to the node, one publication at a time.
async fn deliver(shared: Arc<Shared>) {
    while let Some(publication) = shared.intake.pop().await {
        shared.handler.handle_publication(publication).await;
    }
}

impl Shared {
    fn set_connected(&self, channels: usize, masters: usize) {
        let mut state = self.state.lock();
        if state.status == BrokerStatus::Connected {
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
        if first {
            tracing::info!(masters, "redis cluster subscriber connected");
        } else {
            tracing::info!(
                channels,
                masters,
                "redis cluster reconnected; channels subscribed again"
            );
        }
    }

    fn set_disconnected(&self, error: &str) {
        let mut state = self.state.lock();
        let was_connected = state.status == BrokerStatus::Connected;
        state.status = BrokerStatus::Disconnected;
        state.last_error = Some(error.to_string());
        if was_connected {
            state.since = unix_now();
        }
        drop(state);
        if was_connected {
            tracing::error!(error, "redis cluster subscriptions lost; messages published meanwhile are not delivered here; reconnecting");
        } else {
            tracing::warn!(error, "redis cluster unavailable; retrying");
        }
    }
}

impl Link for RedisClusterBroker {
    fn state(&self) -> BrokerState {
        let mut state = self.shared.state.lock().clone();
        state.dropped = self.shared.intake.dropped();
        state.backlog_bytes = self.shared.intake.backlog() as u64;
        state
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            self.cancel.cancel();
            self.shared.intake.close();
            let tasks = std::mem::take(&mut *self.tasks.lock());
            for task in tasks {
                let _ = tokio::time::timeout(self.shared.settings.timeout, task).await;
            }
            self.publisher.lock().await.take();
        }
        .boxed()
    }

    fn shared(&self) -> bool {
        true
    }
}

impl PubSub for RedisClusterBroker {
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.do_publish(publication).boxed()
    }

    fn publish_excluding(
        &self,
        publication: Publication,
        excluded: RemoteConnection<'_>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let node = excluded.node.to_string();
        async move {
            let excluded = RemoteConnection {
                node: &node,
                seq: excluded.seq,
            };
            self.do_publish_excluding(publication, excluded).await
        }
        .boxed()
    }

    fn subscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.change(channel, true).boxed()
    }

    fn unsubscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.change(channel, false).boxed()
    }
}

impl UpstreamLog for RedisClusterBroker {
    fn append(&self, message: Upstream) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.do_append(message).boxed()
    }
}
