//! SIGTERM / SIGINT: clients get "going away" (1001) after what was queued
//! for them, and the process exits 0.

mod support;

use serde_json::json;
use support::client::Client;
use support::node::TestNode;
use support::process::NodeProcess;

#[tokio::test]
async fn queued_messages_then_1001() {
    let node = TestNode::memory().await;
    let mut plain = Client::connect(&node.ws("/")).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.subscribe(&["channel"]).await;
    for i in 0..100 {
        node.post_json(
            "/api/publish",
            &json!({"channel": "channel", "data": format!("m{i}")}),
        )
        .await;
    }
    let addr = node.addr;
    node.stop().await;
    for i in 0..100 {
        assert_eq!(plain.next_text().await, format!("m{i}"));
        assert_eq!(native.next_push().await.1, json!(format!("m{i}")));
    }
    let closed = plain.expect_close().await;
    assert_eq!(closed.code, 1001);
    let disconnect = native.next_json().await;
    assert_eq!(
        disconnect,
        json!({"push": "disconnect", "code": 1001, "reason": "server shutting down", "reconnect": true})
    );
    assert_eq!(native.expect_close().await.code, 1001);
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let mut node = NodeProcess::start(&[]).await;
    let mut plain = Client::connect(&node.ws("/")).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.subscribe(&["x"]).await;
    node.terminate();
    assert_eq!(plain.expect_close().await.code, 1001);
    assert_eq!(native.expect_close().await.code, 1001);
    let exit = tokio::task::spawn_blocking(move || node.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
}
