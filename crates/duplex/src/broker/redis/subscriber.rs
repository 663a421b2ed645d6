//! The node's one subscriber connection, owned by one task for the node's
//! whole life.
//!
//! The connection speaks RESP3, so published messages arrive as push frames
//! that the client library hands to [`Pushes`] the moment it reads them,
//! while SUBSCRIBE, UNSUBSCRIBE and PING are ordinary requests with their
//! own replies on the same socket. Message intake therefore never waits for
//! fan-out (the [`Intake`](crate::broker::intake) queue bounds it), and
//! subscription changes never wait behind a flood of messages: a change is
//! acknowledged when Redis confirmed it, and refused while Redis is away.
//!
//! The task keeps the set of wanted channels, so after a lost connection it
//! reconnects with backoff and subscribes everything again by itself. A PING
//! on an interval catches connections that died without a reset.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::payload::infer_kind;
use redis::aio::{MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::backoff::Backoff;
use crate::broker::history::envelope;
use crate::broker::BrokerError;
use crate::message::Publication;

/// Most channels named in one SUBSCRIBE/UNSUBSCRIBE command.
const BATCH: usize = 512;

/// A subscription change the node asked for.
pub(super) struct Op {
    /// The Redis channel (prefix included).
    pub(super) channel: String,
    pub(super) subscribe: bool,
    /// `Ok` once Redis confirmed the change; an error when it could not be made.
    pub(super) done: oneshot::Sender<Result<(), BrokerError>>,
}

/// Takes what Redis pushes on the subscriber connection, without ever waiting.
struct Pushes {
    shared: Arc<Shared>,
    link: Arc<Link>,
}

/// What the task knows of one connection from what arrives on it.
#[derive(Default)]
struct Link {
    /// Cancelled when the library reports the connection gone.
    lost: CancellationToken,
    /// Messages received on it: while they keep coming it is alive, even
    /// when a reply waits behind a backlog Redis holds for it.
    messages: AtomicU64,
}

impl Link {
    fn messages(&self) -> u64 {
        self.messages.load(Relaxed)
    }
}

impl redis::aio::AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message => {
                self.link.messages.fetch_add(1, Relaxed);
                self.shared.take_in(info.data);
            }
            PushKind::Disconnection => self.link.lost.cancel(),
            _ => {}
        }
        Ok(())
    }
}

impl Shared {
    /// One `message` push: `[channel, payload]`, into the intake queue.
    fn take_in(&self, data: Vec<Value>) {
        let mut fields = data.into_iter();
        let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
            (fields.next(), fields.next())
        else {
            return;
        };
        if name == self.exclude_channel.as_bytes() {
            self.file_exclusion(&payload);
            return;
        }
        let Some(channel) = std::str::from_utf8(&name)
            .ok()
            .and_then(|n| n.strip_prefix(self.settings.prefix.as_str()))
            .and_then(|n| ChannelName::parse(n, usize::MAX).ok())
        else {
            return;
        };
        // A recorded publication's envelope is stripped here: echo and
        // kind go by the data, as for a plain one.
        let (payload, position) = envelope::unwrap(Bytes::from(payload));
        // Consumed even if the message is dropped below, so a stale
        // expectation cannot hide someone else's identical message later.
        let exclude = self.echo.take(
            std::str::from_utf8(&name).unwrap_or_default(),
            payload.as_ref(),
        );
        let publication = Publication {
            kind: infer_kind(&payload),
            channel,
            payload,
            exclude,
            position,
        };
        if let Err(full) = self.intake.push(publication) {
            if let Some(skipped) = self.drop_warnings.allow() {
                tracing::warn!(
                    backlog_bytes = full.backlog,
                    limit = self.settings.backlog_bytes,
                    similar_skipped = skipped,
                    "dropped a message from redis: the node cannot fan out as fast as they arrive and the busiest channels' backlog is full (counted in broker.dropped)"
                );
            }
        }
    }
}

impl Shared {
    /// Another node's notice that the next message it publishes with these
    /// bytes skips one of our connections: filed at once, before that
    /// message (right behind it on this connection) is taken in.
    fn file_exclusion(&self, notice: &[u8]) {
        match super::exclusion::parse(&self.settings.node_id, notice) {
            Ok(e) => {
                let key = format!("{}{}", self.settings.prefix, e.channel);
                self.echo.expect(&key, e.payload, e.seq);
            }
            Err(e) => tracing::warn!(error = %e, "ignoring a bad notice on #exclude"),
        }
    }
}

