//! The web console: one page, built into the binary, to watch and poke a
//! running node from a browser (docs/CONSOLE.md).
//!
//! - `GET /` without a WebSocket upgrade, and `GET /console`: the page
//! - `GET /console/console.css`, `GET /console/console.js`: its style and script
//! - `GET /favicon.ico`: a small icon (an SVG), so no page on the node logs a 404 for it
//! - `GET /console/access`: whether an API key is needed and the one sent works ([`access`])
//! - `POST /api/console/token`: a short-lived token to watch a channel ([`token`])
//!
//! The page itself holds nothing secret: every number it shows comes from
//! `/api/*`, with the API key the user types in when one is configured. No
//! CDN, no build step: the three files below are the whole console.

pub(super) mod access;
pub(super) mod token;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, Response};
use axum::response::IntoResponse;

use crate::api::upgrade;
use crate::api::AppState;

const PAGE: &str = include_str!("console.html");
const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");
const ICON: &str = include_str!("favicon.svg");

/// Everything the page loads comes from the node; the page talks only to
/// this node (HTTP and WebSocket) and may not be framed (the publish form
/// must not be clickjacked).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self' ws: wss:; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: a WebSocket upgrade is a plain client (the classic demo); any
/// other GET is a person with a browser, who gets the console.
pub(crate) async fn root(
    state: State<AppState>,
    remote: ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    if wants_websocket(req.headers()) {
        upgrade::plain(state, remote, req).await
    } else {
        page().await.into_response()
    }
}

/// Whether the request asks for a WebSocket (`Upgrade: websocket`); the
/// upgrade handler then checks the rest of the handshake and says what is wrong.
fn wants_websocket(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
        })
    })
}

/// `GET /console`: the page.
pub(super) async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /console/console.css`.
pub(super) async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /console/console.js`.
pub(super) async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /favicon.ico`: browsers ask every page's host for one.
pub(super) async fn favicon() -> impl IntoResponse {
    asset("image/svg+xml", ICON)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
}
