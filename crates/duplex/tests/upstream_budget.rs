//! Byte budgets on what clients send up to the backends (`send`, `rpc`,
//! plain frames): one connection's `max_upstream_rate`, all connections'
//! `max_upstream_node_rate` per stream, and the documented bound on the
//! Redis memory an upstream stream can take (docs/UPSTREAM.md).

mod support;

use std::time::{Duration, Instant};

use duplex::config::{PlainFrames, Settings};
use serde_json::{json, Value};
use support::client::Client;
use support::node::TestNode;
use support::redis_server::RedisServer;
use support::stream::STREAM;

/// A node on `redis` with `extra` settings, once connected.
async fn redis_node(redis: &RedisServer, extra: Settings) -> TestNode {
    TestNode::on_redis(&redis.url(), extra).await
}

async fn xlen(redis: &RedisServer) -> u64 {
    let mut conn = redis.connection().await;
    redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(&mut conn)
        .await
        .expect("XLEN")
}

/// `MEMORY USAGE <stream> SAMPLES 0`: every entry counted.
async fn stream_memory(redis: &RedisServer) -> u64 {
    let mut conn = redis.connection().await;
    redis::cmd("MEMORY")
        .arg(&["USAGE", STREAM, "SAMPLES", "0"][..])
        .query_async(&mut conn)
        .await
        .expect("MEMORY USAGE")
}

