//! The WebSocket handshake (RFC 6455 section 4.2) on top of hyper.
//!
//! The HTTP server stays hyper/axum so that `/api`, `/health`, `/metrics`
//! and the console share the port. After the 101 the raw stream (`TcpStream`,
//! or the TLS stream over it) is taken back from hyper, so the connection's
//! reader and writer own their halves, and our own frame codec runs on it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use duplex_protocol::code::CloseCode;
use duplex_protocol::ws::accept_key;

use super::AppState;
use crate::conn::Conn;
use crate::conn::Queued;
use crate::message::Wire;
use crate::node::{Node, Refused};
use crate::session::admit::{self, Admission};
use crate::session::native::NativeSession;
use crate::session::plain::{PlainSession, Unstarted};
use crate::session::{Authenticated, Identity, Session};
use crate::stats::Stats;
use crate::transport::reader;
use crate::transport::sockets::Socket;
use crate::transport::stream::Stream;

/// `GET /`: plain mode (the classic demo).
pub async fn plain(
    State(app): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    upgrade(app, remote, req, Wire::Plain).await
}

/// `GET /ws`: the native JSON protocol.
pub async fn native(
    State(app): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    upgrade(app, remote, req, Wire::Native).await
}

/// What a plain client presented: its token, and the `Sec-WebSocket-Protocol`
/// entry to echo.
#[derive(Debug, PartialEq, Eq)]
struct Presented {
    /// `None`: no token; `Err`: two different tokens.
    token: Result<Option<String>, &'static str>,
    /// The first `token.` entry offered, echoed in the 101 whatever the
    /// token's fate: a browser that offered protocols fails the handshake
    /// unless one comes back.
    echo: Option<HeaderValue>,
}

/// Why a plain client with two different tokens is refused (close 3500).
const TWO_TOKENS: &str =
    "two different tokens, in ?token= and in the Sec-WebSocket-Protocol entry token.<jwt>: send one";

/// The token a plain client presents: `?token=`, or a `Sec-WebSocket-Protocol`
/// entry `token.<jwt>` (browsers cannot set headers, but can offer
/// protocols). One precedence (docs/AUTH.md): an empty value counts as
/// absent; the same token in both places is that token; two different
/// non-empty tokens are refused rather than one picked silently, since the
/// client cannot know which one the node would have read.
fn plain_token(req: &Request<Body>) -> Presented {
    let mut token: Option<String> = None;
    let mut conflict = false;
    let mut found = |candidate: &str| {
        if candidate.is_empty() {
            return;
        }
        match &token {
            None => token = Some(candidate.to_string()),
            Some(seen) => conflict |= seen != candidate,
        }
    };
    let query = req.uri().query().unwrap_or("");
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key == "token" {
            found(&value);
        }
    }
    let mut echo = None;
    for value in req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(list) = value.to_str() else { continue };
        for entry in list.split(',').map(str::trim) {
            if let Some(candidate) = entry.strip_prefix(TOKEN_PROTOCOL_PREFIX) {
                if echo.is_none() {
                    echo = HeaderValue::from_str(entry).ok();
                }
                found(candidate);
            }
        }
    }
    Presented {
        token: if conflict { Err(TWO_TOKENS) } else { Ok(token) },
        echo,
    }
}

/// `Sec-WebSocket-Protocol` entries starting with this carry a token.
const TOKEN_PROTOCOL_PREFIX: &str = "token.";

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Checks the handshake; the answer says exactly what is missing.
fn check_handshake(req: &Request<Body>) -> Result<HeaderValue, (StatusCode, String)> {
    let headers = req.headers();
    let is_upgrade = header_has_token(headers, header::UPGRADE, "websocket");
    if !is_upgrade {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint: connect with new WebSocket(\"ws://host:port/\") (plain) or \"/ws\" (native protocol)".into(),
        ));
    }
    if req.method() != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrades must use GET".into(),
        ));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err((
            StatusCode::BAD_REQUEST,
            "missing \"Connection: Upgrade\" header".into(),
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "unsupported or missing Sec-WebSocket-Version: only 13 is supported".into(),
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .filter(|k| k.len() == 24)
        .ok_or((
            StatusCode::BAD_REQUEST,
            "missing or malformed Sec-WebSocket-Key".to_string(),
        ))?;
    HeaderValue::from_str(&accept_key(key)).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            "malformed Sec-WebSocket-Key".into(),
        )
    })
}

