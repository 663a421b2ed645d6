//! One client's outbound path: bounded queue, shared frames, coalesced writes.
//!
//! Producers (hub fan-out, replies, heartbeats) call [`Outbound::push`],
//! which never blocks. When nothing is queued and the writer task is idle,
//! it hands the frame straight to the socket with one non-blocking
//! `try_write`: no queueing, no task wake-up, the cheapest possible delivery
//! (a wake-up per delivery costs more than the write itself). Otherwise it
//! appends a reference to the already-encoded bytes, and the connection's
//! writer task takes everything queued at once and writes it with one
//! vectored write, so a busy client costs one syscall per batch, not per
//! message. When the queue passes its bounds the client is a slow consumer:
//! the queue is emptied (its memory freed at once), the connection is marked
//! closing, and the producer is told so it can count and log it. A slow
//! client therefore costs at most the bounds, and never delays anyone else.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, OnceLock};

use bytes::{Buf, Bytes};
use duplex_protocol::code::CloseCode;
use parking_lot::Mutex;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use super::coalesce::Coalescer;

/// Most frames one delayed flush hands to `writev`; the writer task takes
/// over the rest.
const FLUSH_IOVECS: usize = 64;

/// Bounds of one queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Most bytes queued and not yet taken by the writer.
    pub(crate) max_bytes: usize,
    /// Most frames queued and not yet taken by the writer.
    pub(crate) max_frames: usize,
}

/// How the connection is to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    /// Close code sent in the close frame.
    pub(crate) code: u16,
    /// Close reason (truncated to fit a control frame).
    pub(crate) reason: String,
    /// Write what is queued before the close frame (graceful) or drop it.
    pub(crate) flush: bool,
    /// Server-initiated: native clients get a `disconnect` push first.
    /// False when echoing the peer's own close.
    pub(crate) announce: bool,
}

/// What becomes of the frames queued before a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Written before the close frame (a graceful close).
    Flush,
    /// Dropped: the close frame goes out next.
    Drop,
}

/// Who ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closer {
    /// The server: native clients get a `disconnect` push first.
    Server,
    /// The peer, whose close frame is echoed.
    Peer,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The connection is already closing; the frame is dropped with it.
    Closed,
    /// This push overflowed the queue: the client is now being disconnected.
    SlowConsumer,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    closing: Option<Closing>,
    /// The writer holds frames taken from the queue and not yet written:
    /// producers must queue behind them to keep the order.
    writer_busy: bool,
    /// The front frame is the rest of a frame partly written already: it
    /// must be finished before anything else (a close frame) is written.
    partial_front: bool,
}

impl Queue {
    /// Drops queued frames, except the rest of a partly written frame.
    fn drop_queued(&mut self) {
        let keep = if self.partial_front {
            self.frames.pop_front()
        } else {
            None
        };
        self.frames = VecDeque::new();
        self.bytes = 0;
        if let Some(front) = keep {
            self.bytes = front.len();
            self.frames.push_back(front);
        }
    }
}

/// What the writer gets from [`Outbound::take`].
#[derive(Debug)]
pub(crate) struct Taken {
    /// A close request, to act on once the batch is written.
    pub(crate) closing: Option<Closing>,
    /// The batch starts with the rest of a partly written frame.
    pub(crate) front_partial: bool,
}

/// The queue plus the wake-up for its writer.
#[derive(Debug)]
pub(crate) struct Outbound {
    queue: Mutex<Queue>,
    wake: Notify,
    limits: QueueLimits,
    /// The socket's write half, once the upgrade handed it over.
    socket: OnceLock<OwnedWriteHalf>,
    /// Where to mark this connection dirty while writes are deferred.
    coalescer: Arc<Coalescer>,
    /// This connection's seq, its key in the lanes' dirty lists.
    seq: u64,
}

impl Outbound {
    pub(crate) fn new(limits: QueueLimits, coalescer: Arc<Coalescer>, seq: u64) -> Self {
        Outbound {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            limits,
            socket: OnceLock::new(),
            coalescer,
            seq,
        }
    }

    /// Hands the socket's write half to this connection (once). Plain TCP
    /// only: a TLS connection attaches none, so its producers always queue
    /// and its writer task alone writes through rustls.
    pub(crate) fn attach(&self, socket: OwnedWriteHalf) {
        if self.socket.set(socket).is_err() {
            debug_assert!(false, "socket attached twice");
        }
    }

    /// The write half, for the writer task.
    pub(crate) fn socket(&self) -> Option<&tokio::net::TcpStream> {
        self.socket.get().map(|s| s.as_ref())
    }

