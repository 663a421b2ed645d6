//! Several nodes on one nats-server share every channel, as on Redis: the
//! NATS broker end to end, with real nodes, WebSocket clients and a plain
//! NATS client playing the backend; clients' `send`/`rpc` go up to
//! JetStream streams that a worker reads with a durable pull consumer.

mod support;

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use duplex::config::Settings;
use duplex::permissions::Namespace;
use serde_json::{json, Value};
use support::client::Client;
use support::nats_server::{decode_entry, Entry, NatsServer};
use support::node::{settings, TestNode};

/// A node on `nats` with id `id`, once its broker is connected.
async fn node_on(nats: &NatsServer, id: &str) -> TestNode {
    let node = TestNode::start(Settings {
        nats: Some(nats.url()),
        nats_timeout: Some(Duration::from_secs(1)),
        node_id: Some(id.into()),
        node_heartbeat: Some(Duration::from_secs(1)),
        ..settings()
    })
    .await;
    support::eventually("node connected to nats", || async {
        node.health().await == 200
    })
    .await;
    node
}

/// A native client and its connection id.
async fn native(node: &TestNode) -> (Client, String) {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("connect", json!({})).await;
    let id = reply["result"]["client"]
        .as_str()
        .unwrap_or_else(|| panic!("client id in {reply}"))
        .to_string();
    (client, id)
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_clients_on_both() {
    let nats = NatsServer::start();
    let a = node_on(&nats, "na").await;
    let b = node_on(&nats, "nb").await;
    assert_eq!(a.info().await["broker"]["kind"], "nats");
    let mut on_a = Client::connect(&a.ws("/")).await;
    let mut on_b = Client::connect(&b.ws("/")).await;

    on_a.send_text("from A").await;
    assert_eq!(on_b.next_text().await, "from A");
    assert_eq!(on_a.next_text().await, "from A");

    let (status, body) = b
        .post_json(
            "/api/publish",
            &json!({"channel": "channel", "data": "from B's API"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    assert_eq!(on_a.next_text().await, "from B's API");
    assert_eq!(on_b.next_text().await, "from B's API");
}

/// `nats pub channel data` from any NATS client reaches WebSocket clients,
/// as `PUBLISH` does with Redis; a name with a `.` is escaped (`%2E`).
#[tokio::test]
async fn a_plain_nats_publish_reaches_websocket_clients() {
    let nats = NatsServer::start();
    let a = node_on(&nats, "na").await;
    let b = node_on(&nats, "nb").await;
    let mut plain = Client::connect(&a.ws("/")).await;
    let (mut native_b, _) = native(&b).await;
    native_b.subscribe(&["news.eu"]).await;

    let backend = nats.client().await;
    backend
        .publish("channel", Bytes::from_static(b"data from NATS"))
        .await
        .expect("publish");
    backend
        .publish("news%2Eeu", Bytes::from_static(br#"{"price":42}"#))
        .await
        .expect("publish");
    backend.flush().await.expect("flush");
    assert_eq!(plain.next_text().await, "data from NATS");
    assert_eq!(
        native_b.next_push().await,
        ("news.eu".to_string(), json!({"price": 42}))
    );

    // And the other way: what a client publishes, a NATS subscriber sees
    // verbatim. NATS confirms no SUB: the watcher's own probe coming back
    // shows the server holds it.
    let mut watcher = backend.subscribe("channel").await.expect("subscribe");
    backend
        .publish("channel", Bytes::from_static(b"probe"))
        .await
        .expect("publish");
    assert_eq!(next(&mut watcher).await.payload.as_ref(), b"probe");
    assert_eq!(plain.next_text().await, "probe");
    plain.send_text("from a browser").await;
    let seen = next(&mut watcher).await;
    assert_eq!(seen.payload.as_ref(), b"from a browser");
}

/// The next message of a plain NATS subscription, within the wait.
async fn next(watcher: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(support::WAIT, futures_util::StreamExt::next(watcher))
        .await
        .expect("in time")
        .expect("a message")
}

/// nats-server restarts: the node reconnects and subscribes again by
/// itself, and a client that stayed connected gets what is published after.
#[tokio::test]
async fn delivery_resumes_after_nats_restarts() {
    let mut nats = NatsServer::start();
    let a = node_on(&nats, "na").await;
    let b = node_on(&nats, "nb").await;
    let mut on_a = Client::connect(&a.ws("/")).await;
    let (mut on_b, _) = native(&b).await;
    on_b.subscribe(&["channel"]).await;

    nats.restart();
    for node in [&a, &b] {
        support::eventually("reconnected, resubscribed", || async {
            let broker = &node.info().await["broker"];
            broker["status"] == "connected" && broker["reconnects"].as_u64() >= Some(1)
        })
        .await;
    }
    assert_eq!(a.health().await, 200);
    nats.publish("channel", b"after the restart").await;
    assert_eq!(on_a.next_text().await, "after the restart");
    assert_eq!(
        on_b.next_push().await,
        ("channel".to_string(), json!("after the restart"))
    );
}

/// `GET /api/connections` on a node, once both nodes answered.
async fn complete_list(node: &TestNode) -> Value {
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let (status, body) = node.get_json("/api/connections").await;
        assert_eq!(status, 200, "{body}");
        if body["incomplete"] == false && body["nodes"] == 2 {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no complete list from 2 nodes: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What rides on the nodes' own channels (`#control`, `#node:<id>`,
/// `#conn:<id>`) works across nodes on NATS too: listing every node's
/// connections, reaching and disconnecting a connection held by another.
#[tokio::test]
async fn connections_are_listed_reached_and_disconnected_across_nodes() {
    let nats = NatsServer::start();
    let a = node_on(&nats, "na").await;
    let b = node_on(&nats, "nb").await;
    let (mut target, id) = native(&a).await;
    let (mut other, _) = native(&a).await;
    let _on_b = Client::connect(&b.ws("/")).await;

    let list = complete_list(&b).await;
    let mut nodes: Vec<&str> = list["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["node"].as_str().expect("node"))
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["na", "na", "nb"], "{list}");

    let (status, body) = b
        .post_json(
            "/api/publish",
            &json!({"channel": format!("#conn:{id}"), "data": {"only": "you"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        target.next_push().await,
        (format!("#conn:{id}"), json!({"only": "you"}))
    );
    let (status, body) = b
        .post_json("/api/disconnect", &json!({"connection": id, "code": 4001}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(target.expect_close().await.code, 4001);
    let reply = other.command("ping", json!({})).await;
    assert!(reply["result"].is_object(), "untouched: {reply}");

    // A backend with only a NATS client gives the same orders, on the
    // holding node's own channel (`#node:na`, its own subject).
    let (mut third, third_id) = native(&a).await;
    let order = json!({"op": "disconnect", "connection": third_id}).to_string();
    nats.publish("#node:na", order.as_bytes()).await;
    assert_eq!(third.expect_close().await.code, 3003);
    let reply = other.command("ping", json!({})).await;
    assert!(reply["result"].is_object(), "untouched: {reply}");
}

/// A node started while NATS is down starts degraded (503, the reason in
/// `/api/info`) and connects once NATS comes up.
#[tokio::test]
async fn a_node_started_before_nats_connects_when_it_comes_up() {
    let mut nats = NatsServer::start();
    nats.kill();
    let node = TestNode::start(Settings {
        nats: Some(nats.url()),
        nats_timeout: Some(Duration::from_secs(1)),
        ..settings()
    })
    .await;
    support::eventually("a degraded start says why", || async {
        let broker = &node.info().await["broker"];
        broker["kind"] == "nats"
            && broker["status"] == "disconnected"
            && broker["last_error"].is_string()
    })
    .await;
    assert_eq!(node.health().await, 503);
    nats.restart();
    support::eventually("connected once NATS is up", || async {
        node.health().await == 200
    })
    .await;
    let mut client = Client::connect(&node.ws("/")).await;
    nats.publish("channel", b"hello").await;
    assert_eq!(client.next_text().await, "hello");
}

/// A publish excluding a connection held by another node (`exclude` on
/// `/api/publish`) skips exactly that one.
#[tokio::test]
async fn an_excluded_connection_on_another_node_is_skipped() {
    let nats = NatsServer::start();
    let a = node_on(&nats, "na").await;
    let b = node_on(&nats, "nb").await;
    let (mut sender, id) = native(&a).await;
    let (mut peer, _) = native(&a).await;
    sender.subscribe(&["room"]).await;
    peer.subscribe(&["room"]).await;
    for (data, exclude) in [("not for the sender", Some(&id)), ("for all", None)] {
        let mut body = json!({"channel": "room", "data": data});
        if let Some(id) = exclude {
            body["exclude"] = json!(id);
        }
        let (status, reply) = b.post_json("/api/publish", &body).await;
        assert_eq!(status, 200, "{reply}");
    }
    assert_eq!(peer.next_push().await.1, json!("not for the sender"));
    assert_eq!(peer.next_push().await.1, json!("for all"));
    assert_eq!(sender.next_push().await.1, json!("for all"), "skipped once");
}

/// The prefix of the upstream tests: every subject and stream name under it.
const UP_PREFIX: &str = "duplex.";

/// A node on `nats` whose `orders:*` channels go up to their own stream.
async fn upstream_node(nats: &NatsServer, id: &str) -> TestNode {
    let node = TestNode::start(Settings {
        nats: Some(nats.url()),
        nats_prefix: Some(UP_PREFIX.into()),
        nats_timeout: Some(Duration::from_secs(1)),
        node_id: Some(id.into()),
        namespaces: Some(vec![Namespace {
            pattern: "orders:*".into(),
            upstream_stream: Some("orders.upstream".into()),
            ..Default::default()
        }]),
        ..settings()
    })
    .await;
    support::eventually("node connected to nats", || async {
        node.health().await == 200
    })
    .await;
    node
}

/// A backend worker: a durable pull consumer `workers` on the JetStream
/// stream of upstream stream `stream`, as docs/UPSTREAM.md ("On NATS") says.
async fn worker(nats: &NatsServer, stream: &str) -> jetstream::consumer::PullConsumer {
    let context = jetstream::new(nats.client().await);
    let name = duplex::broker::nats::upstream::stream_name(UP_PREFIX, stream);
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let stream = loop {
        match context.get_stream(&name).await {
            Ok(stream) => break stream,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the node did not make {name}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "workers",
            jetstream::consumer::pull::Config {
                durable_name: Some("workers".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .expect("a durable consumer");
    consumer
}

/// The worker's next entry (one fetch, waiting up to the wait),
/// acknowledged, as (name, bytes) pairs in order.
async fn take(consumer: &jetstream::consumer::PullConsumer) -> Entry {
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(support::WAIT)
        .messages()
        .await
        .expect("a fetch");
    let message = futures_util::StreamExt::next(&mut batch)
        .await
        .expect("an entry within the wait")
        .expect("a message");
    let headers = message.headers.clone().unwrap_or_default();
    let entry = decode_entry(&headers, &message.payload);
    message.double_ack().await.expect("ack");
    entry
}

fn field<'a>(entry: &'a Entry, name: &str) -> &'a [u8] {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
        .unwrap_or_else(|| panic!("no {name} in {entry:?}"))
}

/// A native client's `send` on a channel whose namespace names a stream
/// lands in that stream's JetStream stream, bytes and fields exactly as on
/// Redis, acknowledged once stored; a worker that starts later reads every
/// entry with its durable consumer and acks it; a `send` naming no channel
/// goes to the node's stream.
#[tokio::test]
async fn a_send_goes_up_to_jetstream_exactly() {
    let nats = NatsServer::start();
    let node = upstream_node(&nats, "na").await;
    let (mut client, id) = native(&node).await;
    let text = "h\u{e9}llo\r\n \"x\"";
    for params in [
        json!({"data": "AAEC/w==", "encoding": "base64", "channel": "orders:7"}),
        json!({"data": text, "channel": "orders:8"}),
        json!({"data": {"no": "channel"}}),
    ] {
        let reply = client.command("send", params).await;
        assert_eq!(reply["result"], json!({}), "{reply}");
    }

    let orders = worker(&nats, "orders.upstream").await;
    let first = take(&orders).await;
    let names: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "kind",
            "data",
            "encoding",
            "connection",
            "user",
            "node",
            "ts",
            "channel"
        ]
    );
    assert_eq!(field(&first, "kind"), b"send");
    assert_eq!(field(&first, "data"), [0x00, 0x01, 0x02, 0xff]);
    assert_eq!(field(&first, "encoding"), b"binary");
    assert_eq!(field(&first, "connection"), id.as_bytes());
    assert_eq!(field(&first, "user"), b"");
    assert_eq!(field(&first, "node"), b"na");
    assert_eq!(field(&first, "channel"), b"orders:7");
    let ts: u64 = std::str::from_utf8(field(&first, "ts"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ts > 1_700_000_000_000);
    let second = take(&orders).await;
    assert_eq!(field(&second, "data"), text.as_bytes());
    assert_eq!(field(&second, "encoding"), b"text");
    assert_eq!(field(&second, "channel"), b"orders:8");

    let own = worker(&nats, "duplex:upstream").await;
    let third = take(&own).await;
    assert_eq!(field(&third, "data"), br#"{"no":"channel"}"#);
    assert!(!third.iter().any(|(k, _)| k == "channel"), "{third:?}");
    assert_eq!(node.stat("upstream_messages").await, 3);
}

/// An `rpc` goes up to the JetStream stream; the worker answers with a
/// plain NATS publish on the entry's `reply_to` (the node's `#node:<id>`
/// subject, with the prefix), and the client gets the answer.
#[tokio::test]
async fn an_rpc_is_answered_by_a_jetstream_worker() {
    let nats = NatsServer::start();
    let node = upstream_node(&nats, "na").await;
    let (mut client, id) = native(&node).await;
    let command = json!({"id": 7, "method": "rpc", "params": {"method": "sum", "data": [1, 2]}});
    client.send_text(&command.to_string()).await;

    let own = worker(&nats, "duplex:upstream").await;
    let entry = take(&own).await;
    assert_eq!(field(&entry, "kind"), b"rpc");
    assert_eq!(field(&entry, "method"), b"sum");
    assert_eq!(field(&entry, "data"), b"[1,2]");
    assert_eq!(field(&entry, "encoding"), b"json");
    assert_eq!(field(&entry, "connection"), id.as_bytes());
    let reply_to = std::str::from_utf8(field(&entry, "reply_to")).unwrap();
    assert_eq!(reply_to, "duplex.#node:na");
    let request = std::str::from_utf8(field(&entry, "request")).unwrap();
    let order = json!({"op": "reply", "connection": id, "request": request, "data": {"sum": 3}});
    nats.publish(reply_to, order.to_string().as_bytes()).await;
    assert_eq!(
        client.next_json().await,
        json!({"id": 7, "result": {"data": {"sum": 3}}})
    );
}

/// nats-server restarts with its JetStream store: what was appended before
/// is still there, and appends go on after the node reconnects. A server
/// that comes back without its store gets the stream made again.
#[tokio::test]
async fn upstream_entries_survive_a_nats_restart() {
    let mut nats = NatsServer::start();
    let node = upstream_node(&nats, "na").await;
    let (mut client, _) = native(&node).await;
    let send = |n: u32| json!({"data": format!("entry {n}"), "channel": "orders:1"});
    assert_eq!(client.command("send", send(1)).await["result"], json!({}));

    nats.restart();
    support::eventually("reconnected", || async {
        node.info().await["broker"]["reconnects"].as_u64() >= Some(1) && node.health().await == 200
    })
    .await;
    assert_eq!(client.command("send", send(2)).await["result"], json!({}));
    let data = |entries: Vec<Entry>| -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8(field(e, "data").to_vec()).unwrap())
            .collect()
    };
    let entries = nats.upstream_entries(UP_PREFIX, "orders.upstream").await;
    assert_eq!(data(entries), ["entry 1", "entry 2"]);

    nats.restart_empty();
    support::eventually("reconnected again", || async {
        node.info().await["broker"]["reconnects"].as_u64() >= Some(2) && node.health().await == 200
    })
    .await;
    assert_eq!(client.command("send", send(3)).await["result"], json!({}));
    let entries = nats.upstream_entries(UP_PREFIX, "orders.upstream").await;
    assert_eq!(data(entries), ["entry 3"]);
}
