//! Admission limits that span connections: connections per user,
//! handshakes per second per client address, and subscriptions per client
//! address. (Connections per node and per address are counted in `node`,
//! next to the registry; calls waiting per address and per user in
//! `node::rpc`.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::rate::{RateLimit, Verdict};

/// Connections per user id, so one account cannot hold unbounded sockets.
#[derive(Debug, Default)]
pub(crate) struct UserLimit {
    max: usize,
    counts: Mutex<HashMap<Arc<str>, usize>>,
}

/// One counted connection of a user; released when dropped (with its session).
#[derive(Debug)]
pub(crate) struct UserSlot {
    limit: Arc<UserLimit>,
    user: Arc<str>,
}

impl UserLimit {
    /// `max == 0` disables the limit.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(UserLimit {
            max,
            counts: Mutex::default(),
        })
    }

    /// Counts a connection of `user`; `Ok(None)` when nothing is counted
    /// (no limit, or anonymous), `Err(max)` when the user is at the limit.
    pub(crate) fn claim(self: &Arc<Self>, user: &str) -> Result<Option<UserSlot>, usize> {
        if self.max == 0 || user.is_empty() {
            return Ok(None);
        }
        let mut counts = self.counts.lock();
        let user: Arc<str> = Arc::from(user);
        let count = counts.entry(Arc::clone(&user)).or_insert(0);
        if *count >= self.max {
            return Err(self.max);
        }
        *count += 1;
        Ok(Some(UserSlot {
            limit: Arc::clone(self),
            user,
        }))
    }

    #[cfg(test)]
    fn count(&self, user: &str) -> usize {
        self.counts.lock().get(user).copied().unwrap_or(0)
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.limit.counts.lock();
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// Most addresses tracked before idle buckets are swept out.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Handshakes per second per client address (a token bucket each).
#[derive(Debug)]
pub(crate) struct HandshakeLimit {
    rate: u32,
    buckets: Mutex<HashMap<IpAddr, RateLimit>>,
}

impl HandshakeLimit {
    /// `rate == 0` disables the limit.
    pub(crate) fn new(rate: u32) -> Self {
        HandshakeLimit {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Whether a new handshake from `ip` is within its rate.
    pub(crate) fn allow(&self, ip: IpAddr) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_TRACKED_ADDRESSES && !buckets.contains_key(&ip) {
            // Bounded memory under a spread-out flood: forget full (idle) buckets.
            buckets.retain(|_, bucket| !bucket.is_full());
            if buckets.len() >= MAX_TRACKED_ADDRESSES {
                return false;
            }
        }
        let bucket = buckets
            .entry(ip)
            .or_insert_with(|| RateLimit::new(self.rate));
        bucket.check() == Verdict::Allow
    }
}

/// Subscriptions held by all connections of one client address
/// (`max_subscriptions_per_ip`), so one address cannot make the node hold
/// unbounded subscription memory (docs/PROTOCOL.md section 6 gives the
/// measured cost of one).
#[derive(Debug, Default)]
pub(crate) struct SubscriptionLimit {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// What one connection holds of its address's subscriptions; kept equal to
/// the number of channels it holds, and given back when dropped (with its
/// session).
#[derive(Debug)]
pub(crate) struct AddressSubscriptions {
    limit: Arc<SubscriptionLimit>,
    ip: IpAddr,
    held: usize,
}

/// Over `max_subscriptions_per_ip`: what the address holds and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subscription limit: your address already holds {held} subscriptions, at most {max} (max_subscriptions_per_ip)")]
pub(crate) struct AddressFull {
    /// Subscriptions the address holds now.
    pub(crate) held: usize,
    /// The limit.
    pub(crate) max: usize,
}

impl SubscriptionLimit {
    /// `max == 0` disables the limit (nothing is counted).
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(SubscriptionLimit {
            max,
            counts: Mutex::default(),
        })
    }

    /// An empty share for a connection from `ip`.
    pub(crate) fn share(self: &Arc<Self>, ip: IpAddr) -> AddressSubscriptions {
        AddressSubscriptions {
            limit: Arc::clone(self),
            ip,
            held: 0,
        }
    }

    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        self.counts.lock().get(&ip).copied().unwrap_or(0)
    }
}

impl AddressSubscriptions {
    /// Counts `more` subscriptions against the address: all of them, or
    /// none when that would pass the limit.
    pub(crate) fn reserve(&mut self, more: usize) -> Result<(), AddressFull> {
        let limit = &self.limit;
        if limit.max == 0 || more == 0 {
            return Ok(());
        }
        let mut counts = limit.counts.lock();
        let count = counts.entry(self.ip).or_insert(0);
        if count.saturating_add(more) > limit.max {
            let held = *count;
            if held == 0 {
                counts.remove(&self.ip);
            }
            return Err(AddressFull {
                held,
                max: limit.max,
            });
        }
        *count += more;
        self.held += more;
        Ok(())
    }

    /// Gives back what this connection no longer holds: its count becomes
    /// `held` (never more than it reserved).
    pub(crate) fn release_to(&mut self, held: usize) {
        if held >= self.held {
            return;
        }
        let freed = self.held - held;
        self.held = held;
        if self.limit.max == 0 {
            return;
        }
        let mut counts = self.limit.counts.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(freed);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Drop for AddressSubscriptions {
    fn drop(&mut self) {
        self.release_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_slots_count_and_release() {
        let limit = UserLimit::new(2);
        let a = limit.claim("ann").unwrap();
        let b = limit.claim("ann").unwrap();
        assert!(a.is_some() && b.is_some());
        assert_eq!(limit.claim("ann").unwrap_err(), 2);
        assert!(limit.claim("bob").unwrap().is_some(), "per user");
        assert!(
            limit.claim("").unwrap().is_none(),
            "anonymous is not counted"
        );
        drop(a);
        assert_eq!(limit.count("ann"), 1);
        let _c = limit.claim("ann").unwrap();
        drop(b);
        assert!(UserLimit::new(0).claim("ann").unwrap().is_none());
    }

    #[test]
    fn handshakes_are_rate_limited_per_address() {
        let limit = HandshakeLimit::new(3);
        let one: IpAddr = [10, 0, 0, 1].into();
        let two: IpAddr = [10, 0, 0, 2].into();
        assert!((0..3).all(|_| limit.allow(one)));
        assert!(!limit.allow(one));
        assert!(limit.allow(two));
        assert!((0..100).all(|_| HandshakeLimit::new(0).allow(one)));
    }

    #[test]
    fn address_subscriptions_are_all_or_nothing_and_given_back() {
        let limit = SubscriptionLimit::new(5);
        let one: IpAddr = [10, 0, 0, 1].into();
        let two: IpAddr = [10, 0, 0, 2].into();
        let mut a = limit.share(one);
        let mut b = limit.share(one);
        a.reserve(3).unwrap();
        assert_eq!(b.reserve(3), Err(AddressFull { held: 3, max: 5 }));
        assert_eq!(limit.count(one), 3, "nothing half-applied");
        b.reserve(2).unwrap();
        let mut other = limit.share(two);
        other.reserve(5).unwrap();
        a.release_to(1);
        assert_eq!(limit.count(one), 3);
        drop(b);
        assert_eq!(limit.count(one), 1);
        drop(a);
        drop(other);
        assert!(limit.counts.lock().is_empty(), "no entry left behind");
        let off = SubscriptionLimit::new(0);
        let mut share = off.share(one);
        share.reserve(usize::MAX).unwrap();
        assert!(off.counts.lock().is_empty(), "off: nothing counted");
    }
}