/// A refused handshake also names the protocol version we speak (RFC 6455 4.4).
fn refuse_handshake(status: StatusCode, reason: &str) -> Response<Body> {
    let mut response = refuse(status, reason);
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    response
}

fn refuse(status: StatusCode, reason: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{reason}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Answers a WebSocket upgrade: the handshake and `Origin` checked, the
/// client admitted (plain: token, user slot, channels), registered and its
/// session started before the 101, then the socket handed to its reader.
async fn upgrade(
    app: AppState,
    remote: SocketAddr,
    mut req: Request<Body>,
    wire: Wire,
) -> Response<Body> {
    let accept = match check_handshake(&req) {
        Ok(accept) => accept,
        Err((status, reason)) => {
            tracing::debug!(%remote, path = req.uri().path(), %status, reason, "refused upgrade");
            return refuse_handshake(status, &reason);
        }
    };
    if let Err((status, reason)) = check_origin(&app, remote, &req) {
        return refuse(status, &reason);
    }
    if app.shutdown.is_cancelled() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    let (protocol, admission) = match wire {
        Wire::Plain => {
            let presented = plain_token(&req);
            match admit::plain(&app.node, presented.token, req.uri().query()) {
                Ok(admission) => (presented.echo, admission),
                Err(reason) => return refuse(StatusCode::BAD_REQUEST, &reason),
            }
        }
        Wire::Native => (None, Admission::default()),
    };
    // Register and subscribe before answering 101: once a client sees the
    // connection open, every message published afterwards reaches it
    // (anything arriving before the socket is handed over waits in the queue).
    let conn = match register(&app.node, wire, remote) {
        Ok(conn) => conn,
        Err((status, reason)) => return refuse(status, &reason),
    };
    let session = match start_session(&app.node, &conn, wire, admission).await {
        Ok(session) => session,
        Err((status, reason)) => return refuse(status, &reason),
    };
    hand_over(&app, &mut req, conn, session);
    switching_protocols(accept, protocol)
}

/// An upgrade refused before the 101: the status and the reason in the body.
type Refusal = (StatusCode, String);

/// Which web pages may open WebSockets (`allowed_origins`): 403 otherwise.
fn check_origin(app: &AppState, remote: SocketAddr, req: &Request<Body>) -> Result<(), Refusal> {
    let header_str = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    app.origins
        .check(header_str(header::ORIGIN), header_str(header::HOST))
        .map_err(|reason| {
            Stats::bump(&app.node.stats().auth_denials);
            tracing::info!(%remote, reason, "refused upgrade: origin");
            (StatusCode::FORBIDDEN, reason)
        })
}

/// Counts the connection against the node's limits and registers it.
fn register(node: &Node, wire: Wire, remote: SocketAddr) -> Result<Arc<Conn>, Refusal> {
    node.register(wire, remote).map_err(|refused| {
        let status = match refused {
            Refused::NodeFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::AddressFull(_) | Refused::HandshakeRate(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        tracing::info!(%remote, reason = %refused, "refused connection");
        (status, refused.to_string())
    })
}

/// The connection's session, subscribed to its channels (plain); a plain
/// client whose token was refused is closed with its code right after the 101.
async fn start_session(
    node: &Node,
    conn: &Arc<Conn>,
    wire: Wire,
    admission: Admission,
) -> Result<Session, Refusal> {
    let Admission {
        identity,
        user_slot,
        channels,
    } = admission;
    let identity = identity.unwrap_or_else(|| Ok(Identity::default()));
    let session = match wire {
        Wire::Native => Session::Native(NativeSession::new(node.config().max_publish_rate)),
        Wire::Plain => {
            let authenticated = identity
                .as_ref()
                .ok()
                .and_then(|i| Authenticated::new(&i.user, user_slot, None));
            match PlainSession::start(node, conn, channels, authenticated).await {
                Ok(session) => Session::Plain(session),
                Err((session, unstarted)) => {
                    node.deregister(conn, Session::Plain(session).into_channels())
                        .await;
                    let status = match &unstarted {
                        Unstarted::Broker(error) => {
                            tracing::warn!(conn = %conn.id, error, "could not subscribe plain client");
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                        Unstarted::AddressFull(_) => StatusCode::TOO_MANY_REQUESTS,
                    };
                    return Err((status, unstarted.to_string()));
                }
            }
        }
    };
    match &identity {
        Ok(who) => {
            conn.authenticated(&who.user, who.expires);
            tracing::debug!(conn = %conn.id, remote = %conn.remote, ?wire, user = who.user, "client connected");
        }
        Err((code, reason)) => {
            tracing::debug!(conn = %conn.id, remote = %conn.remote, code = code.as_u16(), reason, "plain client refused");
            conn.close(code.as_u16(), reason, Queued::Drop);
        }
    }
    Ok(session)
}

/// Once hyper has sent the 101, takes the raw stream back and runs the
/// connection's reader (which starts its writer) on it.
fn hand_over(app: &AppState, req: &mut Request<Body>, conn: Arc<Conn>, session: Session) {
    // From here on the socket counts as a WebSocket connection, not an HTTP
    // one (`transport::sockets`); the reader holds its slot until it ends.
    // If it was evicted meanwhile, there is no slot and `on_upgrade` fails below.
    let slot = req
        .extensions()
        .get::<Arc<Socket>>()
        .and_then(|socket| socket.upgraded());
    let on_upgrade = hyper::upgrade::on(req);
    let (node, shutdown) = (app.node.clone(), app.shutdown.clone());
    app.tracker.spawn(async move {
        let _slot = slot;
        let (stream, leftover) = match on_upgrade.await.map(Stream::from_upgraded) {
            Ok(Some(taken)) => taken,
            Ok(None) => {
                tracing::error!(conn = %conn.id, "upgraded connection is neither TCP nor TLS; closing");
                node.deregister(&conn, session.into_channels()).await;
                return;
            }
            Err(e) => {
                tracing::debug!(conn = %conn.id, error = %e, "upgrade failed");
                node.deregister(&conn, session.into_channels()).await;
                return;
            }
        };
        if shutdown.is_cancelled() {
            conn.close(CloseCode::GoingAway.as_u16(), "server shutting down", Queued::Drop);
        }
        match stream {
            Stream::Tcp(tcp) => reader::run(node, conn, tcp, leftover, session).await,
            // Boxed: this task's future must stay the size of a plain one.
            Stream::Tls(tls) => Box::pin(reader::run(node, conn, tls, leftover, session)).await,
        }
    });
}

/// The 101 answer.
fn switching_protocols(accept: HeaderValue, protocol: Option<HeaderValue>) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(query: &str, protocols: &[&str]) -> Presented {
        let mut req = Request::builder().uri(format!("/{query}"));
        for p in protocols {
            req = req.header(header::SEC_WEBSOCKET_PROTOCOL, *p);
        }
        plain_token(&req.body(Body::empty()).unwrap())
    }

    fn token(p: &Presented) -> Result<Option<&str>, &'static str> {
        p.token.as_ref().map(|t| t.as_deref()).map_err(|e| *e)
    }

    #[test]
    fn one_precedence_for_query_and_protocol_tokens() {
        let none = presented("", &[]);
        assert_eq!((token(&none), &none.echo), (Ok(None), &None));
        // An empty ?token= hides nothing.
        let p = presented("?token=", &["token.abc"]);
        assert_eq!(token(&p), Ok(Some("abc")));
        assert_eq!(p.echo.unwrap(), "token.abc");
        let p = presented("?token=abc", &[]);
        assert_eq!((token(&p), &p.echo), (Ok(Some("abc")), &None));
        // The same token twice is that token, and the entry is echoed.
        let p = presented("?token=abc", &["chat, token.abc"]);
        assert_eq!(token(&p), Ok(Some("abc")));
        assert_eq!(p.echo.unwrap(), "token.abc");
        // Two different ones: refused, but still echoed (the close must reach a browser).
        let p = presented("?token=abc", &["token.xyz"]);
        assert_eq!(token(&p), Err(TWO_TOKENS));
        assert_eq!(p.echo.unwrap(), "token.xyz");
        assert_eq!(token(&presented("?token=a&token=b", &[])), Err(TWO_TOKENS));
        assert_eq!(
            token(&presented("", &["token.a", "token.b"])),
            Err(TWO_TOKENS)
        );
        // An empty entry is absent too, yet echoed.
        let p = presented("?token=abc", &["token."]);
        assert_eq!(token(&p), Ok(Some("abc")));
        assert_eq!(p.echo.unwrap(), "token.");
        assert!(TWO_TOKENS.len() <= 123, "fits a close reason");
    }
}
