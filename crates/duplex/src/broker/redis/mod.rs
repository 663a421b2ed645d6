//! The Redis broker: any number of nodes share channels through Redis Pub/Sub.
//!
//! - One subscriber connection per node (`subscriber`): channels are
//!   subscribed when the node's first client wants them and unsubscribed
//!   when the last one leaves; a change is answered once Redis confirmed it
//!   (refused while Redis is away), and after a lost connection the node
//!   reconnects with jittered backoff and subscribes everything again by
//!   itself. What Redis pushes waits for fan-out in the bounded, per-channel
//!   fair `Intake` queue, drained by one delivery task.
//! - A separate multiplexed connection for `PUBLISH` and `XADD`, re-opened
//!   on demand; every operation, connecting included, ends within
//!   `redis_timeout`. A connection Redis closed (a restart, its idle
//!   `timeout`) is noticed when it closes, not by the next client's request.
//! - Payloads travel verbatim, so `PUBLISH channel data` from any Redis
//!   client reaches WebSocket clients unchanged; the text/binary kind of a
//!   message is inferred from UTF-8 validity on the way in.
//! - History (`history`): the `duplex` Redis Function library, loaded by
//!   the node, records and publishes in one call (`FCALL duplex_publish`,
//!   from the node or any backend); its live copy comes wrapped in an
//!   envelope with offset and epoch that the subscriber strips.
//! - Ingest (`ingest`): the stream backends `XADD` to, read by one node at a time.
//! - Presence (`presence`): members under per-node leases, every change
//!   one call of the same Function library (`FCALL duplex_presence_*`).

mod address;
mod connection;
pub(super) mod history;
mod ingest;
pub(super) mod presence;
pub use address::{current_client, SentinelUrl, SentinelUrlError, SENTINEL_SCHEME};
use connection::{describe, is_broken};
mod subscriber;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duplex_protocol::channel::ChannelName;
use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::echo::EchoFilter;
use super::exclusion::{self, EXCLUDE_CHANNEL_PREFIX};
use super::intake::Intake;
use super::overlap::{overlap_warning, overlapping_prefixes};
use super::{
    unix_now, BrokerError, BrokerHandler, BrokerState, BrokerStatus, Link, PubSub,
    RemoteConnection, Upstream, UpstreamLog,
};
use crate::message::Publication;
use crate::throttle::Throttle;
use subscriber::Op;

/// Settings of the Redis broker.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://...` URL, or `redis+sentinel://...` (`address`).
    pub url: String,
    /// Prepended to channel names in Redis.
    pub prefix: String,
    /// Bound on connects and on each operation.
    pub timeout: Duration,
    /// Interval of the subscriber connection's health PING.
    pub health_interval: Duration,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
    /// Approximate length cap of upstream streams (`XADD MAXLEN ~`).
    pub upstream_maxlen: usize,
    /// Bytes of messages from Redis that may wait for fan-out before the
    /// busiest channels' new ones are dropped (see `broker::intake`).
    pub backlog_bytes: usize,
    /// Channels (without prefix) the node listens to for its whole life,
    /// whatever its clients do: its order channels.
    pub node_channels: Vec<String>,
    /// This node's id: other nodes' exclusion notices for its connections
    /// arrive on `#exclude:<id>`, held like the order channels.
    pub node_id: String,
}

struct Shared {
    settings: RedisSettings,
    /// The operator's server (or a Sentinel group's master), spoken to in
    /// RESP3 by both connections (pushes for the subscriber, the close
    /// notice for the publisher).
    address: address::Address,
    /// Woken by [`Link::relink`]: the subscriber drops its connection and
    /// makes a new one.
    relink: tokio::sync::Notify,
    state: Mutex<BrokerState>,
    /// Set at the first successful connect: later ones are reconnects.
    connected_before: AtomicBool,
    /// Subscriber connections lost so far. Whatever killed one (a network
    /// that dropped every flow silently) may have killed the publish
    /// connection without a word: one opened before is not used after
    /// (`connection::Publisher`), so the repair's read and the next publish
    /// do not wait out `redis_timeout` on a dead socket.
    links_lost: AtomicU64,
    echo: EchoFilter,
    /// `<prefix>#exclude:<node id>`: notices are filed in `echo` on arrival.
    exclude_channel: String,
    intake: Intake,
    drop_warnings: Throttle,
    handler: Arc<dyn BrokerHandler>,
    /// This deployment's namespace table for the history Functions, when
    /// it has history (`History::set_namespaces`); written at each connect.
    history_table: Mutex<Option<String>>,
}

