//! Listener, HTTP serving, and the orderly shutdown.
//!
//! [`run`] takes an already bound listener (tests bind port 0) and a future
//! that resolves when the node must stop. Shutdown: stop accepting; remove
//! the node's presence members at once (their leaves pushed); tell
//! every client "going away, reconnect" (close 1001) after flushing what is
//! queued for it; wait up to `shutdown_timeout` for the connections to end,
//! then cut the rest; leave the broker cleanly; end the node's background
//! tasks and wait for them (none outlives [`run`]).

mod accept;
mod reload;

use accept::accept_loop;
use reload::apply_reloads;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::extract::ConnectInfo;
use duplex_protocol::code::CloseCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::api::guard::HttpGuard;
use crate::api::origin::OriginPolicy;
use crate::api::{AppState, LiveTls};
use crate::config::Config;
use crate::conn::coalesce;
use crate::conn::Queued;
use crate::node::{Node, NodeError};
use crate::stats::Stats;
use crate::tls::TlsError;
use crate::transport::sockets::{self, Admission, Socket, Sockets};
use crate::{api, heartbeat};

/// Pending-connection queue of the listening socket. The OS default (128 via
/// mio) overflows when a few hundred clients reconnect at once, and every
/// dropped SYN costs that client a 1 s retransmit (measured: 2000 connects
/// at 256 in flight took 1.03 s with 128, see BENCHMARKS.md).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket the way a node wants it (large backlog, reuse).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Serves until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (_keep, reloads) = mpsc::channel(1);
    run_reloading(listener, config, shutdown, reloads).await
}

/// [`run`], also taking new configs while serving (SIGHUP): each is
/// applied as `config::reload` plans it and logged.
pub async fn run_reloading(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    reloads: mpsc::Receiver<Config>,
) -> Result<(), ServerError> {
    let tls = if config.tls() {
        Some(crate::tls::acceptor(
            Path::new(&config.tls_cert),
            Path::new(&config.tls_key),
        )?)
    } else {
        None
    };
    let listen_ip = listener.local_addr()?.ip();
    let origins = OriginPolicy::from_setting(&config.allowed_origins, listen_ip.is_loopback());
    let guard = HttpGuard::new(
        &config.allowed_hosts,
        listen_ip.is_loopback(),
        config.request_timeout,
    );
    let node = Node::start(config)?;
    let state = AppState {
        node: node.clone(),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        origins: Arc::new(origins),
        metrics: Arc::new(crate::metrics::registry(&node)),
        guard: Arc::new(guard),
        sockets: Arc::new(socket_table(&node)),
        tls: Arc::new(LiveTls(ArcSwapOption::new(tls.map(Arc::new)))),
    };
    node.tasks().spawn(apply_reloads(state.clone(), reloads));
    node.listen_for_orders();
    node.consume_ingest();
    wait_for_broker(&node).await;
    let tasks = node.tasks();
    tasks.spawn(heartbeat::run(node.clone(), state.shutdown.clone()));
    let coalescer = Arc::clone(node.coalescer());
    for lane in 0..coalescer.lanes() {
        let registry = node.clone();
        let connection = move |seq| registry.connection_by_seq(seq);
        let lane = coalesce::run(
            Arc::clone(&coalescer),
            lane,
            connection,
            state.shutdown.clone(),
        );
        tasks.spawn(lane);
    }
    let watch = coalesce::watch(coalescer, node.stats_handle(), state.shutdown.clone());
    tasks.spawn(watch);
    let addr = listener.local_addr()?;
    let tls_on = state.tls.0.load().is_some();
    let (ws, http) = if tls_on {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    tracing::info!(
        %addr,
        node = node.id(),
        broker = node.broker_state().kind,
        api_key = node.config().api_keys().next().is_some(),
        token_auth = node.config().token_auth(),
        tls = tls_on,
        "duplex listening: plain clients at {ws}://{addr}/, native protocol at {ws}://{addr}/ws, HTTP API at {http}://{addr}/api"
    );
    if node.config().insecure && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "INSECURE: listening on a non-loopback address without client authentication; anyone who can reach it can read and write every channel");
    }
    accept_loop(&listener, &state, shutdown).await;
    drop(listener);
    shut_down(&state).await;
    Ok(())
}

