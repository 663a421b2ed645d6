//! API key check for `/api/*`: `Authorization: apikey <key>`, compared in
//! constant time so a key cannot be guessed byte by byte from timings.
//! Several keys may be valid at once, so a key can be rotated without downtime.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use subtle::ConstantTimeEq;

use super::ApiError;
use crate::api::AppState;
use crate::config::Config;

/// What the API key check makes of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyCheck {
    /// No API key is configured: `/api` is open.
    NotRequired,
    /// The request carries one of the configured keys.
    Accepted,
    /// A key is configured and the request has none, or another one.
    Refused,
}

/// Checks the request's `Authorization: apikey <key>` against the configured keys.
pub(super) fn check_key(config: &Config, headers: &HeaderMap) -> KeyCheck {
    if config.api_keys().next().is_none() {
        return KeyCheck::NotRequired;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "))
        .map(str::trim);
    // Compare against every key (no early exit), so timing says nothing about which.
    let accepted = given.is_some_and(|key| {
        config.api_keys().fold(false, |ok, k| {
            bool::from(key.as_bytes().ct_eq(k.as_bytes())) | ok
        })
    });
    if accepted {
        KeyCheck::Accepted
    } else {
        KeyCheck::Refused
    }
}

pub(super) async fn require_api_key(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match check_key(&app.node.config(), req.headers()) {
        KeyCheck::NotRequired | KeyCheck::Accepted => next.run(req).await,
        KeyCheck::Refused => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key: send \"Authorization: apikey <key>\"",
        )
        .into_response(),
    }
}
