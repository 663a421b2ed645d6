//! The HTTP API: publish, broadcast, channels, info, health, keys, limits.

mod support;

use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};

#[tokio::test]
async fn publish_broadcast_channels_info_health() {
    let node = TestNode::memory().await;
    let mut a = Client::connect(&node.ws("/?channel=a")).await;
    let mut b = Client::connect(&node.ws("/ws")).await;
    b.subscribe(&["b"]).await;

    let (status, body) = node
        .post_json(
            "/api/broadcast",
            &json!({"channels": ["a", "b"], "data": {"k": [1, 2]}}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"ok": true, "channels": 2})));
    assert_eq!(a.next_text().await, r#"{"k":[1,2]}"#);
    assert_eq!(b.next_push().await, ("b".to_string(), json!({"k": [1, 2]})));

    let (status, body) = node.get_json("/api/channels").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["channels"],
        json!([{"name": "a", "subscribers": 1}, {"name": "b", "subscribers": 1}])
    );

    let info = node.info().await;
    assert_eq!(info["connections"], 2);
    assert_eq!(info["subscriptions"], 2);
    assert_eq!(info["broker"]["kind"], "memory");
    assert_eq!(info["stats"]["deliveries"], 2);
    assert!(info["node"].as_str().is_some_and(|n| !n.is_empty()));

    let (status, body) = node.get_json("/health").await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let node = TestNode::start(duplex::config::Settings {
        max_http_body: Some(1024),
        ..settings()
    })
    .await;
    let http = reqwest::Client::new();
    let post = |body: String, content_type: &'static str| {
        http.post(node.http("/api/publish"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases = [
        (
            post("{bad".into(), "application/json").await.unwrap(),
            400,
            "bad_json",
        ),
        (
            post("[1]".into(), "application/json").await.unwrap(),
            400,
            "bad_request",
        ),
        (
            post(r#"{"channel":5,"data":1}"#.into(), "application/json")
                .await
                .unwrap(),
            400,
            "bad_request",
        ),
        (
            post(r#"{"channel":"a"}"#.into(), "application/json")
                .await
                .unwrap(),
            400,
            "bad_request",
        ),
        (
            post(r#"{"channel":"a b","data":1}"#.into(), "application/json")
                .await
                .unwrap(),
            400,
            "invalid_channel",
        ),
        (
            post(
                format!(r#"{{"channel":"{}","data":1}}"#, "x".repeat(300)),
                "application/json",
            )
            .await
            .unwrap(),
            400,
            "invalid_channel",
        ),
        (
            post(r#"{"channel":"a","data":1}"#.into(), "text/plain")
                .await
                .unwrap(),
            415,
            "unsupported_media_type",
        ),
        (
            post(
                format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(2000)),
                "application/json",
            )
            .await
            .unwrap(),
            413,
            "body_too_large",
        ),
    ];
    for (response, status, code) in cases {
        assert_eq!(response.status().as_u16(), status);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (status, body) = node.get_json("/api/nope").await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
}

#[tokio::test]
async fn api_key_is_required_when_set() {
    let node = TestNode::start(duplex::config::Settings {
        // Two keys at once, so one can be rotated out.
        api_key: Some("old-key,s3cret".into()),
        ..settings()
    })
    .await;
    let http = reqwest::Client::new();
    let body = json!({"channel": "a", "data": 1});
    let without = http
        .post(node.http("/api/publish"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
    let wrong = http
        .post(node.http("/api/publish"))
        .header("Authorization", "apikey nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = http
        .post(node.http("/api/publish"))
        .header("Authorization", "apikey s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let old = http
        .post(node.http("/api/publish"))
        .header("Authorization", "apikey old-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 200);
    let info = http.get(node.http("/api/info")).send().await.unwrap();
    assert_eq!(info.status(), 401);
    // Health stays open for load balancers.
    assert_eq!(node.health().await, 200);
}

#[tokio::test]
async fn the_javascript_client_is_served_by_the_node() {
    let node = TestNode::memory().await;
    let response = reqwest::get(node.http("/duplex.js")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let body = response.text().await.unwrap();
    assert_eq!(body, include_str!("../../../clients/js/duplex.js"));
    assert!(
        body.contains("export class Duplex"),
        "an ES module exporting Duplex"
    );
}
