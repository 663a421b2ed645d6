//! What every HTTP handler can reach: the router's state.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::guard::HttpGuard;
use super::origin::OriginPolicy;
use crate::node::Node;
use crate::transport::sockets::Sockets;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The node.
    pub node: Node,
    /// Cancelled when shutdown starts.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Which web pages may open WebSockets.
    pub(crate) origins: Arc<OriginPolicy>,
    /// What `/metrics` renders.
    pub(crate) metrics: Arc<prometheus_client::registry::Registry>,
    /// Which names the node answers to, and how long a request body may take.
    pub(crate) guard: Arc<HttpGuard>,
    /// Every accepted connection, counted until it closes.
    pub(crate) sockets: Arc<Sockets>,
    /// The TLS certificate new connections get; a reload swaps it.
    pub(crate) tls: Arc<LiveTls>,
}

/// The TLS acceptor of new connections (none: plain), swapped by a reload.
#[derive(Default)]
pub(crate) struct LiveTls(pub(crate) ArcSwapOption<TlsAcceptor>);

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls")
            .field("on", &self.0.load().is_some())
            .finish()
    }
}
