//! A client that never reads is cut as a slow consumer; a reading client on
//! the same channel still receives every message, in order.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};
use tokio_tungstenite::MaybeTlsStream;

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
    publish_until_cut(&node, 2 * 1024 * 1024).await;
    drop(stalled);
}

/// Publishes 16 KiB messages to `firehose` one at a time until the node
/// reports a slow-consumer cut; fails once `limit` bytes went out without.
async fn publish_until_cut(node: &TestNode, limit: usize) {
    const SIZE: usize = 16 * 1024;
    let mut publisher = Client::connect(&node.ws("/ws")).await;
    let payload = "x".repeat(SIZE);
    let mut published = 0;
    while node.info().await["stats"]["slow_consumer_disconnects"] == 0 {
        assert!(
            published * SIZE < limit,
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
}

/// Once the node has cut a client that stopped reading, the kernel lets go
/// of the socket too, instead of keeping it (and the bytes it could not
/// send) in FIN-WAIT-1 for as long as the client answers zero-window probes.
#[tokio::test]
async fn a_cut_non_reader_leaves_no_socket_behind() {
    let node = TestNode::start(duplex::config::Settings {
        max_queued_bytes: Some(64 * 1024),
        ping_interval: Some(Duration::from_secs(1)),
        pong_timeout: Some(Duration::from_secs(1)),
        ..settings()
    })
    .await;
    let mut stalled = Client::connect(&node.ws("/ws")).await;
    stalled.subscribe(&["firehose"]).await;
    let MaybeTlsStream::Plain(tcp) = stalled.ws.get_ref() else {
        panic!("plain TCP expected");
    };
    let client_port = tcp.local_addr().expect("local addr").port();
    let node_port = node.addr.port();
    assert!(node_socket_exists(node_port, client_port), "socket listed");
    publish_until_cut(&node, 2 * 1024 * 1024).await;
    support::eventually("the node's socket to the cut client is gone", || async {
        !node_socket_exists(node_port, client_port)
    })
    .await;
    drop(stalled);
}

/// Whether the kernel still has a TCP socket from `node_port` to
/// `client_port` on 127.0.0.1 (`/proc/net/tcp`, ports in hex).
fn node_socket_exists(node_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(local), Some(remote)) = (fields.next(), fields.next()) else {
            return false;
        };
        port(local) == Some(node_port) && port(remote) == Some(client_port)
    })
}
