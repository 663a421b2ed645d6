//! History across Redis outages (issue 17): Redis killed and restarted with
//! its data kept, the node's Redis connections black-holed for 5 s or
//! stalled, one node of two cut off. Publishers keep publishing throughout
//! (retrying what is refused); every native client ends with every
//! accepted publication exactly once, in offset order, in the same epoch,
//! and none of them reconnects: the node repairs what it missed by itself
//! (`node::repair`), or the data flows late.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duplex::config::Settings;
use duplex::permissions::Namespace;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::proxy::Proxy;
use support::redis_server::RedisServer;
use tokio_tungstenite::tungstenite::Message;

/// `news:*` keeps 1000 publications for an hour.
fn with_history() -> Settings {
    Settings {
        namespaces: Some(vec![Namespace {
            pattern: "news:*".into(),
            history_size: 1000,
            history_ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        }]),
        ..settings()
    }
}

/// Longest a watched client may hear nothing: the outages here last up
/// to 5 s, plus the node's detection and reconnect.
const SILENCE: Duration = Duration::from_secs(20);

/// Bounds each publish attempt, so a publisher never hangs on a dead link.
const ATTEMPT: Duration = Duration::from_secs(3);

/// What one client received, from its subscribe reply until the end
/// marker; and the client, still connected.
#[derive(Default)]
struct Seen {
    /// `(offset, data)` of each `message` push, in arrival order.
    messages: Vec<(u64, Value)>,
    /// Epochs named on pushes.
    epochs: BTreeSet<String>,
    /// Anything else: other pushes, replies, a close, silence, an error.
    other: Vec<String>,
    /// Kept open until the test has checked the node's connection counts.
    client: Option<Client>,
}

/// A subscribed client read by its own task until the end marker.
type Watched = tokio::task::JoinHandle<Seen>;

fn watch(mut client: Client) -> Watched {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            let text = match tokio::time::timeout(SILENCE, client.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    seen.other.push(format!("closed: {frame:?}"));
                    return seen;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => {
                    seen.other.push(format!("error: {e}"));
                    return seen;
                }
                Ok(None) => {
                    seen.other.push("ended without a close".into());
                    return seen;
                }
                Err(_) => {
                    seen.other.push(format!("nothing for {SILENCE:?}"));
                    return seen;
                }
            };
            let push: Value = serde_json::from_str(&text).expect("JSON from the node");
            if push["push"] != "message" {
                seen.other.push(push.to_string());
                continue;
            }
            if let Some(epoch) = push["epoch"].as_str() {
                seen.epochs.insert(epoch.to_string());
            }
            let offset = push["offset"].as_u64().expect("a recorded publication");
            let end = push["data"] == "end";
            seen.messages.push((offset, push["data"].clone()));
            if end {
                seen.client = Some(client);
                return seen;
            }
        }
    })
}

/// `count` native clients of `channel` on `node`, each watched from its
/// subscribe reply on; and the channel's epoch (its history is empty).
async fn subscribed(node: &TestNode, channel: &str, count: usize) -> (Vec<Watched>, String) {
    let mut watched = Vec::new();
    let mut epoch = None;
    for _ in 0..count {
        let mut client = Client::connect(&node.ws("/ws")).await;
        let reply = client
            .command("subscribe", json!({"channel": channel}))
            .await;
        let position = &reply["result"]["positions"][channel];
        assert_eq!(position["offset"], 0, "{reply}");
        let this = position["epoch"].as_str().expect("an epoch").to_string();
        assert_eq!(epoch.get_or_insert_with(|| this.clone()), &this);
        watched.push(watch(client));
    }
    (watched, epoch.expect("at least one client"))
}

/// Where a publisher sends.
#[derive(Debug, Clone)]
enum Route {
    /// A node's `POST /api/publish`.
    Api(String),
    /// `FCALL duplex_publish` on this Redis, as a backend does.
    Fcall(String),
}

/// A publication a route accepted: its number (the data) and offset.
#[derive(Debug, Clone)]
struct Accepted {
    number: u64,
    offset: u64,
    /// The epoch answered (the API says it; FCALL answers the offset only).
    epoch: Option<String>,
}

/// Publishes 1, 2, 3... to one channel, every few ms, each number until a
/// route accepts it, trying the routes in turn.
struct Publisher {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<String>,
}

