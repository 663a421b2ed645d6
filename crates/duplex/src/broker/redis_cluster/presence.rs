//! Presence on a Redis Cluster: the `duplex_presence_*` Functions of the
//! single-Redis library (`broker/redis/presence.rs`), each call on the
//! master of its channel's slot.
//!
//! A channel's three keys (`{K}:presence`, `{K}:presence:users`,
//! `{K}:presence:leases`) are hash-tagged by the channel, and the per-node
//! leases are a sorted set *per channel* (holder -> expiry), not one key
//! per node: the lease a node holds for its members of channel K lives in
//! K's slot, on the shard that carries K's messages, so every call touches
//! one slot as a cluster requires, and a sweep of a vanished node's
//! members stays one atomic step there. A node renews its leases with one
//! tick call per presence channel, sent to every shard at once (each
//! shard's calls pipelined on its connection), as on a single Redis.

use std::time::Duration;

use duplex_protocol::channel::ChannelName;
use futures_util::future::{join_all, BoxFuture, FutureExt};
use redis::Value;

use super::RedisClusterBroker;
use crate::broker::presence::{
    check_ttl, node_of, Change, Member, Presence, PresenceStats, KEEP_LEASES,
};
use crate::broker::redis::history::with_library;
use crate::broker::redis::presence::{bad, change, members_of, millis, stats, REJOIN_BATCH};
use crate::broker::BrokerError;

impl RedisClusterBroker {
    /// `<call> <function> 3 P U L` for `channel`.
    fn presence_call(&self, call: &str, function: &str, channel: &ChannelName) -> redis::Cmd {
        let key = format!("{}{}", self.shared.settings.prefix, channel);
        let mut fcall = redis::cmd(call);
        fcall
            .arg(function)
            .arg(3)
            .arg(format!("{{{key}}}:presence"))
            .arg(format!("{{{key}}}:presence:users"))
            .arg(format!("{{{key}}}:presence:leases"));
        fcall
    }

    /// The lease holder of `node`'s members: the node id and this run's token.
    fn holder(&self, node: &str) -> String {
        format!("{node}/{}", self.presence_run)
    }

    /// Runs calls at once, each on its channel's shard, within one
    /// timeout; their replies in order. Any error fails the whole (the
    /// Functions write nothing before they can fail).
    async fn presence_many(&self, calls: Vec<redis::Cmd>) -> Result<Vec<Value>, BrokerError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        self.on_conn(|conn| async move {
            let each = calls.iter().map(|call| {
                let mut conn = conn.clone();
                async move { with_library::<Value>(&mut conn, call).await }
            });
            join_all(each).await.into_iter().collect()
        })
        .await
    }

    async fn presence_one(&self, call: redis::Cmd) -> Result<Value, BrokerError> {
        let mut replies = self.presence_many(vec![call]).await?;
        replies.pop().ok_or_else(|| bad("a presence Function"))
    }

    /// One change call per channel (`args` adds each one's arguments).
    async fn presence_each(
        &self,
        function: &str,
        channels: &[ChannelName],
        args: impl Fn(&mut redis::Cmd),
    ) -> Result<Vec<Change>, BrokerError> {
        let calls = channels
            .iter()
            .map(|channel| {
                let mut fcall = self.presence_call("FCALL", function, channel);
                args(&mut fcall);
                fcall
            })
            .collect();
        let replies = self.presence_many(calls).await?;
        replies
            .into_iter()
            .map(|reply| change(reply).ok_or_else(|| bad(function)))
            .collect()
    }

    async fn presence_rejoin(
        &self,
        channel: &ChannelName,
        members: &[Member],
        lease_ttl: Duration,
    ) -> Result<Change, BrokerError> {
        check_ttl(lease_ttl)?;
        let calls = members
            .chunks(REJOIN_BATCH)
            .map(|batch| {
                let mut fcall = self.presence_call("FCALL", "duplex_presence_join", channel);
                fcall
                    .arg(millis(lease_ttl))
                    .arg(millis(lease_ttl.saturating_mul(KEEP_LEASES)));
                for m in batch {
                    fcall
                        .arg(&m.conn)
                        .arg(self.holder(m.node()))
                        .arg(&m.user)
                        .arg(m.info.as_ref());
                }
                fcall
            })
            .collect();
        let mut total = Change::default();
        for reply in self.presence_many(calls).await? {
            total.absorb(change(reply).ok_or_else(|| bad("duplex_presence_join"))?);
        }
        Ok(total)
    }
}

impl Presence for RedisClusterBroker {
    fn rejoin<'a>(
        &'a self,
        channel: &'a ChannelName,
        members: &'a [Member],
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Change, BrokerError>> {
        self.presence_rejoin(channel, members, lease_ttl).boxed()
    }

    fn leave<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
    ) -> BoxFuture<'a, Result<Change, BrokerError>> {
        async move {
            let mut fcall = self.presence_call("FCALL", "duplex_presence_leave", channel);
            fcall.arg(self.holder(node_of(conn))).arg(conn);
            change(self.presence_one(fcall).await?).ok_or_else(|| bad("duplex_presence_leave"))
        }
        .boxed()
    }

    fn members<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        async move {
            let fcall = self.presence_call("FCALL_RO", "duplex_presence_members", channel);
            match self.presence_one(fcall).await? {
                Value::Array(items) => members_of(&mut items.into_iter(), None),
                _ => None,
            }
            .ok_or_else(|| bad("duplex_presence_members"))
        }
        .boxed()
    }

    fn stats<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        async move {
            let fcall = self.presence_call("FCALL_RO", "duplex_presence_stats", channel);
            stats(self.presence_one(fcall).await?).ok_or_else(|| bad("duplex_presence_stats"))
        }
        .boxed()
    }

    fn tick<'a>(
        &'a self,
        node: &'a str,
        channels: &'a [ChannelName],
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<Change>, BrokerError>> {
        async move {
            check_ttl(lease_ttl)?;
            let holder = self.holder(node);
            let (ttl, keep) = (
                millis(lease_ttl),
                millis(lease_ttl.saturating_mul(KEEP_LEASES)),
            );
            self.presence_each("duplex_presence_tick", channels, |fcall| {
                fcall.arg(&holder).arg(ttl).arg(keep);
            })
            .await
        }
        .boxed()
    }

    fn forget<'a>(
        &'a self,
        node: &'a str,
        channels: &'a [ChannelName],
    ) -> BoxFuture<'a, Result<Vec<Change>, BrokerError>> {
        async move {
            let holder = self.holder(node);
            self.presence_each("duplex_presence_forget", channels, |fcall| {
                fcall.arg(&holder);
            })
            .await
        }
        .boxed()
    }
}
