//! The cases, each against the broker ability traits and a [`Fixture`].
//!
//! "Nodes" are [`Fixture::NODES`] brokers on one backend (two on Redis;
//! the memory broker has one node, which then plays every part). A
//! publication that must NOT arrive is checked with a fence: the same
//! publisher next publishes on a channel the node does hold, and the node
//! must see the fence first. Order holds within a channel, not across
//! channels (the Redis intake takes channels in turn): cases that expect
//! several channels check each channel's sequence (`expect_each`).

use bytes::Bytes;
use duplex::broker::{BrokerError, BrokerStatus, RemoteConnection, Upstream};
use duplex::message::Publication;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::ws::MessageKind;

use crate::fixtures::{Entry, Fixture, KindRule, Node};
use crate::support;

pub(crate) use crate::history::*;
pub(crate) use crate::ingest::*;
pub(crate) use crate::presence::*;

pub(crate) fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name, usize::MAX).expect("valid channel name")
}

pub(crate) fn text(on: &str, data: &str) -> Publication {
    Publication {
        channel: channel(on),
        payload: Bytes::copy_from_slice(data.as_bytes()),
        kind: MessageKind::Text,
        exclude: None,
        position: None,
    }
}

pub(crate) async fn nodes<F: Fixture>(fixture: &F) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..F::NODES {
        nodes.push(fixture.node(&format!("n{i}")).await);
    }
    nodes
}

pub(crate) async fn subscribe(node: &Node, name: &str) {
    node.broker
        .pubsub()
        .subscribe(channel(name))
        .await
        .unwrap_or_else(|e| panic!("{} subscribes {name}: {e}", node.id));
}

async fn publish(node: &Node, publication: Publication) {
    let on = publication.channel.clone();
    node.broker
        .pubsub()
        .publish(publication)
        .await
        .unwrap_or_else(|e| panic!("{} publishes on {on}: {e}", node.id));
}

/// Takes the node's next publication and checks channel and bytes.
pub(crate) async fn expect(node: &mut Node, on: &str, data: &str) -> Publication {
    let got = node.seen.next().await;
    assert_eq!(
        (got.channel.as_str(), got.payload.as_ref()),
        (on, data.as_bytes()),
        "node {} got {got:?}",
        node.id
    );
    got
}

/// Takes as many publications as `wanted` lists and checks them channel by
/// channel: order holds within a channel, not across channels (the Redis
/// intake takes channels in turn).
async fn expect_each(node: &mut Node, wanted: &[(&str, &str)]) {
    let mut got = Vec::new();
    for _ in 0..wanted.len() {
        let p = node.seen.next().await;
        got.push((
            p.channel.to_string(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        ));
    }
    let by_channel = |list: Vec<(String, String)>| {
        let mut sorted = list;
        sorted.sort_by(|a, b| a.0.cmp(&b.0)); // stable: per-channel order kept
        sorted
    };
    let wanted: Vec<(String, String)> = wanted
        .iter()
        .map(|(c, d)| (c.to_string(), d.to_string()))
        .collect();
    assert_eq!(by_channel(got), by_channel(wanted), "node {}", node.id);
}

/// An `Ok` subscribe means confirmed: a publication right after it, from
/// any node, arrives.
pub(crate) async fn subscribe_is_confirmed_before_ok<F: Fixture>(fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "confirmed").await;
    }
    let last = nodes.len() - 1;
    publish(&nodes[last], text("confirmed", "first")).await;
    for node in &mut nodes {
        expect(node, "confirmed", "first").await;
    }
}

/// After an unsubscribe nothing more arrives on that channel; nothing ever
/// arrives on a channel the node never subscribed.
pub(crate) async fn unsubscribe_stops_delivery<F: Fixture>(fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "leaving").await;
        subscribe(node, "fence").await;
    }
    let publisher = nodes.len() - 1;
    publish(&nodes[publisher], text("leaving", "before")).await;
    for node in &mut nodes {
        expect(node, "leaving", "before").await;
    }
    nodes[0]
        .broker
        .pubsub()
        .unsubscribe(channel("leaving"))
        .await
        .expect("unsubscribe");
    publish(&nodes[publisher], text("leaving", "after")).await;
    publish(&nodes[publisher], text("never-subscribed", "nobody")).await;
    publish(&nodes[publisher], text("fence", "fence")).await;
    expect(&mut nodes[0], "fence", "fence").await;
    for node in nodes.iter_mut().skip(1) {
        expect_each(node, &[("leaving", "after"), ("fence", "fence")]).await;
    }
}

