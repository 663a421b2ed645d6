//! Shared capacity one client cannot take alone: the node's waiting rpcs
//! (`max_inflight_rpcs`) are shared fairly among client addresses and
//! users, and subscriptions are bounded per connection and per address.
//! Other addresses are simulated by binding the client socket to
//! 127.0.0.2 before connecting.

mod support;

use duplex::config::Settings;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::process::NodeProcess;
use support::redis_server::RedisServer;
use support::stream::{create_group, read_group, GROUP, STREAM};
use tokio_util::sync::CancellationToken;

const OTHER_ADDRESS: [u8; 4] = [127, 0, 0, 2];

/// A node on `redis` with room for 20 waiting calls, 4 per connection.
async fn rpc_node(redis: &RedisServer, extra: Settings) -> TestNode {
    let extra = Settings {
        max_inflight_rpcs: Some(20),
        max_pending_rpcs: Some(4),
        max_publish_rate: Some(0),
        ..extra
    };
    TestNode::on_redis(&redis.url(), extra).await
}

/// A backend worker answering every call with its request id, until stopped.
fn spawn_worker(redis: &RedisServer, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let url = redis.url();
    tokio::spawn(async move {
        let mut conn = redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("worker connects");
        while !stop.is_cancelled() {
            for (id, fields) in read_group(&mut conn, "w1", 100, 100).await {
                let order = json!({
                    "op": "reply",
                    "connection": fields["connection"],
                    "request": fields["request"],
                    "data": {"answered": fields["data"]},
                });
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(&fields["reply_to"])
                    .arg(order.to_string())
                    .query_async(&mut conn)
                    .await
                    .expect("PUBLISH");
                let _: i64 = redis::cmd("XACK")
                    .arg(&[STREAM, GROUP, &id][..])
                    .query_async(&mut conn)
                    .await
                    .expect("XACK");
            }
        }
    })
}

/// Sends 4 rpcs on each client in turn, waiting until the node has taken
/// or refused each batch; returns the refusals, in order.
async fn fill(node: &TestNode, clients: &mut [Client]) -> Vec<Value> {
    let mut refusals = Vec::new();
    for client in clients {
        let before = node.stat("rpc_pending").await + node.stat("rpc_refused").await;
        for id in 1..=4 {
            let command =
                json!({"id": id, "method": "rpc", "params": {"method": "hold", "data": id}});
            client.send_text(&command.to_string()).await;
        }
        support::eventually("the node took or refused the batch", || async {
            node.stat("rpc_pending").await + node.stat("rpc_refused").await == before + 4
        })
        .await;
        let refused = node.stat("rpc_refused").await;
        while (refusals.len() as u64) < refused {
            refusals.push(client.next_json().await);
        }
    }
    refusals
}

/// Sends one rpc on `client` and waits until the node took or refused it.
async fn call(node: &TestNode, client: &mut Client) {
    let before = node.stat("rpc_pending").await + node.stat("rpc_refused").await;
    let command = json!({"id": 99, "method": "rpc", "params": {"method": "ask", "data": "mine"}});
    client.send_text(&command.to_string()).await;
    support::eventually("the node took or refused the call", || async {
        node.stat("rpc_pending").await + node.stat("rpc_refused").await == before + 1
    })
    .await;
}

/// One rpc's reply, with the worker running.
async fn answered(client: &mut Client) -> Value {
    client
        .command("rpc", json!({"method": "ask", "data": "mine"}))
        .await
}

