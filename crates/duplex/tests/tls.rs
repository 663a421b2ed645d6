//! TLS: `--tls-cert` / `--tls-key` serve `wss://` and `https://`. Each test
//! makes a self-signed certificate for localhost / 127.0.0.1 and connects
//! with clients that trust exactly that certificate.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex::config::Settings;
use serde_json::{json, Value};
use support::client::Client;
use support::node::{settings, TestNode};
use tokio::io::AsyncReadExt;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::{Connector, MaybeTlsStream};

/// A self-signed certificate and its key, written as PEM files.
struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "duplex-tls-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn self_signed() -> Certs {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("self-signed certificate");
    let dir = temp_dir();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
    Certs {
        dir,
        cert,
        key,
        der: generated.cert.der().clone(),
    }
}

fn tls_settings(certs: &Certs) -> Settings {
    Settings {
        tls_cert: Some(certs.cert.display().to_string()),
        tls_key: Some(certs.key.display().to_string()),
        ..settings()
    }
}

/// A rustls client config trusting only `certs`, offering ALPN http/1.1.
fn client_config(certs: &Certs) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(certs.der.clone())
        .expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn connect_wss(node: &TestNode, certs: &Certs, path: &str) -> Client {
    let url = format!("wss://127.0.0.1:{}{path}", node.addr.port());
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(Connector::Rustls(client_config(certs))),
    )
    .await
    .expect("wss connects");
    if let MaybeTlsStream::Rustls(tls) = ws.get_ref() {
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    } else {
        panic!("wss:// connection is not TLS");
    }
    Client::from_ws(ws)
}

fn https(certs: &Certs) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&certs.der).expect("cert"))
        .https_only(true)
        .build()
        .expect("https client")
}

