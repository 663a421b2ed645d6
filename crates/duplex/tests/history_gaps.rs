//! Live copies of recorded publications that never reach a node (its
//! intake dropped them under a flood, or Redis lost them): the node sees
//! the offsets jump, reads the missing ones back from history and delivers
//! them in order before the one that showed the gap. Nobody reconnects.
//!
//! The lost copies are made exactly: the test records offsets straight into
//! the channel's Redis stream and meta (as `duplex_publish` does, without
//! the `PUBLISH`), then publishes one more the normal way.

mod support;

use std::time::Duration;

use duplex::config::Settings;
use duplex::permissions::Namespace;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::redis_server::RedisServer;

fn with_history(size: usize) -> Settings {
    Settings {
        namespaces: Some(vec![Namespace {
            pattern: "news:*".into(),
            history_size: size,
            history_ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        }]),
        ..settings()
    }
}

async fn publish(node: &TestNode, data: Value) -> u64 {
    let (status, body) = node
        .post_json("/api/publish", &json!({"channel": "news:g", "data": data}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_u64().expect("an offset")
}

async fn next_message(client: &mut Client) -> (Option<u64>, Value) {
    loop {
        let push = client.next_json().await;
        if push["push"] == "message" {
            return (push["offset"].as_u64(), push["data"].clone());
        }
    }
}

/// Records `data` at the channel's next offset without publishing it: a
/// publication whose live copy was lost.
async fn record_silently(redis: &RedisServer, data: &Value) -> u64 {
    let mut conn = redis.connection().await;
    let offset: u64 = redis::cmd("HINCRBY")
        .arg("{news:g}:meta")
        .arg("s")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("HINCRBY");
    let _: String = redis::cmd("XADD")
        .arg("{news:g}:history")
        .arg(format!("0-{offset}"))
        .arg("d")
        .arg(data.to_string())
        .query_async(&mut conn)
        .await
        .expect("XADD");
    offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_live_copies_are_read_back_in_order_without_a_reconnect() {
    let redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), with_history(100)).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client
        .command("subscribe", json!({"channel": "news:g"}))
        .await;
    assert_eq!(
        reply["result"]["positions"]["news:g"]["offset"], 0,
        "{reply}"
    );
    assert_eq!(publish(&node, json!(1)).await, 1);
    assert_eq!(next_message(&mut client).await, (Some(1), json!(1)));
    for i in 2..=4 {
        assert_eq!(record_silently(&redis, &json!(i)).await, i);
    }
    assert_eq!(publish(&node, json!(5)).await, 5);
    for i in 2..=5u64 {
        assert_eq!(next_message(&mut client).await, (Some(i), json!(i)));
    }
    assert_eq!(publish(&node, json!(6)).await, 6);
    assert_eq!(next_message(&mut client).await, (Some(6), json!(6)));
    assert_eq!(node.stat("history_repairs").await, 1);
    assert_eq!(node.stat("connects").await, 1, "nobody reconnected");
}

/// More lost than the channel keeps: the clients cannot be repaired, so
/// they are told (3008) rather than left with a silent hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_history_cannot_cover_closes_the_channels_clients_with_3008() {
    let redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), with_history(2)).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    client
        .command("subscribe", json!({"channel": "news:g"}))
        .await;
    assert_eq!(publish(&node, json!(1)).await, 1);
    assert_eq!(next_message(&mut client).await, (Some(1), json!(1)));
    for i in 2..=4 {
        record_silently(&redis, &json!(i)).await;
    }
    publish(&node, json!(5)).await;
    assert_eq!(client.expect_close().await.code, 3008);
}

/// What a failover to a replica that missed the newest publications
/// looks like to the nodes: the channel's history ends below offsets
/// clients saw, in the same epoch, and new publications get those offsets
/// again. The first client to come back is told it lost them, and the
/// channel gets a new epoch, so a client that comes back only after the
/// reused offsets exist is not handed them as the ones it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_that_lost_what_clients_saw_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), with_history(100)).await;
    for i in 1..=5 {
        assert_eq!(publish(&node, json!(i)).await, i);
    }
    let (status, body) = node.get_json("/api/history?channel=news:g&limit=0").await;
    assert_eq!(status, 200, "{body}");
    let epoch = body["epoch"].as_str().expect("an epoch").to_string();
    // The replica had 1..=3 only.
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("HSET")
        .arg("{news:g}:meta")
        .arg("s")
        .arg(3)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let _: u64 = redis::cmd("XDEL")
        .arg("{news:g}:history")
        .arg("0-4")
        .arg("0-5")
        .query_async(&mut conn)
        .await
        .expect("XDEL");

    // A client that saw 5 comes back first: not recovered, a new epoch.
    let mut first = Client::connect(&node.ws("/ws")).await;
    let reply = first
        .command(
            "subscribe",
            json!({"channel": "news:g", "recover": {"news:g": {"epoch": epoch, "offset": 5}}}),
        )
        .await;
    let at = &reply["result"]["positions"]["news:g"];
    assert_eq!(at["recovered"], false, "{reply}");
    assert_ne!(at["epoch"], json!(epoch), "{reply}");
    assert_eq!(node.stat("history_epochs_restarted").await, 1);

    // New publications; a client that saw 4 comes back after them.
    for i in 6..=8 {
        publish(&node, json!(i)).await;
    }
    let mut late = Client::connect(&node.ws("/ws")).await;
    let reply = late
        .command(
            "subscribe",
            json!({"channel": "news:g", "recover": {"news:g": {"epoch": epoch, "offset": 4}}}),
        )
        .await;
    assert_eq!(
        reply["result"]["positions"]["news:g"]["recovered"], false,
        "the reused offsets are not the ones it saw: {reply}"
    );
    assert_eq!(next_message(&mut first).await, (Some(1), json!(6)));
}
