//! The classic demo, unchanged: plain WebSockets at `/`, a backend's raw
//! Redis `PUBLISH`, two "tabs" chatting through the default channel.

mod support;

use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};
use support::redis_server::RedisServer;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn classic_demo_through_redis() {
    let redis = RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    let mut tab1 = Client::connect(&node.ws("/")).await;
    let mut tab2 = Client::connect(&node.ws("/")).await;
    assert_eq!(
        redis.numsub("channel").await,
        1,
        "one Redis subscription per node, not per client"
    );

    // $redis->publish("channel", "data from PHP");
    assert_eq!(redis.publish("channel", b"data from PHP").await, 1);
    assert_eq!(tab1.next_text().await, "data from PHP");
    assert_eq!(tab2.next_text().await, "data from PHP");

    // ws.send("hello world!") in one tab reaches the other, and the sender too.
    tab1.send_text("hello world!").await;
    assert_eq!(tab2.next_text().await, "hello world!");
    assert_eq!(tab1.next_text().await, "hello world!");

    // Through Redis only bytes travel: non-UTF-8 arrives as binary.
    redis.publish("channel", &[0xff, 0x00, 0x01]).await;
    assert_eq!(
        tab1.next_message().await,
        Message::binary(vec![0xff, 0x00, 0x01])
    );
}

#[tokio::test]
async fn classic_demo_on_the_memory_broker_keeps_message_kind() {
    let node = TestNode::memory().await;
    let mut tab1 = Client::connect(&node.ws("/")).await;
    let mut tab2 = Client::connect(&node.ws("/")).await;
    tab1.send_text("hello world!").await;
    assert_eq!(tab2.next_text().await, "hello world!");
    assert_eq!(tab1.next_text().await, "hello world!");
    // A binary frame that happens to be valid UTF-8 stays binary.
    tab2.send_binary(b"abc").await;
    assert_eq!(tab1.next_message().await, Message::binary(b"abc".to_vec()));
    assert_eq!(tab2.next_message().await, Message::binary(b"abc".to_vec()));
    // HTTP publish of a JSON string delivers its text; other JSON as JSON text.
    let (status, _) = node
        .post_json(
            "/api/publish",
            &json!({"channel":"channel","data":"from HTTP"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(tab1.next_text().await, "from HTTP");
    node.post_json("/api/publish", &json!({"channel":"channel","data":{"n":1}}))
        .await;
    assert_eq!(tab1.next_text().await, r#"{"n":1}"#);
}

#[tokio::test]
async fn query_picks_channels_and_first_one_gets_publishes() {
    let redis = RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    let mut both = Client::connect(&node.ws("/?channel=a&channel=b")).await;
    let mut only_b = Client::connect(&node.ws("/?channel=b")).await;
    redis.publish("a", b"to a").await;
    redis.publish("b", b"to b").await;
    redis.publish("channel", b"to default").await;
    assert_eq!(both.next_text().await, "to a");
    assert_eq!(both.next_text().await, "to b");
    assert_eq!(only_b.next_text().await, "to b");
    // A plain client's frames go to its first channel.
    both.send_text("from both").await;
    assert_eq!(both.next_text().await, "from both");
    only_b.send_text("marker").await;
    assert_eq!(
        only_b.next_text().await,
        "marker",
        "b got nothing from channel a"
    );
}

#[tokio::test]
async fn echo_off_skips_only_the_sender_memory_and_redis() {
    let redis = RedisServer::start();
    for url in [None, Some(redis.url())] {
        let node = TestNode::start(duplex::config::Settings {
            plain_echo: Some(false),
            redis: url.clone(),
            ..settings()
        })
        .await;
        let mut sender = Client::connect(&node.ws("/")).await;
        let mut other = Client::connect(&node.ws("/")).await;
        sender.send_text("mine").await;
        assert_eq!(other.next_text().await, "mine");
        // The sender still receives what others send, and nothing of its own.
        other.send_text("yours").await;
        assert_eq!(sender.next_text().await, "yours", "broker {url:?}");
        sender.send_text("marker").await;
        assert_eq!(
            other.next_text().await,
            "marker",
            "other did not get its own message back"
        );
    }
}

#[tokio::test]
async fn plain_publish_can_be_disabled() {
    let node = TestNode::start(duplex::config::Settings {
        plain_publish: Some(false),
        ..settings()
    })
    .await;
    let mut client = Client::connect(&node.ws("/")).await;
    client.send_text("not allowed").await;
    let closed = client.expect_close().await;
    assert_eq!(closed.code, 1008);
    assert!(closed.reason.contains("disabled"), "{closed:?}");
}

#[tokio::test]
async fn bad_plain_query_is_refused_at_the_upgrade() {
    let node = TestNode::memory().await;
    let err = tokio_tungstenite::connect_async(node.ws("/?channel=has%20space"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 400);
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("forbidden character"), "{body}");
        }
        other => panic!("expected HTTP 400, got {other}"),
    }
}

#[tokio::test]
async fn redis_prefix_namespaces_channels() {
    let redis = RedisServer::start();
    let node = TestNode::start(duplex::config::Settings {
        redis: Some(redis.url()),
        redis_prefix: Some("app1:".into()),
        ..settings()
    })
    .await;
    support::eventually("connected", || async { node.health().await == 200 }).await;
    let mut client = Client::connect(&node.ws("/")).await;
    assert_eq!(redis.numsub("app1:channel").await, 1);
    assert_eq!(redis.publish("channel", b"other app").await, 0);
    redis.publish("app1:channel", b"mine").await;
    assert_eq!(client.next_text().await, "mine");
    client.send_text("out").await;
    assert_eq!(client.next_text().await, "out");
}