/// The socket table under the process's open-file limit, raised to its
/// hard limit first; says what it can hold, and warns when the connection
/// limits promise more than the descriptors allow.
fn socket_table(node: &Node) -> Sockets {
    let config = node.config();
    let http_upstream = !config.upstream_url.is_empty() || node.permissions().has_upstream_urls();
    let reserve = sockets::FD_RESERVE
        + if http_upstream {
            config.upstream_concurrency as u64
        } else {
            0
        };
    let (limit, before) = sockets::raise_fd_limit().unwrap_or((u64::MAX, u64::MAX));
    let table = Sockets::new(
        node.stats_handle(),
        config.max_http_connections,
        limit,
        reserve,
    );
    tracing::info!(
        fd_limit = limit,
        raised_from = before,
        client_sockets = table.budget(),
        reserved = reserve,
        "open-file limit"
    );
    let promised = [config.max_connections, config.max_http_connections]
        .iter()
        .map(|&n| if n == 0 { u64::MAX } else { n as u64 })
        .fold(reserve, u64::saturating_add);
    // With the defaults as shipped (max_connections 100,000) most machines'
    // limits are lower: say so once, quietly; an operator who chose the
    // limits gets a warning.
    let defaults = Config::default();
    let chosen = config.max_connections != defaults.max_connections
        || config.max_http_connections != defaults.max_http_connections;
    if promised > limit {
        let budget = table.budget();
        let what =
            "the open-file limit is below max_connections + max_http_connections + the reserve";
        let then = "a new connection evicts the oldest HTTP connection of the busiest address, or is refused (503) when all are WebSockets; raise the hard limit (LimitNOFILE=, ulimit -Hn) or lower the limits";
        if chosen {
            tracing::warn!(
                fd_limit = limit,
                max_connections = config.max_connections,
                max_http_connections = config.max_http_connections,
                reserved = reserve,
                "{what}: past {budget} open sockets, {then}"
            );
        } else {
            tracing::info!(
                fd_limit = limit,
                max_connections = config.max_connections,
                "{what} (default limits): at most {budget} open sockets; past that, {then}"
            );
        }
    }
    table
}

/// Gives the broker (and a JWKS, if configured) up to `redis_timeout` to
/// connect before serving, so the first clients are not served by a node that
/// cannot reach Redis or check tokens yet. If it cannot, the node starts
/// degraded (`/health` 503) and keeps trying.
async fn wait_for_broker(node: &Node) {
    let deadline = tokio::time::Instant::now() + node.config().redis_timeout;
    let ready = || node.is_healthy() && node.verifier().is_none_or(|v| v.jwks_ready());
    while !ready() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if node.verifier().is_some_and(|v| !v.jwks_ready()) {
        tracing::warn!(
            url = node.config().token_jwks_url,
            "no keys from the JWKS yet; tokens signed with them are refused until a fetch succeeds"
        );
    }
    if !node.is_healthy() {
        let state = node.broker_state();
        tracing::warn!(error = state.last_error.as_deref().unwrap_or(""), "broker unreachable; starting degraded and retrying in the background (/health answers 503)");
    }
}

async fn shut_down(state: &AppState) {
    let node = &state.node;
    // Members leave at once, in one call, before their connections close
    // (each of which would otherwise be a leave of its own).
    node.forget_presence().await;
    let connections = node.connections();
    tracing::info!(
        connections = connections.len(),
        "shutting down: closing client connections (1001, reconnect)"
    );
    state.shutdown.cancel();
    for conn in &connections {
        conn.close(
            CloseCode::GoingAway.as_u16(),
            "server shutting down",
            Queued::Flush,
        );
    }
    state.tracker.close();
    let timeout = node.config().shutdown_timeout;
    if tokio::time::timeout(timeout, state.tracker.wait())
        .await
        .is_err()
    {
        let left = node.connections();
        tracing::warn!(
            connections = left.len(),
            "shutdown timeout: cutting remaining connections"
        );
        for conn in left {
            conn.abort.cancel();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), state.tracker.wait()).await;
    }
    node.close_broker().await;
    node.stop_tasks().await;
    tracing::info!("shutdown complete");
}
