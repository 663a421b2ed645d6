//! Presence as clients and backends see it: members with their user and
//! token `info`, per-user joins and leaves across nodes and tabs, counts,
//! the subscribe rule on `presence`, and channels without presence.

mod support;

use duplex::auth::unix_now;
use duplex::config::Settings;
use duplex::permissions::{Namespace, SubscribeRule};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::redis_server::RedisServer;

const SECRET: &str = "presence-test-secret";

/// A connection token for `sub`, with `info` when given.
fn token(sub: &str, info: Option<Value>) -> String {
    let mut claims = json!({"sub": sub, "exp": unix_now() + 600});
    if let Some(info) = info {
        claims["info"] = info;
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// `room:*` keeps presence with pushes; `quiet:*` presence without;
/// `secret:*` presence for signed-in users only; the rest none.
fn presence_settings() -> Settings {
    Settings {
        token_secret: Some(SECRET.into()),
        allow_anonymous: Some(true),
        namespaces: Some(vec![
            Namespace {
                pattern: "room:*".into(),
                presence: true,
                join_leave: true,
                ..Default::default()
            },
            Namespace {
                pattern: "quiet:*".into(),
                presence: true,
                ..Default::default()
            },
            Namespace {
                pattern: "secret:*".into(),
                subscribe: SubscribeRule::Authenticated,
                presence: true,
                join_leave: true,
                ..Default::default()
            },
        ]),
        ..settings()
    }
}

/// A native client connected as `sub` (anonymous when empty).
async fn native(node: &TestNode, sub: &str, info: Option<Value>) -> Client {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let token = (!sub.is_empty()).then(|| token(sub, info));
    let reply = client.command("connect", json!({"token": token})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    client
}

/// The next `join` or `leave` push, or a message push (a marker).
async fn next_event(client: &mut Client) -> Value {
    loop {
        let v = client.next_json().await;
        if v["push"] == "join" || v["push"] == "leave" || v["push"] == "message" {
            return v;
        }
    }
}

/// Subscribes to `channels` asking for `join` / `leave` pushes.
async fn subscribe_listening(client: &mut Client, channels: &[&str]) {
    let reply = client
        .command(
            "subscribe",
            json!({"channels": channels, "join_leave": true}),
        )
        .await;
    assert!(reply.get("result").is_some(), "subscribe: {reply}");
}

/// Subscribes to `channels` (asking for pushes) and returns the own `join` pushes (one per
/// channel with pushes), which may come before or after the reply.
async fn subscribe_joining(client: &mut Client, channels: &[&str], joins: usize) -> Vec<Value> {
    client
        .send_text(
            &json!({"id": 999, "method": "subscribe", "params": {"channels": channels, "join_leave": true}})
                .to_string(),
        )
        .await;
    let (mut replied, mut seen) = (false, Vec::new());
    while !replied || seen.len() < joins {
        let v = client.next_json().await;
        if v["id"] == 999 {
            assert!(v.get("result").is_some(), "subscribe: {v}");
            replied = true;
        } else if v["push"] == "join" {
            seen.push(v);
        }
    }
    seen
}

/// The `presence` members as sorted (user, conn) pairs.
async fn members(client: &mut Client, channel: &str) -> Vec<(String, String)> {
    let reply = client
        .command("presence", json!({"channel": channel}))
        .await;
    let list = reply["result"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("presence: {reply}"));
    let mut out: Vec<(String, String)> = list
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap_or_default().to_string(),
                m["conn"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn stats(client: &mut Client, channel: &str) -> Value {
    let reply = client
        .command("presence_stats", json!({"channel": channel}))
        .await;
    reply["result"].clone()
}

/// Asks `presence_stats` until it answers `want` (within the tests' wait).
async fn wait_stats(client: &mut Client, channel: &str, want: Value) {
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let got = stats(client, channel).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel}: stats {got}, waiting for {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Publishes a marker through `node`: what that node pushed before it
/// reaches a client before the marker does.
async fn marker(node: &TestNode, channel: &str, n: u64) {
    let (status, body) = node
        .post_json(
            "/api/publish",
            &json!({"channel": channel, "data": {"marker": n}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Reads events up to marker `n`; the joins and leaves before it.
async fn until_marker(client: &mut Client, n: u64) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = next_event(client).await;
        if v["push"] == "message" {
            if v["data"]["marker"] == n {
                return seen;
            }
            continue;
        }
        seen.push(v);
    }
}

#[tokio::test]
async fn one_user_in_two_tabs_on_two_nodes_joins_once_and_leaves_once() {
    let redis = RedisServer::start();
    let a = TestNode::on_redis(&redis.url(), presence_settings()).await;
    let b = TestNode::on_redis(&redis.url(), presence_settings()).await;
    let ada = Some(json!({"name": "Ada"}));
    let mut tab1 = native(&a, "ada", ada.clone()).await;
    let first = subscribe_joining(&mut tab1, &["room:1"], 1).await.remove(0);
    assert_eq!(first["push"], "join", "{first}");
    assert_eq!(first["channel"], "room:1");
    assert_eq!(first["user"], "ada");
    assert_eq!(first["info"], json!({"name": "Ada"}));

    let mut tab2 = native(&b, "ada", ada.clone()).await;
    subscribe_listening(&mut tab2, &["room:1"]).await;
    // Node B would have pushed a join before the marker it publishes.
    marker(&b, "room:1", 1).await;
    assert_eq!(until_marker(&mut tab1, 1).await, Vec::<Value>::new());
    assert_eq!(until_marker(&mut tab2, 1).await, Vec::<Value>::new());

    let (status, body) = b.get_json("/api/presence_stats?channel=room:1").await;
    assert_eq!((status, body), (200, json!({"connections": 2, "users": 1})));
    let (status, body) = a.get_json("/api/presence?channel=room:1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"].as_array().map(Vec::len), Some(2), "{body}");
    let (status, body) = a.get_json("/api/presence?channel=plain").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("no_presence"))
    );
    let mut outsider = native(&a, "", None).await;
    assert_eq!(
        stats(&mut outsider, "room:1").await,
        json!({"connections": 2, "users": 1})
    );
    let listed = members(&mut outsider, "room:1").await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|(user, _)| user == "ada"));
    let reply = outsider
        .command("presence", json!({"channel": "room:1"}))
        .await;
    for m in reply["result"]["members"].as_array().expect("members") {
        assert_eq!(m["info"], json!({"name": "Ada"}), "{m}");
    }

    // A watcher on B; the first tab closing is no leave.
    let mut watcher = native(&b, "watcher", None).await;
    let own = subscribe_joining(&mut watcher, &["room:1"], 1)
        .await
        .remove(0);
    assert_eq!(
        (own["push"].clone(), own["user"].clone()),
        (json!("join"), json!("watcher"))
    );
    tab1.close().await;
    wait_stats(
        &mut outsider,
        "room:1",
        json!({"connections": 2, "users": 2}),
    )
    .await;
    marker(&a, "room:1", 2).await;
    assert_eq!(until_marker(&mut watcher, 2).await, Vec::<Value>::new());

    // The last tab closing is the one leave.
    tab2.close().await;
    let leave = next_event(&mut watcher).await;
    assert_eq!(leave["push"], "leave", "{leave}");
    assert_eq!(leave["user"], "ada");
    assert_eq!(leave["channel"], "room:1");
    assert_eq!(
        members(&mut outsider, "room:1")
            .await
            .into_iter()
            .map(|(u, _)| u)
            .collect::<Vec<_>>(),
        vec!["watcher".to_string()]
    );
}

#[tokio::test]
async fn presence_of_a_channel_one_may_not_subscribe_to_is_refused_as_subscribe_is() {
    let node = TestNode::start(presence_settings()).await;
    let mut anonymous = native(&node, "", None).await;
    let refused = anonymous
        .command("subscribe", json!({"channel": "secret:1"}))
        .await;
    assert_eq!(refused["error"]["code"], 105, "{refused}");
    for method in ["presence", "presence_stats"] {
        let reply = anonymous
            .command(method, json!({"channel": "secret:1"}))
            .await;
        assert_eq!(reply["error"], refused["error"], "{method}: {reply}");
    }
    // A channel without presence says so.
    let reply = anonymous
        .command("presence", json!({"channel": "plain"}))
        .await;
    assert_eq!(reply["error"]["code"], 117, "{reply}");
    // A reserved channel is refused like a subscribe to it.
    let refused = anonymous
        .command("subscribe", json!({"channel": "#presence:room:1"}))
        .await;
    let reply = anonymous
        .command("presence", json!({"channel": "#presence:room:1"}))
        .await;
    assert_eq!(reply["error"], refused["error"], "{reply}");
    // Signed in, it is allowed.
    let mut ann = native(&node, "ann", None).await;
    assert_eq!(
        stats(&mut ann, "secret:1").await,
        json!({"connections": 0, "users": 0})
    );
}

#[tokio::test]
async fn a_token_s_channels_make_a_member_at_connect() {
    let node = TestNode::start(presence_settings()).await;
    let token = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "tia", "exp": unix_now() + 600, "info": {"n": 1}, "channels": ["room:t"]}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let mut tia = Client::connect(&node.ws("/ws")).await;
    let reply = tia
        .command("connect", json!({"token": token, "join_leave": true}))
        .await;
    assert_eq!(reply["result"]["channels"][0], "room:t", "{reply}");
    let conn = reply["result"]["client"].clone();
    let reply = tia.command("presence", json!({"channel": "room:t"})).await;
    assert_eq!(
        reply["result"]["members"],
        json!([{"conn": conn, "user": "tia", "info": {"n": 1}}])
    );
    // `join_leave` at connect asks for the token channels' pushes.
    let mut ulf = native(&node, "ulf", None).await;
    ulf.subscribe(&["room:t"]).await;
    assert_eq!(
        event_for(&mut tia, "join", "ulf").await["channel"],
        "room:t"
    );
}

#[tokio::test]
async fn a_single_memory_node_lists_members_and_pushes_joins_and_leaves() {
    let node = TestNode::start(presence_settings()).await;
    let mut ann = native(&node, "ann", Some(json!({"color": "red"}))).await;
    let own = subscribe_joining(&mut ann, &["room:m", "quiet:m"], 1)
        .await
        .remove(0);
    assert_eq!(
        (own["push"].clone(), own["user"].clone()),
        (json!("join"), json!("ann"))
    );
    let mut anon = native(&node, "", None).await;
    subscribe_joining(&mut anon, &["room:m", "quiet:m"], 1).await;
    let join = next_event(&mut ann).await;
    assert_eq!(join["push"], "join", "{join}");
    assert_eq!(join["user"], "", "an anonymous member is a user of its own");
    assert!(join.get("info").is_none(), "{join}");
    let listed = members(&mut ann, "room:m").await;
    assert_eq!(listed.len(), 2);
    assert_eq!(members(&mut anon, "quiet:m").await, listed);
    assert_eq!(
        stats(&mut ann, "quiet:m").await,
        json!({"connections": 2, "users": 2})
    );
    // An unsubscribe leaves; quiet:* pushes nothing.
    let reply = anon
        .command("unsubscribe", json!({"channels": ["room:m", "quiet:m"]}))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let leave = next_event(&mut ann).await;
    assert_eq!(
        (
            leave["push"].clone(),
            leave["channel"].clone(),
            leave["user"].clone()
        ),
        (json!("leave"), json!("room:m"), json!(""))
    );
    assert_eq!(
        stats(&mut ann, "quiet:m").await,
        json!({"connections": 1, "users": 1})
    );
    let reply = ann.command("presence", json!({"channel": "room:m"})).await;
    assert_eq!(
        reply["result"]["members"][0]["info"],
        json!({"color": "red"}),
        "{reply}"
    );
    // What is not a push on the push channel is dropped, and counted.
    let (status, body) = node
        .post_json(
            "/api/publish",
            &json!({"channel": "#presence:room:m", "data": "not a push"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    marker(&node, "room:m", 9).await;
    assert_eq!(until_marker(&mut ann, 9).await, Vec::<Value>::new());
    assert_eq!(node.stat("presence_pushes_refused").await, 1);
}

#[tokio::test]
async fn only_subscribers_that_asked_get_join_and_leave_pushes() {
    let redis = RedisServer::start();
    let a = TestNode::on_redis(&redis.url(), presence_settings()).await;
    let b = TestNode::on_redis(&redis.url(), presence_settings()).await;
    // On A one subscriber asks, one does not; on B nobody asks.
    let mut asker = native(&a, "asker", None).await;
    subscribe_joining(&mut asker, &["room:o"], 1).await;
    let mut quiet = native(&a, "quiet", None).await;
    quiet.subscribe(&["room:o"]).await;
    let mut quiet_b = native(&b, "quiet_b", None).await;
    quiet_b.subscribe(&["room:o"]).await;
    assert_eq!(
        event_for(&mut asker, "join", "quiet").await["channel"],
        "room:o"
    );
    assert_eq!(
        event_for(&mut asker, "join", "quiet_b").await["channel"],
        "room:o"
    );
    // Asking where the namespace sets no join_leave gets nothing either.
    subscribe_listening(&mut quiet_b, &["quiet:o"]).await;
    let mut dee = native(&b, "dee", None).await;
    dee.subscribe(&["room:o", "quiet:o"]).await;
    event_for(&mut asker, "join", "dee").await;
    dee.close().await;
    event_for(&mut asker, "leave", "dee").await;
    // Each node pushed what it had before its marker: nothing for them.
    marker(&a, "room:o", 1).await;
    marker(&b, "room:o", 2).await;
    for client in [&mut quiet, &mut quiet_b] {
        assert_eq!(until_marker(client, 1).await, Vec::<Value>::new());
        assert_eq!(until_marker(client, 2).await, Vec::<Value>::new());
    }
    // They are members all the same.
    assert_eq!(
        stats(&mut quiet, "room:o").await,
        json!({"connections": 3, "users": 3})
    );
    // One that asked, unsubscribed and came back without asking gets none.
    let reply = asker
        .command("unsubscribe", json!({"channel": "room:o"}))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    asker.subscribe(&["room:o"]).await;
    let mut eve = native(&b, "eve", None).await;
    eve.subscribe(&["room:o"]).await;
    wait_stats(&mut quiet, "room:o", json!({"connections": 4, "users": 4})).await;
    marker(&b, "room:o", 3).await;
    assert_eq!(until_marker(&mut asker, 3).await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_node_shut_down_cleanly_takes_its_members_out_at_once() {
    let redis = RedisServer::start();
    // A lease of a minute: the leaves come from the shutdown, not the lease.
    let long = || {
        let mut s = presence_settings();
        if let Some(namespaces) = s.namespaces.as_mut() {
            namespaces[0].presence_ttl = Some(std::time::Duration::from_secs(60));
        }
        s
    };
    let a = TestNode::on_redis(&redis.url(), long()).await;
    let b = TestNode::on_redis(&redis.url(), long()).await;
    let mut watcher = native(&a, "watcher", None).await;
    subscribe_joining(&mut watcher, &["room:s"], 1).await;
    let mut leaving = Vec::new();
    for user in ["bo", "cy"] {
        let mut client = native(&b, user, None).await;
        client.subscribe(&["room:s"]).await;
        assert_eq!(next_event(&mut watcher).await["user"], user);
        leaving.push(client);
    }
    b.stop().await;
    let mut left: Vec<Value> = Vec::new();
    for _ in 0..2 {
        let leave = next_event(&mut watcher).await;
        assert_eq!(leave["push"], "leave", "{leave}");
        left.push(leave["user"].clone());
    }
    left.sort_by_key(|u| u.to_string());
    assert_eq!(left, vec![json!("bo"), json!("cy")]);
    assert_eq!(
        stats(&mut watcher, "room:s").await,
        json!({"connections": 1, "users": 1})
    );
    drop(leaving);
}

/// The next `n` leaves a client is pushed, by user (joins skipped).
async fn leaves(client: &mut Client, n: usize) -> Vec<String> {
    let mut users = Vec::new();
    while users.len() < n {
        let v = next_event(client).await;
        if v["push"] == "leave" {
            users.push(v["user"].as_str().unwrap_or_default().to_string());
        }
    }
    users.sort();
    users
}

#[tokio::test]
async fn the_members_of_a_killed_node_go_within_the_lease_and_leave_once() {
    const TTL: std::time::Duration = std::time::Duration::from_secs(2);
    let redis = RedisServer::start();
    let config = std::env::temp_dir().join(format!("duplex-presence-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("token_secret = \"{SECRET}\"\nallow_anonymous = true\n[[namespaces]]\npattern = \"room:*\"\npresence = true\njoin_leave = true\npresence_ttl = \"2s\"\n"),
    )
    .expect("config file");
    let url = redis.url();
    let path = config.to_str().expect("utf-8 path");
    let mut a = support::process::NodeProcess::start(&["--redis", &url, "--config", path]).await;
    let mut settings = presence_settings();
    if let Some(namespaces) = settings.namespaces.as_mut() {
        namespaces[0].presence_ttl = Some(TTL);
    }
    let b = TestNode::on_redis(&url, settings).await;
    support::eventually("node a on redis", || async {
        reqwest::get(a.http("/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    // On A: 90 users there only, and 10 users also on B. On B: those 10,
    // 89 more, and a watcher: 200 members, 100 on each node.
    let (mut on_a, mut a_id) = (Vec::new(), String::new());
    for i in 0..100 {
        let user = if i < 90 {
            format!("a{i:02}")
        } else {
            format!("s{}", i - 90)
        };
        let mut client = Client::connect(&a.ws("/ws")).await;
        let reply = client
            .command("connect", json!({"token": token(&user, None)}))
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
        a_id = reply["result"]["node"].as_str().expect("node").to_string();
        client.subscribe(&["room:k"]).await;
        on_a.push(client);
    }
    let mut on_b = Vec::new();
    for i in 0..100 {
        let user = match i {
            0..10 => format!("s{i}"),
            10..99 => format!("b{i:02}"),
            _ => "watcher".to_string(),
        };
        let mut client = native(&b, &user, None).await;
        subscribe_listening(&mut client, &["room:k"]).await;
        on_b.push(client);
    }
    let on_a_node = format!("{a_id}.");
    let survivors: Vec<(String, String)> = members(&mut on_b[0], "room:k")
        .await
        .into_iter()
        .filter(|(_, conn)| !conn.starts_with(&on_a_node))
        .collect();
    assert_eq!(survivors.len(), 100);
    assert_eq!(members(&mut on_b[99], "room:k").await.len(), 200);
    // Everyone on B has read up to here.
    marker(&b, "room:k", 1).await;
    for client in &mut on_b {
        until_marker(client, 1).await;
    }

    a.kill();
    drop(on_a);
    let killed = std::time::Instant::now();
    let departed: Vec<String> = (0..90).map(|i| format!("a{i:02}")).collect();
    assert_eq!(leaves(&mut on_b[99], 90).await, departed);
    let pushed_after = killed.elapsed();
    assert!(
        pushed_after < TTL + TTL / 3 + std::time::Duration::from_secs(1),
        "leaves pushed {pushed_after:?} after the kill"
    );
    // Every survivor: exactly those leaves, once, and exactly the 100 left.
    marker(&b, "room:k", 2).await;
    for (i, client) in on_b.iter_mut().enumerate() {
        let mut seen: Vec<String> = until_marker(client, 2)
            .await
            .into_iter()
            .map(|v| {
                assert_eq!(v["push"], "leave", "{v}");
                v["user"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        seen.sort();
        let want: &[String] = if i == 99 { &[] } else { &departed };
        assert_eq!(seen, want, "client {i}");
        assert_eq!(members(client, "room:k").await, survivors, "client {i}");
    }
    assert_eq!(
        stats(&mut on_b[0], "room:k").await,
        json!({"connections": 100, "users": 100})
    );
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_joins_and_leaves_a_second_for_thirty_seconds_end_exact() {
    use std::time::{Duration, Instant};
    const CLIENTS: u32 = 200;
    /// Membership changes per second, all clients together (half joins,
    /// half leaves).
    const RATE: u32 = 1000;
    const DURATION: Duration = Duration::from_secs(30);
    let redis = RedisServer::start();
    let a = TestNode::on_redis(&redis.url(), presence_settings()).await;
    let b = TestNode::on_redis(&redis.url(), presence_settings()).await;
    let period = Duration::from_secs(1) * CLIENTS / RATE;
    let start = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        // u0..u49 have a connection on each node; the rest one.
        let user = format!("u{}", i % 150);
        let node = if i < CLIENTS / 2 { &a } else { &b };
        let mut client = Client::connect(&node.ws("/ws")).await;
        let reply = client
            .command("connect", json!({"token": token(&user, None)}))
            .await;
        let conn = reply["result"]["client"]
            .as_str()
            .unwrap_or_else(|| panic!("{reply}"))
            .to_string();
        let phase = period * i / CLIENTS;
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(start + phase, period);
            let (mut subscribed, mut changes) = (false, 0u32);
            let began = Instant::now();
            while began.elapsed() < DURATION {
                ticks.tick().await;
                let method = if subscribed {
                    "unsubscribe"
                } else {
                    "subscribe"
                };
                let reply = client
                    .command(method, json!({"channel": "quiet:churn"}))
                    .await;
                assert!(reply.get("result").is_some(), "{method}: {reply}");
                subscribed = !subscribed;
                changes += 1;
            }
            // A third end in the channel, right as the others leave it.
            if subscribed != (i % 3 == 0) {
                let method = if subscribed {
                    "unsubscribe"
                } else {
                    "subscribe"
                };
                let reply = client
                    .command(method, json!({"channel": "quiet:churn"}))
                    .await;
                assert!(reply.get("result").is_some(), "{method}: {reply}");
                subscribed = !subscribed;
            }
            (client, conn, user, subscribed, changes)
        }));
    }
    let mut want = Vec::new();
    let (mut users, mut changes, mut clients) = (std::collections::BTreeSet::new(), 0, Vec::new());
    for task in tasks {
        let (client, conn, user, subscribed, n) = task.await.expect("client task");
        changes += n;
        if subscribed {
            want.push((user.clone(), conn));
            users.insert(user);
        }
        clients.push(client);
    }
    want.sort();
    let planned = RATE * DURATION.as_secs() as u32;
    eprintln!("{changes} joins and leaves in {DURATION:?} ({planned} planned)");
    assert!(
        changes >= planned * 8 / 10,
        "only {changes} of {planned} changes"
    );
    assert!(
        !want.is_empty() && want.len() < CLIENTS as usize,
        "a mixed end"
    );
    for node in [&a, &b] {
        let mut asker = native(node, "", None).await;
        assert_eq!(
            members(&mut asker, "quiet:churn").await,
            want,
            "no ghost, none missing"
        );
        assert_eq!(
            stats(&mut asker, "quiet:churn").await,
            json!({"connections": want.len(), "users": users.len()})
        );
    }
    drop(clients);
}

/// Waits for the next push of `kind` for `user`, skipping others.
async fn event_for(client: &mut Client, kind: &str, user: &str) -> Value {
    loop {
        let v = next_event(client).await;
        if v["push"] == kind && v["user"] == user {
            return v;
        }
    }
}

#[tokio::test]
async fn members_come_back_after_redis_restarts_empty() {
    let mut redis = RedisServer::start();
    let short = || {
        let mut s = presence_settings();
        if let Some(namespaces) = s.namespaces.as_mut() {
            namespaces[0].presence_ttl = Some(std::time::Duration::from_secs(1));
        }
        s
    };
    let a = TestNode::on_redis(&redis.url(), short()).await;
    let b = TestNode::on_redis(&redis.url(), short()).await;
    let mut watcher = native(&a, "watcher", None).await;
    subscribe_joining(&mut watcher, &["room:r"], 1).await;
    let mut ada = native(&b, "ada", None).await;
    ada.subscribe(&["room:r"]).await;
    event_for(&mut watcher, "join", "ada").await;

    // Redis comes back with nothing: each node's next tick finds its lease
    // gone and adds its members back, and their users join again.
    redis.restart();
    event_for(&mut watcher, "join", "ada").await;
    wait_stats(
        &mut watcher,
        "room:r",
        json!({"connections": 2, "users": 2}),
    )
    .await;
    assert!(a.stat("presence_rejoins").await >= 1);
    assert!(b.stat("presence_rejoins").await >= 1);
}

#[tokio::test]
async fn a_leave_redis_could_not_take_is_retried() {
    let redis = RedisServer::start();
    // Leases of 6 s outlive the pause below: no sweep can stand in for the
    // retried leave; ticks every 2 s retry it.
    let settings = || {
        let mut s = presence_settings();
        if let Some(namespaces) = s.namespaces.as_mut() {
            namespaces[0].presence_ttl = Some(std::time::Duration::from_secs(6));
        }
        s
    };
    let a = TestNode::on_redis(&redis.url(), settings()).await;
    let b = TestNode::on_redis(&redis.url(), settings()).await;
    let mut watcher = native(&a, "watcher", None).await;
    subscribe_joining(&mut watcher, &["room:f"], 1).await;
    let mut ada = native(&b, "ada", None).await;
    ada.subscribe(&["room:f"]).await;
    let mut bo = native(&b, "bo", None).await;
    bo.subscribe(&["room:f"]).await;
    wait_stats(
        &mut watcher,
        "room:f",
        json!({"connections": 3, "users": 3}),
    )
    .await;
    redis.pause();
    ada.close().await;
    support::eventually("the leave failed", || async {
        b.stat("presence_failures").await >= 1
    })
    .await;
    redis.resume();
    // The list converges; the leave push itself is at most once (it may go
    // out while a node's subscription to Redis is still coming back).
    wait_stats(
        &mut watcher,
        "room:f",
        json!({"connections": 2, "users": 2}),
    )
    .await;
    let listed = members(&mut watcher, "room:f").await;
    assert_eq!(
        listed.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        ["bo", "watcher"]
    );
    drop(bo);
}

/// Page reloads that land on the other node, many users at once: the old
/// tab's leave (pushed by one node) and the new tab's join (by the other)
/// can cross on the way; a listener applying the pushes in the order it
/// gets them must still end with each user's real state (the member list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_made_by_two_nodes_keep_each_users_order_under_reloads() {
    const USERS: usize = 40;
    const RELOADS: usize = 15;
    let redis = RedisServer::start();
    let a = TestNode::on_redis(&redis.url(), presence_settings()).await;
    let b = TestNode::on_redis(&redis.url(), presence_settings()).await;
    let mut watcher = native(&a, "watcher", None).await;
    subscribe_joining(&mut watcher, &["room:reload"], 1).await;
    let (wa, wb) = (a.ws("/ws"), b.ws("/ws"));
    let mut tasks = Vec::new();
    for u in 0..USERS {
        let urls = [wa.clone(), wb.clone()];
        tasks.push(tokio::spawn(async move {
            let user = format!("r{u:02}");
            let mut tab: Option<Client> = None;
            for i in 0..RELOADS {
                // A reload: the old tab goes, the new one comes on the other node.
                if let Some(old) = tab.take() {
                    old.close().await;
                }
                let mut new = Client::connect(&urls[(u + i) % 2]).await;
                let reply = new
                    .command("connect", json!({"token": token(&user, None)}))
                    .await;
                assert!(reply.get("result").is_some(), "{reply}");
                new.subscribe(&["room:reload"]).await;
                tab = Some(new);
            }
            // Half the users end here, half keep their last tab.
            if u % 2 == 0 {
                if let Some(last) = tab.take() {
                    last.close().await;
                }
            }
            tab
        }));
    }
    let mut kept = Vec::new();
    for task in tasks {
        kept.extend(task.await.expect("user task"));
    }
    let want: std::collections::BTreeSet<String> = (0..USERS)
        .filter(|u| u % 2 == 1)
        .map(|u| format!("r{u:02}"))
        .chain(["watcher".to_string()])
        .collect();
    // (Asked over HTTP: the watcher's commands would skip its pushes.)
    let settled = json!({"connections": want.len(), "users": want.len()});
    support::eventually("the member list settles", || async {
        a.get_json("/api/presence_stats?channel=room:reload").await == (200, settled.clone())
    })
    .await;
    // Every push either node made is delivered before its marker.
    let mut seen = std::collections::BTreeMap::new();
    for (n, node) in [(1, &a), (2, &b)] {
        marker(node, "room:reload", n).await;
        for push in until_marker(&mut watcher, n).await {
            let user = push["user"].as_str().unwrap_or_default().to_string();
            seen.insert(user, push["push"] == "join");
        }
    }
    let present: std::collections::BTreeSet<String> = seen
        .into_iter()
        .filter(|(_, here)| *here)
        .map(|(user, _)| user)
        .chain(["watcher".to_string()])
        .collect();
    assert_eq!(present, want, "the pushes' last word per user is the list");
    eprintln!(
        "stale pushes dropped: {} on a, {} on b",
        a.stat("presence_pushes_stale").await,
        b.stat("presence_pushes_stale").await
    );
    drop(kept);
}

/// The crossing, made certain: node A's Redis replies are held, so its
/// leave is carried out at once but pushed late; meanwhile the user's new
/// tab on B joins and B pushes that join. A's leave, older, arrives after
/// it: the listener must not be told the user left.
#[tokio::test]
async fn a_leave_that_arrives_after_a_newer_join_is_dropped() {
    let redis = RedisServer::start();
    let proxy = support::proxy::Proxy::start(redis.port).await;
    let through_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let a = TestNode::on_redis(&through_proxy, presence_settings()).await;
    let b = TestNode::on_redis(&redis.url(), presence_settings()).await;
    let mut watcher = native(&b, "watcher", None).await;
    subscribe_joining(&mut watcher, &["room:x"], 1).await;
    // Bo keeps A subscribed to the channel: the old tab's going is a
    // presence leave only, no broker unsubscribe (whose reply is held too).
    let mut bo = native(&a, "bo", None).await;
    bo.subscribe(&["room:x"]).await;
    event_for(&mut watcher, "join", "bo").await;
    // Another connection of ada's on A, in no channel, keeps whatever A
    // holds for the user (no broker unsubscribe when the old tab goes).
    let idle_tab = native(&a, "ada", None).await;
    let mut old_tab = native(&a, "ada", None).await;
    old_tab.subscribe(&["room:x"]).await;
    event_for(&mut watcher, "join", "ada").await;

    proxy.stall_replies(true);
    old_tab.close().await;
    let alone = json!({"connections": 2, "users": 2});
    support::eventually("A's leave is carried out", || async {
        b.get_json("/api/presence_stats?channel=room:x").await == (200, alone.clone())
    })
    .await;
    let mut new_tab = native(&b, "ada", None).await;
    new_tab.subscribe(&["room:x"]).await;
    event_for(&mut watcher, "join", "ada").await;
    proxy.stall_replies(false);

    support::eventually("A's late leave reaches B and is dropped", || async {
        b.stat("presence_pushes_stale").await == 1
    })
    .await;
    marker(&b, "room:x", 1).await;
    assert_eq!(until_marker(&mut watcher, 1).await, Vec::<Value>::new());
    let listed = members(&mut watcher, "room:x").await;
    assert_eq!(
        listed.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        ["ada", "bo", "watcher"]
    );
    drop((new_tab, bo, idle_tab));
}
