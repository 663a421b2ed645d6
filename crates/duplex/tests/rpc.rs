//! Client `rpc`s answered by backend workers through the Redis Stream: the
//! worker reads the entry with a consumer group and answers on the entry's
//! `reply_to` channel (or `POST /api/reply` on any node); the client gets
//! the answer matched to its command id.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use duplex::config::Settings;
use serde_json::{json, Value};
use support::client::Client;
use support::node::TestNode;
use support::redis_server::RedisServer;
use tokio_util::sync::CancellationToken;

use support::stream::{
    create_group, items, read_group as read_group_blocking, stream_entries, Entry, Fields, GROUP,
    STREAM,
};

/// A worker's read, waiting at most 100 ms for entries.
async fn read_group(
    conn: &mut redis::aio::MultiplexedConnection,
    consumer: &str,
    count: usize,
) -> Vec<Entry> {
    read_group_blocking(conn, consumer, count, 100).await
}

/// `XAUTOCLAIM duplex:upstream workers <consumer> <min idle ms> 0-0`: the
/// entries another consumer read and never acknowledged.
async fn autoclaim(
    conn: &mut redis::aio::MultiplexedConnection,
    consumer: &str,
    min_idle_ms: u64,
) -> Vec<Entry> {
    let reply: redis::Value = redis::cmd("XAUTOCLAIM")
        .arg(STREAM)
        .arg(GROUP)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg("0-0")
        .query_async(conn)
        .await
        .expect("XAUTOCLAIM");
    stream_entries(items(&reply)[1])
}

/// What a worker publishes on `reply_to`.
fn reply_order(fields: &Fields, data: Value) -> Value {
    json!({
        "op": "reply",
        "connection": fields["connection"],
        "request": fields["request"],
        "data": data,
    })
}

/// Answers on the entry's `reply_to` channel, then acknowledges it.
async fn answer(conn: &mut redis::aio::MultiplexedConnection, entry: &Entry, order: &Value) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&entry.1["reply_to"])
        .arg(order.to_string())
        .query_async(conn)
        .await
        .expect("PUBLISH");
    let _: i64 = redis::cmd("XACK")
        .arg(STREAM)
        .arg(GROUP)
        .arg(&entry.0)
        .query_async(conn)
        .await
        .expect("XACK");
}

/// The echo a worker answers with: the call's data and who handled it.
fn echo(fields: &Fields, by: &str) -> Value {
    let data: Value = serde_json::from_str(&fields["data"]).expect("rpc data is JSON");
    json!({"method": fields["method"], "echo": data, "by": by})
}

/// A worker loop, as a backend would run it, until stopped; returns the
/// request ids it handled.
fn spawn_worker(
    redis: &RedisServer,
    consumer: &'static str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<String>> {
    let url = redis.url();
    tokio::spawn(async move {
        let mut conn = redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("worker connects");
        let mut handled = Vec::new();
        while !stop.is_cancelled() {
            for entry in read_group(&mut conn, consumer, 10).await {
                let order = reply_order(&entry.1, echo(&entry.1, consumer));
                answer(&mut conn, &entry, &order).await;
                handled.push(entry.1["request"].clone());
            }
        }
        handled
    })
}

async fn redis_node(redis: &RedisServer, extra: Settings) -> TestNode {
    let extra = Settings {
        max_publish_rate: Some(0),
        ..extra
    };
    TestNode::on_redis(&redis.url(), extra).await
}

/// Sends `rpc` commands with ids `first..first+n` without waiting, then
/// collects the `n` replies by id.
async fn rpcs(client: &mut Client, first: u64, n: u64, method: &str) -> HashMap<u64, Value> {
    for id in first..first + n {
        let command = json!({"id": id, "method": "rpc", "params": {"method": method, "data": id}});
        client.send_text(&command.to_string()).await;
    }
    let mut replies = HashMap::new();
    while replies.len() < n as usize {
        let reply = client.next_json().await;
        let id = reply["id"].as_u64().expect("a reply with an id");
        assert!(replies.insert(id, reply).is_none(), "one reply per id");
    }
    replies
}

