//! Several nodes on one Redis share every channel.

mod support;

use serde_json::json;
use support::client::Client;
use support::node::TestNode;
use support::process::NodeProcess;
use support::redis_server::RedisServer;

#[tokio::test]
async fn client_on_a_reaches_client_on_b_and_http_on_b_reaches_a() {
    let redis = RedisServer::start();
    let a = TestNode::redis(&redis.url()).await;
    let b = TestNode::redis(&redis.url()).await;
    let mut on_a = Client::connect(&a.ws("/")).await;
    let mut on_b = Client::connect(&b.ws("/")).await;
    assert_eq!(
        redis.numsub("channel").await,
        2,
        "one subscription per node"
    );

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

    // Native clients on both nodes see the same messages in the same order.
    let mut native_a = Client::connect(&a.ws("/ws")).await;
    let mut native_b = Client::connect(&b.ws("/ws")).await;
    native_a.subscribe(&["room"]).await;
    native_b.subscribe(&["room"]).await;
    for i in 0..20 {
        let publisher = if i % 2 == 0 { &a } else { &b };
        publisher
            .post_json(
                "/api/publish",
                &json!({"channel": "room", "data": {"i": i}}),
            )
            .await;
    }
    for i in 0..20 {
        assert_eq!(
            native_a.next_push().await,
            ("room".to_string(), json!({"i": i}))
        );
        assert_eq!(
            native_b.next_push().await,
            ("room".to_string(), json!({"i": i}))
        );
    }
}

#[tokio::test]
async fn last_local_unsubscribe_leaves_redis() {
    let redis = RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    let mut c1 = Client::connect(&node.ws("/ws")).await;
    let mut c2 = Client::connect(&node.ws("/ws")).await;
    c1.subscribe(&["x"]).await;
    c2.subscribe(&["x"]).await;
    assert_eq!(redis.numsub("x").await, 1);
    c1.command("unsubscribe", json!({"channel": "x"})).await;
    assert_eq!(redis.numsub("x").await, 1, "c2 still wants it");
    c2.close().await;
    support::eventually("node leaves the Redis channel", || async {
        redis.numsub("x").await == 0
    })
    .await;
}

/// A node killed with SIGKILL: the other keeps serving, and the dead node's
/// clients can reconnect there and receive again.
#[tokio::test]
async fn sigkilled_node_does_not_disturb_the_other() {
    let redis = RedisServer::start();
    let mut doomed = NodeProcess::start(&["--redis", &redis.url()]).await;
    let survivor = TestNode::redis(&redis.url()).await;
    support::eventually("doomed node connected to redis", || async {
        reqwest::get(doomed.http("/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let mut on_doomed = Client::connect(&doomed.ws("/")).await;
    let mut on_survivor = Client::connect(&survivor.ws("/")).await;
    redis.publish("channel", b"before").await;
    assert_eq!(on_doomed.next_text().await, "before");
    assert_eq!(on_survivor.next_text().await, "before");

    doomed.kill();
    redis.publish("channel", b"after").await;
    assert_eq!(on_survivor.next_text().await, "after");
    // The dead node's client sees its connection drop and moves over.
    let gone = tokio::time::timeout(
        support::WAIT,
        futures_util::StreamExt::next(&mut on_doomed.ws),
    )
    .await;
    assert!(
        matches!(gone, Ok(None | Some(Err(_)))),
        "connection dropped: {gone:?}"
    );
    let mut moved = Client::connect(&survivor.ws("/")).await;
    redis.publish("channel", b"welcome").await;
    assert_eq!(moved.next_text().await, "welcome");
    assert_eq!(on_survivor.next_text().await, "welcome");
}