async fn publish_https(node: &TestNode, certs: &Certs, channel: &str, data: Value) {
    let url = format!("https://localhost:{}/api/publish", node.addr.port());
    let response = https(certs)
        .post(url)
        .json(&json!({"channel": channel, "data": data}))
        .send()
        .await
        .expect("POST over https");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn plain_mode_over_wss_receives_what_https_publishes() {
    let certs = self_signed();
    let node = TestNode::start(tls_settings(&certs)).await;
    let health = https(&certs)
        .get(format!("https://localhost:{}/health", node.addr.port()))
        .send()
        .await
        .expect("GET /health over https");
    assert_eq!(health.status(), 200);

    let mut client = connect_wss(&node, &certs, "/?channel=news").await;
    publish_https(&node, &certs, "news", json!("over tls")).await;
    assert_eq!(client.next_text().await, "over tls");
    publish_https(&node, &certs, "news", json!({"n": 2})).await;
    assert_eq!(client.next_json().await, json!({"n": 2}));
    client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn native_protocol_round_trip_over_wss() {
    let certs = self_signed();
    let node = TestNode::start(tls_settings(&certs)).await;
    let mut sub = connect_wss(&node, &certs, "/ws").await;
    let reply = sub
        .command("connect", json!({"name": "tls", "version": "1"}))
        .await;
    assert_eq!(reply["result"]["protocol"], 1, "{reply}");
    sub.subscribe(&["a"]).await;
    let mut publisher = connect_wss(&node, &certs, "/ws").await;
    for n in 0..100 {
        let reply = publisher
            .command("publish", json!({"channel": "a", "data": n}))
            .await;
        assert_eq!(reply["result"], json!({}), "{reply}");
    }
    for n in 0..100 {
        assert_eq!(sub.next_push().await, ("a".to_string(), json!(n)));
    }
    sub.close().await;
    publisher.close().await;
    node.stop().await;
}

#[tokio::test]
async fn large_messages_are_echoed_intact_over_wss() {
    let certs = self_signed();
    let node = TestNode::start(Settings {
        max_message_size: Some(2 * 1024 * 1024),
        max_queued_bytes: Some(8 * 1024 * 1024),
        ..tls_settings(&certs)
    })
    .await;
    let mut client = connect_wss(&node, &certs, "/?channel=big").await;
    let messages: Vec<String> = (0..3u8)
        .map(|i| {
            (0..1024 * 1024)
                .map(|j| char::from(b'a' + ((j / 7 + usize::from(i)) % 26) as u8))
                .collect()
        })
        .collect();
    for message in &messages {
        client.send_text(message).await;
    }
    for message in &messages {
        let echoed = client.next_text().await;
        assert_eq!(echoed.len(), message.len());
        assert!(echoed == *message, "1 MiB message came back altered");
    }
    client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_dropped_after_handshake_timeout() {
    let certs = self_signed();
    let node = TestNode::start(Settings {
        handshake_timeout: Some(Duration::from_millis(300)),
        ..tls_settings(&certs)
    })
    .await;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(support::WAIT, silent.read(&mut buf))
        .await
        .expect("the server closes the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Closed by the handshake timer (counted), not sooner: no upper bound
    // on a loaded machine beyond the read's generous deadline.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed after {elapsed:?}"
    );
    let info = info_tls(&node, &certs).await;
    assert_eq!(info["stats"]["handshake_timeouts"], 1, "{info}");
    node.stop().await;
}

#[tokio::test]
async fn plaintext_clients_fail_cleanly_without_disturbing_tls_clients() {
    let certs = self_signed();
    let node = TestNode::start(tls_settings(&certs)).await;
    let mut tls_client = connect_wss(&node, &certs, "/?channel=c").await;

    let plain = tokio::time::timeout(
        support::WAIT,
        tokio_tungstenite::connect_async(node.ws("/")),
    )
    .await
    .expect("a ws:// client gets an answer, not a hang");
    assert!(plain.is_err(), "ws:// against the TLS port must fail");
    let http = tokio::time::timeout(support::WAIT, reqwest::get(node.http("/health")))
        .await
        .expect("an http:// client gets an answer, not a hang");
    assert!(http.is_err(), "http:// against the TLS port must fail");

    publish_https(&node, &certs, "c", json!("still here")).await;
    assert_eq!(tls_client.next_text().await, "still here");
    assert_eq!(info_tls(&node, &certs).await["connections"], 1);
    tls_client.close().await;
    node.stop().await;
}

#[tokio::test]
async fn a_slow_tls_consumer_is_cut_and_others_carry_on() {
    let certs = self_signed();
    let node = TestNode::start(Settings {
        max_queued_bytes: Some(64 * 1024),
        max_publish_rate: Some(0),
        plain_echo: Some(false),
        ..tls_settings(&certs)
    })
    .await;
    let mut slow = connect_wss(&node, &certs, "/?channel=slow").await;
    let mut publisher = connect_wss(&node, &certs, "/?channel=slow").await;
    let chunk = "x".repeat(4096);
    let mut sent = 0;
    while info_tls(&node, &certs).await["stats"]["slow_consumer_disconnects"] == 0 {
        assert!(
            sent < 40_000,
            "160 MB later the reader that never reads is still served"
        );
        for _ in 0..500 {
            publisher.send_text(&chunk).await;
        }
        sent += 500;
    }
    // It gets what the sockets held, then the close frame, intact.
    let closed = slow.expect_close().await;
    assert_eq!(closed.code, 3001, "{closed:?}");
    publish_https(&node, &certs, "slow", json!("still serving")).await;
    assert_eq!(publisher.next_text().await, "still serving");
    publisher.close().await;
    node.stop().await;
}

#[tokio::test]
async fn shutdown_flushes_then_closes_wss_clients_with_1001() {
    let certs = self_signed();
    let node = TestNode::start(tls_settings(&certs)).await;
    let mut client = connect_wss(&node, &certs, "/?channel=c").await;
    for n in 0..10 {
        publish_https(&node, &certs, "c", json!(n)).await;
    }
    let stopping = tokio::spawn(node.stop());
    for n in 0..10 {
        assert_eq!(client.next_json().await, json!(n));
    }
    assert_eq!(client.expect_close().await.code, 1001);
    stopping.await.unwrap();
}

async fn info_tls(node: &TestNode, certs: &Certs) -> Value {
    https(certs)
        .get(format!("https://localhost:{}/api/info", node.addr.port()))
        .send()
        .await
        .expect("GET /api/info")
        .json()
        .await
        .expect("json")
}

fn serve(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run duplex");
    // A node that started despite bad files would run forever: stop it.
    let deadline = Instant::now() + support::WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unusable_tls_files_stop_serve_with_a_message_naming_the_file() {
    let certs = self_signed();
    let other = self_signed();
    let garbage = certs.dir.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let missing = certs.dir.join("missing.pem");
    let (cert, key) = (
        certs.cert.display().to_string(),
        certs.key.display().to_string(),
    );
    let (garbage, missing) = (garbage.display().to_string(), missing.display().to_string());
    let other_key = other.key.display().to_string();

    for (args, expected) in [
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            vec!["tls_cert", &missing],
        ),
        (
            vec!["--tls-cert", &garbage, "--tls-key", &key],
            vec!["tls_cert", &garbage],
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &missing],
            vec!["tls_key", &missing],
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &garbage],
            vec!["tls_key", &garbage],
        ),
        (
            // A key that is not the certificate's.
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            vec![&cert, &other_key],
        ),
        (vec!["--tls-cert", &cert], vec!["tls_key", "both"]),
    ] {
        let (ok, stderr) = serve(&args);
        assert!(!ok, "{args:?} must not start");
        for part in expected {
            assert!(stderr.contains(part), "{args:?}: {stderr}");
        }
    }
}
