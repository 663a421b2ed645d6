//! What this node holds of presence: its members per channel, who of its
//! subscribers asked for `join` / `leave` pushes, and the per-channel
//! locks its changes take.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use duplex_protocol::channel::ChannelName;
use parking_lot::Mutex;

use super::locks::{ChannelGuard, ChannelLocks};
use crate::broker::presence::Member;
use crate::permissions::PresenceRule;

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

    /// The connections here that asked for `channel`'s pushes.
    pub(super) fn listeners(&self, channel: &str) -> HashSet<u64> {
        self.channels
            .lock()
            .get(channel)
            .map(|l| l.listeners.clone())
            .unwrap_or_default()
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
