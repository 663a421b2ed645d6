//! The HTTP upstream (`upstream_url`): with no Redis, client `rpc`s and
//! `send`s are POSTed to a backend endpoint and its answer is relayed.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use duplex::config::Settings;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use tokio::sync::mpsc;

/// A backend endpoint written as a user would: answers by `method`.
async fn backend(calls: mpsc::UnboundedSender<Value>, Json(call): Json<Value>) -> Response {
    let _ = calls.send(call.clone());
    match call["method"].as_str() {
        Some("echo") => Json(json!({"echo": call["data"], "user": call["user"]})).into_response(),
        Some("refuse") => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": {"code": 4022, "message": "not today"}})),
        )
            .into_response(),
        Some("crash") => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        Some("slow") => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!("too late")).into_response()
        }
        // `send` (no method): acknowledged with no body.
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn start_backend() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route("/calls", post(move |body| backend(tx.clone(), body)));
    let url = support::serve_http(app, "/calls").await;
    (url, rx)
}

async fn stat(node: &TestNode, name: &str) -> u64 {
    node.info().await["stats"][name].as_u64().expect("stat")
}

#[tokio::test]
async fn rpcs_and_sends_go_to_the_http_upstream() {
    let (url, mut calls) = start_backend().await;
    let node = TestNode::start(Settings {
        upstream_url: Some(url),
        rpc_timeout: Some(Duration::from_millis(500)),
        node_id: Some("h".into()),
        ..settings()
    })
    .await;
    let mut client = Client::connect(&node.ws("/ws")).await;

    let reply = client
        .command("rpc", json!({"method": "echo", "data": {"q": 1}}))
        .await;
    assert_eq!(
        reply["result"]["data"],
        json!({"echo": {"q": 1}, "user": ""})
    );
    let call = calls.recv().await.expect("the backend got the call");
    assert_eq!(call["kind"], "rpc");
    assert_eq!(call["method"], "echo");
    assert_eq!(call["data"], json!({"q": 1}));
    assert!(is_connection_of(&call["connection"], "h"), "{call}");
    assert_eq!(call["node"], "h");
    assert!(call["request"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(call["ts"].as_u64().unwrap() > 1_700_000_000_000);

    let reply = client
        .command("send", json!({"data": "AAEC", "encoding": "base64"}))
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let call = calls.recv().await.expect("the backend got the send");
    assert_eq!(
        (&call["kind"], &call["data"], &call["encoding"]),
        (&json!("send"), &json!("AAEC"), &json!("base64"))
    );
    assert_eq!(stat(&node, "upstream_messages").await, 1);

    // The backend's own error, a crash, and no answer in time.
    for (method, code) in [("refuse", 4022), ("crash", 115), ("slow", 113)] {
        let reply = client.command("rpc", json!({"method": method})).await;
        assert_eq!(reply["error"]["code"], code, "{method}: {reply}");
    }
    let reply = client.command("rpc", json!({"method": "refuse"})).await;
    assert_eq!(reply["error"]["message"], "not today");
    assert_eq!(stat(&node, "rpc_pending").await, 0);
    assert_eq!(stat(&node, "rpc_timeouts").await, 1);
}

#[tokio::test]
async fn an_unreachable_upstream_is_115() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/calls", closed.local_addr().expect("addr"));
    drop(closed);
    let node = TestNode::start(Settings {
        upstream_url: Some(url),
        ..settings()
    })
    .await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("rpc", json!({"method": "m"})).await;
    assert_eq!(reply["error"]["code"], 115, "{reply}");
    assert_eq!(reply["error"]["temporary"], true);
    let reply = client.command("send", json!({"data": 1})).await;
    assert_eq!(reply["error"]["code"], 115, "{reply}");
    assert_eq!(stat(&node, "upstream_failures").await, 1);
}

/// A backend that refuses everything with 500, recording what it got.
async fn start_refusing_backend() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/frames",
        post(move |Json(call): Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(call);
                (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response()
            }
        }),
    );
    let url = support::serve_http(app, "/frames").await;
    (url, rx)
}

/// Without Redis, `plain_frames = both` sends a plain client's frames to its
/// channel and POSTs them to the HTTP upstream; a refused POST is counted
/// and the client stays.
#[tokio::test]
async fn plain_frames_go_to_the_http_upstream_without_redis() {
    let (url, mut calls) = start_backend().await;
    let node = TestNode::start(Settings {
        upstream_url: Some(url),
        plain_frames: Some(duplex::config::PlainFrames::Both),
        node_id: Some("p".into()),
        ..settings()
    })
    .await;
    let mut sender = Client::connect(&node.ws("/?channel=orders")).await;
    let mut listener = Client::connect(&node.ws("/?channel=orders")).await;
    sender.send_text("order 1").await;
    assert_eq!(listener.next_text().await, "order 1", "to the channel too");
    let call = calls.recv().await.expect("the backend got the frame");
    assert!(is_connection_of(&call["connection"], "p"), "{call}");
    assert_eq!(
        (&call["kind"], &call["data"], &call["channel"],),
        (&json!("send"), &json!("order 1"), &json!("orders"),)
    );
    assert!(call.get("encoding").is_none(), "{call}");
    sender.send_binary(&[0, 255]).await;
    let call = calls
        .recv()
        .await
        .expect("the backend got the binary frame");
    assert_eq!(
        (&call["data"], &call["encoding"]),
        (&json!("AP8="), &json!("base64"))
    );
    support::eventually("both frames counted", || async {
        stat(&node, "upstream_messages").await == 2
    })
    .await;

    let (down, mut refused) = start_refusing_backend().await;
    let node = TestNode::start(Settings {
        upstream_url: Some(down),
        plain_frames: Some(duplex::config::PlainFrames::Upstream),
        ..settings()
    })
    .await;
    let mut client = Client::connect(&node.ws("/?channel=orders")).await;
    client.send_text("lost").await;
    assert_eq!(refused.recv().await.expect("posted")["data"], "lost");
    support::eventually("the refused frame is counted", || async {
        stat(&node, "upstream_failures").await == 1
            && stat(&node, "plain_publish_dropped").await == 1
    })
    .await;
    let (status, _) = node
        .post_json(
            "/api/publish",
            &json!({"channel": "orders", "data": "still here"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(client.next_text().await, "still here", "the client stays");
}

/// A connection id of node `node`: `<node>.<n>` (n is per run, see docs/PROTOCOL.md).
fn is_connection_of(id: &serde_json::Value, node: &str) -> bool {
    id.as_str()
        .and_then(|id| id.strip_prefix(node)?.strip_prefix('.'))
        .is_some_and(|n| n.parse::<u64>().is_ok())
}
