//! History and recovery as clients and backends see them: offsets on
//! publishes and pushes, positions on subscribe, `recover` with no gap and
//! no duplicate (while publishes keep coming), `recovered: false` when the
//! epoch changed or the gap is too large, the `history` command and
//! `GET /api/history`, and raw `PUBLISH` counted as unrecorded.

mod support;

use std::time::Duration;

use duplex::config::Settings;
use duplex::permissions::Namespace;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::redis_server::RedisServer;

/// `news:*` keeps 100 publications for an hour, recovering at most 50.
fn with_history() -> Settings {
    Settings {
        namespaces: Some(vec![Namespace {
            pattern: "news:*".into(),
            history_size: 1000,
            history_ttl: Some(Duration::from_secs(3600)),
            recovery_max_publications: Some(50),
            ..Default::default()
        }]),
        ..settings()
    }
}

async fn publish(node: &TestNode, channel: &str, data: Value) -> Value {
    let (status, body) = node
        .post_json("/api/publish", &json!({"channel": channel, "data": data}))
        .await;
    assert_eq!(status, 200, "publish: {body}");
    body
}

/// Subscribes to one channel, `recover`ing from `from` if given; the
/// channel's entry of the result's `positions`.
async fn subscribe(client: &mut Client, channel: &str, from: Option<&Value>) -> Value {
    let mut params = json!({"channel": channel});
    if let Some(from) = from {
        params["recover"] = json!({ channel: from });
    }
    let reply = client.command("subscribe", params).await;
    assert_eq!(reply["result"]["channels"], json!([channel]), "{reply}");
    reply["result"]["positions"][channel].clone()
}

/// The next `message` push: (offset, data).
async fn next_message(client: &mut Client) -> (Option<u64>, Value) {
    loop {
        let push = client.next_json().await;
        if push["push"] == "message" {
            return (push["offset"].as_u64(), push["data"].clone());
        }
    }
}

#[tokio::test]
async fn offsets_from_publish_to_push_and_in_history() {
    let node = TestNode::start(with_history()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let start = subscribe(&mut client, "news:a", None).await;
    assert_eq!(start["offset"], 0, "{start}");
    let epoch = start["epoch"].as_str().expect("an epoch").to_string();
    assert!(start.get("recovered").is_none(), "not asked to recover");

    let first = publish(&node, "news:a", json!("one")).await;
    assert_eq!(first, json!({"ok": true, "offset": 1, "epoch": epoch}));
    // An epoch's first message names it, so live subscribers see a new one.
    assert_eq!(
        client.next_json().await,
        json!({"push": "message", "channel": "news:a", "offset": 1, "epoch": epoch, "data": "one"})
    );
    // A client's own publish answers with the offset too (its own copy,
    // queued before the reply, is skipped by `command`).
    let reply = client
        .command("publish", json!({"channel": "news:a", "data": {"n": 2}}))
        .await;
    assert_eq!(reply["result"], json!({"offset": 2, "epoch": epoch}));

    // Channels without history are as before: no offset anywhere.
    assert_eq!(
        publish(&node, "other", json!("x")).await,
        json!({"ok": true})
    );
    client.subscribe(&["plain"]).await;
    publish(&node, "plain", json!("live")).await;
    assert_eq!(next_message(&mut client).await, (None, json!("live")));

    let history = client
        .command("history", json!({"channel": "news:a", "since": 1}))
        .await;
    assert_eq!(
        history["result"],
        json!({"epoch": epoch, "offset": 2, "publications": [{"offset": 2, "data": {"n": 2}}]})
    );
    let (status, body) = node
        .get_json("/api/history?channel=news:a&reverse=true&limit=1")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"epoch": epoch, "offset": 2, "publications": [{"offset": 2, "data": {"n": 2}}]})
    );
    let refused = client.command("history", json!({"channel": "plain"})).await;
    assert_eq!(refused["error"]["code"], 116, "{refused}");
    assert_eq!(node.get_json("/api/history?channel=plain").await.0, 404);
}

