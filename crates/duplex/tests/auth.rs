//! Connection tokens: every rule with its positive and negative case, over
//! real sockets, as a client sees them (error codes, close codes).

mod support;

use std::time::Duration;

use duplex::auth::unix_now;
use duplex::config::Settings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use support::raw::Raw;

const SECRET: &str = "test-secret-of-decent-length";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
}

fn hs256(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims,
    )
}

fn user(sub: &str) -> String {
    hs256(json!({"sub": sub, "exp": unix_now() + 600}))
}

async fn node_with(extra: Settings) -> TestNode {
    TestNode::start(Settings {
        token_secret: Some(SECRET.into()),
        ..extra
    })
    .await
}

async fn secret_node() -> TestNode {
    node_with(settings()).await
}

/// A native client that has sent `connect` with `token`; returns it and the reply.
async fn connect(node: &TestNode, token: &str) -> (Client, Value) {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("connect", json!({"token": token})).await;
    (client, reply)
}

/// Sends `connect` with `token` and expects the `disconnect` push, then the close.
async fn assert_closed_with(node: &TestNode, token: &str, code: u16, what: &str) {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let command = json!({"id": 1, "method": "connect", "params": {"token": token}});
    client.send_text(&command.to_string()).await;
    let push = client.next_json().await;
    assert_eq!(
        (&push["push"], &push["code"], &push["reconnect"]),
        (&json!("disconnect"), &json!(code), &json!(code < 3500)),
        "{what}: {push}"
    );
    assert_eq!(client.expect_close().await.code, code, "{what}");
}

#[tokio::test]
async fn native_connect_with_a_valid_token_names_the_user() {
    let node = secret_node().await;
    let token = hs256(json!({"sub": "42", "exp": unix_now() + 600, "channels": ["news"]}));
    let (mut client, reply) = connect(&node, &token).await;
    assert_eq!(reply["result"]["user"], "42", "{reply}");
    // The token's channels, and the user's own channel, joined by itself.
    assert_eq!(reply["result"]["channels"], json!(["news", "#user:42"]));
    assert!(reply["result"]["expires"].as_u64().unwrap() > unix_now());
    // Subscribed by the token: messages arrive without a subscribe.
    node.post_json("/api/publish", &json!({"channel": "news", "data": "hi"}))
        .await;
    assert_eq!(client.next_push().await, ("news".to_string(), json!("hi")));
}

#[tokio::test]
async fn native_commands_need_a_connect_with_a_token_first() {
    let node = secret_node().await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client
        .command("subscribe", json!({"channel": "news"}))
        .await;
    assert_eq!(reply["error"]["code"], 112, "{reply}");
    let reply = client.command("connect", json!({})).await;
    assert_eq!(reply["error"]["code"], 112, "{reply}");
    // Still open: a good token now works.
    let reply = client.command("connect", json!({"token": user("7")})).await;
    assert_eq!(reply["result"]["user"], "7", "{reply}");
    client.subscribe(&["news"]).await;
}

