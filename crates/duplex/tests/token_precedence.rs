//! Where a plain client's token comes from and what counts as expired
//! (issue 14, finding 8d), over real sockets: an empty `?token=` does not
//! hide a `Sec-WebSocket-Protocol: token.<jwt>`; an offered `token.` entry is
//! always echoed (tungstenite, like browsers, fails the handshake otherwise);
//! two different tokens are refused with 3500 and a reason; fractional
//! `exp`/`nbf`/`iat` (RFC 7519 NumericDate) are accepted, and a fractional
//! `exp` ends the connection like a whole one.

mod support;

use std::time::Duration;

use duplex::config::Settings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Response;

const SECRET: &str = "test-secret-of-decent-length";

/// Unix seconds with the fraction, as a backend's JWT library may write them.
fn unix_now_precise() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn sign(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn user(sub: &str) -> String {
    sign(json!({"sub": sub, "exp": unix_now_precise() + 600.0}))
}

async fn secret_node(extra: Settings) -> TestNode {
    TestNode::start(Settings {
        token_secret: Some(SECRET.into()),
        ..extra
    })
    .await
}

/// A plain connection to `path` offering `protocols`; the handshake must
/// succeed (the offered `token.` entry echoed); returns the client and the
/// echoed protocol.
async fn plain_with_protocols(node: &TestNode, path: &str, protocols: &str) -> (Client, String) {
    let mut request = node.ws(path).into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse().expect("header"));
    let (ws, response): (_, Response<Option<Vec<u8>>>) = tokio_tungstenite::connect_async(request)
        .await
        .expect("handshake succeeds, the protocol echoed");
    let echoed = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (Client::from_ws(ws), echoed)
}