/// Broker backed by Redis Pub/Sub.
pub struct RedisBroker {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
    publisher: Mutex<Option<connection::Publisher>>,
    connecting: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The ingest stream's own connection (`ingest`), opened on first use.
    ingest: ingest::Reader,
    /// This run's presence lease token: a node restarted under the same
    /// id holds new leases, and its previous run's members expire.
    presence_run: String,
}

/// The publish connection and whether Redis has closed it since.
///
impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.shared.settings.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Starts the subscriber and delivery tasks; returns at once even if
    /// Redis is down (the node starts degraded and connects when Redis comes up).
    pub fn start(
        mut settings: RedisSettings,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<Self, redis::RedisError> {
        let exclusions = format!("{EXCLUDE_CHANNEL_PREFIX}{}", settings.node_id);
        let exclude_channel = format!("{}{exclusions}", settings.prefix);
        settings.node_channels.push(exclusions);
        let address = address::Address::open(&settings.url)?;
        let shared = Arc::new(Shared {
            intake: Intake::new(settings.backlog_bytes),
            settings,
            address,
            relink: tokio::sync::Notify::new(),
            state: Mutex::new(BrokerState::new("redis", BrokerStatus::Disconnected)),
            connected_before: AtomicBool::new(false),
            links_lost: AtomicU64::new(0),
            echo: EchoFilter::default(),
            exclude_channel,
            drop_warnings: Throttle::new(1000),
            handler,
            history_table: Mutex::new(None),
        });
        let (ops, rx) = mpsc::channel(4096);
        let cancel = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(subscriber::run(Arc::clone(&shared), rx, cancel.clone())),
            tokio::spawn(deliver(Arc::clone(&shared))),
        ];
        Ok(RedisBroker {
            shared,
            ops,
            publisher: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            cancel,
            tasks: Mutex::new(tasks),
            ingest: ingest::Reader::default(),
            presence_run: format!("{:016x}", rand::random::<u64>()),
        })
    }

    /// While the subscriber connection is down (or still resubscribing
    /// after a reconnect), Redis would take a message but this node's own
    /// clients would miss it: publishes are refused, so an "ok" always
    /// means delivered here (found by the soak run: ~0.2 s of silent loss).
    fn subscriber_up(&self) -> Result<(), BrokerError> {
        if self.shared.state.lock().status != BrokerStatus::Connected {
            return Err(BrokerError::Unavailable(
                "redis subscriber connection is down; retry shortly".to_string(),
            ));
        }
        Ok(())
    }

    async fn do_publish(&self, p: Publication) -> Result<(), BrokerError> {
        self.subscriber_up()?;
        let key = format!("{}{}", self.shared.settings.prefix, p.channel);
        if let Some(sender) = p.exclude {
            self.shared.echo.expect(&key, p.payload.clone(), sender);
        }
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&key).arg(p.payload.as_ref());
        let result = self.command::<i64>(cmd).await.map(|_receivers| ());
        if let (Err(_), Some(sender)) = (&result, p.exclude) {
            self.shared.echo.forget(&key, &p.payload, sender);
        }
        result
    }

    /// The notice for the holding node, then the message, in one pipeline on
    /// the publish connection: Redis hands them to that node in this order.
    async fn do_publish_excluding(
        &self,
        p: Publication,
        excluded: RemoteConnection<'_>,
    ) -> Result<(), BrokerError> {
        self.subscriber_up()?;
        let prefix = &self.shared.settings.prefix;
        let connection = format!("{}.{}", excluded.node, excluded.seq);
        let notice = exclusion::notice(&connection, p.channel.as_str(), &p.payload);
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(format!("{prefix}{EXCLUDE_CHANNEL_PREFIX}{}", excluded.node))
            .arg(notice)
            .ignore()
            .cmd("PUBLISH")
            .arg(format!("{prefix}{}", p.channel))
            .arg(p.payload.as_ref())
            .ignore();
        self.pipeline(pipe).await
    }

    /// `XADD <prefix><stream> MAXLEN ~ <max> * field value ...` on the
    /// publish connection, bounded by the Redis timeout like a publish.
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

    /// Asks the subscriber task for a change and waits for Redis's answer.
    async fn change(&self, channel: ChannelName, subscribe: bool) -> Result<(), BrokerError> {
        let key = format!("{}{}", self.shared.settings.prefix, channel);
        let (done, answer) = oneshot::channel();
        let op = Op {
            channel: key.clone(),
            subscribe,
            done,
        };
        self.ops.send(op).await.map_err(|_| BrokerError::Closed)?;
        let timeout = self.shared.settings.timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => {
                if subscribe {
                    // The caller takes its side back; queued behind the
                    // subscribe, this undoes whatever Redis makes of it.
                    let (done, _) = oneshot::channel();
                    let undo = Op {
                        channel: key,
                        subscribe: false,
                        done,
                    };
                    let _ = self.ops.send(undo).await;
                }
                tracing::warn!(%channel, subscribe, "redis did not confirm the subscription change in time");
                Err(BrokerError::Timeout(timeout))
            }
        }
    }
}

