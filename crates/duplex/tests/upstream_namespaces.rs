//! Per-namespace upstreams: a namespace's `upstream_stream` and
//! `upstream_url` take the upstream messages routed by its channels (a plain
//! client's frames, a native `send`/`rpc` naming a `channel`); the rest go to
//! the node's. Naming a channel needs the right to publish there.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use duplex::config::{PlainFrames, Settings};
use duplex::permissions::{Namespace, PublishRule};
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::redis_server::RedisServer;
use tokio::sync::mpsc;

const DEFAULT_STREAM: &str = "duplex:upstream";
const ORDERS_STREAM: &str = "orders:upstream";

use support::stream::{read_reply_entries, Fields};

/// A reader of one stream, entry by entry, as a worker would with `XREAD`.
struct StreamReader {
    conn: redis::aio::MultiplexedConnection,
    stream: &'static str,
    last: String,
}

impl StreamReader {
    async fn new(redis: &RedisServer, stream: &'static str) -> Self {
        StreamReader {
            conn: redis.connection().await,
            stream,
            last: "0".to_string(),
        }
    }

    /// The next entry, waiting for it (`XREAD BLOCK`).
    async fn next(&mut self) -> Fields {
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(support::WAIT.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.stream)
            .arg(&self.last)
            .query_async(&mut self.conn)
            .await
            .expect("XREAD");
        let Some((id, fields)) = read_reply_entries(&reply).into_iter().next() else {
            panic!("no entry in {} within the wait", self.stream)
        };
        self.last = id;
        fields
    }

    /// How many entries the stream holds.
    async fn len(&mut self) -> usize {
        redis::cmd("XLEN")
            .arg(self.stream)
            .query_async(&mut self.conn)
            .await
            .expect("XLEN")
    }
}

fn orders_namespace() -> Namespace {
    Namespace {
        pattern: "orders:*".into(),
        upstream_stream: Some(ORDERS_STREAM.into()),
        ..Default::default()
    }
}

async fn redis_node(redis: &RedisServer, namespaces: Vec<Namespace>) -> TestNode {
    let node = TestNode::start(Settings {
        redis: Some(redis.url()),
        plain_frames: Some(PlainFrames::Upstream),
        node_id: Some("n".into()),
        namespaces: Some(namespaces),
        ..settings()
    })
    .await;
    support::eventually("node on redis", || async { node.health().await == 200 }).await;
    node
}

