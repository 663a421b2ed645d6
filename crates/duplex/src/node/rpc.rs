//! Calls waiting for a backend's answer: client `rpc`s, and `send`s over
//! the HTTP upstream. Each gets a node-unique request id and an entry in one
//! table; the entry leaves on the reply, on the timeout (one sweeper task for
//! all of them, no timer per call) or when its connection ends. Replies for
//! an id no longer in the table (late, or made up) are dropped and counted.
//!
//! The table is shared capacity (`max_inflight_rpcs`), so besides the bound
//! per connection each client address and each user gets a fair share of
//! it: while N of them hold calls, one may hold at most
//! max(`max_pending_rpcs`, 90% of `max_inflight_rpcs` / N). One address or
//! user alone can take 90%; the rest stays free for the next one, whose
//! arrival shrinks everyone's share (a holder over its new share gets no
//! new call until its count falls under it).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use duplex_protocol::code::{ErrorCode, BACKEND_CODES};
use duplex_protocol::push::{self, Empty, RpcResult};
use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::{Inner, Node};
use crate::conn::Conn;
use crate::stats::Stats;

/// What the client's reply looks like when the answer comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `{"result":{"data":...}}`.
    Rpc,
    /// `{"result":{}}`: a `send` the HTTP upstream acknowledged.
    Send,
}

/// How a call ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The backend's answer.
    Data(Box<RawValue>),
    /// An error for the client: the backend's own or the node's.
    Error(ErrorCode, String),
}

impl Outcome {
    /// A backend's error: its code passes through when in [`BACKEND_CODES`];
    /// any other code is the backend's bug, reported to the client as 115.
    pub(crate) fn backend_error(code: i64, message: &str) -> Outcome {
        match u16::try_from(code) {
            Ok(code) if BACKEND_CODES.contains(&code) => {
                Outcome::Error(ErrorCode::Backend(code), message.to_string())
            }
            _ => Outcome::Error(
                ErrorCode::UpstreamFailed,
                format!(
                    "backend error code {code} is outside {}-{}: {message}",
                    BACKEND_CODES.start(),
                    BACKEND_CODES.end()
                ),
            ),
        }
    }
}

/// Why a call could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Full {
    /// `max_pending_rpcs` on this connection.
    #[error("this connection already has {0} calls waiting for replies (max_pending_rpcs)")]
    Connection(usize),
    /// `max_inflight_rpcs` on this node.
    #[error(
        "this node already has {0} calls waiting for replies (max_inflight_rpcs); retry later"
    )]
    Node(usize),
    /// The client's address holds its fair share (`rpc_fair_share_per_ip`).
    #[error("your address holds its share of this node's calls waiting for replies: {share} while {holders} addresses have calls waiting (rpc_fair_share_per_ip of max_inflight_rpcs); retry later")]
    Address {
        /// The address's share now.
        share: usize,
        /// Addresses holding calls, the caller's included.
        holders: usize,
    },
    /// The client's user holds its fair share (`rpc_fair_share_per_user`).
    #[error("your user holds its share of this node's calls waiting for replies: {share} while {holders} users have calls waiting (rpc_fair_share_per_user of max_inflight_rpcs); retry later")]
    User {
        /// The user's share now.
        share: usize,
        /// Users holding calls, the caller's included.
        holders: usize,
    },
}

/// The bounds on waiting calls, from the settings.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `max_pending_rpcs`: per connection, and the least fair share.
    per_conn: usize,
    /// `max_inflight_rpcs`.
    inflight: usize,
    /// `rpc_fair_share_per_ip`.
    per_ip: bool,
    /// `rpc_fair_share_per_user`.
    per_user: bool,
}

impl Limits {
    /// What one of `holders` addresses (or users) may hold: 90% of the
    /// node's capacity split evenly, never under one connection's bound.
    fn fair_share(&self, holders: usize) -> usize {
        let shared = self.inflight - self.inflight / 10;
        (shared / holders.max(1)).max(self.per_conn)
    }
}

/// Calls waiting per key (connection, address or user); a key with none is
/// not kept.
#[derive(Debug)]
struct Counts<K>(HashMap<K, usize>);

impl<K: Hash + Eq> Default for Counts<K> {
    fn default() -> Self {
        Counts(HashMap::new())
    }
}