/// Hands what Redis sent to the node, one publication at a time (the
/// handler's await keeps each channel's order through the fan-out).
async fn deliver(shared: Arc<Shared>) {
    while let Some(publication) = shared.intake.pop().await {
        shared.handler.handle_publication(publication).await;
    }
}

impl Link for RedisBroker {
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
            self.publisher.lock().take();
            self.ingest.close();
        }
        .boxed()
    }

    fn shared(&self) -> bool {
        true
    }

    fn relink(&self) {
        // Only a subscriber serving a connection listens: one still
        // connecting makes a new one anyway.
        self.shared.relink.notify_waiters();
    }
}

impl PubSub for RedisBroker {
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.do_publish(publication).boxed()
    }

    fn publish_excluding(
        &self,
        publication: Publication,
        excluded: RemoteConnection<'_>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        // The notice names the node by value: copied, so the future owns it.
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

impl UpstreamLog for RedisBroker {
    fn append(&self, message: Upstream) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.do_append(message).boxed()
    }
}

impl Shared {
    /// Warns when another live deployment on this Redis has a prefix that
    /// starts ours or that ours starts (their ordinary channels overlap;
    /// docs/AUTH.md): every deployment's nodes hold `<prefix>#control`.
    async fn warn_of_overlapping_prefixes(&self, conn: &mut MultiplexedConnection) {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("CHANNELS").arg("*#control");
        let listed = cmd.query_async::<Vec<Vec<u8>>>(conn);
        match tokio::time::timeout(self.settings.timeout, listed).await {
            Ok(Ok(channels)) => {
                let others = overlapping_prefixes(&self.settings.prefix, &channels);
                if !others.is_empty() {
                    tracing::warn!("{}", overlap_warning(&self.settings.prefix, &others));
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not list other deployments' prefixes"),
            Err(_) => tracing::debug!("could not list other deployments' prefixes in time"),
        }
    }

    fn set_connected(&self, resubscribed: usize) {
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
            tracing::info!("redis subscriber connected");
        } else {
            tracing::info!(
                channels = resubscribed,
                "redis reconnected; channels subscribed again"
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
            self.links_lost.fetch_add(1, Ordering::SeqCst);
        }
        drop(state);
        if was_connected {
            tracing::error!(error, "redis connection lost; messages published meanwhile are not delivered here; reconnecting");
        } else {
            tracing::warn!(error, "redis unavailable; retrying");
        }
    }
}
