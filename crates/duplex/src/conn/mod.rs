//! The shared handle of one client connection.
//!
//! The reader task, the writer task, the hub (fan-out), the heartbeat sweeper
//! and the registry each hold an `Arc<Conn>`. It carries only what they need
//! to share: identity, which wire format the client reads, the outbound queue,
//! liveness, and the token that ends both of the connection's tasks.
//! Per-client state that only the session needs (subscriptions) lives in the
//! reader task, not here.

pub(crate) mod coalesce;
mod gate;
pub(crate) mod outbound;
mod pressure;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use duplex_protocol::time::NumericDate;
use tokio::sync::Notify;

use crate::hub::{Subscriber, Undelivered};
use crate::message::Wire;
use coalesce::Coalescer;
use duplex_protocol::channel::ChannelName;
use gate::{Gates, Verdict};
pub(crate) use outbound::Queued;
use outbound::{Closer, Outbound, PushError, QueueLimits};

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
    /// Milliseconds since node start when the connection opened (`/api/connections`).
    pub(crate) opened_ms: u64,
    /// Milliseconds since node start when the client last sent any frame.
    last_seen_ms: AtomicU64,
    /// Milliseconds since node start when the connection opened, until the
    /// client sends its first command (native protocol); then `u64::MAX`.
    /// Plain clients need not send anything and start at `u64::MAX`.
    waiting_since_ms: AtomicU64,
    /// What the client's token said; boxed and set once, so anonymous
    /// connections (the common idle case) pay 16 bytes for it.
    auth: std::sync::OnceLock<Box<ConnAuth>>,
    /// Ends the reader and writer at once (no more I/O for this client).
    pub(crate) abort: Signal,
    /// Fired when the reader has finished (the peer closed or failed).
    pub(crate) done_reading: Signal,
    /// Whether some channel's frames are being held ([`Conn::hold`]): the
    /// one check fan-out pays when none is.
    gated: AtomicBool,
    /// Channels catching up from history, their live frames held.
    gates: parking_lot::Mutex<Option<Box<Gates>>>,
}

/// `ConnAuth::expires` of a token without `exp` (a NaN pattern no
/// [`NumericDate`] has).
const NEVER: u64 = u64::MAX;

