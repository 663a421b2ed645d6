//! What every HTTP request passes through before its route (one layer each,
//! in `api::router`, over every route, the WebSocket upgrades included):
//!
//! - [`check_host`]: the `Host` must be one this node answers to
//!   ([`HostPolicy`], against DNS rebinding), else **421** `host_not_allowed`.
//! - [`body_deadline`]: the whole request body must arrive within
//!   `request_timeout` of its headers, else **408** `request_timeout` and
//!   the connection is closed. The deadline is total, not per read: a body
//!   trickled a byte at a time is cut as surely as a stalled one (an idle
//!   timeout, such as tower-http's `RequestBodyTimeout`, resets on every
//!   frame and would let it live forever).

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::host::HostPolicy;
use super::{ApiError, AppState};
use crate::stats::Stats;
use crate::throttle::Throttle;

/// The settings and log throttles of the request checks.
#[derive(Debug)]
pub(crate) struct HttpGuard {
    hosts: HostPolicy,
    request_timeout: Duration,
    host_log: Throttle,
    deadline_log: Throttle,
}

impl HttpGuard {
    /// From `allowed_hosts` and `request_timeout`; the default host policy
    /// depends on whether the node listens on loopback.
    pub(crate) fn new(
        allowed_hosts: &str,
        listen_is_loopback: bool,
        request_timeout: Duration,
    ) -> Self {
        HttpGuard {
            hosts: HostPolicy::from_setting(allowed_hosts, listen_is_loopback),
            request_timeout,
            host_log: Throttle::new(1000),
            deadline_log: Throttle::new(1000),
        }
    }
}

fn remote(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

/// The names a request is addressed to: its `Host` header (None when
/// absent; a repeated or non-text one is refused as the empty name), and
/// the authority of an absolute-form target (`GET http://host/ HTTP/1.1`),
/// which takes precedence over `Host` in HTTP/1.1 and so is checked too.
fn addressed_to(req: &Request) -> (Option<&str>, Option<&str>) {
    let mut values = req.headers().get_all(header::HOST).iter();
    let host = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(value), None) => Some(value.to_str().unwrap_or("")),
        (Some(_), Some(_)) => Some(""),
    };
    (host, req.uri().authority().map(|a| a.as_str()))
}

/// Refuses requests whose `Host` this node does not answer to (421).
pub(crate) async fn check_host(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let (host, target) = addressed_to(&req);
    let hosts = &app.guard.hosts;
    if hosts.allows(host) && target.is_none_or(|t| hosts.allows(Some(t))) {
        return next.run(req).await;
    }
    Stats::bump(&app.node.stats().hosts_refused);
    let shown: String = target.or(host).unwrap_or("").chars().take(100).collect();
    if let Some(skipped) = app.guard.host_log.allow() {
        tracing::info!(
            remote = ?remote(&req),
            host = shown,
            similar_skipped = skipped,
            "refused request: Host not in allowed_hosts (counted in hosts_refused)"
        );
    }
    let message = if host.is_none() && target.is_none() {
        "a Host header is required: this node answers only to the names in allowed_hosts (by default, on loopback: localhost, 127.0.0.1, [::1])".to_string()
    } else {
        format!(
            "this node does not answer to the name {shown:?}; if it should, add it to allowed_hosts (--allowed-hosts, DUPLEX_ALLOWED_HOSTS)"
        )
    };
    ApiError::new(StatusCode::MISDIRECTED_REQUEST, "host_not_allowed", message).into_response()
}

/// Holds a request's body to `request_timeout`: if it is not complete by
/// then, the route's answer is replaced by 408 and the connection closed.
pub(crate) async fn body_deadline(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if http_body::Body::is_end_stream(req.body()) {
        return next.run(req).await; // no body (GET, upgrades): nothing to wait for
    }
    let timeout = app.guard.request_timeout;
    let remote = remote(&req);
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            body,
            deadline: Instant::now() + timeout,
            sleep: None,
            expired: Arc::clone(&expired),
        })
    });
    let response = next.run(req).await;
    if !expired.load(Relaxed) {
        return response;
    }
    Stats::bump(&app.node.stats().request_timeouts);
    if let Some(skipped) = app.guard.deadline_log.allow() {
        tracing::info!(
            ?remote,
            similar_skipped = skipped,
            "closing connection: request body not complete within request_timeout (counted in request_timeouts)"
        );
    }
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within request_timeout ({}); send the whole body at once",
            humantime::format_duration(timeout)
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline passes with data still missing.
struct DeadlineBody {
    body: Body,
    deadline: Instant,
    /// Armed on the first poll that finds no data ready.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Set when the deadline cut the body, for [`body_deadline`] to see.
    expired: Arc<AtomicBool>,
}

/// The error a body past its deadline gives its reader.
#[derive(Debug, thiserror::Error)]
#[error("request body not complete within request_timeout")]
struct BodyDeadlinePassed;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired.store(true, Relaxed);
                Poll::Ready(Some(Err(axum::Error::new(BodyDeadlinePassed))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
