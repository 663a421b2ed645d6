//! `upstream_secret`: every POST to an HTTP upstream, the node's URL or a
//! namespace's, carries `Duplex-Signature: t=<unix secs>,v1=<hex
//! HMAC-SHA256(secret, "<t>.<body>")>`, one `v1` per secret; without the
//! setting there is no header. (The examples that check it, in Python and
//! PHP, are tested in examples_http_upstream.rs.)

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use duplex::config::Settings;
use duplex::permissions::Namespace;
use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};
use tokio::sync::mpsc;

/// What a backend received: its `Duplex-Signature` (if any) and the body.
type Received = (Option<String>, Bytes);

/// A backend that records each request and answers `null`.
async fn start_backend(path: &str) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        path,
        post(move |headers: HeaderMap, body: Bytes| async move {
            let signature = headers
                .get("duplex-signature")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let _ = tx.send((signature, body));
            StatusCode::OK
        }),
    );
    (support::serve_http(app, path).await, rx)
}

/// `hex(HMAC-SHA256(secret, "<t>.<body>"))`.
fn hmac_hex(secret: &str, t: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &message);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `received` is signed with each of `secrets`, in order, now.
fn assert_signed(received: &Received, secrets: &[&str]) {
    let (signature, body) = received;
    let signature = signature.as_deref().expect("a Duplex-Signature header");
    let mut parts = signature.split(',');
    let t = parts
        .next()
        .and_then(|p| p.strip_prefix("t="))
        .unwrap_or_else(|| panic!("t= first: {signature}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let t_secs: u64 = t.parse().expect("unix seconds");
    assert!(now.abs_diff(t_secs) <= 5, "{signature} at {now}");
    let expected: Vec<String> = secrets
        .iter()
        .map(|s| format!("v1={}", hmac_hex(s, t, body)))
        .collect();
    assert_eq!(parts.collect::<Vec<_>>(), expected, "{signature}");
}

#[tokio::test]
async fn every_upstream_post_is_signed_with_each_secret() {
    let (url, mut node_calls) = start_backend("/node").await;
    let (orders_url, mut orders_calls) = start_backend("/orders").await;
    let node = TestNode::start(Settings {
        upstream_url: Some(url),
        upstream_secret: Some("first-secret, second-secret".into()),
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
        .command("rpc", json!({"method": "m", "data": {"a": 1}}))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let received = node_calls.recv().await.expect("a call");
    assert_signed(&received, &["first-secret", "second-secret"]);

    let reply = client
        .command("send", json!({"data": "hi", "channel": "orders:7"}))
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let received = orders_calls.recv().await.expect("a send");
    assert_signed(&received, &["first-secret", "second-secret"]);
}

#[tokio::test]
async fn without_a_secret_nothing_is_signed() {
    let (url, mut calls) = start_backend("/node").await;
    let node = TestNode::start(Settings {
        upstream_url: Some(url),
        ..settings()
    })
    .await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("send", json!({"data": "hi"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let (signature, _) = calls.recv().await.expect("a send");
    assert_eq!(signature, None);
}
