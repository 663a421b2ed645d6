//! Without `write_delay`, a node that cannot keep up with one write per
//! delivery batches each client's messages by itself, catches up, and goes
//! back to writing each message at once: a backend that floods a channel
//! through Redis loses nothing and nobody is cut.

mod support;

use support::process::NodeProcess;
use support::raw::Raw;
use support::redis_server::RedisServer;

const SUBSCRIBERS: usize = 200;
/// Published messages not yet fanned out that the flood keeps waiting at
/// the node: fan-out never runs dry, so it is busy all of every window on
/// a fast machine as on a slow one, and batching starts; and the flood
/// stops growing while the node is behind, so its size follows the
/// machine instead of a guess.
const IN_FLIGHT: u64 = 2000;
/// Messages per `PUBLISH` pipeline.
const ROUND: u64 = 500;
/// Far more than any machine needs before batching starts.
const MOST: u64 = 100_000;

/// Reads text frames `0, 1, 2...` in order up to `end`; returns how many.
async fn read_in_order_until_end(mut client: Raw) -> (Raw, u64) {
    for i in 0.. {
        let frame = client.next_frame().await.expect("connection open");
        assert_eq!(frame.opcode, 1, "text frame");
        if frame.payload == b"end" {
            return (client, i);
        }
        assert_eq!(
            frame.payload,
            i.to_string().as_bytes(),
            "in order, none missing"
        );
    }
    unreachable!("the range is endless")
}

/// Floods `channel` from a plain Redis client with consecutive numbers,
/// keeping [`IN_FLIGHT`] of them ahead of the node's fan-out (read from its
/// `deliveries`), until the node reports that batching started; then
/// publishes `end`. Returns how many numbers it published.
async fn flood_until_batching(node: &NodeProcess, redis: &RedisServer, channel: &str) -> u64 {
    let mut conn = redis.connection().await;
    let mut published = 0;
    loop {
        let info = node.info().await;
        let stats = &info["stats"];
        if stats["write_batching_starts"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            published < MOST,
            "{published} messages and no batching: {info}"
        );
        let fanned_out = stats["deliveries"].as_u64().unwrap_or(0) / SUBSCRIBERS as u64;
        if published - fanned_out >= IN_FLIGHT {
            continue; // the node has enough to do; ask again
        }
        let mut pipe = redis::pipe();
        for i in published..published + ROUND {
            pipe.cmd("PUBLISH").arg(channel).arg(i.to_string()).ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("PUBLISH flood");
        published += ROUND;
    }
    redis.publish(channel, b"end").await;
    eprintln!("batching started after {published} messages");
    published
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_redis_is_batched_until_the_node_catches_up() {
    let redis = RedisServer::start();
    let node = NodeProcess::start_logged(&["--redis", &redis.url(), "--log-level", "info"]).await;
    let mut clients = Vec::new();
    for _ in 0..SUBSCRIBERS {
        clients.push(Raw::connect(node.addr, "/?channel=flood").await);
    }
    assert_eq!(redis.numsub("flood").await, 1, "the node subscribed once");
    assert_eq!(
        node.stat("write_batching_starts").await,
        0,
        "idle: no batching"
    );

    let readers: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(read_in_order_until_end(c)))
        .collect();
    let published = flood_until_batching(&node, &redis, "flood").await;
    let mut clients = Vec::new();
    for reader in readers {
        let (client, read) = reader.await.expect("every subscriber got the flood");
        assert_eq!(read, published, "every message, in order");
        clients.push(client);
    }

    let info = node.info().await;
    let stats = &info["stats"];
    assert_eq!(
        stats["deliveries"],
        SUBSCRIBERS as u64 * (published + 1),
        "{info}"
    );
    assert_eq!(stats["slow_consumer_disconnects"], 0, "{info}");
    assert!(stats["write_batching_starts"].as_u64() >= Some(1), "{info}");
    assert!(
        node.log().contains("batching each client's messages"),
        "the start is logged"
    );

    // Calm again: back to one write per message, and still delivering.
    support::eventually("batching stops once the node keeps up", || async {
        node.stat("write_batching").await == 0
    })
    .await;
    assert!(
        node.log().contains("writing each message at once"),
        "the end is logged"
    );
    let metrics = reqwest::get(node.http("/metrics"))
        .await
        .expect("GET /metrics");
    let metrics = metrics.text().await.expect("metrics text");
    assert!(metrics.contains("duplex_write_batching 0"), "{metrics}");
    assert!(
        !metrics.contains("duplex_write_batching_starts_total 0\n"),
        "{metrics}"
    );
    redis.publish("flood", b"after").await;
    for client in &mut clients {
        let frame = client.next_frame().await.expect("connection open");
        assert_eq!(frame.payload, b"after");
    }
}
