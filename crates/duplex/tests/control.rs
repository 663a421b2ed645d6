//! Addressing one user or one connection on every node, from the HTTP API
//! or a plain Redis client: `#user:<id>`, `#conn:<id>`, `/api/disconnect`,
//! and orders on `#control`.

mod support;

use duplex::auth::unix_now;
use duplex::config::Settings;
use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};
use support::redis_server::RedisServer;

const SECRET: &str = "control-secret";

fn user(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn node_on(redis: &RedisServer) -> TestNode {
    let node = TestNode::start(Settings {
        redis: Some(redis.url()),
        token_secret: Some(SECRET.into()),
        ..settings()
    })
    .await;
    support::eventually("node connected to redis", || async {
        node.health().await == 200
    })
    .await;
    node
}

/// A native client connected with a token; returns it and its connection id.
async fn native(node: &TestNode, sub: &str) -> (Client, String) {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("connect", json!({"token": user(sub)})).await;
    let id = reply["result"]["client"]
        .as_str()
        .expect("client id")
        .to_string();
    (client, id)
}

#[tokio::test]
async fn a_user_is_reached_and_disconnected_on_every_node() {
    let redis = RedisServer::start();
    let (a, b) = (node_on(&redis).await, node_on(&redis).await);
    let (mut ann_on_a, _) = native(&a, "ann").await;
    let mut ann_on_b = Client::connect(&b.ws(&format!("/?token={}", user("ann")))).await;
    let (mut bob_on_a, _) = native(&a, "bob").await;
    // Every connection of a user joined `#user:<id>` by itself: a plain
    // Redis PUBLISH from any backend reaches them all.
    redis.publish("#user:ann", b"hello ann").await;
    assert_eq!(
        ann_on_a.next_push().await,
        ("#user:ann".to_string(), json!("hello ann"))
    );
    assert_eq!(ann_on_b.next_text().await, "hello ann");

    let (status, body) = b
        .post_json(
            "/api/disconnect",
            &json!({"user": "ann", "code": 4001, "reason": "account closed"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let push = ann_on_a.next_json().await;
    assert_eq!(
        push,
        json!({"push": "disconnect", "code": 4001, "reason": "account closed", "reconnect": false})
    );
    assert_eq!(ann_on_a.expect_close().await.code, 4001);
    let closed = ann_on_b.expect_close().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4001, "account closed")
    );
    // Bob is untouched.
    let reply = bob_on_a.command("ping", json!({})).await;
    assert!(reply["result"].is_object(), "{reply}");
    let disconnected = a.info().await["stats"]["api_disconnects"].as_u64().unwrap()
        + b.info().await["stats"]["api_disconnects"].as_u64().unwrap();
    assert_eq!(disconnected, 2);
}

#[tokio::test]
async fn one_connection_is_reached_through_any_node() {
    let redis = RedisServer::start();
    let (a, b) = (node_on(&redis).await, node_on(&redis).await);
    let (mut target, id) = native(&a, "carl").await;
    let (mut other, _) = native(&a, "carl").await;
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
    // The other connection of the same user got nothing: a ping answers first.
    let reply = other.command("ping", json!({})).await;
    assert!(reply["result"].is_object(), "{reply}");

    // A backend with only a Redis client gives the same orders on #control.
    let order = json!({"op": "disconnect", "connection": id}).to_string();
    redis.publish("#control", order.as_bytes()).await;
    assert_eq!(target.expect_close().await.code, 3003);
    let reply = other.command("ping", json!({})).await;
    assert!(reply["result"].is_object(), "{reply}");
}

#[tokio::test]
async fn bad_orders_are_refused_with_reasons() {
    let node = TestNode::start(Settings {
        token_secret: Some(SECRET.into()),
        ..settings()
    })
    .await;
    let (mut client, id) = native(&node, "dee").await;
    for (body, what) in [
        (
            json!({"user": "dee", "code": 1000}),
            "code outside 3000-4999",
        ),
        (json!({"user": "dee", "connection": id}), "both targets"),
        (json!({}), "no target"),
        (
            json!({"user": "dee", "reason": "x".repeat(124)}),
            "reason too long",
        ),
    ] {
        let (status, answer) = node.post_json("/api/disconnect", &body).await;
        assert_eq!(status, 400, "{what}: {answer}");
    }
    // A bad order straight on #control is logged and ignored.
    node.post_json(
        "/api/publish",
        &json!({"channel": "#control", "data": "garbage"}),
    )
    .await;
    let reply = client.command("ping", json!({})).await;
    assert!(reply["result"].is_object(), "{reply}");
    // Clients cannot publish to #control or #conn: channels.
    let reply = client
        .command(
            "publish",
            json!({"channel": "#control", "data": {"op": "disconnect", "user": "dee"}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], 105, "{reply}");
    let (status, _) = node
        .post_json("/api/disconnect", &json!({"connection": id}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(client.expect_close().await.code, 3003);
}

/// A token that names the order channels does not let its client in there,
/// and the node keeps hearing orders after that client leaves.
#[tokio::test]
async fn order_channels_in_a_token_are_ignored_and_orders_keep_working() {
    let redis = RedisServer::start();
    let node = node_on(&redis).await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "eve", "exp": unix_now() + 600, "channels": ["#control", "#node:x", "news"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let mut eve = Client::connect(&node.ws("/ws")).await;
    let reply = eve.command("connect", json!({"token": token})).await;
    assert_eq!(
        reply["result"]["channels"],
        json!(["news", "#user:eve"]),
        "{reply}"
    );
    eve.close().await;
    support::eventually("eve gone", || async {
        node.info().await["connections"] == 0
    })
    .await;
    let (mut fay, id) = native(&node, "fay").await;
    let order = json!({"op": "disconnect", "connection": id, "code": 4002}).to_string();
    redis.publish("#control", order.as_bytes()).await;
    assert_eq!(fay.expect_close().await.code, 4002);
}
