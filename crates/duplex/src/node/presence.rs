//! Presence on this node: its native subscribers of presence channels are
//! members (`broker::presence` holds the contract, docs/PRESENCE.md the
//! model). The node keeps its own members per channel, so it can join and
//! leave them, renew its lease on every channel in one tick, add them all
//! back when its lease was lost (a rejoin), and remove them at once at a
//! clean shutdown (forget).
//!
//! Every change of one channel runs under that channel's presence lock
//! (`locks`: one per channel, not the subscription stripes, so a slow
//! broker call holds up no other channel), so a rejoin never overlaps a
//! join or leave of the same channel (it could carry back a member that
//! just left). A join checks under it that its connection is still
//! subscribed, and a leave runs after the connection is off the hub, so
//! whichever comes first, no member outlives its subscription. Ticks need
//! no lock: they add no member.
//!
//! Join and leave pushes travel between nodes as publications on the
//! reserved channel `#presence:<channel>` (the push's own JSON), which a
//! node listens to while it has members that asked for them (`join_leave`
//! in `subscribe` or `connect`) in a channel whose namespace sets
//! `join_leave`; each node checks what arrives there and hands it to
//! those of its subscribers.

mod locals;
mod locks;

use locals::Admit;
pub(super) use locals::Locals;

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

/// Who a subscribing connection is as a member, and whether it asked for
/// `join` / `leave` pushes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Joiner<'a> {
    /// Its user (`""` when anonymous).
    pub(crate) user: &'a str,
    /// Its token's `info` claim.
    pub(crate) info: Option<&'a RawValue>,
    /// Whether it wants the pushes (only where the namespace sets `join_leave`).
    pub(crate) wants_pushes: bool,
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
        who: Joiner<'_>,
    ) -> Result<(), BrokerError> {
        let presence = self.inner.broker.presence()?;
        let locals = &self.inner.presence;
        let _guard = locals.lock(channel).await;
        if locals.is_forgotten() || !self.inner.hub.contains(channel.as_str(), conn.seq) {
            return Ok(());
        }
        let member = Member {
            conn: conn.id.to_string(),
            user: who.user.to_string(),
            info: info_bytes(who.info),
        };
        let listens = rule.join_leave && who.wants_pushes;
        let (had_members, listening) = locals.open(channel, rule);
        if listens && !listening {
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
            if listens {
                l.listeners.insert(conn.seq);
            }
        });
        self.push_change(channel, rule, &change).await;
        if change.lease_lost && had_members {
            self.rejoin_held(channel, rule).await;
        }
        Ok(())
    }

    /// After `conn` is off `channel` here (it unsubscribed, was taken
    /// off, or closed): it is a member no more; pushes a `leave` when it
    /// was its user's last connection there.
    pub(super) async fn leave_presence(&self, conn: &Conn, channel: &ChannelName) {
        let locals = &self.inner.presence;
        if !locals.any.load(Relaxed) {
            return;
        }
        let _guard = locals.lock(channel).await;
        let mut gone = None;
        locals.update(channel, |l| {
            l.listeners.remove(&conn.seq);
            gone = l.members.remove(&conn.seq).map(|m| (m, l.rule));
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

    /// Under the channel's presence lock: adds back every member this node
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
                at: Some(change.stamp),
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
    /// `join_leave` namespace) and queued to the channel's subscribers
    /// here that asked for pushes.
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
        let who = (push.user.as_ref(), push.conn.as_ref());
        let listeners = match self.inner.presence.admit(channel, who, push.at) {
            Admit::To(listeners) => listeners,
            Admit::Nobody => return,
            Admit::Stale => {
                Stats::bump(&self.inner.stats.presence_pushes_stale);
                tracing::debug!(channel, user = %push.user, "presence push older than one delivered: dropped");
                return;
            }
        };
        let frame = push.frame();
        for sub in self.inner.hub.subscribers(channel) {
            if sub.wire == Wire::Native && listeners.contains(&sub.seq) {
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
                let _guard = self.inner.presence.lock(channel).await;
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
            let _guard = self.inner.presence.lock(&channel).await;
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
        let held = locals.drain();
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