#[tokio::test]
async fn a_returning_client_gets_exactly_what_it_missed_then_live_ones() {
    let node = TestNode::start(with_history()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let start = subscribe(&mut client, "news:b", None).await;
    publish(&node, "news:b", json!(1)).await;
    assert_eq!(next_message(&mut client).await, (Some(1), json!(1)));
    client.close().await;

    for i in 2..=6 {
        publish(&node, "news:b", json!(i)).await;
    }
    let mut back = Client::connect(&node.ws("/ws")).await;
    let from = json!({"epoch": start["epoch"], "offset": 1});
    let position = subscribe(&mut back, "news:b", Some(&from)).await;
    assert_eq!(
        position,
        json!({"epoch": start["epoch"], "offset": 6, "recovered": true})
    );
    for i in 2..=6 {
        assert_eq!(next_message(&mut back).await, (Some(i), json!(i)));
    }
    publish(&node, "news:b", json!(7)).await;
    assert_eq!(next_message(&mut back).await, (Some(7), json!(7)));
    assert_eq!(node.stat("recoveries_recovered").await, 1);
}

#[tokio::test]
async fn never_a_partial_recovery() {
    let node = TestNode::start(with_history()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let start = subscribe(&mut client, "news:c", None).await;
    for i in 1..=60 {
        publish(&node, "news:c", json!(i)).await;
    }
    client.close().await;

    // 60 missed, at most 50 recovered: nothing, and the app knows to reload.
    let mut back = Client::connect(&node.ws("/ws")).await;
    let from = json!({"epoch": start["epoch"], "offset": 0});
    let position = subscribe(&mut back, "news:c", Some(&from)).await;
    assert_eq!(position["recovered"], false, "{position}");
    assert_eq!(position["offset"], 60);
    // Another epoch: offsets mean nothing there.
    let mut other = Client::connect(&node.ws("/ws")).await;
    let stale = json!({"epoch": "not-this-one", "offset": 59});
    let position = subscribe(&mut other, "news:c", Some(&stale)).await;
    assert_eq!(position["recovered"], false, "{position}");
    // Live messages follow with nothing replayed before them.
    publish(&node, "news:c", json!("next")).await;
    assert_eq!(next_message(&mut back).await, (Some(61), json!("next")));
    assert_eq!(next_message(&mut other).await, (Some(61), json!("next")));
    assert_eq!(node.stat("recoveries_failed").await, 2);
}

/// A client that leaves and comes back every few hundred messages, on
/// alternating nodes, while 10,000 publishes keep coming through both
/// nodes' APIs, a backend's `FCALL duplex_publish` and the ingest stream
/// (`XADD`): every offset exactly once, in order, and every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_under_load_loses_and_repeats_nothing() {
    let redis = RedisServer::start();
    // The default recovery_max_publications (1000): gaps here are ~20-100.
    let recovering = || {
        let mut settings = with_history();
        if let Some(namespaces) = &mut settings.namespaces {
            namespaces[0].recovery_max_publications = None;
        }
        Settings {
            ingest_stream: Some("duplex:ingest".into()),
            ..settings
        }
    };
    let a = TestNode::on_redis(&redis.url(), recovering()).await;
    let b = TestNode::on_redis(&redis.url(), recovering()).await;
    const TOTAL: u64 = 10_000;
    let api = reqwest::Client::new();
    let urls = [a.http("/api/publish"), b.http("/api/publish")];
    let mut backend = redis.connection().await;
    let publish_all = async move {
        for i in 1..=TOTAL {
            let data = i.to_string();
            match i % 4 {
                0 => {
                    fcall(&mut backend, "news:load", &data).await;
                }
                1 => {
                    let _: String = redis::cmd("XADD")
                        .arg("duplex:ingest")
                        .arg("*")
                        .arg("channel")
                        .arg("news:load")
                        .arg("data")
                        .arg(&data)
                        .query_async(&mut backend)
                        .await
                        .expect("XADD");
                }
                n => {
                    let body = json!({"channel": "news:load", "data": i});
                    let sent = api.post(&urls[(n % 2) as usize]).json(&body).send().await;
                    assert_eq!(sent.expect("publish").status(), 200);
                }
            }
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let mut publisher = Some(publish_all);
    let mut running = None;
    let mut seen: Vec<u64> = Vec::new();
    let mut data_seen = std::collections::HashSet::new();
    let mut position: Option<Value> = None;
    let mut round = 0;
    while seen.last().copied().unwrap_or(0) < TOTAL {
        let node = if round % 2 == 0 { &a } else { &b };
        round += 1;
        let mut client = Client::connect(&node.ws("/ws")).await;
        let got = subscribe(&mut client, "news:load", position.as_ref()).await;
        if position.is_some() {
            assert_eq!(got["recovered"], true, "round {round}: {got}");
        }
        // Publishing starts once the first subscriber stands at offset 0.
        if let Some(publish_all) = publisher.take() {
            running = Some(tokio::spawn(publish_all));
        }
        let epoch = got["epoch"].clone();
        // Stay for a few hundred messages (or to the end), then leave.
        let stay = 100 + (round * 37) % 300;
        // Where this round starts: what it recovers from (the missed
        // messages follow), or the position a first subscribe answers.
        let mut last = match &position {
            Some(from) => from["offset"].as_u64().expect("offset"),
            None => got["offset"].as_u64().expect("offset"),
        };
        let top = got["offset"].as_u64().expect("offset");
        assert!(top >= last, "round {round}: top {top} behind {last}");
        for _ in 0..stay {
            if last >= TOTAL {
                break;
            }
            let (offset, data) = next_message(&mut client).await;
            let offset = offset.expect("every message here has an offset");
            let number = data.as_u64().expect("data is a publish number");
            assert!(
                data_seen.insert(number),
                "message {number} twice (offset {offset})"
            );
            seen.push(offset);
            last = offset;
        }
        position = Some(json!({"epoch": epoch, "offset": last}));
        client.close().await;
        // Away while at least 20 more are published: a real gap to recover.
        let wanted = (last + 20).min(TOTAL);
        support::eventually("publishes while away", || async {
            let (_, top) = a.get_json("/api/history?channel=news:load&limit=0").await;
            top["offset"].as_u64().unwrap_or(0) >= wanted
        })
        .await;
    }
    running
        .expect("publishing started")
        .await
        .expect("publisher");
    // Each offset once, one after the other, from the first.
    for (want, got) in (1..).zip(&seen) {
        assert_eq!(
            *got, want,
            "offset {want} came as {got} ({round} reconnects)"
        );
    }
    assert_eq!(seen.len() as u64, TOTAL);
    assert_eq!(data_seen.len() as u64, TOTAL, "every message once");
}

#[tokio::test]
async fn a_raw_publish_on_a_history_channel_is_live_only_and_counted() {
    let redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), with_history()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    subscribe(&mut client, "news:raw", None).await;
    redis.publish("news:raw", b"\"from PUBLISH\"").await;
    assert_eq!(
        next_message(&mut client).await,
        (None, json!("from PUBLISH"))
    );
    assert_eq!(node.stat("unrecorded_publishes").await, 1);
    // FCALL from any Redis client records it.
    let mut conn = redis.connection().await;
    let offset: i64 = redis::cmd("FCALL")
        .arg("duplex_publish")
        .arg(1)
        .arg("news:raw")
        .arg("\"from FCALL\"")
        .query_async(&mut conn)
        .await
        .expect("FCALL duplex_publish");
    assert_eq!(offset, 1);
    assert_eq!(
        next_message(&mut client).await,
        (Some(1), json!("from FCALL"))
    );
    assert_eq!(node.stat("unrecorded_publishes").await, 1);
}

#[tokio::test]
async fn redis_restarted_empty_means_a_new_epoch_and_no_recovery() {
    let mut redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), with_history()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let start = subscribe(&mut client, "news:epoch", None).await;
    publish(&node, "news:epoch", json!(1)).await;
    assert_eq!(next_message(&mut client).await, (Some(1), json!(1)));
    client.close().await;

    redis.restart();
    support::eventually("node back on redis", || async {
        node.health().await == 200
    })
    .await;
    let published = publish(&node, "news:epoch", json!("after")).await;
    assert_eq!(published["offset"], 1, "{published}");
    assert_ne!(published["epoch"], start["epoch"]);
    let mut back = Client::connect(&node.ws("/ws")).await;
    let from = json!({"epoch": start["epoch"], "offset": 1});
    let position = subscribe(&mut back, "news:epoch", Some(&from)).await;
    assert_eq!(
        position,
        json!({"epoch": published["epoch"], "offset": 1, "recovered": false})
    );
}

#[tokio::test]
async fn history_needs_the_right_to_subscribe() {
    let mut with_private = with_history();
    if let Some(namespaces) = &mut with_private.namespaces {
        namespaces.push(Namespace {
            pattern: "secret:*".into(),
            subscribe: duplex::permissions::SubscribeRule::Token,
            history_size: 10,
            history_ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        });
    }
    let node = TestNode::start(with_private).await;
    publish(&node, "secret:x", json!("hidden")).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let refused = client
        .command("history", json!({"channel": "secret:x"}))
        .await;
    assert_eq!(refused["error"]["code"], 105, "{refused}");
    let refused = client
        .command(
            "subscribe",
            json!({"channel": "secret:x", "recover": {"secret:x": {"epoch": "e", "offset": 0}}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], 105, "{refused}");
}

/// `FCALL duplex_publish` from a backend's plain Redis client: the offset.
async fn fcall(conn: &mut redis::aio::MultiplexedConnection, channel: &str, data: &str) -> i64 {
    redis::cmd("FCALL")
        .arg("duplex_publish")
        .arg(1)
        .arg(channel)
        .arg(data)
        .query_async(conn)
        .await
        .expect("FCALL duplex_publish")
}

/// The node's subscriber connection is cut while a backend keeps
/// publishing: the node reads what it missed and delivers it in order
/// before live ones; the client notices nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_blip_is_repaired_by_the_node_without_reconnects() {
    let redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), with_history()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    subscribe(&mut client, "news:blip", None).await;
    let mut backend = redis.connection().await;
    assert_eq!(fcall(&mut backend, "news:blip", "1").await, 1);
    assert_eq!(next_message(&mut client).await, (Some(1), json!(1)));

    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut backend)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1, "the node's one subscriber connection");
    for i in 2..=40 {
        assert_eq!(fcall(&mut backend, "news:blip", &i.to_string()).await, i);
    }
    for i in 2..=40 {
        assert_eq!(next_message(&mut client).await, (Some(i as u64), json!(i)));
    }
    assert_eq!(node.stat("history_repairs").await, 1);
    assert_eq!(node.info().await["broker"]["reconnects"], 1);
    // Still the same connection: it answers.
    assert!(client
        .command("ping", json!({}))
        .await
        .get("result")
        .is_some());
}

