//! Floods from one client: answered or cut, with the node's memory bounded
//! (read from /proc of a node in its own process) and the other clients
//! receiving everything meanwhile.

mod support;

use serde_json::{json, Value};
use support::client::Client;
use support::process::NodeProcess;
use support::raw::{frame, Raw};
use support::redis_server::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Peak RSS a flood may add to the node: the per-connection bounds
/// (1 MiB outbound queue, one 64 KiB message) plus allocator slack.
const FLOOD_BUDGET_KIB: u64 = 32 * 1024;

fn ping(payload_len: usize) -> Vec<u8> {
    frame(0x89, &vec![b'p'; payload_len], true)
}

#[tokio::test]
async fn ping_flood_from_a_reader_gets_every_pong() {
    let node = NodeProcess::start(&[]).await;
    let flooder = Raw::connect(node.addr, "/").await;
    const PINGS: usize = 20_000;
    let batch: Vec<u8> = (0..1000).flat_map(|_| ping(16)).collect();
    let (mut rx, mut tx) = flooder.into_split();
    let write = async {
        for _ in 0..PINGS / 1000 {
            tx.write_all(&batch).await.expect("write pings");
        }
    };
    let read = async {
        // Pongs are 18 bytes each (2 header + 16 payload), in order.
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while got < PINGS * 18 {
            let n = tokio::time::timeout(support::WAIT, rx.tcp.read(&mut buf))
                .await
                .expect("pongs keep coming")
                .expect("read");
            assert!(n > 0, "connection closed after {} pongs", got / 18);
            assert!(buf[..n].iter().all(|b| [0x8a, 16, b'p'].contains(b)));
            got += n;
        }
        got
    };
    let ((), got) = tokio::join!(write, read);
    assert_eq!(got, PINGS * 18);
    let mut flooder = Raw::reunite(rx, tx);
    // And the connection still works as a client.
    flooder.send(&frame(0x81, b"still here", true)).await;
    let echo = flooder.next_frame().await.expect("echo");
    assert_eq!(echo.payload, b"still here");
    assert_eq!(node.stat("slow_consumer_disconnects").await, 0);
}

#[tokio::test]
async fn ping_flood_from_a_non_reader_is_cut_and_memory_stays_bounded() {
    let node = NodeProcess::start(&[]).await;
    let mut bystander = Client::connect(&node.ws("/ws")).await;
    bystander.subscribe(&["news"]).await;
    let baseline = node.rss_kib();
    let mut flooder = Raw::connect(node.addr, "/").await;
    // 125-byte pings, as big as control frames get, never reading the pongs:
    // 40 MB of pongs if the node kept them all.
    let batch: Vec<u8> = (0..1000).flat_map(|_| ping(125)).collect();
    let flood = tokio::spawn(async move {
        for _ in 0..300 {
            if flooder.tcp.write_all(&batch).await.is_err() {
                break; // cut: the node stopped reading and closed
            }
        }
        flooder
    });
    support::eventually("flooder cut as a slow consumer", || async {
        node.stat("slow_consumer_disconnects").await == 1
    })
    .await;
    for i in 0..50 {
        let (status, _) = support::post_json(
            &node.http("/api/publish"),
            &json!({"channel": "news", "data": i}),
        )
        .await;
        assert_eq!(status, 200);
    }
    for i in 0..50 {
        assert_eq!(bystander.next_push().await, ("news".to_string(), json!(i)));
    }
    let mut flooder = flood.await.expect("flood task");
    // The connection ends (a 3001 close frame, or a reset if the pongs
    // still queued in the kernel are in the way).
    while let Some(f) = flooder.next_frame().await {
        if f.opcode == 8 {
            assert_eq!(f.close_code(), Some(3001));
            break;
        }
        assert_eq!(f.opcode, 0xa, "only pongs before the close");
    }
    let peak = node.peak_rss_kib();
    assert!(
        peak < baseline + FLOOD_BUDGET_KIB,
        "peak RSS {peak} KiB vs {baseline} KiB before the flood"
    );
}

/// Thousands of subscribe/unsubscribe commands, pipelined, over hundreds of
/// channels, through Redis (each first subscriber and last leaver is a Redis
/// SUBSCRIBE/UNSUBSCRIBE): every command answered, nothing left behind in
/// the node or in Redis, a bystander gets every message meanwhile.
#[tokio::test]
async fn subscribe_churn_leaves_nothing_behind() {
    let redis = RedisServer::start();
    let node = NodeProcess::on_redis(&redis.url()).await;
    let mut bystander = Client::connect(&node.ws("/ws")).await;
    bystander.subscribe(&["news"]).await;
    let baseline = node.rss_kib();

    const PAIRS: u64 = 5000;
    let churner = Raw::connect(node.addr, "/ws").await;
    let mut commands = Vec::new();
    for i in 0..PAIRS {
        let channel = format!("churn-{}", i % 500);
        for (id, method) in [(2 * i + 1, "subscribe"), (2 * i + 2, "unsubscribe")] {
            let command = json!({"id": id, "method": method, "params": {"channel": channel}});
            commands.extend(frame(0x81, command.to_string().as_bytes(), true));
        }
    }
    let started = std::time::Instant::now();
    let (mut replies, mut tx) = churner.into_split();
    let write = async { tx.write_all(&commands).await.expect("write commands") };
    let publish = async {
        for i in 0..100 {
            assert_eq!(redis.publish("news", i.to_string().as_bytes()).await, 1);
        }
    };
    let read = async {
        for id in 1..=2 * PAIRS {
            let f = replies.next_frame().await.expect("reply");
            let reply: Value = serde_json::from_slice(&f.payload).expect("JSON reply");
            assert_eq!(reply["id"], id, "replies in order: {reply}");
            assert!(reply.get("result").is_some(), "{reply}");
        }
    };
    tokio::join!(write, publish, read);
    eprintln!(
        "{} subscribe/unsubscribe commands in {:?}",
        2 * PAIRS,
        started.elapsed()
    );
    for i in 0..100 {
        assert_eq!(bystander.next_push().await, ("news".to_string(), json!(i)));
    }
    let info = node.info().await;
    assert_eq!(
        (&info["subscriptions"], &info["channels"]),
        (&json!(1), &json!(1))
    );
    for i in [0, 1, 250, 499] {
        assert_eq!(redis.numsub(&format!("churn-{i}")).await, 0);
    }
    assert_eq!(redis.numsub("news").await, 1);
    let peak = node.peak_rss_kib();
    assert!(
        peak < baseline + FLOOD_BUDGET_KIB,
        "peak RSS {peak} KiB vs {baseline} KiB before the churn"
    );
}

