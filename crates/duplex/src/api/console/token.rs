//! `POST /api/console/token` `{"channel":"news"}`: how the console watches a
//! channel when connection tokens are required.
//!
//! The console connects to `/ws` like any client (with the served JavaScript
//! client), so watching costs the node nothing new: no admin stream, no
//! special subscriber. When tokens are on, this endpoint (behind the API key,
//! like all of `/api`) mints an anonymous HS256 token whose `channels` claim
//! holds the one watched channel, valid for [`WATCH_TOKEN_TTL`]. The server
//! subscribes the connection at `connect` (trusted, so namespace rules and
//! `#user:` channels do not stand in the way), and the client refreshes the
//! token through this endpoint before it expires.
//!
//! Answers:
//! - tokens off: `{"token":null}`: connect and subscribe without one;
//! - tokens on with `token_secret`: `{"token":"eyJ...","expires":1795793072}`;
//! - tokens verified only with a public key or JWKS: 409 `cannot_mint`, as
//!   the node holds no key to sign with.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use duplex_protocol::channel::ChannelName;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::super::json::Body;
use super::super::ApiError;
use crate::api::AppState;
use crate::auth::unix_now;
use crate::control::{CONTROL_CHANNEL, NODE_CHANNEL_PREFIX};

/// Seconds a watch token lives: short, since it reads a channel the console
/// user may not otherwise see; the client refreshes it well before the end.
pub(crate) const WATCH_TOKEN_TTL: u64 = 300;

/// What the console asks for: one channel to watch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    channel: String,
}

/// The claims of a watch token: those of a connection token (docs/AUTH.md),
/// with `aud` and `iss` when the node requires them.
#[derive(Debug, Serialize)]
struct WatchClaims<'a> {
    sub: &'static str,
    iat: u64,
    exp: u64,
    channels: [&'a str; 1],
    #[serde(skip_serializing_if = "str::is_empty")]
    aud: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    iss: &'a str,
}

/// `POST /api/console/token`: the answers are in the module doc.
pub(crate) async fn mint(
    State(app): State<AppState>,
    Body(req): Body<TokenRequest>,
) -> Result<Json<Value>, ApiError> {
    let config = app.node.config();
    let channel = ChannelName::parse(&req.channel, config.max_channel_length).map_err(|e| {
        let shown: String = req.channel.chars().take(64).collect();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            format!("{e}: {shown:?}"),
        )
    })?;
    // The node's own order channels: a subscriber there would make the node
    // unsubscribe them from the broker when it leaves.
    if channel.as_str() == CONTROL_CHANNEL || channel.as_str().starts_with(NODE_CHANNEL_PREFIX) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            format!("{channel:?} carries node orders and cannot be watched"),
        ));
    }
    if !config.token_auth() {
        return Ok(Json(json!({"token": null})));
    }
    if config.token_secret.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot_mint",
            "this node verifies tokens with a public key or JWKS and holds no token_secret to sign a watch token; set token_secret too, or watch with `duplex subscribe` and a token from your backend",
        ));
    }
    let now = unix_now();
    let claims = WatchClaims {
        sub: "",
        iat: now,
        exp: now + WATCH_TOKEN_TTL,
        channels: [channel.as_str()],
        aud: &config.token_audience,
        iss: &config.token_issuer,
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(config.token_secret.expose().as_bytes()),
    )
    .map_err(|e| {
        tracing::error!(error = %e, "cannot sign a console watch token");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    })?;
    tracing::info!(%channel, ttl = WATCH_TOKEN_TTL, "console watch token issued");
    Ok(Json(json!({"token": token, "expires": claims.exp})))
}
