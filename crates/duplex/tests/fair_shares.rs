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
use support::redis_server::RedisServer;
use support::stream::{create_group, read_group, GROUP, STREAM};
use tokio_util::sync::CancellationToken;

const OTHER_ADDRESS: [u8; 4] = [127, 0, 0, 2];

async fn stat(node: &TestNode, name: &str) -> u64 {
    node.info().await["stats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no stat {name}"))
}

/// A node on `redis` with room for 20 waiting calls, 4 per connection.
async fn rpc_node(redis: &RedisServer, extra: Settings) -> TestNode {
    let node = TestNode::start(Settings {
        redis: Some(redis.url()),
        max_inflight_rpcs: Some(20),
        max_pending_rpcs: Some(4),
        max_publish_rate: Some(0),
        ..extra.or(settings())
    })
    .await;
    support::eventually("node on redis", || async { node.health().await == 200 }).await;
    node
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
        let before = stat(node, "rpc_pending").await + stat(node, "rpc_refused").await;
        for id in 1..=4 {
            let command =
                json!({"id": id, "method": "rpc", "params": {"method": "hold", "data": id}});
            client.send_text(&command.to_string()).await;
        }
        support::eventually("the node took or refused the batch", || async {
            stat(node, "rpc_pending").await + stat(node, "rpc_refused").await == before + 4
        })
        .await;
        let refused = stat(node, "rpc_refused").await;
        while (refusals.len() as u64) < refused {
            refusals.push(client.next_json().await);
        }
    }
    refusals
}

/// Sends one rpc on `client` and waits until the node took or refused it.
async fn call(node: &TestNode, client: &mut Client) {
    let before = stat(node, "rpc_pending").await + stat(node, "rpc_refused").await;
    let command = json!({"id": 99, "method": "rpc", "params": {"method": "ask", "data": "mine"}});
    client.send_text(&command.to_string()).await;
    support::eventually("the node took or refused the call", || async {
        stat(node, "rpc_pending").await + stat(node, "rpc_refused").await == before + 1
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
        stat(&node, "rpc_pending").await == 0
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
