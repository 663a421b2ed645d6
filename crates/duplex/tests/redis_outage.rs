//! Redis killed and restarted under connected clients: health says so in
//! between, and delivery resumes by itself.

mod support;

use serde_json::json;
use support::client::Client;
use support::node::TestNode;
use support::redis_server::RedisServer;

#[tokio::test]
async fn delivery_resumes_after_redis_restart() {
    let mut redis = RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    support::eventually("healthy", || async { node.health().await == 200 }).await;
    let mut plain = Client::connect(&node.ws("/")).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.subscribe(&["news"]).await;

    redis.kill();
    support::eventually("health turns 503", || async { node.health().await == 503 }).await;
    let info = node.info().await;
    assert_eq!(info["broker"]["status"], "disconnected", "{info}");
    // A burst of publishes during the outage: each is refused with a
    // temporary error, in order, none hangs.
    for id in 1000..1200 {
        let command =
            json!({"id": id, "method": "publish", "params": {"channel": "news", "data": "lost"}});
        native.send_text(&command.to_string()).await;
    }
    for id in 1000..1200 {
        let reply = native.next_json().await;
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["error"]["code"], 107, "{reply}");
        assert_eq!(reply["error"]["temporary"], true);
    }
    // Plain clients have no error channel: their frames are dropped and counted.
    for _ in 0..50 {
        plain.send_text("lost too").await;
    }
    support::eventually("plain frames counted as dropped", || async {
        node.info().await["stats"]["plain_publish_dropped"] == 50
    })
    .await;
    let (status, body) = node
        .post_json("/api/publish", &json!({"channel": "news", "data": "x"}))
        .await;
    assert_eq!(status, 503, "{body}");

    redis.restart();
    support::eventually("health back to 200", || async {
        node.health().await == 200
    })
    .await;
    assert_eq!(redis.numsub("channel").await, 1, "resubscribed by itself");
    assert_eq!(redis.numsub("news").await, 1);
    redis.publish("channel", b"after restart").await;
    assert_eq!(plain.next_text().await, "after restart");
    redis.publish("news", b"\"native too\"").await;
    assert_eq!(native.next_push().await.1, json!("native too"));
    let info = node.info().await;
    assert_eq!(info["broker"]["reconnects"], 1, "{info}");
}

#[tokio::test]
async fn node_starts_degraded_when_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    // Starting degraded is documented: the node serves, /health says 503,
    // subscribing is refused (nothing would arrive), and it connects when
    // Redis comes up.
    let node = TestNode::start(duplex::config::Settings {
        redis: Some(url),
        redis_timeout: Some(std::time::Duration::from_millis(300)),
        redis_max_backoff: Some(std::time::Duration::from_millis(200)),
        ..support::node::settings()
    })
    .await;
    assert_eq!(node.health().await, 503, "started degraded");
    let info = node.info().await;
    assert!(
        info["broker"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{info}"
    );
    let (status, _) = support::client::refused(&node.ws("/")).await;
    assert_eq!(status, 503, "a plain client is told to come back");
    redis.restart();
    support::eventually("health 200", || async { node.health().await == 200 }).await;
    let mut plain = Client::connect(&node.ws("/")).await;
    redis.publish("channel", b"hello late redis").await;
    assert_eq!(plain.next_text().await, "hello late redis");
}

