//! `exclude` on `/api/publish` and `/api/broadcast`: a backend publishing
//! on a client's behalf skips that client (Pusher's `socket_id`, Laravel's
//! `toOthers()`), on whichever node it is; a Redis-only backend does the
//! same with an `#exclude:<node>` notice (docs/API.md).

mod support;

use duplex::config::Settings;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::redis_server::RedisServer;

/// A native client subscribed to `chat`; returns it and its connection id.
async fn member(node: &TestNode) -> (Client, String) {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("connect", json!({})).await;
    let id = reply["result"]["client"]
        .as_str()
        .unwrap_or_else(|| panic!("connect reply names the connection: {reply}"))
        .to_string();
    client.subscribe(&["chat"]).await;
    (client, id)
}

async fn publish(node: &TestNode, body: Value) {
    let (status, reply) = node.post_json("/api/publish", &body).await;
    assert_eq!(status, 200, "{reply}");
}

/// The excluded client's next message is the one published after the
/// excluded one: it never saw the excluded one, and everyone else did.
async fn only_others_get_it(
    excluded: &mut Client,
    others: &mut [&mut Client],
    then: impl std::future::Future<Output = ()>,
) {
    for other in others.iter_mut() {
        assert_eq!(other.next_push().await.1, json!("for the others"));
    }
    then.await;
    assert_eq!(excluded.next_push().await.1, json!("for everyone"));
}

#[tokio::test]
async fn one_node_skips_the_excluded_connection() {
    let node = TestNode::memory().await;
    let (mut sender, sender_id) = member(&node).await;
    let (mut other, _) = member(&node).await;
    publish(
        &node,
        json!({"channel": "chat", "data": "for the others", "exclude": sender_id}),
    )
    .await;
    only_others_get_it(&mut sender, &mut [&mut other], async {
        publish(&node, json!({"channel": "chat", "data": "for everyone"})).await;
    })
    .await;
    assert_eq!(other.next_push().await.1, json!("for everyone"));

    // /api/broadcast takes it too.
    let (status, reply) = node
        .post_json(
            "/api/broadcast",
            &json!({"channels": ["chat", "other"], "data": "for the others", "exclude": sender_id}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    only_others_get_it(&mut sender, &mut [&mut other], async {
        publish(&node, json!({"channel": "chat", "data": "for everyone"})).await;
    })
    .await;

    for bad in [json!("nodot"), json!("n.x"), json!(5)] {
        let (status, reply) = node
            .post_json(
                "/api/publish",
                &json!({"channel": "chat", "data": "x", "exclude": bad}),
            )
            .await;
        assert_eq!(status, 400, "exclude {bad}: {reply}");
    }
}

#[tokio::test]
async fn the_excluded_connection_is_skipped_on_whichever_node_holds_it() {
    let redis = RedisServer::start();
    let on = |id: &str| Settings {
        node_id: Some(id.into()),
        ..settings()
    };
    let a = TestNode::on_redis(&redis.url(), on("na")).await;
    let b = TestNode::on_redis(&redis.url(), on("nb")).await;
    let (mut sender, sender_id) = member(&a).await;
    let (mut near, _) = member(&a).await;
    let (mut far, _) = member(&b).await;
    assert!(sender_id.starts_with("na."), "{sender_id}");

    // Published through node b, for a client of node a.
    publish(
        &b,
        json!({"channel": "chat", "data": "for the others", "exclude": sender_id}),
    )
    .await;
    only_others_get_it(&mut sender, &mut [&mut near, &mut far], async {
        publish(&b, json!({"channel": "chat", "data": "for everyone"})).await;
    })
    .await;

    // Through node a, for its own client (the message still goes through Redis).
    publish(
        &a,
        json!({"channel": "chat", "data": "for the others", "exclude": sender_id}),
    )
    .await;
    for c in [&mut near, &mut far] {
        assert_eq!(c.next_push().await.1, json!("for everyone"));
    }
    only_others_get_it(&mut sender, &mut [&mut near, &mut far], async {
        publish(&a, json!({"channel": "chat", "data": "for everyone"})).await;
    })
    .await;

    // A Redis-only backend: the notice, then the message, in one transaction.
    let mut conn = redis.connection().await;
    let notice = json!({"connection": sender_id, "channel": "chat", "data": "for the others"});
    let _: () = redis::pipe()
        .atomic()
        .cmd("PUBLISH")
        .arg("#exclude:na")
        .arg(notice.to_string())
        .ignore()
        .cmd("PUBLISH")
        .arg("chat")
        .arg("for the others")
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("MULTI/EXEC");
    for c in [&mut near, &mut far] {
        assert_eq!(c.next_push().await.1, json!("for everyone"));
    }
    only_others_get_it(&mut sender, &mut [&mut near, &mut far], async {
        publish(&a, json!({"channel": "chat", "data": "for everyone"})).await;
    })
    .await;
}
