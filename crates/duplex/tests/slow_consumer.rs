//! A client that never reads is cut as a slow consumer; a reading client on
//! the same channel still receives every message, in order.

mod support;

use futures_util::StreamExt;
use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};

#[tokio::test]
async fn non_reader_is_cut_reader_gets_everything() {
    let node = TestNode::start(duplex::config::Settings {
        max_queued_bytes: Some(64 * 1024),
        ..settings()
    })
    .await;
    let mut reader = Client::connect(&node.ws("/ws")).await;
    reader.subscribe(&["firehose"]).await;
    let mut stalled = Client::connect(&node.ws("/ws")).await;
    stalled.subscribe(&["firehose"]).await;

    const N: usize = 1000;
    let payload = "x".repeat(16 * 1024);
    let reading = tokio::spawn(async move {
        for i in 0..N {
            let (_, data) = reader.next_push().await;
            assert_eq!(data["i"], i, "in order, none missing");
        }
        reader
    });
    let mut publisher = Client::connect(&node.ws("/ws")).await;
    for i in 0..N {
        let reply = publisher
            .command(
                "publish",
                json!({"channel": "firehose", "data": {"i": i, "pad": payload}}),
            )
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    let _reader = reading.await.expect("reader got all messages");
    let info = node.info().await;
    assert_eq!(info["stats"]["slow_consumer_disconnects"], 1, "{info}");
    // The stalled client finds its stream cut short when it finally reads.
    let mut received = 0;
    let ended = tokio::time::timeout(support::WAIT, async {
        while let Some(Ok(msg)) = stalled.ws.next().await {
            if msg.is_close() {
                break;
            }
            received += 1;
        }
    })
    .await;
    assert!(ended.is_ok(), "stalled client's connection was closed");
    assert!(
        received < N,
        "stalled client did not get everything ({received})"
    );
    support::eventually("slow consumer deregistered", || async {
        node.info().await["connections"] == 2
    })
    .await;
}

/// A client that stops reading is cut once about `max_queued_bytes` plus a
/// bounded kernel share has piled up for it, not after the kernel has
/// quietly buffered megabytes on top (Linux grows a socket's send buffer to
/// 4 MiB). 16 KiB messages are published one at a time until the node
/// reports the cut.
#[tokio::test]
async fn non_reader_is_cut_before_the_kernel_buffers_megabytes() {
    let node = TestNode::start(duplex::config::Settings {
        max_queued_bytes: Some(64 * 1024),
        ..settings()
    })
    .await;
    let mut stalled = Client::connect(&node.ws("/ws")).await;
    stalled.subscribe(&["firehose"]).await;
    let mut publisher = Client::connect(&node.ws("/ws")).await;
    const SIZE: usize = 16 * 1024;
    const LIMIT: usize = 2 * 1024 * 1024;
    let payload = "x".repeat(SIZE);
    let mut published = 0;
    while node.info().await["stats"]["slow_consumer_disconnects"] == 0 {
        assert!(
            published * SIZE < LIMIT,
            "still not cut after {published} messages of {SIZE} bytes"
        );
        let reply = publisher
            .command(
                "publish",
                json!({"channel": "firehose", "data": {"pad": payload}}),
            )
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
        published += 1;
    }
    drop(stalled);
}
