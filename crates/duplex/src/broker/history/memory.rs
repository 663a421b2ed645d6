//! History on the memory broker: a ring of publications per channel.
//!
//! Channels are spread over a fixed number of shards, each one async lock
//! held from the append through the hand-over to the node, so a channel's
//! offsets reach the node in order whoever publishes. Expiry is lazy: a
//! channel's data goes [`HistoryOptions::ttl`] after its last publish,
//! the channel itself (epoch and top) [`HistoryOptions::meta_ttl`] after;
//! a shard drops its expired channels at most once a second when touched,
//! so channels nobody publishes to any more are not kept. Memory is
//! bounded by `size` publications per channel.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_protocol::channel::ChannelName;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::Mutex;

use super::{new_epoch, History, HistoryOptions, HistoryPage, Query};
use crate::broker::memory::MemoryBroker;
use crate::broker::BrokerError;
use crate::message::{Position, Publication};

/// Shards of the channel table.
const SHARDS: usize = 16;
/// Least time between two sweeps of one shard.
const SWEEP: Duration = Duration::from_secs(1);
/// Longest expiry honoured (a century): `Instant` arithmetic cannot overflow.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `d` after `now`, capped at [`FOREVER`].
fn after(now: Instant, d: Duration) -> Instant {
    now + d.min(FOREVER)
}

/// Every channel's history on one memory broker.
#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug)]
struct Shard {
    channels: HashMap<ChannelName, Ring>,
    swept: Instant,
}

/// One channel's epoch, top offset and kept publications (ascending).
#[derive(Debug)]
struct Ring {
    epoch: Arc<str>,
    top: u64,
    entries: VecDeque<Publication>,
    /// When the publications expire.
    data_until: Instant,
    /// When the epoch and top expire.
    meta_until: Instant,
}

impl Default for Store {
    fn default() -> Self {
        let now = Instant::now();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    channels: HashMap::new(),
                    swept: now,
                })
            })
            .collect();
        Store { shards }
    }
}

impl Store {
    fn shard(&self, channel: &ChannelName) -> &Mutex<Shard> {
        let mut hasher = DefaultHasher::new();
        channel.as_str().hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % self.shards.len()]
    }
}

impl Shard {
    /// The channel's ring, alive at `now`: a new epoch when it had none
    /// or its meta expired; its publications dropped when they expired.
    fn ring(&mut self, channel: &ChannelName, now: Instant, options: &HistoryOptions) -> &mut Ring {
        if now.duration_since(self.swept) >= SWEEP {
            self.swept = now;
            self.channels.retain(|_, ring| ring.meta_until > now);
        }
        if self
            .channels
            .get(channel)
            .is_some_and(|r| r.meta_until <= now)
        {
            self.channels.remove(channel);
        }
        let ring = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| Ring {
                epoch: new_epoch(),
                top: 0,
                entries: VecDeque::new(),
                data_until: now,
                meta_until: after(now, options.meta_ttl),
            });
        if ring.data_until <= now {
            ring.entries.clear();
        }
        ring
    }
}

impl Ring {
    /// Records `publication` at the next offset, trimming to `size`.
    fn append(
        &mut self,
        publication: &Publication,
        options: &HistoryOptions,
        now: Instant,
    ) -> Position {
        self.top += 1;
        let position = Position {
            offset: self.top,
            epoch: Arc::clone(&self.epoch),
        };
        self.entries.push_back(Publication {
            exclude: None,
            position: Some(position.clone()),
            ..publication.clone()
        });
        while self.entries.len() > options.size {
            self.entries.pop_front();
        }
        self.data_until = after(now, options.ttl);
        self.meta_until = after(now, options.meta_ttl);
        position
    }

    fn page(&self, query: Query) -> HistoryPage {
        let wanted = |p: &&Publication| {
            let offset = p.position.as_ref().map_or(0, |at| at.offset);
            query.since.is_none_or(|since| offset > since)
        };
        let publications = if query.reverse {
            let newest = self.entries.iter().rev().filter(wanted);
            newest.take(query.limit).cloned().collect()
        } else {
            self.entries
                .iter()
                .filter(wanted)
                .take(query.limit)
                .cloned()
                .collect()
        };
        HistoryPage {
            top: Position {
                offset: self.top,
                epoch: Arc::clone(&self.epoch),
            },
            publications,
        }
    }
}

impl History for MemoryBroker {
    fn publish<'a>(
        &'a self,
        mut publication: Publication,
        options: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        async move {
            options.check()?;
            let mut shard = self.history.shard(&publication.channel).lock().await;
            let now = Instant::now();
            let position =
                shard
                    .ring(&publication.channel, now, options)
                    .append(&publication, options, now);
            publication.position = Some(position.clone());
            // Under the shard's lock: the node gets the channel's offsets in order.
            if self.holds(&publication.channel) {
                self.handler.handle_publication(publication).await;
            }
            drop(shard);
            Ok(position)
        }
        .boxed()
    }

    fn read<'a>(
        &'a self,
        channel: ChannelName,
        query: Query,
        options: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        async move {
            options.check()?;
            let mut shard = self.history.shard(&channel).lock().await;
            Ok(shard.ring(&channel, Instant::now(), options).page(query))
        }
        .boxed()
    }

    fn restart_epoch<'a>(
        &'a self,
        channel: ChannelName,
        seen: &'a Position,
        options: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        async move {
            options.check()?;
            let mut shard = self.history.shard(&channel).lock().await;
            let now = Instant::now();
            let ring = shard.ring(&channel, now, options);
            if ring.epoch == seen.epoch && ring.top < seen.offset {
                *ring = Ring {
                    epoch: new_epoch(),
                    top: 0,
                    entries: VecDeque::new(),
                    data_until: now,
                    meta_until: after(now, options.meta_ttl),
                };
            }
            Ok(Position {
                offset: ring.top,
                epoch: Arc::clone(&ring.epoch),
            })
        }
        .boxed()
    }
}
