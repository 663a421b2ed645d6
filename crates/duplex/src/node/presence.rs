//! Presence on this node: its native subscribers of presence channels are
//! members (`broker::presence` holds the contract, docs/PRESENCE.md the
//! model). The node keeps its own members per channel, so it can join and
//! leave them, renew its lease on every channel in one tick, add them all
//! back when its lease was lost (a rejoin), and remove them at once at a
//! clean shutdown (forget).
//!
//! Every change of one channel runs under that channel's stripe lock
//! (the one its subscriptions take), so a rejoin never overlaps a join or
//! leave of the same channel (it could carry back a member that just
//! left). Ticks need no lock: they add no member.
//!
//! Join and leave pushes travel between nodes as publications on the
//! reserved channel `#presence:<channel>` (the push's own JSON), which a
//! node listens to while it has members of a `join_leave` channel; each
//! node checks what arrives there and hands it to its native subscribers.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use duplex_protocol::presence::{Presence as Kind, PresencePush};
use serde_json::value::RawValue;

use super::*;
use crate::broker::presence::{Change, Member, PresenceStats};
use crate::permissions::{PresenceRule, DEFAULT_PRESENCE_TTL};

/// Where nodes pass each other a channel's `join` / `leave` pushes:
/// `#presence:<channel>` (reserved: no client subscribes or publishes there).
pub(crate) const PUSH_CHANNEL_PREFIX: &str = "#presence:";

/// The channel whose pushes travel on `channel`, if it is a push channel.
pub(super) fn pushes_for(channel: &ChannelName) -> Option<&str> {
    channel.as_str().strip_prefix(PUSH_CHANNEL_PREFIX)
}

fn push_channel(channel: &ChannelName) -> ChannelName {
    let name = format!("{PUSH_CHANNEL_PREFIX}{channel}");
    // A valid name behind a valid prefix is valid; no length limit here.
    ChannelName::parse(&name, usize::MAX).unwrap_or_else(|_| channel.clone())
}

/// Refuses to start when a namespace keeps presence and the broker cannot.
pub(super) fn check_broker(permissions: &Permissions, broker: &Broker) -> Result<(), NodeError> {
    if permissions.keeps_presence() {
        broker.presence().map_err(NodeError::NoPresence)?;
    }
    Ok(())
}

/// This node's members, per presence channel.
#[derive(Debug, Default)]
pub(super) struct Locals {
    channels: Mutex<HashMap<ChannelName, Local>>,
    /// Whether `channels` has entries: every unsubscribe on the node asks,
    /// and on a node without presence it must not take the lock to learn no.
    any: AtomicBool,
    /// Set by a clean shutdown's forget: no join, tick or rejoin after it.
    forgotten: AtomicBool,
}

/// One presence channel on this node.
#[derive(Debug)]
struct Local {
    /// Members by connection number.
    members: HashMap<u64, Member>,
    /// The namespace's settings when the channel got its first member.
    rule: PresenceRule,
    /// Whether the node listens to the channel's pushes.
    listening: bool,
    /// Connections whose leave failed (or whose failed join may have
    /// landed): their leave is retried at each tick until it succeeds.
    stale: HashSet<String>,
}

impl Local {
    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.stale.is_empty()
    }
}

impl Locals {
    /// Whether `channel` has members here, and whether the node listens
    /// to its pushes (creating its entry).
    fn open(&self, channel: &ChannelName, rule: PresenceRule) -> (bool, bool) {
        let mut channels = self.channels.lock();
        self.any.store(true, Relaxed);
        let local = channels.entry(channel.clone()).or_insert_with(|| Local {
            members: HashMap::new(),
            rule,
            listening: false,
            stale: HashSet::new(),
        });
        (!local.members.is_empty(), local.listening)
    }

    fn update(&self, channel: &ChannelName, f: impl FnOnce(&mut Local)) {
        if let Some(local) = self.channels.lock().get_mut(channel) {
            f(local);
        }
    }

