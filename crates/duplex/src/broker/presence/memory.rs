//! Presence on the memory broker: the same rules as Redis, in one process.
//!
//! A memory broker is one node, but presence keeps the general model so
//! the same cases pass: a member's lease holder is the node of its
//! connection id, leases expire unless ticked, and every change sweeps
//! other holders' expired leases first. A channel's state goes with its
//! last member, or [`KEEP_LEASES`] leases after its last join or tick.
//! Channels are spread over shards, each a short synchronous lock (no
//! await while held).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_protocol::channel::ChannelName;
use futures_util::future::{self, BoxFuture, FutureExt};
use parking_lot::Mutex;

use super::{check_ttl, node_of, Change, Member, Presence, PresenceStats, KEEP_LEASES};
use crate::broker::memory::MemoryBroker;
use crate::broker::BrokerError;

/// Shards of the channel table.
const SHARDS: usize = 16;
/// Longest lease honoured (a century): `Instant` arithmetic cannot overflow.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Every presence channel of one memory broker.
#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<HashMap<ChannelName, Room>>]>,
    /// The last [`Change::stamp`] given (one counter for every channel).
    stamps: AtomicU64,
}

impl Default for Store {
    fn default() -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::default()).collect();
        Store {
            shards,
            stamps: AtomicU64::new(0),
        }
    }
}

/// A user as counted: `u<user>`, or `c<conn>` for an anonymous member.
fn user_key(member: &Member) -> String {
    if member.is_anonymous() {
        format!("c{}", member.conn)
    } else {
        format!("u{}", member.user)
    }
}

/// One channel's members, users and leases.
#[derive(Debug)]
struct Room {
    /// Connection id -> its lease holder and the member.
    members: HashMap<String, (Arc<str>, Member)>,
    /// User key -> its member connections.
    users: HashMap<String, u32>,
    /// Lease holder (a node) -> when its lease expires.
    leases: HashMap<Arc<str>, Instant>,
    /// When the whole room goes unless a join or tick comes first.
    until: Instant,
}

impl Room {
    fn new(now: Instant) -> Self {
        Room {
            members: HashMap::new(),
            users: HashMap::new(),
            leases: HashMap::new(),
            until: now,
        }
    }

    fn live(&self, holder: &str, now: Instant) -> bool {
        self.leases.get(holder).is_some_and(|until| *until > now)
    }

    /// Takes `member` out of its user's count; whether that was the user's last.
    fn drop_user(&mut self, member: &Member) -> bool {
        let key = user_key(member);
        match self.users.get_mut(&key) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                self.users.remove(&key);
                true
            }
        }
    }

    /// Removes the members of other holders' expired leases, and those
    /// leases; their users who thereby left go to `change.left`.
    fn sweep(&mut self, now: Instant, mine: &HashSet<&str>, change: &mut Change) {
        let dead: HashSet<Arc<str>> = self
            .leases
            .iter()
            .filter(|(holder, until)| **until <= now && !mine.contains(&***holder))
            .map(|(holder, _)| Arc::clone(holder))
            .collect();
        if dead.is_empty() {
            return;
        }
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, (holder, _))| dead.contains(holder))
            .map(|(conn, _)| conn.clone())
            .collect();
        for conn in gone {
            self.remove(&conn, change);
        }
        self.leases.retain(|holder, _| !dead.contains(holder));
    }

    /// Removes one member; its user goes to `change.left` if it was their last.
    fn remove(&mut self, conn: &str, change: &mut Change) {
        if let Some((_, member)) = self.members.remove(conn) {
            if self.drop_user(&member) {
                change.left.push(member);
            }
        }
    }

    /// Adds (or updates) one member under `holder`.
    fn add(&mut self, holder: Arc<str>, member: &Member, change: &mut Change) {
        let key = user_key(member);
        if let Some((_, old)) = self.members.get(&member.conn) {
            if user_key(old) == key {
                self.members
                    .insert(member.conn.clone(), (holder, member.clone()));
                return;
            }
            let conn = member.conn.clone();
            self.remove(&conn, change);
        }
        self.members
            .insert(member.conn.clone(), (holder, member.clone()));
        let count = self.users.entry(key).or_insert(0);
        *count += 1;
        if *count == 1 {
            change.joined.push(member.clone());
        }
    }

    fn stats(&self, now: Instant) -> PresenceStats {
        let mut users = HashSet::new();
        let mut connections = 0;
        for (holder, member) in self.members.values() {
            if self.live(holder, now) {
                connections += 1;
                users.insert(user_key(member));
            }
        }
        PresenceStats {
            connections,
            users: users.len() as u64,
        }
    }
}

