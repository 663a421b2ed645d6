//! SIGHUP reloads the config without dropping connections (issue 15 #5:
//! it used to kill the node, exit 129, no 1001, no log line): what can be
//! reloaded is applied and logged, what needs a restart is named, and an
//! invalid new config leaves the node on the old one.

mod support;

use std::path::PathBuf;

use duplex::config::Settings;
use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};
use support::process::NodeProcess;

fn config_file(text: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("duplex-reload-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

async fn publish_with_key(node: &NodeProcess, key: &str) -> u16 {
    reqwest::Client::new()
        .post(node.http("/api/publish"))
        .header("authorization", format!("apikey {key}"))
        .json(&json!({"channel": "channel", "data": "hi"}))
        .send()
        .await
        .expect("POST")
        .status()
        .as_u16()
}

#[tokio::test]
async fn sighup_applies_the_new_config_and_keeps_connections() {
    let path = config_file("api_key = \"old-key\"\nmax_connections = 100\n");
    let mut node = NodeProcess::start_logged(&["--config", path.to_str().expect("path")]).await;
    let mut plain = Client::connect(&node.ws("/")).await;
    let mut second = Client::connect(&node.ws("/")).await;
    assert_eq!(publish_with_key(&node, "old-key").await, 200);
    assert_eq!(plain.next_text().await, "hi");
    assert_eq!(second.next_text().await, "hi");

    std::fs::write(
        &path,
        "api_key = \"new-key\"\nmax_connections = 2\nredis_prefix = \"later:\"\n",
    )
    .expect("rewrite config");
    node.signal("-HUP");
    support::eventually("the reload is logged", || async {
        node.log().contains("config reloaded")
    })
    .await;
    assert_eq!(node.exited(), None, "SIGHUP must not end the node");
    let log = node.log();
    assert!(log.contains("SIGHUP received"), "{log}");
    assert!(
        log.contains("api_key") && log.contains("max_connections"),
        "applied settings named: {log}"
    );
    assert!(
        log.contains("redis_prefix") && log.contains("only after a restart"),
        "settings needing a restart named: {log}"
    );

    // The new key works, the old one no longer does, and the connection
    // that was open all along still gets what is published.
    assert_eq!(publish_with_key(&node, "old-key").await, 401);
    assert_eq!(publish_with_key(&node, "new-key").await, 200);
    assert_eq!(plain.next_text().await, "hi");
    assert_eq!(second.next_text().await, "hi");
    // max_connections = 2, two open: a newcomer is refused.
    let (status, _) = support::client::refused(&node.ws("/")).await;
    assert_eq!(status, 503, "max_connections reloaded");

    // An invalid file: logged, the node keeps the config it runs with.
    std::fs::write(
        &path,
        "api_key = \"third-key\"\nmax_connections = \"lots\"\n",
    )
    .expect("rewrite config");
    node.signal("-HUP");
    support::eventually("the refusal is logged", || async {
        node.log().contains("reload refused")
    })
    .await;
    assert_eq!(node.exited(), None);
    assert_eq!(publish_with_key(&node, "third-key").await, 401);
    assert_eq!(publish_with_key(&node, "new-key").await, 200);
    assert_eq!(plain.next_text().await, "hi");
    assert_eq!(second.next_text().await, "hi");
    let _ = std::fs::remove_file(&path);
}

/// A rotated TLS certificate (new files at the same paths, as certbot
/// leaves them) is served to new connections after a reload; open ones
/// carry on.
#[tokio::test]
async fn a_reload_serves_a_rotated_certificate() {
    let dir = std::env::temp_dir().join(format!("duplex-reload-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let write_new = || {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        std::fs::write(&cert, generated.cert.pem()).expect("cert");
        std::fs::write(&key, generated.signing_key.serialize_pem()).expect("key");
        generated.cert.der().clone()
    };
    let first = write_new();
    let tls = Settings {
        tls_cert: Some(cert.display().to_string()),
        tls_key: Some(key.display().to_string()),
        ..settings()
    };
    let node = TestNode::start(tls.clone()).await;
    let trusting = |der: &[u8]| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_der(der).expect("cert"))
            .https_only(true)
            .build()
            .expect("https client")
    };
    let health = format!("https://localhost:{}/health", node.addr.port());
    let old_client = trusting(&first);
    assert_eq!(
        old_client
            .get(&health)
            .send()
            .await
            .expect("https")
            .status(),
        200
    );

    let second = write_new();
    let new_client = trusting(&second);
    assert!(
        new_client.get(&health).send().await.is_err(),
        "still the first certificate"
    );
    node.reload(tls).await;
    support::eventually("the rotated certificate is served", || async {
        // A fresh client each time: no pooled connection from before.
        trusting(&second).get(&health).send().await.is_ok()
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
