//! The connection task: reads the socket, decodes frames, drives the
//! session, and on the way out releases every subscription and waits for
//! the writer. On plain TCP the read buffer exists only while bytes are in
//! flight: an idle connection waits for readability holding no buffer at
//! all. The loop is generic over the stream (see `stream`), so TLS
//! connections run the same code through their own compiled copy.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use duplex_protocol::code::CloseCode;
use duplex_protocol::ws::{encode_frame, Decoder, DecoderLimits, Event, OpCode};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::stream::{ReadSource, Tls, TlsReader};
use super::{writer, CLOSE_GRACE};
use crate::conn::Conn;
use crate::conn::Queued;
use crate::node::Node;
use crate::session::{Flow, Session};
use crate::stats::{Disconnect, Stats};

/// Smallest read; larger when a frame in progress needs more.
const READ_CHUNK: usize = 4096;

/// How much to read next: at least a chunk, at most one whole frame (a
/// small `max_message_size` must not put that bound under the chunk).
fn read_size(needed: usize, max_message_size: usize) -> usize {
    needed.clamp(READ_CHUNK, (max_message_size + 14).max(READ_CHUNK))
}

/// Why reading stopped, for the log line.
#[derive(Debug)]
enum End {
    /// The peer began the close with this frame's code.
    PeerClosed(Option<u16>),
    /// The peer's close frame answered ours.
    PeerAnswered(Option<u16>),
    Eof,
    ReadError(std::io::Error),
    ProtocolError(u16, String),
    SessionClosed(CloseCode, String),
    Aborted,
}

/// A control frame from the peer: ping answered with pong, close echoed
/// (RFC 6455 5.5.1) and the end of reading.
fn on_control(node: &Node, conn: &Conn, event: Event) -> Option<End> {
    match event {
        Event::Ping(payload) => {
            node.send_to(conn, encode_frame(OpCode::Pong, &payload), "pong");
            None
        }
        Event::Close { code, .. } => {
            let answered_ours = conn.outbound.is_closing();
            conn.echo_close(code.unwrap_or(1000));
            Some(if answered_ours {
                End::PeerAnswered(code)
            } else {
                End::PeerClosed(code)
            })
        }
        Event::Pong(_) | Event::Message { .. } => None,
    }
}

/// Logs why a connection ended and counts it by reason.
fn record_end(node: &Node, conn: &Conn, end: &End) {
    match end {
        End::ProtocolError(code, reason) => {
            Stats::bump(&node.stats().protocol_errors);
            tracing::info!(conn = %conn.id, addr = %conn.remote, code, reason, "closing connection: protocol error");
        }
        End::SessionClosed(code, reason) => {
            tracing::info!(conn = %conn.id, addr = %conn.remote, code = code.as_u16(), reason, "closing connection");
        }
        End::PeerClosed(code) => {
            tracing::debug!(conn = %conn.id, code, "client closed the connection")
        }
        End::PeerAnswered(code) => {
            tracing::debug!(conn = %conn.id, code, "client answered the server's close")
        }
        End::ReadError(e) => {
            tracing::debug!(conn = %conn.id, error = %e, "connection ended: read failed")
        }
        End::Eof => tracing::debug!(conn = %conn.id, "connection ended: end of stream"),
        End::Aborted => tracing::debug!(conn = %conn.id, "connection ended by the server"),
    }
    node.stats().disconnected(match end {
        End::PeerClosed(_) => Disconnect::ClientClose,
        End::PeerAnswered(_) | End::Aborted => Disconnect::ServerCut,
        End::Eof => Disconnect::Eof,
        End::ReadError(_) => Disconnect::ReadError,
        End::ProtocolError(..) => Disconnect::ProtocolError,
        End::SessionClosed(..) => Disconnect::SessionClose,
    });
}