/// Redis comes back empty: the node cannot fill the gap, so its native
/// clients of the channel are closed with 3008 and, back with `recover`,
/// learn `recovered: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_the_node_cannot_fill_closes_its_clients_with_3008() {
    let mut redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), with_history()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let start = subscribe(&mut client, "news:lost", None).await;
    publish(&node, "news:lost", json!(1)).await;
    assert_eq!(next_message(&mut client).await, (Some(1), json!(1)));
    redis.restart();
    let closed = client.expect_close().await;
    assert_eq!(closed.code, 3008, "{closed:?}");
    assert_eq!(node.stat("history_repairs_failed").await, 1);
    let mut back = Client::connect(&node.ws("/ws")).await;
    let from = json!({"epoch": start["epoch"], "offset": 1});
    let position = subscribe(&mut back, "news:lost", Some(&from)).await;
    assert_eq!(position["recovered"], false, "{position}");
}

/// Many clients coming back to one channel at once, all from the same
/// position (a node restart behind a load balancer): one history read
/// serves them all, not one read each, and later ones are answered from
/// what the node holds of the channel without reading again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_storm_costs_one_read_not_one_per_client() {
    const CLIENTS: usize = 300;
    const LATER: usize = 50;
    let redis = RedisServer::start();
    let slow_redis_ok = Settings {
        redis_timeout: Some(Duration::from_secs(20)),
        ..with_history()
    };
    let node = TestNode::on_redis(&redis.url(), slow_redis_ok).await;
    let mut first = Client::connect(&node.ws("/ws")).await;
    let start = subscribe(&mut first, "news:storm", None).await;
    for i in 1..=5 {
        publish(&node, "news:storm", json!(i)).await;
    }
    for i in 1..=5u64 {
        assert_eq!(next_message(&mut first).await, (Some(i), json!(i)));
    }
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::connect(&node.ws("/ws")).await);
    }
    let reads_before = node.stat("history_reads").await;
    // Redis stops answering while they all ask: their reads must pile up
    // behind one.
    redis.pause();
    let from = json!({"news:storm": {"epoch": start["epoch"], "offset": 0}});
    let recover = json!({"id": 1, "method": "subscribe",
        "params": {"channel": "news:storm", "recover": from}});
    for client in &mut clients {
        client.send_text(&recover.to_string()).await;
    }
    support::eventually("every read but one waits for a shared one", || async {
        node.stat("history_reads_shared").await == CLIENTS as u64 - 1
    })
    .await;
    redis.resume();
    for client in &mut clients {
        let reply = client.next_json().await;
        assert_eq!(
            reply["result"]["positions"]["news:storm"]["recovered"], true,
            "{reply}"
        );
        for i in 1..=5u64 {
            assert_eq!(next_message(client).await, (Some(i), json!(i)));
        }
    }
    // The one that read; the others from what it read, kept by the node.
    assert_eq!(node.stat("history_reads").await - reads_before, 1);
    assert_eq!(node.stat("history_reads_local").await, CLIENTS as u64 - 1);
    // Later ones, one by one, while publishing goes on: no read at all.
    for i in 6..6 + LATER as u64 {
        publish(&node, "news:storm", json!(i)).await;
        // Delivered on this node (so the node holds it too).
        assert_eq!(next_message(&mut first).await, (Some(i), json!(i)));
        let mut late = Client::connect(&node.ws("/ws")).await;
        let behind = json!({"epoch": start["epoch"], "offset": i - 3});
        let reply = subscribe(&mut late, "news:storm", Some(&behind)).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(reply["offset"], i, "{reply}");
        for want in i - 2..=i {
            assert_eq!(next_message(&mut late).await, (Some(want), json!(want)));
        }
    }
    assert_eq!(node.stat("history_reads").await - reads_before, 1);
}