/// A publication reaches every node that holds the channel (the
/// publisher's own node included when it does) exactly once, and no node
/// that does not. A backend other nodes share says so (node heartbeats
/// and questions to every node rely on it).
pub(crate) async fn each_subscribed_node_gets_each_publication_once<F: Fixture>(fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        assert_eq!(node.broker.shared(), F::NODES > 1, "{}: shared()", node.id);
    }
    // With more than one node the publisher (the last) does not hold "fanout".
    let publisher = nodes.len() - 1;
    let holds = |n: usize| F::NODES == 1 || n != publisher;
    for (n, node) in nodes.iter().enumerate() {
        if holds(n) {
            subscribe(node, "fanout").await;
        }
        subscribe(node, "fence").await;
    }
    for i in 0..3 {
        publish(&nodes[publisher], text("fanout", &i.to_string())).await;
    }
    publish(&nodes[publisher], text("fence", "fence")).await;
    for (n, node) in nodes.iter_mut().enumerate() {
        let mut wanted = vec![("fence", "fence")];
        if holds(n) {
            wanted.extend([("fanout", "0"), ("fanout", "1"), ("fanout", "2")]);
        }
        expect_each(node, &wanted).await;
    }
}

/// Two publishers racing on one channel: each one's messages arrive in the
/// order it published them, on every node.
pub(crate) async fn each_publisher_keeps_its_order<F: Fixture>(fixture: F) {
    const EACH: usize = 300;
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "ordered").await;
    }
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let broker = nodes[p % nodes.len()].broker.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let message = text("ordered", &format!("{p}:{i}"));
                    broker.pubsub().publish(message).await.expect("publish");
                }
            })
        })
        .collect();
    for node in &mut nodes {
        let mut next = [0usize; 2];
        for _ in 0..2 * EACH {
            let got = node.seen.next().await;
            let data = std::str::from_utf8(&got.payload).expect("text");
            let (p, i) = data.split_once(':').expect("p:i");
            let p: usize = p.parse().expect("publisher");
            assert_eq!(i, next[p].to_string(), "node {} publisher {p}", node.id);
            next[p] += 1;
        }
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
}

/// Text stays text; binary stays binary on a backend that keeps the kind,
/// and is read back as text when its bytes are UTF-8 on one that does not.
pub(crate) async fn kinds_follow_the_backend_rule<F: Fixture>(fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "kinds").await;
    }
    let sent = [
        (MessageKind::Text, &b"caf\xc3\xa9"[..]),
        (MessageKind::Binary, &b"utf-8 bytes"[..]),
        (MessageKind::Binary, &[0xff, 0x00, 0x80][..]),
    ];
    let last = nodes.len() - 1;
    for (kind, payload) in sent {
        let publication = Publication {
            channel: channel("kinds"),
            payload: Bytes::from_static(payload),
            kind,
            exclude: None,
            position: None,
        };
        publish(&nodes[last], publication).await;
    }
    let expected = match F::KIND {
        KindRule::Kept => [MessageKind::Text, MessageKind::Binary, MessageKind::Binary],
        KindRule::InferredFromUtf8 => [MessageKind::Text, MessageKind::Text, MessageKind::Binary],
    };
    for node in &mut nodes {
        for ((_, payload), kind) in sent.iter().zip(expected) {
            let got = node.seen.next().await;
            assert_eq!(got.payload.as_ref(), *payload, "bytes travel verbatim");
            assert_eq!(got.kind, kind, "node {} payload {payload:?}", node.id);
        }
    }
}

/// `publish_excluding`: the node holding the excluded connection gets the
/// message marked to skip it, every other node unmarked; the mark is used
/// once. A single-node backend has no other node's connections: it just
/// publishes.
pub(crate) async fn excluding_a_connection_on_another_node<F: Fixture>(fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "excluding").await;
    }
    let holder = nodes.len() - 1;
    let holder_id = if F::NODES == 1 {
        "elsewhere".to_string()
    } else {
        nodes[holder].id.clone()
    };
    let excluded = RemoteConnection {
        node: &holder_id,
        seq: 7,
    };
    nodes[0]
        .broker
        .pubsub()
        .publish_excluding(text("excluding", "not for 7"), excluded)
        .await
        .expect("publish_excluding");
    publish(&nodes[0], text("excluding", "not for 7")).await;
    for (n, node) in nodes.iter_mut().enumerate() {
        let marked = (F::NODES > 1 && n == holder).then_some(7);
        let got = expect(node, "excluding", "not for 7").await;
        assert_eq!(got.exclude, marked, "node {}", node.id);
        let again = expect(node, "excluding", "not for 7").await;
        assert_eq!(again.exclude, None, "the same bytes again: marked once");
    }
}

/// A publication carrying `exclude` (this node's sender, e.g. a plain
/// client with echo off) comes back to this node with it, and to every
/// other node without it.
pub(crate) async fn a_local_sender_is_excluded_here_only<F: Fixture>(fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "echo").await;
    }
    let mut own = text("echo", "mine");
    own.exclude = Some(3);
    publish(&nodes[0], own).await;
    publish(&nodes[0], text("echo", "mine")).await;
    for (n, node) in nodes.iter_mut().enumerate() {
        let got = expect(node, "echo", "mine").await;
        assert_eq!(got.exclude, (n == 0).then_some(3), "node {}", node.id);
        let again = expect(node, "echo", "mine").await;
        assert_eq!(again.exclude, None, "node {}: marked once", node.id);
    }
}

