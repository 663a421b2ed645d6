//! `GET /api/presence?channel=` and `GET /api/presence_stats?channel=`: a
//! presence channel's members and counts on every node, for backends
//! (docs/API.md); answered as the native `presence` and `presence_stats`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::presence::PresenceStatsResult;
use serde::Deserialize;

use super::ApiError;
use crate::api::AppState;
use crate::broker::BrokerError;
use crate::node::Node;
use crate::session::native::presence::{presence_result, NO_PRESENCE};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PresenceQuery {
    channel: String,
}

/// The channel asked about, when it keeps presence.
fn presence_channel(
    node: &Node,
    query: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<ChannelName, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let channel = super::publish::channel(node, &q.channel)?;
    if node.presence_rule(&channel).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_presence",
            NO_PRESENCE,
        ));
    }
    Ok(channel)
}

fn broker_failed(e: BrokerError) -> ApiError {
    match e {
        BrokerError::Unsupported(why) => ApiError::new(StatusCode::NOT_FOUND, "no_presence", why),
        e => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            e.to_string(),
        ),
    }
}

/// `{"members":[{"conn","user","info"?},..]}`.
pub(super) async fn presence(
    State(app): State<AppState>,
    query: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let channel = presence_channel(&app.node, query)?;
    let members = app
        .node
        .presence_members(&channel)
        .await
        .map_err(broker_failed)?;
    Ok(Json(presence_result(&members)).into_response())
}

/// `{"connections":N,"users":M}`.
pub(super) async fn presence_stats(
    State(app): State<AppState>,
    query: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let channel = presence_channel(&app.node, query)?;
    let stats = app
        .node
        .presence_stats(&channel)
        .await
        .map_err(broker_failed)?;
    Ok(Json(PresenceStatsResult {
        connections: stats.connections,
        users: stats.users,
    })
    .into_response())
}
