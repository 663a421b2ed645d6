//! Protocol violations get the documented close code, and the other clients
//! on the node keep receiving.

mod support;

use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};
use support::raw::{frame, Raw};

async fn assert_bystander_fine(node: &TestNode, bystander: &mut Client, text: &str) {
    node.post_json("/api/publish", &json!({"channel": "channel", "data": text}))
        .await;
    assert_eq!(bystander.next_text().await, text);
}

#[tokio::test]
async fn violations_get_their_close_codes() {
    let node = TestNode::memory().await;
    let mut bystander = Client::connect(&node.ws("/")).await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", frame(0x81, b"hi", false), 1002),
        ("reserved bit", frame(0x81 | 0x40, b"hi", true), 1002),
        ("reserved opcode", frame(0x83, b"hi", true), 1002),
        ("invalid UTF-8 text", frame(0x81, &[0xc3, 0x28], true), 1007),
        (
            "control frame over 125 bytes",
            frame(0x89, &[0u8; 126], true),
            1002,
        ),
        (
            "oversized message",
            frame(0x82, &vec![0u8; 65537], true),
            1009,
        ),
    ];
    for (what, bytes, code) in cases {
        for path in ["/", "/ws"] {
            let mut raw = Raw::connect(node.addr, path).await;
            raw.send(&bytes).await;
            assert_eq!(raw.close_code().await, code, "{what} on {path}");
        }
        assert_bystander_fine(&node, &mut bystander, what).await;
    }
    let protocol_errors = node.info().await["stats"]["protocol_errors"]
        .as_u64()
        .unwrap();
    assert_eq!(protocol_errors, 12);
}

#[tokio::test]
async fn size_limit_is_inclusive() {
    let node = TestNode::memory().await;
    let mut raw = Raw::connect(node.addr, "/").await;
    let exactly = vec![b'x'; 65536];
    raw.send(&frame(0x81, &exactly, true)).await;
    let echoed = raw.next_frame().await.expect("echo");
    assert_eq!((echoed.opcode, echoed.payload.len()), (1, 65536));
    // The same limit holds across fragments.
    raw.send(&frame(0x01, &exactly[..40000], true)).await;
    raw.send(&frame(0x80, &exactly[..25537], true)).await;
    assert_eq!(raw.close_code().await, 1009);
}

/// A small `max_message_size` (under the 4 KiB read chunk) is a limit
/// like any other: messages up to it pass, one byte more is 1009. (The
/// reader once asked for at least 4 KiB and at most the limit, and panicked
/// on every first read of such a node.)
#[tokio::test]
async fn a_small_message_limit_works() {
    let node = TestNode::start(duplex::config::Settings {
        max_message_size: Some(100),
        ..settings()
    })
    .await;
    let mut raw = Raw::connect(node.addr, "/").await;
    raw.send(&frame(0x81, &[b'x'; 100], true)).await;
    let echoed = raw.next_frame().await.expect("echo");
    assert_eq!((echoed.opcode, echoed.payload.len()), (1, 100));
    raw.send(&frame(0x81, &[b'x'; 101], true)).await;
    assert_eq!(raw.close_code().await, 1009);
}

#[tokio::test]
async fn peers_that_never_answer_pings_are_dropped() {
    let node = TestNode::start(duplex::config::Settings {
        ping_interval: Some(std::time::Duration::from_millis(200)),
        pong_timeout: Some(std::time::Duration::from_millis(200)),
        ..settings()
    })
    .await;
    // tungstenite answers pings while it reads: keep this one reading.
    let mut alive = Client::connect(&node.ws("/")).await;
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        loop {
            let text = alive.next_text().await;
            if got_tx.send(text).is_err() {
                break;
            }
        }
    });
    let mut silent = Raw::connect(node.addr, "/").await;
    let mut pings = 0;
    let code = loop {
        let f = silent.next_frame().await.expect("frames until close");
        match f.opcode {
            9 => pings += 1,
            8 => break f.close_code().unwrap(),
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert_eq!(code, 3002);
    assert!(pings >= 1);
    node.post_json(
        "/api/publish",
        &json!({"channel": "channel", "data": "still here"}),
    )
    .await;
    assert_eq!(got.recv().await.as_deref(), Some("still here"));
    assert_eq!(node.info().await["stats"]["heartbeat_timeouts"], 1);
    reading.abort();
}

#[tokio::test]
async fn plain_http_and_broken_upgrades_get_clear_answers() {
    let node = TestNode::memory().await;
    // `/` without an upgrade is the web console (tests/console.rs); `/ws` says what it wants.
    let response = reqwest::get(node.http("/ws")).await.unwrap();
    assert_eq!(response.status(), 426);
    assert!(response.text().await.unwrap().contains("WebSocket"));
    let response = reqwest::Client::new()
        .get(node.http("/ws"))
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Version", "8")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("Sec-WebSocket-Version"));
}

/// Regression: a close (ours or the peer's) arriving while a large frame is
/// half written must not put the close frame inside that frame's payload.
#[tokio::test]
async fn close_never_lands_inside_a_half_written_frame() {
    let node = TestNode::start(duplex::config::Settings {
        max_message_size: Some(16 << 20),
        ..settings()
    })
    .await;
    for (what, trailer, code) in [
        (
            "peer close",
            frame(0x88, &1000u16.to_be_bytes(), true),
            1000,
        ),
        ("protocol error", frame(0x85, b"", true), 1002),
    ] {
        let mut raw = Raw::connect(node.addr, "/").await;
        let big = vec![7u8; 8 << 20];
        let mut bytes = frame(0x82, &big, true);
        bytes.extend_from_slice(&trailer);
        raw.send(&bytes).await;
        let echo = raw.next_frame().await.expect("the echo");
        assert_eq!(echo.opcode, 2, "{what}");
        assert!(
            echo.payload == big,
            "{what}: echo intact ({} bytes)",
            echo.payload.len()
        );
        assert_eq!(raw.close_code().await, code, "{what}");
    }
}