/// `duplex publish` says where the message went on a history channel,
/// through the API and straight into Redis alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_says_the_offset() {
    let redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), with_history()).await;
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
            .args(args)
            .output()
            .await
            .expect("duplex publish runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let through_api = run(["publish", "news:cli", "one", "--server", &node.http("")]
        .map(String::from)
        .to_vec())
    .await;
    assert!(
        through_api.contains("published at offset 1 (epoch "),
        "{through_api}"
    );
    let through_redis = run(["publish", "news:cli", "two", "--redis", &redis.url()]
        .map(String::from)
        .to_vec())
    .await;
    assert!(
        through_redis.contains("published to Redis at offset 2"),
        "{through_redis}"
    );
    let plain = run(["publish", "plain", "three", "--redis", &redis.url()]
        .map(String::from)
        .to_vec())
    .await;
    assert!(plain.contains("keeps no history"), "{plain}");
}

/// `recovery_mode = "cache"`: the latest publication is the channel's
/// state; a new subscriber gets it at once, a returning one only if it has
/// not seen it.
#[tokio::test]
async fn cache_mode_gives_the_latest_state_at_once() {
    let node = TestNode::start(Settings {
        namespaces: Some(vec![Namespace {
            pattern: "price:*".into(),
            history_size: 1,
            history_ttl: Some(Duration::from_secs(60)),
            recovery_mode: duplex::permissions::RecoveryMode::Cache,
            ..Default::default()
        }]),
        ..settings()
    })
    .await;
    let mut early = Client::connect(&node.ws("/ws")).await;
    let empty = subscribe(&mut early, "price:btc", None).await;
    assert_eq!(empty["offset"], 0);
    for price in [100, 101, 102] {
        publish(&node, "price:btc", json!(price)).await;
    }
    let mut late = Client::connect(&node.ws("/ws")).await;
    let position = subscribe(&mut late, "price:btc", None).await;
    assert_eq!(position["offset"], 3, "{position}");
    assert_eq!(next_message(&mut late).await, (Some(3), json!(102)));
    // Returning behind the top: the latest only, recovered.
    let mut back = Client::connect(&node.ws("/ws")).await;
    let from = json!({"epoch": position["epoch"], "offset": 1});
    let position = subscribe(&mut back, "price:btc", Some(&from)).await;
    assert_eq!(position["recovered"], true, "{position}");
    assert_eq!(next_message(&mut back).await, (Some(3), json!(102)));
    // At the top: nothing again, next comes live.
    let mut current = Client::connect(&node.ws("/ws")).await;
    let from = json!({"epoch": position["epoch"], "offset": 3});
    let position = subscribe(&mut current, "price:btc", Some(&from)).await;
    assert_eq!(position["recovered"], true, "{position}");
    publish(&node, "price:btc", json!(103)).await;
    assert_eq!(next_message(&mut current).await, (Some(4), json!(103)));
}