/// While the backend is down the state says so and every operation fails
/// promptly (no hang); a subscribe refused meanwhile leaves nothing behind
/// once it is back. A backend that cannot go down stays connected.
pub(crate) async fn an_outage_is_reported_and_refused<F: Fixture>(mut fixture: F) {
    let mut node = fixture.node("n0").await;
    subscribe(&node, "kept").await;
    if !fixture.stop() {
        assert_eq!(node.broker.state().status, BrokerStatus::Connected);
        publish(&node, text("kept", "never down")).await;
        expect(&mut node, "kept", "never down").await;
        return;
    }
    support::eventually("the state turns disconnected", || async {
        let state = node.broker.state();
        state.status == BrokerStatus::Disconnected && state.last_error.is_some()
    })
    .await;
    // A generous deadline: refused, not hanging until the backend returns.
    let within = |what: &'static str, result| async move {
        match tokio::time::timeout(support::WAIT, result).await {
            Ok(Err::<(), BrokerError>(_)) => {}
            Ok(Ok(())) => panic!("{what} succeeded during the outage"),
            Err(_) => panic!("{what} hung during the outage"),
        }
    };
    let pubsub = node.broker.pubsub();
    within("publish", pubsub.publish(text("kept", "lost"))).await;
    within("subscribe", pubsub.subscribe(channel("refused"))).await;
    if let Ok(log) = node.broker.upstream() {
        let entry = Upstream {
            stream: "up".to_string(),
            fields: vec![("data", Bytes::from_static(b"lost"))],
        };
        within("upstream append", log.append(entry)).await;
    }
    fixture.restart();
    support::eventually("connected again", || async {
        node.broker.state().status == BrokerStatus::Connected
    })
    .await;
    publish(&node, text("refused", "not held")).await;
    publish(&node, text("kept", "fence")).await;
    expect(&mut node, "kept", "fence").await;
}

/// Subscriptions confirmed before the backend restarted are restored by
/// the broker itself: publications after the reconnect arrive.
pub(crate) async fn subscriptions_survive_a_restart<F: Fixture>(mut fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "durable").await;
    }
    if fixture.restart() {
        for node in &nodes {
            support::eventually("reconnected and resubscribed", || async {
                let state = node.broker.state();
                state.status == BrokerStatus::Connected && state.reconnects >= 1
            })
            .await;
        }
    }
    let last = nodes.len() - 1;
    publish(&nodes[last], text("durable", "after")).await;
    for node in &mut nodes {
        expect(node, "durable", "after").await;
    }
}

/// Upstream entries land in their stream with their fields in order and
/// bytes intact; a backend without streams says so (Unsupported).
pub(crate) async fn upstream_entries_are_appended_in_order<F: Fixture>(fixture: F) {
    let node = fixture.node("n0").await;
    let log = match node.broker.upstream() {
        Ok(log) => log,
        Err(BrokerError::Unsupported(why)) => {
            assert!(!F::UPSTREAM, "the backend lost its upstream: {why}");
            assert!(why.contains("--upstream-url"), "says what to use: {why}");
            return;
        }
        Err(e) => panic!("unexpected error: {e}"),
    };
    assert!(F::UPSTREAM, "the fixture says no upstream");
    let fields = |n: &str| {
        vec![
            ("event", Bytes::from_static(b"send")),
            ("data", Bytes::from(vec![0xff, 0x00, n.as_bytes()[0]])),
            ("conn", Bytes::from(format!("n0.{n}"))),
        ]
    };
    for n in ["1", "2"] {
        let entry = Upstream {
            stream: "up:chat".to_string(),
            fields: fields(n),
        };
        log.append(entry).await.expect("append");
    }
    let entries = fixture.upstream_entries("up:chat").await;
    let expected: Vec<Entry> = ["1", "2"]
        .iter()
        .map(|n| {
            fields(n)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect()
        })
        .collect();
    assert_eq!(entries, expected);
}

/// A backend without an ability (its group listed as not held in
/// `conformance!`) refuses it as [`BrokerError::Unsupported`], naming what
/// to configure instead.
pub(crate) async fn ability_not_held<F: Fixture>(fixture: F, group: &str) {
    let node = fixture.node("n0").await;
    let broker = &node.broker;
    let (refusal, names) = match group {
        "upstream" => (broker.upstream().err(), "--upstream-url"),
        "ingest" => (broker.ingest().err(), "--redis"),
        "history" => (broker.history().err(), "--redis"),
        "presence" => (broker.presence().err(), "--redis"),
        other => panic!("no conformance group {other:?}"),
    };
    match refusal {
        Some(BrokerError::Unsupported(why)) => {
            assert!(why.contains(names), "{group}: says what to use: {why}");
        }
        Some(e) => panic!("{group}: unexpected error {e}"),
        None => panic!("{group}: the backend holds it: run its cases instead"),
    }
}
