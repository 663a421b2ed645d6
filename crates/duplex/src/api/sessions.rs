//! Sessions seen and steered from a backend, on every node:
//! `POST /api/unsubscribe` (take a user or a connection off a channel) and
//! `GET /api/connections` (who is connected, across nodes). See docs/API.md.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::json::Body;
use super::ApiError;
use crate::api::AppState;
use crate::control::{Order, MAX_QUERY_LIMIT};
use crate::node::ConnectionList;

/// `limit` of `/api/connections` when none is given.
const DEFAULT_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnsubscribeRequest {
    #[serde(default)]
    connection: Option<String>,
    #[serde(default)]
    user: Option<String>,
    channel: String,
}

/// `POST /api/unsubscribe`: takes one connection, or every connection of a
/// user, off a channel on every node (an `unsubscribe` order).
pub(super) async fn unsubscribe(
    State(app): State<AppState>,
    Body(req): Body<UnsubscribeRequest>,
) -> Result<Json<Value>, ApiError> {
    let target = super::publish::target(req.connection, req.user)?;
    super::publish::channel(&app.node, &req.channel)?;
    let order = Order::Unsubscribe {
        target,
        channel: req.channel,
    };
    super::publish::send_order(&app, order).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionsQuery {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/connections?user=42&limit=100`: the connections of one user
/// (or all) on every live node.
pub(super) async fn connections(
    State(app): State<AppState>,
    query: Result<Query<ConnectionsQuery>, QueryRejection>,
) -> Result<Json<ConnectionList>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_QUERY_LIMIT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("limit must be 1-{MAX_QUERY_LIMIT}"),
        ));
    }
    if query.user.as_deref() == Some("") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "user is empty: give a user id, or leave it out for every connection",
        ));
    }
    app.node
        .list_connections(query.user, limit)
        .await
        .map(Json)
        .map_err(|e| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_queries",
                e.to_string(),
            )
        })
}