/// Owns the subscriber connection for the node's whole life.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut ops: mpsc::Receiver<Op>,
    cancel: CancellationToken,
) {
    let prefix = shared.settings.prefix.clone();
    let mut wanted: HashSet<String> = shared
        .settings
        .node_channels
        .iter()
        .map(|c| format!("{prefix}{c}"))
        .collect();
    let mut backoff = Backoff::new(shared.settings.max_backoff);
    let mut lost_once = false;
    loop {
        let Some((mut conn, link)) =
            connect(&shared, &mut ops, &mut wanted, &cancel, &mut backoff).await
        else {
            return;
        };
        if lost_once {
            shared.handler.reconnecting();
        }
        let channels: Vec<&String> = wanted.iter().collect();
        let mut failed = None;
        for chunk in channels.chunks(BATCH) {
            if let Err(e) = bounded(&shared, conn.subscribe(chunk), &link).await {
                failed = Some(e.text);
                break;
            }
        }
        if let Some(e) = failed {
            shared.set_disconnected(&e);
            lost_once = true;
            continue;
        }
        backoff.reset();
        shared.set_connected(channels.len());
        shared.warn_of_overlapping_prefixes(&mut conn).await;
        shared.prepare_history(&mut conn).await;
        if std::mem::take(&mut lost_once) {
            shared.handler.reconnected();
        }
        let error = serve(&shared, &mut conn, &link, &mut ops, &mut wanted, &cancel).await;
        match error {
            Some(error) => {
                shared.set_disconnected(&error);
                lost_once = true;
            }
            None => {
                let all: Vec<&String> = wanted.iter().collect();
                for chunk in all.chunks(BATCH) {
                    let _ = bounded(&shared, conn.unsubscribe(chunk), &link).await;
                }
                tracing::info!("left redis");
                return;
            }
        }
    }
}

/// Applies subscription changes and checks the connection's health until
/// it fails (`Some(why)`) or the broker closes (`None`).
async fn serve(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    link: &Link,
    ops: &mut mpsc::Receiver<Op>,
    wanted: &mut HashSet<String>,
    cancel: &CancellationToken,
) -> Option<String> {
    let mut health = tokio::time::interval(shared.settings.health_interval);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    let mut seen = link.messages();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = link.lost.cancelled() => return Some("subscriber connection closed".to_string()),
            _ = shared.relink.notified() => {
                return Some("the liveness probe heard nothing back: subscribing again on a new connection".to_string());
            }
            op = ops.recv() => {
                let op = op?;
                if let Err(e) = apply_batch(shared, op, ops, wanted, conn, link).await {
                    return Some(e);
                }
            }
            _ = health.tick() => {
                shared.echo.prune();
                if let Some(why) = demoted(shared, conn, link).await {
                    return Some(why);
                }
                if std::mem::replace(&mut seen, link.messages()) != seen {
                    continue; // messages arrived: alive, whatever a PING would wait behind
                }
                let ping = redis::cmd("PING");
                if let Err(e) = bounded(shared, ping.query_async::<Value>(conn), link).await {
                    return Some(format!("health ping failed: {}", e.text));
                }
            }
        }
    }
}

/// Why the connection must go when its server is no longer the master
/// (a Sentinel failover demoted it: what others publish now goes to the
/// new master, and this one would stay silent). Checked only where the
/// address follows failovers; a late answer is no verdict.
async fn demoted(shared: &Shared, conn: &mut MultiplexedConnection, link: &Link) -> Option<String> {
    if !shared.address.follows_failover() {
        return None;
    }
    match bounded(shared, super::address::role_check(conn), link).await {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(e) if e.broken => Some(format!("health check failed: {}", e.text)),
        Err(_) => None,
    }
}

/// Connects, answering subscription changes meanwhile: unsubscribes are
/// recorded, subscribes refused (Redis cannot confirm them).
async fn connect(
    shared: &Arc<Shared>,
    ops: &mut mpsc::Receiver<Op>,
    wanted: &mut HashSet<String>,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> Option<(MultiplexedConnection, Arc<Link>)> {
    loop {
        let link = Arc::new(Link::default());
        let timeout = shared.settings.timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_push_sender(Pushes {
                shared: Arc::clone(shared),
                link: Arc::clone(&link),
            });
        let attempt = tokio::time::timeout(timeout, shared.address.connect(&config));
        let error = match while_away(attempt, shared, ops, wanted, cancel).await? {
            Ok(Ok(mut conn)) => {
                match while_away(ready(shared, &mut conn), shared, ops, wanted, cancel).await? {
                    Ok(()) => return Some((conn, link)),
                    Err(why) => why,
                }
            }
            Ok(Err(e)) => e,
            Err(_) => format!("connect timed out after {timeout:?}"),
        };
        shared.set_disconnected(&error);
        while_away(
            tokio::time::sleep(backoff.next()),
            shared,
            ops,
            wanted,
            cancel,
        )
        .await?;
    }
}

/// Whether Redis serves data on a new connection. A Redis still loading
/// its dataset (restarted with persistence, a replica's full sync) accepts
/// connections and SUBSCRIBE but answers reads and writes with `-LOADING`:
/// connected then, the node would read the history of its channels too
/// early and close their clients with 3008 for gaps Redis still holds.
/// So a connection counts once a PING answers (nothing can be recorded
/// while Redis loads: `FCALL` is refused too).
async fn ready(shared: &Shared, conn: &mut MultiplexedConnection) -> Result<(), String> {
    let ping = redis::cmd("PING");
    match tokio::time::timeout(shared.settings.timeout, ping.query_async::<Value>(conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(super::describe(&e)),
        Err(_) => Err(format!(
            "redis did not answer a PING within {:?}",
            shared.settings.timeout
        )),
    }
}

/// Runs `work` while answering subscription changes as a disconnected
/// broker does; `None` when the broker is shutting down.
async fn while_away<T>(
    work: impl std::future::Future<Output = T>,
    shared: &Shared,
    ops: &mut mpsc::Receiver<Op>,
    wanted: &mut HashSet<String>,
    cancel: &CancellationToken,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            op = ops.recv() => answer_while_away(shared, op?, wanted),
            done = &mut work => return Some(done),
        }
    }
}

