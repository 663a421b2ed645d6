//! What a backend does to sessions on every node: plain clients' frames up
//! to the upstream stream (`plain_frames`), `POST /api/unsubscribe`, and
//! `GET /api/connections` gathered from every live node.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use duplex::auth::unix_now;
use duplex::config::{PlainFrames, Settings};
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::process::NodeProcess;
use support::redis_server::RedisServer;
use support::stream::{create_group, read_group};

const SECRET: &str = "backend-api-secret";

fn token(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// Settings with connection tokens on.
fn tokens() -> Settings {
    Settings {
        token_secret: Some(SECRET.into()),
        ..Default::default()
    }
}

/// A node on `redis` with a fixed id, a quick heartbeat and `extra`.
async fn node_on(redis: &RedisServer, id: &str, extra: Settings) -> TestNode {
    let node = TestNode::start(
        extra
            .or(Settings {
                redis: Some(redis.url()),
                node_id: Some(id.into()),
                node_heartbeat: Some(Duration::from_millis(300)),
                ..Default::default()
            })
            .or(settings()),
    )
    .await;
    support::eventually("node connected to redis", || async {
        node.health().await == 200
    })
    .await;
    node
}

/// A native client connected with a token; returns it and its connection id.
async fn native(node: &TestNode, sub: &str) -> (Client, String) {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client
        .command("connect", json!({"token": token(sub)}))
        .await;
    let id = reply["result"]["client"]
        .as_str()
        .expect("client id")
        .to_string();
    (client, id)
}

/// What worker `w1` reads from the group, waiting up to 10 s: the fields
/// of each entry.
async fn read_entries(redis: &RedisServer) -> Vec<HashMap<String, String>> {
    let mut conn = redis.connection().await;
    read_group(&mut conn, "w1", 100, 10_000)
        .await
        .into_iter()
        .map(|(_, fields)| fields)
        .collect()
}

#[tokio::test]
async fn plain_frames_go_up_with_their_channel_and_to_it_in_both_mode() {
    let redis = RedisServer::start();
    create_group(&redis).await;
    let plain = |frames| Settings {
        plain_frames: Some(frames),
        ..Default::default()
    };
    let up = node_on(&redis, "up", plain(PlainFrames::Upstream)).await;
    let both = node_on(&redis, "both", plain(PlainFrames::Both)).await;
    let mut listener = Client::connect(&up.ws("/?channel=orders")).await;

    // upstream: the frame reaches the stream, naming its channel, and not the channel.
    let mut sender = Client::connect(&up.ws("/?channel=orders")).await;
    sender.send_text("order 1").await;
    let entries = read_entries(&redis).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry["kind"], "send");
    assert_eq!(entry["data"], "order 1");
    assert_eq!(entry["channel"], "orders");
    assert_eq!(entry["node"], "up");
    assert!(entry["connection"].starts_with("up."), "{entry:?}");
    redis.publish("orders", b"marker").await;
    assert_eq!(listener.next_text().await, "marker");
    assert_eq!(sender.next_text().await, "marker");

    // both: the stream and the channel's subscribers on every node.
    let mut sender = Client::connect(&both.ws("/?channel=orders")).await;
    sender.send_text("order 2").await;
    assert_eq!(listener.next_text().await, "order 2");
    assert_eq!(sender.next_text().await, "order 2");
    let entries = read_entries(&redis).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (entries[0]["data"].as_str(), entries[0]["channel"].as_str()),
        ("order 2", "orders")
    );
    assert_eq!(entries[0]["node"], "both");
    assert_eq!(up.info().await["stats"]["upstream_messages"], 1);
    assert_eq!(both.info().await["stats"]["upstream_messages"], 1);
}

