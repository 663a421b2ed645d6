//! Without `write_delay`, a node that cannot keep up with one write per
//! delivery batches each client's messages by itself, catches up, and goes
//! back to writing each message at once: a backend that floods a channel
//! through Redis loses nothing and nobody is cut.

mod support;

use support::process::NodeProcess;
use support::raw::Raw;
use support::redis_server::RedisServer;

const SUBSCRIBERS: usize = 200;
const MESSAGES: usize = 2000;

/// Reads `MESSAGES` text frames and checks they are `0, 1, 2...` in order.
async fn read_all_in_order(mut client: Raw) -> Raw {
    for i in 0..MESSAGES {
        let frame = client.next_frame().await.expect("connection open");
        assert_eq!(frame.opcode, 1, "text frame");
        assert_eq!(
            frame.payload,
            i.to_string().as_bytes(),
            "in order, none missing"
        );
    }
    client
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

    // The whole flood reaches the node's Redis connection at once: far more
    // than one write per delivery drains before the next message is due.
    let mut pipe = redis::pipe();
    for i in 0..MESSAGES {
        pipe.cmd("PUBLISH").arg("flood").arg(i.to_string()).ignore();
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(read_all_in_order(c)))
        .collect();
    let mut conn = redis.connection().await;
    let () = pipe.query_async(&mut conn).await.expect("PUBLISH flood");
    let mut clients = Vec::new();
    for reader in readers {
        clients.push(reader.await.expect("every subscriber got the flood"));
    }

    let info = node.info().await;
    let stats = &info["stats"];
    assert_eq!(
        stats["deliveries"],
        (SUBSCRIBERS * MESSAGES) as u64,
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
