//! Channel → local subscribers, and fan-out of shared frame bytes.
//!
//! The index is split into shards by channel hash, each behind its own
//! read-write lock, so publishers and subscribers on different channels do
//! not contend, and concurrent fan-outs on one channel only share a read
//! lock. A publication is encoded at most once per wire format (plain bytes,
//! native JSON push) and every subscriber's queue gets a reference to the
//! same bytes. Delivery never blocks and never awaits: a subscriber either
//! takes the frame straight onto an idle socket or queues a reference to it
//! (see `conn::outbound`), and no hub lock is held meanwhile.
//!
//! The hub knows nothing of sockets or brokers: subscribers are anything that
//! implements [`Subscriber`], so it is tested here with a fake.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::payload::json_form;
use duplex_protocol::push;
use duplex_protocol::ws::{encode_frame, MessageKind, OpCode};
use indexmap::IndexMap;
use parking_lot::RwLock;

use crate::message::{Publication, Wire};
use crate::stats::Stats;

const SHARDS: usize = 64;
/// Channels with at least twice this many local subscribers fan out on
/// several threads, this many (or more) per thread.
const PARALLEL_CHUNK: usize = 256;

/// Why a frame did not reach a subscriber's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// Already closing; nothing to count.
    Closed,
    /// This delivery overflowed the queue; the subscriber is being cut.
    SlowConsumer,
}

/// A receiver of frames, as the hub sees it.
pub trait Subscriber: Send + Sync {
    /// Key unique on this node.
    fn key(&self) -> u64;
    /// Which encoding this subscriber reads.
    fn wire(&self) -> Wire;
    /// Queues a shared frame of `channel` (at `offset` in its history, if
    /// it keeps one) without blocking.
    fn deliver(
        &self,
        frame: &Bytes,
        channel: &ChannelName,
        offset: Option<u64>,
    ) -> Result<(), Undelivered>;
    /// Id and address, for the slow-consumer log line.
    fn describe(&self) -> (&str, SocketAddr);
}

type Subscribers<S> = IndexMap<u64, Arc<S>>;
type Shard<S> = RwLock<HashMap<ChannelName, Subscribers<S>>>;

/// The local subscription index of one node.
#[derive(Debug)]
pub struct Hub<S> {
    shards: Box<[Shard<S>]>,
    hasher: std::collections::hash_map::RandomState,
    stats: Arc<Stats>,
    /// Threads a large fan-out may use (the machine's parallelism).
    lanes: usize,
}

/// Outcome of one fan-out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Frames queued.
    pub delivered: usize,
    /// Subscribers cut as slow consumers by this message.
    pub slow: usize,
}