#[tokio::test]
async fn stalled_redis_times_out_publishes_then_recovers() {
    let redis = RedisServer::start();
    let node = TestNode::start(duplex::config::Settings {
        redis: Some(redis.url()),
        redis_timeout: Some(std::time::Duration::from_millis(500)),
        redis_health_interval: Some(std::time::Duration::from_millis(300)),
        ..support::node::settings()
    })
    .await;
    support::eventually("healthy", || async { node.health().await == 200 }).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.subscribe(&["news"]).await;

    // Stall Redis (every connection, the node's too) until the test has
    // seen what it waits for: the stall outlasts the events, however slow
    // the machine, instead of lasting a fixed time.
    redis.pause();
    let reply = native
        .command("publish", json!({"channel": "news", "data": "stalled"}))
        .await;
    let code = reply["error"]["code"].as_u64();
    assert!(
        matches!(code, Some(107 | 109)),
        "a temporary error while Redis is still stalled, not a hang: {reply}"
    );
    // The health ping notices the stall; once Redis answers again, delivery resumes.
    support::eventually("health turns 503 while stalled", || async {
        node.health().await == 503
    })
    .await;
    redis.resume();
    support::eventually("health back to 200", || async {
        node.health().await == 200
    })
    .await;
    // Publish until one arrives: a PUBLISH racing the resubscription may
    // reach no one, which is at-most-once delivery, not a failure.
    for attempt in 0.. {
        assert!(attempt < 50, "delivery did not resume");
        redis.publish("news", b"\"after the stall\"").await;
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(200), native.next_push());
        if let Ok((_, data)) = waiting.await {
            assert_eq!(data, json!("after the stall"));
            break;
        }
    }
}

/// A frozen Redis (SIGSTOP) answers nothing: every publish is refused
/// within `redis_timeout`, including those that find the publish
/// connection gone and have to open (or wait for) a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_a_frozen_redis_are_refused_within_redis_timeout() {
    let timeout = std::time::Duration::from_secs(2);
    let redis = RedisServer::start();
    let node = TestNode::start(duplex::config::Settings {
        redis: Some(redis.url()),
        redis_timeout: Some(timeout),
        redis_health_interval: Some(std::time::Duration::from_secs(60)),
        ..support::node::settings()
    })
    .await;
    support::eventually("healthy", || async { node.health().await == 200 }).await;
    let publish = |i: usize| {
        let url = node.http("/api/publish");
        async move {
            let started = std::time::Instant::now();
            let (status, body) =
                support::post_json(&url, &json!({"channel": "news", "data": i})).await;
            (status, body, started.elapsed())
        }
    };
    // Each answer must come while Redis is still frozen (it stays frozen
    // until all are in) and within a generous deadline: three times
    // `redis_timeout` tolerates a loaded machine, while waits stacked
    // behind one another would take up to 21 times it.
    let deadline = 3 * timeout;
    assert_eq!(publish(0).await.0, 200);
    redis.pause();
    // The first one times out and gives up the publish connection...
    let (status, body, took) = publish(1).await;
    assert_ne!(status, 200, "{body}");
    assert!(took < deadline, "{took:?}");
    // ...so these must open a new one (one of them) or wait for it (the rest).
    let all = futures_util::future::join_all((2..22).map(publish)).await;
    redis.resume();
    for (status, body, took) in all {
        assert_ne!(status, 200, "{body}");
        assert!(
            took < deadline,
            "refused within redis_timeout ({timeout:?}), not stacked: {took:?}: {body}"
        );
    }
}

#[tokio::test]
async fn silently_dead_redis_connection_is_detected_and_replaced() {
    let redis = RedisServer::start();
    let proxy = support::proxy::Proxy::start(redis.port).await;
    let node = TestNode::start(duplex::config::Settings {
        redis: Some(format!("redis://127.0.0.1:{}", proxy.port)),
        redis_timeout: Some(std::time::Duration::from_millis(500)),
        redis_health_interval: Some(std::time::Duration::from_millis(300)),
        ..support::node::settings()
    })
    .await;
    support::eventually("healthy", || async { node.health().await == 200 }).await;
    let mut plain = Client::connect(&node.ws("/")).await;

    proxy.blackhole(true);
    // No FIN, no RST: only the health PING (every 300 ms, 500 ms to answer)
    // can notice; TCP by itself would not within `eventually`'s deadline.
    support::eventually("dead connection detected", || async {
        node.health().await == 503
    })
    .await;
    proxy.blackhole(false);
    support::eventually("reconnected", || async { node.health().await == 200 }).await;
    for attempt in 0.. {
        assert!(attempt < 50, "delivery did not resume");
        redis.publish("channel", b"alive again").await;
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(200), plain.next_text());
        if let Ok(text) = waiting.await {
            assert_eq!(text, "alive again");
            break;
        }
    }
}

