//! `/api/connections` across nodes: scatter-gather over the broker, and the
//! registry of live nodes it relies on (docs/API.md).
//!
//! The asker lists its own connections, publishes a `query` order on
//! `#control` with `reply_to: #node:<its id>`, and every other node answers
//! there with its matching connections (bounded). The asker waits until
//! every live node has answered or `query_timeout` passes; a live node that
//! did not answer makes the list `incomplete`.
//!
//! Live nodes: every node publishes `alive` on `#control` each
//! `node_heartbeat`; a node heard from within three intervals is live. A
//! node greets one it had not heard from on that node's `#node:<id>`, so a
//! new node knows the others at once. Only the receiver's monotonic clock
//! is used, so clock skew between machines does not matter.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::oneshot;

use super::Node;
use crate::conn::Conn;
use crate::control::{ConnectionInfo, Order, CONTROL_CHANNEL, NODE_CHANNEL_PREFIX};
use crate::message::Wire;
use crate::stats::Stats;

/// Queries one node may have waiting for answers at once.
const MAX_QUERIES_IN_FLIGHT: usize = 8;
/// Answers one node may be publishing at once; more are dropped and counted.
const MAX_ANSWERS_IN_FLIGHT: usize = 16;
/// Nodes the registry remembers (a flood of made-up ids cannot grow it further).
const MAX_PEERS: usize = 1024;
/// Channels listed per connection.
const MAX_CHANNELS_LISTED: usize = 32;
/// Rough cap on one node's answer, in bytes of JSON.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// A node is live while heard from within this many heartbeats.
const LIVE_HEARTBEATS: u32 = 3;

/// What `/api/connections` answers.
#[derive(Debug, Serialize)]
pub struct ConnectionList {
    /// The matching connections, this node's first, at most `limit`.
    pub connections: Vec<ConnectionInfo>,
    /// Nodes that answered, this one included.
    pub nodes: usize,
    /// True when a live node did not answer in time (or the broker is down):
    /// the list may miss connections.
    pub incomplete: bool,
    /// Live nodes that did not answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// True when more connections matched than `limit` (or an answer's size cap).
    pub truncated: bool,
}

/// Why a query was not asked.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// [`MAX_QUERIES_IN_FLIGHT`] queries are already waiting.
    #[error("too many connection queries in flight on this node (at most {MAX_QUERIES_IN_FLIGHT}); retry shortly")]
    Busy,
}

/// The node's side of queries: live peers, its own queries in flight, its
/// answers being published.
#[derive(Debug, Default)]
pub(crate) struct Queries {
    /// Other nodes, by id, and when they were last heard from.
    peers: Mutex<HashMap<String, Instant>>,
    /// This node's queries waiting for answers, by request id.
    pending: Mutex<HashMap<String, Pending>>,
    answering: Arc<AtomicUsize>,
    heartbeat_started: AtomicBool,
}

#[derive(Debug)]
struct Pending {
    limit: usize,
    connections: Vec<ConnectionInfo>,
    truncated: bool,
    expected: HashSet<String>,
    answered: HashSet<String>,
    done: Option<oneshot::Sender<()>>,
}

/// Removes a query from `pending` however the asking request ends.
struct PendingGuard<'a> {
    queries: &'a Queries,
    request: String,
}

impl PendingGuard<'_> {
    fn finish(self) -> Option<Pending> {
        self.queries.pending.lock().remove(&self.request)
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.queries.pending.lock().remove(&self.request);
    }
}

