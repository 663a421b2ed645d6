//! Redis killed and restarted under connected clients: health says so in
//! between, and delivery resumes by itself.

mod support;

use serde_json::json;
use support::client::Client;
use support::node::TestNode;
use support::redis_server::RedisServer;

#[tokio::test]
async fn delivery_resumes_after_redis_restart() {
    let mut redis = RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    support::eventually("healthy", || async { node.health().await == 200 }).await;
    let mut plain = Client::connect(&node.ws("/")).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.subscribe(&["news"]).await;

    redis.kill();
    support::eventually("health turns 503", || async { node.health().await == 503 }).await;
    let info = node.info().await;
    assert_eq!(info["broker"]["status"], "disconnected", "{info}");
    // Publishing during the outage is refused with a temporary error, not hung.
    let reply = native
        .command("publish", json!({"channel": "news", "data": "lost"}))
        .await;
    assert_eq!(reply["error"]["code"], 107, "{reply}");
    assert_eq!(reply["error"]["temporary"], true);
    let (status, body) = node
        .post_json("/api/publish", &json!({"channel": "news", "data": "x"}))
        .await;
    assert_eq!(status, 503, "{body}");

    redis.restart();
    support::eventually("health back to 200", || async {
        node.health().await == 200
    })
    .await;
    assert_eq!(redis.numsub("channel").await, 1, "resubscribed by itself");
    assert_eq!(redis.numsub("news").await, 1);
    redis.publish("channel", b"after restart").await;
    assert_eq!(plain.next_text().await, "after restart");
    redis.publish("news", b"\"native too\"").await;
    assert_eq!(native.next_push().await.1, json!("native too"));
    let info = node.info().await;
    assert_eq!(info["broker"]["reconnects"], 1, "{info}");
}

#[tokio::test]
async fn node_starts_degraded_when_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    // Starting degraded is documented: the node serves, /health says 503, and
    // it connects when Redis comes up; clients subscribed meanwhile are kept.
    let node = TestNode::start(duplex::config::Settings {
        redis: Some(url),
        redis_timeout: Some(std::time::Duration::from_millis(300)),
        ..support::node::settings()
    })
    .await;
    assert_eq!(node.health().await, 503, "started degraded");
    let info = node.info().await;
    assert!(
        info["broker"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{info}"
    );
    let mut plain = Client::connect(&node.ws("/")).await;
    redis.restart();
    support::eventually("health 200", || async { node.health().await == 200 }).await;
    redis.publish("channel", b"hello late redis").await;
    assert_eq!(plain.next_text().await, "hello late redis");
}
