//! The web console's server side: the page at `/` (without an upgrade) and
//! `/console`, the bounded channel list it polls, and the watch tokens it
//! asks for. The page itself is exercised in Chromium by clients/browser.

mod support;

use duplex::config::Settings;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};

const SECRET: &str = "console-test-secret";
const KEY: &str = "console-test-key";

async fn post_with_key(
    node: &TestNode,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(node.http(path)).json(body);
    if let Some(key) = key {
        request = request.header("authorization", format!("apikey {key}"));
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_page_is_served_at_root_and_console_while_root_upgrades_stay_plain_clients() {
    let node = TestNode::memory().await;
    for path in ["/", "/console"] {
        let response = reqwest::get(node.http(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["x-frame-options"], "DENY");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        let html = response.text().await.unwrap();
        assert!(html.contains("<title>Duplex console</title>"));
        assert!(html.contains("/console/console.js"));
    }
    for (path, content_type) in [
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/favicon.ico", "image/svg+xml"),
    ] {
        let response = reqwest::get(node.http(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type);
    }
    // A WebSocket at `/` is still the classic demo's plain client.
    let mut plain = Client::connect(&node.ws("/")).await;
    node.post_json("/api/publish", &json!({"channel": "channel", "data": "hi"}))
        .await;
    assert_eq!(plain.next_text().await, "hi");
}

#[tokio::test]
async fn channels_limit_lists_the_largest_channels_and_counts_them_all() {
    let node = TestNode::memory().await;
    let mut clients = Vec::new();
    for (channel, n) in [("small", 1), ("big", 3), ("mid", 2), ("also-small", 1)] {
        for _ in 0..n {
            clients.push(Client::connect(&node.ws(&format!("/?channel={channel}"))).await);
        }
    }
    let (status, body) = node.get_json("/api/channels?limit=3").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 4);
    assert_eq!(
        body["channels"],
        json!([
            {"name": "big", "subscribers": 3},
            {"name": "mid", "subscribers": 2},
            {"name": "also-small", "subscribers": 1},
        ])
    );
    // Without a limit: every channel, by name, as before.
    let (_, body) = node.get_json("/api/channels").await;
    assert_eq!(body["total"], 4);
    assert_eq!(body["channels"][0]["name"], "also-small");
    assert_eq!(body["channels"].as_array().unwrap().len(), 4);
    for bad in ["0", "1001", "lots"] {
        let (status, body) = node.get_json(&format!("/api/channels?limit={bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(body["error"]["message"].as_str().unwrap().contains("limit"));
    }
}

#[tokio::test]
async fn without_tokens_the_console_watches_like_any_client() {
    let node = TestNode::memory().await;
    let (status, body) = node
        .post_json("/api/console/token", &json!({"channel": "news"}))
        .await;
    assert_eq!((status, body), (200, json!({"token": null})));
}

#[tokio::test]
async fn a_watch_token_needs_the_api_key_and_subscribes_its_one_channel() {
    let node = TestNode::start(Settings {
        token_secret: Some(SECRET.into()),
        api_key: Some(KEY.into()),
        ..settings()
    })
    .await;
    let body = json!({"channel": "#user:42"});
    let (status, reply) = post_with_key(&node, "/api/console/token", None, &body).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, reply) = post_with_key(&node, "/api/console/token", Some(KEY), &body).await;
    assert_eq!(status, 200, "{reply}");
    let token = reply["token"].as_str().unwrap();
    let expires = reply["expires"].as_u64().unwrap();
    let now = duplex::auth::unix_now();
    assert!((now + 200..=now + 301).contains(&expires), "{expires}");

    // The token opens /ws as an anonymous connection subscribed to exactly
    // that channel, even a reserved one no client could subscribe to.
    let mut watcher = Client::connect(&node.ws("/ws")).await;
    let reply = watcher.command("connect", json!({"token": token})).await;
    assert_eq!(reply["result"]["channels"], json!(["#user:42"]), "{reply}");
    assert_eq!(reply["result"]["expires"], expires);
    assert_eq!(
        reply["result"]
            .get("user")
            .and_then(Value::as_str)
            .unwrap_or(""),
        ""
    );
    let (status, _) = post_with_key(
        &node,
        "/api/publish",
        Some(KEY),
        &json!({"channel": "#user:42", "data": {"hello": 42}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        watcher.next_push().await,
        ("#user:42".to_string(), json!({"hello": 42}))
    );
    // The console's client refreshes with a fresh watch token (same empty `sub`).
    let (_, fresh) = post_with_key(&node, "/api/console/token", Some(KEY), &body).await;
    let reply = watcher
        .command("refresh", json!({"token": fresh["token"]}))
        .await;
    assert_eq!(reply["result"]["expires"], fresh["expires"], "{reply}");
    // The node's own order channels are not for watching.
    for channel in ["#control", "#node:x"] {
        let (status, reply) = post_with_key(
            &node,
            "/api/console/token",
            Some(KEY),
            &json!({"channel": channel}),
        )
        .await;
        assert_eq!(
            (status, &reply["error"]["code"]),
            (400, &json!("invalid_channel")),
            "{channel}"
        );
    }
    let (status, reply) = post_with_key(
        &node,
        "/api/console/token",
        Some(KEY),
        &json!({"channel": ""}),
    )
    .await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (400, &json!("invalid_channel"))
    );
}

#[tokio::test]
async fn watch_tokens_carry_the_required_audience_and_issuer() {
    let node = TestNode::start(Settings {
        token_secret: Some(SECRET.into()),
        token_audience: Some("chat".into()),
        token_issuer: Some("https://auth.example".into()),
        ..settings()
    })
    .await;
    let (status, reply) = node
        .post_json("/api/console/token", &json!({"channel": "news"}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let mut watcher = Client::connect(&node.ws("/ws")).await;
    let reply = watcher
        .command("connect", json!({"token": reply["token"]}))
        .await;
    assert_eq!(reply["result"]["channels"], json!(["news"]), "{reply}");
}

#[tokio::test]
async fn a_node_with_only_a_public_key_cannot_mint_and_says_so() {
    let node = TestNode::start(Settings {
        token_public_key: Some(format!(
            "{}/tests/fixtures/rsa_public.pem",
            env!("CARGO_MANIFEST_DIR")
        )),
        ..settings()
    })
    .await;
    let (status, reply) = node
        .post_json("/api/console/token", &json!({"channel": "news"}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(reply["error"]["code"], "cannot_mint");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("token_secret"));
}

async fn access_with_key(node: &TestNode, key: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(node.http("/console/access"));
    if let Some(key) = key {
        request = request.header("authorization", format!("apikey {key}"));
    }
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The page learns whether it must ask for a key, and checks a typed one,
/// from answers that are all 200: a 401 would show as an error in the
/// browser's console before the login form.
#[tokio::test]
async fn console_access_says_whether_a_key_is_needed_and_works_always_with_200() {
    let open = TestNode::memory().await;
    assert_eq!(
        access_with_key(&open, None).await,
        (
            200,
            json!({"api_key_required": false, "api_key_accepted": true})
        )
    );
    let locked = TestNode::start(Settings {
        api_key: Some(format!("old-key, {KEY}").as_str().into()),
        ..settings()
    })
    .await;
    for (key, accepted) in [
        (None, false),
        (Some("wrong"), false),
        (Some(KEY), true),
        (Some("old-key"), true),
    ] {
        assert_eq!(
            access_with_key(&locked, key).await,
            (
                200,
                json!({"api_key_required": true, "api_key_accepted": accepted})
            ),
            "{key:?}"
        );
    }
    // /api itself still refuses without the key.
    let (status, _) = post_with_key(&locked, "/api/publish", None, &json!({})).await;
    assert_eq!(status, 401);
}