/// The error message of a reply, "" for a result.
fn message(reply: &Value) -> &str {
    reply["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_client_over_its_byte_budget_gets_108_and_another_client_is_not_affected() {
    let redis = RedisServer::start();
    // 1000 bytes per second: a refused message would need a minute to fit.
    let node = redis_node(
        &redis,
        Settings {
            max_upstream_rate: Some(1000),
            ..Default::default()
        },
    )
    .await;
    let big = json!({"data": "x".repeat(60_000)});
    let mut greedy = Client::connect(&node.ws("/ws")).await;
    // The burst lets one message of max_message_size through.
    let reply = greedy.command("send", big.clone()).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let reply = greedy.command("send", big.clone()).await;
    assert_eq!(reply["error"]["code"], 108, "{reply}");
    assert!(message(&reply).contains("max_upstream_rate"), "{reply}");
    assert!(!message(&reply).contains("max_publish_rate"), "{reply}");
    let reply = greedy
        .command(
            "rpc",
            json!({"method": "upload", "data": "x".repeat(60_000)}),
        )
        .await;
    assert_eq!(reply["error"]["code"], 108, "rpcs count too: {reply}");
    // The connection lives on: a small message still fits in what is left.
    let reply = greedy.command("send", json!({"data": "small"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    // Another client, from the same address, has its own budget.
    let mut other = Client::connect(&node.ws("/ws")).await;
    let reply = other.command("send", big).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    assert_eq!(xlen(&redis).await, 3);
    assert_eq!(node.stat("upstream_throttled").await, 2);
    assert_eq!(node.stat("upstream_messages").await, 3);
}

#[tokio::test]
async fn many_connections_together_stay_under_the_node_byte_budget() {
    let redis = RedisServer::start();
    // No budget per connection: only the node's, 50 kB/s for the stream.
    let node_rate = 50_000.0;
    let node = redis_node(
        &redis,
        Settings {
            max_upstream_rate: Some(0),
            max_upstream_node_rate: Some(50_000),
            max_publish_rate: Some(0),
            ..Default::default()
        },
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(&node.ws("/ws")).await);
    }
    let data = "x".repeat(30_000);
    let started = Instant::now();
    let flood = clients.iter_mut().map(|client| {
        let data = data.clone();
        async move {
            let (mut sent, mut refused) = (0u64, Vec::new());
            while started.elapsed() < Duration::from_millis(1500) {
                let reply = client.command("send", json!({"data": data})).await;
                if reply.get("result").is_some() {
                    sent += 1;
                } else {
                    refused.push(reply);
                }
            }
            (sent, refused)
        }
    });
    let outcomes = futures_util::future::join_all(flood).await;
    let elapsed = started.elapsed().as_secs_f64();
    let sent: u64 = outcomes.iter().map(|(sent, _)| sent).sum();
    let refused: Vec<&Value> = outcomes.iter().flat_map(|(_, r)| r).collect();
    // What went up: at most a burst of one max_message_size message, plus
    // the rate for the time it took, plus the message under way.
    let bound = 65_536.0 + node_rate * elapsed + 30_002.0;
    let bytes = sent as f64 * 30_002.0;
    assert!(
        bytes <= bound,
        "{sent} messages, {bytes} bytes up in {elapsed:.2} s; bound {bound}"
    );
    assert_eq!(xlen(&redis).await, sent);
    assert!(!refused.is_empty(), "the budget refused some");
    for reply in &refused {
        assert_eq!(reply["error"]["code"], 108, "{reply}");
        assert!(message(reply).contains("max_upstream_node_rate"), "{reply}");
    }
    assert_eq!(node.stat("upstream_throttled").await, refused.len() as u64);
}

#[tokio::test]
async fn the_stream_stays_under_its_documented_memory_bound() {
    let redis = RedisServer::start();
    let maxlen = 100u64;
    // Budgets off, so that the stream fills: only upstream_maxlen bounds it.
    let node = redis_node(
        &redis,
        Settings {
            upstream_maxlen: Some(maxlen as usize),
            max_upstream_rate: Some(0),
            max_upstream_node_rate: Some(0),
            max_publish_rate: Some(0),
            ..Default::default()
        },
    )
    .await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    // Messages as large as a frame allows (max_message_size 64 KiB).
    let big = json!({"data": "x".repeat(65_000)});
    for _ in 0..3 * maxlen {
        let reply = client.command("send", big.clone()).await;
        assert_eq!(reply["result"], json!({}), "{reply}");
    }
    // docs/UPSTREAM.md: at most (upstream_maxlen + 100) entries of at most
    // 1.26 x (max_message_size + 1 KiB) bytes each.
    let len = xlen(&redis).await;
    assert!(len <= maxlen + 100, "XLEN {len}");
    let memory = stream_memory(&redis).await;
    let bound = (maxlen + 100) as f64 * 1.26 * (65_536.0 + 1024.0);
    assert!(
        memory as f64 <= bound,
        "MEMORY USAGE {memory} over the documented {bound}"
    );
    assert!(memory >= maxlen * 65_000, "the stream is full: {memory}");
}

#[tokio::test]
async fn plain_frames_over_the_byte_budget_are_dropped_counted_then_closed() {
    let redis = RedisServer::start();
    let node = redis_node(
        &redis,
        Settings {
            plain_frames: Some(PlainFrames::Upstream),
            max_upstream_rate: Some(1000),
            max_publish_rate: Some(3),
            ..Default::default()
        },
    )
    .await;
    let frame = "x".repeat(60_000);
    let mut plain = Client::connect(&node.ws("/?channel=uploads")).await;
    plain.send_text(&frame).await;
    support::eventually("the first frame is up", || async {
        xlen(&redis).await == 1
    })
    .await;
    // Over the budget: dropped and counted, as over the publish rate.
    for _ in 0..3 {
        plain.send_text(&frame).await;
    }
    support::eventually("three frames dropped", || async {
        node.stat("plain_publish_dropped").await == 3
    })
    .await;
    assert_eq!(node.stat("upstream_throttled").await, 3);
    // One that keeps going past max_publish_rate refusals in a row is closed.
    plain.send_text(&frame).await;
    let closed = plain.expect_close().await;
    assert_eq!(closed.code, 3004, "{closed:?}");
    assert!(closed.reason.contains("max_upstream_rate"), "{closed:?}");
    assert_eq!(xlen(&redis).await, 1, "nothing over the budget went up");
    // Another plain client has its own budget.
    let mut other = Client::connect(&node.ws("/?channel=uploads")).await;
    other.send_text(&frame).await;
    support::eventually("the other client's frame is up", || async {
        xlen(&redis).await == 2
    })
    .await;
}
