//! `POST /api/reply` `{"connection":"n1.7","request":"42","data":...}` (or
//! `"error":{"code":4000,"message":"..."}`): a backend's answer to a
//! client's rpc, accepted by any node. The node holding the connection gets
//! it on its own `#node:<id>` channel; a local one is answered at once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::json::Body;
use super::ApiError;
use crate::api::AppState;
use crate::control::{Order, ReplyWire};

/// `POST /api/reply`: answers once the reply is on its way to the holding
/// node (whether the call is still waiting is that node's business: a late
/// reply is dropped and counted there).
pub(super) async fn reply(
    State(app): State<AppState>,
    Body(req): Body<ReplyWire>,
) -> Result<Json<Value>, ApiError> {
    let order = Order::from(req);
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