    /// The queue's bounds (what else holds frames for this client, such as
    /// a subscription catching up, holds no more than this).
    pub(crate) fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Drops what is queued and closes 3001: the client fell `behind` bytes.
    pub(crate) fn cut_slow(&self, behind: usize) {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return;
        }
        q.drop_queued();
        q.closing = Some(Closing {
            code: CloseCode::SlowConsumer.as_u16(),
            reason: format!("slow consumer: {behind} bytes queued"),
            flush: false,
            announce: true,
        });
        drop(q);
        self.wake.notify_one();
    }

    /// Queues a frame; on overflow starts a slow-consumer close.
    pub(crate) fn push(&self, mut frame: Bytes) -> Result<(), PushError> {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return Err(PushError::Closed);
        }
        let mut partial = false;
        let deferred = self.coalescer.deferring();
        if q.frames.is_empty() && !q.writer_busy && !deferred {
            if let Some(socket) = self.socket.get() {
                // Non-blocking; the lock only orders this client's producers.
                match socket.try_write(&frame) {
                    Ok(n) if n == frame.len() => return Ok(()),
                    Ok(n) => {
                        frame.advance(n);
                        partial = n > 0;
                    }
                    // Full socket or an error: queue it; the writer waits for
                    // room, or meets the error and ends the connection.
                    Err(_) => {}
                }
            }
        }
        // A lone frame larger than the byte bound still goes out when the
        // queue is empty: the bound is on backlog, not on message size.
        if q.frames.len() >= self.limits.max_frames
            || (q.bytes > 0 && q.bytes + frame.len() > self.limits.max_bytes)
        {
            let queued = q.bytes;
            drop(q);
            self.cut_slow(queued);
            return Err(PushError::SlowConsumer);
        }
        let was_empty = q.frames.is_empty();
        let writer_idle = !q.writer_busy;
        q.partial_front |= partial;
        q.bytes += frame.len();
        q.frames.push_back(frame);
        let full = q.bytes >= self.flush_bytes();
        drop(q);
        if deferred && writer_idle && full {
            // Enough waiting to fill a write: no point waiting longer (and
            // the delay must not push a fast reader over the queue bound).
            self.wake.notify_one();
        } else if deferred && writer_idle && was_empty {
            self.coalescer.mark(self.seq);
        } else if was_empty {
            // The writer re-checks the queue after every write, so it only
            // needs waking when it may have found the queue empty and slept.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Queued bytes that are written without waiting for a flush lane: a
    /// quarter of the queue bound, at most 64 KiB.
    fn flush_bytes(&self) -> usize {
        (self.limits.max_bytes / 4).clamp(1, 64 * 1024)
    }

    /// Writes what waited for a flush lane, with one non-blocking `writev`;
    /// what the socket cannot take now is left to the writer task.
    pub(crate) fn flush_delayed(&self) {
        let mut q = self.queue.lock();
        if q.writer_busy || q.frames.is_empty() || q.closing.is_some() {
            // The writer owns the queue, or will act on the close.
            return;
        }
        let Some(socket) = self.socket.get() else {
            // TLS: only the writer task writes.
            drop(q);
            self.wake.notify_one();
            return;
        };
        let mut iov = [IoSlice::new(&[]); FLUSH_IOVECS];
        let mut n = 0;
        for frame in q.frames.iter().take(FLUSH_IOVECS) {
            iov[n] = IoSlice::new(frame);
            n += 1;
        }
        // An error is left for the writer to meet on its own write.
        if let Ok(mut written) = socket.try_write_vectored(&iov[..n]) {
            q.bytes -= written;
            while written > 0 {
                let Some(front) = q.frames.front_mut() else {
                    break;
                };
                if front.len() <= written {
                    written -= front.len();
                    q.frames.pop_front();
                    q.partial_front = false;
                } else {
                    front.advance(written);
                    q.partial_front = true;
                    written = 0;
                }
            }
        }
        let rest = !q.frames.is_empty();
        drop(q);
        if rest {
            self.wake.notify_one();
        }
    }

    /// Asks the writer to end the connection; the first request wins.
    pub(crate) fn close(&self, code: u16, reason: &str, queued: Queued, closer: Closer) {
        let (flush, announce) = (queued == Queued::Flush, closer == Closer::Server);
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return;
        }
        if !flush {
            q.drop_queued();
        }
        q.closing = Some(Closing {
            code,
            reason: reason.to_string(),
            flush,
            announce,
        });
        drop(q);
        self.wake.notify_one();
    }

    /// True once a close was requested.
    pub(crate) fn is_closing(&self) -> bool {
        self.queue.lock().closing.is_some()
    }

    /// True once a close that drops queued frames was requested.
    pub(crate) fn is_hard_closing(&self) -> bool {
        self.queue.lock().closing.as_ref().is_some_and(|c| !c.flush)
    }

    /// Moves every queued frame into `batch` (swapping buffers, no copy) and
    /// reports a close request once the queue is drained.
    /// While the writer holds a non-empty batch, producers queue behind it.
    pub(crate) fn take(&self, batch: &mut VecDeque<Bytes>) -> Taken {
        let mut q = self.queue.lock();
        let front_partial = q.partial_front && batch.is_empty() && !q.frames.is_empty();
        if batch.is_empty() {
            std::mem::swap(&mut q.frames, batch);
        } else {
            batch.extend(q.frames.drain(..));
        }
        q.bytes = 0;
        q.partial_front = false;
        q.writer_busy = !batch.is_empty();
        Taken {
            closing: q.closing.clone(),
            front_partial,
        }
    }

    /// Makes the writer look at the queue.
    pub(crate) fn kick(&self) {
        self.wake.notify_one();
    }

    /// Waits until something may have been queued or a close requested.
    pub(crate) async fn wait(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adaptive and not behind: every push is written at once.
    fn outbound(max_bytes: usize, max_frames: usize) -> Outbound {
        Outbound::new(
            QueueLimits {
                max_bytes,
                max_frames,
            },
            Arc::new(Coalescer::new(std::time::Duration::ZERO, 1)),
            0,
        )
    }

    /// A connected pair of loopback sockets: (server write half, client).
    async fn socket_pair() -> (OwnedWriteHalf, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        (write, client)
    }

    #[tokio::test]
    async fn with_write_delay_frames_wait_and_go_out_in_one_write() {
        let coalescer = Arc::new(Coalescer::new(std::time::Duration::from_millis(1), 1));
        let out = Outbound::new(
            QueueLimits {
                max_bytes: 1000,
                max_frames: 100,
            },
            Arc::clone(&coalescer),
            7,
        );
        let (write, client) = socket_pair().await;
        out.attach(write);
        for frame in [&b"one"[..], b"two", b"three"] {
            out.push(Bytes::from_static(frame)).unwrap();
        }
        let mut buf = [0u8; 64];
        assert!(
            matches!(client.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing is written before the flush"
        );
        assert_eq!(coalescer.take_dirty(0), vec![7], "marked dirty once");
        out.flush_delayed();
        client.readable().await.unwrap();
        let n = client.try_read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"onetwothree", "all three in one write");
        let mut batch = VecDeque::new();
        out.take(&mut batch);
        assert!(batch.is_empty(), "nothing left for the writer");
        out.push(Bytes::from_static(b"four")).unwrap();
        assert_eq!(coalescer.take_dirty(0), vec![7], "dirty again once empty");
    }

    #[test]
    fn dropping_keeps_the_rest_of_a_begun_frame() {
        let mut q = Queue {
            frames: VecDeque::from([Bytes::from_static(b"rest"), Bytes::from_static(b"next")]),
            bytes: 8,
            partial_front: true,
            ..Queue::default()
        };
        q.drop_queued();
        assert_eq!((q.frames.len(), q.bytes), (1, 4));
        q.partial_front = false;
        q.drop_queued();
        assert!(q.frames.is_empty());
    }

    #[test]
    fn bounded_by_bytes_then_closed() {
        let out = outbound(10, 100);
        assert_eq!(out.push(Bytes::from_static(b"12345")), Ok(()));
        assert_eq!(out.push(Bytes::from_static(b"12345")), Ok(()));
        assert_eq!(
            out.push(Bytes::from_static(b"1")),
            Err(PushError::SlowConsumer)
        );
        assert_eq!(out.push(Bytes::from_static(b"1")), Err(PushError::Closed));
        let mut batch = VecDeque::new();
        let closing = out.take(&mut batch).closing.unwrap();
        assert!(
            batch.is_empty(),
            "queued frames are dropped for a slow consumer"
        );
        assert_eq!(closing.code, 3001);
        assert!(!closing.flush);
    }

    #[test]
    fn a_lone_big_frame_is_not_a_slow_consumer() {
        let out = outbound(10, 100);
        assert_eq!(out.push(Bytes::from(vec![0u8; 100])), Ok(()));
        assert_eq!(
            out.push(Bytes::from_static(b"x")),
            Err(PushError::SlowConsumer)
        );
    }

    #[test]
    fn bounded_by_frames() {
        let out = outbound(1000, 2);
        out.push(Bytes::from_static(b"a")).unwrap();
        out.push(Bytes::from_static(b"b")).unwrap();
        assert_eq!(
            out.push(Bytes::from_static(b"c")),
            Err(PushError::SlowConsumer)
        );
    }

    #[test]
    fn take_drains_everything_and_frees_budget() {
        let out = outbound(4, 100);
        out.push(Bytes::from_static(b"ab")).unwrap();
        out.push(Bytes::from_static(b"cd")).unwrap();
        let mut batch = VecDeque::new();
        assert!(out.take(&mut batch).closing.is_none());
        assert_eq!(batch.len(), 2);
        out.push(Bytes::from_static(b"ef")).unwrap();
        out.take(&mut batch);
        assert_eq!(batch.len(), 3, "appended after the untaken batch");
    }

    #[test]
    fn graceful_close_keeps_queue() {
        let out = outbound(100, 100);
        out.push(Bytes::from_static(b"last")).unwrap();
        out.close(1001, "bye", Queued::Flush, Closer::Server);
        out.close(3001, "ignored", Queued::Drop, Closer::Server);
        let mut batch = VecDeque::new();
        let closing = out.take(&mut batch).closing.unwrap();
        assert_eq!((closing.code, batch.len()), (1001, 1));
    }
}
