//! Test harness: real redis-server processes, real nodes on real sockets,
//! real WebSocket clients. Each test binary uses a different subset of these
//! helpers, hence the allow below.
#![allow(dead_code, unreachable_pub)]

pub mod client;
pub mod examples;
pub mod nats_server;
pub mod node;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod redis_cluster;
pub mod redis_server;
pub mod sentinel;
pub mod stream;

use std::time::Duration;

/// Upper bound for any single wait in tests; events normally arrive in ms.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` until it returns true, or panics after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POSTs JSON; the status and the JSON answer (Null when not JSON).
pub async fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// Serves `app` on a free loopback port (a backend written in the test);
/// returns `http://127.0.0.1:<port><path>`.
pub async fn serve_http(app: axum::Router, path: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}{path}")
}
