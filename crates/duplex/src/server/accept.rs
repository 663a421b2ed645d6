//! Accepting connections: the socket table's admission, TCP tuning, the TLS
//! handshake, and HTTP/1.1 (with upgrades) on each connection.

use super::*;

/// Bytes of a client's outgoing stream the kernel may hold beyond what the
/// client's receive window lets it send. Left alone, Linux grows that to 4
/// MiB per socket (tcp_wmem) for a client that stopped reading, out of
/// sight of `max_queued_bytes`: kept small, the backlog stays in the
/// node's own queue, where the slow-consumer cut sees it (BENCHMARKS.md,
/// "Stalled clients").
const KERNEL_UNSENT_LIMIT: u32 = 128 * 1024;

/// What the kernel may hold for one client, and for how long.
///
/// `unacked_limit`: a peer that acknowledges nothing for this long, because
/// it is gone or keeps its receive window shut, is given up by the kernel
/// (`TCP_USER_TIMEOUT`; the heartbeat's allowance for a silent client).
/// Without it, a socket the node has closed with bytes still unsent stays
/// in FIN-WAIT-1 holding its buffers for as long as a live peer answers
/// zero-window probes (without end), or ~15 minutes of retransmissions to a
/// vanished one.
fn tune_client_socket(tcp: &TcpStream, unacked_limit: Duration) {
    let _ = tcp.set_nodelay(true);
    let socket = socket2::SockRef::from(tcp);
    let _ = socket.set_tcp_notsent_lowat(KERNEL_UNSENT_LIMIT);
    let _ = socket.set_tcp_user_timeout(Some(unacked_limit));
}

pub(super) async fn accept_loop(
    listener: &TcpListener,
    state: &AppState,
    shutdown: impl Future<Output = ()>,
) {
    let app = api::router(state.clone());
    let unacked_limit = {
        let config = state.node.config();
        config.ping_interval + config.pong_timeout
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = accept(listener, &state.sockets) => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let socket = match state.sockets.admit(remote) {
            Admission::Admitted { socket, .. } => socket,
            Admission::Refused => {
                if state.tls.0.load().is_none() {
                    let _ = tcp.try_write(&sockets::refusal());
                }
                continue; // dropped: closed at once, its descriptor free again
            }
        };
        tune_client_socket(&tcp, unacked_limit);
        let in_request = Arc::clone(&socket);
        let service =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(remote));
                    req.extensions_mut().insert(Arc::clone(&in_request));
                    req
                });
        let service = TowerToHyperService::new(service);
        let conn = Connection {
            remote,
            node: state.node.clone(),
            shutdown: state.shutdown.clone(),
            socket,
        };
        match state.tls.0.load_full() {
            None => state.tracker.spawn(serve_http(tcp, service, conn)),
            Some(acceptor) => {
                state
                    .tracker
                    .spawn(serve_tls(TlsAcceptor::clone(&acceptor), tcp, service, conn))
            }
        };
    }
}

/// Accepts the next connection once the socket table has room for it:
/// while evicted connections have not closed their sockets yet, newcomers
/// wait in the listen backlog (which costs no descriptor) rather than be
/// refused. A table that stays full for a second (evicted tasks stuck)
/// lets accept go on: then the newcomer is refused at once.
async fn accept(
    listener: &TcpListener,
    sockets: &Sockets,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    let _ = tokio::time::timeout(Duration::from_secs(1), sockets.room()).await;
    listener.accept().await
}

/// The router as hyper drives it, one connection at a time; named once so
/// both the TCP and the TLS paths can say it.
trait HttpService:
    hyper::service::Service<
        axum::http::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Future: Send + 'static,
        Error: std::error::Error + Send + Sync + 'static,
    > + Send
    + 'static
{
}

impl<T> HttpService for T where
    T: hyper::service::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Future: Send + 'static,
            Error: std::error::Error + Send + Sync + 'static,
        > + Send
        + 'static
{
}

/// What a connection task needs besides its stream and service.
struct Connection {
    remote: SocketAddr,
    node: Node,
    shutdown: CancellationToken,
    /// Its place in the socket table; a newcomer may evict it.
    socket: Arc<Socket>,
}

/// Completes the TLS handshake, then serves HTTP over it. The handshake is
/// bounded by `handshake_timeout` (a client that opens TCP and never sends a
/// ClientHello must not hold a task), and abandoned when shutdown starts or
/// the connection is evicted.
async fn serve_tls<S>(acceptor: TlsAcceptor, tcp: TcpStream, service: S, conn: Connection)
where
    S: HttpService,
{
    let (remote, timeout) = (conn.remote, conn.node.config().handshake_timeout);
    let stream = tokio::select! {
        _ = conn.shutdown.cancelled() => return,
        _ = conn.socket.evicted() => return,
        accepted = tokio::time::timeout(timeout, acceptor.accept(tcp)) => match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                Stats::bump(&conn.node.stats().handshake_timeouts);
                tracing::info!(%remote, "closing connection: TLS handshake not completed within handshake_timeout");
                return;
            }
        },
    };
    serve_http(stream, service, conn).await;
}

/// Serves HTTP/1.1 (with upgrades) on one connection, plain TCP or TLS,
/// until it ends, is upgraded, or is evicted (closed at once).
async fn serve_http<I, S>(io: I, service: S, conn: Connection)
where
    S: HttpService,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        remote,
        node,
        shutdown,
        socket,
    } = conn;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(node.config().handshake_timeout);
    let http = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(http);
    let result = tokio::select! {
        result = http.as_mut() => result,
        _ = socket.evicted() => {
            tracing::debug!(%remote, "http connection evicted for a newcomer");
            return;
        }
        _ = shutdown.cancelled() => {
            http.as_mut().graceful_shutdown();
            http.await
        }
    };
    match result {
        Ok(()) => tracing::trace!(%remote, "http connection ended"),
        Err(e) if e.is_timeout() => {
            Stats::bump(&node.stats().handshake_timeouts);
            tracing::info!(%remote, "closing connection: request headers not received within handshake_timeout");
        }
        Err(e) => tracing::debug!(%remote, error = %e, "http connection ended with an error"),
    }
}
