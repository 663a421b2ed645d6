//! History channels a connection token subscribes (its `channels` claim):
//! `connect` answers their positions and, with `recover`, replays what the
//! client missed, exactly as `subscribe` does for the channels it names.

mod support;

use std::time::Duration;

use duplex::auth::unix_now;
use duplex::config::Settings;
use duplex::permissions::Namespace;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};

const SECRET: &str = "test-secret-of-decent-length";

fn token(channels: &[&str]) -> String {
    let claims = json!({"sub": "42", "exp": unix_now() + 600, "channels": channels});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::default(), &claims, &key).expect("sign")
}

async fn node() -> TestNode {
    TestNode::start(Settings {
        token_secret: Some(SECRET.into()),
        namespaces: Some(vec![Namespace {
            pattern: "news:*".into(),
            history_size: 100,
            history_ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        }]),
        ..settings()
    })
    .await
}

async fn publish(node: &TestNode, data: Value) {
    let (status, body) = node
        .post_json("/api/publish", &json!({"channel": "news:t", "data": data}))
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn next_message(client: &mut Client) -> (Option<u64>, Value) {
    loop {
        let push = client.next_json().await;
        if push["push"] == "message" {
            return (push["offset"].as_u64(), push["data"].clone());
        }
    }
}

/// Connects with the token (and `recover`); the reply's result.
async fn connect(node: &TestNode, recover: Option<Value>) -> (Client, Value) {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let mut params = json!({"token": token(&["news:t", "plain"])});
    if let Some(recover) = recover {
        params["recover"] = recover;
    }
    let reply = client.command("connect", params).await;
    assert_eq!(reply["result"]["user"], "42", "{reply}");
    (client, reply["result"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_channels_start_at_a_position_and_recover_on_connect() {
    let node = node().await;
    let (mut client, result) = connect(&node, None).await;
    let at = &result["positions"]["news:t"];
    assert_eq!(at["offset"], 0, "{result}");
    assert!(at.get("recovered").is_none(), "nothing asked: {result}");
    assert!(
        result["positions"].get("plain").is_none(),
        "no history there"
    );
    let epoch = at["epoch"].clone();
    for i in 1..=2 {
        publish(&node, json!(i)).await;
    }
    for i in 1..=2u64 {
        assert_eq!(next_message(&mut client).await, (Some(i), json!(i)));
    }
    drop(client);
    for i in 3..=4 {
        publish(&node, json!(i)).await;
    }
    let from = json!({"news:t": {"epoch": epoch, "offset": 2}});
    let (mut back, result) = connect(&node, Some(from)).await;
    let at = &result["positions"]["news:t"];
    assert_eq!(
        (&at["recovered"], &at["offset"]),
        (&json!(true), &json!(4)),
        "{result}"
    );
    for i in 3..=4u64 {
        assert_eq!(next_message(&mut back).await, (Some(i), json!(i)));
    }
    publish(&node, json!(5)).await;
    assert_eq!(next_message(&mut back).await, (Some(5), json!(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_channel_from_another_epoch_is_not_recovered() {
    let node = node().await;
    publish(&node, json!(1)).await;
    let from = json!({"news:t": {"epoch": "not-this-one", "offset": 0}});
    let (mut client, result) = connect(&node, Some(from)).await;
    let at = &result["positions"]["news:t"];
    assert_eq!(
        (&at["recovered"], &at["offset"]),
        (&json!(false), &json!(1)),
        "{result}"
    );
    // Nothing replayed: the next message is a live one.
    publish(&node, json!(2)).await;
    assert_eq!(next_message(&mut client).await, (Some(2), json!(2)));
}
