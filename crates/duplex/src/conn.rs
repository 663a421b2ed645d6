//! The shared handle of one client connection.
//!
//! The reader task, the writer task, the hub (fan-out), the heartbeat sweeper
//! and the registry each hold an `Arc<Conn>`. It carries only what they need
//! to share: identity, which wire format the client reads, the outbound queue,
//! liveness, and the token that ends both of the connection's tasks.
//! Per-client state that only the session needs (subscriptions) lives in the
//! reader task, not here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::hub::{Subscriber, Undelivered, Wire};
use crate::transport::outbound::{Outbound, PushError, QueueLimits};

/// One connected client, as seen by everything outside its own tasks.
#[derive(Debug)]
pub struct Conn {
    /// Node-local number, used as the key in the hub and registry.
    pub(crate) seq: u64,
    /// Id unique across nodes: `<node id>.<seq>`.
    pub(crate) id: Arc<str>,
    pub(crate) wire: Wire,
    pub(crate) remote: SocketAddr,
    pub(crate) outbound: Outbound,
    /// Milliseconds since node start when the client last sent any frame.
    last_seen_ms: AtomicU64,
    /// Milliseconds since node start when the connection opened.
    opened_ms: u64,
    /// Whether the client has sent a command yet (native protocol; plain
    /// clients need not send anything and start introduced).
    introduced: AtomicBool,
    /// When the client's token expires, Unix seconds; 0 = never.
    token_expires: AtomicU64,
    /// The token's user id, once authenticated (for orders addressed to a user).
    user: std::sync::OnceLock<Box<str>>,
    /// Ends the reader and writer at once (no more I/O for this client).
    pub(crate) abort: Signal,
    /// Fired when the reader has finished (the peer closed or failed).
    pub(crate) done_reading: Signal,
}

/// A one-shot, many-waiter flag stored inline: what a `CancellationToken`
/// does for a connection without its heap-allocated tree node (each
/// connection has two, and idle memory per connection is a product metric).
#[derive(Debug, Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

impl Signal {
    /// Fires the signal; every current and future waiter returns.
    pub(crate) fn cancel(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Waits until the signal has fired.
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a concurrent `cancel` is not missed.
            notified.as_mut().enable();
            if self.fired.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl Conn {
    pub(crate) fn new(
        seq: u64,
        node_id: &str,
        wire: Wire,
        remote: SocketAddr,
        limits: QueueLimits,
        now_ms: u64,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            seq,
            id: Arc::from(format!("{node_id}.{seq}")),
            wire,
            remote,
            outbound: Outbound::new(limits),
            last_seen_ms: AtomicU64::new(now_ms),
            opened_ms: now_ms,
            introduced: AtomicBool::new(wire == Wire::Plain),
            token_expires: AtomicU64::new(0),
            user: std::sync::OnceLock::new(),
            abort: Signal::default(),
            done_reading: Signal::default(),
        })
    }

    /// Records that the client is alive.
    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Relaxed);
    }

    pub(crate) fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Relaxed)
    }

    /// Records that the client sent its first command.
    pub(crate) fn mark_introduced(&self) {
        self.introduced.store(true, Relaxed);
    }

    /// When the client has not sent a command yet: since when it has been waiting.
    pub(crate) fn waiting_since_ms(&self) -> Option<u64> {
        (!self.introduced.load(Relaxed)).then_some(self.opened_ms)
    }

    /// Records the user the token named (once per connection; anonymous: never).
    pub(crate) fn set_user(&self, user: &str) {
        if !user.is_empty() {
            let _ = self.user.set(user.into());
        }
    }

    /// The user id, if the client presented a token naming one.
    pub(crate) fn user(&self) -> Option<&str> {
        self.user.get().map(|u| &**u)
    }

    /// Records the expiry of the token the client presented (None: never).
    pub(crate) fn set_token_expiry(&self, exp: Option<u64>) {
        self.token_expires.store(exp.unwrap_or(0), Relaxed);
    }

    /// When the client's token expires (Unix seconds), if it does.
    pub(crate) fn token_expiry(&self) -> Option<u64> {
        Some(self.token_expires.load(Relaxed)).filter(|&e| e != 0)
    }

    /// Queues a frame (reply, pong, ping); overflow starts a slow-consumer close.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), PushError> {
        self.outbound.push(frame)
    }

    /// Starts closing: the writer sends the close frame, then both tasks end.
    pub(crate) fn close(&self, code: u16, reason: &str, flush: bool) {
        self.outbound.close(code, reason, flush, true);
    }

    /// Answers the peer's close frame with the same code (RFC 6455 5.5.1).
    pub(crate) fn echo_close(&self, code: u16) {
        self.outbound.close(code, "", false, false);
    }
}

impl Subscriber for Conn {
    fn key(&self) -> u64 {
        self.seq
    }

    fn wire(&self) -> Wire {
        self.wire
    }

    fn deliver(&self, frame: &Bytes) -> Result<(), Undelivered> {
        match self.outbound.push(frame.clone()) {
            Ok(()) => Ok(()),
            Err(PushError::Closed) => Err(Undelivered::Closed),
            Err(PushError::SlowConsumer) => Err(Undelivered::SlowConsumer),
        }
    }

    fn describe(&self) -> (&str, SocketAddr) {
        (&self.id, self.remote)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Signal;

    #[tokio::test]
    async fn signal_wakes_waiters_before_and_after_firing() {
        let signal = Arc::new(Signal::default());
        let waiter = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.cancelled().await }
        });
        tokio::task::yield_now().await;
        signal.cancel();
        waiter.await.unwrap();
        signal.cancelled().await; // already fired: returns at once
    }
}