#[tokio::test]
async fn an_rpc_is_answered_by_a_stream_worker() {
    let redis = RedisServer::start();
    create_group(&redis).await;
    let node = redis_node(&redis, Settings::default()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let hello = client.command("connect", json!({})).await;
    let conn_id = hello["result"]["client"].as_str().unwrap().to_string();
    let node_id = hello["result"]["node"].as_str().unwrap().to_string();

    let command = json!({"id": 7, "method": "rpc", "params": {"method": "sum", "data": [1, 2]}});
    client.send_text(&command.to_string()).await;
    let mut worker = redis.connection().await;
    let entries = loop {
        let entries = read_group(&mut worker, "w1", 10).await;
        if !entries.is_empty() {
            break entries;
        }
    };
    assert_eq!(entries.len(), 1);
    let fields = &entries[0].1;
    assert_eq!(fields["kind"], "rpc");
    assert_eq!(fields["method"], "sum");
    assert_eq!(fields["data"], "[1,2]");
    assert_eq!(fields["encoding"], "json");
    assert_eq!(fields["connection"], conn_id);
    assert_eq!(fields["user"], "");
    assert_eq!(fields["node"], node_id);
    assert_eq!(fields["reply_to"], format!("#node:{node_id}"));
    assert!(fields["request"].parse::<u64>().is_ok(), "{fields:?}");
    assert!(fields["ts"].parse::<u64>().unwrap() > 1_700_000_000_000);

    answer(
        &mut worker,
        &entries[0],
        &reply_order(fields, json!({"sum": 3})),
    )
    .await;
    let reply = client.next_json().await;
    assert_eq!(reply, json!({"id": 7, "result": {"data": {"sum": 3}}}));

    // A backend error passes through with its code; other codes become 115.
    for (code, expected) in [(4004, 4004), (42, 115)] {
        let command = json!({"id": 8, "method": "rpc", "params": {"method": "get"}});
        client.send_text(&command.to_string()).await;
        let entry = loop {
            if let Some(e) = read_group(&mut worker, "w1", 1).await.pop() {
                break e;
            }
        };
        assert_eq!(entry.1["data"], "null");
        let order = json!({
            "op": "reply", "connection": conn_id, "request": entry.1["request"],
            "error": {"code": code, "message": "no such thing"},
        });
        answer(&mut worker, &entry, &order).await;
        let reply = client.next_json().await;
        assert_eq!(reply["id"], 8);
        assert_eq!(reply["error"]["code"], expected, "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no such thing"),
            "{reply}"
        );
    }
    assert_eq!(node.stat("rpc_requests").await, 3);
    assert_eq!(node.stat("rpc_replies").await, 3);
    assert_eq!(node.stat("rpc_pending").await, 0);
    let metrics = reqwest::get(node.http("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(metrics.contains("duplex_rpc_requests_total 3"), "{metrics}");
    assert!(
        metrics.contains("duplex_rpc_duration_seconds_count 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn two_workers_share_a_thousand_requests_each_handled_once() {
    let redis = RedisServer::start();
    create_group(&redis).await;
    let node = redis_node(
        &redis,
        Settings {
            max_pending_rpcs: Some(250),
            ..Default::default()
        },
    )
    .await;
    let stop = CancellationToken::new();
    let workers = [
        spawn_worker(&redis, "w1", stop.clone()),
        spawn_worker(&redis, "w2", stop.clone()),
    ];
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(&node.ws("/ws")).await);
    }
    let mut by = HashMap::<String, usize>::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let first = i as u64 * 250;
        let replies = rpcs(client, first, 250, "echo").await;
        for (id, reply) in replies {
            let data = &reply["result"]["data"];
            assert_eq!(data["echo"], id, "matched to its command id: {reply}");
            *by.entry(data["by"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    stop.cancel();
    let mut seen = HashSet::new();
    let mut total = 0;
    for worker in workers {
        let handled = worker.await.expect("worker");
        total += handled.len();
        seen.extend(handled);
    }
    assert_eq!(
        (total, seen.len()),
        (1000, 1000),
        "each request handled once"
    );
    assert_eq!(by.values().sum::<usize>(), 1000);
    assert_eq!(by.len(), 2, "both workers took a share: {by:?}");
    assert_eq!(node.stat("rpc_pending").await, 0);
}

#[tokio::test]
async fn a_crashed_workers_calls_are_claimed_and_answered_by_another() {
    let redis = RedisServer::start();
    create_group(&redis).await;
    let node = redis_node(&redis, Settings::default()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    for id in 1..=3 {
        let command = json!({"id": id, "method": "rpc", "params": {"method": "job", "data": id}});
        client.send_text(&command.to_string()).await;
    }
    // The first worker reads them and dies before acknowledging.
    let mut dead = redis.connection().await;
    let mut taken = Vec::new();
    while taken.len() < 3 {
        taken.extend(read_group(&mut dead, "crashed", 10).await);
    }
    drop(dead);
    // The survivor claims what has been pending for a while, and answers.
    let mut rescuer = redis.connection().await;
    let mut claimed = Vec::new();
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while claimed.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "claimed {claimed:?}"
        );
        claimed.extend(autoclaim(&mut rescuer, "rescuer", 50).await);
        // Entries become claimable once idle 50 ms; poll, not wait for an event.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for entry in &claimed {
        answer(
            &mut rescuer,
            entry,
            &reply_order(&entry.1, echo(&entry.1, "rescuer")),
        )
        .await;
    }
    for _ in 1..=3 {
        let reply = client.next_json().await;
        assert_eq!(reply["result"]["data"]["echo"], reply["id"], "{reply}");
        assert_eq!(reply["result"]["data"]["by"], "rescuer");
    }
    // Nothing is left pending in the group.
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(&mut rescuer)
        .await
        .expect("XPENDING");
    assert_eq!(items(&pending)[0], &redis::Value::Int(0), "{pending:?}");
}

#[tokio::test]
async fn a_call_times_out_and_its_late_reply_is_dropped_and_counted() {
    let redis = RedisServer::start();
    create_group(&redis).await;
    let node = redis_node(
        &redis,
        Settings {
            rpc_timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    )
    .await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client
        .command("rpc", json!({"method": "slow", "data": {}}))
        .await;
    assert_eq!(reply["error"]["code"], 113, "{reply}");
    assert_eq!(reply["error"]["temporary"], true);
    assert_eq!(node.stat("rpc_timeouts").await, 1);
    assert_eq!(node.stat("rpc_pending").await, 0);

    // The slow worker answers after all: dropped, counted, nothing reaches the client.
    let mut worker = redis.connection().await;
    let entry = read_group(&mut worker, "slowpoke", 1).await.remove(0);
    answer(
        &mut worker,
        &entry,
        &reply_order(&entry.1, json!("too late")),
    )
    .await;
    // Made-up request ids are dropped the same way.
    let made_up =
        json!({"op": "reply", "connection": entry.1["connection"], "request": "nope", "data": 1});
    answer(&mut worker, &entry, &made_up).await;
    support::eventually("late replies counted", || async {
        node.stat("rpc_late_replies").await == 2
    })
    .await;
    let pong = client.command("ping", json!({})).await;
    assert_eq!(pong["result"], json!({}), "no stray frame before: {pong}");
}

#[tokio::test]
async fn a_reply_through_node_b_reaches_the_client_on_node_a() {
    let redis = RedisServer::start();
    create_group(&redis).await;
    let a = redis_node(
        &redis,
        Settings {
            node_id: Some("a".into()),
            ..Default::default()
        },
    )
    .await;
    let b = redis_node(
        &redis,
        Settings {
            node_id: Some("b".into()),
            ..Default::default()
        },
    )
    .await;
    let mut client = Client::connect(&a.ws("/ws")).await;
    let mut worker = redis.connection().await;
    // Through B's API (published to A's channel), then through A's own (applied locally).
    for (id, via) in [(1, &b), (2, &a)] {
        let command = json!({"id": id, "method": "rpc", "params": {"method": "where"}});
        client.send_text(&command.to_string()).await;
        let entry = loop {
            if let Some(e) = read_group(&mut worker, "w", 1).await.pop() {
                break e;
            }
        };
        assert_eq!(entry.1["reply_to"], "#node:a");
        let (status, body) = via
            .post_json(
                "/api/reply",
                &json!({"connection": entry.1["connection"], "request_id": entry.1["request"], "data": {"via": id}}),
            )
            .await;
        assert_eq!((status, &body), (200, &json!({"ok": true})));
        let reply = client.next_json().await;
        assert_eq!(reply, json!({"id": id, "result": {"data": {"via": id}}}));
    }
    let (status, body) = b
        .post_json(
            "/api/reply",
            &json!({"connection": "a.1", "request": "1", "data": 1, "error": {"code": 1000}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(a.stat("rpc_replies").await, 2);
}

#[tokio::test]
async fn pending_calls_are_bounded_and_forgotten_on_disconnect() {
    let redis = RedisServer::start();
    create_group(&redis).await;
    let node = redis_node(
        &redis,
        Settings {
            max_pending_rpcs: Some(2),
            ..Default::default()
        },
    )
    .await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    // No worker: the first two wait; the third is refused at once.
    for id in 1..=2 {
        let command = json!({"id": id, "method": "rpc", "params": {"method": "m"}});
        client.send_text(&command.to_string()).await;
    }
    support::eventually("two calls waiting", || async {
        node.stat("rpc_pending").await == 2
    })
    .await;
    let reply = client.command("rpc", json!({"method": "m"})).await;
    assert_eq!(reply["error"]["code"], 114, "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_pending_rpcs"));
    // Another connection has its own allowance.
    let mut other = Client::connect(&node.ws("/ws")).await;
    let command = json!({"id": 1, "method": "rpc", "params": {"method": "m"}});
    other.send_text(&command.to_string()).await;
    support::eventually("three calls waiting", || async {
        node.stat("rpc_pending").await == 3
    })
    .await;
    client.close().await;
    other.close().await;
    support::eventually("calls forgotten with their connections", || async {
        node.stat("rpc_pending").await == 0
    })
    .await;
    assert_eq!(node.stat("rpc_abandoned").await, 3);
    assert_eq!(node.stat("rpc_refused").await, 1);
}

#[tokio::test]
async fn a_redis_outage_answers_107_and_leaves_nothing_waiting() {
    let mut redis = RedisServer::start();
    let node = redis_node(&redis, Settings::default()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    redis.kill();
    let reply = client.command("rpc", json!({"method": "m"})).await;
    assert_eq!(reply["error"]["code"], 107, "{reply}");
    assert_eq!(reply["error"]["temporary"], true);
    assert_eq!(node.stat("rpc_failures").await, 1);
    assert_eq!(node.stat("rpc_pending").await, 0);
}

#[tokio::test]
async fn without_an_upstream_rpc_is_refused_with_102() {
    let node = TestNode::memory().await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("rpc", json!({"method": "m"})).await;
    assert_eq!(reply["error"]["code"], 102, "{reply}");
    let reply = client.command("rpc", json!({"method": ""})).await;
    assert_eq!(reply["error"]["code"], 101, "{reply}");
    assert_eq!(node.stat("rpc_pending").await, 0);
}

/// What a backend sends to one connection (`#conn:<id>` through
/// `/api/publish`) or answers to an rpc (`/api/reply`) reaches the client
/// as the backend wrote it: key order, repeated keys, big numbers and
/// exponents untouched, as a publish to a channel does.
#[tokio::test]
async fn a_backends_json_reaches_one_connection_as_written() {
    const TEXT: &str = r#"{"b":1,"a":123456789012345678901234567890,"a":2,"e":1E2}"#;
    let redis = RedisServer::start();
    create_group(&redis).await;
    let node = redis_node(&redis, Settings::default()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("connect", json!({})).await;
    let id = reply["result"]["client"]
        .as_str()
        .expect("client id")
        .to_string();
    let post = |path: &str, body: String| {
        let url = node.http(path);
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("POST");
            response.status().as_u16()
        }
    };
    let publish = format!(r##"{{"channel":"#conn:{id}","data":{TEXT}}}"##);
    assert_eq!(post("/api/publish", publish).await, 200);
    let frame = client.next_text().await;
    assert!(frame.contains(&format!(r#""data":{TEXT}"#)), "{frame}");

    let command = json!({"id": 7, "method": "rpc", "params": {"method": "m"}});
    client.send_text(&command.to_string()).await;
    let mut worker = redis.connection().await;
    let entry = loop {
        if let Some(e) = read_group(&mut worker, "w", 1).await.pop() {
            break e;
        }
    };
    let answer = format!(
        r#"{{"connection":{},"request":{},"data":{TEXT}}}"#,
        json!(entry.1["connection"]),
        json!(entry.1["request"])
    );
    assert_eq!(post("/api/reply", answer).await, 200);
    let frame = client.next_text().await;
    assert!(frame.contains(&format!(r#""data":{TEXT}"#)), "{frame}");
}