impl Publisher {
    fn start(channel: &str, routes: Vec<Route>) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(publish_until(
            channel.to_string(),
            routes,
            Arc::clone(&stop),
            Arc::clone(&accepted),
            Arc::clone(&refused),
        ));
        Publisher {
            stop,
            accepted,
            refused,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.lock().expect("not poisoned").len()
    }

    /// Waits until `count` publications were accepted in all.
    async fn wait_accepted(&self, count: usize) {
        support::eventually(&format!("{count} publications accepted"), || async {
            self.accepted() >= count
        })
        .await;
    }

    /// Waits until `count` more attempts were refused.
    async fn wait_refused(&self, count: u64) {
        let from = self.refused.load(Ordering::SeqCst);
        support::eventually(&format!("{count} publishes refused"), || async {
            self.refused.load(Ordering::SeqCst) >= from + count
        })
        .await;
    }

    /// Stops after the publication in progress is accepted: all accepted.
    async fn stop(self) -> Vec<Accepted> {
        self.stop.store(true, Ordering::SeqCst);
        let refusals = tokio::time::timeout(support::WAIT, self.task)
            .await
            .expect("the publisher stops")
            .expect("publisher task");
        eprintln!(
            "{} refused publishes; {refusals}",
            self.refused.load(Ordering::SeqCst)
        );
        let accepted = self.accepted.lock().expect("not poisoned").clone();
        accepted
    }
}

