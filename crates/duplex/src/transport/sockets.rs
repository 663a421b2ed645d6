//! Socket accounting: every accepted TCP connection is counted from accept
//! until its socket is closed, so that HTTP connections cannot escape the
//! limits WebSocket connections have, and `accept()` never runs out of file
//! descriptors.
//!
//! - A connection is *HTTP* from accept until it is upgraded to WebSocket
//!   (then `max_connections` and the per-address limits in `node` govern
//!   it) or closed. At most `max_http_connections` are HTTP at once.
//! - Every open socket, HTTP or WebSocket, takes a file descriptor. At most
//!   (fd limit − [`FD_RESERVE`]) are open at once, so the node's own
//!   descriptors (listener, Redis, upstream HTTP, logs) always have room.
//! - When either is full, a newcomer closes the oldest HTTP connection of
//!   the address that holds the most of them (its own address when it holds
//!   as many as any): an address flooding the node with slow connections
//!   only ever pushes out its own, while anyone else still gets in. Behind
//!   a reverse proxy, where every connection has the proxy's address, the
//!   oldest (the slowest) connections go first and fresh requests are
//!   served. There is no per-address quota to tune, and one address may use
//!   the whole cap while nobody else needs it.
//! - An evicted connection's task closes its socket a moment later; until
//!   then the socket still holds its descriptor and eats into the reserve.
//!   Once half the reserve is used that way, the accept loop waits
//!   ([`Sockets::room`]) and newcomers wait in the kernel's listen backlog,
//!   which costs no descriptor.
//! - Only when nothing can be evicted (every descriptor held by WebSocket
//!   connections), or evicted sockets stay open for long, a newcomer is
//!   answered 503 and closed at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::conn::Signal;
use crate::stats::Stats;
use crate::throttle::Throttle;

/// File descriptors kept free of client sockets for the node's own use:
/// the listener, the runtime's epoll and wakers, stdio and log files, Redis
/// connections, JWKS fetches. An HTTP upstream adds its own pool
/// (`upstream_concurrency`) to it. New connections are closed at accept
/// once open sockets reach half of the reserve above (fd limit − reserve).
pub(crate) const FD_RESERVE: u64 = 128;

/// Where a connection is in its life (changed only under the table lock).
const HTTP: u8 = 0;
const UPGRADED: u8 = 1;

/// The node's socket table and its limits.
#[derive(Debug)]
pub(crate) struct Sockets {
    stats: Arc<Stats>,
    /// Most HTTP connections; 0 = none but the fd budget.
    http_cap: usize,
    /// Most open sockets before newcomers evict (fd limit − reserve).
    budget: usize,
    /// Most open sockets at all: evicted sockets not closed yet push past
    /// `budget`; beyond this, newcomers are closed at once.
    brake: usize,
    table: Mutex<Table>,
    /// Woken when a socket closes while the table is at the brake.
    freed: Notify,
    evict_log: Throttle,
    refuse_log: Throttle,
}

#[derive(Debug, Default)]
struct Table {
    /// Every socket accepted and not dropped yet (HTTP, upgraded, evicted).
    open: usize,
    /// Of those, HTTP and not evicted.
    http: usize,
    next_id: u64,
    /// HTTP connections per address, oldest first, with their eviction signals.
    per_ip: HashMap<IpAddr, BTreeMap<u64, Arc<Signal>>>,
    /// `(HTTP connections, address)` for every address in `per_ip`: the
    /// busiest address is the last entry.
    by_count: BTreeSet<(usize, IpAddr)>,
}

/// Why a newcomer was let in: what it cost whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Eviction {
    /// The address whose oldest HTTP connection was closed.
    pub(crate) address: IpAddr,
    /// How many HTTP connections that address held before.
    pub(crate) held: usize,
}

/// The verdict on a freshly accepted connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Counted; `evicted` says whose connection made room, if any.
    Admitted {
        /// The slot, to hold as long as the socket is open.
        socket: Arc<Socket>,
        /// The connection closed for it, if the limits were full.
        evicted: Option<Eviction>,
    },
    /// No room: answer 503 if the socket takes it, and close.
    Refused,
}