#[tokio::test]
async fn bad_tokens_close_with_3500_and_expired_ones_get_111() {
    let node = secret_node().await;
    let cases = [
        (
            "bad signature",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another secret"),
                &json!({"sub": "1"}),
            ),
        ),
        (
            "alg none",
            // Header {"alg":"none"} and an empty signature.
            format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                base64_url(br#"{"sub":"1"}"#)
            ),
        ),
        ("garbage", "not-a-token".to_string()),
        (
            "not valid yet",
            hs256(json!({"sub": "1", "nbf": unix_now() + 3600})),
        ),
        (
            "RS256 when only a secret is configured",
            sign(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).unwrap())
                    .unwrap(),
                &json!({"sub": "1"}),
            ),
        ),
    ];
    for (what, token) in cases {
        assert_closed_with(&node, &token, 3500, what).await;
    }
    let expired = hs256(json!({"sub": "1", "exp": unix_now() - 10}));
    let (mut client, reply) = connect(&node, &expired).await;
    assert_eq!(reply["error"]["code"], 111, "{reply}");
    // The client fetches a fresh token and tries again on the same connection.
    let reply = client.command("connect", json!({"token": user("1")})).await;
    assert_eq!(reply["result"]["user"], "1", "{reply}");
    let denials = node.info().await["stats"]["auth_denials"].as_u64().unwrap();
    assert_eq!(denials, 6);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn public_keys_verify_rs256_and_es256_and_refuse_hs_confusion() {
    for (public, private, alg) in [
        ("rsa_public.pem", "rsa_private.pem", Algorithm::RS256),
        ("ec_public.pem", "ec_private.pem", Algorithm::ES256),
    ] {
        let node = TestNode::start(Settings {
            token_public_key: Some(fixture(public)),
            ..settings()
        })
        .await;
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .unwrap();
        let token = sign(alg, &key, &json!({"sub": "alice", "exp": unix_now() + 60}));
        let (_client, reply) = connect(&node, &token).await;
        assert_eq!(reply["result"]["user"], "alice", "{alg:?}: {reply}");
        // The public key used as an HMAC secret: the classic confusion attack.
        let public_pem = std::fs::read(fixture(public)).unwrap();
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public_pem),
            &json!({"sub": "admin"}),
        );
        assert_closed_with(&node, &forged, 3500, "HS256 signed with the public key").await;
    }
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let node = node_with(Settings {
        token_audience: Some("chat".into()),
        token_issuer: Some("https://backend".into()),
        ..settings()
    })
    .await;
    let exp = unix_now() + 60;
    let good = hs256(json!({"sub": "1", "exp": exp, "aud": "chat", "iss": "https://backend"}));
    let (_client, reply) = connect(&node, &good).await;
    assert_eq!(reply["result"]["user"], "1", "{reply}");
    for (what, claims) in [
        (
            "wrong audience",
            json!({"sub": "1", "aud": "billing", "iss": "https://backend"}),
        ),
        ("no audience", json!({"sub": "1", "iss": "https://backend"})),
        (
            "wrong issuer",
            json!({"sub": "1", "aud": "chat", "iss": "https://evil"}),
        ),
    ] {
        assert_closed_with(&node, &hs256(claims), 3500, what).await;
    }
}

#[tokio::test]
async fn refresh_keeps_a_connection_past_its_first_expiry() {
    let node = node_with(Settings {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Some(Duration::from_millis(5000)),
        ..settings()
    })
    .await;
    // Two seconds: both connects land before it expires, even on a busy machine.
    let short = hs256(json!({"sub": "9", "exp": unix_now() + 2}));
    let (mut refreshed, reply) = connect(&node, &short).await;
    assert_eq!(reply["result"]["user"], "9", "{reply}");
    let (mut lapsed, reply) = connect(&node, &short).await;
    assert_eq!(reply["result"]["user"], "9", "{reply}");
    let reply = refreshed
        .command("refresh", json!({"token": user("9")}))
        .await;
    assert!(
        reply["result"]["expires"].as_u64().unwrap() > unix_now() + 60,
        "{reply}"
    );
    // The one that did not refresh is closed when its token runs out...
    assert_eq!(lapsed.expect_close().await.code, 3006);
    // ...the refreshed one lives on.
    refreshed.subscribe(&["news"]).await;
    assert_eq!(node.info().await["stats"]["token_expirations"], 1);
    // A refresh for someone else is an invalid token.
    let refresh = json!({"id": 99, "method": "refresh", "params": {"token": user("10")}});
    refreshed.send_text(&refresh.to_string()).await;
    assert_eq!(refreshed.expect_close().await.code, 3500);
}

#[tokio::test]
async fn plain_clients_present_tokens_in_the_query_or_the_protocol_header() {
    let node = secret_node().await;
    let mut by_query = Client::connect(&node.ws(&format!("/?token={}", user("1")))).await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            node.ws("/"),
        )
        .unwrap();
    let offered = format!("token.{}", user("2"));
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", offered.parse().unwrap());
    // tungstenite fails the handshake unless the server echoes the protocol.
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connects");
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        offered.as_str()
    );
    let mut by_protocol = Client::from_ws(ws);
    node.post_json("/api/publish", &json!({"channel": "channel", "data": "hi"}))
        .await;
    assert_eq!(by_query.next_text().await, "hi");
    assert_eq!(by_protocol.next_text().await, "hi");

    // Refused tokens: the upgrade succeeds (browsers see close codes, not
    // statuses), then the close code says what to do; nothing is delivered.
    let expired = hs256(json!({"sub": "1", "exp": unix_now() - 1}));
    for (query, code) in [
        ("/".to_string(), 3500),
        ("/?token=forged".to_string(), 3500),
        (format!("/?token={expired}"), 3006),
    ] {
        let mut raw = Raw::connect(node.addr, &query).await;
        assert_eq!(raw.close_code().await, code, "{query}");
    }
    assert_eq!(node.info().await["connections"], 2);
}