impl<S: Subscriber> Hub<S> {
    /// An empty hub reporting into `stats`.
    pub fn new(stats: Arc<Stats>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: Default::default(),
            stats,
            lanes: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn shard(&self, channel: &str) -> &Shard<S> {
        let i = self.hasher.hash_one(channel) as usize % SHARDS;
        &self.shards[i]
    }

    /// Adds a subscriber; true when it is the channel's first on this node
    /// (the caller then subscribes the broker).
    pub fn subscribe(&self, channel: &ChannelName, sub: &Arc<S>) -> bool {
        let mut shard = self.shard(channel.as_str()).write();
        let subs = shard.entry(channel.clone()).or_default();
        let first = subs.is_empty();
        subs.insert(sub.key(), Arc::clone(sub));
        first
    }

    /// Removes a subscriber; true when the channel has no local subscriber
    /// left (the caller then unsubscribes the broker).
    pub fn unsubscribe(&self, channel: &str, key: u64) -> bool {
        let mut shard = self.shard(channel).write();
        let Some(subs) = shard.get_mut(channel) else {
            return false;
        };
        if subs.swap_remove(&key).is_none() {
            return false;
        }
        if subs.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// How many channels have local subscribers (without listing them).
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }

    /// Whether `channel` has local subscribers.
    pub fn holds(&self, channel: &str) -> bool {
        self.shard(channel).read().contains_key(channel)
    }

    /// The local subscribers of `channel`, copied out of the lock.
    pub fn subscribers(&self, channel: &str) -> Vec<Arc<S>> {
        self.shard(channel)
            .read()
            .get(channel)
            .map(|subs| subs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether subscriber `key` is on `channel`.
    pub fn contains(&self, channel: &str, key: u64) -> bool {
        self.shard(channel)
            .read()
            .get(channel)
            .is_some_and(|subs| subs.contains_key(&key))
    }

    /// The channels each of `keys` is subscribed to, at most `max_each` per
    /// key (the bool says some were left out). One pass over every channel,
    /// each checked from its smaller side: for `/api/connections`, not hot.
    pub fn channels_of(
        &self,
        keys: &std::collections::HashSet<u64>,
        max_each: usize,
    ) -> HashMap<u64, (Vec<ChannelName>, bool)> {
        let mut out: HashMap<u64, (Vec<ChannelName>, bool)> = HashMap::new();
        let mut add = |key: u64, channel: &ChannelName| {
            let (list, truncated) = out.entry(key).or_default();
            if list.len() < max_each {
                list.push(channel.clone());
            } else {
                *truncated = true;
            }
        };
        for shard in self.shards.iter() {
            for (channel, subs) in shard.read().iter() {
                if subs.len() <= keys.len() {
                    for key in subs.keys().filter(|k| keys.contains(k)) {
                        add(*key, channel);
                    }
                } else {
                    for key in keys.iter().filter(|k| subs.contains_key(*k)) {
                        add(*key, channel);
                    }
                }
            }
        }
        out
    }

    /// Every channel with local subscribers and their count.
    pub fn channels(&self) -> Vec<(ChannelName, usize)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(shard.read().iter().map(|(c, s)| (c.clone(), s.len())));
        }
        all.sort();
        all
    }

    /// Copies the channel's subscribers (minus an excluded sender) out of
    /// the read lock, so delivery, which may write to sockets, holds no lock.
    fn snapshot(&self, p: &Publication) -> Vec<Arc<S>> {
        let shard = self.shard(p.channel.as_str()).read();
        let Some(subs) = shard.get(p.channel.as_str()) else {
            return Vec::new();
        };
        subs.iter()
            .filter(|(key, _)| p.exclude != Some(**key))
            .map(|(_, sub)| Arc::clone(sub))
            .collect()
    }

    /// Hands the publication to every local subscriber of its channel, on
    /// the calling thread.
    pub fn broadcast(&self, p: &Publication) -> Fanout {
        self.deliver_inline(p, &self.snapshot(p))
    }

    fn deliver_inline(&self, p: &Publication, subs: &[Arc<S>]) -> Fanout {
        self.deliver(&p.channel, offset_of(p), subs, &Frames::encode(p, subs))
    }

    /// Like [`Hub::broadcast`], but a large channel is split into chunks
    /// delivered on several runtime threads at once; returns when all are
    /// done, so the caller's next publication cannot overtake this one.
    pub async fn broadcast_parallel(hub: &Arc<Self>, p: Publication) -> Fanout
    where
        S: 'static,
    {
        let mut subs = hub.snapshot(&p);
        let lanes = hub.lanes.min(subs.len() / PARALLEL_CHUNK);
        if lanes <= 1 {
            return hub.deliver_inline(&p, &subs);
        }
        let frames = Arc::new(Frames::encode(&p, &subs));
        let per_lane = subs.len().div_ceil(lanes);
        // Every chunk is a task of its own, this thread's included: tokio
        // keeps the last task a worker spawned in a slot other workers
        // cannot steal from, so work done inline here would not overlap.
        let mut lanes = Vec::with_capacity(lanes);
        while !subs.is_empty() {
            let chunk = subs.split_off(subs.len().saturating_sub(per_lane));
            let (hub, frames, channel) = (Arc::clone(hub), Arc::clone(&frames), p.channel.clone());
            let offset = offset_of(&p);
            lanes.push(tokio::spawn(async move {
                hub.deliver(&channel, offset, &chunk, &frames)
            }));
        }
        let mut total = Fanout::default();
        for lane in lanes {
            if let Ok(out) = lane.await {
                total.delivered += out.delivered;
                total.slow += out.slow;
            }
        }
        total
    }

    fn deliver(
        &self,
        channel: &ChannelName,
        offset: Option<u64>,
        subs: &[Arc<S>],
        frames: &Frames,
    ) -> Fanout {
        let mut out = Fanout::default();
        let mut bytes = 0usize;
        for sub in subs {
            let frame = frames.get(sub.wire());
            match sub.deliver(frame, channel, offset) {
                Ok(()) => {
                    out.delivered += 1;
                    bytes += frame.len();
                }
                Err(Undelivered::Closed) => {}
                Err(Undelivered::SlowConsumer) => {
                    out.slow += 1;
                    let (id, addr) = sub.describe();
                    tracing::warn!(conn = id, %addr, %channel, "slow consumer disconnected: outbound queue full");
                }
            }
        }
        self.stats
            .deliveries
            .fetch_add(out.delivered as u64, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .delivered_bytes
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .slow_consumer_disconnects
            .fetch_add(out.slow as u64, std::sync::atomic::Ordering::Relaxed);
        out
    }
}

/// A publication's place in its channel's history, if it has one.
fn offset_of(p: &Publication) -> Option<u64> {
    p.position.as_ref().map(|at| at.offset)
}

/// One publication encoded once per wire format that its subscribers read.
#[derive(Debug)]
struct Frames {
    plain: Bytes,
    native: Bytes,
}

impl Frames {
    fn encode<S: Subscriber>(p: &Publication, subs: &[Arc<S>]) -> Frames {
        let wants = |wire| subs.iter().any(|s| s.wire() == wire);
        Frames {
            plain: if wants(Wire::Plain) {
                plain_frame(p)
            } else {
                Bytes::new()
            },
            native: if wants(Wire::Native) {
                native_frame(p)
            } else {
                Bytes::new()
            },
        }
    }

    fn get(&self, wire: Wire) -> &Bytes {
        match wire {
            Wire::Plain => &self.plain,
            Wire::Native => &self.native,
        }
    }
}

/// The frame a plain client gets: the payload, verbatim, keeping its kind.
pub fn plain_frame(p: &Publication) -> Bytes {
    let opcode = match p.kind {
        MessageKind::Text => OpCode::Text,
        MessageKind::Binary => OpCode::Binary,
    };
    encode_frame(opcode, &p.payload)
}

/// The frame a native client gets: a JSON push.
pub fn native_frame(p: &Publication) -> Bytes {
    push::message(
        p.channel.as_str(),
        &p.payload,
        json_form(&p.payload, p.kind),
        p.position.as_ref().map(|at| push::At {
            offset: at.offset,
            epoch: &at.epoch,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Debug)]
    struct Fake {
        key: u64,
        wire: Wire,
        got: Mutex<Vec<Bytes>>,
        capacity: usize,
    }

    impl Subscriber for Fake {
        fn key(&self) -> u64 {
            self.key
        }
        fn wire(&self) -> Wire {
            self.wire
        }
        fn deliver(
            &self,
            frame: &Bytes,
            _channel: &ChannelName,
            _offset: Option<u64>,
        ) -> Result<(), Undelivered> {
            let mut got = self.got.lock();
            if got.len() >= self.capacity {
                return Err(Undelivered::SlowConsumer);
            }
            got.push(frame.clone());
            Ok(())
        }
        fn describe(&self) -> (&str, SocketAddr) {
            ("fake", SocketAddr::from(([127, 0, 0, 1], 1)))
        }
    }

    fn fake(key: u64, wire: Wire, capacity: usize) -> Arc<Fake> {
        Arc::new(Fake {
            key,
            wire,
            got: Mutex::new(Vec::new()),
            capacity,
        })
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name, 255).unwrap()
    }

    fn publication(channel: &str, payload: &'static [u8]) -> Publication {
        Publication {
            channel: ch(channel),
            payload: Bytes::from_static(payload),
            kind: MessageKind::Text,
            exclude: None,
            position: None,
        }
    }

    #[test]
    fn first_and_last_subscriber_are_reported() {
        let hub = Hub::new(Arc::default());
        let (a, b) = (fake(1, Wire::Plain, 10), fake(2, Wire::Plain, 10));
        assert!(hub.subscribe(&ch("x"), &a));
        assert!(!hub.subscribe(&ch("x"), &b));
        assert!(!hub.subscribe(&ch("x"), &b), "idempotent");
        assert_eq!(hub.channels(), vec![(ch("x"), 2)]);
        assert_eq!(hub.channel_count(), 1);
        assert!(!hub.unsubscribe("x", 1));
        assert!(!hub.unsubscribe("x", 1), "already gone");
        assert!(hub.unsubscribe("x", 2));
        assert!(hub.channels().is_empty());
        assert!(!hub.unsubscribe("never", 2));
    }

    #[test]
    fn frames_are_encoded_once_and_shared() {
        let hub = Hub::new(Arc::default());
        let subs: Vec<_> = (0..4)
            .map(|i| {
                fake(
                    i,
                    if i % 2 == 0 {
                        Wire::Plain
                    } else {
                        Wire::Native
                    },
                    10,
                )
            })
            .collect();
        for s in &subs {
            hub.subscribe(&ch("news"), s);
        }
        hub.subscribe(&ch("other"), &fake(9, Wire::Plain, 10));
        let out = hub.broadcast(&publication("news", b"hello"));
        assert_eq!(
            out,
            Fanout {
                delivered: 4,
                slow: 0
            }
        );
        let frames: Vec<Bytes> = subs.iter().map(|s| s.got.lock()[0].clone()).collect();
        assert_eq!(&frames[0][..], b"\x81\x05hello");
        assert_eq!(frames[0].as_ptr(), frames[2].as_ptr(), "plain bytes shared");
        assert_eq!(
            frames[1].as_ptr(),
            frames[3].as_ptr(),
            "native bytes shared"
        );
        assert!(frames[1].ends_with(br#"{"push":"message","channel":"news","data":"hello"}"#));
    }

    #[test]
    fn binary_kind_is_kept_and_exclude_skips_sender() {
        let hub = Hub::new(Arc::default());
        let (a, b) = (fake(1, Wire::Plain, 10), fake(2, Wire::Plain, 10));
        hub.subscribe(&ch("x"), &a);
        hub.subscribe(&ch("x"), &b);
        let p = Publication {
            kind: MessageKind::Binary,
            exclude: Some(1),
            ..publication("x", b"\xff")
        };
        assert_eq!(hub.broadcast(&p).delivered, 1);
        assert!(a.got.lock().is_empty());
        assert_eq!(&b.got.lock()[0][..], b"\x82\x01\xff");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_fanout_reaches_everyone_in_order() {
        let mut hub = Hub::new(Arc::default());
        hub.lanes = 4;
        let hub = Arc::new(hub);
        let subs: Vec<_> = (0..1000).map(|i| fake(i, Wire::Plain, 100)).collect();
        for s in &subs {
            hub.subscribe(&ch("big"), s);
        }
        for payload in [&b"one"[..], b"two", b"three"] {
            let p = Publication {
                payload: Bytes::from_static(payload),
                ..publication("big", b"")
            };
            assert_eq!(Hub::broadcast_parallel(&hub, p).await.delivered, 1000);
        }
        for s in &subs {
            let got = s.got.lock();
            let bodies: Vec<&[u8]> = got.iter().map(|f| &f[2..]).collect();
            assert_eq!(bodies, [&b"one"[..], b"two", b"three"]);
        }
    }

    #[test]
    fn slow_subscriber_does_not_stop_the_others() {
        let stats = Arc::new(Stats::default());
        let hub = Hub::new(Arc::clone(&stats));
        let (slow, ok) = (fake(1, Wire::Plain, 1), fake(2, Wire::Plain, 100));
        hub.subscribe(&ch("x"), &slow);
        hub.subscribe(&ch("x"), &ok);
        for _ in 0..3 {
            hub.broadcast(&publication("x", b"m"));
        }
        assert_eq!(ok.got.lock().len(), 3);
        assert_eq!(
            stats
                .slow_consumer_disconnects
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }
}