/// One accepted connection's place in the table; released when the last
/// holder (the HTTP task, then the WebSocket reader after an upgrade) drops it.
#[derive(Debug)]
pub(crate) struct Socket {
    sockets: Arc<Sockets>,
    id: u64,
    ip: IpAddr,
    phase: AtomicU8,
    evict: Arc<Signal>,
}

impl Sockets {
    /// `fd_limit`: the process's open-file limit; `reserve`: descriptors
    /// kept for the node's own use.
    pub(crate) fn new(stats: Arc<Stats>, http_cap: usize, fd_limit: u64, reserve: u64) -> Self {
        let budget = usize::try_from(fd_limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
        let brake = usize::try_from(reserve / 2)
            .unwrap_or(usize::MAX)
            .saturating_add(budget);
        Sockets {
            stats,
            http_cap,
            budget,
            brake,
            table: Mutex::default(),
            freed: Notify::new(),
            evict_log: Throttle::new(1000),
            refuse_log: Throttle::new(1000),
        }
    }

    /// Most sockets open before newcomers evict HTTP connections.
    pub(crate) fn budget(&self) -> usize {
        self.budget
    }

    /// Counts a connection just accepted from `remote`, evicting or refusing
    /// as the module doc says; evictions and refusals are logged (throttled).
    pub(crate) fn admit(self: &Arc<Self>, remote: SocketAddr) -> Admission {
        let admission = self.admit_counted(remote.ip());
        match &admission {
            Admission::Admitted {
                evicted: Some(eviction),
                ..
            } => {
                if let Some(skipped) = self.evict_log.allow() {
                    tracing::info!(
                        %remote,
                        evicted_from = %eviction.address,
                        held = eviction.held,
                        similar_skipped = skipped,
                        "HTTP connections full (max_http_connections or the fd limit): closed the oldest of the busiest address to admit a new one (counted in http_evictions)"
                    );
                }
            }
            Admission::Admitted { evicted: None, .. } => {}
            Admission::Refused => {
                if let Some(skipped) = self.refuse_log.allow() {
                    tracing::warn!(
                        %remote,
                        sockets = self.budget,
                        similar_skipped = skipped,
                        "no file descriptor to spare for a new connection: closed it at accept (counted in sockets_refused); raise the open-file limit or lower max_connections"
                    );
                }
            }
        }
        admission
    }

    fn admit_counted(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let mut table = self.table.lock();
        let full = (self.http_cap > 0 && table.http >= self.http_cap) || table.open >= self.budget;
        let mut evicted = None;
        if full {
            if table.open >= self.brake {
                Stats::bump(&self.stats.sockets_refused);
                return Admission::Refused;
            }
            match table.evict_for(ip) {
                Some(eviction) => {
                    Stats::bump(&self.stats.http_evictions);
                    evicted = Some(eviction);
                }
                None => {
                    Stats::bump(&self.stats.sockets_refused);
                    return Admission::Refused;
                }
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let evict = Arc::new(Signal::default());
        table.insert(ip, id, Arc::clone(&evict));
        table.open += 1;
        self.publish(&table);
        let socket = Arc::new(Socket {
            sockets: Arc::clone(self),
            id,
            ip,
            phase: AtomicU8::new(HTTP),
            evict,
        });
        Admission::Admitted { socket, evicted }
    }

    /// Resolves when there are fewer open sockets than the brake, so an
    /// accepted connection can be admitted (after evicting, if need be).
    pub(crate) async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable(); // before checking, so no wake-up is missed
            if self.table.lock().open < self.brake {
                return;
            }
            freed.await;
        }
    }

    fn publish(&self, table: &Table) {
        self.stats
            .http_connections
            .store(table.http as u64, Relaxed);
    }
}

impl Table {
    fn insert(&mut self, ip: IpAddr, id: u64, evict: Arc<Signal>) {
        let held = self.per_ip.entry(ip).or_default();
        let before = held.len();
        held.insert(id, evict);
        self.recount(ip, before, before + 1);
        self.http += 1;
    }

