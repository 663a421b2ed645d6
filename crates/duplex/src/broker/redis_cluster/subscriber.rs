//! The node's sharded subscriptions, owned by one task for the node's
//! whole life.
//!
//! The task holds one redis-rs cluster connection for subscribing: one
//! RESP3 connection per master it needs, made by the library, which routes
//! each `SSUBSCRIBE` to the master of the channel's slot and follows
//! `-MOVED`. Messages arrive as `smessage` pushes and go straight into the
//! bounded [`Intake`](crate::broker::intake) queue. Subscription changes
//! are batched: whatever is queued is grouped by hash slot (one
//! `SSUBSCRIBE` names channels of one slot only) and sent at once, the
//! multiplexed connections pipelining them.
//!
//! The task keeps the set of wanted channels and repairs by itself:
//! - a `sunsubscribe` the server sends (the channel's slot migrated) is
//!   answered with a new `SSUBSCRIBE` of that channel, which the library
//!   routes to the new owner (after a `-MOVED` if its map was stale);
//! - a lost shard connection (a master killed, a network cut), a failed
//!   health check or a change in `CLUSTER SHARDS` (polled every
//!   `redis_health_interval`) starts over: a new cluster connection, a
//!   fresh slot map, every channel subscribed again, retried with backoff
//!   until the cluster serves every slot again (a replica's failover), the
//!   handler told before and after so the node can repair from history.
//!
//! Why not redis-rs's own resubscription: it tracks sharded subscriptions
//! and renews them after a reconnect, but it takes a server's
//! `sunsubscribe` for the end of the subscription (checked in its
//! `subscription_tracker`), so a migrated slot would go silent.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::payload::infer_kind;
use futures_util::future::join_all;
use redis::aio::SendError;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::topology::{slot, SlotMap};
use super::Shared;
use crate::backoff::Backoff;
use crate::broker::history::envelope;
use crate::broker::BrokerError;
use crate::message::Publication;

/// A subscription change the node asked for.
pub(super) struct Op {
    /// The Redis channel (prefix included).
    pub(super) channel: String,
    pub(super) subscribe: bool,
    /// `Ok` once Redis confirmed the change; an error when it could not be made.
    pub(super) done: oneshot::Sender<Result<(), BrokerError>>,
}

/// What the push handler of one cluster connection (its generation: the
/// count of connections made before it) tells the task.
enum Event {
    /// A shard connection closed.
    Lost(u64),
    /// The server ended a subscription (its slot moved), or confirmed ours.
    Unsubscribed(u64, String),
}

/// Takes what the cluster pushes, without ever waiting.
struct Pushes {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
}

