//! The ingest stream (`ingest_stream`): backends that can only `XADD`
//! publish through it. Entries from plain Redis clients (the `redis` crate,
//! the `redis-cli` binary) reach WebSocket clients in stream order, with
//! offsets on history channels; nodes sharing the stream publish each
//! entry exactly once, a killed leader is replaced within its lease with
//! nothing lost or repeated, an entry a crashed leader published but never
//! acknowledged is not published again (and goes before newer ones), an
//! entry a stale reader took is published late but not lost, `exclude`
//! skips one connection on any node, bad entries are counted and skipped,
//! and a Redis restarted empty is waited out without spinning.
//! Real redis-server (private, no persistence), real nodes.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use duplex::config::Settings;
use duplex::permissions::Namespace;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::process::NodeProcess;
use support::redis_server::RedisServer;

const STREAM: &str = "duplex:ingest";
const LEADER: &str = "duplex:ingest:leader";

/// `news:*` keeps history; `node_heartbeat` short, so the lease is 900 ms.
fn base() -> Settings {
    Settings {
        node_heartbeat: Some(Duration::from_millis(300)),
        namespaces: Some(vec![Namespace {
            pattern: "news:*".into(),
            history_size: 1000,
            history_ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        }]),
        ..settings()
    }
}

/// [`base`] reading the ingest stream.
fn ingesting() -> Settings {
    Settings {
        ingest_stream: Some(STREAM.into()),
        ..base()
    }
}

/// The same as a config file for node processes.
fn config_file() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("duplex-ingest-{}-{n}.toml", std::process::id()));
    let text = format!(
        "ingest_stream = \"{STREAM}\"\nnode_heartbeat = \"500ms\"\nredis_max_backoff = \"200ms\"\n\
         [[namespaces]]\npattern = \"news:*\"\nhistory_size = 1000\nhistory_ttl = \"1h\"\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

async fn xadd(conn: &mut MultiplexedConnection, fields: &[(&str, &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM).arg("*");
    for (field, value) in fields {
        cmd.arg(*field).arg(*value);
    }
    cmd.query_async(conn).await.expect("XADD")
}

/// Waits until the node process's `/health` answers `status`.
async fn health_becomes(node: &NodeProcess, what: &str, status: u16) {
    support::eventually(what, || async {
        reqwest::get(node.http("/health"))
            .await
            .is_ok_and(|r| r.status() == status)
    })
    .await;
}

/// Entries read and not acknowledged, in the group.
async fn pending(conn: &mut MultiplexedConnection) -> i64 {
    let reply: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg("duplex")
        .query_async(conn)
        .await
        .expect("XPENDING");
    match reply.first() {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("XPENDING answered {other:?}"),
    }
}

async fn leader(conn: &mut MultiplexedConnection) -> Option<String> {
    redis::cmd("GET")
        .arg(LEADER)
        .query_async(conn)
        .await
        .expect("GET")
}

/// The next `message` push: (channel, offset, data, encoding).
async fn next_message(client: &mut Client) -> (String, Option<u64>, Value, Option<String>) {
    loop {
        let push = client.next_json().await;
        if push["push"] == "message" {
            return (
                push["channel"].as_str().unwrap_or_default().to_string(),
                push["offset"].as_u64(),
                push["data"].clone(),
                push["encoding"].as_str().map(str::to_string),
            );
        }
    }
}

/// Reads `n` messages of one channel: (offset, data).
async fn read_n(client: &mut Client, n: usize) -> Vec<(Option<u64>, Value)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (_, offset, data, _) = next_message(client).await;
        out.push((offset, data));
    }
    out
}

/// 1..=n, each at its own offset: exactly once, in order.
fn assert_exactly_once_in_order(got: &[(Option<u64>, Value)], n: u64) {
    let expected: Vec<(Option<u64>, Value)> = (1..=n).map(|i| (Some(i), json!(i))).collect();
    if got != expected {
        let first_wrong = got.iter().zip(&expected).position(|(g, e)| g != e);
        panic!(
            "{} messages, first difference at {first_wrong:?}: {:?}",
            got.len(),
            first_wrong.map(|i| &got[i..(i + 3).min(got.len())])
        );
    }
}

