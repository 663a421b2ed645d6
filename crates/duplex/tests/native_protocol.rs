//! The native JSON protocol at `/ws`, over real sockets.

mod support;

use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};

#[tokio::test]
async fn connect_subscribe_publish_unsubscribe() {
    let node = TestNode::memory().await;
    let mut c = Client::connect(&node.ws("/ws")).await;
    let reply = c
        .command("connect", json!({"name": "test", "version": "1"}))
        .await;
    let result = &reply["result"];
    assert_eq!(result["protocol"], 1);
    assert!(result["client"]
        .as_str()
        .unwrap()
        .starts_with(result["node"].as_str().unwrap()));
    assert_eq!(
        c.command("ping", json!({})).await,
        json!({"id": 2, "result": {}})
    );

    let reply = c
        .command("subscribe", json!({"channels": ["a", "b"]}))
        .await;
    assert_eq!(reply, json!({"id": 3, "result": {"channels": ["a", "b"]}}));

    let mut other = Client::connect(&node.ws("/ws")).await;
    for (channel, data) in [
        ("c", json!("not subscribed")),
        ("a", json!({"x": 1})),
        ("b", json!("text")),
    ] {
        let reply = other
            .command("publish", json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(reply["result"], json!({}), "{reply}");
    }
    assert_eq!(c.next_push().await, ("a".to_string(), json!({"x": 1})));
    assert_eq!(c.next_push().await, ("b".to_string(), json!("text")));

    c.command("unsubscribe", json!({"channel": "a"})).await;
    other
        .command("publish", json!({"channel": "a", "data": 1}))
        .await;
    other
        .command("publish", json!({"channel": "b", "data": 2}))
        .await;
    assert_eq!(
        c.next_push().await,
        ("b".to_string(), json!(2)),
        "a no longer delivered"
    );
}

#[tokio::test]
async fn binary_payloads_are_base64_and_plain_and_native_interoperate() {
    let node = TestNode::memory().await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.subscribe(&["channel"]).await;
    let mut plain = Client::connect(&node.ws("/")).await;
    plain.send_binary(&[0, 1, 2]).await;
    let push = native.next_json().await;
    assert_eq!(
        push,
        json!({"push": "message", "channel": "channel", "data": "AAEC", "encoding": "base64"})
    );
    plain.send_text("hi there").await;
    assert_eq!(native.next_push().await.1, json!("hi there"));
    native
        .command(
            "publish",
            json!({"channel": "channel", "data": "/wA=", "encoding": "base64"}),
        )
        .await;
    let _own_echo = plain.next_message().await;
    let _own_echo = plain.next_message().await;
    assert_eq!(
        plain.next_message().await,
        tokio_tungstenite::tungstenite::Message::binary(vec![0xff, 0x00])
    );
}

#[tokio::test]
async fn errors_for_bad_commands_and_the_connection_lives_on() {
    let node = TestNode::memory().await;
    let mut c = Client::connect(&node.ws("/ws")).await;
    let mut bystander = Client::connect(&node.ws("/ws")).await;
    bystander.subscribe(&["calm"]).await;

    let cases: Vec<(&str, Value)> = vec![
        (
            r#"{"id":11,"method":"connect","params":{"protocol":2}}"#,
            json!({"id": 11, "code": 110}),
        ),
        ("{not json", json!({"code": 101})),
        ("[1,2,3]", json!({"code": 101})),
        (r#"[5,"ping"]"#, json!({"code": 101})),
        (r#"{"id":-1,"method":"ping"}"#, json!({"code": 101})),
        (r#"{"id":1e300,"method":"ping"}"#, json!({"code": 101})),
        (
            r#"{"id":5,"method":"teleport"}"#,
            json!({"id": 5, "code": 102}),
        ),
        (
            r#"{"id":6,"method":"subscribe","params":{"channels":"x"}}"#,
            json!({"id": 6, "code": 101}),
        ),
        (
            r#"{"id":7,"method":"subscribe","params":{}}"#,
            json!({"id": 7, "code": 101}),
        ),
        (
            r#"{"id":8,"method":"subscribe","params":{"channel":"bad\u0001name"}}"#,
            json!({"id": 8, "code": 103}),
        ),
        (
            r##"{"id":9,"method":"subscribe","params":{"channel":"#user:1"}}"##,
            json!({"id": 9, "code": 105}),
        ),
        (
            r#"{"id":10,"method":"publish","params":{"channel":"a","data":1,"encoding":"base64"}}"#,
            json!({"id": 10, "code": 101}),
        ),
    ];
    for (frame, expected) in cases {
        c.send_text(frame).await;
        let reply = c.next_json().await;
        assert_eq!(
            reply["error"]["code"], expected["code"],
            "{frame} -> {reply}"
        );
        assert_eq!(reply.get("id"), expected.get("id"), "{frame} -> {reply}");
        assert!(reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let long = "x".repeat(10 * 1024);
    let reply = c.command("subscribe", json!({"channel": long})).await;
    assert_eq!(reply["error"]["code"], 103);

    // Still connected, and nobody else noticed.
    c.command("connect", json!({})).await;
    assert_eq!(c.command("connect", json!({})).await["error"]["code"], 104);
    c.command("publish", json!({"channel": "calm", "data": "still fine"}))
        .await;
    assert_eq!(bystander.next_push().await.1, json!("still fine"));
}

#[tokio::test]
async fn binary_frames_on_ws_are_refused_with_1003() {
    let node = TestNode::memory().await;
    let mut c = Client::connect(&node.ws("/ws")).await;
    c.send_binary(b"{}").await;
    assert_eq!(c.expect_close().await.code, 1003);
}

#[tokio::test]
async fn one_connection_holds_thousands_of_subscriptions() {
    let node = TestNode::start(duplex::config::Settings {
        max_subscriptions: Some(5000),
        ..settings()
    })
    .await;
    let mut c = Client::connect(&node.ws("/ws")).await;
    let channels: Vec<String> = (0..5000).map(|i| format!("ch{i}")).collect();
    for chunk in channels.chunks(1000) {
        let reply = c.command("subscribe", json!({"channels": chunk})).await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    assert_eq!(node.info().await["subscriptions"], 5000);
    let reply = c
        .command("subscribe", json!({"channel": "one-too-many"}))
        .await;
    assert_eq!(reply["error"]["code"], 106);
    // Re-subscribing is idempotent and does not count twice.
    let reply = c.command("subscribe", json!({"channel": "ch0"})).await;
    assert!(reply.get("result").is_some());
    let mut publisher = Client::connect(&node.ws("/ws")).await;
    publisher
        .command("publish", json!({"channel": "ch4999", "data": "last"}))
        .await;
    assert_eq!(c.next_push().await, ("ch4999".to_string(), json!("last")));
    c.close().await;
    support::eventually("subscriptions released", || async {
        node.info().await["subscriptions"] == 0
    })
    .await;
    assert_eq!(
        node.get_json("/api/channels").await.1["channels"],
        json!([])
    );
}

/// The `connect` reply says the node's `rpc_timeout` in ms, so a client can
/// wait a little longer than the node and get its 113, not time out first.
#[tokio::test]
async fn connect_reply_says_the_rpc_timeout() {
    for (setting, expected) in [(None, 10_000), (Some(300), 300)] {
        let node = TestNode::start(duplex::config::Settings {
            rpc_timeout: setting.map(std::time::Duration::from_millis),
            ..settings()
        })
        .await;
        let mut c = Client::connect(&node.ws("/ws")).await;
        let reply = c.command("connect", json!({})).await;
        assert_eq!(reply["result"]["rpc_timeout_ms"], expected, "{reply}");
    }
}