#[tokio::test]
async fn a_namespace_stream_takes_its_channels_messages() {
    let redis = RedisServer::start();
    let node = redis_node(&redis, vec![orders_namespace()]).await;
    let mut orders = StreamReader::new(&redis, ORDERS_STREAM).await;
    let mut default = StreamReader::new(&redis, DEFAULT_STREAM).await;

    // Plain clients: the frame goes to their channel's namespace's stream.
    let mut plain_orders = Client::connect(&node.ws("/?channel=orders:1")).await;
    plain_orders.send_text("plain order").await;
    let entry = orders.next().await;
    assert_eq!(
        (entry["kind"].as_str(), entry["data"].as_str()),
        ("send", "plain order")
    );
    assert_eq!(entry["channel"], "orders:1");
    let mut plain_news = Client::connect(&node.ws("/?channel=news")).await;
    plain_news.send_text("plain news").await;
    let entry = default.next().await;
    assert_eq!(
        (entry["data"].as_str(), entry["channel"].as_str()),
        ("plain news", "news")
    );

    // Native `send`: the named channel picks the stream; no channel, the node's.
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client
        .command("send", json!({"data": {"n": 2}, "channel": "orders:2"}))
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let entry = orders.next().await;
    assert_eq!(
        (entry["data"].as_str(), entry["channel"].as_str()),
        (r#"{"n":2}"#, "orders:2")
    );
    let reply = client.command("send", json!({"data": "no channel"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let entry = default.next().await;
    assert_eq!(entry["data"], "no channel");
    assert!(!entry.contains_key("channel"), "{entry:?}");

    // Native `rpc` naming an orders channel: a worker on the orders stream answers.
    client
        .send_text(
            &json!({"id": 50, "method": "rpc", "params": {"method": "total", "data": [1, 2], "channel": "orders:3"}})
                .to_string(),
        )
        .await;
    let entry = orders.next().await;
    assert_eq!(
        (entry["kind"].as_str(), entry["method"].as_str()),
        ("rpc", "total")
    );
    assert_eq!(
        (entry["data"].as_str(), entry["channel"].as_str()),
        ("[1,2]", "orders:3")
    );
    assert_eq!(entry["reply_to"], "#node:n");
    let (status, _) = node
        .post_json(
            "/api/reply",
            &json!({"connection": entry["connection"], "request": entry["request"], "data": 3}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        client.next_json().await,
        json!({"id": 50, "result": {"data": 3}})
    );

    assert_eq!((orders.len().await, default.len().await), (3, 2));
    assert_eq!(node.info().await["stats"]["upstream_messages"], 4);
}

#[tokio::test]
async fn naming_a_channel_needs_the_right_to_publish_there() {
    let redis = RedisServer::start();
    let node = redis_node(
        &redis,
        vec![
            Namespace {
                pattern: "locked:*".into(),
                publish: PublishRule::Nobody,
                upstream_stream: Some(ORDERS_STREAM.into()),
                ..Default::default()
            },
            Namespace {
                pattern: "members:*".into(),
                publish: PublishRule::Subscribers,
                ..Default::default()
            },
        ],
    )
    .await;
    let mut orders = StreamReader::new(&redis, ORDERS_STREAM).await;
    let mut default = StreamReader::new(&redis, DEFAULT_STREAM).await;
    let mut client = Client::connect(&node.ws("/ws")).await;

    for (method, params, code) in [
        ("send", json!({"data": 1, "channel": "locked:1"}), 105),
        ("rpc", json!({"method": "m", "channel": "locked:1"}), 105),
        ("send", json!({"data": 1, "channel": "members:1"}), 105),
        ("rpc", json!({"method": "m", "channel": "#control"}), 105),
        ("send", json!({"data": 1, "channel": "#user:1"}), 105),
        ("send", json!({"data": 1, "channel": "has space"}), 103),
        // The channel is checked before the data.
        (
            "send",
            json!({"data": "!!", "encoding": "base64", "channel": "locked:1"}),
            105,
        ),
    ] {
        let reply = client.command(method, params.clone()).await;
        assert_eq!(reply["error"]["code"], code, "{method} {params}: {reply}");
    }
    // The appends happen before the replies: none was made.
    assert_eq!((orders.len().await, default.len().await), (0, 0));
    assert_eq!(node.info().await["stats"]["auth_denials"], 6);

    // Subscribed, the client may publish on members:1, so it may name it.
    client.subscribe(&["members:1"]).await;
    let reply = client
        .command("send", json!({"data": "hi", "channel": "members:1"}))
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let entry = default.next().await;
    assert_eq!(
        (entry["data"].as_str(), entry["channel"].as_str()),
        ("hi", "members:1")
    );
    assert_eq!(orders.len().await, 0);
}

/// A backend endpoint: tells its calls to the test and answers rpcs with its name.
async fn start_backend(name: &'static str) -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/calls",
        post(move |Json(call): Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(call.clone());
                let answer: Response = match call["kind"].as_str() {
                    Some("rpc") => Json(json!({"backend": name})).into_response(),
                    _ => StatusCode::NO_CONTENT.into_response(),
                };
                answer
            }
        }),
    );
    let url = support::serve_http(app, "/calls").await;
    (url, rx)
}

#[tokio::test]
async fn a_namespace_url_takes_its_channels_calls() {
    let (default_url, mut default_calls) = start_backend("default").await;
    let (orders_url, mut orders_calls) = start_backend("orders").await;
    let node = TestNode::start(Settings {
        upstream_url: Some(default_url),
        rpc_timeout: Some(Duration::from_secs(5)),
        node_id: Some("h".into()),
        namespaces: Some(vec![
            Namespace {
                pattern: "orders:*".into(),
                upstream_url: Some(orders_url),
                ..Default::default()
            },
            Namespace {
                pattern: "locked:*".into(),
                publish: PublishRule::Nobody,
                upstream_url: Some("http://127.0.0.1:9/never".into()),
                ..Default::default()
            },
        ]),
        ..settings()
    })
    .await;
    let mut client = Client::connect(&node.ws("/ws")).await;

    let reply = client
        .command(
            "rpc",
            json!({"method": "get", "data": {"id": 7}, "channel": "orders:7"}),
        )
        .await;
    assert_eq!(reply["result"]["data"], json!({"backend": "orders"}));
    let call = orders_calls.recv().await.expect("orders backend called");
    assert_eq!(
        (&call["kind"], &call["method"], &call["channel"]),
        (&json!("rpc"), &json!("get"), &json!("orders:7"))
    );
    assert_eq!(call["data"], json!({"id": 7}));
    assert!(is_connection_of(&call["connection"], "h"), "{call}");

    for params in [
        json!({"method": "get"}),
        json!({"method": "get", "channel": "news"}),
    ] {
        let reply = client.command("rpc", params.clone()).await;
        assert_eq!(
            reply["result"]["data"],
            json!({"backend": "default"}),
            "{params}"
        );
        let call = default_calls.recv().await.expect("default backend called");
        assert_eq!(
            call["channel"],
            params.get("channel").cloned().unwrap_or(Value::Null)
        );
    }

    let reply = client
        .command(
            "send",
            json!({"data": "AAEC", "encoding": "base64", "channel": "orders:8"}),
        )
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let call = orders_calls
        .recv()
        .await
        .expect("orders backend got the send");
    assert_eq!(
        (&call["kind"], &call["data"], &call["channel"]),
        (&json!("send"), &json!("AAEC"), &json!("orders:8"))
    );

    // Refused before any request: the next call the backends see is the allowed one.
    let reply = client
        .command("rpc", json!({"method": "get", "channel": "locked:1"}))
        .await;
    assert_eq!(reply["error"]["code"], 105, "{reply}");
    let reply = client
        .command("send", json!({"data": 1, "channel": "orders:9"}))
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let call = orders_calls
        .recv()
        .await
        .expect("orders backend got the send");
    assert_eq!(call["channel"], "orders:9");
    assert!(default_calls.try_recv().is_err());
}

#[tokio::test]
async fn a_namespace_url_alone_serves_only_its_channels() {
    let (orders_url, mut orders_calls) = start_backend("orders").await;
    let node = TestNode::start(Settings {
        namespaces: Some(vec![Namespace {
            pattern: "orders:*".into(),
            upstream_url: Some(orders_url),
            ..Default::default()
        }]),
        ..settings()
    })
    .await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client
        .command("rpc", json!({"method": "get", "channel": "orders:1"}))
        .await;
    assert_eq!(reply["result"]["data"], json!({"backend": "orders"}));
    assert_eq!(
        orders_calls.recv().await.expect("called")["channel"],
        "orders:1"
    );

    // Memory broker, no node-wide URL: anything else has no upstream (102).
    for (method, params) in [
        ("rpc", json!({"method": "get"})),
        ("rpc", json!({"method": "get", "channel": "news"})),
        ("send", json!({"data": 1})),
        ("send", json!({"data": 1, "channel": "news"})),
    ] {
        let reply = client.command(method, params.clone()).await;
        assert_eq!(reply["error"]["code"], 102, "{method} {params}: {reply}");
    }
}

#[tokio::test]
async fn a_namespace_stream_beats_the_node_url() {
    let redis = RedisServer::start();
    let (default_url, mut default_calls) = start_backend("default").await;
    let node = TestNode::start(Settings {
        redis: Some(redis.url()),
        upstream_url: Some(default_url),
        namespaces: Some(vec![orders_namespace()]),
        ..settings()
    })
    .await;
    support::eventually("node on redis", || async { node.health().await == 200 }).await;
    let mut orders = StreamReader::new(&redis, ORDERS_STREAM).await;
    let mut client = Client::connect(&node.ws("/ws")).await;

    // The namespace's own stream is more specific than the node's URL.
    let reply = client
        .command(
            "send",
            json!({"data": "to the stream", "channel": "orders:1"}),
        )
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let entry = orders.next().await;
    assert_eq!(
        (entry["data"].as_str(), entry["channel"].as_str()),
        ("to the stream", "orders:1")
    );
    // Other channels, and no channel, go to the node's URL.
    for params in [json!({"data": 1, "channel": "news"}), json!({"data": 2})] {
        let reply = client.command("send", params.clone()).await;
        assert_eq!(reply["result"], json!({}), "{reply}");
        let call = default_calls.recv().await.expect("node URL called");
        assert_eq!(call["data"], params["data"]);
    }
    assert_eq!(orders.len().await, 1);
}

/// A connection id of node `node`: `<node>.<n>` (n is per run, see docs/PROTOCOL.md).
fn is_connection_of(id: &serde_json::Value, node: &str) -> bool {
    id.as_str()
        .and_then(|id| id.strip_prefix(node)?.strip_prefix('.'))
        .is_some_and(|n| n.parse::<u64>().is_ok())
}
