//! Two deployments on one Redis under different `redis_prefix`es (issue 14,
//! finding 1): no client of one reaches the other's reserved channels
//! (`#control`, `#node:<id>`, `#user:<id>`, `#conn:<id>`) by any name, in
//! either order of the prefixes; the other deployment's user sees no forged
//! message and is not disconnected; its heartbeats never reach the first
//! deployment's clients. Backends still reach their own users through Redis.

mod support;

use std::time::Duration;

use duplex::auth::unix_now;
use duplex::config::Settings;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::redis_server::RedisServer;

const SECRET: &str = "test-secret-of-decent-length";
const API_KEY: &str = "victim-api-key";

fn token(sub: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": unix_now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// The victim's reserved channels, as its own clients and backends name them.
fn reserved(victim_id: &str, conn: &str) -> Vec<String> {
    vec![
        "#control".to_string(),
        format!("#node:{victim_id}"),
        "#user:42".to_string(),
        format!("#conn:{conn}"),
    ]
}

/// Every name with which a client of the attacker's deployment could hope to
/// reach one of the victim's reserved Redis channels: the reserved name
/// itself, the victim's full Redis channel, that channel without the
/// attacker's prefix (when the attacker's prefix starts it: `""` vs `"dx:"`,
/// `"a"` vs `"ab"`), and the attacker's own prefix doubled.
fn hostile_names(attacker: &str, victim: &str, reserved: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    for r in reserved {
        let redis_channel = format!("{victim}{r}");
        names.push(r.clone());
        names.push(redis_channel.clone());
        if let Some(rest) = redis_channel.strip_prefix(attacker) {
            names.push(rest.to_string());
        }
        names.push(format!("{attacker}{r}"));
    }
    names.sort();
    names.dedup();
    names
}

/// A node on Redis with these settings, once it is connected.
async fn started(settings: Settings) -> TestNode {
    let node = TestNode::start(settings).await;
    support::eventually("node connected to redis", || async {
        node.health().await == 200
    })
    .await;
    node
}

fn api_error(response: &Value) -> &str {
    response["error"]["code"].as_str().unwrap_or_default()
}

/// Runs the whole attack from a client of a node with prefix `attacker`
/// against a token-and-API-key node with prefix `victim`, both on one Redis.
async fn isolation(attacker: &str, victim: &str) {
    let redis = RedisServer::start();
    let attacker_node = started(Settings {
        redis: Some(redis.url()),
        redis_prefix: Some(attacker.into()),
        node_id: Some("r1".into()),
        ..settings()
    })
    .await;
    let victim_node = started(Settings {
        redis: Some(redis.url()),
        redis_prefix: Some(victim.into()),
        node_id: Some("p1".into()),
        token_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        node_heartbeat: Some(Duration::from_millis(100)),
        ..settings()
    })
    .await;

    // The victim: user 42, native and plain, on the prefixed node.
    let mut native42 = Client::connect(&victim_node.ws("/ws")).await;
    let reply = native42
        .command("connect", json!({"token": token("42")}))
        .await;
    let conn42 = reply["result"]["client"]
        .as_str()
        .expect("connected")
        .to_string();
    assert_eq!(reply["result"]["node"], "p1", "{reply}");
    let mut plain42 = Client::connect(&victim_node.ws(&format!("/?token={}", token("42")))).await;

    // Watch the victim's order channel from Redis, as a backend could, to
    // know that its heartbeats are being published during the attack.
    let mut watcher = redis::Client::open(redis.url())
        .expect("url")
        .get_async_pubsub()
        .await
        .expect("pubsub");
    watcher
        .subscribe(format!("{victim}#control"))
        .await
        .expect("subscribe");

    // The attacker: an anonymous native client, a plain one, the open API.
    let mut hostile = Client::connect(&attacker_node.ws("/ws")).await;
    let reply = hostile.command("connect", json!({})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    hostile.subscribe(&["news"]).await;

    let forged = [
        json!({"op": "disconnect", "user": "42", "code": 4001, "reason": "forged"}),
        json!({"op": "disconnect", "connection": conn42, "code": 4001, "reason": "forged"}),
        json!({"op": "send", "connection": conn42, "data": "forged"}),
        json!({"op": "send", "user": "42", "data": "forged"}),
        json!("forged"),
    ];
    // Every attempt is made before anything is asserted, so that without
    // the rule the victim's side shows what the attempts did to it.
    let names = hostile_names(attacker, victim, &reserved("p1", &conn42));
    let mut wrong = Vec::new();
    for name in &names {
        // Reserved names are the attacker's own deployment's: 105; any name
        // with '#' inside is no channel at all: 103.
        let expected = json!(if name.starts_with('#') { 105 } else { 103 });
        let reply = hostile.command("subscribe", json!({"channel": name})).await;
        if reply["error"]["code"] != expected {
            wrong.push(format!("subscribe {name}: {reply}"));
        }
        for data in &forged {
            let reply = hostile
                .command("publish", json!({"channel": name, "data": data}))
                .await;
            if reply["error"]["code"] != expected {
                wrong.push(format!("publish {name}: {reply}"));
            }
        }
        // Plain mode: refused at the upgrade.
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("channel", name)
            .finish();
        match tokio_tungstenite::connect_async(attacker_node.ws(&format!("/?{query}"))).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == 400 => {}
            other => wrong.push(format!("plain {name}: {:?}", other.map(|_| ()))),
        }
        // The attacker's open HTTP API refuses the non-reserved ones too
        // (reserved names there are its own deployment's, for its backends).
        if !name.starts_with('#') {
            let (status, body) = attacker_node
                .post_json("/api/publish", &json!({"channel": name, "data": forged[0]}))
                .await;
            if (status, api_error(&body)) != (400, "invalid_channel") {
                wrong.push(format!("API {name}: {status} {body}"));
            }
        }
    }

    // The victim's user saw nothing forged and is still connected: the
    // first thing both its connections receive is what its backend sends
    // with a plain Redis PUBLISH to its user channel.
    let receivers = redis
        .publish(&format!("{victim}#user:42"), br#"{"from":"backend"}"#)
        .await;
    assert_eq!(
        native42.next_json().await,
        json!({"push": "message", "channel": "#user:42", "data": {"from": "backend"}})
    );
    assert_eq!(plain42.next_text().await, r#"{"from":"backend"}"#);
    assert_eq!(
        receivers, 1,
        "only the victim's node listens on {victim}#user:42"
    );

    // Meanwhile the victim's node kept announcing itself on its #control.
    let heard = tokio::time::timeout(support::WAIT, async {
        loop {
            let msg = watcher.on_message().next().await.expect("pubsub open");
            let payload: String = msg.get_payload().unwrap_or_default();
            if payload.contains("\"alive\"") && payload.contains("p1") {
                return payload;
            }
        }
    })
    .await
    .expect("the victim's heartbeat within the wait");
    assert!(heard.contains("p1"));

    // The attacker's client saw none of it: its next message is the marker
    // published on its own channel, no heartbeat, order or user message.
    redis
        .publish(&format!("{attacker}news"), br#"{"marker":1}"#)
        .await;
    assert_eq!(
        hostile.next_json().await,
        json!({"push": "message", "channel": "news", "data": {"marker": 1}})
    );
    assert!(wrong.is_empty(), "accepted:\n{}", wrong.join("\n"));

    // The classic demo still works on the attacker's node, prefix and all.
    let mut demo = Client::connect(&attacker_node.ws("/")).await;
    redis
        .publish(&format!("{attacker}channel"), b"data from PHP")
        .await;
    assert_eq!(demo.next_text().await, "data from PHP");
}

#[tokio::test]
async fn no_prefix_cannot_reach_a_prefixed_deployment() {
    isolation("", "dx:").await;
}

#[tokio::test]
async fn a_prefixed_deployment_cannot_reach_one_without_prefix() {
    isolation("dx:", "").await;
}

#[tokio::test]
async fn a_shorter_prefix_cannot_reach_a_longer_one() {
    isolation("a", "ab").await;
}

#[tokio::test]
async fn a_longer_prefix_cannot_reach_a_shorter_one() {
    isolation("ab", "a").await;
}

/// A prefix with '#' would put a reserved-looking '#' before the real one:
/// the node refuses to start with it, and says why.
#[tokio::test]
async fn a_prefix_with_a_hash_is_refused_at_start() {
    let err = Settings {
        redis: Some("redis://127.0.0.1:1".into()),
        redis_prefix: Some("dx#".into()),
        ..settings()
    }
    .resolve()
    .unwrap_err()
    .to_string();
    assert!(err.contains("redis_prefix") && err.contains("'#'"), "{err}");
}

/// The operator's part (docs/AUTH.md) is checked for them: a node whose
/// prefix overlaps a live deployment's on the same Redis says so at start.
#[tokio::test]
async fn an_overlapping_prefix_is_warned_about_at_start() {
    let redis = RedisServer::start();
    let _first =
        support::process::NodeProcess::start(&["--redis", &redis.url(), "--redis-prefix", "a"])
            .await;
    let apart = support::process::NodeProcess::start_logged(&[
        "--redis",
        &redis.url(),
        "--redis-prefix",
        "z:",
    ])
    .await;
    let second = support::process::NodeProcess::start_logged(&[
        "--redis",
        &redis.url(),
        "--redis-prefix",
        "ab",
    ])
    .await;
    support::eventually("the overlap is logged", || async {
        second.log().contains(
            r#"redis_prefix "ab" overlaps the prefix of other deployments on this Redis ("a")"#,
        )
    })
    .await;
    assert!(!apart.log().contains("overlaps"), "{}", apart.log());
}
