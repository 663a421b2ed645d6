//! What this node holds of presence: its members per channel, who of its
//! subscribers asked for `join` / `leave` pushes, and the per-channel
//! locks its changes take.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use duplex_protocol::channel::ChannelName;
use parking_lot::Mutex;

use super::locks::{ChannelGuard, ChannelLocks};
use crate::broker::presence::Member;
use crate::permissions::PresenceRule;

/// How long a node remembers the stamp of the last push it delivered for
/// a user: longer than any push can take between nodes (a publish ends
/// within `redis_timeout`, 5 s by default), so a push that crossed a newer
/// one is still recognized when it arrives.
const ORDER_WINDOW: Duration = Duration::from_secs(30);

/// What to do with a push that arrived for a channel.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Queue it to these connections (those that asked for pushes).
    To(HashSet<u64>),
    /// Nobody here asked for the channel's pushes.
    Nobody,
    /// A newer change of the same user was delivered first: drop it.
    Stale,
}

/// The stamps of the last pushes delivered per user, for [`ORDER_WINDOW`].
#[derive(Debug, Default)]
pub(super) struct Order {
    last: HashMap<String, (u64, Instant)>,
    pruned: Option<Instant>,
}

impl Order {
    /// Whether a push of `user` stamped `stamp` comes after those
    /// delivered (it is then recorded as the last).
    fn admit(&mut self, user: &str, stamp: u64, now: Instant) -> bool {
        if self
            .pruned
            .is_none_or(|at| now.duration_since(at) >= ORDER_WINDOW)
        {
            self.last
                .retain(|_, (_, at)| now.duration_since(*at) < ORDER_WINDOW);
            self.pruned = Some(now);
        }
        match self.last.get_mut(user) {
            Some((last, _)) if stamp < *last => false,
            Some(entry) => {
                *entry = (stamp, now);
                true
            }
            None => {
                self.last.insert(user.to_string(), (stamp, now));
                true
            }
        }
    }
}

/// This node's members, per presence channel.
#[derive(Debug, Default)]
pub(in crate::node) struct Locals {
    channels: Mutex<HashMap<ChannelName, Local>>,
    /// Whether `channels` has entries: every unsubscribe on the node asks,
    /// and on a node without presence it must not take the lock to learn no.
    pub(super) any: AtomicBool,
    /// Set by a clean shutdown's forget: no join, tick or rejoin after it.
    pub(super) forgotten: AtomicBool,
    locks: ChannelLocks,
}

/// One presence channel on this node.
#[derive(Debug)]
pub(super) struct Local {
    /// Members by connection number.
    pub(super) members: HashMap<u64, Member>,
    /// The namespace's settings when the channel got its first member.
    pub(super) rule: PresenceRule,
    /// Whether the node listens to the channel's pushes (it does from the
    /// first member that asked for them until the channel is idle here).
    pub(super) listening: bool,
    /// Members (connection numbers) that asked for the pushes.
    pub(super) listeners: HashSet<u64>,
    /// The pushes delivered lately, to drop one that crossed a newer one.
    pub(super) order: Order,
    /// Connections whose leave failed (or whose failed join may have
    /// landed): their leave is retried at each tick until it succeeds.
    pub(super) stale: HashSet<String>,
}

impl Local {
    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.stale.is_empty()
    }
}