/// Clients that vanish (TCP reset) in the middle of subscribing hundreds of
/// channels leave nothing behind: not in the node, not in Redis, where only
/// the node's own order channels stay subscribed (a regression case of
/// issue 14: subscribes now wait for Redis, and an abandoned one is undone).
#[tokio::test]
async fn clients_reset_mid_subscribe_leave_nothing_behind() {
    const CLIENTS: usize = 50;
    const CHANNELS: usize = 220;
    let redis = RedisServer::start();
    let node = NodeProcess::on_redis(&redis.url()).await;
    let mut resets = Vec::new();
    for c in 0..CLIENTS {
        let mut raw = Raw::connect(node.addr, "/ws").await;
        let channels: Vec<String> = (0..CHANNELS).map(|i| format!("ch-{c}-{i}")).collect();
        let command = json!({"id": 1, "method": "subscribe", "params": {"channels": channels}});
        raw.send(&frame(0x81, command.to_string().as_bytes(), true))
            .await;
        resets.push(raw);
    }
    for raw in resets {
        socket2::SockRef::from(&raw.tcp)
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("linger");
        drop(raw); // RST, whatever the node was doing
    }
    support::eventually("the node holds nothing", || async {
        let info = node.info().await;
        info["connections"] == 0 && info["subscriptions"] == 0 && info["channels"] == 0
    })
    .await;
    let mut conn = redis.connection().await;
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut conn)
        .await
        .expect("PUBSUB CHANNELS");
    assert!(
        channels.iter().all(|c| c.starts_with('#')),
        "only the node's order channels stay subscribed in Redis: {channels:?}"
    );
    assert_eq!(
        channels.len(),
        3,
        "#control, #node:<id> and #exclude:<id>: {channels:?}"
    );
}

/// Hostile frames from many connections at once: each gets its code, the
/// node's memory stays within the per-connection bounds, a bystander is
/// served throughout.
#[tokio::test]
async fn hostile_frames_from_many_clients_cost_bounded_memory() {
    let node = NodeProcess::start(&[]).await;
    let mut bystander = Client::connect(&node.ws("/ws")).await;
    bystander.subscribe(&["news"]).await;
    let baseline = node.rss_kib();
    // A text message in 100,000 one-byte fragments (the limit is 1024).
    let mut fragments = frame(0x01, b"a", true);
    for _ in 0..99_998 {
        fragments.extend(frame(0x00, b"a", true));
    }
    fragments.extend(frame(0x80, b"a", true));
    // A header announcing a 2^62-byte frame: refused before any payload is buffered.
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    // JSON nested 60,000 levels deep, just under the 64 KiB limit.
    let deep = frame(0x81, "[".repeat(60_000).as_bytes(), true);
    let mut attacks = Vec::new();
    for i in 0..150 {
        let (path, bytes, expect) = match i % 3 {
            0 => ("/", fragments.clone(), Some(1009)),
            1 => ("/ws", huge.clone(), Some(1009)),
            _ => ("/ws", deep.clone(), None),
        };
        let addr = node.addr;
        attacks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr, path).await;
            // The node may cut us mid-write: that is the point.
            let _ = raw.tcp.write_all(&bytes).await;
            match expect {
                Some(code) => assert_eq!(raw.close_code().await, code),
                None => {
                    let reply = raw.next_frame().await.expect("an error reply");
                    let reply: Value = serde_json::from_slice(&reply.payload).expect("JSON");
                    assert_eq!(reply["error"]["code"], 101, "{reply}");
                }
            }
        }));
    }
    for i in 0..20 {
        support::post_json(
            &node.http("/api/publish"),
            &json!({"channel": "news", "data": i}),
        )
        .await;
    }
    for attack in attacks {
        attack.await.expect("attack answered as documented");
    }
    for i in 0..20 {
        assert_eq!(bystander.next_push().await, ("news".to_string(), json!(i)));
    }
    assert_eq!(node.stat("protocol_errors").await, 100);
    let peak = node.peak_rss_kib();
    assert!(
        peak < baseline + FLOOD_BUDGET_KIB,
        "peak RSS {peak} KiB vs {baseline} KiB before the attacks"
    );
}