/// The publisher's loop; what the last refusal said.
async fn publish_until(
    channel: String,
    routes: Vec<Route>,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    refused: Arc<AtomicU64>,
) -> String {
    let http = reqwest::Client::builder()
        .timeout(ATTEMPT)
        .build()
        .expect("http client");
    let mut backend = None;
    let mut attempt = 0usize;
    let mut last_refusal = String::from("none refused");
    let mut number = 0u64;
    while !stop.load(Ordering::SeqCst) {
        number += 1;
        loop {
            let route = &routes[attempt % routes.len()];
            attempt += 1;
            let sent = match route {
                Route::Api(url) => api_publish(&http, url, &channel, number).await,
                Route::Fcall(url) => fcall(url, &mut backend, &channel, &number.to_string())
                    .await
                    .map(|offset| (offset, None)),
            };
            match sent {
                Ok((offset, epoch)) => {
                    accepted.lock().expect("not poisoned").push(Accepted {
                        number,
                        offset,
                        epoch,
                    });
                    break;
                }
                Err(why) => {
                    last_refusal = format!("last: {route:?}: {why}");
                    refused.fetch_add(1, Ordering::SeqCst);
                    // Retry pacing, as a backend would (not a wait for an event).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        // A steady rate: some publications land in every phase.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    last_refusal
}

async fn api_publish(
    http: &reqwest::Client,
    url: &str,
    channel: &str,
    number: u64,
) -> Result<(u64, Option<String>), String> {
    let body = json!({"channel": channel, "data": number});
    let response = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return Err(format!("{status}: {answer}"));
    }
    let offset = answer["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("an offset: {answer}"));
    Ok((offset, answer["epoch"].as_str().map(String::from)))
}

/// `FCALL duplex_publish 1 <channel> <data>` on `backend` (opened on
/// `url` first if needed, dropped when it fails): the offset.
async fn fcall(
    url: &str,
    backend: &mut Option<MultiplexedConnection>,
    channel: &str,
    data: &str,
) -> Result<u64, String> {
    let conn = match backend {
        Some(conn) => conn,
        None => {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(ATTEMPT))
                .set_response_timeout(Some(ATTEMPT));
            let opened = redis::Client::open(url)
                .expect("redis url")
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| e.to_string())?;
            backend.insert(opened)
        }
    };
    let mut call = redis::cmd("FCALL");
    call.arg("duplex_publish").arg(1).arg(channel).arg(data);
    match tokio::time::timeout(ATTEMPT, call.query_async::<u64>(conn)).await {
        Ok(Ok(offset)) => Ok(offset),
        Ok(Err(e)) => {
            *backend = None;
            Err(e.to_string())
        }
        Err(_) => {
            *backend = None;
            Err(format!("no answer within {ATTEMPT:?}"))
        }
    }
}

/// Publishes the end marker (`"end"`) through Redis: its offset is the
/// channel's last.
async fn publish_end(redis_url: &str, channel: &str) -> u64 {
    let mut backend = None;
    for _ in 0..50 {
        match fcall(redis_url, &mut backend, channel, "\"end\"").await {
            Ok(offset) => return offset,
            Err(e) => eprintln!("end marker refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the end marker was never accepted");
}

/// Every offset 1..=top once, in order, with the data accepted at it;
/// the epoch the one it started with; nothing else on the connection (no
/// close, no reply, no other push). An offset no route answered (the
/// answer was lost in the outage, and the publisher retried) carries a
/// number accepted later. Returns how many such offsets there were.
fn check_complete(who: &str, seen: &Seen, accepted: &[Accepted], top: u64, epoch: &str) -> usize {
    assert!(
        seen.other.is_empty(),
        "{who}: more than messages: {:?}",
        seen.other
    );
    let offsets: Vec<u64> = seen.messages.iter().map(|(offset, _)| *offset).collect();
    let expected: Vec<u64> = (1..=top).collect();
    if offsets != expected {
        let missing: Vec<u64> = expected
            .iter()
            .filter(|o| !offsets.contains(o))
            .copied()
            .collect();
        let mut repeated = offsets.clone();
        repeated.sort_unstable();
        let repeated: BTreeSet<u64> = repeated
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        let disorder = offsets.windows(2).find(|w| w[1] <= w[0]);
        panic!(
            "{who}: not every offset once in order (top {top}): missing {missing:?}, \
             repeated {repeated:?}, first out of order {disorder:?}, {} received",
            offsets.len()
        );
    }
    let by_offset: BTreeMap<u64, &Accepted> = accepted.iter().map(|a| (a.offset, a)).collect();
    assert_eq!(by_offset.len(), accepted.len(), "two answers, one offset");
    let mut unanswered = 0;
    for (offset, data) in &seen.messages {
        if *offset == top {
            assert_eq!(data, "end", "{who}: the end marker is last");
        } else if let Some(a) = by_offset.get(offset) {
            assert_eq!(data, &json!(a.number), "{who}: offset {offset}");
        } else {
            let number = data.as_u64().expect("a number");
            let later = accepted.iter().find(|a| a.number == number);
            assert!(
                later.is_some_and(|a| a.offset > *offset),
                "{who}: offset {offset} ({data}) was never accepted, nor retried later"
            );
            unanswered += 1;
        }
    }
    assert!(
        seen.epochs.iter().all(|e| e == epoch),
        "{who}: epochs {:?}, started in {epoch}",
        seen.epochs
    );
    for a in accepted {
        if let Some(answered) = &a.epoch {
            assert_eq!(answered, epoch, "publication {} answered", a.number);
        }
    }
    unanswered
}

/// Waits for every watched client and checks it; what each saw.
async fn check_all(
    node: &str,
    watched: Vec<Watched>,
    accepted: &[Accepted],
    top: u64,
    epoch: &str,
) -> Vec<Seen> {
    let mut all = Vec::new();
    for (i, client) in watched.into_iter().enumerate() {
        let seen = client.await.expect("watcher");
        let unanswered = check_complete(&format!("{node} client {i}"), &seen, accepted, top, epoch);
        if unanswered > 0 {
            eprintln!("{node} client {i}: {unanswered} publications whose answer was lost");
        }
        all.push(seen);
    }
    all
}

/// The node's counters say nobody reconnected: `clients` connections ever,
/// all still open, no recovery asked for, and no repair failed.
async fn nobody_reconnected(node: &TestNode, clients: u64) -> Value {
    let info = node.info().await;
    let stats = &info["stats"];
    assert_eq!(stats["connects"], clients, "{info}");
    assert_eq!(info["connections"], clients, "{info}");
    assert_eq!(stats["recoveries_recovered"], 0, "{info}");
    assert_eq!(stats["recoveries_failed"], 0, "{info}");
    assert_eq!(stats["history_repairs_failed"], 0, "{info}");
    info
}

/// How many of the channel's `top` publications the node never received
/// live from Redis (so its clients got them from a repair): the node's one
/// channel here, each received at most once.
fn missed_live(info: &Value, top: u64) -> u64 {
    let received = info["stats"]["messages_received"]
        .as_u64()
        .expect("messages_received");
    assert!(received <= top, "more received than published: {info}");
    top - received
}

/// The channel's top position as the node reads it from Redis.
async fn top_position(node: &TestNode, channel: &str) -> Value {
    let (status, top) = node
        .get_json(&format!("/api/history?channel={channel}&limit=0"))
        .await;
    assert_eq!(status, 200, "{top}");
    top
}

/// Publishes through the node's API and straight into Redis (FCALL), in turn.
fn both_routes(node: &TestNode, redis: &RedisServer) -> Vec<Route> {
    vec![
        Route::Api(node.http("/api/publish")),
        Route::Fcall(redis.url()),
    ]
}

/// Once the node serves again: `more` publications accepted, the
/// publisher stopped, every client complete and the channel at the same
/// epoch (its data kept) and at its top offset; answers that offset and
/// what the clients saw (dropping it closes them).
async fn back_and_complete(
    node: &TestNode,
    publisher: Publisher,
    redis: &RedisServer,
    channel: &str,
    watched: Vec<Watched>,
    epoch: &str,
    more: usize,
) -> (u64, Vec<Seen>) {
    support::eventually("the node back on redis", || async {
        node.health().await == 200
    })
    .await;
    let before = publisher.accepted();
    publisher.wait_accepted(before + more).await;
    let accepted = publisher.stop().await;
    let top = publish_end(&redis.url(), channel).await;
    let seen = check_all("node", watched, &accepted, top, epoch).await;
    let position = top_position(node, channel).await;
    assert_eq!(position["epoch"], epoch, "the data was kept");
    assert_eq!(position["offset"], top);
    (top, seen)
}

/// SIGKILLs Redis and waits until the node's health says so.
async fn kill_and_see_it_gone(redis: &mut RedisServer, node: &TestNode) {
    redis.kill();
    support::eventually("the node sees redis gone", || async {
        node.health().await == 503
    })
    .await;
}

/// Redis (appendonly, fsync always) is killed with SIGKILL and restarted on
/// its port while publishes keep coming through the node's API and FCALL:
/// what FCALL recorded while the node's subscriber was away is read back
/// by the node, so its clients miss nothing and notice nothing.
///
/// The node reaches Redis through the proxy, stalled from the restart until
/// 30 FCALLs landed in the restarted Redis: the node cannot resubscribe
/// before they did, so the repair always has something to read (without
/// it, the node's backoff may bring it back before the publisher).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_with_its_data_loses_nothing_and_nobody_reconnects() {
    const CHANNEL: &str = "news:kept";
    let mut redis = RedisServer::start_persistent();
    let proxy = Proxy::start(redis.port).await;
    let through_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let node = TestNode::on_redis(&through_proxy, with_history()).await;
    let (watched, epoch) = subscribed(&node, CHANNEL, 3).await;
    let publisher = Publisher::start(CHANNEL, both_routes(&node, &redis));
    publisher.wait_accepted(50).await;

    kill_and_see_it_gone(&mut redis, &node).await;
    // Both routes refused for a while (the publisher alternates).
    publisher.wait_refused(10).await;
    let before = publisher.accepted();
    proxy.stall(true);
    redis.restart();
    publisher.wait_accepted(before + 30).await;
    assert_eq!(node.health().await, 503, "the node is held back");
    proxy.stall(false);
    let (top, _seen) =
        back_and_complete(&node, publisher, &redis, CHANNEL, watched, &epoch, 100).await;
    let info = nobody_reconnected(&node, 3).await;
    let reconnects = info["broker"]["reconnects"].as_u64().expect("reconnects");
    assert!(reconnects >= 1, "{info}");
    // One repair of the one channel per reconnect of the subscriber.
    assert_eq!(info["stats"]["history_repairs"], reconnects, "{info}");
    assert!(missed_live(&info, top) >= 30, "{info}");
}

/// The node's Redis connections are black-holed for 5 s (no FIN, no RST,
/// every byte dropped) while a backend keeps publishing with FCALL straight
/// into Redis: the node's health PING finds the subscriber dead, it
/// reconnects once the hole lifts and reads back what was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_black_hole_is_repaired_and_nobody_reconnects() {
    const CHANNEL: &str = "news:hole";
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let through_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let node = TestNode::on_redis(&through_proxy, with_history()).await;
    let (watched, epoch) = subscribed(&node, CHANNEL, 3).await;
    let publisher = Publisher::start(CHANNEL, vec![Route::Fcall(redis.url())]);
    publisher.wait_accepted(50).await;

    proxy.blackhole(true);
    let hole = tokio::time::Instant::now();
    support::eventually("the node finds its redis connection dead", || async {
        node.health().await == 503
    })
    .await;
    let during = publisher.accepted();
    // The 5 s black hole is the scenario.
    tokio::time::sleep_until(hole + Duration::from_secs(5)).await;
    assert!(
        publisher.accepted() > during + 50,
        "publishes kept landing in redis during the hole"
    );
    proxy.blackhole(false);
    support::eventually("the node back on redis", || async {
        node.health().await == 200
    })
    .await;
    let before = publisher.accepted();
    publisher.wait_accepted(before + 100).await;
    let accepted = publisher.stop().await;
    let top = publish_end(&redis.url(), CHANNEL).await;

    let _seen = check_all("node", watched, &accepted, top, &epoch).await;
    let info = nobody_reconnected(&node, 3).await;
    assert_eq!(info["broker"]["reconnects"], 1, "{info}");
    assert_eq!(info["stats"]["history_repairs"], 1, "{info}");
    assert!(missed_live(&info, top) >= 50, "dropped in the hole: {info}");
    let metrics = reqwest::get(node.http("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    for line in [
        "duplex_history_repairs_total{outcome=\"repaired\"} 1\n",
        "duplex_history_repairs_total{outcome=\"failed\"} 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// Two nodes, clients on both; only node A's Redis connections go through
/// the proxy, black-holed for 5 s, while publishes keep coming through
/// node B's API and FCALL. A repairs, B notices nothing: all clients end
/// with the same sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_nodes_the_one_cut_off_repairs_and_both_deliver_the_same() {
    const CHANNEL: &str = "news:two";
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let through_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let a = TestNode::on_redis(&through_proxy, with_history()).await;
    let b = TestNode::on_redis(&redis.url(), with_history()).await;
    let (on_a, epoch) = subscribed(&a, CHANNEL, 2).await;
    let (on_b, epoch_b) = subscribed(&b, CHANNEL, 2).await;
    assert_eq!(epoch, epoch_b);
    let publisher = Publisher::start(
        CHANNEL,
        vec![
            Route::Api(b.http("/api/publish")),
            Route::Fcall(redis.url()),
        ],
    );
    publisher.wait_accepted(50).await;

    proxy.blackhole(true);
    let hole = tokio::time::Instant::now();
    support::eventually("node A finds its redis connection dead", || async {
        a.health().await == 503
    })
    .await;
    assert_eq!(b.health().await, 200, "node B is not cut off");
    // The 5 s black hole is the scenario.
    tokio::time::sleep_until(hole + Duration::from_secs(5)).await;
    proxy.blackhole(false);
    support::eventually("node A back on redis", || async { a.health().await == 200 }).await;
    let before = publisher.accepted();
    publisher.wait_accepted(before + 100).await;
    let accepted = publisher.stop().await;
    let top = publish_end(&redis.url(), CHANNEL).await;

    let seen_a = check_all("node A", on_a, &accepted, top, &epoch).await;
    let seen_b = check_all("node B", on_b, &accepted, top, &epoch).await;
    for seen in seen_a.iter().chain(&seen_b[1..]) {
        assert!(
            seen.messages == seen_b[0].messages,
            "every client the same sequence"
        );
    }
    let info_a = nobody_reconnected(&a, 2).await;
    assert_eq!(info_a["broker"]["reconnects"], 1, "{info_a}");
    assert_eq!(info_a["stats"]["history_repairs"], 1, "{info_a}");
    assert!(
        missed_live(&info_a, top) > 0,
        "dropped in the hole: {info_a}"
    );
    let info_b = nobody_reconnected(&b, 2).await;
    assert_eq!(info_b["broker"]["reconnects"], 0, "{info_b}");
    assert_eq!(info_b["stats"]["history_repairs"], 0, "{info_b}");
    assert_eq!(missed_live(&info_b, top), 0, "{info_b}");
}

/// The node's Redis link stalls for 1.5 s (bytes held, none lost), shorter
/// than the node takes to call it dead (a PING unanswered for
/// `redis_timeout`, 3 s here): the data flows late, in order, with no
/// reconnect and nothing to repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_stall_delivers_late_without_a_reconnect() {
    const CHANNEL: &str = "news:late";
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let through_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let patient = Settings {
        redis_timeout: Some(Duration::from_secs(3)),
        ..with_history()
    };
    let node = TestNode::on_redis(&through_proxy, patient).await;
    let (watched, epoch) = subscribed(&node, CHANNEL, 2).await;
    let publisher = Publisher::start(CHANNEL, vec![Route::Fcall(redis.url())]);
    publisher.wait_accepted(50).await;

    proxy.stall(true);
    let during = publisher.accepted();
    // The 1.5 s stall is the scenario.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(publisher.accepted() > during + 20, "publishes kept landing");
    proxy.stall(false);
    let before = publisher.accepted();
    publisher.wait_accepted(before + 50).await;
    let accepted = publisher.stop().await;
    let top = publish_end(&redis.url(), CHANNEL).await;

    let _seen = check_all("node", watched, &accepted, top, &epoch).await;
    let info = nobody_reconnected(&node, 2).await;
    assert_eq!(info["broker"]["reconnects"], 0, "{info}");
    assert_eq!(info["stats"]["history_repairs"], 0, "{info}");
    assert_eq!(missed_live(&info, top), 0, "all came live, late: {info}");
}

/// Gives a persistent Redis `keys` keys (`DEBUG POPULATE`) and writes them
/// to its append-only file (`BGREWRITEAOF`), so a restart takes a while to
/// load them, as a production Redis does.
async fn fill(redis: &RedisServer, keys: u64) {
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(Some(support::WAIT));
    let mut conn = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .expect("connect to test redis");
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(keys)
        .arg("filler")
        .arg(64)
        .query_async(&mut conn)
        .await
        .expect("DEBUG POPULATE");
    let _: String = redis::cmd("BGREWRITEAOF")
        .query_async(&mut conn)
        .await
        .expect("BGREWRITEAOF");
    support::eventually("the dataset written to the append-only file", || async {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut redis.connection().await)
            .await
            .expect("INFO persistence");
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    })
    .await;
}

/// Whether Redis is still loading its dataset (`INFO` answers meanwhile).
async fn loading(redis: &RedisServer) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(&mut redis.connection().await)
        .await
        .expect("INFO persistence");
    info.contains("loading:1")
}

/// Redis restarted with a dataset it takes seconds to load: it accepts
/// connections (and `SUBSCRIBE`) meanwhile, but answers every read and
/// write with `-LOADING`. The node must wait for the data (health 503,
/// publishes refused), not read the history too early and close its
/// clients with 3008 for a gap that is there in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_a_dataset_to_load_is_waited_for_and_nobody_reconnects() {
    const CHANNEL: &str = "news:loading";
    let mut redis = RedisServer::start_persistent();
    fill(&redis, 1_500_000).await;
    let node = TestNode::on_redis(&redis.url(), with_history()).await;
    let (watched, epoch) = subscribed(&node, CHANNEL, 3).await;
    let publisher = Publisher::start(CHANNEL, both_routes(&node, &redis));
    publisher.wait_accepted(30).await;

    kill_and_see_it_gone(&mut redis, &node).await;
    redis.restart();
    assert!(loading(&redis).await, "the scenario: redis is loading");
    publisher.wait_refused(10).await;
    assert!(loading(&redis).await, "the scenario: still loading");
    assert_eq!(node.health().await, 503, "not serving while redis loads");
    let _seen = back_and_complete(&node, publisher, &redis, CHANNEL, watched, &epoch, 50).await;
    nobody_reconnected(&node, 3).await;
}

