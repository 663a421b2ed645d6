//! `examples/upstream/http_backend.{py,php}` behind a real node's
//! `upstream_url`, with `upstream_secret` set: they answer the node's signed
//! rpcs and sends, and refuse with 401 a request that is unsigned, signed
//! with another secret, or signed too long ago.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use duplex::config::Settings;
use serde_json::json;
use support::client::Client;
use support::examples::{has_library, php_server, python, Running};
use support::node::{settings, TestNode};

const SECRET: &str = "upstream-examples-secret";

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, as a node signs.
fn signature(secret: &str, t: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{t}.{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// POSTs `body` to the backend with `signature` (if any); the status.
async fn post(url: &str, body: &str, signature: Option<String>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(signature) = signature {
        request = request.header("Duplex-Signature", signature);
    }
    request.send().await.expect("POST").status().as_u16()
}

/// The Python example on a port of its choosing; its base URL.
async fn start_python() -> Option<(Running, String)> {
    let python = python();
    if !has_library(&python, &["-c", "pass"]).await {
        return None;
    }
    let path = support::examples::path("upstream/http_backend.py");
    let mut backend = Running::spawn(
        &python,
        &[&path, "0"],
        &[("DUPLEX_UPSTREAM_SECRET", SECRET)],
    );
    backend.wait_for_log("listening on ", 1).await;
    let log = backend.log();
    let url = log
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("its address")
        .to_string();
    Some((backend, url))
}

/// The PHP example under `php -S` as its router script; its base URL.
async fn start_php() -> Option<(Running, String)> {
    if !has_library("php", &["-r", "exit(0);"]).await {
        return None;
    }
    let path = support::examples::path("upstream/http_backend.php");
    Some(php_server(&[&path], &[("DUPLEX_UPSTREAM_SECRET", SECRET)]).await)
}

#[tokio::test]
async fn python_and_php_http_backends_answer_signed_calls_and_refuse_others() {
    let backends = [
        ("http_backend.py", start_python().await),
        ("http_backend.php", start_php().await),
    ];
    for (script, backend) in backends {
        let Some((backend, base)) = backend else {
            continue;
        };
        let url = format!("{base}/duplex");
        let node = TestNode::start(Settings {
            upstream_url: Some(url.clone()),
            upstream_secret: Some(format!("{SECRET},next-secret").as_str().into()),
            ..settings()
        })
        .await;
        let mut client = Client::connect(&node.ws("/ws")).await;
        let reply = client
            .command("rpc", json!({"method": "add", "data": {"a": 40, "b": 2}}))
            .await;
        assert_eq!(
            reply["result"]["data"],
            json!({"sum": 42}),
            "{script}: {reply}\n{}",
            backend.log()
        );
        let reply = client.command("rpc", json!({"method": "nope"})).await;
        assert_eq!(reply["error"]["code"], 4000, "{script}: {reply}");
        let reply = client.command("send", json!({"data": "hi"})).await;
        assert_eq!(reply["result"], json!({}), "{script}: {reply}");

        // Anyone else: refused, whatever the body.
        let body = json!({"kind": "rpc", "method": "add", "data": {"a": 1, "b": 1},
            "connection": "x.1", "user": "", "node": "x", "request": "1", "ts": 0})
        .to_string();
        assert_eq!(post(&url, &body, None).await, 401, "{script}: unsigned");
        let forged = signature("not-the-secret", now(), &body);
        assert_eq!(
            post(&url, &body, Some(forged)).await,
            401,
            "{script}: forged"
        );
        let stale = signature(SECRET, now() - 600, &body);
        assert_eq!(post(&url, &body, Some(stale)).await, 401, "{script}: stale");
        let other_body = signature(SECRET, now(), "{}");
        assert_eq!(
            post(&url, &body, Some(other_body)).await,
            401,
            "{script}: another body"
        );
        let good = signature(SECRET, now(), &body);
        assert_eq!(post(&url, &body, Some(good)).await, 200, "{script}: signed");
    }
}