/// Right after Redis comes back, the node's publish connection works before
/// its subscriber has resubscribed (it may still be in its reconnect
/// backoff). A publish the node acknowledges must reach its own clients: until
/// the subscriber is back it is refused (503 / 107), never "ok" and lost.
#[tokio::test]
async fn an_acknowledged_publish_after_a_restart_is_delivered_here() {
    let mut redis = RedisServer::start();
    let node = TestNode::start(duplex::config::Settings {
        redis: Some(redis.url()),
        // A long backoff keeps the subscriber away for a while after the restart.
        redis_max_backoff: Some(std::time::Duration::from_secs(3)),
        ..support::node::settings()
    })
    .await;
    support::eventually("healthy", || async { node.health().await == 200 }).await;
    let mut plain = Client::connect(&node.ws("/")).await;
    redis.kill();
    support::eventually("health turns 503", || async { node.health().await == 503 }).await;
    // The outage lasts two seconds (the scenario, not a wait for an event):
    // long enough for the subscriber's reconnect backoff to pass a second.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    redis.restart();
    let mut refused = 0;
    for attempt in 0.. {
        assert!(attempt < 500, "publishes never accepted again");
        let (status, _) = node
            .post_json(
                "/api/publish",
                &json!({"channel": "channel", "data": format!("m{attempt}")}),
            )
            .await;
        if status == 200 {
            assert_eq!(
                plain.next_text().await,
                format!("m{attempt}"),
                "acknowledged, so delivered"
            );
            break;
        }
        assert_eq!(status, 503);
        refused += 1;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    eprintln!("{refused} publishes refused while the subscriber came back");
}

/// Issue 15 #8: once `/health` says 200 after a Redis restart, the first
/// `send` (XADD) and the first publish succeed: the node's append/publish
/// connection died with the old Redis, and the node must find that out
/// before a client's request does (it answered 107 "broken pipe").
#[tokio::test]
async fn the_first_requests_after_a_restart_succeed() {
    let mut redis = RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    support::eventually("healthy", || async { node.health().await == 200 }).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    let reply = native.command("send", json!({"data": "before"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");

    redis.restart();
    support::eventually("health back to 200", || async {
        node.health().await == 200
    })
    .await;
    let reply = native.command("send", json!({"data": "after"})).await;
    assert_eq!(
        reply["result"],
        json!({}),
        "first send after the restart: {reply}"
    );
    let (status, body) = node
        .post_json("/api/publish", &json!({"channel": "channel", "data": "x"}))
        .await;
    assert_eq!(status, 200, "first publish after the restart: {body}");
}

/// Redis closes idle clients after its `timeout` (managed Redis often sets
/// one): the node's idle append/publish connection is gone when the next
/// request comes, and that request must still succeed.
#[tokio::test]
async fn a_connection_redis_closed_for_idleness_is_replaced_before_use() {
    let redis = RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    support::eventually("healthy", || async { node.health().await == 200 }).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    let reply = native.command("send", json!({"data": "before"})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    // The node's publish connection is the one whose last command was XADD.
    let publisher_open = || async {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut redis.connection().await)
            .await
            .expect("CLIENT LIST");
        list.lines().any(|l| l.contains("cmd=xadd"))
    };
    assert!(publisher_open().await);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("timeout")
        .arg("1")
        .query_async(&mut redis.connection().await)
        .await
        .expect("CONFIG SET timeout");
    // Redis closes idle clients (not subscribers): the node's publisher goes.
    support::eventually("redis closed the idle publish connection", || async {
        !publisher_open().await
    })
    .await;
    assert_eq!(
        node.health().await,
        200,
        "the subscriber connection is untouched"
    );
    let reply = native.command("send", json!({"data": "after"})).await;
    assert_eq!(
        reply["result"],
        json!({}),
        "send after the idle close: {reply}"
    );
}
