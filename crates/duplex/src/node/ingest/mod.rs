//! The ingest stream (`ingest_stream`): backends `XADD` publications to a
//! Redis Stream and the nodes republish each entry once, in the stream's
//! order, through [`Node`]'s publish path (history channels get offsets
//! through the atomic append-and-publish).
//!
//! One node at a time reads, the one holding the stream's lease (for 3 ×
//! `node_heartbeat`, renewed every `node_heartbeat`); the others try to take
//! it every `node_heartbeat`. A new leader first makes the consumer group
//! if it is missing and claims every entry other consumers read but never
//! acknowledged (a dead leader's), publishes those, then new ones: read,
//! publish, acknowledge. Each publish carries the entry's idempotency id,
//! so an entry a crashed leader published but never acknowledged is not
//! published again. A leader stops reading as soon as its own clock says
//! the lease may have lapsed (counted from before the renewal was sent, so
//! it steps down before Redis lets another node in), and it renews before
//! any read that follows a Redis error. Bad entries are acknowledged,
//! dropped, counted and logged; Redis errors are waited out with jittered
//! backoff. The steps are the broker's ([`crate::broker::ingest`]).

mod entry;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::backoff::Backoff;
use crate::broker::ingest::{once_id, Done, Entry, IngestLog, Once, ReadFrom, Republish, MAX_WAIT};
use entry::{parse, Limits, Parsed};

/// Entries read at once.
const BATCH: usize = 100;

/// How long an entry's idempotency key lives while it is published but not
/// acknowledged (a crashed leader's, until another node or its restart
/// takes it over): a node that comes back within a day repeats nothing.
const UNACKED_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Starts and stops the node's consumer.
#[derive(Debug, Default)]
pub(super) struct Switch {
    started: AtomicBool,
    stop: CancellationToken,
    done: CancellationToken,
}

impl Node {
    /// Starts reading `ingest_stream` when it is set (Redis only: the
    /// config check refuses it otherwise).
    pub fn consume_ingest(&self) {
        let stream = self.config().ingest_stream.clone();
        if stream.is_empty() || self.inner.broker.ingest().is_err() {
            return;
        }
        if self.inner.ingest.started.swap(true, Relaxed) {
            return;
        }
        let every = self.config().node_heartbeat;
        let consumer = Consumer {
            node: self.clone(),
            holder: self.inner.id.clone(),
            lease: Lease::new(every),
            backoff: Backoff::new(self.config().redis_max_backoff),
            warnings: Throttle::new(1000),
            rejects: Throttle::new(1000),
            stop: self.inner.ingest.stop.clone(),
            stream,
        };
        let done = self.inner.ingest.done.clone();
        self.inner.tasks.spawn(async move {
            consumer.run().await;
            done.cancel();
        });
    }

    /// Stops the consumer and gives its lease back (shutdown, before the
    /// broker closes), waiting at most `redis_timeout` twice.
    pub(super) async fn stop_ingest(&self) {
        let ingest = &self.inner.ingest;
        if !ingest.started.load(Relaxed) {
            return;
        }
        ingest.stop.cancel();
        let wait = self.config().redis_timeout * 2;
        let _ = tokio::time::timeout(wait, ingest.done.cancelled()).await;
    }

    /// Publishes an entry's publication unless `id` was published before.
    async fn publish_ingested(&self, parsed: Parsed, id: &str) -> Result<Once, BrokerError> {
        Stats::bump(&self.inner.stats.messages_published);
        let Parsed {
            mut publication,
            exclude,
        } = parsed;
        let channel = publication.channel.clone();
        let history = self.history_rule(&channel).map(|r| history::options(&r));
        let mut excluded = None;
        match exclude
            .as_deref()
            .and_then(crate::control::split_connection_id)
        {
            Some((node, seq)) if node == self.inner.id => publication.exclude = Some(seq),
            Some((node, seq)) => excluded = Some(crate::broker::RemoteConnection { node, seq }),
            None => {}
        }
        let republish = Republish {
            publication,
            history,
            excluded,
            id,
            keep: UNACKED_KEEP,
        };
        let result = match self.inner.broker.ingest() {
            Ok(ingest) => ingest.publish_once(republish).await,
            Err(e) => Err(e),
        };
        self.count_failure(&channel, result)
    }
}

/// The lease as this node's clock sees it.
#[derive(Debug)]
struct Lease {
    ttl: Duration,
    every: Duration,
    /// Until when it is ours (from the send time of the last renewal).
    until: Option<Instant>,
    next_renewal: Instant,
    /// False after a Redis error: renew before reading again.
    confirmed: bool,
}

/// What renewing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Ours, confirmed by Redis.
    Yes,
    /// Ours by the clock, but Redis could not confirm it: do not read.
    Unsure,
    /// Another node's, or lapsed.
    No,
}

impl Lease {
    fn new(every: Duration) -> Self {
        Lease {
            ttl: every * 3,
            every,
            until: None,
            next_renewal: Instant::now(),
            confirmed: false,
        }
    }