#[tokio::test]
async fn user_channels_belong_to_their_user() {
    let node = node_with(Settings {
        allow_anonymous: Some(true),
        ..settings()
    })
    .await;
    let (mut alice, _) = connect(&node, &user("alice")).await;
    alice.subscribe(&["#user:alice"]).await;
    let reply = alice
        .command("subscribe", json!({"channel": "#user:bob"}))
        .await;
    assert_eq!(reply["error"]["code"], 105, "{reply}");
    let reply = alice
        .command("publish", json!({"channel": "#user:alice", "data": 1}))
        .await;
    assert_eq!(
        reply["error"]["code"], 105,
        "clients never publish there: {reply}"
    );
    // Anonymous clients own no user channel.
    let mut anonymous = Client::connect(&node.ws("/ws")).await;
    let reply = anonymous
        .command("subscribe", json!({"channel": "#user:"}))
        .await;
    assert_eq!(reply["error"]["code"], 105, "{reply}");
    // Plain: the own channel via ?channel=, another user's refused at the upgrade.
    let mut plain =
        Client::connect(&node.ws(&format!("/?channel=%23user:alice&token={}", user("alice"))))
            .await;
    let refused = tokio_tungstenite::connect_async(
        node.ws(&format!("/?channel=%23user:bob&token={}", user("alice"))),
    )
    .await;
    assert!(refused.is_err(), "another user's channel is refused");
    // The backend reaches every connection of the user.
    node.post_json(
        "/api/publish",
        &json!({"channel": "#user:alice", "data": "for alice"}),
    )
    .await;
    assert_eq!(
        alice.next_push().await,
        ("#user:alice".to_string(), json!("for alice"))
    );
    assert_eq!(plain.next_text().await, "for alice");
}

async fn upgrade_with_origin(url: &str, origin: &str) -> Result<(), (u16, String)> {
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("ws URL");
    request
        .headers_mut()
        .insert("Origin", origin.parse().expect("header value"));
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string(),
        )),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn foreign_origins_cannot_open_websockets() {
    let node = TestNode::memory().await;
    let own = format!("http://{}", node.addr);
    for path in ["/", "/ws"] {
        let url = node.ws(path);
        assert_eq!(upgrade_with_origin(&url, &own).await, Ok(()));
        // Listening on loopback is development: local pages (a dev server) may connect.
        assert_eq!(
            upgrade_with_origin(&url, "http://localhost:5173").await,
            Ok(())
        );
        let (status, body) = upgrade_with_origin(&url, "https://evil.example")
            .await
            .unwrap_err();
        assert_eq!(status, 403);
        assert!(body.contains("allowed_origins"), "{body}");
    }
    let listed = TestNode::start(Settings {
        allowed_origins: Some("https://app.example".into()),
        ..settings()
    })
    .await;
    let url = listed.ws("/");
    assert_eq!(
        upgrade_with_origin(&url, "https://app.example").await,
        Ok(())
    );
    let refused = upgrade_with_origin(&url, "http://localhost:5173").await;
    assert_eq!(refused.map_err(|e| e.0), Err(403));
}

/// A JWKS endpoint the test controls: serves whatever set is current.
async fn jwks_server(
    set: std::sync::Arc<parking_lot::Mutex<Value>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let set = std::sync::Arc::clone(&set);
            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { axum::Json(set.lock().clone()) }
        }),
    );
    support::serve_http(app, "/jwks.json").await
}

fn jwk(private_pem: &str, alg: Algorithm, kid: &str) -> (EncodingKey, Value) {
    let pem = std::fs::read(fixture(private_pem)).expect("fixture");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("key");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).expect("jwk");
    jwk.common.key_id = Some(kid.to_string());
    (key, serde_json::to_value(jwk).expect("jwk json"))
}

fn sign_kid(alg: Algorithm, key: &EncodingKey, kid: &str, sub: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": unix_now() + 60}), key).expect("sign")
}