/// What a connection's token established.
#[derive(Debug)]
struct ConnAuth {
    /// User id (`sub`); empty for an anonymous token.
    user: Box<str>,
    /// Expiry, Unix seconds: the bits of an f64 ([`NumericDate`]), or
    /// [`NEVER`] for a token without `exp`.
    expires: AtomicU64,
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
        coalescer: &Arc<Coalescer>,
        now_ms: u64,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            seq,
            id: Arc::from(format!("{node_id}.{seq}")),
            wire,
            remote,
            outbound: Outbound::new(limits, Arc::clone(coalescer), seq),
            opened_ms: now_ms,
            last_seen_ms: AtomicU64::new(now_ms),
            waiting_since_ms: AtomicU64::new(if wire == Wire::Plain {
                u64::MAX
            } else {
                now_ms
            }),
            auth: std::sync::OnceLock::new(),
            abort: Signal::default(),
            done_reading: Signal::default(),
            gated: AtomicBool::new(false),
            gates: parking_lot::Mutex::new(None),
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
        self.waiting_since_ms.store(u64::MAX, Relaxed);
    }

    /// When the client has not sent a command yet: since when it has been waiting.
    pub(crate) fn waiting_since_ms(&self) -> Option<u64> {
        Some(self.waiting_since_ms.load(Relaxed)).filter(|&t| t != u64::MAX)
    }

    /// Records who an accepted token says the client is (the first time:
    /// the user never changes on a connection) and when the token expires.
    pub(crate) fn authenticated(&self, user: &str, expires: Option<NumericDate>) {
        if user.is_empty() && expires.is_none() && self.auth.get().is_none() {
            return;
        }
        let auth = self.auth.get_or_init(|| {
            Box::new(ConnAuth {
                user: user.into(),
                expires: AtomicU64::new(NEVER),
            })
        });
        let bits = expires.map_or(NEVER, |e| e.as_f64().to_bits());
        auth.expires.store(bits, Relaxed);
    }

    /// The user id, if the client presented a token naming one.
    pub(crate) fn user(&self) -> Option<&str> {
        self.auth.get().map(|a| &*a.user).filter(|u| !u.is_empty())
    }

    /// When the client's token expires (Unix seconds), if it does.
    pub(crate) fn token_expiry(&self) -> Option<NumericDate> {
        self.auth
            .get()
            .map(|a| a.expires.load(Relaxed))
            .filter(|&bits| bits != NEVER)
            .and_then(|bits| NumericDate::from_f64(f64::from_bits(bits)))
    }

    /// Queues a frame (reply, pong, ping); overflow starts a slow-consumer close.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), PushError> {
        self.outbound.push(frame)
    }

    /// Starts closing: the writer sends the close frame, then both tasks end.
    pub(crate) fn close(&self, code: u16, reason: &str, queued: Queued) {
        self.outbound.close(code, reason, queued, Closer::Server);
    }

    /// Holds `channel`'s live frames from now until [`Conn::release`]: call
    /// before the subscription takes effect, so none slips past.
    pub(crate) fn hold(&self, channel: &ChannelName) {
        let mut gates = self.gates.lock();
        gates.get_or_insert_with(Box::default).close(channel);
        self.gated.store(true, Ordering::SeqCst);
    }

    /// Queues `first` (the publications caught up, up to offset
    /// `covered`), then the frames held for `channel` after `covered`, and
    /// lets its frames through again: all under the gate's lock, so no live
    /// frame of the channel gets in between. An overflow cuts the client as
    /// a slow consumer (the error says so, for the caller to count).
    pub(crate) fn release(
        &self,
        channel: &ChannelName,
        first: Vec<Bytes>,
        covered: u64,
    ) -> Result<(), PushError> {
        let mut gates = self.gates.lock();
        let held = gates
            .as_mut()
            .map(|g| g.open(channel, covered))
            .unwrap_or_default();
        let mut pushed = Ok(());
        for frame in first.into_iter().chain(held) {
            pushed = self.outbound.push(frame);
            if pushed.is_err() {
                break;
            }
        }
        // Only now: a delivery that skipped the lock would overtake them.
        Self::forget_empty(&mut gates, &self.gated);
        pushed
    }

    /// Lets `channel`'s frames through again, dropping those held (its
    /// subscription did not happen after all).
    pub(crate) fn discard(&self, channel: &ChannelName) {
        if !self.gated.load(Ordering::SeqCst) {
            return;
        }
        let mut gates = self.gates.lock();
        if let Some(g) = gates.as_mut() {
            g.remove(channel);
        }
        Self::forget_empty(&mut gates, &self.gated);
    }

    fn forget_empty(gates: &mut Option<Box<Gates>>, gated: &AtomicBool) {
        if gates.as_ref().is_some_and(|g| g.is_empty()) {
            *gates = None;
            gated.store(false, Ordering::SeqCst);
        }
    }

    /// Answers the peer's close frame with the same code (RFC 6455 5.5.1).
    pub(crate) fn echo_close(&self, code: u16) {
        self.outbound.close(code, "", Queued::Drop, Closer::Peer);
    }
}

impl Subscriber for Conn {
    fn key(&self) -> u64 {
        self.seq
    }

    fn wire(&self) -> Wire {
        self.wire
    }

    fn deliver(
        &self,
        frame: &Bytes,
        channel: &ChannelName,
        offset: Option<u64>,
    ) -> Result<(), Undelivered> {
        if self.gated.load(Ordering::SeqCst) {
            let mut gates = self.gates.lock();
            let verdict = gates
                .as_mut()
                .map(|g| g.hold(channel, offset, frame, self.outbound.limits()));
            Self::forget_empty(&mut gates, &self.gated);
            match verdict {
                Some(Ok(Verdict::Held)) => return Ok(()),
                // Already queued by the catch-up: not a delivery.
                Some(Ok(Verdict::Covered)) => return Ok(()),
                Some(Ok(Verdict::Pass)) | None => {}
                Some(Err(overflow)) => {
                    self.outbound.cut_slow(overflow.bytes);
                    return Err(Undelivered::SlowConsumer);
                }
            }
            // Pushed under the lock, so a release cannot slip in between.
            return self.push_delivery(frame);
        }
        self.push_delivery(frame)
    }

    fn describe(&self) -> (&str, SocketAddr) {
        (&self.id, self.remote)
    }
}

impl Conn {
    fn push_delivery(&self, frame: &Bytes) -> Result<(), Undelivered> {
        match self.outbound.push(frame.clone()) {
            Ok(()) => Ok(()),
            Err(PushError::Closed) => Err(Undelivered::Closed),
            Err(PushError::SlowConsumer) => Err(Undelivered::SlowConsumer),
        }
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
