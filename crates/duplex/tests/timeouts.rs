//! Connections that hold a slot without doing anything are cut: request
//! headers trickled in (slowloris) by `handshake_timeout`, `/ws` clients that
//! never send a command by `connect_timeout` (close 3005). Clients that do
//! their part are left alone.

mod support;

use std::time::Duration;

use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};
use support::raw::{frame, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the socket; what it sent before that.
async fn read_to_end(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(support::WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("server closed the connection within the wait");
    String::from_utf8_lossy(&got).to_string()
}

#[tokio::test]
async fn slowloris_headers_are_cut_at_the_handshake_timeout() {
    let node = TestNode::start(duplex::config::Settings {
        handshake_timeout: Some(Duration::from_millis(500)),
        ..settings()
    })
    .await;
    let mut bystander = Client::connect(&node.ws("/")).await;
    // One trickles a WebSocket request a byte at a time, forever...
    let mut trickler = TcpStream::connect(node.addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        node.addr
    );
    let trickle = tokio::spawn(async move {
        for byte in request.bytes().cycle() {
            if trickler.write_all(&[byte]).await.is_err() {
                return trickler;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        unreachable!("cycle never ends")
    });
    // ...one sends nothing at all...
    let mut silent = TcpStream::connect(node.addr).await.unwrap();
    // ...and a hundred more send half a request line.
    let mut halves = Vec::new();
    for _ in 0..100 {
        let mut tcp = TcpStream::connect(node.addr).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHo").await.unwrap();
        halves.push(tcp);
    }
    // Meanwhile everyone else is served as usual.
    let mut newcomer = Client::connect(&node.ws("/")).await;
    node.post_json("/api/publish", &json!({"channel": "channel", "data": "hi"}))
        .await;
    assert_eq!(bystander.next_text().await, "hi");
    assert_eq!(newcomer.next_text().await, "hi");

    let mut trickler = trickle.await.unwrap();
    assert_eq!(
        read_to_end(&mut trickler).await,
        "",
        "no response, just closed"
    );
    assert_eq!(read_to_end(&mut silent).await, "");
    for tcp in &mut halves {
        read_to_end(tcp).await;
    }
    let timeouts = node.info().await["stats"]["handshake_timeouts"]
        .as_u64()
        .unwrap();
    assert_eq!(timeouts, 102);
    assert_eq!(node.info().await["connections"], 2, "only the real clients");
}

#[tokio::test]
async fn ws_clients_that_never_send_a_command_get_3005() {
    let node = TestNode::start(duplex::config::Settings {
        connect_timeout: Some(Duration::from_millis(300)),
        ..settings()
    })
    .await;
    let mut idle = Raw::connect(node.addr, "/ws").await;
    // WebSocket pings keep a connection alive but are not commands.
    let mut pinger = Raw::connect(node.addr, "/ws").await;
    pinger.send(&frame(0x89, b"are you there", true)).await;
    // Garbage is not a command either.
    let mut babbler = Raw::connect(node.addr, "/ws").await;
    babbler.send(&frame(0x81, b"hello?", true)).await;
    // A client that introduces itself, and a plain client, which needs no command.
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.command("connect", json!({})).await;
    let mut plain = Client::connect(&node.ws("/")).await;

    assert_eq!(idle.close_code().await, 3005);
    assert_eq!(pinger.close_code().await, 3005);
    assert_eq!(babbler.close_code().await, 3005);
    let connect_timeouts = node.info().await["stats"]["connect_timeouts"]
        .as_u64()
        .unwrap();
    assert_eq!(connect_timeouts, 3);
    // Well past the timeout, the others still work.
    native.subscribe(&["channel"]).await;
    node.post_json(
        "/api/publish",
        &json!({"channel": "channel", "data": "still here"}),
    )
    .await;
    assert_eq!(native.next_push().await.1, json!("still here"));
    assert_eq!(plain.next_text().await, "still here");
}

/// With token auth, only a connect that succeeds introduces a client: one
/// whose connect was refused (an expired token, none at all) and that then
/// idles (answering pings) is cut like one that never spoke.
#[tokio::test]
async fn ws_clients_whose_connect_was_refused_get_3005() {
    const SECRET: &str = "test-secret-of-decent-length";
    let node = TestNode::start(duplex::config::Settings {
        connect_timeout: Some(Duration::from_millis(300)),
        token_secret: Some(SECRET.into()),
        ..settings()
    })
    .await;
    let claims = json!({"sub": "1", "exp": duplex::auth::unix_now() - 10});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let expired = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let mut late = Client::connect(&node.ws("/ws")).await;
    let reply = late.command("connect", json!({"token": expired})).await;
    assert_eq!(reply["error"]["code"], 111, "{reply}");
    let mut tokenless = Client::connect(&node.ws("/ws")).await;
    let reply = tokenless
        .command("subscribe", json!({"channel": "x"}))
        .await;
    assert_eq!(reply["error"]["code"], 112, "{reply}");
    assert_eq!(late.expect_close().await.code, 3005);
    assert_eq!(tokenless.expect_close().await.code, 3005);
}

/// Opens a connection and sends `head` and the start of a body, never the rest.
async fn stalled(addr: std::net::SocketAddr, request: String) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    tcp
}

/// `POST <path>` announcing `Content-Length: 1000000`, with 1 byte sent.
fn short_body(addr: std::net::SocketAddr, path: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{"
    )
}

#[tokio::test]
async fn request_bodies_not_complete_by_the_request_timeout_get_408() {
    let node = TestNode::start(duplex::config::Settings {
        request_timeout: Some(Duration::from_millis(500)),
        ..settings()
    })
    .await;
    let mut bystander = Client::connect(&node.ws("/")).await;
    let addr = node.addr;
    // Every route that reads a body, each with 1 byte of the 1,000,000 announced.
    let paths = [
        "/api/publish",
        "/api/broadcast",
        "/api/disconnect",
        "/api/unsubscribe",
        "/api/reply",
        "/api/console/token",
    ];
    let mut stuck = Vec::new();
    for path in paths {
        stuck.push(stalled(addr, short_body(addr, path)).await);
    }
    // A chunked body without its last chunk.
    stuck.push(
        stalled(
            addr,
            format!("POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"cha\r\n"),
        )
        .await,
    );
    // And one trickled a byte per 100 ms: a per-read idle timeout never fires on it.
    let mut trickler = stalled(
        addr,
        format!("POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"),
    )
    .await;
    let trickle = tokio::spawn(async move {
        let give_up = tokio::time::Instant::now() + support::WAIT;
        while tokio::time::Instant::now() < give_up {
            if trickler.write_all(b"1\r\n \r\n").await.is_err() {
                return trickler;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut probe = [0u8; 1];
            // Stop once the node has answered (the answer is read below).
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, trickler.peek(&mut probe)).await
            {
                if n > 0 {
                    return trickler;
                }
            }
        }
        trickler
    });
    // Meanwhile a normal client is served.
    let (status, _) = node
        .post_json("/api/publish", &json!({"channel": "channel", "data": "hi"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(bystander.next_text().await, "hi");

    stuck.push(trickle.await.unwrap());
    let count = stuck.len() as u64;
    for tcp in &mut stuck {
        let answer = read_to_end(tcp).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    let stats = &node.info().await["stats"];
    assert_eq!(stats["request_timeouts"].as_u64(), Some(count), "{stats}");
    assert_eq!(stats["messages_published"], 1, "only the complete request");
    // A complete body that takes a moment is still fine.
    let mut slow_but_whole = TcpStream::connect(addr).await.unwrap();
    let body = r#"{"channel":"channel","data":"late"}"#;
    slow_but_whole
        .write_all(format!("POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    slow_but_whole.write_all(body.as_bytes()).await.unwrap();
    assert!(read_to_end(&mut slow_but_whole)
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(bystander.next_text().await, "late");
}