/// Two nodes on Redis; the one a client is on dies with SIGKILL mid-stream.
/// The client comes back on the other with its last position and gets
/// every message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_killed_node_recovers_on_another() {
    const TOTAL: u64 = 600;
    let redis = RedisServer::start();
    let config = std::env::temp_dir().join(format!("duplex-history-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[[namespaces]]\npattern = \"news:*\"\nhistory_size = 1000\nhistory_ttl = \"1h\"\n",
    )
    .expect("config file");
    let url = redis.url();
    let mut a = support::process::NodeProcess::start(&[
        "--redis",
        &url,
        "--config",
        config.to_str().expect("utf-8 path"),
    ])
    .await;
    let b = TestNode::on_redis(&url, with_history()).await;
    support::eventually("node a on redis", || async {
        reqwest::get(a.http("/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let mut client = Client::connect(&a.ws("/ws")).await;
    let start = subscribe(&mut client, "news:kill", None).await;
    let api = reqwest::Client::new();
    let publish_url = b.http("/api/publish");
    let publisher = tokio::spawn(async move {
        for i in 1..=TOTAL {
            let body = json!({"channel": "news:kill", "data": i});
            let sent = api.post(&publish_url).json(&body).send().await;
            assert_eq!(sent.expect("publish").status(), 200);
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 100 {
        let (offset, data) = next_message(&mut client).await;
        assert_eq!(data, json!(offset.expect("offset")));
        seen.push(offset.expect("offset"));
    }
    a.kill();
    drop(client);
    let last = *seen.last().expect("some seen");
    let mut back = Client::connect(&b.ws("/ws")).await;
    let from = json!({"epoch": start["epoch"], "offset": last});
    let position = subscribe(&mut back, "news:kill", Some(&from)).await;
    assert_eq!(position["recovered"], true, "{position}");
    while seen.last() != Some(&TOTAL) {
        let (offset, data) = next_message(&mut back).await;
        assert_eq!(data, json!(offset.expect("offset")));
        seen.push(offset.expect("offset"));
    }
    publisher.await.expect("publisher");
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert!(
        seen == expected,
        "lost or repeated: {} seen, last {last} before the kill",
        seen.len()
    );
    let _ = std::fs::remove_file(&config);
}

/// The README's PHP line, with phpredis as Debian ships it (5.3 has no
/// `fcall()`): `rawCommand('FCALL', 'duplex_publish', 1, channel, data)`
/// answers the offset and reaches clients with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_publishes_with_history_through_fcall() {
    use support::examples::{has_library, PHP_REDIS};
    if !has_library("php", &PHP_REDIS).await {
        return;
    }
    let redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), with_history()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    subscribe(&mut client, "news:php", None).await;
    let port = redis.url().rsplit(':').next().expect("port").to_string();
    let script = format!(
        "$redis = new Redis(); $redis->connect('127.0.0.1', {port}); \
         echo $redis->rawCommand('FCALL', 'duplex_publish', 1, 'news:php', 'data from PHP');"
    );
    let out = tokio::process::Command::new("php")
        .args(["-r", &script])
        .output()
        .await
        .expect("php runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1");
    assert_eq!(
        next_message(&mut client).await,
        (Some(1), json!("data from PHP"))
    );
}