    fn held(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() < t)
    }

    /// How long a read may wait: until the next renewal is due.
    fn wait(&self) -> Duration {
        self.next_renewal
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), MAX_WAIT)
    }

    /// How long an acknowledged entry's idempotency key still lives: past
    /// any publish a stale leader may still have in flight.
    fn acked_keep(&self) -> Duration {
        (self.ttl * 4).max(Duration::from_secs(60))
    }
}

/// The node's reader of the stream.
struct Consumer {
    node: Node,
    stream: String,
    /// The lease holder and consumer name: the node id.
    holder: String,
    lease: Lease,
    backoff: Backoff,
    /// Redis errors in the log, throttled.
    warnings: Throttle,
    /// Dropped entries in the log, throttled.
    rejects: Throttle,
    stop: CancellationToken,
}

impl Consumer {
    fn ingest(&self) -> Result<&dyn IngestLog, BrokerError> {
        self.node.inner.broker.ingest()
    }

    /// Follows, leads while it holds the lease, and gives it back at the end.
    async fn run(mut self) {
        loop {
            if self.renew().await == Held::Yes {
                tracing::info!(stream = %self.stream, "this node now reads the ingest stream");
                self.lead().await;
                if !self.stop.is_cancelled() {
                    tracing::info!(stream = %self.stream, "this node no longer reads the ingest stream (its lease went to another node or lapsed)");
                }
            }
            let pause = self.lease.every.mul_f64(rand::random_range(0.5..=1.0));
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if self.lease.held() {
            self.give_back().await;
        }
    }

    /// Takes or extends the lease when due (or after a Redis error).
    async fn renew(&mut self) -> Held {
        let now = Instant::now();
        if self.lease.confirmed && now < self.lease.next_renewal && self.lease.held() {
            return Held::Yes;
        }
        let answer = match self.ingest() {
            Ok(ingest) => {
                ingest
                    .lease(&self.stream, &self.holder, self.lease.ttl)
                    .await
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(true) => {
                self.lease.until = Some(now + self.lease.ttl);
                self.lease.next_renewal = now + self.lease.every;
                self.lease.confirmed = true;
                Held::Yes
            }
            Ok(false) => {
                self.lease.until = None;
                Held::No
            }
            Err(e) => {
                self.lease.confirmed = false;
                self.warn("the ingest stream's lease could not be renewed", &e);
                if self.lease.held() {
                    Held::Unsure
                } else {
                    self.lease.until = None;
                    Held::No
                }
            }
        }
    }

    /// Waits a backoff step (false: the node is stopping).
    async fn pause(&mut self) -> bool {
        let pause = self.backoff.next();
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }

    fn warn(&self, what: &str, e: &BrokerError) {
        if let Some(skipped) = self.warnings.allow() {
            tracing::warn!(stream = %self.stream, error = %e, similar_skipped = skipped, "{what}; retrying");
        }
    }

    /// While the lease holds: the dead leaders' entries first, then new ones.
    async fn lead(&mut self) {
        // Pending entries (own and claimed) still to go through, after this id.
        let mut cursor = None;
        // When to claim again; None: the takeover's claim is still to do.
        let mut next_sweep: Option<Instant> = None;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            match self.renew().await {
                Held::No => return,
                Held::Unsure => {
                    self.pause().await;
                    continue;
                }
                Held::Yes => {}
            }
            if next_sweep.is_none_or(|at| Instant::now() >= at) {
                // At the takeover every pending entry; later those idle a
                // whole lease (a read that reached Redis after its reader's
                // lease), which go out late rather than never.
                let min_idle = next_sweep.map_or(Duration::ZERO, |_| self.lease.ttl);
                let Some(moved) = self.claim(min_idle).await else {
                    continue;
                };
                if moved > 0 || next_sweep.is_none() {
                    cursor = Some("0".to_string());
                }
                next_sweep = Some(Instant::now() + self.lease.ttl);
            }
            let Some(next) = self.next_batch(&mut cursor).await else {
                continue;
            };
            if !self.handle(next).await {
                return;
            }
        }
    }

    /// Claims pending entries idle at least `min_idle` (None after an error).
    async fn claim(&mut self, min_idle: Duration) -> Option<u64> {
        let claimed = match self.ingest() {
            Ok(ingest) => ingest.claim(&self.stream, &self.holder, min_idle).await,
            Err(e) => Err(e),
        };
        match claimed {
            Ok(moved) => {
                if moved > 0 {
                    tracing::info!(stream = %self.stream, entries = moved, "took over ingest entries another node had read but not acknowledged");
                }
                Some(moved)
            }
            Err(e) => {
                self.failed("could not claim the ingest stream's pending entries", &e)
                    .await;
                None
            }
        }
    }

    /// After a Redis error: logged, the lease to be confirmed, a backoff step.
    async fn failed(&mut self, what: &str, e: &BrokerError) {
        self.warn(what, e);
        self.lease.confirmed = false;
        self.pause().await;
    }

    /// The next entries: pending ones after `cursor` (moving it on; none
    /// left ends that phase), else new ones. None: nothing to handle now.
    async fn next_batch(&mut self, cursor: &mut Option<String>) -> Option<Vec<Entry>> {
        let from = match cursor {
            Some(after) => ReadFrom::Pending(after.clone()),
            None => ReadFrom::New(self.lease.wait()),
        };
        let read = async {
            match self.ingest() {
                Ok(ingest) => ingest.read(&self.stream, &self.holder, from, BATCH).await,
                Err(e) => Err(e),
            }
        };
        let read = tokio::select! {
            _ = self.stop.cancelled() => return None,
            read = read => read,
        };
        match read {
            Ok(entries) if entries.is_empty() => {
                *cursor = None;
                self.backoff.reset();
                None
            }
            Ok(entries) => {
                if cursor.is_some() {
                    *cursor = entries.last().map(|e| e.id.clone());
                }
                self.backoff.reset();
                Some(entries)
            }
            Err(e) => {
                self.failed("could not read the ingest stream", &e).await;
                None
            }
        }
    }

    /// Publishes a batch in order and acknowledges what was done; false
    /// when the lease went or the node stops (the rest stays pending).
    async fn handle(&mut self, entries: Vec<Entry>) -> bool {
        let mut done = Vec::with_capacity(entries.len());
        let mut whole = true;
        for entry in &entries {
            match self.handle_one(entry).await {
                Some(channel) => done.push(Done {
                    id: entry.id.clone(),
                    channel,
                }),
                None => {
                    whole = false;
                    break;
                }
            }
        }
        self.acknowledge(&done).await && whole
    }

    /// One entry: published, found published, or dropped as bad (Some,
    /// with the channel it went to); None when it must wait for a leader.
    async fn handle_one(&mut self, entry: &Entry) -> Option<Option<ChannelName>> {
        let config = self.node.config();
        let limits = Limits {
            channel: config.max_channel_length,
            message: config.max_message_size,
        };
        drop(config);
        let parsed = match parse(entry, limits) {
            Ok(parsed) => parsed,
            Err(why) => {
                self.reject(entry, &why);
                return Some(None);
            }
        };
        let channel = parsed.publication.channel.clone();
        let id = once_id(&self.stream, &entry.id);
        let since = Instant::now();
        loop {
            if self.stop.is_cancelled() || self.renew().await == Held::No {
                return None;
            }
            if since.elapsed() > self.lease.ttl {
                // This node cannot publish (its own Redis subscriber is
                // down, say) while it still reaches Redis: another may.
                tracing::warn!(stream = %self.stream, entry = %entry.id, "this node could not publish an ingest entry for a whole lease: giving the lease to another node");
                self.give_back().await;
                return None;
            }
            let stats = &self.node.inner.stats;
            match self.node.publish_ingested(parsed.clone(), &id).await {
                Ok(Once::First(_)) => Stats::bump(&stats.ingest_published),
                Ok(Once::Repeat(_)) => Stats::bump(&stats.ingest_repeated),
                Err(BrokerError::Closed) => return None,
                Err(BrokerError::Unsupported(why)) => {
                    self.reject(entry, why);
                    return Some(None);
                }
                // Logged (throttled) by the node's publish path.
                Err(_) => {
                    self.lease.confirmed = false;
                    if !self.pause().await {
                        return None;
                    }
                    continue;
                }
            }
            self.backoff.reset();
            return Some(Some(channel));
        }
    }

    /// Gives the lease back now, so another node can take over at once.
    async fn give_back(&mut self) {
        if let Ok(ingest) = self.ingest() {
            let _ = ingest
                .lease(&self.stream, &self.holder, Duration::ZERO)
                .await;
        }
        self.lease.until = None;
    }

    fn reject(&self, entry: &Entry, why: &str) {
        Stats::bump(&self.node.inner.stats.ingest_rejected);
        if let Some(skipped) = self.rejects.allow() {
            tracing::warn!(stream = %self.stream, entry = %entry.id, reason = why, similar_skipped = skipped, "dropped a bad ingest stream entry (counted in ingest_rejected)");
        }
    }

    /// Acknowledges `done`, retrying through Redis errors while the lease
    /// holds; false when it could not (the entries stay pending, and their
    /// idempotency keys keep the next leader from repeating them).
    async fn acknowledge(&mut self, done: &[Done]) -> bool {
        if done.is_empty() {
            return true;
        }
        let keep = self.lease.acked_keep();
        loop {
            let acked = match self.ingest() {
                Ok(ingest) => ingest.ack(&self.stream, done, keep).await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(()) => return true,
                Err(e) => {
                    self.failed("could not acknowledge ingest stream entries", &e)
                        .await;
                    if self.stop.is_cancelled() || self.renew().await == Held::No {
                        return false;
                    }
                }
            }
        }
    }
}
