//! The table of calls waiting for an answer and what they count against:
//! per connection, per node, and the fair shares per address and per user
//! (see `node::rpc`). Pure bookkeeping under the caller's lock.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Instant;

use super::call::{Answer, Full};
use crate::conn::Conn;

/// The bounds on waiting calls, from the settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `max_pending_rpcs`: per connection, and the least fair share.
    pub(crate) per_conn: usize,
    /// `max_inflight_rpcs`.
    pub(crate) inflight: usize,
    /// `rpc_fair_share_per_ip`.
    pub(crate) per_ip: bool,
    /// `rpc_fair_share_per_user`.
    pub(crate) per_user: bool,
}

impl Limits {
    /// What one of `holders` addresses (or users) may hold: 90% of the
    /// node's capacity split evenly, never under one connection's bound.
    pub(crate) fn fair_share(&self, holders: usize) -> usize {
        let shared = self.inflight - self.inflight / 10;
        (shared / holders.max(1)).max(self.per_conn)
    }
}

/// Calls waiting per key (connection, address or user); a key with none is
/// not kept.
#[derive(Debug)]
pub(crate) struct Counts<K>(HashMap<K, usize>);

impl<K: Hash + Eq> Default for Counts<K> {
    fn default() -> Self {
        Counts(HashMap::new())
    }
}

impl<K: Hash + Eq> Counts<K> {
    pub(crate) fn get(&self, key: &K) -> usize {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Keys holding calls, counting `key` as one of them.
    pub(crate) fn holders_with(&self, key: &K) -> usize {
        self.0.len() + usize::from(!self.0.contains_key(key))
    }

    pub(crate) fn add(&mut self, key: K) {
        *self.0.entry(key).or_insert(0) += 1;
    }

    pub(crate) fn remove(&mut self, key: &K, n: usize) {
        if let Some(count) = self.0.get_mut(key) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.0.remove(key);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One call waiting for its answer.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) conn: Weak<Conn>,
    pub(crate) conn_seq: u64,
    pub(crate) connection: Arc<str>,
    /// The client's command id, echoed in the reply.
    pub(crate) command: u64,
    pub(crate) answer: Answer,
    pub(crate) started: Instant,
    /// The client's address, for its fair share.
    pub(crate) ip: IpAddr,
    /// The client's user, for its fair share; None when anonymous (or when
    /// shares per user are off).
    pub(crate) user: Option<Arc<str>>,
}

/// The table, behind one lock; methods that need the lock live here.
#[derive(Debug)]
pub(crate) struct Table {
    /// By request id; ids grow with time and every call has the same
    /// timeout, so the first entries are the first to expire.
    pending: BTreeMap<u64, Pending>,
    per_conn: Counts<u64>,
    per_ip: Counts<IpAddr>,
    per_user: Counts<Arc<str>>,
    next: u64,
}

impl Table {
    pub(crate) fn new(next: u64) -> Table {
        Table {
            pending: BTreeMap::new(),
            per_conn: Counts::default(),
            per_ip: Counts::default(),
            per_user: Counts::default(),
            next,
        }
    }

    /// Adds a call, or says which bound it would pass (the node's first).
    pub(crate) fn insert(&mut self, pending: Pending, limits: Limits) -> Result<u64, Full> {
        if self.pending.len() >= limits.inflight {
            return Err(Full::Node(limits.inflight));
        }
        if self.per_conn.get(&pending.conn_seq) >= limits.per_conn {
            return Err(Full::Connection(limits.per_conn));
        }
        if limits.per_ip {
            let holders = self.per_ip.holders_with(&pending.ip);
            let share = limits.fair_share(holders);
            if self.per_ip.get(&pending.ip) >= share {
                return Err(Full::Address { share, holders });
            }
        }
        if let Some(user) = pending.user.as_ref().filter(|_| limits.per_user) {
            let holders = self.per_user.holders_with(user);
            let share = limits.fair_share(holders);
            if self.per_user.get(user) >= share {
                return Err(Full::User { share, holders });
            }
        }
        self.per_conn.add(pending.conn_seq);
        if limits.per_ip {
            self.per_ip.add(pending.ip);
        }
        if let Some(user) = pending.user.clone().filter(|_| limits.per_user) {
            self.per_user.add(user);
        }
        self.next += 1;
        self.pending.insert(self.next, pending);
        Ok(self.next)
    }

    pub(crate) fn take(&mut self, request: u64, connection: Option<&str>) -> Option<Pending> {
        let entry = self.pending.get(&request)?;
        if connection.is_some_and(|c| c != &*entry.connection) {
            return None;
        }
        let entry = self.pending.remove(&request)?;
        self.release(&entry);
        Some(entry)
    }

