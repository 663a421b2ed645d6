//! Presence on Redis: the `duplex_presence_*` Functions of the `duplex`
//! library (`functions.lua`), each change one atomic call, so a sweep of a
//! vanished node's members happens once whichever nodes race to it:
//!
//! ```text
//! FCALL duplex_presence_join 3 P U L <ttl ms> <keep ms> <conn> <holder> <user> <info> [...]
//! FCALL duplex_presence_leave 3 P U L <holder> <conn>
//! FCALL duplex_presence_tick 3 P U L <holder> <ttl ms> <keep ms>
//! FCALL duplex_presence_forget 3 P U L <holder>
//!   -> [lost, #joined, conn, user, info (joined) ..., conn, user, info (left) ...]
//! FCALL_RO duplex_presence_members 3 P U L -> [conn, user, info, ...]
//! FCALL_RO duplex_presence_stats 3 P U L -> [connections, users]
//! ```
//!
//! For channel K (its Redis name, prefix included) the keys are P =
//! `{K}:presence` (conn -> holder, user, info), U = `{K}:presence:users`
//! (user -> connections) and L = `{K}:presence:leases` (holder -> expiry
//! in ms of Redis `TIME`, so node clocks do not matter), hash-tagged by
//! channel (one Cluster slot) and passed as keys. A lease holder is
//! `<node id>/<run>`, the run a token this broker draws at start: a node
//! restarted under the same id does not renew its previous run's lease.
//!
//! Costs: a tick is one `FCALL` per channel, all in one pipeline, of a
//! constant handful of commands inside whatever the channel's size; a
//! join or leave is one `FCALL`; a rejoin one `FCALL` per [`REJOIN_BATCH`]
//! members. Only a sweep (an expired lease, rare) and a forget scan the
//! channel's members, inside the call. The read-only Functions filter out
//! expired leases' members, so they need no sweep; the keys must not be
//! evicted (a `maxmemory` policy that evicts would drop them one by one).

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use futures_util::future::{BoxFuture, FutureExt};
use redis::Value;
use std::time::Duration;

use super::history::{load_library, with_library};
use super::RedisBroker;
use crate::broker::presence::{
    check_ttl, node_of, Change, Member, Presence, PresenceStats, KEEP_LEASES,
};
use crate::broker::BrokerError;

/// Members per `duplex_presence_join` call of a rejoin: one call never
/// holds Redis long, and a rejoin of many is a pipeline of calls.
pub(in crate::broker) const REJOIN_BATCH: usize = 1000;

/// A lease in whole milliseconds, at least 1, at most a century.
pub(in crate::broker) fn millis(d: Duration) -> u64 {
    const CENTURY_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
    u64::try_from(d.as_millis()).map_or(CENTURY_MS, |ms| ms.clamp(1, CENTURY_MS))
}

pub(in crate::broker) fn bad(function: &str) -> BrokerError {
    BrokerError::Unavailable(format!("unexpected answer from {function}"))
}

/// A reply item as bytes.
fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// Reads `conn, user, info` triples until `items` ends or `count` are read.
pub(in crate::broker) fn members_of(
    items: &mut impl Iterator<Item = Value>,
    count: Option<usize>,
) -> Option<Vec<Member>> {
    let mut out = Vec::new();
    while count.is_none_or(|n| out.len() < n) {
        let Some(conn) = items.next() else {
            return count.is_none().then_some(out);
        };
        let (user, info) = (items.next()?, items.next()?);
        out.push(Member {
            conn: String::from_utf8(bytes(conn)?).ok()?,
            user: String::from_utf8(bytes(user)?).ok()?,
            info: Bytes::from(bytes(info)?),
        });
    }
    Some(out)
}

/// A change reply: `[lost, #joined, stamp, joined triples..., left triples...]`.
pub(in crate::broker) fn change(reply: Value) -> Option<Change> {
    let Value::Array(items) = reply else {
        return None;
    };
    let mut items = items.into_iter();
    let (Some(Value::Int(lost)), Some(Value::Int(joined)), Some(Value::Int(stamp))) =
        (items.next(), items.next(), items.next())
    else {
        return None;
    };
    let joined = members_of(&mut items, Some(usize::try_from(joined).ok()?))?;
    let left = members_of(&mut items, None)?;
    Some(Change {
        joined,
        left,
        lease_lost: lost != 0,
        stamp: u64::try_from(stamp).ok()?,
    })
}

/// A stats reply: `[connections, users]`.
pub(in crate::broker) fn stats(reply: Value) -> Option<PresenceStats> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.as_slice() {
        [Value::Int(connections), Value::Int(users)] => Some(PresenceStats {
            connections: u64::try_from(*connections).ok()?,
            users: u64::try_from(*users).ok()?,
        }),
        _ => None,
    }
}

