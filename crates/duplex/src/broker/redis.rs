//! The Redis broker: any number of nodes share channels through Redis Pub/Sub.
//!
//! - One subscriber connection per node, owned by one task. Channels are
//!   subscribed when the node's first client wants them and unsubscribed
//!   when the last one leaves. The task keeps the set of wanted channels,
//!   so after a lost connection it reconnects with exponential backoff and
//!   subscribes everything again, by itself. A PING on an interval catches
//!   connections that died without a reset.
//! - A separate multiplexed connection for `PUBLISH`, re-opened on demand;
//!   every operation is bounded by `redis_timeout`.
//! - Payloads travel verbatim, so `PUBLISH channel data` from any Redis
//!   client reaches WebSocket clients unchanged; the text/binary kind of a
//!   message is inferred from UTF-8 validity on the way in.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::payload::infer_kind;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::AsyncConnectionConfig;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::echo::EchoFilter;
use super::{unix_now, Broker, BrokerError, BrokerHandler, BrokerState, BrokerStatus, Upstream};
use crate::message::Publication;

/// Most subscription changes sent in one SUBSCRIBE/UNSUBSCRIBE command.
const BATCH: usize = 512;

/// Settings of the Redis broker.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://...` URL.
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
}

struct Op {
    channel: String,
    subscribe: bool,
    done: oneshot::Sender<()>,
}

struct Shared {
    settings: RedisSettings,
    client: redis::Client,
    state: Mutex<BrokerState>,
    /// Set at the first successful connect: later ones are reconnects.
    connected_before: AtomicBool,
    echo: EchoFilter,
    handler: Arc<dyn BrokerHandler>,
}

/// Broker backed by Redis Pub/Sub.
pub struct RedisBroker {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
    publisher: Mutex<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.shared.settings.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Starts the subscriber task; returns at once even if Redis is down
    /// (the node starts degraded and connects when Redis comes up).
    pub fn start(
        settings: RedisSettings,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let shared = Arc::new(Shared {
            settings,
            client,
            state: Mutex::new(BrokerState::new("redis", BrokerStatus::Disconnected)),
            connected_before: AtomicBool::new(false),
            echo: EchoFilter::default(),
            handler,
        });
        let (ops, rx) = mpsc::channel(4096);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(subscriber_task(Arc::clone(&shared), rx, cancel.clone()));
        Ok(RedisBroker {
            shared,
            ops,
            publisher: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    async fn publisher(&self) -> Result<MultiplexedConnection, BrokerError> {
        if let Some(conn) = self.publisher.lock().clone() {
            return Ok(conn);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(conn) = self.publisher.lock().clone() {
            return Ok(conn);
        }
        let timeout = self.shared.settings.timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = self
            .shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        *self.publisher.lock() = Some(conn.clone());
        Ok(conn)
    }

    async fn do_publish(&self, p: Publication) -> Result<(), BrokerError> {
        // While the subscriber connection is down (or still resubscribing
        // after a reconnect), Redis would take the message but this node's
        // own clients would miss it: refuse, so an "ok" always means
        // delivered here (found by the soak run: ~0.2 s of silent loss).
        if self.shared.state.lock().status != BrokerStatus::Connected {
            return Err(BrokerError::Unavailable(
                "redis subscriber connection is down; retry shortly".to_string(),
            ));
        }
        let key = format!("{}{}", self.shared.settings.prefix, p.channel);
        if let Some(sender) = p.exclude {
            self.shared.echo.expect(&key, p.payload.clone(), sender);
        }
        let result = self.publish_bytes(&key, &p.payload).await;
        if let (Err(_), Some(sender)) = (&result, p.exclude) {
            self.shared.echo.forget(&key, &p.payload, sender);
        }
        result
    }

    /// `XADD <prefix><stream> MAXLEN ~ <max> * field value ...` on the
    /// publish connection, bounded by the Redis timeout like a publish.
    async fn do_append(&self, message: Upstream) -> Result<(), BrokerError> {
        let timeout = self.shared.settings.timeout;
        let mut conn = self.publisher().await?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(format!("{}{}", self.shared.settings.prefix, message.stream))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.shared.settings.upstream_maxlen)
            .arg("*");
        for (field, value) in &message.fields {
            cmd.arg(*field).arg(value.as_ref());
        }
        match tokio::time::timeout(timeout, cmd.query_async::<String>(&mut conn)).await {
            Ok(Ok(_id)) => Ok(()),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    *self.publisher.lock() = None;
                }
                Err(BrokerError::Unavailable(e.to_string()))
            }
            Err(_) => {
                *self.publisher.lock() = None;
                Err(BrokerError::Timeout(timeout))
            }
        }
    }

    async fn publish_bytes(&self, key: &str, payload: &Bytes) -> Result<(), BrokerError> {
        let timeout = self.shared.settings.timeout;
        let mut conn = self.publisher().await?;
        let cmd = redis::cmd("PUBLISH")
            .arg(key)
            .arg(payload.as_ref())
            .to_owned();
        match tokio::time::timeout(timeout, cmd.query_async::<i64>(&mut conn)).await {
            Ok(Ok(_receivers)) => Ok(()),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    *self.publisher.lock() = None;
                }
                Err(BrokerError::Unavailable(e.to_string()))
            }
            Err(_) => {
                *self.publisher.lock() = None;
                Err(BrokerError::Timeout(timeout))
            }
        }
    }

    async fn change(&self, channel: ChannelName, subscribe: bool) -> Result<(), BrokerError> {
        let (done, wait) = oneshot::channel();
        let op = Op {
            channel: format!("{}{}", self.shared.settings.prefix, channel),
            subscribe,
            done,
        };
        self.ops.send(op).await.map_err(|_| BrokerError::Closed)?;
        // The task acknowledges once Redis confirmed, or at once while
        // disconnected (the change is applied on reconnect). Waiting longer
        // than the timeout would only stall the client: go on, it is logged.
        match tokio::time::timeout(self.shared.settings.timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => {
                tracing::warn!(%channel, subscribe, "redis did not confirm the subscription change in time; it stays queued");
                Ok(())
            }
        }
    }
}