#[tokio::test]
async fn jwks_keys_are_fetched_and_rotated_in_the_background() {
    let (rsa, rsa_jwk) = jwk("rsa_private.pem", Algorithm::RS256, "k1");
    let (ec, ec_jwk) = jwk("ec_private.pem", Algorithm::ES256, "k2");
    let set = std::sync::Arc::new(parking_lot::Mutex::new(json!({"keys": [rsa_jwk]})));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = jwks_server(std::sync::Arc::clone(&set), std::sync::Arc::clone(&fetches)).await;
    let node = TestNode::start(Settings {
        token_jwks_url: Some(url),
        token_jwks_refresh: Some(Duration::from_millis(100)),
        ..settings()
    })
    .await;
    let first = sign_kid(Algorithm::RS256, &rsa, "k1", "alice");
    let (_c, reply) = connect(&node, &first).await;
    assert_eq!(reply["result"]["user"], "alice", "{reply}");
    let rotated = sign_kid(Algorithm::ES256, &ec, "k2", "bob");
    assert_closed_with(&node, &rotated, 3500, "k2 before rotation").await;
    // The identity provider rotates: k2 in, k1 out.
    *set.lock() = json!({"keys": [ec_jwk]});
    support::eventually("rotated key accepted", || async {
        accepted_user(&node, &rotated).await.as_deref() == Some("bob")
    })
    .await;
    assert_closed_with(&node, &first, 3500, "k1 after rotation").await;
    // A JWKS that turns into garbage keeps the last good keys.
    *set.lock() = json!({"not": "a jwks"});
    let served = fetches.load(std::sync::atomic::Ordering::SeqCst);
    support::eventually("garbage fetched twice", || async {
        fetches.load(std::sync::atomic::Ordering::SeqCst) >= served + 2
    })
    .await;
    let (_c, reply) = connect(&node, &rotated).await;
    assert_eq!(reply["result"]["user"], "bob", "{reply}");
}

/// The user a `connect` with `token` gets, or None if the node refuses it.
async fn accepted_user(node: &TestNode, token: &str) -> Option<String> {
    let mut client = Client::connect(&node.ws("/ws")).await;
    let command = json!({"id": 1, "method": "connect", "params": {"token": token}});
    client.send_text(&command.to_string()).await;
    match client.next_message().await {
        tokio_tungstenite::tungstenite::Message::Text(text) => {
            let reply: Value = serde_json::from_str(&text).ok()?;
            reply["result"]["user"].as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// Secrets and tokens never reach the log, even at the most verbose level.
#[tokio::test]
async fn secrets_and_tokens_never_reach_the_log() {
    let node = support::process::NodeProcess::start_logged(&[
        "--token-secret",
        SECRET,
        "--api-key",
        "api-key-in-logs?",
        "--log-level",
        "trace",
    ])
    .await;
    let token = user("7");
    let plain = Client::connect(&node.ws(&format!("/?token={token}"))).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    let reply = native.command("connect", json!({"token": token})).await;
    assert_eq!(reply["result"]["user"], "7", "{reply}");
    // Refused ones too: a forged token, a wrong API key.
    let forged = format!("{token}x");
    let mut refused = Raw::connect(node.addr, &format!("/?token={forged}")).await;
    assert_eq!(refused.close_code().await, 3500);
    let wrong_key = reqwest::Client::new()
        .get(node.http("/api/info"))
        .header("Authorization", "apikey wrong-key-in-logs")
        .send()
        .await
        .expect("GET");
    assert_eq!(wrong_key.status(), 401);
    let info = reqwest::Client::new()
        .get(node.http("/api/info"))
        .header("Authorization", "apikey api-key-in-logs?")
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    plain.close().await;
    native.close().await;
    node.terminate();
    let log = node.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "verbose log captured: {log}"
    );
    for secret in [
        SECRET,
        "api-key-in-logs",
        "wrong-key-in-logs",
        &token,
        &forged,
    ] {
        assert!(!log.contains(secret), "{secret:?} in the log");
        assert!(!info.contains(secret), "{secret:?} in /api/info");
    }
    // The signature part alone must not leak either.
    let signature = token.rsplit('.').next().expect("jwt");
    assert!(!log.contains(signature));
}