#[tokio::test]
async fn one_address_cannot_take_every_waiting_rpc_from_the_others() {
    let redis = RedisServer::start();
    create_group(&redis).await;
    let node = rpc_node(&redis, Settings::default()).await;
    // Six connections from 127.0.0.1 try to hold 24 calls; no worker yet.
    let mut flooders = Vec::new();
    for _ in 0..6 {
        flooders.push(Client::connect(&node.ws("/ws")).await);
    }
    let refusals = fill(&node, &mut flooders).await;
    // A client from another address still gets its call answered.
    let mut other = Client::connect_from(&node.ws("/ws"), OTHER_ADDRESS).await;
    call(&node, &mut other).await;
    let stop = CancellationToken::new();
    let worker = spawn_worker(&redis, stop.clone());
    let reply = other.next_json().await;
    assert_eq!(reply["result"]["data"]["answered"], "\"mine\"", "{reply}");
    // Alone, the flooding address could hold 90% of the node's 20 calls;
    // the others were refused with 114 naming the share.
    assert_eq!(refusals.len(), 6, "{refusals:?}");
    for reply in &refusals {
        assert_eq!(reply["error"]["code"], 114, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("rpc_fair_share_per_ip"), "{reply}");
    }
    // Once answered, the flooder's address is under its share again.
    support::eventually("every call answered", || async {
        node.stat("rpc_pending").await == 0
    })
    .await;
    let reply = answered(&mut flooders[5]).await;
    assert!(reply.get("result").is_some(), "{reply}");
    stop.cancel();
    worker.await.expect("worker");
}

fn token(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": duplex::auth::unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"shares-secret"),
    )
    .expect("sign")
}

async fn connected(node: &TestNode, sub: Option<&str>) -> Client {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let params = match sub {
        Some(sub) => json!({"token": token(sub)}),
        None => json!({}),
    };
    let reply = client.command("connect", params).await;
    assert!(reply["result"].is_object(), "{reply}");
    client
}

#[tokio::test]
async fn one_user_cannot_take_every_waiting_rpc_behind_a_proxy() {
    let redis = RedisServer::start();
    create_group(&redis).await;
    // Behind a proxy every client has its address: shares per address off.
    let node = rpc_node(
        &redis,
        Settings {
            token_secret: Some("shares-secret".into()),
            allow_anonymous: Some(true),
            rpc_fair_share_per_ip: Some(false),
            ..Default::default()
        },
    )
    .await;
    let mut mallory = Vec::new();
    for _ in 0..6 {
        mallory.push(connected(&node, Some("mallory")).await);
    }
    let refusals = fill(&node, &mut mallory).await;
    // Another user, from the same address, gets answered.
    let mut bob = connected(&node, Some("bob")).await;
    call(&node, &mut bob).await;
    let stop = CancellationToken::new();
    let worker = spawn_worker(&redis, stop.clone());
    let reply = bob.next_json().await;
    assert_eq!(reply["result"]["data"]["answered"], "\"mine\"", "{reply}");
    assert_eq!(refusals.len(), 6, "{refusals:?}");
    for reply in &refusals {
        assert_eq!(reply["error"]["code"], 114, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("rpc_fair_share_per_user"), "{reply}");
    }
    // Anonymous clients are not one user.
    let mut anonymous = connected(&node, None).await;
    let reply = answered(&mut anonymous).await;
    assert!(reply.get("result").is_some(), "{reply}");
    stop.cancel();
    worker.await.expect("worker");
}

/// Subscribes `client` to `<prefix>0..<prefix>n`; the reply as it is.
async fn subscribe_many(client: &mut Client, prefix: &str, n: usize) -> Value {
    let channels: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    client
        .command("subscribe", json!({"channels": channels}))
        .await
}