impl Broker for RedisBroker {
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.do_publish(publication).boxed()
    }

    fn subscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.change(channel, true).boxed()
    }

    fn unsubscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.change(channel, false).boxed()
    }

    fn state(&self) -> BrokerState {
        self.shared.state.lock().clone()
    }

    fn append_upstream(&self, message: Upstream) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.do_append(message).boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            self.cancel.cancel();
            let task = self.task.lock().take();
            if let Some(task) = task {
                let _ = tokio::time::timeout(self.shared.settings.timeout, task).await;
            }
            self.publisher.lock().take();
        }
        .boxed()
    }
}

impl Shared {
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
        }
        drop(state);
        if was_connected {
            tracing::error!(error, "redis connection lost; messages published meanwhile are not delivered here; reconnecting");
        } else {
            tracing::warn!(error, "redis unavailable; retrying");
        }
    }

    async fn deliver(&self, msg: &redis::Msg) {
        let Some(name) = msg
            .get_channel_name()
            .strip_prefix(self.settings.prefix.as_str())
        else {
            return;
        };
        let Ok(channel) = ChannelName::parse(name, usize::MAX) else {
            return;
        };
        let payload = msg.get_payload_bytes();
        let exclude = self.echo.take(msg.get_channel_name(), payload);
        let publication = Publication {
            channel,
            kind: infer_kind(payload),
            payload: Bytes::copy_from_slice(payload),
            exclude,
        };
        self.handler.handle_publication(publication).await;
    }
}