/// Publishes to user 42's channel and expects `client` (a plain one) to get it.
async fn reaches_user_42(node: &TestNode, client: &mut Client, text: &str) {
    let (status, body) = node
        .post_json(
            "/api/publish",
            &json!({"channel": "#user:42", "data": text}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client.next_text().await, text);
}

#[tokio::test]
async fn an_empty_query_token_does_not_hide_the_protocol_token() {
    let node = secret_node(settings()).await;
    let offered = format!("token.{}", user("42"));
    let (mut client, echoed) = plain_with_protocols(&node, "/?token=", &offered).await;
    assert_eq!(echoed, offered);
    reaches_user_42(&node, &mut client, "hello 42").await;
}

#[tokio::test]
async fn the_same_token_in_both_places_is_accepted_and_echoed() {
    let node = secret_node(settings()).await;
    let token = user("42");
    let offered = format!("chat, token.{token}");
    let (mut client, echoed) =
        plain_with_protocols(&node, &format!("/?token={token}"), &offered).await;
    assert_eq!(echoed, format!("token.{token}"));
    reaches_user_42(&node, &mut client, "both").await;
}

#[tokio::test]
async fn two_different_tokens_are_refused_with_a_reason() {
    let node = secret_node(settings()).await;
    // Both valid, for different users: the node picks neither.
    let offered = format!("token.{}", user("7"));
    let (mut client, echoed) =
        plain_with_protocols(&node, &format!("/?token={}", user("42")), &offered).await;
    assert_eq!(echoed, offered, "echoed, so that a browser sees the close");
    let closed = client.expect_close().await;
    assert_eq!(closed.code, 3500, "{closed:?}");
    assert!(closed.reason.contains("two different tokens"), "{closed:?}");
    assert_eq!(node.info().await["stats"]["auth_denials"], 1);
    // Without token auth tokens are ignored, conflicting or not: the demo stays as it was.
    let open = TestNode::memory().await;
    let (mut client, echoed) = plain_with_protocols(&open, "/?token=a", "token.b").await;
    assert_eq!(echoed, "token.b");
    open.post_json(
        "/api/publish",
        &json!({"channel": "channel", "data": "demo"}),
    )
    .await;
    assert_eq!(client.next_text().await, "demo");
}

#[tokio::test]
async fn fractional_times_are_accepted_and_reported_as_given() {
    let node = secret_node(settings()).await;
    let now = unix_now_precise();
    let exp = (now + 600.0).floor() + 0.5;
    let token = sign(json!({"sub": "42", "exp": exp, "nbf": now - 0.5, "iat": now - 0.25}));
    // Native: the connect result reports the token's exp as it is.
    let mut native = Client::connect(&node.ws("/ws")).await;
    let reply = native.command("connect", json!({"token": token})).await;
    assert_eq!(reply["result"]["user"], "42", "{reply}");
    assert_eq!(reply["result"]["expires"].as_f64(), Some(exp), "{reply}");
    let reply = native.command("refresh", json!({"token": token})).await;
    assert_eq!(reply["result"]["expires"].as_f64(), Some(exp), "{reply}");
    // Whole seconds stay integers in the reply.
    let whole = sign(json!({"sub": "42", "exp": 4102444800u64}));
    let reply = native.command("refresh", json!({"token": whole})).await;
    assert_eq!(reply["result"]["expires"], json!(4102444800u64), "{reply}");
    // Plain, by query and by protocol.
    let mut plain = Client::connect(&node.ws(&format!("/?token={token}"))).await;
    let (mut by_protocol, _) = plain_with_protocols(&node, "/", &format!("token.{token}")).await;
    reaches_user_42(&node, &mut plain, "fractional").await;
    assert_eq!(by_protocol.next_text().await, "fractional");

    // A fractional exp just past: expired (111 on /ws, 3006 in plain mode).
    let lapsed = sign(json!({"sub": "42", "exp": unix_now_precise() - 0.5}));
    let reply = native.command("connect", json!({"token": lapsed})).await;
    assert_eq!(reply["error"]["code"], 104, "already connected: {reply}");
    let mut fresh = Client::connect(&node.ws("/ws")).await;
    let reply = fresh.command("connect", json!({"token": lapsed})).await;
    assert_eq!(reply["error"]["code"], 111, "{reply}");
    let mut plain = Client::connect(&node.ws(&format!("/?token={lapsed}"))).await;
    assert_eq!(plain.expect_close().await.code, 3006);
}

#[tokio::test]
async fn a_fractional_exp_ends_the_connection_like_a_whole_one() {
    let node = secret_node(Settings {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Some(Duration::from_millis(5000)),
        ..settings()
    })
    .await;
    let token = sign(json!({"sub": "9", "exp": unix_now_precise() + 1.25}));
    let mut native = Client::connect(&node.ws("/ws")).await;
    let reply = native.command("connect", json!({"token": token})).await;
    assert_eq!(reply["result"]["user"], "9", "{reply}");
    let (mut plain, _) = plain_with_protocols(&node, "/?token=", &format!("token.{token}")).await;
    assert_eq!(native.expect_close().await.code, 3006);
    assert_eq!(plain.expect_close().await.code, 3006);
    assert_eq!(node.info().await["stats"]["token_expirations"], 2);
}

/// Issue 15 #4: a connection closed with 3006 at exp+0.06 s and the same
/// token accepted on reconnect at exp+0.06 s (connect compared whole
/// seconds, the sweep fractions). One rule now: once the sweep has closed a
/// connection for its token, that token is refused at connect, on /ws and
/// in plain mode.
#[tokio::test]
async fn a_token_that_ended_a_connection_is_refused_on_reconnect() {
    let node = secret_node(Settings {
        ping_interval: Some(Duration::from_millis(20)),
        pong_timeout: Some(Duration::from_millis(5000)),
        ..settings()
    })
    .await;
    // A whole-second exp, as most backends mint them, about a second away.
    let exp = unix_now_precise().floor() + 1.0;
    let token = sign(json!({"sub": "7", "exp": exp as u64}));
    let mut native = Client::connect(&node.ws("/ws")).await;
    let reply = native.command("connect", json!({"token": token})).await;
    assert_eq!(reply["result"]["user"], "7", "{reply}");
    assert_eq!(native.expect_close().await.code, 3006);
    // At once, within the same second as the close.
    let mut again = Client::connect(&node.ws("/ws")).await;
    let reply = again.command("connect", json!({"token": token})).await;
    assert_eq!(
        reply["error"]["code"], 111,
        "accepted again after 3006: {reply}"
    );
    let mut plain = Client::connect(&node.ws(&format!("/?token={token}"))).await;
    assert_eq!(plain.expect_close().await.code, 3006);
}