/// Every connection the node has to Redis dies silently at once, while new
/// ones get through (a NAT or firewall that lost its flow table): the
/// health PING finds the subscriber dead and it reconnects at once, and
/// the repair must not read on the publish connection that died with it
/// (that read would time out and the repair close its clients with 3008).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_silently_are_repaired_on_fresh_ones_and_nobody_reconnects() {
    const CHANNEL: &str = "news:flows";
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let through_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let node = TestNode::on_redis(&through_proxy, with_history()).await;
    // Their subscribes read the channel's position: the node's publish
    // connection is open (and about to die).
    let (watched, epoch) = subscribed(&node, CHANNEL, 3).await;
    let publisher = Publisher::start(CHANNEL, vec![Route::Fcall(redis.url())]);
    publisher.wait_accepted(50).await;

    proxy.kill_open_connections();
    // Found dead and replaced at once: too fast to see /health say 503.
    support::eventually("the node on a new redis connection", || async {
        node.info().await["broker"]["reconnects"] == 1
    })
    .await;
    let before = publisher.accepted();
    publisher.wait_accepted(before + 100).await;
    let accepted = publisher.stop().await;
    let top = publish_end(&redis.url(), CHANNEL).await;

    let _seen = check_all("node", watched, &accepted, top, &epoch).await;
    let info = nobody_reconnected(&node, 3).await;
    assert_eq!(info["broker"]["reconnects"], 1, "{info}");
    assert_eq!(info["stats"]["history_repairs"], 1, "{info}");
    assert!(missed_live(&info, top) > 0, "dropped: {info}");
}
