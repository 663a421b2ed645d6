//! `POST /api/publish`, `POST /api/broadcast` and `POST /api/disconnect`.
//! A publish to `#conn:<id>` becomes a `send` order on `#control`, so it
//! reaches that one connection on whichever node holds it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::payload::{bytes_from_json, Encoding};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::json::Body;
use super::ApiError;
use crate::api::AppState;
use crate::broker::BrokerError;
use crate::control::{Order, Target, CONN_CHANNEL_PREFIX, DEFAULT_DISCONNECT_CODE};
use crate::message::Publication;
use crate::node::Node;
use crate::stats::Stats;

#[derive(Debug, Deserialize)]
pub(super) struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    encoding: Encoding,
    /// A connection id (`<node>.<n>`) not to deliver to: the client a
    /// backend publishes for, on whichever node it is.
    #[serde(default)]
    exclude: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct BroadcastRequest {
    channels: Vec<String>,
    data: Box<RawValue>,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    exclude: Option<String>,
}

pub(super) async fn publish(
    State(app): State<AppState>,
    Body(req): Body<PublishRequest>,
) -> Result<Json<Value>, ApiError> {
    let channel = channel(&app.node, &req.channel)?;
    let exclude = exclude(req.exclude.as_deref())?;
    if let Some(id) = channel.as_str().strip_prefix(CONN_CHANNEL_PREFIX) {
        if exclude.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "\"exclude\" does not apply to a #conn: channel (one connection)",
            ));
        }
        let order = Order::Send {
            connection: id.to_string(),
            data: req.data,
            encoding: req.encoding,
        };
        return send_order(&app, order).await;
    }
    let publication = publication(channel, &req.data, req.encoding)?;
    Stats::bump(&app.node.stats().http_publishes);
    let position = publish_one(&app.node, publication, exclude)
        .await
        .map_err(unavailable)?;
    Ok(Json(match position {
        // A history channel: where the publication is, for the backend's records.
        Some(at) => json!({"ok": true, "offset": at.offset, "epoch": &*at.epoch}),
        None => json!({"ok": true}),
    }))
}

async fn publish_one(
    node: &Node,
    publication: Publication,
    exclude: Option<&str>,
) -> Result<Option<crate::message::Position>, BrokerError> {
    match exclude {
        Some(connection) => node.publish_excluding(publication, connection).await,
        None => node.publish(publication).await,
    }
}

/// The `exclude` field: absent, or a connection id `<node>.<n>`.
fn exclude(value: Option<&str>) -> Result<Option<&str>, ApiError> {
    match value {
        None => Ok(None),
        Some(id) if crate::control::split_connection_id(id).is_some() => Ok(Some(id)),
        Some(id) => {
            let shown: String = id.chars().take(64).collect();
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("\"exclude\" must be a connection id <node>.<number>, not {shown:?}"),
            ))
        }
    }
}

pub(super) async fn broadcast(
    State(app): State<AppState>,
    Body(req): Body<BroadcastRequest>,
) -> Result<Json<Value>, ApiError> {
    if req.channels.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "\"channels\" is empty",
        ));
    }
    let channels = req
        .channels
        .iter()
        .map(|c| channel(&app.node, c))
        .collect::<Result<Vec<_>, _>>()?;
    let exclude = exclude(req.exclude.as_deref())?;
    let first = publication(channels[0].clone(), &req.data, req.encoding)?;
    let mut published = 0usize;
    for channel in channels {
        let p = Publication {
            channel,
            ..first.clone()
        };
        Stats::bump(&app.node.stats().http_publishes);
        if let Err(e) = publish_one(&app.node, p, exclude).await {
            let mut err = unavailable(e);
            err.message = format!(
                "{} (published to {published} of {} channels)",
                err.message,
                req.channels.len()
            );
            return Err(err);
        }
        published += 1;
    }
    Ok(Json(json!({"ok": true, "channels": published})))
}

/// A channel named in a request, or 400 `invalid_channel` saying why.
pub(super) fn channel(node: &Node, name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name, node.config().max_channel_length).map_err(|e| {
        let shown: String = name.chars().take(64).collect();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            format!("{e}: {shown:?}"),
        )
    })
}

fn publication(
    channel: ChannelName,
    data: &RawValue,
    encoding: Encoding,
) -> Result<Publication, ApiError> {
    let (payload, kind) = bytes_from_json(data, encoding)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_data", e.to_string()))?;
    Ok(Publication {
        channel,
        payload,
        kind,
        exclude: None,
        position: None,
    })
}

fn unavailable(e: BrokerError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        e.to_string(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DisconnectRequest {
    #[serde(default)]
    connection: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: String,
}

/// `POST /api/disconnect`: closes one connection, or every connection of a
/// user, on every node.
pub(super) async fn disconnect(
    State(app): State<AppState>,
    Body(req): Body<DisconnectRequest>,
) -> Result<Json<Value>, ApiError> {
    let target = target(req.connection, req.user)?;
    let order = Order::Disconnect {
        target,
        code: req.code.unwrap_or(DEFAULT_DISCONNECT_CODE),
        reason: req.reason,
    };
    send_order(&app, order).await
}

/// Who an order is for: exactly one of a connection id and a user id.
pub(super) fn target(connection: Option<String>, user: Option<String>) -> Result<Target, ApiError> {
    match (connection, user) {
        (Some(id), None) if !id.is_empty() => Ok(Target::Connection(id)),
        (None, Some(user)) if !user.is_empty() => Ok(Target::User(user)),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give exactly one of \"connection\" and \"user\"",
        )),
    }
}

/// Checks an order and publishes it on `#control` for every node.
pub(super) async fn send_order(app: &AppState, order: Order) -> Result<Json<Value>, ApiError> {
    order
        .check()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    app.node.publish_order(&order).await.map_err(unavailable)?;
    Ok(Json(json!({"ok": true})))
}
