//! Redis Sentinel and the pub/sub liveness probe (issue 19): a node on
//! `redis+sentinel://` follows a planned failover and a killed master
//! with the same WebSocket clients, publishes to the new master (checked
//! by a plain SUBSCRIBE there), repairs a history channel across the
//! switch (or closes its clients with 3008, the existing contract); and a
//! subscriber link gone deaf while nothing reports it is caught by the
//! probe: `/health` degraded, counted, the link redone, delivery back.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duplex::config::Settings;
use duplex::permissions::Namespace;
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::proxy::Proxy;
use support::redis_server::RedisServer;
use support::sentinel::SentinelGroup;
use support::WAIT;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Short bounds so a failover is noticed within about a second.
fn fast() -> Settings {
    Settings {
        redis_timeout: Some(Duration::from_secs(1)),
        redis_health_interval: Some(Duration::from_millis(500)),
        broker_probe_interval: Some(Duration::from_millis(500)),
        ..settings()
    }
}

async fn group() -> SentinelGroup {
    tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .expect("sentinel group")
}

/// Publishes through the node's API until it is accepted (refusals are
/// expected while the node reconnects); the answer.
async fn publish(node: &TestNode, channel: &str, data: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = node
            .post_json("/api/publish", &json!({"channel": channel, "data": data}))
            .await;
        if status == 200 {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish never accepted: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a plain Redis subscriber on one data server receives on `channel`.
async fn watch_server(port: u16, channel: &str) -> mpsc::UnboundedReceiver<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub connection");
    pubsub.subscribe(channel).await.expect("SUBSCRIBE");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let payload: Vec<u8> = message.get_payload_bytes().to_vec();
            if tx
                .send(String::from_utf8_lossy(&payload).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message on the master within the wait")
        .expect("the master's subscriber stays connected")
}

/// Publishes `during-<n>` through the node until stopped (a stream of
/// traffic across the switch); how many were accepted.
fn keep_publishing(node: &TestNode, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    let url = node.http("/api/publish");
    tokio::spawn(async move {
        let mut accepted = 0;
        for n in 0.. {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let body = json!({"channel": "news", "data": format!("during-{n}")});
            let (status, _) = support::post_json(&url, &body).await;
            accepted += usize::from(status == 200);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        accepted
    })
}

/// After the switch: 20 publications through the node reach both the
/// new master's own subscriber (the node publishes there, not into the
/// demoted server) and the node's WebSocket client, in order.
async fn delivery_resumes(node: &TestNode, client: &mut Client, master: u16) {
    let named = std::time::Instant::now();
    let mut on_master = watch_server(master, "news").await;
    publish(node, "news", "first").await;
    eprintln!(
        "first publish accepted {} ms after the switch was complete",
        named.elapsed().as_millis()
    );
    assert_eq!(next(&mut on_master).await, "first");
    for n in 0..20 {
        publish(node, "news", &format!("after-{n}")).await;
    }
    for n in 0..20 {
        assert_eq!(next(&mut on_master).await, format!("after-{n}"));
    }
    let mut expected = 0;
    while expected < 20 {
        let (_, data) = client.next_push().await;
        let text = data.as_str().unwrap_or_default().to_string();
        if (text.starts_with("during-") || text == "first") && expected == 0 {
            continue;
        }
        assert_eq!(text, format!("after-{expected}"));
        expected += 1;
    }
    let info = node.info().await;
    assert_eq!(
        info["connections"], 1,
        "the client never reconnected: {info}"
    );
    assert!(info["broker"]["reconnects"].as_u64() >= Some(1), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_failover_moves_publisher_and_subscriber() {
    let group = group().await;
    let node = TestNode::on_redis(&group.url(), fast()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    client.subscribe(&["news"]).await;
    publish(&node, "news", "before").await;
    assert_eq!(client.next_push().await.1, json!("before"));

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = keep_publishing(&node, Arc::clone(&stop));
    let group = Arc::new(group);
    let switching = Arc::clone(&group);
    let master = tokio::task::spawn_blocking(move || switching.failover())
        .await
        .expect("failover");
    stop.store(true, Ordering::SeqCst);
    let accepted = publisher.await.expect("publisher");
    assert!(accepted > 0, "the stream ran across the switch");
    delivery_resumes(&node, &mut client, master).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_master_is_replaced_and_delivery_resumes() {
    let mut group = group().await;
    let node = TestNode::on_redis(&group.url(), fast()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    client.subscribe(&["news"]).await;
    publish(&node, "news", "before").await;
    assert_eq!(client.next_push().await.1, json!("before"));

    let killed = std::time::Instant::now();
    let (master, group) = tokio::task::spawn_blocking(move || (group.kill_master(), group))
        .await
        .expect("kill the master");
    eprintln!(
        "sentinels promoted a replica {} ms after the kill",
        killed.elapsed().as_millis()
    );
    delivery_resumes(&node, &mut client, master).await;

    // `duplex publish --redis redis+sentinel://...` finds the new master too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["publish", "news", "from the cli", "--redis", &group.url()])
        .output()
        .await
        .expect("run duplex publish");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(client.next_push().await.1, json!("from the cli"));
}

/// `news:*` keeps 1000 publications for an hour.
fn with_history() -> Settings {
    Settings {
        namespaces: Some(vec![Namespace {
            pattern: "news:*".into(),
            history_size: 1000,
            history_ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        }]),
        ..fast()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_channel_has_no_gap_across_a_failover() {
    let group = Arc::new(group().await);
    let node = TestNode::on_redis(&group.url(), with_history()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client
        .command("subscribe", json!({"channel": "news:1"}))
        .await;
    let epoch = reply["result"]["positions"]["news:1"]["epoch"]
        .as_str()
        .expect("an epoch")
        .to_string();

    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (url, accepted, stop) = (
            node.http("/api/publish"),
            Arc::clone(&accepted),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            for n in 0u64.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let data = format!("n-{n}");
                let body = json!({"channel": "news:1", "data": data});
                if support::post_json(&url, &body).await.0 == 200 {
                    accepted.lock().expect("not poisoned").push(data);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let switching = Arc::clone(&group);
    tokio::task::spawn_blocking(move || switching.failover())
        .await
        .expect("failover");
    stop.store(true, Ordering::SeqCst);
    publisher.await.expect("publisher");
    publish(&node, "news:1", "end").await;

    // Every accepted publication once, offsets 1, 2, 3... in one epoch;
    // or, where the gap cannot be filled, a 3008 close to resubscribe.
    let mut offsets = Vec::new();
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("no silence");
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                assert_eq!(code, Some(3008), "only a resubscribe close is acceptable");
                eprintln!(
                    "history failover: closed with 3008 after {} publications",
                    seen.len()
                );
                return;
            }
            Some(Ok(_)) => continue,
            other => panic!("client lost: {other:?}"),
        };
        let push: Value = serde_json::from_str(&text).expect("JSON");
        if push["push"] != "message" {
            continue;
        }
        if let Some(other) = push["epoch"].as_str() {
            assert_eq!(other, epoch, "{push}");
        }
        offsets.push(push["offset"].as_u64().expect("an offset"));
        let data = push["data"].as_str().unwrap_or_default().to_string();
        if data == "end" {
            break;
        }
        seen.push(data);
    }
    let want: Vec<u64> = (1..=offsets.len() as u64).collect();
    assert_eq!(offsets, want, "offsets in order, none missing, none twice");
    let accepted = accepted.lock().expect("not poisoned").clone();
    for n in &accepted {
        assert!(seen.contains(n), "accepted publication {n} never delivered");
    }
    eprintln!(
        "history failover: {} accepted, {} delivered, no gap",
        accepted.len(),
        seen.len()
    );
}

/// The probe's test needs no Sentinel: a Redis behind a proxy that
/// silently stops forwarding the node's open connections (a NAT that lost
/// its flow table), with the subscriber's own health PING a minute away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_subscriber_is_caught_by_the_probe_and_relinked() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let extra = Settings {
        redis_timeout: Some(Duration::from_secs(1)),
        redis_health_interval: Some(Duration::from_secs(60)),
        broker_probe_interval: Some(Duration::from_secs(1)),
        ..settings()
    };
    let node = TestNode::on_redis(&format!("redis://127.0.0.1:{}", proxy.port), extra).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    client.subscribe(&["news"]).await;
    publish(&node, "news", "before").await;
    assert_eq!(client.next_push().await.1, json!("before"));
    support::eventually("a probe came back", || async {
        metric(&node, "duplex_broker_probe_sent_total").await >= 1
    })
    .await;

    proxy.kill_open_connections();
    let degraded = Arc::new(Mutex::new(Value::Null));
    support::eventually("health says degraded", || async {
        let (status, body) = node.get_json("/health").await;
        let found = status == 503 && body["status"] == "degraded";
        *degraded.lock().expect("not poisoned") = body;
        found
    })
    .await;
    let degraded = degraded.lock().expect("not poisoned").clone();
    let reason = degraded["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("probe"), "{degraded}");
    assert!(metric(&node, "duplex_broker_probe_failures_total").await >= 1);
    assert!(metric(&node, "duplex_broker_probe_relinks_total").await >= 1);

    // The relinked subscriber hears the channel again, same client.
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publish(&node, "news", &format!("after-{n}")).await;
        n += 1;
        let got = tokio::time::timeout(Duration::from_millis(300), client.next_push()).await;
        if got.is_ok_and(|(_, data)| data.as_str().is_some_and(|d| d.starts_with("after-"))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery never resumed"
        );
    }
    support::eventually("health back to ok", || async { node.health().await == 200 }).await;
    assert_eq!(node.info().await["connections"], 1);
}

/// A sample from `/metrics`, 0 when absent.
async fn metric(node: &TestNode, name: &str) -> u64 {
    let text = reqwest::get(node.http("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(0, |v| v as u64)
}