/// Whether a pipelined reply says the library is missing (Redis restarted empty).
fn missing(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e)
        if e.to_string().to_ascii_lowercase().contains("function not found"))
}

impl RedisBroker {
    /// `<call> <function> 3 P U L` for `channel` (`call`: `FCALL`, or
    /// `FCALL_RO` for the read-only ones).
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

    /// The lease holder of `node`'s members on this broker: the node id and this run's token.
    fn holder(&self, node: &str) -> String {
        format!("{node}/{}", self.presence_run)
    }

    /// Runs one call, loading the library when Redis lacks it.
    async fn presence_one(&self, fcall: redis::Cmd) -> Result<Value, BrokerError> {
        self.on_publisher(|mut conn| async move { with_library::<Value>(&mut conn, &fcall).await })
            .await
    }

    /// Runs calls in one pipeline, one reply each, in order; those that
    /// found the library missing run once more after loading it. Any
    /// other error fails the whole (the Functions write nothing before
    /// they can fail).
    async fn presence_many(&self, calls: Vec<redis::Cmd>) -> Result<Vec<Value>, BrokerError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let replies = self
            .on_publisher(|mut conn| async move {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                calls.iter().for_each(|c| {
                    pipe.add_command(c.clone());
                });
                let mut replies: Vec<Value> = pipe.query_async(&mut conn).await?;
                let again: Vec<usize> = (0..replies.len())
                    .filter(|i| missing(&replies[*i]))
                    .collect();
                if !again.is_empty() {
                    load_library(&mut conn).await?;
                    let mut retry = redis::pipe();
                    retry.ignore_errors();
                    again.iter().for_each(|i| {
                        retry.add_command(calls[*i].clone());
                    });
                    let answers: Vec<Value> = retry.query_async(&mut conn).await?;
                    for (i, answer) in again.into_iter().zip(answers) {
                        replies[i] = answer;
                    }
                }
                Ok(replies)
            })
            .await?;
        if let Some(Value::ServerError(e)) =
            replies.iter().find(|r| matches!(r, Value::ServerError(_)))
        {
            return Err(BrokerError::Unavailable(e.to_string()));
        }
        Ok(replies)
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

    async fn presence_leave(
        &self,
        channel: &ChannelName,
        conn: &str,
    ) -> Result<Change, BrokerError> {
        let mut fcall = self.presence_call("FCALL", "duplex_presence_leave", channel);
        fcall.arg(self.holder(node_of(conn))).arg(conn);
        change(self.presence_one(fcall).await?).ok_or_else(|| bad("duplex_presence_leave"))
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
}

impl Presence for RedisBroker {
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
        self.presence_leave(channel, conn).boxed()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn change_replies_read_as_joined_then_left() {
        let reply = Value::Array(vec![
            Value::Int(1),
            Value::Int(1),
            Value::Int(1_765_000_000_000_000),
            bulk("n1.1"),
            bulk("ann"),
            bulk("{}"),
            bulk("n2.7"),
            bulk(""),
            bulk(""),
        ]);
        let got = change(reply).expect("a change");
        assert!(got.lease_lost);
        assert_eq!(got.stamp, 1_765_000_000_000_000);
        assert_eq!(got.joined.len(), 1);
        assert_eq!(
            (got.joined[0].conn.as_str(), got.joined[0].user.as_str()),
            ("n1.1", "ann")
        );
        assert_eq!(got.joined[0].info.as_ref(), b"{}");
        assert_eq!(got.left.len(), 1);
        assert!(got.left[0].is_anonymous());
        assert_eq!(got.left[0].node(), "n2");
        let short = Value::Array(vec![
            Value::Int(0),
            Value::Int(2),
            Value::Int(0),
            bulk("a"),
            bulk("b"),
            bulk(""),
        ]);
        assert!(change(short).is_none(), "two joined announced, one given");
        let ragged = Value::Array(vec![Value::Int(0), Value::Int(0), bulk("a")]);
        assert!(change(ragged).is_none(), "a partial triple");
        assert!(change(Value::Nil).is_none());
    }

    #[test]
    fn stats_and_leases_read_as_numbers() {
        let reply = Value::Array(vec![Value::Int(3), Value::Int(2)]);
        assert_eq!(
            stats(reply),
            Some(PresenceStats {
                connections: 3,
                users: 2
            })
        );
        assert!(stats(Value::Array(vec![Value::Int(-1), Value::Int(0)])).is_none());
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