    /// Takes `id` of `ip` out of the HTTP connections; false if it is not
    /// there (evicted).
    fn remove(&mut self, ip: IpAddr, id: u64) -> bool {
        let Some(held) = self.per_ip.get_mut(&ip) else {
            return false;
        };
        let before = held.len();
        if held.remove(&id).is_none() {
            return false;
        }
        if held.is_empty() {
            self.per_ip.remove(&ip);
        }
        self.recount(ip, before, before - 1);
        self.http -= 1;
        true
    }

    fn recount(&mut self, ip: IpAddr, before: usize, after: usize) {
        if before > 0 {
            self.by_count.remove(&(before, ip));
        }
        if after > 0 {
            self.by_count.insert((after, ip));
        }
    }

    /// Closes the oldest HTTP connection of the busiest address (the
    /// newcomer's own when it holds as many as any); None if there is none.
    fn evict_for(&mut self, newcomer: IpAddr) -> Option<Eviction> {
        let &(most, busiest) = self.by_count.last()?;
        let own = self.per_ip.get(&newcomer).map_or(0, BTreeMap::len);
        let address = if own == most { newcomer } else { busiest };
        let (&id, evict) = self.per_ip.get(&address)?.first_key_value()?;
        let evict = Arc::clone(evict);
        self.remove(address, id);
        evict.cancel();
        Some(Eviction {
            address,
            held: most.max(own),
        })
    }
}

impl Socket {
    /// Moves the connection from HTTP to WebSocket (no longer evictable,
    /// still holding its descriptor): the slot it returns holds that
    /// descriptor's place for as long as the WebSocket lives, without the
    /// eviction machinery an idle connection does not need; None if it was
    /// evicted first.
    pub(crate) fn upgraded(&self) -> Option<OpenSlot> {
        let mut table = self.sockets.table.lock();
        if self.phase.load(Relaxed) != HTTP || !table.remove(self.ip, self.id) {
            return None;
        }
        self.phase.store(UPGRADED, Relaxed);
        self.sockets.publish(&table);
        Some(OpenSlot {
            sockets: Arc::clone(&self.sockets),
        })
    }

    /// Resolves when a newcomer evicted this connection: close it now.
    pub(crate) async fn evicted(&self) {
        self.evict.cancelled().await;
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.phase.load(Relaxed) == UPGRADED {
            return; // its `OpenSlot` counts the descriptor now
        }
        let mut table = self.sockets.table.lock();
        // Not found when evicted: the eviction took it out already.
        if table.remove(self.ip, self.id) {
            self.sockets.publish(&table);
        }
        self.sockets.close_one(table);
    }
}

/// An upgraded connection's place among the open sockets, given back when
/// its WebSocket ends.
#[derive(Debug)]
pub(crate) struct OpenSlot {
    sockets: Arc<Sockets>,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        let table = self.sockets.table.lock();
        self.sockets.close_one(table);
    }
}

impl Sockets {
    /// One socket closed: count it, and wake the accept loop if it waits for room.
    fn close_one(&self, mut table: parking_lot::MutexGuard<'_, Table>) {
        let at_brake = table.open >= self.brake;
        table.open -= 1;
        drop(table);
        if at_brake {
            self.freed.notify_waiters();
        }
    }
}

