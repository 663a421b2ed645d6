//! Presence: who is in a channel, exact across nodes, tabs and crashes.
//!
//! Each connection subscribed to a presence channel is a [`Member`]: its
//! connection id `<node>.<seq>`, its user (`""`: anonymous) and the opaque
//! `info` of its token. Users, not connections, join and leave (Pusher's
//! semantics): a user joins with their first connection in the channel
//! and leaves after their last, whichever node holds them. An anonymous
//! member is a user of its own, keyed by its connection id: each anonymous
//! tab joins and leaves alone and counts as one user in [`PresenceStats`].
//!
//! # Leases
//!
//! A node's members live as long as its *lease* on the channel: one lease
//! per node and channel (not per member), taken by [`Presence::join`] and
//! [`Presence::rejoin`] and renewed by [`Presence::tick`], which the node
//! calls for all its presence channels at once, well within `lease_ttl`.
//! A node that vanishes (SIGKILL) stops renewing; `lease_ttl` later:
//!
//! - [`Presence::members`] and [`Presence::stats`] no longer count its
//!   members, whether or not anyone swept them yet;
//! - the next change on the channel by another node (a tick, join, leave
//!   or forget: every change sweeps the expired leases of *other* nodes
//!   first) removes them in one atomic step and answers, in
//!   [`Change::left`], the users who thereby left (no connection of theirs
//!   remains): exactly once across all nodes, so the node that swept
//!   pushes their leaves and no other does.
//!
//! A node whose own lease went (it could not tick in time and another node
//! swept its members, or the backend came back empty) learns it from
//! [`Change::lease_lost`]; it then re-adds every member it holds in that
//! channel with [`Presence::rejoin`], and keeps trying at each tick until
//! that succeeds (a tick does not take a lost lease back, so it answers
//! `lease_lost` until the rejoin). A node's own lease that expired but was
//! not swept yet is simply renewed: its members are counted again.
//!
//! A lease belongs to one *run* of a node: a node restarted with the same
//! node id (a configured `node_id`) takes a new lease (Redis: the node id
//! plus a token drawn at start), so the members of its previous run go
//! like those of any vanished node instead of living on under the renewed
//! lease.
//!
//! # What is exact
//!
//! The member list is the truth: every answer counts exactly the members
//! of live leases. Join and leave are at-most-once live events derived from
//! it ([`Change::joined`], [`Change::left`]): a change is answered to the
//! one call that made it, so the node that made it pushes it once; a node
//! that fails between the change and its push loses that push, and the
//! list still converges. The calls of one node for one channel must not
//! overlap with a [`Presence::rejoin`] of that channel (the node serializes
//! them), or a rejoin could carry back a member that just left.
//!
//! Every call takes what it needs (`lease_ttl`), so a reload applies at
//! once. Backends: [`memory`] and the Redis Functions of
//! `broker/redis/presence.rs`; `tests/broker_conformance/presence.rs`
//! holds the cases both pass.

pub mod memory;

use std::time::Duration;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use futures_util::future::BoxFuture;

use super::BrokerError;

/// How many lease lengths a channel's presence state outlives its last
/// join or tick: a channel every node abandoned disappears by itself.
pub const KEEP_LEASES: u32 = 3;

/// One connection in a presence channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// Its connection id, `<node>.<seq>`: the node is before the last `.`.
    pub conn: String,
    /// Its user id; `""` for an anonymous connection, a user of its own.
    pub user: String,
    /// The token's `info` claim as JSON (opaque here; may be empty).
    pub info: Bytes,
}

impl Member {
    /// The node holding it: its connection id up to the last `.`.
    pub fn node(&self) -> &str {
        node_of(&self.conn)
    }

    /// Whether it has no user id (then it is a user of its own).
    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty()
    }
}

/// The node part of a connection id `<node>.<seq>` (the whole id when it has no `.`).
pub fn node_of(conn: &str) -> &str {
    conn.rsplit_once('.').map_or(conn, |(node, _seq)| node)
}

/// A channel's counts, over live leases only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Member connections.
    pub connections: u64,
    /// Distinct users (each anonymous connection counts as one).
    pub users: u64,
}