/// After we fail a connection, keep reading (and discarding) for a moment
/// so the peer can read our close frame: closing a socket with unread input
/// makes the kernel send a reset, which can destroy the close frame in flight.
async fn linger<R: ReadSource>(socket: &mut R, conn: &Conn) {
    let deadline = tokio::time::sleep(CLOSE_GRACE);
    tokio::pin!(deadline);
    let mut sink = BytesMut::new();
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = conn.abort.cancelled() => return,
            ready = socket.ready(READ_CHUNK) => {
                if ready.is_err() {
                    return;
                }
                match socket.try_read_buf(&mut sink, READ_CHUNK) {
                    Ok(0) => return,
                    Ok(_) => sink.clear(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// A connection's stream, split: the read half stays with the reader task,
/// the write half goes to a writer task started here.
pub(crate) trait Halves: Send + 'static {
    /// What the reader task reads from.
    type Reader: ReadSource;
    /// Splits the stream and starts the connection's writer task.
    fn start(self, conn: &Arc<Conn>) -> (Self::Reader, JoinHandle<()>);
}

impl Halves for TcpStream {
    type Reader = OwnedReadHalf;

    /// Producers write directly to the attached write half while the
    /// queue is idle; the writer task takes over when it is not.
    fn start(self, conn: &Arc<Conn>) -> (OwnedReadHalf, JoinHandle<()>) {
        let (socket, write_half) = self.into_split();
        conn.outbound.attach(write_half);
        (socket, tokio::spawn(writer::run(Arc::clone(conn))))
    }
}

impl Halves for Box<Tls> {
    type Reader = TlsReader;

    /// The write half goes to the writer task alone (producers only
    /// queue): rustls state cannot be written from several threads without
    /// a lock on every delivery. Boxed until here, so that a connection
    /// task's future does not carry rustls' state inline.
    fn start(self, conn: &Arc<Conn>) -> (TlsReader, JoinHandle<()>) {
        let (socket, write_half) = tokio::io::split(*self);
        let writer = tokio::spawn(writer::run_tls(Arc::clone(conn), write_half));
        (TlsReader::new(socket), writer)
    }
}

/// Runs one upgraded connection, plain TCP or TLS, to its end.
///
/// Not a wrapper `async fn` around the generic loop: that would store the
/// arguments twice in every connection's future (once in each).
pub(crate) fn run<S: Halves>(
    node: Node,
    conn: Arc<Conn>,
    stream: S,
    leftover: BytesMut,
    session: Session,
) -> impl std::future::Future<Output = ()> + Send {
    serve(node, conn, stream, leftover, session)
}

/// The read loop, then the teardown.
async fn serve<S: Halves>(
    node: Node,
    conn: Arc<Conn>,
    stream: S,
    leftover: BytesMut,
    mut session: Session,
) {
    let (mut socket, writer) = stream.start(&conn);
    // Frames queued before the socket was attached (between subscribing and
    // the handover) are waiting: let the writer look.
    conn.outbound.kick();
    let config = node.config();
    let mut decoder = Decoder::new(DecoderLimits {
        max_message_size: config.max_message_size,
        max_fragments: config.max_fragments,
    });
    let mut buf = leftover;
    let end = 'conn: loop {
        loop {
            let event = match decoder.decode(&mut buf) {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => {
                    let code = e.close_code();
                    conn.close(code, &e.to_string(), Queued::Drop);
                    break 'conn End::ProtocolError(code, e.to_string());
                }
            };
            conn.touch(node.now_ms());
            match event {
                Event::Message { kind, payload } => {
                    let stats = node.stats();
                    Stats::bump(&stats.client_messages);
                    stats.client_bytes.fetch_add(payload.len() as u64, Relaxed);
                    if let Flow::Close(code, reason) =
                        // Boxed: an idle connection's task must not carry the
                        // state of the largest command handler (measured: the
                        // inline future made every task ~5 KiB).
                        Box::pin(session.on_message(&node, &conn, kind, payload)).await
                    {
                        conn.close(code.as_u16(), &reason, Queued::Drop);
                        break 'conn End::SessionClosed(code, reason);
                    }
                }
                control => {
                    if let Some(end) = on_control(&node, &conn, control) {
                        break 'conn end;
                    }
                }
            }
        }
        if buf.is_empty() && !decoder.in_message() {
            // Release the buffer while idle; it is re-allocated on the next read.
            buf = BytesMut::new();
        }
        let wanted = read_size(decoder.bytes_needed(&buf), config.max_message_size);
        tokio::select! {
            biased;
            _ = conn.abort.cancelled() => break End::Aborted,
            ready = socket.ready(wanted) => {
                if let Err(e) = ready {
                    break End::ReadError(e);
                }
                match socket.try_read_buf(&mut buf, wanted) {
                    Ok(0) => break End::Eof,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => break End::ReadError(e),
                }
            }
        }
    };
    record_end(&node, &conn, &end);
    drop(buf);
    Box::pin(node.deregister(&conn, session.into_channels())).await;
    let failed_it = matches!(end, End::ProtocolError(..) | End::SessionClosed(..));
    Box::pin(stop_writing(&conn, socket, writer, failed_it)).await;
}

/// The end of a connection's reading: a client we failed first gets a moment
/// to read our close frame (`linger`), then the writer is stopped, waited
/// for at most [`CLOSE_GRACE`] and cut after that.
async fn stop_writing<R: ReadSource>(
    conn: &Conn,
    mut socket: R,
    mut writer: JoinHandle<()>,
    failed_it: bool,
) {
    if failed_it {
        linger(&mut socket, conn).await;
    }
    conn.done_reading.cancel();
    if !conn.outbound.is_closing() {
        // The peer went away without a close handshake: nothing left to send.
        conn.abort.cancel();
    }
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        conn.abort.cancel();
        let _ = writer.await;
    }
}
