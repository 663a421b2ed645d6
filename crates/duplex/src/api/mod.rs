//! The HTTP API: publish from any backend without a WebSocket, and look at
//! the node. Every answer is JSON; every error is
//! `{"error":{"code":...,"message":...}}` with a fitting status.
//!
//! - `POST /api/publish`   `{"channel":"news","data":...}`
//! - `POST /api/broadcast` `{"channels":["a","b"],"data":...}`
//! - `POST /api/disconnect` `{"user":"42"}` or `{"connection":"n1.7"}`, optional `code`, `reason`
//! - `POST /api/unsubscribe` `{"user":"42"}` or `{"connection":"n1.7"}`, and `"channel"`
//! - `GET  /api/connections?user=42&limit=1000` connections across nodes
//! - `GET  /api/channels`  channels with local subscriber counts (`?limit=N`: the N largest)
//! - `POST /api/reply`   `{"connection":"n1.7","request":"42","data":...}`: answer a client's rpc
//! - `GET  /api/channels`  channels with local subscriber counts
//! - `GET  /api/info`      node id, uptime, connections, broker state, counters
//! - `GET  /health`        200 while the broker is usable, else 503
//! - `GET  /metrics`       Prometheus text format
//! - `GET  /duplex.js`     the JavaScript client (`clients/js/duplex.js`), embedded
//! - `GET  /console`       the web console (also `GET /` without an upgrade), see [`console`]
//! - `GET  /console/access` whether the console needs an API key, and the sent one works (always 200)
//! - `POST /api/console/token` `{"channel":"news"}` a short-lived token to watch a channel
//!
//! With an API key configured, `/api/*` and `/metrics` need
//! `Authorization: apikey <key>`.

mod auth;
pub(crate) mod console;
mod error;
pub(crate) mod guard;
mod history;
pub(crate) mod host;
mod json;
pub(crate) mod origin;
mod presence;
mod publish;
mod reply;
mod sessions;
mod state;
mod status;
pub mod upgrade;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;
pub use state::AppState;
pub(crate) use state::LiveTls;

/// Routes under `/api` plus `/health`.
pub fn routes(state: &AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/publish", post(publish::publish))
        .route("/broadcast", post(publish::broadcast))
        .route("/disconnect", post(publish::disconnect))
        .route("/unsubscribe", post(sessions::unsubscribe))
        .route("/connections", get(sessions::connections))
        .route("/reply", post(reply::reply))
        .route("/channels", get(status::channels))
        .route("/history", get(history::history))
        .route("/presence", get(presence::presence))
        .route("/presence_stats", get(presence::presence_stats))
        .route("/info", get(status::info))
        .route("/console/token", post(console::token::mint))
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        .layer(DefaultBodyLimit::max(state.node.config().max_http_body));
    let metrics = Router::new().route("/metrics", get(status::metrics)).layer(
        middleware::from_fn_with_state(state.clone(), auth::require_api_key),
    );
    Router::new()
        .nest("/api", api)
        .merge(metrics)
        .route("/health", get(status::health))
        .route("/duplex.js", get(client_js))
        .route("/console", get(console::page))
        .route("/console/console.css", get(console::style))
        .route("/console/console.js", get(console::script))
        .route("/console/access", get(console::access::access))
        .route("/favicon.ico", get(console::favicon))
}

/// The JavaScript client, built into the binary so a page served anywhere
/// can `import { Duplex } from "http://node:1234/duplex.js"` with no CDN.
const CLIENT_JS: &str = include_str!("../../../../clients/js/duplex.js");

async fn client_js() -> impl axum::response::IntoResponse {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "public, max-age=300"),
            (axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        CLIENT_JS,
    )
}

/// All routes of a node. Every request, whatever its path (unknown ones
/// and the WebSocket upgrades included), first passes the `Host` check,
/// then gets its body deadline (`guard`).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(console::root))
        .route("/ws", get(upgrade::native))
        .merge(routes(&state))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::body_deadline,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::check_host,
        ))
        .with_state(state)
}
