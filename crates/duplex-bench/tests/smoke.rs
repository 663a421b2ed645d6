//! Smoke test of the load generator: a Duplex node in this process (memory
//! broker), the `duplex-bench` binary against it with a tiny fan-out, for
//! plain and native clients, publishing over HTTP and over WebSocket.
//! Checks the accounting (nothing lost, every delivery counted), not speed.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

/// Starts a node on a free port; stops when the sender is dropped.
async fn start_node() -> (SocketAddr, oneshot::Sender<()>) {
    start_node_with(Default::default()).await
}

/// [`start_node`] with settings of the test's own.
async fn start_node_with(settings: duplex::config::Settings) -> (SocketAddr, oneshot::Sender<()>) {
    let config = duplex::config::Settings {
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..settings
    }
    .resolve()
    .expect("valid settings");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        duplex::server::run(listener, config, async {
            let _ = stopped.await;
        })
        .await
        .expect("node runs");
    });
    (addr, stop)
}

async fn bench(args: &[&str]) -> Value {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex-bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run duplex-bench");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("duplex-bench finished in time")
        .expect("duplex-bench output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "duplex-bench {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_fanout_loses_nothing() {
    let (addr, _stop) = start_node().await;
    let server = format!("ws://{addr}");
    let pid = std::process::id().to_string();
    for protocol in ["plain", "native"] {
        for via in ["http", "ws"] {
            let args = [
                "fanout",
                "--server",
                &server,
                "--protocol",
                protocol,
                "--via",
                via,
                "--subscribers",
                "20",
                "--rate",
                "50",
                "--duration",
                "1s",
                "--warmup",
                "200ms",
                "--server-pid",
                &pid,
                "--json",
            ];
            let r = bench(&args).await;
            let what = format!("{protocol} via {via}: {r}");
            assert_eq!(r["connected"], 20, "{what}");
            assert_eq!(r["error_count"], 0, "{what}");
            let published = r["published"].as_u64().expect("published");
            assert!((40..=51).contains(&published), "{what}");
            assert_eq!(r["expected"].as_u64(), Some(published * 20), "{what}");
            assert_eq!(r["received"], r["expected"], "{what}");
            assert_eq!(r["lost"], 0, "{what}");
            assert_eq!(r["drain"], "complete", "{what}");
            assert_eq!(r["duplicates"], 0, "{what}");
            assert_eq!(r["reordered"], 0, "{what}");
            assert!(r["latency_us"]["p50"].as_u64().expect("p50") > 0, "{what}");
            assert!(r["server_cpu_s"].is_number(), "{what}");
            assert!(r["server_rss_kib"].as_u64().expect("rss") > 0, "{what}");
        }
    }
}

/// `--stalled`: clients that never read are cut by the node with its
/// slow-consumer code, the generator finds that code when it reads them
/// after the run, and the readers on the same channel lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_readers_get_everything() {
    let (addr, _stop) = start_node_with(duplex::config::Settings {
        max_queued_bytes: Some(64 * 1024),
        ..Default::default()
    })
    .await;
    let server = format!("ws://{addr}");
    let args = [
        "fanout",
        "--server",
        &server,
        "--subscribers",
        "5",
        "--stalled",
        "3",
        "--size",
        "16000",
        "--rate",
        "200",
        "--duration",
        "2s",
        "--warmup",
        "200ms",
        "--json",
    ];
    let r = bench(&args).await;
    let stalled = &r["stalled"];
    assert_eq!(stalled["connected"], 3, "{r}");
    assert_eq!(stalled["cut"], 3, "{r}");
    assert_eq!(stalled["open"], 0, "{r}");
    // The node's close frame sits behind the stalled stream; once its 2 s
    // close timeout passes, the node drops the connection and the client
    // finds only the end of the stream (PROTOCOL.md, section 5).
    let endings = stalled["endings"].as_object().expect("endings");
    assert!(
        endings
            .keys()
            .all(|k| k.contains("3001 slow consumer") || k == "EOF without a close frame"),
        "{r}"
    );
    let info = reqwest::get(format!("http://{addr}/api/info"))
        .await
        .expect("GET /api/info")
        .text()
        .await
        .expect("info body");
    let info: Value = serde_json::from_str(&info).expect("info is JSON");
    assert_eq!(info["stats"]["slow_consumer_disconnects"], 3, "{info}");
    assert!(stalled["messages"].as_u64().expect("messages") > 0, "{r}");
    assert_eq!(r["connected"], 5, "{r}");
    assert_eq!(r["error_count"], 0, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["received"], r["expected"], "{r}");
    assert!(
        r["kernel_tcp_peak_kib"].as_u64().expect("tcp mem") > 0,
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_channels_and_idle() {
    let (addr, _stop) = start_node().await;
    let server = format!("ws://{addr}");
    let r = bench(&[
        "channels",
        "--server",
        &server,
        "--protocol",
        "native",
        "--clients",
        "30",
        "--rate",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--json",
    ])
    .await;
    assert_eq!(r["connected"], 30, "{r}");
    assert_eq!(r["channels"], 30, "{r}");
    assert!(r["published"].as_u64().expect("published") >= 80, "{r}");
    // Each publish goes to one channel with one subscriber.
    assert_eq!(r["expected"], r["published"], "{r}");
    assert_eq!(r["received"], r["expected"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["error_count"], 0, "{r}");

    let pid = std::process::id().to_string();
    let r = bench(&[
        "idle",
        "--server",
        &server,
        "--connections",
        "50",
        "--hold",
        "200ms",
        "--server-pid",
        &pid,
        "--json",
    ])
    .await;
    assert_eq!(r["established"], 50, "{r}");
    assert_eq!(r["alive_after_hold"], 50, "{r}");
    assert!(r["connect_rate"].as_f64().expect("rate") > 0.0, "{r}");
    assert!(r["server_rss_per_connection_kib"].is_number(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_reported_not_panics() {
    // A port nobody listens on: bind one, learn it, close it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex-bench"))
        .args([
            "idle",
            "--server",
            &format!("ws://{addr}"),
            "--connections",
            "5",
            "--hold",
            "0s",
            "--json",
        ])
        .output()
        .await
        .expect("run duplex-bench");
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(r["failed"], 5, "{r}");
    assert_eq!(r["error_count"], 5, "{r}");
    let errors = r["errors"].as_object().expect("errors");
    assert!(
        errors.keys().any(|k| k.contains("refused")),
        "errors name the cause: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_churn_checks_every_subscription() {
    let (addr, _stop) = start_node().await;
    let server = format!("ws://{addr}");
    let r = bench(&[
        "churn",
        "--server",
        &server,
        "--clients",
        "30",
        "--channels",
        "5",
        "--rate",
        "100",
        // Lives and subscriptions longer than the 2 s tail grace, so
        // some messages are expected.
        "--duration",
        "6s",
        "--min-life",
        "2500ms",
        "--max-life",
        "4s",
        "--flip-every",
        "3s",
        "--drain",
        "500ms",
        "--json",
    ])
    .await;
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    let check = |k: &str| {
        r["check"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {r}"))
    };
    // Clients came and went: more connects than the population.
    assert!(n("connects") > 30, "{r}");
    assert_eq!(n("connect_failures"), 0, "{r}");
    assert_eq!(n("dropped_by_server"), 0, "{r}");
    assert!(n("closes_graceful") + n("closes_abrupt") > 0, "{r}");
    assert!(n("unsubscribes") > 0, "{r}");
    assert_eq!(n("clients_left"), 0, "{r}");
    assert!(n("published") > 200, "{r}");
    assert_eq!(n("publish_refused"), 0, "{r}");
    assert!(check("expected") > 0, "{r}");
    assert_eq!(check("lost"), 0, "{r}");
    assert_eq!(n("duplicates"), 0, "{r}");
    // No outage: nothing counted apart.
    assert_eq!(check("outage_expected"), 0, "{r}");
}
