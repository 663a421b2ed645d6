//! `GET /console/access`: whether the console needs an API key, and whether
//! the one the request carries (`Authorization: apikey <key>`) is accepted.
//!
//! Always 200, so the page learns it must ask for a key (and checks a typed
//! key) without a failed request, which browsers log as an error in the
//! console. It tells nothing a refused `/api` call would not: 401 or 200.
//!
//! `{"api_key_required":true,"api_key_accepted":false}`

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;

use super::super::auth::{check_key, KeyCheck};
use crate::api::AppState;

/// The answer: `api_key_accepted` is true when `/api` would serve this request.
#[derive(Debug, Serialize)]
struct Access {
    api_key_required: bool,
    api_key_accepted: bool,
}

/// `GET /console/access`.
pub(crate) async fn access(State(app): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let check = check_key(&app.node.config(), &headers);
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(Access {
            api_key_required: check != KeyCheck::NotRequired,
            api_key_accepted: check != KeyCheck::Refused,
        }),
    )
}