/// Owns the subscriber connection for the node's whole life.
async fn subscriber_task(
    shared: Arc<Shared>,
    mut ops: mpsc::Receiver<Op>,
    cancel: CancellationToken,
) {
    let mut wanted: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(pubsub) = connect(&shared, &mut ops, &mut wanted, &cancel, &mut backoff).await
        else {
            return;
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<&String> = wanted.iter().collect();
        let resubscribed = channels.len();
        let mut failed = None;
        for chunk in channels.chunks(BATCH) {
            if let Err(e) = bounded(&shared, sink.subscribe(chunk)).await {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            shared.set_disconnected(&e);
            continue;
        }
        backoff = Duration::from_millis(50);
        shared.set_connected(resubscribed);
        let mut health = tokio::time::interval(shared.settings.health_interval);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.tick().await;
        let error = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let all: Vec<&String> = wanted.iter().collect();
                    for chunk in all.chunks(BATCH) {
                        let _ = bounded(&shared, sink.unsubscribe(chunk)).await;
                    }
                    tracing::info!("left redis");
                    return;
                }
                msg = stream.next() => match msg {
                    Some(msg) => shared.deliver(&msg).await,
                    None => break "subscriber connection closed".to_string(),
                },
                op = ops.recv() => {
                    let Some(op) = op else { return };
                    if let Err(e) = apply_batch(&shared, op, &mut ops, &mut wanted, &mut sink).await {
                        break e;
                    }
                }
                _ = health.tick() => {
                    shared.echo.prune();
                    if let Err(e) = bounded(&shared, sink.ping::<redis::Value>()).await {
                        break format!("health ping failed: {e}");
                    }
                }
            }
        };
        shared.set_disconnected(&error);
    }
}

/// Connects, applying subscription changes to `wanted` meanwhile.
async fn connect(
    shared: &Shared,
    ops: &mut mpsc::Receiver<Op>,
    wanted: &mut HashSet<String>,
    cancel: &CancellationToken,
    backoff: &mut Duration,
) -> Option<redis::aio::PubSub> {
    loop {
        let attempt =
            tokio::time::timeout(shared.settings.timeout, shared.client.get_async_pubsub());
        let error = match while_recording(attempt, ops, wanted, cancel).await? {
            Ok(Ok(pubsub)) => return Some(pubsub),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("connect timed out after {:?}", shared.settings.timeout),
        };
        shared.set_disconnected(&error);
        while_recording(tokio::time::sleep(*backoff), ops, wanted, cancel).await?;
        *backoff = (*backoff * 2).min(shared.settings.max_backoff);
    }
}

/// Runs `work` while applying subscription changes to `wanted` (the node
/// keeps subscribing and unsubscribing while Redis is away); `None` when
/// the broker is shutting down.
async fn while_recording<T>(
    work: impl std::future::Future<Output = T>,
    ops: &mut mpsc::Receiver<Op>,
    wanted: &mut HashSet<String>,
    cancel: &CancellationToken,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            op = ops.recv() => record(op?, wanted),
            done = &mut work => return Some(done),
        }
    }
}

fn record(op: Op, wanted: &mut HashSet<String>) {
    if op.subscribe {
        wanted.insert(op.channel);
    } else {
        wanted.remove(&op.channel);
    }
    let _ = op.done.send(());
}

/// Applies `first` and whatever else is queued in one round trip each way.
async fn apply_batch(
    shared: &Shared,
    first: Op,
    ops: &mut mpsc::Receiver<Op>,
    wanted: &mut HashSet<String>,
    sink: &mut PubSubSink,
) -> Result<(), String> {
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match ops.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    let mut touched: Vec<String> = Vec::with_capacity(batch.len());
    let mut acks = Vec::with_capacity(batch.len());
    for op in batch {
        if op.subscribe {
            wanted.insert(op.channel.clone());
        } else {
            wanted.remove(&op.channel);
        }
        touched.push(op.channel);
        acks.push(op.done);
    }
    touched.sort();
    touched.dedup();
    let (subscribe, unsubscribe): (Vec<&String>, Vec<&String>) =
        touched.iter().partition(|c| wanted.contains(*c));
    let mut result = Ok(());
    if !subscribe.is_empty() {
        result = bounded(shared, sink.subscribe(&subscribe)).await;
    }
    if result.is_ok() && !unsubscribe.is_empty() {
        result = bounded(shared, sink.unsubscribe(&unsubscribe)).await;
    }
    // Acknowledge even on failure: `wanted` holds the change, and the
    // reconnect that follows a failure applies it.
    for ack in acks {
        let _ = ack.send(());
    }
    result
}

async fn bounded<T>(
    shared: &Shared,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(shared.settings.timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "redis did not answer within {:?}",
            shared.settings.timeout
        )),
    }
}
