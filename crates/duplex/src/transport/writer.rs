//! The writer task: one per connection. Producers write directly to an idle
//! socket (see `outbound`); the writer takes over whenever frames had to be
//! queued (socket full, or a batch in flight): it takes all of them and
//! writes them with as few vectored writes as the kernel allows, so a burst
//! of N messages costs one wake-up and (usually) one syscall, not N.
//!
//! Frame boundaries are sacred: a close frame is only ever written after the
//! last byte of the frame before it. When a close that drops queued frames
//! arrives mid-frame, the writer finishes that frame first; if the peer does
//! not take it within [`CLOSE_GRACE`], the connection is dropped without a
//! close frame rather than with a corrupt one.
//!
//! The loop is generic over the stream's [`WriteSink`]: plain TCP shares the
//! socket with direct-writing producers, TLS owns its write half here.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use duplex_protocol::push;
use duplex_protocol::ws::encode_close;
use tokio::io::WriteHalf;

use super::stream::{Attached, SinkSource, Tls, WriteSink};
use super::CLOSE_GRACE;
use crate::conn::outbound::Closing;
use crate::conn::Conn;
use crate::message::Wire;

/// Most frames handed to one `writev` (Linux allows 1024 iovecs).
const MAX_IOVECS: usize = 256;
/// A batch buffer grown past this is released after use.
const KEEP_BATCH_CAPACITY: usize = 64;

/// Why writing stopped early.
#[derive(Debug)]
enum Stop {
    Io(std::io::Error),
    Aborted,
    StuckWhileClosing,
}

/// Runs a plain TCP connection's writer until the connection closes;
/// always ends with `conn.abort` cancelled.
pub(crate) fn run(conn: Arc<Conn>) -> impl Future<Output = ()> + Send {
    drive(conn, Attached)
}

/// Runs a TLS connection's writer, the only one writing to `socket`, until
/// the connection closes; always ends with `conn.abort` cancelled.
pub(crate) fn run_tls(conn: Arc<Conn>, socket: WriteHalf<Tls>) -> impl Future<Output = ()> + Send {
    drive(conn, socket)
}

/// The writer loop. Not wrapped in the `run` functions' own `async fn`s:
/// that would store the arguments twice in every connection's writer.
async fn drive<S: SinkSource>(conn: Arc<Conn>, mut source: S) {
    let Some(mut socket) = source.open(&conn) else {
        conn.abort.cancel();
        return;
    };
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    loop {
        let taken = conn.outbound.take(&mut batch);
        if !batch.is_empty() {
            match write_batch(
                &conn,
                &mut socket,
                &mut batch,
                Batch::Data {
                    front_partial: taken.front_partial,
                },
            )
            .await
            {
                Ok(()) => {}
                Err(Stop::Io(e)) => {
                    tracing::debug!(conn = %conn.id, error = %e, "write failed");
                    break;
                }
                Err(Stop::StuckWhileClosing) => {
                    tracing::debug!(conn = %conn.id, "peer took nothing while closing; dropping it");
                    break;
                }
                Err(Stop::Aborted) => break,
            }
            if batch.capacity() > KEEP_BATCH_CAPACITY {
                batch = VecDeque::new();
            }
            continue;
        }
        if let Some(closing) = taken.closing {
            // Boxed: the close path's timers would otherwise sit in every
            // idle connection's task.
            Box::pin(finish(&conn, &mut socket, closing)).await;
            break;
        }
        tokio::select! {
            biased;
            _ = conn.abort.cancelled() => break,
            _ = conn.outbound.wait() => {}
        }
    }
    conn.abort.cancel();
}

/// Writes the last frames (disconnect push on `/ws`, close frame), half-closes
/// the socket and gives the peer a moment to answer with its close frame.
async fn finish<S: WriteSink>(conn: &Conn, socket: &mut S, closing: Closing) {
    let mut last = VecDeque::with_capacity(2);
    if closing.announce && conn.wire == Wire::Native {
        last.push_back(push::disconnect(closing.code, &closing.reason));
    }
    last.push_back(encode_close(closing.code, &closing.reason));
    let written = tokio::time::timeout(
        CLOSE_GRACE,
        write_batch(conn, socket, &mut last, Batch::Closing),
    )
    .await;
    if let Ok(Ok(())) = written {
        // Immediate on TCP; on TLS it sends close_notify, which could wait.
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.shutdown()).await;
        tokio::select! {
            _ = conn.done_reading.cancelled() => {}
            _ = conn.abort.cancelled() => {}
            _ = tokio::time::sleep(CLOSE_GRACE) => {}
        }
    }
}

/// What a batch holds.
#[derive(Debug, Clone, Copy)]
enum Batch {
    /// Queued frames; `front_partial` when the first is the rest of a frame
    /// a producer began writing.
    Data { front_partial: bool },
    /// The last frames (disconnect push, close frame): always written whole.
    Closing,
}

/// Writes every frame of `batch`, front to back, with vectored writes, then
/// flushes what the stream buffered itself (nothing on TCP).
///
/// For data, it checks between writes for a close that drops queued frames:
/// then only the frame already begun is finished.
async fn write_batch<S: WriteSink>(
    conn: &Conn,
    socket: &mut S,
    batch: &mut VecDeque<Bytes>,
    kind: Batch,
) -> Result<(), Stop> {
    let (mut front_partial, is_data) = match kind {
        Batch::Data { front_partial } => (front_partial, true),
        Batch::Closing => (false, false),
    };
    loop {
        let closing_now = conn.outbound.is_hard_closing();
        if closing_now && is_data {
            batch.truncate(usize::from(front_partial));
        }
        let attempt = if batch.is_empty() {
            match socket.try_flush() {
                Ok(()) => return Ok(()),
                Err(e) => Err(e),
            }
        } else {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for frame in batch.iter().take(MAX_IOVECS) {
                iov[n] = IoSlice::new(frame);
                n += 1;
            }
            socket.try_write_vectored(&iov[..n])
        };
        match attempt {
            Ok(0) => return Err(Stop::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(mut left) => {
                while left > 0 {
                    let Some(front) = batch.front_mut() else {
                        break;
                    };
                    if front.len() <= left {
                        left -= front.len();
                        batch.pop_front();
                        front_partial = false;
                    } else {
                        front.advance(left);
                        front_partial = true;
                        left = 0;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if closing_now {
                    // Finishing the begun frame is worth a short wait, no more.
                    match tokio::time::timeout(CLOSE_GRACE, socket.ready()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(Stop::Io(e)),
                        Err(_) => return Err(Stop::StuckWhileClosing),
                    }
                    continue;
                }
                tokio::select! {
                    biased;
                    _ = conn.abort.cancelled() => return Err(Stop::Aborted),
                    ready = socket.ready() => ready.map_err(Stop::Io)?,
                    // A close may arrive while the socket is full.
                    _ = conn.outbound.wait() => {}
                }
            }
            Err(e) => return Err(Stop::Io(e)),
        }
    }
}