impl redis::aio::AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::SMessage | PushKind::Message => self.shared.take_in(info.data),
            PushKind::Disconnection => {
                let _ = self.events.send(Event::Lost(self.generation));
            }
            PushKind::SUnsubscribe => {
                if let Some(Value::BulkString(name)) = info.data.first() {
                    if let Ok(name) = String::from_utf8(name.clone()) {
                        let _ = self.events.send(Event::Unsubscribed(self.generation, name));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Shared {
    /// One `smessage` push: `[channel, payload]`, into the intake queue.
    fn take_in(&self, data: Vec<Value>) {
        let mut fields = data.into_iter();
        let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
            (fields.next(), fields.next())
        else {
            return;
        };
        if name == self.exclude_channel.as_bytes() {
            match crate::broker::exclusion::parse(&self.settings.node_id, &payload) {
                Ok(e) => {
                    let key = format!("{}{}", self.settings.prefix, e.channel);
                    self.echo.expect(&key, e.payload, e.seq);
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a bad notice on #exclude"),
            }
            return;
        }
        let Some(channel) = std::str::from_utf8(&name)
            .ok()
            .and_then(|n| n.strip_prefix(self.settings.prefix.as_str()))
            .and_then(|n| ChannelName::parse(n, usize::MAX).ok())
        else {
            return;
        };
        let (payload, excluded) =
            crate::broker::exclusion::unwrap(&self.settings.node_id, Bytes::from(payload));
        let (payload, position) = envelope::unwrap(payload);
        let exclude = excluded.or_else(|| {
            self.echo.take(
                std::str::from_utf8(&name).unwrap_or_default(),
                payload.as_ref(),
            )
        });
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
                    "dropped a message from the redis cluster: the node cannot fan out as fast as they arrive (counted in broker.dropped)"
                );
            }
        }
    }
}

/// The task's state between connections.
struct Subscriber {
    shared: Arc<Shared>,
    wanted: HashSet<String>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    /// Cluster connections made so far: events of older ones are ignored.
    generation: u64,
    cancel: CancellationToken,
}

/// Owns the sharded subscriptions for the node's whole life.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut ops: mpsc::Receiver<Op>,
    cancel: CancellationToken,
) {
    let prefix = shared.settings.prefix.clone();
    let wanted = shared
        .settings
        .node_channels
        .iter()
        .map(|c| format!("{prefix}{c}"))
        .collect();
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut me = Subscriber {
        shared,
        wanted,
        events,
        events_tx,
        generation: 0,
        cancel,
    };
    let mut backoff = Backoff::new(me.shared.settings.max_backoff);
    let mut lost_once = false;
    loop {
        me.generation += 1;
        let channels: Vec<String> = me.wanted.iter().cloned().collect();
        let connect = connect(
            Arc::clone(&me.shared),
            me.events_tx.clone(),
            me.generation,
            channels.clone(),
        );
        let Some(attempt) = me.while_away(connect, &mut ops).await else {
            return;
        };
        let (mut conn, map) = match attempt {
            Ok(ready) => ready,
            Err(why) => {
                me.shared.set_disconnected(&why);
                if me
                    .while_away(tokio::time::sleep(backoff.next()), &mut ops)
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        };
        // Channels given up while connecting: subscribed by the new connection.
        let stale: Vec<String> = channels
            .into_iter()
            .filter(|c| !me.wanted.contains(c))
            .collect();
        if !stale.is_empty() {
            let _ = change(&me.shared, &mut conn, &stale, false).await;
        }
        backoff.reset();
        me.shared.set_connected(me.wanted.len(), map.masters());
        if std::mem::take(&mut lost_once) {
            me.shared.handler.reconnected();
        }
        match me.serve(&mut conn, map, &mut ops).await {
            Some(why) => {
                me.shared.set_disconnected(&why);
                me.shared.handler.reconnecting();
                lost_once = true;
            }
            None => {
                let all: Vec<String> = me.wanted.iter().cloned().collect();
                let _ = change(&me.shared, &mut conn, &all, false).await;
                tracing::info!("left the redis cluster");
                return;
            }
        }
    }
}

/// A new cluster connection with `channels` subscribed, and the slot map
/// it was made under.
async fn connect(
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
    channels: Vec<String>,
) -> Result<(ClusterConnection, SlotMap), String> {
    let timeout = shared.settings.timeout;
    let pushes = Pushes {
        shared: Arc::clone(&shared),
        events,
        generation,
    };
    let client = super::client_builder(&shared.seeds, timeout)
        .push_sender(pushes)
        .build()
        .map_err(|e| super::describe(&e))?;
    let attempt = tokio::time::timeout(timeout, client.get_async_connection());
    let mut conn = match attempt.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(super::describe(&e)),
        Err(_) => return Err(format!("connect timed out after {timeout:?}")),
    };
    let map = slot_map(&shared, &mut conn).await?;
    if let Some(orphan) = channels
        .iter()
        .find(|c| map.owner(slot(c.as_bytes())).is_none())
    {
        return Err(format!(
            "no master serves the slot of {orphan:?} now (a failover under way?)"
        ));
    }
    change(&shared, &mut conn, &channels, true).await?;
    Ok((conn, map))
}

/// `CLUSTER SHARDS`, bounded by the timeout.
async fn slot_map(shared: &Shared, conn: &mut ClusterConnection) -> Result<SlotMap, String> {
    let timeout = shared.settings.timeout;
    let mut shards = redis::cmd("CLUSTER");
    shards.arg("SHARDS");
    let ask = shards.query_async::<Value>(conn);
    let reply = match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(super::describe(&e)),
        Err(_) => return Err(format!("CLUSTER SHARDS unanswered after {timeout:?}")),
    };
    SlotMap::from_shards(&reply).ok_or_else(|| "unexpected answer to CLUSTER SHARDS".into())
}