#[tokio::test]
async fn xadd_from_any_redis_client_reaches_clients_in_stream_order() {
    let redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), ingesting()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    client.subscribe(&["news:eu", "plain"]).await;
    let mut conn = redis.connection().await;
    let mut ids = Vec::new();
    for i in 1..=20 {
        let id = xadd(
            &mut conn,
            &[("channel", b"news:eu"), ("data", i.to_string().as_bytes())],
        )
        .await;
        ids.push(id);
        if i % 5 == 0 {
            xadd(
                &mut conn,
                &[("channel", b"plain"), ("data", format!("p{i}").as_bytes())],
            )
            .await;
        }
    }
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "XADD", STREAM, "*"])
        .args(["channel", "news:eu", "data", r#"{"from":"redis-cli"}"#])
        .output()
        .expect("redis-cli must be installed (the README's test command installs it)");
    assert!(out.status.success(), "{out:?}");
    xadd(
        &mut conn,
        &[
            ("channel", b"plain"),
            ("data", b"AP8="),
            ("encoding", b"base64"),
        ],
    )
    .await;

    let mut news = Vec::new();
    let mut plain = Vec::new();
    while news.len() < 21 || plain.len() < 5 {
        let (channel, offset, data, encoding) = next_message(&mut client).await;
        match channel.as_str() {
            "news:eu" => news.push((offset, data)),
            "plain" => plain.push((offset, data, encoding)),
            other => panic!("a message on {other}"),
        }
    }
    let last = news.pop().expect("the redis-cli entry");
    assert_exactly_once_in_order(&news, 20);
    assert_eq!(last, (Some(21), json!({"from": "redis-cli"})));
    let words: Vec<Value> = plain.iter().map(|(_, d, _)| d.clone()).collect();
    assert_eq!(
        words,
        [
            json!("p5"),
            json!("p10"),
            json!("p15"),
            json!("p20"),
            json!("AP8=")
        ]
    );
    assert!(
        plain.iter().all(|(offset, _, _)| offset.is_none()),
        "no history there"
    );
    assert_eq!(plain[4].2.as_deref(), Some("base64"), "a binary message");
    assert_eq!(plain[3].2, None);

    support::eventually("every entry acknowledged", || {
        let mut conn = conn.clone();
        async move { pending(&mut conn).await == 0 }
    })
    .await;
    assert_eq!(node.stat("ingest_published").await, 26);
    assert_eq!(node.stat("ingest_rejected").await, 0);
    // Each entry's idempotency key, by the channel, lives a minute after
    // its acknowledgement.
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{{news:eu}}:ingested:{STREAM}:{}", ids[0]))
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!((1..=60).contains(&ttl), "{ttl}");
    assert_eq!(
        leader(&mut conn).await.as_deref(),
        node.info().await["node"].as_str()
    );
    node.stop().await;
    assert_eq!(
        leader(&mut conn).await,
        None,
        "the lease is given back at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_the_stream_publish_each_entry_once_in_order() {
    let redis = RedisServer::start();
    let a = TestNode::on_redis(&redis.url(), ingesting()).await;
    let b = TestNode::on_redis(&redis.url(), ingesting()).await;
    let watcher = TestNode::on_redis(&redis.url(), base()).await;
    let mut client = Client::connect(&watcher.ws("/ws")).await;
    client.subscribe(&["news:shared"]).await;
    let mut conn = redis.connection().await;
    for i in 1..=150 {
        xadd(
            &mut conn,
            &[
                ("channel", b"news:shared"),
                ("data", i.to_string().as_bytes()),
            ],
        )
        .await;
    }
    let mut got = read_n(&mut client, 50).await;
    // The leader shuts down mid-stream: it gives the lease back and the
    // other node goes on from where it stopped.
    let first = leader(&mut conn).await.expect("a leader");
    let a_id = a.info().await["node"]
        .as_str()
        .expect("node id")
        .to_string();
    let (gone, stays) = if first == a_id { (a, b) } else { (b, a) };
    gone.stop().await;
    assert_ne!(
        leader(&mut conn).await,
        Some(first),
        "given back at shutdown"
    );
    for i in 151..=300 {
        xadd(
            &mut conn,
            &[
                ("channel", b"news:shared"),
                ("data", i.to_string().as_bytes()),
            ],
        )
        .await;
    }
    got.extend(read_n(&mut client, 250).await);
    assert_exactly_once_in_order(&got, 300);
    support::eventually("every entry acknowledged", || {
        let mut conn = conn.clone();
        async move { pending(&mut conn).await == 0 }
    })
    .await;
    assert!(stays.stat("ingest_published").await > 0);
    // What is acknowledged is trimmed (whole nodes of the stream: `~`).
    let kept: i64 = redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert!(kept < 150, "{kept} of 300 entries kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_its_lease_and_nothing_is_lost_or_repeated() {
    const TOTAL: u64 = 400;
    let redis = RedisServer::start();
    let config = config_file();
    let config = config.to_str().expect("path");
    let url = redis.url();
    let start = |id: &'static str| {
        let url = url.clone();
        async move {
            let args = ["--redis", &url, "--config", config, "--node-id", id];
            NodeProcess::start(&args).await
        }
    };
    let mut nodes = [start("a").await, start("b").await];
    let watcher = TestNode::on_redis(&redis.url(), base()).await;
    let mut client = Client::connect(&watcher.ws("/ws")).await;
    client.subscribe(&["news:kill"]).await;
    let mut conn = redis.connection().await;
    support::eventually("a leader", || {
        let mut conn = conn.clone();
        async move { leader(&mut conn).await.is_some() }
    })
    .await;
    let mut producer = conn.clone();
    let produce = tokio::spawn(async move {
        for i in 1..=TOTAL {
            xadd(
                &mut producer,
                &[
                    ("channel", b"news:kill"),
                    ("data", i.to_string().as_bytes()),
                ],
            )
            .await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let mut got = read_n(&mut client, 100).await;
    let dead = leader(&mut conn).await.expect("a leader");
    let index = ["a", "b"]
        .iter()
        .position(|id| *id == dead)
        .expect("the leader is one of the nodes");
    nodes[index].kill();
    let killed = Instant::now();
    got.extend(read_n(&mut client, 1).await);
    let gap = killed.elapsed();
    got.extend(read_n(&mut client, (TOTAL - 101) as usize).await);
    produce.await.expect("producer");
    assert_exactly_once_in_order(&got, TOTAL);
    // The lease is 3 x 500 ms; the survivor tries every 250-500 ms.
    assert!(gap < Duration::from_secs(4), "took over after {gap:?}");
    let survivor = &nodes[1 - index];
    assert_ne!(leader(&mut conn).await, Some(dead));
    support::eventually("every entry acknowledged", || {
        let mut conn = conn.clone();
        async move { pending(&mut conn).await == 0 }
    })
    .await;
    let info = survivor.info().await;
    assert!(
        info["stats"]["ingest_published"].as_u64() > Some(0),
        "{info}"
    );
}

/// A leader that published an entry and died before acknowledging it (staged
/// here by hand): the next leader claims it and finds it published.
#[tokio::test]
async fn an_entry_published_but_never_acknowledged_is_not_published_again() {
    let redis = RedisServer::start();
    let watcher = TestNode::on_redis(&redis.url(), base()).await;
    let mut client = Client::connect(&watcher.ws("/ws")).await;
    client.subscribe(&["news:crash"]).await;
    let mut conn = redis.connection().await;
    let first = xadd(&mut conn, &[("channel", b"news:crash"), ("data", b"1")]).await;
    xadd(&mut conn, &[("channel", b"news:crash"), ("data", b"2")]).await;
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg("duplex")
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("duplex")
        .arg("dead")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
    // What the dead leader did with its first entry before it died.
    let reply: Vec<redis::Value> = redis::cmd("FCALL")
        .arg("duplex_publish")
        .arg(1)
        .arg("news:crash")
        .arg("1")
        .arg(1000)
        .arg(3600)
        .arg(7200)
        .arg(1)
        .arg(format!("{STREAM}:{first}"))
        .arg(86400)
        .query_async(&mut conn)
        .await
        .expect("FCALL duplex_publish with an id");
    assert_eq!(reply[0], redis::Value::Int(1), "{reply:?}");
    assert_eq!(read_n(&mut client, 1).await, [(Some(1), json!(1))]);
    // Appended after the dead leader's read: a new entry, to go after its two.
    xadd(&mut conn, &[("channel", b"news:crash"), ("data", b"3")]).await;

    let node = TestNode::on_redis(&redis.url(), ingesting()).await;
    assert_eq!(
        read_n(&mut client, 2).await,
        [(Some(2), json!(2)), (Some(3), json!(3))]
    );
    support::eventually("both acknowledged", || {
        let mut conn = conn.clone();
        async move { pending(&mut conn).await == 0 }
    })
    .await;
    assert_eq!(node.stat("ingest_repeated").await, 1);
    assert_eq!(node.stat("ingest_published").await, 2);
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(STREAM)
        .arg("duplex")
        .query_async(&mut conn)
        .await
        .expect("XINFO CONSUMERS");
    assert_eq!(
        consumers.len(),
        1,
        "the dead consumer is dropped: {consumers:?}"
    );
    // Nothing else came: the next message is the next entry.
    xadd(&mut conn, &[("channel", b"news:crash"), ("data", b"4")]).await;
    assert_eq!(read_n(&mut client, 1).await, [(Some(4), json!(4))]);
}

/// A read that reached Redis after its reader lost the lease (staged: an
/// entry read by a consumer that is not the leader) is found by the
/// leader's sweep a lease later and published: late, never lost.
#[tokio::test]
async fn an_entry_a_stale_reader_took_is_published_late_not_never() {
    let redis = RedisServer::start();
    let node = TestNode::on_redis(&redis.url(), ingesting()).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    client.subscribe(&["news:stale"]).await;
    let mut conn = redis.connection().await;
    xadd(&mut conn, &[("channel", b"news:stale"), ("data", b"1")]).await;
    assert_eq!(read_n(&mut client, 1).await, [(Some(1), json!(1))]);
    // The leader blocks in XREADGROUP for new entries: add one and take it
    // as another consumer in the same step, before the leader is served.
    let mut stale = redis::pipe();
    stale
        .atomic()
        .cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("channel")
        .arg("news:stale")
        .arg("data")
        .arg("2")
        .ignore()
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg("duplex")
        .arg("stale")
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">");
    let (taken,): (redis::Value,) = stale.query_async(&mut conn).await.expect("MULTI");
    assert_ne!(taken, redis::Value::Nil, "the stale reader took the entry");
    let started = Instant::now();
    assert_eq!(
        read_n(&mut client, 1).await,
        [(Some(2), json!(2))],
        "{taken:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    support::eventually("acknowledged", || {
        let mut conn = conn.clone();
        async move { pending(&mut conn).await == 0 }
    })
    .await;
}

/// `exclude` skips one connection, on the reading node or another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclude_skips_one_connection_on_any_node() {
    let redis = RedisServer::start();
    let reader = TestNode::on_redis(&redis.url(), ingesting()).await;
    let other = TestNode::on_redis(&redis.url(), base()).await;
    let mut conn = redis.connection().await;
    support::eventually("the reading node holds the lease", || {
        let mut conn = conn.clone();
        async move { leader(&mut conn).await.is_some() }
    })
    .await;
    let mut clients = Vec::new();
    for node in [&reader, &other] {
        let mut client = Client::connect(&node.ws("/ws")).await;
        let reply = client.command("connect", json!({})).await;
        let id = reply["result"]["client"]
            .as_str()
            .expect("client id")
            .to_string();
        client.subscribe(&["chat"]).await;
        clients.push((client, id));
    }
    for skipped in 0..2 {
        let id = clients[skipped].1.clone();
        let fields: [(&str, &[u8]); 3] = [
            ("channel", b"chat"),
            ("data", b"for the others"),
            ("exclude", id.as_bytes()),
        ];
        xadd(&mut conn, &fields).await;
        xadd(
            &mut conn,
            &[("channel", b"chat"), ("data", b"for everyone")],
        )
        .await;
        let (excluded, others) = if skipped == 0 {
            let (a, b) = clients.split_at_mut(1);
            (&mut a[0].0, &mut b[0].0)
        } else {
            let (a, b) = clients.split_at_mut(1);
            (&mut b[0].0, &mut a[0].0)
        };
        assert_eq!(others.next_push().await.1, json!("for the others"));
        assert_eq!(others.next_push().await.1, json!("for everyone"));
        assert_eq!(
            excluded.next_push().await.1,
            json!("for everyone"),
            "skipped {skipped}"
        );
    }
}

#[tokio::test]
async fn bad_entries_are_counted_and_the_stream_goes_on() {
    let redis = RedisServer::start();
    let node = TestNode::on_redis(
        &redis.url(),
        Settings {
            max_message_size: Some(4096),
            ..ingesting()
        },
    )
    .await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    client.subscribe(&["news:bad"]).await;
    let mut conn = redis.connection().await;
    xadd(&mut conn, &[("channel", b"news:bad"), ("data", b"1")]).await;
    xadd(&mut conn, &[("data", b"no channel")]).await;
    xadd(&mut conn, &[("channel", b"news: bad"), ("data", b"x")]).await;
    xadd(
        &mut conn,
        &[
            ("channel", b"news:bad"),
            ("data", b"!!"),
            ("encoding", b"base64"),
        ],
    )
    .await;
    xadd(
        &mut conn,
        &[("channel", b"news:bad"), ("data", &[b'x'; 4097])],
    )
    .await;
    xadd(
        &mut conn,
        &[
            ("channel", b"news:bad"),
            ("data", b"x"),
            ("exclude", b"nobody"),
        ],
    )
    .await;
    xadd(&mut conn, &[("channel", b"news:bad"), ("data", b"2")]).await;
    let got = read_n(&mut client, 2).await;
    assert_exactly_once_in_order(&got, 2);
    support::eventually("every entry acknowledged", || {
        let mut conn = conn.clone();
        async move { pending(&mut conn).await == 0 }
    })
    .await;
    assert_eq!(node.stat("ingest_rejected").await, 5);
    assert_eq!(node.stat("ingest_published").await, 2);
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::test]
async fn a_redis_restarted_empty_is_waited_out_and_the_group_made_again() {
    let mut redis = RedisServer::start();
    let config = config_file();
    let node = NodeProcess::start_logged(&[
        "--redis",
        &redis.url(),
        "--config",
        config.to_str().expect("path"),
    ])
    .await;
    health_becomes(&node, "node connected to redis", 200).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    client.subscribe(&["news:restart"]).await;
    let mut conn = redis.connection().await;
    for i in 1..=5 {
        xadd(
            &mut conn,
            &[
                ("channel", b"news:restart"),
                ("data", i.to_string().as_bytes()),
            ],
        )
        .await;
    }
    assert_exactly_once_in_order(&read_n(&mut client, 5).await, 5);

    // Down for a while: the node waits (backoff, bounded steps), it does not spin.
    redis.kill();
    let cpu = cpu_seconds(node.pid());
    let window = Instant::now();
    health_becomes(&node, "the node sees redis gone", 503).await;
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(window.elapsed())).await;
    let spent = cpu_seconds(node.pid()) - cpu;
    assert!(spent < 0.5, "{spent} s of CPU in 1.5 s with redis down");

    redis.restart();
    // Back empty: the history the client stood in is gone, so the node
    // closes it with 3008 (to recover, and learn it cannot); it comes back.
    assert_eq!(client.expect_close().await.code, 3008);
    health_becomes(&node, "node back on redis", 200).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    client.subscribe(&["news:restart"]).await;
    let mut conn = redis.connection().await;
    for i in 1..=5 {
        xadd(
            &mut conn,
            &[
                ("channel", b"news:restart"),
                ("data", i.to_string().as_bytes()),
            ],
        )
        .await;
    }
    // A new epoch, its offsets from 1 again.
    let got = tokio::time::timeout(Duration::from_secs(8), read_n(&mut client, 5)).await;
    let got = got.unwrap_or_else(|_| panic!("{}", node.log()));
    assert_exactly_once_in_order(&got, 5);
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(STREAM)
        .query_async(&mut conn)
        .await
        .expect("XINFO GROUPS");
    assert_eq!(groups.len(), 1, "the group made again");
    assert_eq!(node.stat("ingest_published").await, 10);
}