    /// Drops the channel's entry once it holds nothing; whether the node
    /// was listening to its pushes (it stops).
    fn close_if_idle(&self, channel: &ChannelName) -> bool {
        let mut channels = self.channels.lock();
        let listening = match channels.get(channel) {
            Some(local) if local.is_idle() => channels.remove(channel).is_some_and(|l| l.listening),
            _ => false,
        };
        self.any.store(!channels.is_empty(), Relaxed);
        listening
    }

    fn members(&self, channel: &ChannelName) -> Vec<Member> {
        self.channels
            .lock()
            .get(channel)
            .map(|l| l.members.values().cloned().collect())
            .unwrap_or_default()
    }

    fn rule(&self, channel: &ChannelName) -> Option<PresenceRule> {
        self.channels.lock().get(channel).map(|l| l.rule)
    }

    /// Channels with members, grouped by lease length.
    fn by_ttl(&self) -> HashMap<Duration, Vec<ChannelName>> {
        let mut groups: HashMap<Duration, Vec<ChannelName>> = HashMap::new();
        for (channel, local) in self.channels.lock().iter() {
            if !local.members.is_empty() {
                groups
                    .entry(local.rule.ttl)
                    .or_default()
                    .push(channel.clone());
            }
        }
        groups
    }

    fn stale(&self) -> Vec<(ChannelName, Vec<String>)> {
        self.channels
            .lock()
            .iter()
            .filter(|(_, l)| !l.stale.is_empty())
            .map(|(c, l)| (c.clone(), l.stale.iter().cloned().collect()))
            .collect()
    }

    fn is_forgotten(&self) -> bool {
        self.forgotten.load(Relaxed)
    }
}

/// The token's `info` as a member keeps it (empty: none).
fn info_bytes(info: Option<&RawValue>) -> Bytes {
    info.map_or_else(Bytes::new, |i| Bytes::copy_from_slice(i.get().as_bytes()))
}

/// A member's `info` as JSON again (`None`: none, or not JSON).
pub(crate) fn info_json(info: &[u8]) -> Option<&RawValue> {
    if info.is_empty() {
        return None;
    }
    serde_json::from_slice(info).ok()
}

impl Node {
    /// The presence settings of `channel`, if its namespace keeps members.
    pub(crate) fn presence_rule(&self, channel: &ChannelName) -> Option<PresenceRule> {
        self.permissions().presence(channel.as_str())
    }

    /// Makes `conn`, subscribed to the presence channel `channel`, a
    /// member (its user and token `info`), and pushes a `join` when it is
    /// the user's first connection there. An error leaves it no member.
    pub(crate) async fn join_presence(
        &self,
        conn: &Conn,
        channel: &ChannelName,
        rule: PresenceRule,
        user: &str,
        info: Option<&RawValue>,
    ) -> Result<(), BrokerError> {
        let presence = self.inner.broker.presence()?;
        let _guard = self.stripe(channel).lock().await;
        let locals = &self.inner.presence;
        if locals.is_forgotten() || !self.inner.hub.contains(channel.as_str(), conn.seq) {
            return Ok(());
        }
        let member = Member {
            conn: conn.id.to_string(),
            user: user.to_string(),
            info: info_bytes(info),
        };
        let (had_members, listening) = locals.open(channel, rule);
        if rule.join_leave && !listening {
            let listened = self
                .inner
                .broker
                .pubsub()
                .subscribe(push_channel(channel))
                .await;
            if let Err(e) = listened {
                locals.close_if_idle(channel);
                return Err(e);
            }
            locals.update(channel, |l| l.listening = true);
        }
        let change = match presence.join(channel, &member, rule.ttl).await {
            Ok(change) => change,
            Err(e) => {
                // It may have landed: a leave at the next tick makes sure.
                Stats::bump(&self.inner.stats.presence_failures);
                locals.update(channel, |l| {
                    l.stale.insert(member.conn.clone());
                });
                return Err(e);
            }
        };
        locals.update(channel, |l| {
            l.stale.remove(&member.conn);
            l.members.insert(conn.seq, member);
        });
        self.push_change(channel, rule, &change).await;
        if change.lease_lost && had_members {
            self.rejoin_held(channel, rule).await;
        }
        Ok(())
    }