    /// Uncounts a call that left the table (keys it was not counted
    /// under are absent, so removing from them does nothing).
    pub(crate) fn release(&mut self, entry: &Pending) {
        self.per_conn.remove(&entry.conn_seq, 1);
        self.per_ip.remove(&entry.ip, 1);
        if let Some(user) = &entry.user {
            self.per_user.remove(user, 1);
        }
    }

    pub(crate) fn expired(&mut self, started_before: Instant) -> Vec<Pending> {
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().started > started_before {
                break;
            }
            let entry = entry.remove();
            self.release(&entry);
            out.push(entry);
        }
        out
    }

    pub(crate) fn forget(&mut self, conn_seq: u64) -> usize {
        if self.per_conn.get(&conn_seq) == 0 {
            return 0;
        }
        let requests: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.conn_seq == conn_seq)
            .map(|(request, _)| *request)
            .collect();
        for request in &requests {
            if let Some(entry) = self.pending.remove(request) {
                self.release(&entry);
            }
        }
        requests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(conn_seq: u64) -> Pending {
        from(conn_seq, [10, 0, 0, conn_seq as u8], None)
    }

    fn from(conn_seq: u64, ip: [u8; 4], user: Option<&str>) -> Pending {
        Pending {
            conn: Weak::new(),
            conn_seq,
            connection: Arc::from(format!("n.{conn_seq}")),
            command: 1,
            answer: Answer::Rpc,
            started: Instant::now(),
            ip: ip.into(),
            user: user.map(Arc::from),
        }
    }

    fn limits(per_conn: usize, inflight: usize) -> Limits {
        Limits {
            per_conn,
            inflight,
            per_ip: true,
            per_user: true,
        }
    }

    #[test]
    fn bounds_and_bookkeeping_return_to_zero() {
        let mut t = Table::new(0);
        let l = limits(2, 3);
        let a = t.insert(pending(1), l).unwrap();
        let b = t.insert(pending(1), l).unwrap();
        assert_eq!(t.insert(pending(1), l), Err(Full::Connection(2)));
        let c = t.insert(pending(2), l).unwrap();
        assert_eq!(t.insert(pending(3), l), Err(Full::Node(3)));
        assert!(a < b && b < c);
        // A reply naming another connection does not take the call.
        assert!(t.take(a, Some("n.2")).is_none());
        assert!(t.take(a, Some("n.1")).is_some());
        assert!(t.take(a, Some("n.1")).is_none(), "answered once");
        assert_eq!(t.forget(1), 1);
        assert_eq!(t.expired(Instant::now()).len(), 1);
        assert!(t.pending.is_empty() && t.per_conn.is_empty());
        assert!(t.per_ip.is_empty() && t.per_user.is_empty());
    }

    #[test]
    fn one_address_or_user_gets_a_fair_share_and_leaves_room() {
        // 100 calls on the node, 2 per connection: alone, an address may
        // hold 90; with a second address holding calls, 45 each.
        let l = limits(2, 100);
        let mut t = Table::new(0);
        let mut seq = 0;
        let mut call = |t: &mut Table, ip: [u8; 4], user: Option<&str>| {
            seq += 1;
            t.insert(from(seq / 2, ip, user), l)
        };
        let flooder = [10, 0, 0, 1];
        let taken = (0..100)
            .map(|_| call(&mut t, flooder, None))
            .filter(Result::is_ok)
            .count();
        assert_eq!(taken, 90);
        assert_eq!(
            call(&mut t, flooder, None),
            Err(Full::Address {
                share: 90,
                holders: 1
            })
        );
        // Another address gets in; now the flooder's share is 45, and it
        // gets nothing more until it holds fewer.
        assert!(call(&mut t, [10, 0, 0, 2], None).is_ok());
        assert_eq!(
            call(&mut t, flooder, None),
            Err(Full::Address {
                share: 45,
                holders: 2
            })
        );
        // Per user, across addresses.
        let mut t = Table::new(0);
        let taken = (0..100u8)
            .map(|i| call(&mut t, [10, 1, 0, i], Some("mallory")))
            .filter(Result::is_ok)
            .count();
        assert_eq!(taken, 90);
        assert!(call(&mut t, [10, 2, 0, 1], Some("bob")).is_ok());
        assert!(call(&mut t, [10, 2, 0, 2], None).is_ok(), "anonymous");
        // Never under one connection's bound, however many holders.
        assert_eq!(l.fair_share(1000), 2);
        // Off: only the node and connection bounds.
        let off = Limits {
            per_ip: false,
            per_user: false,
            ..l
        };
        let mut t = Table::new(0);
        let taken = (0..100)
            .map(|i| t.insert(from(i, flooder, Some("mallory")), off))
            .filter(Result::is_ok)
            .count();
        assert_eq!(taken, 100);
    }
}
