//! `GET /api/channels`, `GET /api/info`, `GET /health`.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use duplex_protocol::channel::ChannelName;
use serde_json::{json, Value};

use super::ApiError;
use crate::api::AppState;
use crate::node::NodeInfo;

/// Most channels one `/api/channels?limit=` answer lists, so a dashboard
/// polling a node with a million channels gets a bounded answer.
const MAX_CHANNELS_LIMIT: usize = 1000;

/// `GET /api/channels`: every channel by name; `?limit=N` (1 to
/// [`MAX_CHANNELS_LIMIT`]): the N with the most local subscribers, most first.
/// `total` counts them all either way.
pub(super) async fn channels(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let limit = channels_limit(query.as_deref())?;
    let mut all = app.node.channels();
    let total = all.len();
    if let Some(limit) = limit {
        // Most subscribers first, then by name; only the top `limit` get sorted.
        let order = |(a, x): &(ChannelName, usize), (b, y): &(ChannelName, usize)| {
            y.cmp(x).then_with(|| a.cmp(b))
        };
        if limit < all.len() {
            all.select_nth_unstable_by(limit, order);
            all.truncate(limit);
        }
        all.sort_unstable_by(order);
    }
    let channels: Vec<Value> = all
        .into_iter()
        .map(|(name, subscribers)| json!({"name": name.as_str(), "subscribers": subscribers}))
        .collect();
    Ok(Json(
        json!({"node": app.node.id(), "total": total, "channels": channels}),
    ))
}

fn channels_limit(query: Option<&str>) -> Result<Option<usize>, ApiError> {
    let mut limit = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key != "limit" {
            continue;
        }
        match value.parse::<usize>() {
            Ok(n) if (1..=MAX_CHANNELS_LIMIT).contains(&n) => limit = Some(n),
            _ => {
                let shown: String = value.chars().take(32).collect();
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("limit must be a number from 1 to {MAX_CHANNELS_LIMIT}, got {shown:?}"),
                ));
            }
        }
    }
    Ok(limit)
}

pub(super) async fn info(State(app): State<AppState>) -> Json<NodeInfo> {
    Json(app.node.info())
}

pub(super) async fn health(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let broker = app.node.broker_state();
    let healthy = app.node.is_healthy() && !app.shutdown.is_cancelled();
    if let Some(reason) = app.node.probe_problem().filter(|_| healthy) {
        // Connected, yet what it publishes does not come back (node/probe.rs).
        let body = json!({"status": "degraded", "reason": reason, "broker": broker});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    } else if healthy {
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