    /// Under the channel's stripe lock: `conn` is a member no more (it
    /// unsubscribed, was taken off, or closed); pushes a `leave` when it
    /// was its user's last connection there.
    pub(super) async fn leave_presence_held(&self, conn: &Conn, channel: &ChannelName) {
        let locals = &self.inner.presence;
        if !locals.any.load(Relaxed) {
            return;
        }
        let mut gone = None;
        locals.update(channel, |l| {
            gone = l.members.remove(&conn.seq).map(|m| (m, l.rule))
        });
        let Some((member, rule)) = gone else {
            return;
        };
        self.leave_member(channel, rule, &member.conn).await;
    }

    /// Removes one member on the broker and pushes what that changed; a
    /// failure is retried at each tick.
    async fn leave_member(&self, channel: &ChannelName, rule: PresenceRule, conn_id: &str) {
        let locals = &self.inner.presence;
        let left = match self.inner.broker.presence() {
            Ok(presence) => presence.leave(channel, conn_id).await,
            Err(e) => Err(e),
        };
        match left {
            Ok(change) => {
                locals.update(channel, |l| {
                    l.stale.remove(conn_id);
                });
                self.push_change(channel, rule, &change).await;
            }
            Err(e) => {
                Stats::bump(&self.inner.stats.presence_failures);
                tracing::warn!(%channel, conn = conn_id, error = %e, "presence leave failed; retried at the next tick");
                locals.update(channel, |l| {
                    l.stale.insert(conn_id.to_string());
                });
            }
        }
        if locals.close_if_idle(channel) {
            let unlistened = self
                .inner
                .broker
                .pubsub()
                .unsubscribe(push_channel(channel))
                .await;
            if let Err(e) = unlistened {
                tracing::warn!(%channel, error = %e, "broker unsubscribe failed");
            }
        }
    }

    /// Under the channel's stripe lock: adds back every member this node
    /// holds there (its lease was lost), pushing the users that brings back.
    async fn rejoin_held(&self, channel: &ChannelName, rule: PresenceRule) {
        let members = self.inner.presence.members(channel);
        if members.is_empty() || self.inner.presence.is_forgotten() {
            return;
        }
        let Ok(presence) = self.inner.broker.presence() else {
            return;
        };
        Stats::bump(&self.inner.stats.presence_rejoins);
        match presence.rejoin(channel, &members, rule.ttl).await {
            Ok(change) => self.push_change(channel, rule, &change).await,
            Err(e) => {
                Stats::bump(&self.inner.stats.presence_failures);
                tracing::warn!(%channel, error = %e, "presence rejoin failed; retried at the next tick");
            }
        }
    }

    /// Pushes a change's leaves, then its joins, to every node holding
    /// the channel (this one included), when its namespace wants them.
    async fn push_change(&self, channel: &ChannelName, rule: PresenceRule, change: &Change) {
        let stats = &self.inner.stats;
        let leaves = change.left.iter().map(|m| (Kind::Leave, m));
        let joins = change.joined.iter().map(|m| (Kind::Join, m));
        for (kind, member) in leaves.chain(joins) {
            Stats::bump(match kind {
                Kind::Join => &stats.presence_joins,
                Kind::Leave => &stats.presence_leaves,
            });
            if !rule.join_leave {
                continue;
            }
            let push = PresencePush {
                push: kind,
                channel: channel.as_str().into(),
                user: member.user.as_str().into(),
                conn: member.conn.as_str().into(),
                info: info_json(&member.info),
            };
            let publication = Publication {
                channel: push_channel(channel),
                payload: Bytes::from(push.to_json()),
                kind: duplex_protocol::ws::MessageKind::Text,
                exclude: None,
                position: None,
            };
            if let Err(e) = self.inner.broker.pubsub().publish(publication).await {
                Stats::bump(&stats.presence_failures);
                tracing::warn!(%channel, error = %e, "presence push not published (at most once: lost)");
            }
        }
    }

