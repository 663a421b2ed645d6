//! `POST /api/reply` `{"connection":"n1.7","request":"42","data":...}` (or
//! `"error":{"code":4000,"message":"..."}`): a backend's answer to a
//! client's rpc, accepted by any node. The node holding the connection gets
//! it on its own `#node:<id>` channel; a local one is answered at once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::json::Body;
use super::ApiError;
use crate::control::{Order, ReplyError};
use crate::server::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplyRequest {
    connection: String,
    #[serde(alias = "request_id")]
    request: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ReplyError>,
}

/// `POST /api/reply`: answers once the reply is on its way to the holding
/// node (whether the call is still waiting is that node's business: a late
/// reply is dropped and counted there).
pub(super) async fn reply(
    State(app): State<AppState>,
    Body(req): Body<ReplyRequest>,
) -> Result<Json<Value>, ApiError> {
    let order = Order::Reply {
        connection: req.connection,
        request: req.request,
        data: req.data,
        error: req.error,
    };
    order
        .check()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    app.node.reply(&order).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            e.to_string(),
        )
    })?;
    Ok(Json(json!({"ok": true})))
}
