//! The node's NATS connection: built once, watched through the client's
//! events, and confirmed by round trips.
//!
//! NATS answers no SUB, and `Client::flush` only empties the socket's
//! buffer. What does prove the server has processed everything this
//! connection sent so far is a message of ours coming back: the server
//! handles one connection's operations in order. So the node holds a
//! subscription on its own sync subject (`<prefix>_duplex.sync.<random>`:
//! it has a `.` after the prefix, so it is never a channel's subject), and
//! a round trip publishes a numbered probe there and waits for it. A
//! `nats sub '>'` watching the server just sees the probes go by.
//!
//! A connect (the first or after a loss) counts once a round trip made on
//! it came back: `async-nats` sends the resubscriptions first on a new
//! connection, so by then every channel is subscribed again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr};
use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{NatsSettings, Shared};
use crate::backoff::Backoff;
use crate::broker::BrokerError;

/// Messages one NATS subscription may hold before its reader takes them
/// (the reader never waits, so this is slack, not a queue); beyond it
/// `async-nats` drops them and reports a slow consumer.
const SUBSCRIPTION_CAPACITY: usize = 4096;

/// The sync subject and the round trips waiting for their probe.
pub(super) struct Probes {
    subject: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl Probes {
    pub(super) fn new(prefix: &str) -> Self {
        Probes {
            subject: format!("{prefix}_duplex.sync.{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(1),
            waiting: Mutex::default(),
        }
    }

    /// A probe came back: its round trip is done.
    fn arrived(&self, payload: &[u8]) {
        let token = std::str::from_utf8(payload)
            .ok()
            .and_then(|t| t.parse::<u64>().ok());
        if let Some(done) = token.and_then(|t| self.waiting.lock().remove(&t)) {
            let _ = done.send(());
        }
    }
}

impl Shared {
    /// Publishes a probe on the sync subject and waits for it to come back
    /// (module doc), within the timeout.
    pub(super) async fn round_trip(&self) -> Result<(), BrokerError> {
        let client = self
            .client
            .get()
            .ok_or_else(|| BrokerError::Unavailable("nats is not connected yet".to_string()))?;
        let token = self.probes.next.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        self.probes.waiting.lock().insert(token, done);
        let trip = async {
            client
                .publish(self.probes.subject.clone(), Bytes::from(token.to_string()))
                .await
                .map_err(|e| BrokerError::Unavailable(format!("nats publish failed: {e}")))?;
            answer.await.map_err(|_| BrokerError::Closed)
        };
        let timeout = self.settings.timeout;
        let result = tokio::time::timeout(timeout, trip)
            .await
            .unwrap_or(Err(BrokerError::Timeout(timeout)));
        if result.is_err() {
            self.probes.waiting.lock().remove(&token);
        }
        result
    }
}

/// How the client connects: retrying from the start and forever, each
/// attempt bounded by the timeout, pauses growing to `max_backoff`, a PING
/// every `timeout` (a connection silent for two of them is replaced), and
/// every event forwarded to `events`.
fn options(settings: &NatsSettings, events: mpsc::UnboundedSender<Event>) -> ConnectOptions {
    let max_backoff = settings.max_backoff;
    ConnectOptions::new()
        .name(format!("duplex {}", settings.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(settings.timeout)
        .ping_interval(settings.timeout.max(Duration::from_millis(100)))
        .request_timeout(Some(settings.timeout))
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .reconnect_delay_callback(move |attempts| {
            // The first attempt at once, then the node's usual backoff.
            let mut backoff = Backoff::new(max_backoff);
            let mut pause = Duration::ZERO;
            for _ in 1..attempts.min(32) {
                pause = backoff.next();
            }
            pause
        })
        .event_callback(move |event| {
            let _ = events.send(event);
            async {}
        })
}

/// Builds the client, subscribes the node's own subjects, and follows the
/// connection's events until the broker closes.
pub(super) async fn run(shared: Arc<Shared>, addrs: Vec<ServerAddr>) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let options = options(&shared.settings, events_tx);
    // With retry_on_initial_connect this returns at once; the connection
    // comes up (and the subscriptions below with it) in the background.
    let client = match async_nats::connect_with_options(addrs, options).await {
        Ok(client) => client,
        Err(e) => {
            shared.set_disconnected(&format!("nats client could not start: {e}"));
            return;
        }
    };
    let client = shared.client.get_or_init(|| client);
    match client.subscribe(shared.probes.subject.clone()).await {
        Ok(mut probes) => {
            let reader = Arc::clone(&shared);
            let cancel = shared.cancel.clone();
            shared.tasks.lock().push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        probe = probes.next() => match probe {
                            Some(probe) => reader.probes.arrived(&probe.payload),
                            None => return,
                        },
                    }
                }
            }));
        }
        Err(e) => tracing::error!(error = %e, "nats: could not subscribe the sync subject"),
    }
    for name in &shared.settings.node_channels {
        let Ok(channel) = ChannelName::parse(name, usize::MAX) else {
            continue;
        };
        if let Err(e) = shared.hold(client, channel).await {
            tracing::error!(error = %e, channel = %name, "nats: could not subscribe an order channel");
        }
    }
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => on_event(&shared, event),
                None => return,
            },
        }
    }
}

fn on_event(shared: &Arc<Shared>, event: Event) {
    match event {
        Event::Connected => {
            let generation = shared.generation.load(Ordering::SeqCst);
            tokio::spawn(confirm(Arc::clone(shared), generation));
        }
        Event::Disconnected => {
            if shared.set_disconnected("connection to nats lost") {
                shared.lost.store(true, Ordering::SeqCst);
                shared.handler.reconnecting();
            }
        }
        Event::ClientError(e) => {
            let mut state = shared.state.lock();
            if state.status != crate::broker::BrokerStatus::Connected {
                state.last_error = Some(e.to_string());
            }
            drop(state);
            if let Some(skipped) = shared.event_warnings.allow() {
                tracing::warn!(error = %e, similar_skipped = skipped, "nats unavailable; retrying");
            }
        }
        Event::SlowConsumer(sid) => {
            shared.slow_dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(skipped) = shared.event_warnings.allow() {
                tracing::warn!(
                    sid,
                    similar_skipped = skipped,
                    "nats dropped messages of a subscription whose reader fell behind"
                );
            }
        }
        Event::ServerError(e) => tracing::warn!(error = %e, "nats server error"),
        Event::LameDuckMode => tracing::warn!("nats server is shutting down (lame duck mode)"),
        Event::Draining | Event::Closed => {}
    }
}

/// Confirms the connection of `generation` with a round trip, retried
/// until it comes back or that connection is gone.
async fn confirm(shared: Arc<Shared>, generation: u64) {
    while !shared.cancel.is_cancelled() && shared.generation.load(Ordering::SeqCst) == generation {
        match shared.round_trip().await {
            Ok(()) => return shared.set_connected(generation),
            Err(e) => {
                tracing::debug!(error = %e, "nats: connect not confirmed yet");
                // A probe that failed at once (not one that timed out)
                // must not make this a busy loop.
                tokio::time::sleep(Backoff::FIRST).await;
            }
        }
    }
}
