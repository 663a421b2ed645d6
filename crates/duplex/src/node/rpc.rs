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

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use duplex_protocol::code::ErrorCode;
use duplex_protocol::push::{self, Empty, RpcResult};
use parking_lot::Mutex;

use super::{Inner, Node};
use crate::conn::Conn;
use crate::stats::Stats;
use crate::upstream::pending::{Limits, Pending, Table};
use crate::upstream::{Answer, Full, Outcome};

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
                    self.inner
                        .tasks
                        .spawn(sweep(Arc::downgrade(&self.inner), rpcs.tick()));
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