    /// A push from `#presence:<channel>`: checked (a raw `PUBLISH` there
    /// must at least be a well-formed push for that channel of a
    /// `join_leave` namespace) and queued to the channel's native
    /// subscribers here.
    pub(super) fn deliver_presence(&self, channel: &str, payload: &[u8]) {
        let push: Option<PresencePush<'_>> = serde_json::from_slice(payload).ok();
        let wanted = self
            .permissions()
            .presence(channel)
            .is_some_and(|r| r.join_leave);
        let Some(push) = push.filter(|p| wanted && p.channel == channel) else {
            Stats::bump(&self.inner.stats.presence_pushes_refused);
            return;
        };
        let frame = push.frame();
        for sub in self.inner.hub.subscribers(channel) {
            if sub.wire == Wire::Native {
                self.send_to(&sub, frame.clone(), "presence push");
            }
        }
    }

    /// The members of `channel` on every node (live leases only).
    pub(crate) async fn presence_members(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, BrokerError> {
        self.inner.broker.presence()?.members(channel).await
    }

    /// The counts of `channel` on every node (live leases only).
    pub(crate) async fn presence_stats(
        &self,
        channel: &ChannelName,
    ) -> Result<PresenceStats, BrokerError> {
        self.inner.broker.presence()?.stats(channel).await
    }

    /// Renews the node's leases every third of the shortest `presence_ttl`,
    /// pushing the leaves of vanished nodes' members it sweeps; runs until
    /// the node stops.
    pub(super) async fn tick_presence(self) {
        loop {
            let ttl = self
                .permissions()
                .effective()
                .filter_map(|ns| ns.presence())
                .map(|r| r.ttl)
                .min()
                .unwrap_or(DEFAULT_PRESENCE_TTL);
            tokio::time::sleep(ttl / 3).await;
            if self.inner.presence.is_forgotten() {
                return;
            }
            self.tick_once().await;
        }
    }

    /// One tick: every presence channel's lease renewed (one call per
    /// lease length), then failed leaves retried.
    async fn tick_once(&self) {
        let Ok(presence) = self.inner.broker.presence() else {
            return;
        };
        for (ttl, channels) in self.inner.presence.by_ttl() {
            Stats::bump(&self.inner.stats.presence_ticks);
            let changes = match presence.tick(self.id(), &channels, ttl).await {
                Ok(changes) => changes,
                Err(e) => {
                    Stats::bump(&self.inner.stats.presence_failures);
                    tracing::warn!(channels = channels.len(), error = %e, "presence tick failed; members stay while the lease lasts");
                    continue;
                }
            };
            for (channel, change) in channels.iter().zip(changes) {
                if change.is_empty() {
                    continue;
                }
                let _guard = self.stripe(channel).lock().await;
                // Its last member may have left since: the sweep's leaves still go out.
                let rule = self.inner.presence.rule(channel);
                let Some(rule) = rule.or_else(|| self.presence_rule(channel)) else {
                    continue;
                };
                self.push_change(channel, rule, &change).await;
                if change.lease_lost {
                    self.rejoin_held(channel, rule).await;
                }
            }
        }
        for (channel, conns) in self.inner.presence.stale() {
            let _guard = self.stripe(&channel).lock().await;
            let Some(rule) = self.inner.presence.rule(&channel) else {
                continue;
            };
            for conn in conns {
                self.leave_member(&channel, rule, &conn).await;
            }
        }
    }

    /// A clean shutdown: every member of this node removed at once (one
    /// call for all channels) and their leaves pushed now, not after a
    /// lease; the node joins nothing after it.
    pub async fn forget_presence(&self) {
        let locals = &self.inner.presence;
        locals.forgotten.store(true, Relaxed);
        let held: Vec<(ChannelName, PresenceRule)> = locals
            .channels
            .lock()
            .drain()
            .map(|(channel, local)| (channel, local.rule))
            .collect();
        locals.any.store(false, Relaxed);
        if held.is_empty() {
            return;
        }
        let Ok(presence) = self.inner.broker.presence() else {
            return;
        };
        let channels: Vec<ChannelName> = held.iter().map(|(c, _)| c.clone()).collect();
        match presence.forget(self.id(), &channels).await {
            Ok(changes) => {
                for ((channel, rule), change) in held.iter().zip(changes) {
                    self.push_change(channel, *rule, &change).await;
                }
            }
            Err(e) => {
                Stats::bump(&self.inner.stats.presence_failures);
                tracing::warn!(error = %e, "presence forget failed: this node's members go when its leases expire");
            }
        }
    }
}
