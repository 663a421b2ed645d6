//! `GET /api/channels`, `GET /api/info`, `GET /health`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::node::NodeInfo;
use crate::server::AppState;

pub(super) async fn channels(State(app): State<AppState>) -> Json<Value> {
    let channels: Vec<Value> = app
        .node
        .channels()
        .into_iter()
        .map(|(name, subscribers)| json!({"name": name.as_str(), "subscribers": subscribers}))
        .collect();
    Json(json!({"node": app.node.id(), "channels": channels}))
}

pub(super) async fn info(State(app): State<AppState>) -> Json<NodeInfo> {
    Json(app.node.info())
}

pub(super) async fn health(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let broker = app.node.broker_state();
    if app.node.is_healthy() && !app.shutdown.is_cancelled() {
        (
            StatusCode::OK,
            Json(json!({"status": "ok", "broker": broker})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "broker": broker})),
        )
    }
}

/// `GET /metrics`: Prometheus text exposition.
pub(super) async fn metrics(State(app): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match crate::metrics::render(&app.metrics) {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
