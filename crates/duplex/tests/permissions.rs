//! Namespaces: who may subscribe and publish where, each rule with its
//! positive and negative case, as clients see them.

mod support;

use duplex::auth::unix_now;
use duplex::config::Settings;
use duplex::permissions::{Namespace, PublishRule, SubscribeRule};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};

const SECRET: &str = "permissions-test-secret";

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn user(sub: &str) -> String {
    token(json!({"sub": sub, "exp": unix_now() + 600}))
}

fn ns(pattern: &str, subscribe: SubscribeRule, publish: PublishRule) -> Namespace {
    Namespace {
        pattern: pattern.into(),
        subscribe,
        publish,
        ..Default::default()
    }
}

async fn node() -> TestNode {
    TestNode::start(Settings {
        token_secret: Some(SECRET.into()),
        allow_anonymous: Some(true),
        namespaces: Some(vec![
            ns(
                "chat:*",
                SubscribeRule::Authenticated,
                PublishRule::Subscribers,
            ),
            ns(
                "private:*",
                SubscribeRule::Token,
                PublishRule::Authenticated,
            ),
            ns("news", SubscribeRule::Anyone, PublishRule::Nobody),
        ]),
        ..settings()
    })
    .await
}

async fn native(node: &TestNode, token: Option<String>) -> Client {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("connect", json!({"token": token})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    client
}

fn code(reply: &Value) -> &Value {
    &reply["error"]["code"]
}

#[tokio::test]
async fn authenticated_and_subscriber_rules() {
    let node = node().await;
    let mut anonymous = native(&node, None).await;
    let mut ann = native(&node, Some(user("ann"))).await;
    let reply = anonymous
        .command("subscribe", json!({"channel": "chat:lobby"}))
        .await;
    assert_eq!(code(&reply), 105, "{reply}");
    // Publishing in chat:* needs a subscription on the same connection.
    let publish = json!({"channel": "chat:lobby", "data": "hi"});
    let reply = ann.command("publish", publish.clone()).await;
    assert_eq!(code(&reply), 105, "{reply}");
    ann.subscribe(&["chat:lobby"]).await;
    let mut bea = native(&node, Some(user("bea"))).await;
    bea.subscribe(&["chat:lobby"]).await;
    let reply = ann.command("publish", publish).await;
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(bea.next_push().await.1, json!("hi"));
    // Default namespace: anyone may do anything.
    anonymous.subscribe(&["random"]).await;
    let reply = anonymous
        .command("publish", json!({"channel": "random", "data": 1}))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
}

#[tokio::test]
async fn backend_only_channels_refuse_client_publishes() {
    let node = node().await;
    let mut ann = native(&node, Some(user("ann"))).await;
    ann.subscribe(&["news"]).await;
    let reply = ann
        .command("publish", json!({"channel": "news", "data": "fake"}))
        .await;
    assert_eq!(code(&reply), 105, "{reply}");
    let (status, _) = node
        .post_json("/api/publish", &json!({"channel": "news", "data": "real"}))
        .await;
    assert_eq!(status, 200, "backends are not bound by namespaces");
    assert_eq!(ann.next_push().await.1, json!("real"));
    // A plain client on a backend-only channel may read but not write.
    let mut plain = Client::connect(&node.ws("/?channel=news")).await;
    plain.send_text("fake").await;
    let closed = plain.expect_close().await;
    assert_eq!(closed.code, 1008, "{closed:?}");
}

#[tokio::test]
async fn private_channels_need_a_subscription_token_for_that_channel_and_user() {
    let node = node().await;
    let mut ann = native(&node, Some(user("ann"))).await;
    let subscribe = |token: Option<String>| json!({"channel": "private:ann", "token": token});
    let exp = unix_now() + 600;
    for (what, bad) in [
        ("no token", None),
        (
            "another channel",
            Some(token(
                json!({"sub": "ann", "channel": "private:bob", "exp": exp}),
            )),
        ),
        (
            "another user",
            Some(token(
                json!({"sub": "bob", "channel": "private:ann", "exp": exp}),
            )),
        ),
        ("a connection token", Some(user("ann"))),
    ] {
        let reply = ann.command("subscribe", subscribe(bad)).await;
        assert_eq!(code(&reply), 105, "{what}: {reply}");
    }
    let expired = token(json!({"sub": "ann", "channel": "private:ann", "exp": unix_now() - 1}));
    let reply = ann.command("subscribe", subscribe(Some(expired))).await;
    assert_eq!(code(&reply), 111, "{reply}");
    let good = token(json!({"sub": "ann", "channel": "private:ann", "exp": exp}));
    let reply = ann.command("subscribe", subscribe(Some(good))).await;
    assert!(reply.get("result").is_some(), "{reply}");
    node.post_json(
        "/api/publish",
        &json!({"channel": "private:ann", "data": 7}),
    )
    .await;
    assert_eq!(ann.next_push().await, ("private:ann".to_string(), json!(7)));
    // A subscription token cannot open a connection.
    let mut client = Client::connect(&node.ws("/ws")).await;
    let connect = json!({"id": 1, "method": "connect", "params": {"token": token(json!({"sub": "ann", "channel": "private:ann"}))}});
    client.send_text(&connect.to_string()).await;
    assert_eq!(client.expect_close().await.code, 3500);
}

#[tokio::test]
async fn plain_clients_are_held_to_the_same_rules_at_the_upgrade() {
    let node = node().await;
    for query in [
        "/?channel=private:ann".to_string(),
        "/?channel=chat:lobby".to_string(),
        format!("/?channel=private:ann&token={}", user("ann")),
    ] {
        assert_eq!(
            support::client::refused(&node.ws(&query)).await.0,
            400,
            "{query}"
        );
    }
    let mut member =
        Client::connect(&node.ws(&format!("/?channel=chat:lobby&token={}", user("ann")))).await;
    node.post_json(
        "/api/publish",
        &json!({"channel": "chat:lobby", "data": "hello"}),
    )
    .await;
    assert_eq!(member.next_text().await, "hello");
    let denials = node.info().await["stats"]["auth_denials"].as_u64().unwrap();
    assert_eq!(denials, 3);
}