/// What one call changed in a channel: what the node that made the call
/// pushes (the leaves first: a join that swept first may answer a user
/// leaving with a vanished node and joining again with this one) and
/// whether it must re-add its members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Users who joined by it (their first live connection), each with
    /// the member that made them join.
    pub joined: Vec<Member>,
    /// Users who left by it (no connection of theirs remains), each with
    /// the last member that went: by a leave or forget, or swept with
    /// another node's expired lease.
    pub left: Vec<Member>,
    /// This node's lease on the channel was gone before the call (swept
    /// after it expired, or the backend lost it): its members there were
    /// removed, and it re-adds them with [`Presence::rejoin`]. Meaningless
    /// on a first join, when the node had no members there.
    pub lease_lost: bool,
    /// Where the change stands among the channel's changes, whichever
    /// node made them (increasing; 0 when nobody joined or left): pushes
    /// from two nodes can cross on the way, so a node drops a user's push
    /// whose stamp is below one it delivered for that user.
    pub stamp: u64,
}

impl Change {
    /// Whether it calls for no push and no rejoin.
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty() && !self.lease_lost
    }

    /// Adds `other`'s joins and leaves to this one's (batches of one call).
    pub(crate) fn absorb(&mut self, other: Change) {
        self.joined.extend(other.joined);
        self.left.extend(other.left);
        self.lease_lost |= other.lease_lost;
        self.stamp = self.stamp.max(other.stamp);
    }
}

/// What [`Presence`] answers for a lease of no length.
pub(crate) const NO_LEASE: &str = "presence needs a lease ttl above 0";

/// Refuses a lease of no length (its members would be dead at once).
pub(crate) fn check_ttl(lease_ttl: Duration) -> Result<(), BrokerError> {
    if lease_ttl.is_zero() {
        return Err(BrokerError::Unsupported(NO_LEASE));
    }
    Ok(())
}

/// Keeps channels' members under leases that each node renews for all its
/// channels at once (the module doc holds the contract).
pub trait Presence: Send + Sync + 'static {
    /// Adds one member (its node's lease on the channel taken or renewed
    /// for `lease_ttl`); `joined` holds its user when this is the user's
    /// first connection there. Adding a member already there changes
    /// nothing but its `info`.
    fn join<'a>(
        &'a self,
        channel: &'a ChannelName,
        member: &'a Member,
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Change, BrokerError>> {
        self.rejoin(channel, std::slice::from_ref(member), lease_ttl)
    }

    /// Adds members in one batch, as [`Self::join`] (a node re-adding its
    /// members after [`Change::lease_lost`]); `joined` holds the users who
    /// joined by it (its own `lease_lost` just says the lease was gone
    /// before, which this repairs).
    fn rejoin<'a>(
        &'a self,
        channel: &'a ChannelName,
        members: &'a [Member],
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Change, BrokerError>>;

    /// Removes a member; `left` holds its user when it was their last
    /// connection there. Removing a member not there changes nothing.
    fn leave<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
    ) -> BoxFuture<'a, Result<Change, BrokerError>>;

    /// The channel's members under live leases, in no particular order.
    fn members<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>>;

    /// The channel's counts under live leases.
    fn stats<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>>;

    /// For each channel (in order, one answer each): renews `node`'s lease
    /// for `lease_ttl` and sweeps other nodes' expired leases; a lost
    /// lease is not taken back (see [`Change::lease_lost`]). `node` is the
    /// node part of its members' connection ids. One round trip for all
    /// of them (Redis: one pipeline).
    fn tick<'a>(
        &'a self,
        node: &'a str,
        channels: &'a [ChannelName],
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<Change>, BrokerError>>;

    /// For each channel (in order, one answer each): removes all of
    /// `node`'s members and its lease at once, a clean shutdown's leaves
    /// in `left`, pushed at once rather than after a lease.
    fn forget<'a>(
        &'a self,
        node: &'a str,
        channels: &'a [ChannelName],
    ) -> BoxFuture<'a, Result<Vec<Change>, BrokerError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_before_the_last_dot() {
        assert_eq!(node_of("n1.42"), "n1");
        assert_eq!(node_of("eu.west.7"), "eu.west");
        assert_eq!(node_of("bare"), "bare");
    }
}
