//! The writer task: one per connection. Producers write directly to an idle
//! socket (see `outbound`); the writer takes over whenever frames had to be
//! queued (socket full, or a batch in flight): it takes all of them and
//! writes them with as few vectored writes as the kernel allows, so a burst
//! of N messages costs one wake-up and (usually) one syscall, not N.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use duplex_protocol::push;
use duplex_protocol::ws::encode_close;
use tokio::net::TcpStream;

use super::CLOSE_GRACE;
use crate::conn::Conn;
use crate::hub::Wire;

/// Most frames handed to one `writev` (Linux allows 1024 iovecs).
const MAX_IOVECS: usize = 256;
/// A batch buffer grown past this is released after use.
const KEEP_BATCH_CAPACITY: usize = 64;

/// Runs until the connection closes; always ends with `conn.abort` cancelled.
pub(crate) async fn run(conn: Arc<Conn>) {
    let Some(socket) = conn.outbound.socket() else {
        conn.abort.cancel();
        return;
    };
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    loop {
        let closing = conn.outbound.take(&mut batch);
        if !batch.is_empty() {
            let result = {
                let write = write_batch(socket, &mut batch);
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        biased;
                        _ = conn.abort.cancelled() => break None,
                        result = &mut write => break Some(result),
                        // A hard close (slow consumer) while the socket is stuck:
                        // stop writing; a close frame cannot follow a partial frame.
                        _ = conn.outbound.wait() => {
                            if conn.outbound.is_hard_closing() {
                                break None;
                            }
                        }
                    }
                }
            };
            match result {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::debug!(conn = %conn.id, error = %e, "write failed");
                    break;
                }
                None => break,
            }
            batch.clear();
            if batch.capacity() > KEEP_BATCH_CAPACITY {
                batch = VecDeque::new();
            }
            continue;
        }
        if let Some(closing) = closing {
            let mut frames = Vec::with_capacity(2);
            if closing.announce && conn.wire == Wire::Native {
                frames.push(push::disconnect(closing.code, &closing.reason));
            }
            frames.push(encode_close(closing.code, &closing.reason));
            let mut last: VecDeque<Bytes> = frames.into();
            if let Ok(Ok(())) =
                tokio::time::timeout(CLOSE_GRACE, write_batch(socket, &mut last)).await
            {
                let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
                // Give the peer a moment to answer with its close frame.
                tokio::select! {
                    _ = conn.done_reading.cancelled() => {}
                    _ = conn.abort.cancelled() => {}
                    _ = tokio::time::sleep(CLOSE_GRACE) => {}
                }
            }
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

/// Writes every frame of `batch`, front to back, with vectored writes.
async fn write_batch(socket: &TcpStream, batch: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    while !batch.is_empty() {
        let attempt = {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for frame in batch.iter().take(MAX_IOVECS) {
                iov[n] = IoSlice::new(frame);
                n += 1;
            }
            socket.try_write_vectored(&iov[..n])
        };
        let written = match attempt {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                socket.writable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let Some(front) = batch.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                batch.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}