fn answer_while_away(shared: &Shared, op: Op, wanted: &mut HashSet<String>) {
    let result = if op.subscribe {
        let state = shared.state.lock();
        let why = state.last_error.as_deref().unwrap_or("not connected yet");
        Err(BrokerError::Unavailable(format!(
            "redis is unreachable ({why}); subscribe again shortly"
        )))
    } else {
        wanted.remove(&op.channel);
        Ok(())
    };
    let _ = op.done.send(result);
}

/// Applies `first` and whatever else is queued, one command per direction,
/// and answers each change with what Redis said.
async fn apply_batch(
    shared: &Shared,
    first: Op,
    ops: &mut mpsc::Receiver<Op>,
    wanted: &mut HashSet<String>,
    conn: &mut MultiplexedConnection,
    link: &Link,
) -> Result<(), String> {
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match ops.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    // The last change to each channel wins (the node sends at most one per
    // channel at a time, but an undo may follow a timed-out subscribe).
    for op in &batch {
        if op.subscribe {
            wanted.insert(op.channel.clone());
        } else {
            wanted.remove(&op.channel);
        }
    }
    let mut touched: Vec<&String> = batch.iter().map(|op| &op.channel).collect();
    touched.sort();
    touched.dedup();
    let (subscribe, unsubscribe): (Vec<&String>, Vec<&String>) =
        touched.into_iter().partition(|c| wanted.contains(*c));
    let mut result = Ok(());
    if !subscribe.is_empty() {
        result = bounded(shared, conn.subscribe(&subscribe), link).await;
    }
    if result.is_ok() && !unsubscribe.is_empty() {
        result = bounded(shared, conn.unsubscribe(&unsubscribe), link).await;
    }
    if let Err(e) = &result {
        // Not confirmed: the subscribes are refused and forgotten (the
        // caller undoes its side), the unsubscribes stand (a reconnect
        // does not restore them).
        for op in batch.iter().filter(|op| op.subscribe) {
            wanted.remove(&op.channel);
        }
        if !e.broken && !subscribe.is_empty() {
            // The connection lives on and Redis may still apply the
            // subscribe (its reply was late): queued behind it, this
            // leaves Redis as `wanted` says.
            let mut conn = conn.clone();
            let channels: Vec<String> = subscribe.iter().map(|c| c.to_string()).collect();
            tokio::spawn(async move { conn.unsubscribe(&channels).await });
        }
    }
    for op in batch {
        let answer = match (&result, op.subscribe) {
            (Err(e), true) => Err(e.to_broker_error(shared)),
            _ => Ok(()),
        };
        let _ = op.done.send(answer);
    }
    match result {
        // An error reply (e.g. an ACL refusing a channel): the connection is fine.
        Err(e) if e.broken => Err(e.text),
        _ => Ok(()),
    }
}

/// Why a Redis call failed, and whether its connection must be replaced.
struct Failure {
    text: String,
    /// No answer in time (else an error).
    late: bool,
    /// Whether the connection must be replaced: not for an error reply
    /// from the server, nor for a late one while messages keep coming.
    broken: bool,
}

impl Failure {
    fn to_broker_error(&self, shared: &Shared) -> BrokerError {
        if self.late {
            BrokerError::Timeout(shared.settings.timeout)
        } else {
            BrokerError::Unavailable(self.text.clone())
        }
    }
}

/// A Redis call bounded by the broker's timeout. A reply that is late while
/// messages keep arriving is waiting behind a backlog Redis holds for this
/// node: the call failed, the connection did not.
async fn bounded<T>(
    shared: &Shared,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    link: &Link,
) -> Result<T, Failure> {
    let before = link.messages();
    match tokio::time::timeout(shared.settings.timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.is_timeout() => Err(Failure {
            text: super::describe(&e),
            late: true,
            broken: link.messages() == before,
        }),
        Ok(Err(e)) => Err(Failure {
            text: super::describe(&e),
            late: false,
            broken: super::is_broken(&e),
        }),
        Err(_) => Err(Failure {
            text: format!("redis did not answer within {:?}", shared.settings.timeout),
            late: true,
            broken: link.messages() == before,
        }),
    }
}