#[tokio::test]
async fn subscriptions_are_bounded_per_connection_and_per_address_all_or_nothing() {
    let node = TestNode::start(Settings {
        max_subscriptions: Some(10),
        max_subscriptions_per_ip: Some(25),
        ..settings()
    })
    .await;
    let subscriptions = || async { node.info().await["subscriptions"].clone() };
    let mut a = Client::connect(&node.ws("/ws")).await;
    assert!(subscribe_many(&mut a, "a", 10).await["result"].is_object());
    let reply = subscribe_many(&mut a, "more", 1).await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("(max_subscriptions)"), "{reply}");
    // A second connection from the address fills it to 20 of 25.
    let mut b = Client::connect(&node.ws("/ws")).await;
    assert!(subscribe_many(&mut b, "b", 10).await["result"].is_object());
    // A third asks for 10: over the address's 25, so none of them.
    let mut c = Client::connect(&node.ws("/ws")).await;
    let reply = subscribe_many(&mut c, "c", 10).await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_subscriptions_per_ip"), "{reply}");
    assert_eq!(subscriptions().await, 20, "nothing half-applied");
    assert!(subscribe_many(&mut c, "c", 5).await["result"].is_object());
    // Plain clients count too: a full address is refused at the upgrade.
    let (status, reason) = support::client::refused(&node.ws("/?channel=p")).await;
    assert_eq!(status, 429, "{reason}");
    assert!(reason.contains("max_subscriptions_per_ip"), "{reason}");
    // Another address has its own.
    let mut other = Client::connect_from(&node.ws("/ws"), OTHER_ADDRESS).await;
    assert!(subscribe_many(&mut other, "o", 10).await["result"].is_object());
    let plain_elsewhere = Client::ws_from(&node.ws("/?channel=p"), OTHER_ADDRESS).await;
    assert!(plain_elsewhere.is_ok(), "{plain_elsewhere:?}");
    // Unsubscribing and leaving give the address its room back.
    let reply = a
        .command("unsubscribe", json!({"channels": ["a0", "a1"]}))
        .await;
    assert!(reply["result"].is_object(), "{reply}");
    let mut plain = Client::connect(&node.ws("/?channel=p")).await;
    b.close().await;
    support::eventually("b's subscriptions given back", || async {
        subscriptions().await == 8 + 1 + 5 + 10 + 1
    })
    .await;
    let mut d = Client::connect(&node.ws("/ws")).await;
    assert!(subscribe_many(&mut d, "d", 10).await["result"].is_object());
    assert_eq!(
        node.info().await["stats"]["subscriptions_refused"],
        3,
        "a's 11th, c's 10 and the plain client"
    );
    // The plain client is subscribed for real.
    let mut publisher = Client::connect_from(&node.ws("/ws"), OTHER_ADDRESS).await;
    let reply = publisher
        .command("publish", json!({"channel": "p", "data": "hi"}))
        .await;
    assert!(reply["result"].is_object(), "{reply}");
    assert_eq!(plain.next_text().await, "hi");
}

/// Channel names of 255 bytes, the longest allowed: the costliest.
fn long_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!("{prefix}-{i}-")
                .chars()
                .chain(std::iter::repeat('x'))
                .take(255)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn one_address_holds_bounded_subscription_memory_at_the_defaults() {
    let redis = RedisServer::start();
    let node = NodeProcess::on_redis(&redis.url()).await;
    let before = node.rss_kib();
    // Defaults: 1,000 per connection, 20,000 per address.
    let mut clients = Vec::new();
    for c in 0..20 {
        let mut client = Client::connect(&node.ws("/ws")).await;
        for chunk in long_names(&format!("c{c}"), 1000).chunks(200) {
            let reply = client
                .command("subscribe", json!({"channels": chunk}))
                .await;
            assert!(reply["result"].is_object(), "{}", reply["error"]);
        }
        clients.push(client);
    }
    let reply = clients[0]
        .command("subscribe", json!({"channel": "one-more"}))
        .await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("(max_subscriptions)"));
    let mut extra = Client::connect(&node.ws("/ws")).await;
    let reply = extra
        .command("subscribe", json!({"channels": long_names("extra", 200)}))
        .await;
    assert_eq!(reply["error"]["code"], 106, "{}", reply["error"]);
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("max_subscriptions_per_ip"));
    assert_eq!(node.info().await["subscriptions"], 20_000);
    // docs/PROTOCOL.md section 6: at most 1.5 KiB per subscription, so
    // 30 MiB per address at the defaults (measured: about 1.3 KiB).
    let grown = node.rss_kib().saturating_sub(before);
    eprintln!(
        "20,000 subscriptions of 255-byte names from one address: RSS +{grown} KiB, {} B each",
        grown * 1024 / 20_000
    );
    assert!(grown < 30 * 1024, "RSS grew {grown} KiB");
}
