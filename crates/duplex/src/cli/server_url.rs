//! `--server` for `publish` and `subscribe`: the node's address in either
//! of its schemes, `http(s)://` or `ws(s)://`, turned into the URL the
//! command needs. One node serves both on one port, so both are accepted.

use anyhow::bail;

/// What a command talks to on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// An HTTP route (`/api/publish`): `http://` or `https://`.
    Http,
    /// The WebSocket endpoint (`/ws`): `ws://` or `wss://`.
    WebSocket,
}

/// The URL of `path` on the node `server` names, in `endpoint`'s scheme
/// (TLS kept or not, as `server` says). A trailing `/ws` on `server` is
/// dropped, so the URL a WebSocket client uses works too.
pub(super) fn node_url(server: &str, endpoint: Endpoint, path: &str) -> anyhow::Result<String> {
    let Some((scheme, rest)) = server.split_once("://") else {
        bail!(
            "--server {server:?} is not a URL: write http://{server} (or https://, ws://, wss://)"
        );
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => false,
        "https" | "wss" => true,
        other => bail!(
            "--server {server:?}: a node speaks http://, https://, ws:// and wss://, not {other}://"
        ),
    };
    let scheme = match (endpoint, tls) {
        (Endpoint::Http, false) => "http",
        (Endpoint::Http, true) => "https",
        (Endpoint::WebSocket, false) => "ws",
        (Endpoint::WebSocket, true) => "wss",
    };
    let base = rest.trim_end_matches('/');
    let base = base.strip_suffix("/ws").unwrap_or(base);
    let url = format!("{scheme}://{base}{path}");
    if url::Url::parse(&url).is_err() {
        bail!("--server {server:?} is not a valid URL");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_scheme_reaches_either_endpoint() {
        let ws = |s| node_url(s, Endpoint::WebSocket, "/ws").unwrap();
        let http = |s| node_url(s, Endpoint::Http, "/api/publish").unwrap();
        assert_eq!(ws("http://127.0.0.1:1234"), "ws://127.0.0.1:1234/ws");
        assert_eq!(ws("ws://127.0.0.1:1234/"), "ws://127.0.0.1:1234/ws");
        assert_eq!(ws("ws://127.0.0.1:1234/ws"), "ws://127.0.0.1:1234/ws");
        assert_eq!(ws("HTTPS://chat.example"), "wss://chat.example/ws");
        assert_eq!(
            http("wss://chat.example/duplex/"),
            "https://chat.example/duplex/api/publish"
        );
        assert_eq!(
            http("http://127.0.0.1:1234"),
            "http://127.0.0.1:1234/api/publish"
        );
    }

    #[test]
    fn what_is_not_a_node_url_says_so() {
        let err = node_url("localhost:1234", Endpoint::Http, "/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http://localhost:1234"), "{err}");
        let err = node_url("redis://localhost", Endpoint::WebSocket, "/ws")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not redis://"), "{err}");
    }
}