impl Node {
    /// Lists connections (of one user, or all) on every live node.
    pub async fn list_connections(
        &self,
        user: Option<String>,
        limit: usize,
    ) -> Result<ConnectionList, QueryError> {
        let stats = &self.inner.stats;
        Stats::bump(&stats.connection_queries);
        let queries = &self.inner.queries;
        let (mut connections, mut truncated) = self.local_connections(user.as_deref(), limit);
        let mut list = ConnectionList {
            connections: Vec::new(),
            nodes: 1,
            incomplete: false,
            missing: Vec::new(),
            truncated: false,
        };
        if self.inner.broker.shared() {
            let expected = self.live_peers();
            let request = format!("{}-{:016x}", self.inner.id, rand::random::<u64>());
            let answered = self.await_answers(&request, limit, expected.clone())?;
            let guard = PendingGuard {
                queries,
                request: request.clone(),
            };
            let mut reached = self.is_healthy();
            if !expected.is_empty() {
                let order = Order::Query {
                    request,
                    reply_to: self.node_channel(),
                    user,
                    limit,
                };
                match self.publish_order(&order).await {
                    Ok(()) => {
                        let wait = self.config().query_timeout;
                        let _ = tokio::time::timeout(wait, answered).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "connection query not sent to the other nodes; answering with this node's only");
                        reached = false;
                    }
                }
            }
            if let Some(pending) = guard.finish() {
                let room = limit.saturating_sub(connections.len());
                truncated |= pending.truncated || pending.connections.len() > room;
                connections.extend(pending.connections.into_iter().take(room));
                list.nodes += pending.answered.len();
                let mut missing: Vec<String> =
                    expected.difference(&pending.answered).cloned().collect();
                missing.sort();
                list.missing = missing;
            }
            list.incomplete = !reached || !list.missing.is_empty();
        }
        if list.incomplete {
            Stats::bump(&stats.queries_incomplete);
            tracing::info!(missing = ?list.missing, "connection query incomplete: some nodes did not answer in time");
        }
        list.connections = connections;
        list.truncated = truncated;
        Ok(list)
    }

    /// Files a query's entry where the other nodes' answers are gathered;
    /// the receiver resolves once every expected node answered.
    fn await_answers(
        &self,
        request: &str,
        limit: usize,
        expected: HashSet<String>,
    ) -> Result<oneshot::Receiver<()>, QueryError> {
        let (done, answered) = oneshot::channel();
        let mut pending = self.inner.queries.pending.lock();
        if pending.len() >= MAX_QUERIES_IN_FLIGHT {
            drop(pending);
            Stats::bump(&self.inner.stats.queries_refused);
            tracing::warn!("connection query refused: {}", QueryError::Busy);
            return Err(QueryError::Busy);
        }
        pending.insert(
            request.to_string(),
            Pending {
                limit,
                connections: Vec::new(),
                truncated: false,
                expected,
                answered: HashSet::new(),
                done: Some(done),
            },
        );
        Ok(answered)
    }

    /// Answers another node's (or a backend's) `query` on its `reply_to`.
    pub(super) fn answer_query(
        &self,
        request: String,
        reply_to: String,
        user: Option<String>,
        limit: usize,
    ) {
        if reply_to == self.node_channel() {
            return; // our own query: the asker lists its own connections
        }
        let answering = &self.inner.queries.answering;
        if answering.fetch_add(1, Relaxed) >= MAX_ANSWERS_IN_FLIGHT {
            answering.fetch_sub(1, Relaxed);
            Stats::bump(&self.inner.stats.query_answers_dropped);
            tracing::warn!(%request, "connection query not answered: too many answers in flight");
            return;
        }
        let node = self.clone();
        // Listed in the task, off the broker's delivery path.
        self.inner.tasks.spawn(async move {
            let (connections, truncated) = node.local_connections(user.as_deref(), limit);
            let order = Order::Answer {
                request,
                node: node.inner.id.clone(),
                connections,
                truncated,
            };
            if let Err(e) = node.publish_order_on(&reply_to, &order).await {
                Stats::bump(&node.inner.stats.query_answers_dropped);
                tracing::warn!(%reply_to, error = %e, "answer to a connection query not sent");
            }
            node.inner.queries.answering.fetch_sub(1, Relaxed);
        });
    }

    /// Takes another node's answer to one of this node's queries.
    pub(super) fn take_answer(
        &self,
        request: String,
        node: String,
        connections: Vec<ConnectionInfo>,
        truncated: bool,
    ) {
        let mut pending = self.inner.queries.pending.lock();
        let Some(query) = pending.get_mut(&request) else {
            drop(pending);
            Stats::bump(&self.inner.stats.query_answers_dropped);
            tracing::debug!(%request, %node, "answer dropped: its query is over (late) or unknown");
            return;
        };
        if !query.answered.insert(node) {
            drop(pending);
            Stats::bump(&self.inner.stats.query_answers_dropped);
            tracing::debug!(%request, "answer dropped: that node already answered");
            return;
        }
        let room = query.limit.saturating_sub(query.connections.len());
        query.truncated |= truncated || connections.len() > room;
        query.connections.extend(connections.into_iter().take(room));
        if query.expected.is_subset(&query.answered) {
            if let Some(done) = query.done.take() {
                let _ = done.send(());
            }
        }
    }

    /// This node's connections (of `user`, or all), oldest first, at most
    /// `limit` and about [`MAX_ANSWER_BYTES`]; true when some were left out.
    fn local_connections(&self, user: Option<&str>, limit: usize) -> (Vec<ConnectionInfo>, bool) {
        let mut conns: Vec<Arc<Conn>> = self
            .connections()
            .into_iter()
            .filter(|c| user.is_none() || c.user() == user)
            .collect();
        conns.sort_by_key(|c| c.seq);
        let mut truncated = conns.len() > limit;
        conns.truncate(limit);
        let keys: HashSet<u64> = conns.iter().map(|c| c.seq).collect();
        let mut channels = self.inner.hub.channels_of(&keys, MAX_CHANNELS_LISTED);
        let now_ms = self.now_ms();
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut bytes = 0usize;
        let mut out = Vec::with_capacity(conns.len());
        for conn in conns {
            let (held, channels_truncated) = channels.remove(&conn.seq).unwrap_or_default();
            let age_ms = now_ms.saturating_sub(conn.opened_ms);
            let info = ConnectionInfo {
                id: conn.id.to_string(),
                user: conn.user().unwrap_or("").to_string(),
                node: self.inner.id.clone(),
                mode: match conn.wire {
                    Wire::Native => "native",
                    Wire::Plain => "plain",
                }
                .to_string(),
                channels: held.iter().map(|c| c.as_str().to_string()).collect(),
                channels_truncated,
                connected_at: unix_ms.saturating_sub(age_ms) / 1000,
                age_seconds: age_ms / 1000,
                remote: conn.remote.to_string(),
            };
            bytes += 200
                + info.id.len()
                + info.user.len()
                + info.channels.iter().map(|c| c.len() + 3).sum::<usize>();
            if bytes > MAX_ANSWER_BYTES {
                truncated = true;
                break;
            }
            out.push(info);
        }
        (out, truncated)
    }

    /// Starts announcing this node on `#control` (on a shared broker; once).
    pub(super) fn start_heartbeat(&self) {
        let queries = &self.inner.queries;
        if !self.inner.broker.shared() || queries.heartbeat_started.swap(true, Relaxed) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let interval = self.config().node_heartbeat;
        self.inner.tasks.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                Node { inner }.announce(CONTROL_CHANNEL).await;
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Publishes this node's `alive` on a channel.
    async fn announce(&self, channel: &str) {
        let alive = Order::Alive {
            node: self.inner.id.clone(),
        };
        if let Err(e) = self.publish_order_on(channel, &alive).await {
            // The broker logs its outages; this is only the consequence.
            tracing::debug!(error = %e, "node heartbeat not sent");
        }
    }

    /// Records another node's heartbeat; greets a node not heard from before.
    pub(super) fn heard_alive(&self, node: String) {
        if node == self.inner.id {
            return;
        }
        let now = Instant::now();
        let horizon = self.live_horizon();
        let mut peers = self.inner.queries.peers.lock();
        let known = peers
            .get(&node)
            .is_some_and(|t| now.duration_since(*t) <= horizon);
        if !peers.contains_key(&node) && peers.len() >= MAX_PEERS {
            peers.retain(|_, t| now.duration_since(*t) <= horizon);
            if peers.len() >= MAX_PEERS {
                drop(peers);
                tracing::warn!(%node, "node heartbeat ignored: already tracking {MAX_PEERS} nodes");
                return;
            }
        }
        peers.insert(node.clone(), now);
        drop(peers);
        if !known {
            tracing::info!(%node, "node joined (heard its heartbeat)");
            let me = self.clone();
            self.inner.tasks.spawn(async move {
                me.announce(&format!("{NODE_CHANNEL_PREFIX}{node}")).await;
            });
        }
    }

    /// Other nodes heard from within [`LIVE_HEARTBEATS`] heartbeats; older
    /// entries are forgotten.
    fn live_peers(&self) -> HashSet<String> {
        let now = Instant::now();
        let horizon = self.live_horizon();
        let mut peers = self.inner.queries.peers.lock();
        peers.retain(|_, t| now.duration_since(*t) <= horizon);
        peers.keys().cloned().collect()
    }

    fn live_horizon(&self) -> Duration {
        self.config().node_heartbeat * LIVE_HEARTBEATS
    }
}