/// What a connection refused at accept is told, when its socket takes it.
pub(crate) fn refusal() -> Vec<u8> {
    let body = r#"{"error":{"code":"node_full","message":"this node has no file descriptor to spare for another connection; try again later or another node"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The process's open-file limit after raising the soft limit to the hard
/// one (tokio and the node use no `select()`, so a high limit is safe), and
/// what it was before; None if it cannot be read.
pub(crate) fn raise_fd_limit() -> Option<(u64, u64)> {
    let (before, _hard) = rlimit::Resource::NOFILE.get().ok()?;
    let now = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(before);
    Some((now, before))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        [127, 0, 0, last].into()
    }

    fn admitted(sockets: &Arc<Sockets>, from: IpAddr) -> (Arc<Socket>, Option<Eviction>) {
        match sockets.admit_counted(from) {
            Admission::Admitted { socket, evicted } => (socket, evicted),
            Admission::Refused => panic!("refused {from}"),
        }
    }

    fn is_evicted(socket: &Socket) -> bool {
        futures_util::FutureExt::now_or_never(socket.evicted()).is_some()
    }

    #[test]
    fn a_flooding_address_only_pushes_out_its_own_oldest() {
        let stats = Arc::new(Stats::default());
        let sockets = Arc::new(Sockets::new(Arc::clone(&stats), 4, 1000, 10));
        let flood: Vec<_> = (0..4).map(|_| admitted(&sockets, ip(2)).0).collect();
        // The cap is full: the flooder's fifth evicts its own oldest.
        let (fifth, evicted) = admitted(&sockets, ip(2));
        assert_eq!(evicted.map(|e| e.address), Some(ip(2)));
        assert!(is_evicted(&flood[0]) && !is_evicted(&flood[1]));
        // Someone else evicts the flooder's (next) oldest.
        let (other, evicted) = admitted(&sockets, ip(1));
        assert_eq!(
            evicted,
            Some(Eviction {
                address: ip(2),
                held: 4
            })
        );
        assert!(is_evicted(&flood[1]) && !is_evicted(&other));
        assert_eq!(stats.http_connections.load(Relaxed), 4);
        assert_eq!(stats.http_evictions.load(Relaxed), 2);
        // An address holding as many as any evicts its own.
        let (second_other, _) = admitted(&sockets, ip(1));
        assert!(is_evicted(&flood[2]));
        let (_third_other, evicted) = admitted(&sockets, ip(1));
        assert_eq!(evicted.map(|e| e.address), Some(ip(1)));
        assert!(is_evicted(&other) && !is_evicted(&second_other));
        assert!(!is_evicted(&fifth));
        // Evicted ones were counted out at once; the last of the flood leaves now.
        drop(flood);
        assert_eq!(stats.http_connections.load(Relaxed), 3);
    }

    #[test]
    fn upgraded_connections_hold_descriptors_but_are_never_evicted() {
        let stats = Arc::new(Stats::default());
        // fd limit 6, reserve 2: 4 sockets, 5 while an eviction is pending.
        let sockets = Arc::new(Sockets::new(Arc::clone(&stats), 0, 6, 2));
        let ws: Vec<_> = (0..3).map(|_| admitted(&sockets, ip(1)).0).collect();
        let ws: Vec<OpenSlot> = ws.iter().map(|s| s.upgraded().expect("slot")).collect();
        assert_eq!(stats.http_connections.load(Relaxed), 0);
        let (http, _) = admitted(&sockets, ip(2));
        // Full: the HTTP connection is evicted, never a WebSocket.
        let (newcomer, evicted) = admitted(&sockets, ip(3));
        assert_eq!(evicted.map(|e| e.address), Some(ip(2)));
        assert!(
            http.upgraded().is_none(),
            "an evicted connection cannot upgrade"
        );
        // The evicted socket is not closed yet: at the brake, the accept loop
        // waits for room, and a newcomer admitted anyway is refused at once.
        let room = sockets.room();
        futures_util::pin_mut!(room);
        assert!(futures_util::FutureExt::now_or_never(room.as_mut()).is_none());
        assert!(matches!(sockets.admit_counted(ip(3)), Admission::Refused));
        drop(http);
        assert!(futures_util::FutureExt::now_or_never(room).is_some());
        let (_late, evicted) = admitted(&sockets, ip(4));
        assert_eq!(evicted.map(|e| e.address), Some(ip(3)));
        assert!(is_evicted(&newcomer));
        drop(ws);
        drop(newcomer);
        let table = sockets.table.lock();
        assert_eq!((table.open, table.http, table.per_ip.len()), (1, 1, 1));
        assert_eq!(stats.sockets_refused.load(Relaxed), 1);
        assert_eq!(stats.http_evictions.load(Relaxed), 2);
    }
}
