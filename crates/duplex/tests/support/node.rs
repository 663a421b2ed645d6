//! A Duplex node running in the test process on a free port.

use std::net::SocketAddr;

use duplex::config::{Config, Settings};
use serde_json::Value;
use tokio::sync::oneshot;

/// A running node; shut down gracefully by [`TestNode::stop`] or on drop.
pub struct TestNode {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// New configs for the running node, as SIGHUP hands them over.
    reloads: tokio::sync::mpsc::Sender<Config>,
}

/// Settings for tests: fast heartbeats off, redis timeouts short.
pub fn settings() -> Settings {
    Settings {
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        redis_timeout: Some(std::time::Duration::from_secs(2)),
        redis_max_backoff: Some(std::time::Duration::from_millis(200)),
        redis_health_interval: Some(std::time::Duration::from_secs(1)),
        shutdown_timeout: Some(std::time::Duration::from_secs(3)),
        ..Default::default()
    }
}

impl TestNode {
    /// A node on the memory broker with default settings.
    pub async fn memory() -> Self {
        Self::start(settings()).await
    }

    /// A node on the given Redis, once it is connected to it.
    pub async fn redis(url: &str) -> Self {
        Self::on_redis(url, Settings::default()).await
    }

    /// A node on the given Redis with `extra` settings (the rest as
    /// [`settings`]), once it is connected to it.
    pub async fn on_redis(url: &str, extra: Settings) -> Self {
        let node = Self::start(Settings {
            redis: Some(url.to_string()),
            ..extra.or(settings())
        })
        .await;
        super::eventually("node connected to redis", || async {
            node.health().await == 200
        })
        .await;
        node
    }

    /// A counter from `/api/info`'s `stats`.
    pub async fn stat(&self, name: &str) -> u64 {
        self.info().await["stats"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no stat {name}"))
    }

    /// A node with explicit settings (listen is forced to a free port).
    pub async fn start(settings: Settings) -> Self {
        let config: Config = settings.resolve().expect("valid test settings");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let (reloads, new_configs) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            duplex::server::run_reloading(listener, config, stopped, new_configs)
                .await
                .expect("node runs");
        });
        TestNode {
            addr,
            stop: Some(stop),
            task: Some(task),
            reloads,
        }
    }

    /// Hands the running node a new config, as SIGHUP does (applied in
    /// the background: wait for its effect).
    pub async fn reload(&self, settings: Settings) {
        let config = settings.resolve().expect("valid test settings");
        self.reloads.send(config).await.expect("node takes reloads");
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts graceful shutdown and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("node task");
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(self.http(path)).await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        super::post_json(&self.http(path), body).await
    }

    pub async fn info(&self) -> Value {
        self.get_json("/api/info").await.1
    }

    pub async fn health(&self) -> u16 {
        match reqwest::get(self.http("/health")).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
