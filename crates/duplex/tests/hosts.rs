//! DNS rebinding: a page on `evil.example` that makes its name resolve to
//! 127.0.0.1 sends its requests to a loopback node with
//! `Host: evil.example:<port>` (and, for WebSocket upgrades, a matching
//! `Origin`). Every route refuses them with 421 `host_not_allowed`; the
//! loopback names a local page or tool uses still work; `allowed_hosts`
//! lists other names.

mod support;

use std::net::SocketAddr;

use duplex::config::Settings;
use serde_json::Value;
use support::node::{settings, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request of a route: method, path, JSON body (POST) or none.
struct Route {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    upgrade: bool,
}

const fn get(path: &'static str) -> Route {
    Route {
        method: "GET",
        path,
        body: None,
        upgrade: false,
    }
}

const fn post(path: &'static str, body: &'static str) -> Route {
    Route {
        method: "POST",
        path,
        body: Some(body),
        upgrade: false,
    }
}

const fn upgrade(path: &'static str) -> Route {
    Route {
        method: "GET",
        path,
        body: None,
        upgrade: true,
    }
}

/// Every route of `api::router`, plus unknown paths.
const ROUTES: &[Route] = &[
    upgrade("/"),
    upgrade("/ws"),
    get("/"),
    get("/ws"),
    get("/console"),
    get("/console/console.css"),
    get("/console/console.js"),
    get("/console/access"),
    get("/favicon.ico"),
    get("/duplex.js"),
    get("/health"),
    get("/metrics"),
    get("/api/info"),
    get("/api/channels"),
    get("/api/connections"),
    post("/api/publish", r#"{"channel":"news","data":"x"}"#),
    post("/api/broadcast", r#"{"channels":["news"],"data":"x"}"#),
    post("/api/disconnect", r#"{"connection":"n.1"}"#),
    post(
        "/api/unsubscribe",
        r#"{"connection":"n.1","channel":"news"}"#,
    ),
    post(
        "/api/reply",
        r#"{"connection":"n.1","request":"1","data":1}"#,
    ),
    post("/api/console/token", r##"{"channel":"#user:42"}"##),
    get("/api/nope"),
    get("/nope"),
];

/// The answer: status, head, body (up to the headers for a 101).
async fn send(addr: SocketAddr, request: String) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(support::WAIT, tcp.read(&mut chunk))
            .await
            .expect("answered within the wait")
            .unwrap_or(0);
        got.extend_from_slice(&chunk[..n]);
        if n == 0 || complete(&String::from_utf8_lossy(&got)) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, head.to_string(), body.to_string())
}

/// Whether `text` holds a whole answer: the head of a 101, or a head and
/// `Content-Length` bytes of body (refusals keep the connection open).
fn complete(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    head.starts_with("HTTP/1.1 101") || length.is_some_and(|n| body.len() >= n)
}

/// `route` sent with this `Host` header (None: no Host) and `Origin`.
async fn call(
    addr: SocketAddr,
    route: &Route,
    host: Option<&str>,
    origin: Option<&str>,
) -> (u16, String, String) {
    let mut request = format!("{} {} HTTP/1.1\r\nConnection: ", route.method, route.path);
    request.push_str(if route.upgrade {
        "Upgrade\r\n"
    } else {
        "close\r\n"
    });
    if let Some(host) = host {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    if route.upgrade {
        request.push_str("Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n");
    }
    match route.body {
        Some(body) => request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => request.push_str("\r\n"),
    }
    send(addr, request).await
}

fn assert_refused(answer: &(u16, String, String), what: &str) {
    let (status, _, body) = answer;
    assert_eq!(*status, 421, "{what}: {answer:?}");
    let json: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: {body}"));
    assert_eq!(json["error"]["code"], "host_not_allowed", "{what}: {body}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("allowed_hosts")),
        "{what}: {body}"
    );
}

/// A loopback node with token auth and no API key: the issue's set-up, where
/// `/api/console/token` mints tokens for anyone who can reach it.
async fn loopback_node(extra: Settings) -> TestNode {
    TestNode::start(Settings {
        token_secret: Some("rebinding-test-secret".into()),
        ..extra
    })
    .await
}

#[tokio::test]
async fn rebinding_requests_are_refused_on_every_route() {
    let node = loopback_node(settings()).await;
    let port = node.addr.port();
    let evil_host = format!("evil.example:{port}");
    let evil_origin = format!("http://evil.example:{port}");
    for route in ROUTES {
        let what = format!("{} {} upgrade={}", route.method, route.path, route.upgrade);
        let answer = call(node.addr, route, Some(&evil_host), Some(&evil_origin)).await;
        assert_refused(&answer, &what);
        // Without an Origin (a script's fetch to its own origin sends none on GET).
        let answer = call(node.addr, route, Some(&evil_host), None).await;
        assert_refused(&answer, &what);
    }
    // No Host at all (HTTP/1.0 needs none) is not a loopback name either.
    let (status, _, body) = send(node.addr, "GET /health HTTP/1.0\r\n\r\n".into()).await;
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("Host header is required"), "{body}");
    // An absolute target names the host too, and wins over the Host header.
    let absolute = format!(
        "GET http://evil.example:{port}/api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(send(node.addr, absolute).await.0, 421);
    // Two Host headers: refused, whichever one a proxy would read.
    let twice = format!(
        "GET /health HTTP/1.1\r\nHost: localhost:{port}\r\nHost: {evil_host}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(send(node.addr, twice).await.0, 421);
    // Nothing was done for them: no message published, no token minted.
    let info = node.info().await;
    assert_eq!(info["stats"]["messages_published"], 0, "{info}");
    assert_eq!(
        info["stats"]["hosts_refused"].as_u64(),
        Some(2 * ROUTES.len() as u64 + 3),
        "{info}"
    );
}

#[tokio::test]
async fn loopback_names_are_served_on_every_route() {
    let node = loopback_node(settings()).await;
    let port = node.addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "app.localhost".to_string(),
    ] {
        let origin = format!("http://{host}");
        for route in ROUTES {
            let what = format!("{} {} via {host}", route.method, route.path);
            let (status, head, body) = call(node.addr, route, Some(&host), Some(&origin)).await;
            assert_ne!(status, 421, "{what}: {head}\n{body}");
            match (route.method, route.path, route.upgrade) {
                (_, _, true) => assert_eq!(status, 101, "{what}: {head}"),
                (
                    "GET",
                    "/health" | "/api/info" | "/duplex.js" | "/console" | "/console/access",
                    _,
                )
                | ("POST", "/api/publish", _) => assert_eq!(status, 200, "{what}: {body}"),
                ("POST", "/api/console/token", _) => {
                    assert_eq!(status, 200, "{what}: {body}");
                    assert!(body.contains("\"token\":\"ey"), "{what}: {body}");
                }
                _ => {}
            }
        }
    }
    assert_eq!(node.info().await["stats"]["hosts_refused"], 0);
}

#[tokio::test]
async fn allowed_hosts_lists_the_names_to_serve() {
    let node = loopback_node(Settings {
        allowed_hosts: Some("chat.example, ws.example:443".into()),
        ..settings()
    })
    .await;
    for host in ["chat.example", "CHAT.example:8080", "ws.example"] {
        let origin = format!("https://{host}");
        assert_eq!(
            call(node.addr, &get("/health"), Some(host), None).await.0,
            200
        );
        let published = call(node.addr, &ROUTES[14], Some(host), None).await;
        assert_eq!(published.0, 200, "{published:?}");
        let upgraded = call(node.addr, &upgrade("/ws"), Some(host), Some(&origin)).await;
        assert_eq!(upgraded.0, 101, "{upgraded:?}");
    }
    // The list replaces the loopback default.
    let port = node.addr.port();
    for host in [format!("localhost:{port}"), "evil.example".into()] {
        let answer = call(node.addr, &get("/health"), Some(&host), None).await;
        assert_refused(&answer, &host);
    }
}
