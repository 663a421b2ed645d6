//! One sweeper for all connections (no timer per connection): on every
//! tick it pings clients that have been quiet for a while and cuts those
//! that stayed silent past the ping interval plus the pong timeout. Any
//! frame from a client (pong, message, its own ping) counts as alive.
//! Browsers answer pings by themselves, so plain clients need nothing.
//! The same sweep cuts `/ws` clients that never send a command
//! (`connect_timeout`), so a connection cannot sit on a slot for free, and
//! clients whose token expired without a refresh (3006).

use duplex_protocol::code::CloseCode;
use duplex_protocol::ws::{encode_frame, OpCode};
use tokio_util::sync::CancellationToken;

use crate::conn::Queued;
use crate::node::Node;
use crate::stats::Stats;

/// Runs until `shutdown`.
pub(crate) async fn run(node: Node, shutdown: CancellationToken) {
    let config = node.config();
    let interval = config.ping_interval;
    let deadline = (interval + config.pong_timeout).as_millis() as u64;
    let quiet = (interval.as_millis() as u64 / 2).max(1);
    let connect_timeout = config.connect_timeout.as_millis() as u64;
    let ping = encode_frame(OpCode::Ping, b"");
    let mut period = interval.min(config.pong_timeout);
    if !config.connect_timeout.is_zero() {
        // Cut idle newcomers within a quarter of their allowance of the deadline.
        period = period.min(config.connect_timeout / 4);
    }
    let mut tick = tokio::time::interval(period.max(std::time::Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = node.now_ms();
        let unix_now = crate::auth::unix_now_precise();
        let mut pinged = 0usize;
        for conn in node.connections() {
            let silent = now.saturating_sub(conn.last_seen_ms());
            if conn.outbound.is_closing() {
                // Safety net: a close that never completes is cut.
                if silent > deadline * 2 {
                    conn.abort.cancel();
                }
                continue;
            }
            let waited = conn.waiting_since_ms().map(|t| now.saturating_sub(t));
            if conn
                .token_expiry()
                .is_some_and(|exp| crate::auth::expired(exp, unix_now))
            {
                Stats::bump(&node.stats().token_expirations);
                tracing::info!(conn = %conn.id, addr = %conn.remote, "closing connection: token expired without a refresh");
                conn.close(
                    CloseCode::TokenExpired.as_u16(),
                    "token expired",
                    Queued::Drop,
                );
            } else if connect_timeout > 0 && waited.is_some_and(|w| w > connect_timeout) {
                Stats::bump(&node.stats().connect_timeouts);
                tracing::info!(conn = %conn.id, addr = %conn.remote, "closing connection: no command within connect_timeout");
                let reason = format!("no valid command within {connect_timeout} ms of connecting");
                conn.close(CloseCode::ConnectTimeout.as_u16(), &reason, Queued::Drop);
            } else if silent > deadline {
                Stats::bump(&node.stats().heartbeat_timeouts);
                tracing::info!(conn = %conn.id, addr = %conn.remote, silent_ms = silent, "closing connection: no pong");
                let reason = format!("no pong within {} ms", deadline);
                conn.close(CloseCode::HeartbeatTimeout.as_u16(), &reason, Queued::Drop);
            } else if silent >= quiet {
                node.send_to(&conn, ping.clone(), "ping");
                pinged += 1;
            }
        }
        tracing::trace!(pinged, "heartbeat sweep");
    }
}