#[tokio::test]
async fn unsubscribe_takes_a_user_off_a_channel_on_every_node() {
    let redis = RedisServer::start();
    let a = node_on(&redis, "a", tokens()).await;
    let b = node_on(&redis, "b", tokens()).await;
    let (mut ann_native, _) = native(&a, "ann").await;
    ann_native.subscribe(&["news", "sports"]).await;
    let mut ann_plain =
        Client::connect(&b.ws(&format!("/?channel=news&token={}", token("ann")))).await;
    let (mut bob, _) = native(&b, "bob").await;
    bob.subscribe(&["news"]).await;
    redis.publish("news", b"before").await;
    assert_eq!(ann_native.next_push().await.1, json!("before"));
    assert_eq!(ann_plain.next_text().await, "before");
    assert_eq!(bob.next_push().await.1, json!("before"));

    let (status, body) = b
        .post_json(
            "/api/unsubscribe",
            &json!({"user": "ann", "channel": "news"}),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"ok": true})));
    assert_eq!(
        ann_native.next_json().await,
        json!({"push": "unsubscribe", "channel": "news"})
    );
    let closed = ann_plain.expect_close().await;
    assert_eq!(closed.code, 3502, "{}", closed.reason);

    // After the push, nothing more from news; other channels still flow.
    redis.publish("news", b"after").await;
    assert_eq!(bob.next_push().await.1, json!("after"));
    redis.publish("sports", b"still here").await;
    assert_eq!(
        ann_native.next_json().await,
        json!({"push": "message", "channel": "sports", "data": "still here"})
    );
    // The session knows: subscribing again works and delivers again.
    ann_native.subscribe(&["news"]).await;
    redis.publish("news", b"welcome back").await;
    assert_eq!(
        ann_native.next_push().await,
        ("news".to_string(), json!("welcome back"))
    );
    assert_eq!(bob.next_push().await.1, json!("welcome back"));
    let unsubscribed = a.info().await["stats"]["api_unsubscribes"]
        .as_u64()
        .unwrap()
        + b.info().await["stats"]["api_unsubscribes"]
            .as_u64()
            .unwrap();
    assert_eq!(unsubscribed, 2);

    // One connection by id, through the other node.
    let (mut carl, carl_id) = native(&b, "carl").await;
    carl.subscribe(&["news"]).await;
    let (status, _) = a
        .post_json(
            "/api/unsubscribe",
            &json!({"connection": carl_id, "channel": "news"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        carl.next_json().await,
        json!({"push": "unsubscribe", "channel": "news"})
    );
}

/// `GET /api/connections?...` on a node, once `nodes` nodes answered and
/// none was missing (the node registry fills within a heartbeat or two).
async fn complete_list(node: &TestNode, query: &str, nodes: u64) -> Value {
    let path = format!("/api/connections{query}");
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let (status, body) = node.get_json(&path).await;
        assert_eq!(status, 200, "{body}");
        if body["incomplete"] == false && body["nodes"] == nodes {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no complete list from {nodes} nodes: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn connections_of_a_user_are_listed_across_nodes_from_either_node() {
    let redis = RedisServer::start();
    let a = node_on(&redis, "na", tokens()).await;
    let b = node_on(&redis, "nb", tokens()).await;
    let (mut ann_a, ann_a_id) = native(&a, "ann").await;
    ann_a.subscribe(&["news"]).await;
    let _ann_b = Client::connect(&b.ws(&format!("/?channel=sports&token={}", token("ann")))).await;
    let (_bob, bob_id) = native(&a, "bob").await;

    for asker in [&a, &b] {
        let list = complete_list(asker, "?user=ann", 2).await;
        let conns = list["connections"].as_array().unwrap();
        assert_eq!(conns.len(), 2, "{list}");
        assert_eq!(list["truncated"], false);
        let on_a = conns.iter().find(|c| c["node"] == "na").expect("ann on na");
        assert_eq!(on_a["id"], ann_a_id.as_str());
        assert_eq!(on_a["user"], "ann");
        assert_eq!(on_a["mode"], "native");
        let mut channels: Vec<&str> = on_a["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        channels.sort();
        assert_eq!(channels, ["#user:ann", "news"]);
        assert!(on_a["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(on_a["connected_at"].as_u64().unwrap() <= unix_now());
        let on_b = conns.iter().find(|c| c["node"] == "nb").expect("ann on nb");
        assert!(on_b["id"].as_str().unwrap().starts_with("nb."), "{on_b}");
        assert_eq!(on_b["mode"], "plain");
        assert!(on_b["channels"]
            .as_array()
            .unwrap()
            .contains(&json!("sports")));
    }
    let all = complete_list(&b, "", 2).await;
    assert_eq!(ids(&all).len(), 3, "{all}");
    assert!(ids(&all).contains(&bob_id));
    let one = complete_list(&b, "?limit=1", 2).await;
    assert_eq!(
        (ids(&one).len(), &one["truncated"]),
        (1, &json!(true)),
        "{one}"
    );
    let nobody = complete_list(&a, "?user=zed", 2).await;
    assert_eq!(nobody["connections"], json!([]));
}

#[tokio::test]
async fn a_killed_node_is_reported_missing_then_forgotten() {
    let redis = RedisServer::start();
    let survivor = TestNode::start(Settings {
        redis: Some(redis.url()),
        node_id: Some("survivor".into()),
        node_heartbeat: Some(Duration::from_secs(1)),
        query_timeout: Some(Duration::from_millis(500)),
        ..settings()
    })
    .await;
    let mut doomed = NodeProcess::start(&[
        "--redis",
        &redis.url(),
        "--node-id",
        "doomed",
        "--node-heartbeat",
        "1s",
    ])
    .await;
    let _on_doomed = Client::connect(&doomed.ws("/")).await;
    let before = complete_list(&survivor, "", 2).await;
    assert!(
        ids(&before).iter().any(|id| id.starts_with("doomed.")),
        "{before}"
    );

    doomed.kill();
    // Heard from within three heartbeats: still expected, and silent.
    let (status, after) = survivor.get_json("/api/connections").await;
    assert_eq!(status, 200);
    assert_eq!(after["incomplete"], true, "{after}");
    assert_eq!(after["missing"], json!(["doomed"]));
    assert_eq!(after["nodes"], 1);
    // Three heartbeats later it is no longer expected.
    let forgotten = complete_list(&survivor, "", 1).await;
    assert_eq!(forgotten["connections"], json!([]));
    assert!(
        survivor.info().await["stats"]["queries_incomplete"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn the_memory_broker_lists_its_own_and_bad_requests_are_refused() {
    let node = TestNode::memory().await;
    let _plain = Client::connect(&node.ws("/")).await;
    let list = complete_list(&node, "", 1).await;
    assert_eq!(ids(&list).len(), 1, "{list}");
    for (path, code) in [
        ("/api/connections?limit=0", "bad_request"),
        ("/api/connections?limit=10001", "bad_request"),
        ("/api/connections?user=", "bad_request"),
        ("/api/connections?bogus=1", "bad_request"),
    ] {
        let (status, body) = node.get_json(path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{path}: {body}"
        );
    }
    for (body, code) in [
        (json!({"user": "ann"}), "bad_request"),
        (json!({"channel": "news"}), "bad_request"),
        (
            json!({"user": "ann", "channel": "has space"}),
            "invalid_channel",
        ),
        (
            json!({"user": "ann", "connection": "x.1", "channel": "news"}),
            "bad_request",
        ),
    ] {
        let (status, answer) = node.post_json("/api/unsubscribe", &body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {answer}"
        );
    }
}

#[tokio::test]
async fn a_plain_frame_redis_refuses_is_counted_and_the_client_stays() {
    let mut redis = RedisServer::start();
    let node = node_on(
        &redis,
        "up",
        Settings {
            plain_frames: Some(PlainFrames::Upstream),
            ..Default::default()
        },
    )
    .await;
    let mut client = Client::connect(&node.ws("/?channel=orders")).await;
    redis.kill();
    support::eventually("node sees redis down", || async {
        node.health().await == 503
    })
    .await;
    client.send_text("lost").await;
    support::eventually("the refused frame is counted", || async {
        let stats = &node.info().await["stats"];
        stats["upstream_failures"] == 1 && stats["plain_publish_dropped"] == 1
    })
    .await;
    // No error channel in plain mode: the client is not closed for it.
    redis.restart();
    support::eventually("node reconnected", || async { node.health().await == 200 }).await;
    redis.publish("orders", b"back").await;
    assert_eq!(client.next_text().await, "back");
}

#[tokio::test]
async fn a_user_channel_reaches_that_user_on_both_nodes_and_nobody_else() {
    let redis = RedisServer::start();
    let a = node_on(&redis, "a", tokens()).await;
    let b = node_on(&redis, "b", tokens()).await;
    let (mut ann_a, _) = native(&a, "ann").await;
    let mut ann_b = Client::connect(&b.ws(&format!("/?token={}", token("ann")))).await;
    let (mut bob_a, _) = native(&a, "bob").await;
    let mut bob_b = Client::connect(&b.ws(&format!("/?token={}", token("bob")))).await;

    let (status, _) = b
        .post_json(
            "/api/publish",
            &json!({"channel": "#user:ann", "data": "for ann"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        ann_a.next_json().await,
        json!({"push": "message", "channel": "#user:ann", "data": "for ann"})
    );
    assert_eq!(ann_b.next_text().await, "for ann");
    // Bob's first frames are his own message: ann's never reached him.
    redis.publish("#user:bob", b"for bob").await;
    assert_eq!(
        bob_a.next_json().await,
        json!({"push": "message", "channel": "#user:bob", "data": "for bob"})
    );
    assert_eq!(bob_b.next_text().await, "for bob");
}

/// A node restarted with the same `node_id` never hands out a connection id
/// it gave before: a backend's stale `#conn:<id>` (or a disconnect, or an
/// rpc reply) for a client of the previous run reaches nobody, instead of
/// whoever holds that id now.
#[tokio::test]
async fn connection_ids_are_not_reused_after_a_restart_with_the_same_node_id() {
    let redis = RedisServer::start();
    let node_settings = || Settings {
        redis: Some(redis.url()),
        node_id: Some("m2".into()),
        ..settings()
    };
    let first = TestNode::start(node_settings()).await;
    let mut before = Client::connect(&first.ws("/ws")).await;
    let reply = before.command("connect", json!({})).await;
    let old_id = reply["result"]["client"]
        .as_str()
        .expect("client id")
        .to_string();
    first.stop().await;

    let second = TestNode::start(node_settings()).await;
    support::eventually("restarted node connected", || async {
        second.health().await == 200
    })
    .await;
    let mut after = Client::connect(&second.ws("/ws")).await;
    let reply = after.command("connect", json!({})).await;
    let new_id = reply["result"]["client"]
        .as_str()
        .expect("client id")
        .to_string();
    assert_ne!(new_id, old_id, "a new run, new ids");
    assert!(new_id.starts_with("m2."), "{new_id}");

    for (to, data) in [
        (&old_id, "for the old client"),
        (&new_id, "for the new one"),
    ] {
        let (status, body) = second
            .post_json(
                "/api/publish",
                &json!({"channel": format!("#conn:{to}"), "data": data}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(after.next_push().await.1, json!("for the new one"));
}
