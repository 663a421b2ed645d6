//! With `write_delay` set, messages wait up to the delay and go out
//! together: every client still gets every message, in order, replies
//! included, and a client that never reads is still cut as a slow consumer.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};

fn delayed(max_queued_bytes: Option<usize>) -> duplex::config::Settings {
    duplex::config::Settings {
        write_delay: Some(Duration::from_millis(10)),
        max_queued_bytes,
        ..settings()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_in_order_with_replies_between() {
    let node = TestNode::start(delayed(None)).await;
    let mut natives = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&node.ws("/ws")).await;
        c.subscribe(&["burst"]).await;
        natives.push(c);
    }
    // Subscribed before the upgrade's answer.
    let mut plain = Client::connect(&node.ws("/?channel=burst")).await;

    const N: usize = 500;
    // Published over HTTP: a client's replies would wait out the delay too.
    for i in 0..N {
        let (status, body) = node
            .post_json(
                "/api/publish",
                &json!({"channel": "burst", "data": {"i": i}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for c in &mut natives {
        for i in 0..N {
            let (channel, data) = c.next_push().await;
            assert_eq!((channel.as_str(), &data["i"]), ("burst", &json!(i)));
        }
        // Replies go through the same delayed path.
        let pong = c.command("ping", json!({})).await;
        assert!(pong.get("result").is_some(), "{pong}");
    }
    for i in 0..N {
        let text = plain.next_text().await;
        let data: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(data["i"], i, "plain client: in order, none missing");
    }
    let info = node.info().await;
    assert_eq!(info["stats"]["slow_consumer_disconnects"], 0, "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_still_cut() {
    let node = TestNode::start(delayed(Some(64 * 1024))).await;
    let mut reader = Client::connect(&node.ws("/ws")).await;
    reader.subscribe(&["firehose"]).await;
    let mut stalled = Client::connect(&node.ws("/ws")).await;
    stalled.subscribe(&["firehose"]).await;

    const N: usize = 1000;
    let payload = "x".repeat(16 * 1024);
    // The reader keeps up: at most two messages ahead of it are published.
    let (got, mut progress) = tokio::sync::watch::channel(0usize);
    let reading = tokio::spawn(async move {
        for i in 0..N {
            let (_, data) = reader.next_push().await;
            assert_eq!(data["i"], i, "in order, none missing");
            let _ = got.send(i + 1);
        }
    });
    for i in 0..N {
        progress
            .wait_for(|&got| got + 2 >= i)
            .await
            .expect("reader alive");
        let (status, body) = node
            .post_json(
                "/api/publish",
                &json!({"channel": "firehose", "data": {"i": i, "pad": payload}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    reading.await.expect("reader got all messages");
    let info = node.info().await;
    assert_eq!(info["stats"]["slow_consumer_disconnects"], 1, "{info}");
    let ended = tokio::time::timeout(support::WAIT, async {
        while let Some(Ok(msg)) = stalled.ws.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "stalled client's connection was closed");
}
