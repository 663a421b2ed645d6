//! Shutdown waits for what the node started (issue 16): once
//! `server::run` returns, no task of the node is left on its runtime, after
//! a run that started every kind of background task (heartbeats on Redis,
//! the rpc sweep, the HTTP upstream driver, connection queries, an
//! unsubscribe order, a reload, the ingest stream's consumer).

mod support;

use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use duplex::config::Settings;
use serde_json::{json, Value};
use support::client::Client;
use support::node::settings;
use support::redis_server::RedisServer;

#[test]
fn no_task_outlives_server_run() {
    let node_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("node runtime");
    let test_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("test runtime");
    let redis = RedisServer::start();
    let backend = test_runtime.block_on(async {
        let app = Router::new().route(
            "/calls",
            post(|Json(call): Json<Value>| async move { Json(json!({"echo": call["data"]})) }),
        );
        support::serve_http(app, "/calls").await
    });
    let settings = Settings {
        redis: Some(redis.url()),
        upstream_url: Some(backend),
        node_heartbeat: Some(Duration::from_millis(100)),
        ingest_stream: Some("duplex:ingest".into()),
        ..settings()
    };
    let config = settings.clone().resolve().expect("config");
    let listener = node_runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (reload, reloads) = tokio::sync::mpsc::channel(1);
    let server = node_runtime.spawn(duplex::server::run_reloading(
        listener,
        config.clone(),
        async {
            let _ = stopped.await;
        },
        reloads,
    ));

    test_runtime.block_on(async {
        let http = |path: &str| format!("http://{addr}{path}");
        support::eventually("the node is up on Redis", || async {
            reqwest::get(http("/health"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
        client.subscribe(&["news"]).await;
        let reply = client
            .command("rpc", json!({"method": "echo", "data": 1}))
            .await;
        assert_eq!(reply["result"]["data"]["echo"], 1, "{reply}");
        let (status, _) = support::post_json(
            &http("/api/unsubscribe"),
            &json!({"user": "", "channel": "news"}),
        )
        .await;
        assert!(status == 200 || status == 400, "{status}");
        let connections: Value = reqwest::get(http("/api/connections"))
            .await
            .expect("GET")
            .json()
            .await
            .expect("json");
        assert!(connections["connections"].is_array(), "{connections}");
        reload.send(config).await.expect("reload");
        let _ = stop.send(());
    });
    node_runtime
        .block_on(server)
        .expect("join")
        .expect("server::run");

    // Tasks aborted by dropping their handles (redis-rs connection drivers)
    // are reaped a moment later: wait for that, with a generous deadline.
    let metrics = node_runtime.metrics();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.num_alive_tasks() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        0,
        "tasks of the node still alive after server::run returned"
    );
}