impl Store {
    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, Room>> {
        let mut hasher = DefaultHasher::new();
        channel.as_str().hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % self.shards.len()]
    }

    /// Runs `f` on the channel's room (a fresh one when it had none or it
    /// was abandoned); the room goes when `f` leaves it with no member. A
    /// change that joined or left anyone gets the next stamp.
    fn with_room(
        &self,
        channel: &ChannelName,
        f: impl FnOnce(&mut Room, Instant) -> Change,
    ) -> Change {
        let now = Instant::now();
        let mut rooms = self.shard(channel).lock();
        if rooms.get(channel).is_some_and(|room| room.until <= now) {
            rooms.remove(channel);
        }
        let room = rooms
            .entry(channel.clone())
            .or_insert_with(|| Room::new(now));
        let mut change = f(room, now);
        if room.members.is_empty() {
            rooms.remove(channel);
        }
        // Stamped under the channel's lock: its changes' stamps increase.
        if !change.joined.is_empty() || !change.left.is_empty() {
            change.stamp = self.stamps.fetch_add(1, Ordering::Relaxed) + 1;
        }
        change
    }

    /// Reads the channel's room, if it has a live one.
    fn read<T>(&self, channel: &ChannelName, f: impl FnOnce(&Room, Instant) -> T) -> Option<T> {
        let now = Instant::now();
        let rooms = self.shard(channel).lock();
        let room = rooms.get(channel).filter(|room| room.until > now)?;
        Some(f(room, now))
    }

    fn rejoin(&self, channel: &ChannelName, members: &[Member], lease_ttl: Duration) -> Change {
        let ttl = lease_ttl.min(FOREVER);
        let holders: HashSet<&str> = members.iter().map(Member::node).collect();
        self.with_room(channel, |room, now| {
            let mut change = Change {
                lease_lost: holders.iter().any(|h| !room.leases.contains_key(*h)),
                ..Change::default()
            };
            room.sweep(now, &holders, &mut change);
            for holder in &holders {
                room.leases.insert(Arc::from(*holder), now + ttl);
            }
            for member in members {
                room.add(Arc::from(member.node()), member, &mut change);
            }
            room.until = now + ttl.saturating_mul(KEEP_LEASES);
            change
        })
    }

    fn leave(&self, channel: &ChannelName, conn: &str) -> Change {
        let holder = node_of(conn);
        self.with_room(channel, |room, now| {
            let mut change = Change {
                lease_lost: !room.leases.contains_key(holder),
                ..Change::default()
            };
            room.sweep(now, &HashSet::from([holder]), &mut change);
            room.remove(conn, &mut change);
            change
        })
    }

    fn tick(&self, node: &str, channel: &ChannelName, lease_ttl: Duration) -> Change {
        let ttl = lease_ttl.min(FOREVER);
        self.with_room(channel, |room, now| {
            let mut change = Change::default();
            room.sweep(now, &HashSet::from([node]), &mut change);
            match room.leases.get_mut(node) {
                Some(until) => {
                    *until = now + ttl;
                    room.until = now + ttl.saturating_mul(KEEP_LEASES);
                }
                None => change.lease_lost = true,
            }
            change
        })
    }

    fn forget(&self, node: &str, channel: &ChannelName) -> Change {
        self.with_room(channel, |room, now| {
            let mut change = Change::default();
            room.sweep(now, &HashSet::from([node]), &mut change);
            let mine: Vec<String> = room
                .members
                .iter()
                .filter(|(_, (holder, _))| &**holder == node)
                .map(|(conn, _)| conn.clone())
                .collect();
            for conn in mine {
                room.remove(&conn, &mut change);
            }
            room.leases.remove(node);
            change
        })
    }
}

impl Presence for MemoryBroker {
    fn rejoin<'a>(
        &'a self,
        channel: &'a ChannelName,
        members: &'a [Member],
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Change, BrokerError>> {
        let answer =
            check_ttl(lease_ttl).map(|()| self.presence.rejoin(channel, members, lease_ttl));
        future::ready(answer).boxed()
    }

    fn leave<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
    ) -> BoxFuture<'a, Result<Change, BrokerError>> {
        future::ready(Ok(self.presence.leave(channel, conn))).boxed()
    }

    fn members<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        let members = self.presence.read(channel, |room, now| {
            let live = room.members.values().filter(|(h, _)| room.live(h, now));
            live.map(|(_, member)| member.clone()).collect()
        });
        future::ready(Ok(members.unwrap_or_default())).boxed()
    }

    fn stats<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        let stats = self.presence.read(channel, Room::stats);
        future::ready(Ok(stats.unwrap_or_default())).boxed()
    }

    fn tick<'a>(
        &'a self,
        node: &'a str,
        channels: &'a [ChannelName],
        lease_ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<Change>, BrokerError>> {
        let answer = check_ttl(lease_ttl).map(|()| {
            let tick = |channel| self.presence.tick(node, channel, lease_ttl);
            channels.iter().map(tick).collect()
        });
        future::ready(answer).boxed()
    }

    fn forget<'a>(
        &'a self,
        node: &'a str,
        channels: &'a [ChannelName],
    ) -> BoxFuture<'a, Result<Vec<Change>, BrokerError>> {
        let forget = |channel| self.presence.forget(node, channel);
        future::ready(Ok(channels.iter().map(forget).collect())).boxed()
    }
}