/// `SSUBSCRIBE` (or `SUNSUBSCRIBE`) `channels`: one command per hash slot,
/// all sent at once, within the timeout.
async fn change(
    shared: &Shared,
    conn: &mut ClusterConnection,
    channels: &[String],
    subscribe: bool,
) -> Result<(), String> {
    let mut by_slot: BTreeMap<u16, Vec<&String>> = BTreeMap::new();
    for channel in channels {
        by_slot
            .entry(slot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    let calls = by_slot.into_values().map(|group| {
        let mut conn = conn.clone();
        async move {
            if subscribe {
                conn.ssubscribe(&group).await
            } else {
                conn.sunsubscribe(&group).await
            }
        }
    });
    let timeout = shared.settings.timeout;
    match tokio::time::timeout(timeout, join_all(calls)).await {
        Ok(results) => match results.into_iter().find_map(Result::err) {
            Some(e) => Err(super::describe(&e)),
            None => Ok(()),
        },
        Err(_) => Err(format!(
            "the redis cluster did not answer within {timeout:?}"
        )),
    }
}

impl Subscriber {
    /// Applies changes, follows moved slots and polls the topology until
    /// something calls for a new connection (`Some(why)`) or the broker
    /// closes (`None`).
    async fn serve(
        &mut self,
        conn: &mut ClusterConnection,
        mut map: SlotMap,
        ops: &mut mpsc::Receiver<Op>,
    ) -> Option<String> {
        let mut poll = tokio::time::interval(self.shared.settings.health_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                op = ops.recv() => {
                    if let Err(why) = self.apply_batch(op?, ops, conn).await {
                        return Some(why);
                    }
                }
                event = self.events.recv() => match event? {
                    Event::Lost(g) if g == self.generation => {
                        return Some("a shard connection closed".to_string())
                    }
                    Event::Lost(_) => {}
                    Event::Unsubscribed(g, channel) => {
                        if g == self.generation && self.wanted.contains(&channel) {
                            tracing::info!(%channel, "the cluster moved a subscribed channel's slot; subscribing it again");
                            if let Err(why) = change(&self.shared, conn, &[channel], true).await {
                                return Some(why);
                            }
                        }
                    }
                },
                _ = poll.tick() => {
                    self.shared.echo.prune();
                    match slot_map(&self.shared, conn).await {
                        Ok(now) if now == map => {}
                        Ok(now) => {
                            tracing::info!("the cluster's slot map changed; subscribing every channel again");
                            let all: Vec<String> = self.wanted.iter().cloned().collect();
                            if let Err(why) = change(&self.shared, conn, &all, true).await {
                                return Some(why);
                            }
                            map = now;
                        }
                        Err(why) => return Some(format!("topology check failed: {why}")),
                    }
                }
            }
        }
    }

    /// Applies `first` and whatever else is queued and answers each.
    async fn apply_batch(
        &mut self,
        first: Op,
        ops: &mut mpsc::Receiver<Op>,
        conn: &mut ClusterConnection,
    ) -> Result<(), String> {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        for op in &batch {
            if op.subscribe {
                self.wanted.insert(op.channel.clone());
            } else {
                self.wanted.remove(&op.channel);
            }
        }
        let mut touched: Vec<String> = batch.iter().map(|op| op.channel.clone()).collect();
        touched.sort();
        touched.dedup();
        let (subscribe, unsubscribe): (Vec<String>, Vec<String>) =
            touched.into_iter().partition(|c| self.wanted.contains(c));
        let mut result = Ok(());
        if !subscribe.is_empty() {
            result = change(&self.shared, conn, &subscribe, true).await;
        }
        if result.is_ok() && !unsubscribe.is_empty() {
            result = change(&self.shared, conn, &unsubscribe, false).await;
        }
        if result.is_err() {
            // Not confirmed: refused and forgotten (the caller undoes its
            // side); the new connection this error leads to will not
            // subscribe them.
            for op in batch.iter().filter(|op| op.subscribe) {
                self.wanted.remove(&op.channel);
            }
        }
        for op in batch {
            let answer = match (&result, op.subscribe) {
                (Err(e), true) => Err(BrokerError::Unavailable(e.clone())),
                _ => Ok(()),
            };
            let _ = op.done.send(answer);
        }
        result
    }

    /// Runs `work` while answering changes as a disconnected broker does
    /// (unsubscribes recorded, subscribes refused); `None` at shutdown.
    async fn while_away<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
        ops: &mut mpsc::Receiver<Op>,
    ) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                op = ops.recv() => {
                    let op = op?;
                    let result = if op.subscribe {
                        let why = self.shared.state.lock().last_error.clone();
                        Err(BrokerError::Unavailable(format!(
                            "the redis cluster is unreachable ({}); subscribe again shortly",
                            why.as_deref().unwrap_or("not connected yet")
                        )))
                    } else {
                        self.wanted.remove(&op.channel);
                        Ok(())
                    };
                    let _ = op.done.send(result);
                }
                _ = self.events.recv() => {}
                done = &mut work => return Some(done),
            }
        }
    }
}