impl<K: Hash + Eq> Counts<K> {
    fn get(&self, key: &K) -> usize {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Keys holding calls, counting `key` as one of them.
    fn holders_with(&self, key: &K) -> usize {
        self.0.len() + usize::from(!self.0.contains_key(key))
    }

    fn add(&mut self, key: K) {
        *self.0.entry(key).or_insert(0) += 1;
    }

    fn remove(&mut self, key: &K, n: usize) {
        if let Some(count) = self.0.get_mut(key) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.0.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One call waiting for its answer.
#[derive(Debug)]
struct Pending {
    conn: Weak<Conn>,
    conn_seq: u64,
    connection: Arc<str>,
    /// The client's command id, echoed in the reply.
    command: u64,
    answer: Answer,
    started: Instant,
    /// The client's address, for its fair share.
    ip: IpAddr,
    /// The client's user, for its fair share; None when anonymous (or when
    /// shares per user are off).
    user: Option<Arc<str>>,
}

/// The table, behind one lock; methods that need the lock live here.
#[derive(Debug)]
struct Table {
    /// By request id; ids grow with time and every call has the same
    /// timeout, so the first entries are the first to expire.
    pending: BTreeMap<u64, Pending>,
    per_conn: Counts<u64>,
    per_ip: Counts<IpAddr>,
    per_user: Counts<Arc<str>>,
    next: u64,
}

impl Table {
    fn new(next: u64) -> Table {
        Table {
            pending: BTreeMap::new(),
            per_conn: Counts::default(),
            per_ip: Counts::default(),
            per_user: Counts::default(),
            next,
        }
    }

    /// Adds a call, or says which bound it would pass (the node's first).
    fn insert(&mut self, pending: Pending, limits: Limits) -> Result<u64, Full> {
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

    fn take(&mut self, request: u64, connection: Option<&str>) -> Option<Pending> {
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
    fn release(&mut self, entry: &Pending) {
        self.per_conn.remove(&entry.conn_seq, 1);
        self.per_ip.remove(&entry.ip, 1);
        if let Some(user) = &entry.user {
            self.per_user.remove(user, 1);
        }
    }

    fn expired(&mut self, started_before: Instant) -> Vec<Pending> {
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

    fn forget(&mut self, conn_seq: u64) -> usize {
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

/// Every call of one node waiting for an answer.
#[derive(Debug)]
pub(crate) struct Rpcs {
    table: Mutex<Table>,
    /// Whether the sweeper runs: started with the first call, so a node
    /// that never sees one has no task for it.
    sweeping: std::sync::atomic::AtomicBool,
    limits: Limits,
    timeout: Duration,
}

impl Rpcs {
    /// An empty table; ids start at a random point so a restarted node with
    /// the same id does not take an old worker's late reply for a new call.
    pub(crate) fn new(config: &crate::config::Config) -> Rpcs {
        Rpcs {
            table: Mutex::new(Table::new(u64::from(rand::random::<u32>()) << 20)),
            sweeping: std::sync::atomic::AtomicBool::new(false),
            limits: Limits {
                per_conn: config.max_pending_rpcs,
                inflight: config.max_inflight_rpcs,
                per_ip: config.rpc_fair_share_per_ip,
                per_user: config.rpc_fair_share_per_user,
            },
            timeout: config.rpc_timeout,
        }
    }

    /// How often the sweeper looks for expired calls: a twentieth of the
    /// timeout, between 5 ms and 250 ms.
    fn tick(&self) -> Duration {
        (self.timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(250))
    }
}

/// Answers calls that outlived `rpc_timeout` with 113; runs while the node lives.
async fn sweep(node: Weak<Inner>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = node.upgrade() else { return };
        Node { inner }.expire_calls();
    }
}

impl Node {
    /// Registers a call from `conn` (command id `command`) and returns its
    /// request id, or refuses it when a bound is reached (counted, logged).
    pub(crate) fn begin_call(
        &self,
        conn: &Arc<Conn>,
        command: u64,
        answer: Answer,
    ) -> Result<u64, Full> {
        let rpcs = &self.inner.rpcs;
        let pending = Pending {
            conn: Arc::downgrade(conn),
            conn_seq: conn.seq,
            connection: Arc::clone(&conn.id),
            command,
            answer,
            started: Instant::now(),
            ip: conn.remote.ip(),
            user: conn
                .user()
                .filter(|u| rpcs.limits.per_user && !u.is_empty())
                .map(Arc::from),
        };
        let begun = rpcs.table.lock().insert(pending, rpcs.limits);
        match &begun {
            Ok(_) => {
                if !rpcs.sweeping.swap(true, Relaxed) {
                    tokio::spawn(sweep(Arc::downgrade(&self.inner), rpcs.tick()));
                }
                self.inner.stats.rpc_pending.fetch_add(1, Relaxed);
                if answer == Answer::Rpc {
                    Stats::bump(&self.inner.stats.rpc_requests);
                }
            }
            Err(full) => {
                Stats::bump(&self.inner.stats.rpc_refused);
                tracing::debug!(conn = %conn.id, addr = %conn.remote, %full, "call refused");
            }
        }
        begun
    }

    /// Withdraws a call that could not be handed to the backends; false when
    /// it had already been answered (timed out), so no second reply is due.
    pub(crate) fn abandon_call(&self, request: u64) -> bool {
        let taken = self.inner.rpcs.table.lock().take(request, None);
        if taken.is_some() {
            self.inner.stats.rpc_pending.fetch_sub(1, Relaxed);
        }
        taken.is_some()
    }

    /// Answers a call with its outcome; a reply for a call that is no longer
    /// waiting (timed out, connection gone, never existed) is dropped and
    /// counted in `rpc_late_replies`.
    pub(crate) fn finish_call(&self, request: &str, connection: &str, outcome: Outcome) {
        let taken = request
            .parse::<u64>()
            .ok()
            .and_then(|r| self.inner.rpcs.table.lock().take(r, Some(connection)));
        let Some(call) = taken else {
            Stats::bump(&self.inner.stats.rpc_late_replies);
            tracing::debug!(
                request,
                connection,
                "reply for no waiting call dropped (late or unknown)"
            );
            return;
        };
        let stats = &self.inner.stats;
        stats.rpc_pending.fetch_sub(1, Relaxed);
        match (call.answer, &outcome) {
            // The HTTP upstream's own timeout, a hair before the sweeper's.
            (Answer::Rpc, Outcome::Error(ErrorCode::RpcTimeout, _)) => {
                Stats::bump(&stats.rpc_timeouts)
            }
            (Answer::Rpc, _) => {
                Stats::bump(&stats.rpc_replies);
                stats
                    .rpc_seconds
                    .0
                    .observe(call.started.elapsed().as_secs_f64());
            }
            (Answer::Send, Outcome::Data(_)) => Stats::bump(&stats.upstream_messages),
            (Answer::Send, Outcome::Error(..)) => Stats::bump(&stats.upstream_failures),
        }
        if let Outcome::Error(code, message) = &outcome {
            tracing::debug!(
                request,
                connection,
                code = code.as_u32(),
                message,
                "call answered with an error"
            );
        }
        self.answer(&call, &outcome);
    }

    /// Queues the client's reply frame for a call.
    fn answer(&self, call: &Pending, outcome: &Outcome) {
        let Some(conn) = call.conn.upgrade() else {
            return;
        };
        let frame: Bytes = match (outcome, call.answer) {
            (Outcome::Data(data), Answer::Rpc) => push::reply(call.command, &RpcResult { data }),
            (Outcome::Data(_), Answer::Send) => push::reply(call.command, &Empty {}),
            (Outcome::Error(code, message), _) => {
                push::error_reply(Some(call.command), *code, message)
            }
        };
        self.send_to(&conn, frame, "rpc reply");
    }

    /// Answers every call past `rpc_timeout` with 113.
    fn expire_calls(&self) {
        let timeout = self.inner.rpcs.timeout;
        let Some(before) = Instant::now().checked_sub(timeout) else {
            return;
        };
        let expired = self.inner.rpcs.table.lock().expired(before);
        if expired.is_empty() {
            return;
        }
        let stats = &self.inner.stats;
        stats.rpc_pending.fetch_sub(expired.len() as u64, Relaxed);
        stats.rpc_timeouts.fetch_add(expired.len() as u64, Relaxed);
        tracing::debug!(
            calls = expired.len(),
            "calls timed out without a reply (rpc_timeout)"
        );
        let outcome = Outcome::Error(
            ErrorCode::RpcTimeout,
            format!("no reply from the backends within {timeout:?}"),
        );
        for call in &expired {
            self.answer(call, &outcome);
        }
    }

    /// Drops the calls of a connection that ended (their replies will be late).
    pub(super) fn forget_calls(&self, conn_seq: u64) {
        let forgotten = self.inner.rpcs.table.lock().forget(conn_seq);
        if forgotten > 0 {
            self.inner
                .stats
                .rpc_pending
                .fetch_sub(forgotten as u64, Relaxed);
            self.inner
                .stats
                .rpc_abandoned
                .fetch_add(forgotten as u64, Relaxed);
        }
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

    #[test]
    fn backend_codes_pass_through_only_in_range() {
        assert!(matches!(
            Outcome::backend_error(4040, "no"),
            Outcome::Error(ErrorCode::Backend(4040), _)
        ));
        for bad in [999, 10_000, -1, 70_000] {
            assert!(matches!(
                Outcome::backend_error(bad, "no"),
                Outcome::Error(ErrorCode::UpstreamFailed, _)
            ));
        }
    }
}
