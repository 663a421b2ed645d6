//! Admission limits that span connections: connections per user and
//! handshakes per second per client address. (Connections per node and per
//! address are counted in `node`, next to the registry.)

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
}
