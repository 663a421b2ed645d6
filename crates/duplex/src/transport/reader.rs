//! The connection task: reads the socket, decodes frames, drives the
//! session, and on the way out releases every subscription and waits for
//! the writer. The read buffer exists only while bytes are in flight: an
//! idle connection waits for readability holding no buffer at all.

use std::sync::Arc;

use bytes::BytesMut;
use duplex_protocol::code::CloseCode;
use duplex_protocol::ws::{encode_frame, Decoder, DecoderLimits, Event, OpCode};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use super::{writer, CLOSE_GRACE};
use crate::conn::Conn;
use crate::node::Node;
use crate::session::{Flow, Session};
use crate::stats::Stats;

/// Smallest read; larger when a frame in progress needs more.
const READ_CHUNK: usize = 4096;

/// Why reading stopped, for the log line.
#[derive(Debug)]
enum End {
    PeerClosed(Option<u16>),
    Eof,
    ReadError(std::io::Error),
    ProtocolError(u16, String),
    SessionClosed(CloseCode, String),
    Aborted,
}

/// Waits until the socket is readable, through the socket's single reader
/// waker slot rather than `readable()`'s waiter list. This matters: hyper
/// leaves its connection task's waker in that slot when it hands the socket
/// over, and until something replaces it, that waker keeps the finished
/// task's ~1.2 KiB allocation alive for the whole life of the connection
/// (found with massif: it was a quarter of all idle memory).
fn read_ready(
    socket: &OwnedReadHalf,
) -> impl std::future::Future<Output = std::io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| socket.as_ref().poll_read_ready(cx))
}

/// After we fail a connection, keep reading (and discarding) for a moment
/// so the peer can read our close frame: closing a socket with unread input
/// makes the kernel send a reset, which can destroy the close frame in flight.
async fn linger(socket: &OwnedReadHalf, conn: &Conn) {
    let deadline = tokio::time::sleep(CLOSE_GRACE);
    tokio::pin!(deadline);
    let mut sink = [0u8; 4096];
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = conn.abort.cancelled() => return,
            ready = read_ready(socket) => {
                if ready.is_err() {
                    return;
                }
                match socket.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// Runs one upgraded connection to its end.
pub(crate) async fn run(
    node: Node,
    conn: Arc<Conn>,
    stream: TcpStream,
    leftover: BytesMut,
    mut session: Session,
) {
    let (socket, write_half) = stream.into_split();
    conn.outbound.attach(write_half);
    let mut writer = tokio::spawn(writer::run(Arc::clone(&conn)));
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
                    conn.close(code, &e.to_string(), false);
                    break 'conn End::ProtocolError(code, e.to_string());
                }
            };
            conn.touch(node.now_ms());
            match event {
                Event::Message { kind, payload } => {
                    if let Flow::Close(code, reason) =
                        // Boxed: an idle connection's task must not carry the
                        // state of the largest command handler (measured: the
                        // inline future made every task ~5 KiB).
                        Box::pin(session.on_message(&node, &conn, kind, payload)).await
                    {
                        conn.close(code.as_u16(), &reason, false);
                        break 'conn End::SessionClosed(code, reason);
                    }
                }
                Event::Ping(payload) => {
                    node.send_to(&conn, encode_frame(OpCode::Pong, &payload), "pong");
                }
                Event::Pong(_) => {}
                Event::Close { code, .. } => {
                    // Echo the peer's code, as RFC 6455 5.5.1 asks.
                    conn.echo_close(code.unwrap_or(1000));
                    break 'conn End::PeerClosed(code);
                }
            }
        }
        if buf.is_empty() && !decoder.in_message() {
            // Release the buffer while idle; it is re-allocated on the next read.
            buf = BytesMut::new();
        }
        let wanted = decoder
            .bytes_needed(&buf)
            .clamp(READ_CHUNK, config.max_message_size + 14);
        tokio::select! {
            biased;
            _ = conn.abort.cancelled() => break End::Aborted,
            ready = read_ready(&socket) => {
                if let Err(e) = ready {
                    break End::ReadError(e);
                }
                buf.reserve(wanted);
                match socket.try_read_buf(&mut buf) {
                    Ok(0) => break End::Eof,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => break End::ReadError(e),
                }
            }
        }
    };
    match &end {
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
        End::ReadError(e) => {
            tracing::debug!(conn = %conn.id, error = %e, "connection ended: read failed")
        }
        End::Eof => tracing::debug!(conn = %conn.id, "connection ended: end of stream"),
        End::Aborted => tracing::debug!(conn = %conn.id, "connection ended by the server"),
    }
    drop(buf);
    Box::pin(node.deregister(&conn, session.into_channels())).await;
    if matches!(end, End::ProtocolError(..) | End::SessionClosed(..)) {
        Box::pin(linger(&socket, &conn)).await;
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
