//! Micro-benchmark of hub fan-out: one publication to every local subscriber
//! of one channel, through `Hub::broadcast` (subscriber snapshot under the
//! shard's read lock, one encoding per wire format, one shared `Bytes` handed
//! to each subscriber, stats). No sockets: the subscriber is a stand-in for
//! `Conn`, whose `deliver` without an attached socket locks the connection's
//! queue and appends a reference to the frame; this one does the same into a
//! short ring, so memory stays flat however many iterations divan runs.
//! Run with `cargo bench -p duplex --bench fanout`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use duplex::hub::{Hub, Subscriber, Undelivered};
use duplex::message::Publication;
use duplex::message::Wire;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::ws::MessageKind;
use parking_lot::Mutex;

fn main() {
    divan::main();
}

/// Frames each stand-in queue keeps; older ones are dropped as a writer would.
const KEEP: usize = 8;

/// Payload size of the published message.
const PAYLOAD: usize = 128;

/// A connection without a socket: a locked queue of shared frames, like `Outbound`.
struct Sink {
    key: u64,
    wire: Wire,
    queue: Mutex<VecDeque<Bytes>>,
}

impl Subscriber for Sink {
    fn key(&self) -> u64 {
        self.key
    }

    fn wire(&self) -> Wire {
        self.wire
    }

    fn deliver(
        &self,
        frame: &Bytes,
        _channel: &duplex_protocol::channel::ChannelName,
        _offset: Option<u64>,
    ) -> Result<(), Undelivered> {
        let mut queue = self.queue.lock();
        if queue.len() >= KEEP {
            queue.pop_front();
        }
        queue.push_back(frame.clone());
        Ok(())
    }

    fn describe(&self) -> (&str, SocketAddr) {
        ("bench", SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// A hub with `subs` subscribers of `wire` on one channel, their queues already
/// full, and a 128-byte JSON publication to that channel.
fn setup(subs: usize, wire: Wire) -> (Hub<Sink>, Publication) {
    let channel = ChannelName::parse("bench", 255).expect("valid channel name");
    let hub = Hub::new(Arc::default());
    let filler = Bytes::from_static(b"\x81\x00");
    for key in 0..subs as u64 {
        let sink = Arc::new(Sink {
            key,
            wire,
            queue: Mutex::new(std::iter::repeat_n(filler.clone(), KEEP).collect()),
        });
        hub.subscribe(&channel, &sink);
    }
    let mut payload = b"{\"d\":\"".to_vec();
    payload.resize(PAYLOAD - 2, b'x');
    payload.extend_from_slice(b"\"}");
    let publication = Publication {
        channel,
        payload: Bytes::from(payload),
        kind: MessageKind::Text,
        exclude: None,
        position: None,
    };
    let out = hub.broadcast(&publication);
    assert_eq!(out.delivered, subs, "every stand-in must take the frame");
    (hub, publication)
}

/// Fan-out to plain-mode subscribers: one verbatim text frame shared by all.
#[divan::bench(args = [1, 100, 2000])]
fn plain(bencher: Bencher, subs: usize) {
    let (hub, publication) = setup(subs, Wire::Plain);
    bencher
        .counter(ItemsCount::new(subs))
        .bench_local(|| hub.broadcast(black_box(&publication)));
}

/// Fan-out to native (`/ws`) subscribers: one JSON push encoded once, shared by all.
#[divan::bench(args = [1, 100, 2000])]
fn native(bencher: Bencher, subs: usize) {
    let (hub, publication) = setup(subs, Wire::Native);
    bencher
        .counter(ItemsCount::new(subs))
        .bench_local(|| hub.broadcast(black_box(&publication)));
}
