//! HTTP connections count too: at most `max_http_connections` are open and
//! not upgraded at once, and at most (fd limit − reserve) sockets of any
//! kind. When full, a newcomer closes the oldest HTTP connection of the
//! address holding the most, so an address flooding the node with slow
//! requests pushes out only its own, and `accept()` never runs out of file
//! descriptors: `/health` and new WebSocket clients keep getting in.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use duplex::config::Settings;
use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};
use support::process::NodeProcess;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A connection from `from` that sends a `POST /api/publish` announcing
/// 1,000,000 bytes of body and sends 1 (the attack).
async fn slow_post(node: SocketAddr, from: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind client address");
    let mut tcp = socket.connect(node).await.expect("connect");
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {node}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{"
    );
    // The node may already have evicted it: a failed write is an answer too.
    let _ = tcp.write_all(request.as_bytes()).await;
    tcp
}

/// Whether the node closed this connection (EOF or reset), without waiting.
fn closed(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match tcp.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false, // an answer: still open until read to the end
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

async fn stat(node: &TestNode, name: &str) -> u64 {
    node.info().await["stats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// Settings where only the connection limits can close a slow request.
fn patient() -> Settings {
    Settings {
        handshake_timeout: Some(Duration::from_secs(600)),
        request_timeout: Some(Duration::from_secs(600)),
        max_connections: Some(100),
        max_connections_per_ip: Some(10),
        max_http_connections: Some(20),
        ..settings()
    }
}

#[tokio::test]
async fn a_flooding_address_is_capped_and_only_pushes_out_its_own() {
    let node = TestNode::start(patient()).await;
    let mut flood = Vec::new();
    for _ in 0..50 {
        flood.push(slow_post(node.addr, [127, 0, 0, 2]).await);
    }
    // 20 held; each of the 30 after evicted the flooder's own oldest.
    support::eventually("the 30 oldest closed", || async {
        flood[..30].iter().all(closed)
    })
    .await;
    assert!(flood[30..].iter().all(|tcp| !closed(tcp)));
    // (Asking the node takes a connection too, which evicts one more.)
    assert!(stat(&node, "http_evictions").await >= 30);
    assert!(stat(&node, "http_connections").await <= 20);

    // Another address still gets in, by HTTP and by WebSocket.
    let mut ws = Client::connect(&node.ws("/")).await;
    let (status, _) = node
        .post_json("/api/publish", &json!({"channel": "channel", "data": "in"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(ws.next_text().await, "in");
    assert_eq!(node.health().await, 200);
    // Upgraded, the WebSocket client counts against max_connections, not here.
    let info = node.info().await;
    assert_eq!(info["connections"], 1);
    assert!(info["stats"]["http_connections"].as_u64() <= Some(20));
    // What made room were the flooder's connections, oldest first.
    support::eventually("newcomers evicted the flood's oldest", || async {
        stat(&node, "http_evictions").await > 30 && closed(&flood[30])
    })
    .await;
    assert!(!closed(&flood[49]));
    assert_eq!(stat(&node, "sockets_refused").await, 0);
}

#[tokio::test]
async fn behind_a_proxy_fresh_requests_push_out_the_oldest() {
    // Every connection from one address, as through a reverse proxy.
    let node = TestNode::start(patient()).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(slow_post(node.addr, [127, 0, 0, 1]).await);
    }
    support::eventually("20 held", || async {
        stat(&node, "http_connections").await >= 20
    })
    .await;
    for round in 0..5 {
        let (status, _) = node
            .post_json("/api/publish", &json!({"channel": "c", "data": round}))
            .await;
        assert_eq!(status, 200);
    }
    support::eventually("the oldest slow one closed", || async { closed(&slow[0]) }).await;
    assert!(!closed(&slow[19]));
}

/// A local address other than the test's 127.0.0.1.
const FLOODER: [u8; 4] = [127, 0, 0, 2];

#[tokio::test]
async fn a_node_at_its_fd_limit_keeps_serving_new_clients() {
    // 300 descriptors, of which 128 stay in reserve: the flood exceeds it.
    let node = NodeProcess::start_with_fd_limit(300, &["--log-format", "json"]).await;
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(slow_post(node.addr, FLOODER).await);
    }
    // Taken in: 172 held (300 - 128 reserved); each one after them evicted
    // the oldest, or was closed at once while evicted ones were still closing.
    support::eventually("the node took the flood in", || async {
        node.open_fds() >= 290 || closed_by_node(&node).await >= 400 - 172
    })
    .await;
    // A WebSocket client from another address connects and is served...
    let mut ws = tokio::time::timeout(support::WAIT, Client::connect(&node.ws("/")))
        .await
        .expect("WebSocket client connects while the node is full");
    let publish = reqwest::Client::new()
        .post(node.http("/api/publish"))
        .json(&json!({"channel": "channel", "data": "through"}))
        .timeout(support::WAIT)
        .send()
        .await
        .expect("publish answered");
    assert_eq!(publish.status(), 200);
    assert_eq!(ws.next_text().await, "through");
    // ...and so is a health check.
    let health = reqwest::Client::new()
        .get(node.http("/health"))
        .timeout(support::WAIT)
        .send()
        .await
        .expect("/health answered");
    assert_eq!(health.status(), 200);
    assert!(node.open_fds() < 300, "{} fds", node.open_fds());
    let log = node.log();
    assert!(log.contains("\"fd_limit\":300"), "{log}");
    assert!(log.contains("the open-file limit is below"), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    let flooder: IpAddr = FLOODER.into();
    assert!(
        log.contains(&format!("\"evicted_from\":\"{flooder}\"")),
        "{log}"
    );
    drop(flood);
}

/// `http_evictions` + `sockets_refused`, or 0 while the node does not answer.
async fn closed_by_node(node: &NodeProcess) -> u64 {
    let answer = reqwest::Client::new()
        .get(node.http("/api/info"))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    match answer {
        Ok(response) => response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|info| {
                let stats = &info["stats"];
                Some(stats["http_evictions"].as_u64()? + stats["sockets_refused"].as_u64()?)
            }),
        Err(_) => None,
    }
    .unwrap_or(0)
}
