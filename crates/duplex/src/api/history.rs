//! `GET /api/history?channel=&since=&limit=&reverse=`: a history channel's
//! kept publications, for backends that page back through it (docs/API.md).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use duplex_protocol::history::write_history_result;
use serde::Deserialize;

use super::ApiError;
use crate::api::AppState;
use crate::broker::BrokerError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    channel: String,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    reverse: bool,
}

/// The channel's epoch and last offset and its kept publications after
/// `since` (at most `limit`, capped by its `history_size`; newest first
/// with `reverse`), each `data` as a native `message` push shows it.
pub(super) async fn history(
    State(app): State<AppState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let node = &app.node;
    let channel = super::publish::channel(node, &q.channel)?;
    let Some(rule) = node.history_rule(&channel) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_history",
            crate::node::NO_HISTORY,
        ));
    };
    let read = crate::node::history_query(&rule, q.since, q.limit, q.reverse);
    let (_, page) = node
        .read_history(&channel, read, None)
        .await
        .map_err(|e| match e {
            BrokerError::Unsupported(why) => {
                ApiError::new(StatusCode::NOT_FOUND, "no_history", why)
            }
            e => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                e.to_string(),
            ),
        })?;
    let mut body = Vec::new();
    let kept = page.publications.iter().map(crate::node::kept);
    write_history_result(&mut body, &page.top.epoch, page.top.offset, kept)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