impl Locals {
    /// Waits for the lock of `channel`'s presence changes.
    pub(super) async fn lock(&self, channel: &ChannelName) -> ChannelGuard<'_> {
        self.locks.lock(channel).await
    }

    /// Whether `channel` has members here, and whether the node listens
    /// to its pushes (creating its entry).
    pub(super) fn open(&self, channel: &ChannelName, rule: PresenceRule) -> (bool, bool) {
        let mut channels = self.channels.lock();
        self.any.store(true, Relaxed);
        let local = channels.entry(channel.clone()).or_insert_with(|| Local {
            members: HashMap::new(),
            rule,
            listening: false,
            listeners: HashSet::new(),
            order: Order::default(),
            stale: HashSet::new(),
        });
        (!local.members.is_empty(), local.listening)
    }

    pub(super) fn update(&self, channel: &ChannelName, f: impl FnOnce(&mut Local)) {
        if let Some(local) = self.channels.lock().get_mut(channel) {
            f(local);
        }
    }

    /// Drops the channel's entry once it holds nothing; whether the node
    /// was listening to its pushes (it stops).
    pub(super) fn close_if_idle(&self, channel: &ChannelName) -> bool {
        let mut channels = self.channels.lock();
        let listening = match channels.get(channel) {
            Some(local) if local.is_idle() => channels.remove(channel).is_some_and(|l| l.listening),
            _ => false,
        };
        self.any.store(!channels.is_empty(), Relaxed);
        listening
    }

    pub(super) fn members(&self, channel: &ChannelName) -> Vec<Member> {
        self.channels
            .lock()
            .get(channel)
            .map(|l| l.members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Where a push of `user` (`""`: the anonymous member `conn`) on
    /// `channel` goes: to the connections here that asked for pushes,
    /// unless a newer change of that user went to them first. A push
    /// without a stamp (`None`: a node that sends none) is not ordered.
    pub(super) fn admit(
        &self,
        channel: &str,
        (user, conn): (&str, &str),
        at: Option<u64>,
    ) -> Admit {
        let mut channels = self.channels.lock();
        let Some(local) = channels
            .get_mut(channel)
            .filter(|l| !l.listeners.is_empty())
        else {
            return Admit::Nobody;
        };
        let key = if user.is_empty() { conn } else { user };
        let anonymous = if user.is_empty() { "c" } else { "u" };
        let fresh = at.is_none_or(|stamp| {
            local
                .order
                .admit(&format!("{anonymous}{key}"), stamp, Instant::now())
        });
        if fresh {
            Admit::To(local.listeners.clone())
        } else {
            Admit::Stale
        }
    }

    pub(super) fn rule(&self, channel: &ChannelName) -> Option<PresenceRule> {
        self.channels.lock().get(channel).map(|l| l.rule)
    }

    /// Channels with members, grouped by lease length.
    pub(super) fn by_ttl(&self) -> HashMap<Duration, Vec<ChannelName>> {
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

    pub(super) fn stale(&self) -> Vec<(ChannelName, Vec<String>)> {
        self.channels
            .lock()
            .iter()
            .filter(|(_, l)| !l.stale.is_empty())
            .map(|(c, l)| (c.clone(), l.stale.iter().cloned().collect()))
            .collect()
    }

    /// Everything held, emptied for a clean shutdown: each channel and its rule.
    pub(super) fn drain(&self) -> Vec<(ChannelName, PresenceRule)> {
        let held = self
            .channels
            .lock()
            .drain()
            .map(|(channel, local)| (channel, local.rule))
            .collect();
        self.any.store(false, Relaxed);
        held
    }

    pub(super) fn is_forgotten(&self) -> bool {
        self.forgotten.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_older_than_one_delivered_for_its_user_is_stale() {
        let mut order = Order::default();
        let t0 = Instant::now();
        // Node B's join (stamp 20) arrives before node A's earlier leave (10).
        assert!(order.admit("uada", 20, t0));
        assert!(!order.admit("uada", 10, t0), "the crossed leave is dropped");
        // Other users, and the same change's stamp again, pass.
        assert!(order.admit("ubo", 10, t0));
        assert!(order.admit("uada", 20, t0));
        assert!(order.admit("uada", 30, t0));
        // After the window the user is forgotten: memory stays bounded.
        let later = t0 + ORDER_WINDOW;
        assert!(order.admit("ucy", 1, later));
        assert_eq!(order.last.len(), 1, "only the fresh entry is left");
    }
}
