//! Connection limits refuse at the upgrade with a status and a reason, and
//! free their slot when a client leaves.

mod support;

use support::client::Client;
use support::node::{settings, TestNode};

#[tokio::test]
async fn node_limit_answers_503_and_frees_slots() {
    let node = TestNode::start(duplex::config::Settings {
        max_connections: Some(2),
        ..settings()
    })
    .await;
    let first = Client::connect(&node.ws("/")).await;
    let _second = Client::connect(&node.ws("/ws")).await;
    let (status, body) = support::client::refused(&node.ws("/")).await;
    assert_eq!(status, 503);
    assert!(body.contains("connection limit (2)"), "{body}");
    first.close().await;
    support::eventually("slot freed", || async {
        node.info().await["connections"] == 1
    })
    .await;
    let _third = Client::connect(&node.ws("/")).await;
}

#[tokio::test]
async fn per_address_limit_answers_429() {
    let node = TestNode::start(duplex::config::Settings {
        max_connections_per_ip: Some(1),
        ..settings()
    })
    .await;
    let only = Client::connect(&node.ws("/")).await;
    let (status, body) = support::client::refused(&node.ws("/ws")).await;
    assert_eq!(status, 429);
    assert!(
        body.contains("too many connections from your address"),
        "{body}"
    );
    only.close().await;
    support::eventually("slot freed", || async {
        node.info().await["connections"] == 0
    })
    .await;
    let _again = Client::connect(&node.ws("/ws")).await;
}

#[tokio::test]
async fn publish_rate_limit_refuses_then_closes() {
    let node = TestNode::start(duplex::config::Settings {
        max_publish_rate: Some(2),
        ..settings()
    })
    .await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    let publish = serde_json::json!({"channel": "x", "data": 1});
    let codes: Vec<serde_json::Value> = {
        let mut codes = Vec::new();
        for _ in 0..4 {
            let reply = native.command("publish", publish.clone()).await;
            codes.push(reply["error"]["code"].clone());
        }
        codes
    };
    assert_eq!(
        codes,
        [
            serde_json::Value::Null,
            serde_json::Value::Null,
            108.into(),
            108.into()
        ]
    );
    native
        .send_text(r#"{"id":99,"method":"publish","params":{"channel":"x","data":1}}"#)
        .await;
    assert_eq!(native.expect_close().await.code, 3004);

    let mut plain = Client::connect(&node.ws("/?channel=y")).await;
    for i in 0..5 {
        plain.send_text(&format!("m{i}")).await;
    }
    let closed = plain.expect_close().await;
    assert_eq!(closed.code, 3004);
    assert_eq!(node.info().await["stats"]["plain_publish_dropped"], 2);
}

fn user_token(secret: &str, sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": duplex::auth::unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test]
async fn per_user_limit_closes_with_3007_and_frees_slots() {
    let node = TestNode::start(duplex::config::Settings {
        token_secret: Some("limits-secret".into()),
        max_connections_per_user: Some(2),
        ..settings()
    })
    .await;
    let ann = user_token("limits-secret", "ann");
    let connect = serde_json::json!({"token": ann});
    let mut first = Client::connect(&node.ws("/ws")).await;
    assert!(first.command("connect", connect.clone()).await["result"].is_object());
    let second = Client::connect(&node.ws(&format!("/?token={ann}"))).await;
    // A third connection of the same user, native or plain, is closed with 3007.
    let mut third = Client::connect(&node.ws("/ws")).await;
    third
        .send_text(
            &serde_json::json!({"id": 1, "method": "connect", "params": connect}).to_string(),
        )
        .await;
    assert_eq!(third.expect_close().await.code, 3007);
    let mut plain = Client::connect(&node.ws(&format!("/?token={ann}"))).await;
    assert_eq!(plain.expect_close().await.code, 3007);
    // Another user is not affected.
    let mut bob = Client::connect(&node.ws("/ws")).await;
    let reply = bob
        .command(
            "connect",
            serde_json::json!({"token": user_token("limits-secret", "bob")}),
        )
        .await;
    assert!(reply["result"].is_object(), "{reply}");
    // A slot frees when a connection of the user ends.
    second.close().await;
    support::eventually("slot freed", || async {
        node.info().await["connections"] == 2
    })
    .await;
    let mut again = Client::connect(&node.ws("/ws")).await;
    assert!(again.command("connect", connect).await["result"].is_object());
    assert_eq!(node.info().await["stats"]["connections_refused"], 2);
    first.close().await;
}

#[tokio::test]
async fn handshake_rate_per_address_answers_429() {
    let node = TestNode::start(duplex::config::Settings {
        max_handshakes_per_ip: Some(3),
        ..settings()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(&node.ws("/")).await);
    }
    let (status, body) = support::client::refused(&node.ws("/")).await;
    assert_eq!(status, 429);
    assert!(body.contains("too many connection attempts"), "{body}");
    // The bucket refills: a patient client gets in.
    support::eventually("bucket refilled", || async {
        tokio_tungstenite::connect_async(node.ws("/")).await.is_ok()
    })
    .await;
    assert!(node.info().await["stats"]["connections_refused"].as_u64() >= Some(1));
}
