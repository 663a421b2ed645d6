//! `unsubscribe` orders: taking connections off a channel from outside their
//! sessions. The node removes the connection from the hub at once (no more
//! messages from that channel after the `unsubscribe` push) and tells the
//! client; a plain client, which is its channel, is closed instead. The
//! native session keeps its own channel set, and learns of the removal
//! through [`Revoked`] before its next command.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use duplex_protocol::channel::ChannelName;
use parking_lot::Mutex;

use super::Node;
use crate::conn::Conn;
use crate::conn::Queued;
use crate::control::{Target, UNSUBSCRIBED_CLOSE_CODE};
use crate::message::Wire;

/// Channels the node took away from native connections whose sessions
/// have not looked yet. Bounded by the subscriptions of live connections:
/// a connection's entry goes when its session takes it or when it ends.
#[derive(Debug, Default)]
pub(crate) struct Revoked {
    /// Whether `by_conn` may hold anything: sessions check this before locking.
    any: AtomicBool,
    by_conn: Mutex<HashMap<u64, Vec<ChannelName>>>,
}

impl Revoked {
    fn record(&self, seq: u64, channel: ChannelName) {
        self.by_conn.lock().entry(seq).or_default().push(channel);
        self.any.store(true, Relaxed);
    }

    fn take(&self, seq: u64) -> Option<Vec<ChannelName>> {
        if !self.any.load(Relaxed) {
            return None;
        }
        let mut by_conn = self.by_conn.lock();
        let taken = by_conn.remove(&seq);
        if by_conn.is_empty() {
            self.any.store(false, Relaxed);
        }
        taken
    }

    /// Drops what is left for a connection that ended.
    pub(super) fn forget(&self, seq: u64) {
        if self.any.load(Relaxed) {
            self.take(seq);
        }
    }
}

impl Node {
    /// Carries out an `unsubscribe` order on this node's connections: in a
    /// task, since the broker's unsubscribe cannot be awaited from the
    /// broker's own delivery path.
    pub(super) fn unsubscribe_by_order(&self, target: Target, channel: String) {
        let Ok(channel) = ChannelName::parse(&channel, usize::MAX) else {
            return; // Order::check refused it already
        };
        let conns = self.addressed(&target);
        if conns.is_empty() {
            return;
        }
        let node = self.clone();
        self.inner.tasks.spawn(async move {
            let mut removed = 0u64;
            for conn in conns {
                if node.take_off(&conn, &channel).await {
                    removed += 1;
                }
            }
            if removed > 0 {
                node.inner
                    .stats
                    .api_unsubscribes
                    .fetch_add(removed, Relaxed);
                tracing::info!(to = %target, %channel, removed, "unsubscribed by order");
            }
        });
    }

    /// Takes one connection off `channel`, if it holds it: a native client
    /// is told with a push, a plain one is closed.
    async fn take_off(&self, conn: &Conn, channel: &ChannelName) -> bool {
        match conn.wire {
            Wire::Plain => {
                if !self.inner.hub.contains(channel.as_str(), conn.seq) {
                    return false;
                }
                // Its session releases the subscriptions when it ends.
                conn.close(
                    UNSUBSCRIBED_CLOSE_CODE,
                    "unsubscribed from this channel by the server",
                    Queued::Drop,
                );
                true
            }
            Wire::Native => {
                {
                    let _guard = self.stripe(channel).lock().await;
                    if !self.unsubscribe_held(conn, channel).await {
                        return false;
                    }
                    // Recorded under the stripe lock, so it is in place before the
                    // session's own release of this channel can run.
                    self.inner.revoked.record(conn.seq, channel.clone());
                    self.send_to(
                        conn,
                        duplex_protocol::push::unsubscribed(channel.as_str()),
                        "unsubscribe push",
                    );
                }
                self.leave_presence(conn, channel).await;
                true
            }
        }
    }

    /// Channels taken from this connection since its session last looked.
    pub(crate) fn take_revoked(&self, seq: u64) -> Option<Vec<ChannelName>> {
        self.inner.revoked.take(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_channels_are_taken_once_per_connection() {
        let revoked = Revoked::default();
        assert_eq!(revoked.take(1), None);
        let news = ChannelName::parse("news", 64).unwrap();
        revoked.record(1, news.clone());
        revoked.record(2, news.clone());
        assert_eq!(revoked.take(1), Some(vec![news]));
        assert_eq!(revoked.take(1), None);
        revoked.forget(2);
        assert!(!revoked.any.load(Relaxed));
    }
}
