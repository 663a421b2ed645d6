//! Client messages up to the backends: `send` appends to a Redis Stream that
//! workers in any language read with consumer groups.

mod support;

use duplex::auth::unix_now;
use duplex::config::Settings;
use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};
use support::redis_server::RedisServer;

use support::stream::{create_group, read_group, Entry};

/// What worker `consumer` reads from the group now.
async fn read_as_worker(redis: &RedisServer, consumer: &str) -> Vec<Entry> {
    let mut conn = redis.connection().await;
    read_group(&mut conn, consumer, 100, 1).await
}

#[tokio::test]
async fn sends_reach_a_worker_through_a_consumer_group() {
    let mut redis = RedisServer::start();
    create_group(&redis).await;
    let node = TestNode::start(Settings {
        redis: Some(redis.url()),
        token_secret: Some("upstream-secret".into()),
        ..settings()
    })
    .await;
    support::eventually("node on redis", || async { node.health().await == 200 }).await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "7", "exp": unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"upstream-secret"),
    )
    .expect("sign");
    let mut client = Client::connect(&node.ws("/ws")).await;
    let connected = client.command("connect", json!({"token": token})).await;
    let conn_id = connected["result"]["client"].as_str().unwrap().to_string();
    let node_id = connected["result"]["node"].as_str().unwrap().to_string();

    let reply = client.command("send", json!({"data": {"order": 1}})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let reply = client
        .command("send", json!({"data": "AAEC", "encoding": "base64"}))
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");

    let entries = read_as_worker(&redis, "w1").await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    let first = &entries[0].1;
    assert_eq!(first["kind"], "send");
    assert_eq!(first["data"], r#"{"order":1}"#);
    assert_eq!(first["encoding"], "text");
    assert_eq!(first["connection"], conn_id);
    assert_eq!(first["user"], "7");
    assert_eq!(first["node"], node_id);
    let ts: u128 = first["ts"].parse().expect("ms timestamp");
    assert!(ts > 1_700_000_000_000);
    assert_eq!(entries[1].1["encoding"], "binary");
    // Read once per group: a second worker gets nothing new.
    assert!(read_as_worker(&redis, "w2").await.is_empty());
    assert_eq!(node.info().await["stats"]["upstream_messages"], 2);

    // Redis down: the client is told (temporary), nothing hangs.
    redis.kill();
    let reply = client.command("send", json!({"data": "lost"})).await;
    assert_eq!(reply["error"]["code"], 107, "{reply}");
    assert_eq!(reply["error"]["temporary"], true);
}

#[tokio::test]
async fn the_memory_broker_says_sends_need_redis() {
    let node = TestNode::memory().await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("send", json!({"data": 1})).await;
    assert_eq!(reply["error"]["code"], 102, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--redis"),
        "{reply}"
    );
    let reply = client
        .command("send", json!({"data": "!!", "encoding": "base64"}))
        .await;
    assert_eq!(reply["error"]["code"], 101, "{reply}");
}
