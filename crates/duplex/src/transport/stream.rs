//! The byte streams a WebSocket connection runs on: plain TCP or TLS.
//!
//! The reader and writer are generic over [`ReadSource`] and [`WriteSink`],
//! so each kind of stream gets its own compiled copy and the plain TCP path
//! is exactly the readiness-based code it was before TLS existed: wait for
//! readability holding no buffer, write with non-blocking `try_write*`,
//! producers writing directly to an idle socket.
//!
//! TLS streams differ in three ways. Bytes must pass through rustls, so the
//! reader reads through `AsyncRead` (with its buffer reserved while it
//! waits). rustls buffers records it could not send yet, so the writer
//! flushes after every batch. And the write half is owned by the writer
//! task alone: producers only queue, they never write directly.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use crate::conn::Conn;

/// A server-side TLS stream over TCP.
pub(crate) type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// An upgraded connection, taken back from hyper.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Plain `ws://`.
    Tcp(TcpStream),
    /// `wss://`; boxed, as rustls' connection state is large and this enum
    /// sits in every connection task's future.
    Tls(Box<Tls>),
}

impl Stream {
    /// The stream under hyper's upgrade, with the bytes hyper read past the
    /// request. Those are copied so that hyper's whole 8 KiB read buffer,
    /// which they would otherwise keep alive, is freed now.
    pub(crate) fn from_upgraded(upgraded: Upgraded) -> Option<(Stream, BytesMut)> {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let leftover = BytesMut::from(&parts.read_buf[..]);
                return Some((Stream::Tcp(parts.io.into_inner()), leftover));
            }
            Err(upgraded) => upgraded,
        };
        let parts = upgraded.downcast::<TokioIo<Tls>>().ok()?;
        let leftover = BytesMut::from(&parts.read_buf[..]);
        Some((Stream::Tls(Box::new(parts.io.into_inner())), leftover))
    }
}

/// How the reader task gets bytes: wait with [`ReadSource::ready`], then
/// take what arrived with [`ReadSource::try_read_buf`]. The split keeps the
/// reader's buffer out of the wait on plain TCP.
pub(crate) trait ReadSource: Send {
    /// Resolves when `try_read_buf` can make progress: bytes, the end of
    /// the stream, or an error.
    fn ready(&mut self, wanted: usize) -> impl Future<Output = io::Result<()>> + Send;
    /// Reserves `wanted` bytes in `buf` and appends what arrived, without
    /// waiting. `Ok(0)` is the end of the stream; `WouldBlock` means the
    /// readiness was stale and the caller should simply wait again.
    fn try_read_buf(&mut self, buf: &mut BytesMut, wanted: usize) -> io::Result<usize>;
}

/// Waits until the socket is readable, through the socket's single reader
/// waker slot rather than `readable()`'s waiter list. This matters: hyper
/// leaves its connection task's waker in that slot when it hands the socket
/// over, and until something replaces it, that waker keeps the finished
/// task's ~1.2 KiB allocation alive for the whole life of the connection
/// (found with massif: it was a quarter of all idle memory).
fn read_ready(socket: &OwnedReadHalf) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| socket.as_ref().poll_read_ready(cx))
}

impl ReadSource for OwnedReadHalf {
    fn ready(&mut self, _wanted: usize) -> impl Future<Output = io::Result<()>> + Send {
        read_ready(self)
    }

    /// The buffer is reserved only once bytes are there: an idle plain
    /// connection holds no read buffer at all.
    fn try_read_buf(&mut self, buf: &mut BytesMut, wanted: usize) -> io::Result<usize> {
        buf.reserve(wanted);
        OwnedReadHalf::try_read_buf(self, buf)
    }
}

/// The read half of a TLS stream. Readiness of the TCP socket says nothing
/// about decrypted bytes rustls already holds, so waiting means reading
/// through `AsyncRead` into `pending` (which is reserved while it waits);
/// `try_read_buf` then hands those bytes over, without a copy when the
/// reader's buffer is empty.
#[derive(Debug)]
pub(crate) struct TlsReader {
    half: ReadHalf<Tls>,
    pending: BytesMut,
    eof: bool,
}

impl TlsReader {
    pub(crate) fn new(half: ReadHalf<Tls>) -> Self {
        TlsReader {
            half,
            pending: BytesMut::new(),
            eof: false,
        }
    }
}

impl ReadSource for TlsReader {
    async fn ready(&mut self, wanted: usize) -> io::Result<()> {
        if self.eof || !self.pending.is_empty() {
            return Ok(());
        }
        self.pending.reserve(wanted);
        if self.half.read_buf(&mut self.pending).await? == 0 {
            self.eof = true;
        }
        Ok(())
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut, _wanted: usize) -> io::Result<usize> {
        let n = self.pending.len();
        if n == 0 {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        if buf.is_empty() {
            std::mem::swap(buf, &mut self.pending);
        } else {
            buf.extend_from_slice(&self.pending);
        }
        self.pending.clear();
        Ok(n)
    }
}

/// How the writer task puts bytes on the wire. The `try_*` calls never wait
/// (`WouldBlock` when nothing can be done now); [`WriteSink::ready`] waits
/// until a retry can make progress. That split keeps the writer's stack of
/// `IoSlice`s out of its future: they live only during a `try` call.
pub(crate) trait WriteSink: Send {
    /// Writes what fits of `bufs` now.
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Sends what the stream buffered itself (TLS records); `Ok` once empty.
    fn try_flush(&mut self) -> io::Result<()>;
    /// Resolves when a `try` may make progress again.
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends our direction after the close frame (FIN; TLS close_notify first).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// Where the writer task gets its [`WriteSink`] from. Opened inside the
/// writer's future, so that a plain connection's writer borrows the socket
/// from its `Conn` exactly as before, with no extra state in its future.
pub(crate) trait SinkSource: Send {
    /// The sink, borrowed for the writer's life.
    type Sink<'a>: WriteSink
    where
        Self: 'a;
    /// The sink; `None` when the connection has no socket to write to.
    fn open<'a>(&'a mut self, conn: &'a Conn) -> Option<Self::Sink<'a>>;
}

/// A plain connection's write half, attached to its outbound queue (shared
/// with producers that write directly).
#[derive(Debug)]
pub(crate) struct Attached;

impl SinkSource for Attached {
    type Sink<'a> = &'a TcpStream;

    fn open<'a>(&'a mut self, conn: &'a Conn) -> Option<&'a TcpStream> {
        conn.outbound.socket()
    }
}

impl SinkSource for WriteHalf<Tls> {
    type Sink<'a> = &'a mut WriteHalf<Tls>;

    fn open<'a>(&'a mut self, _conn: &'a Conn) -> Option<&'a mut WriteHalf<Tls>> {
        Some(self)
    }
}

impl WriteSink for &TcpStream {
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }

    fn try_flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Through the socket's single writer waker slot (see [`read_ready`]).
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        let socket: &TcpStream = self;
        std::future::poll_fn(move |cx| socket.poll_write_ready(cx))
    }

    async fn shutdown(&mut self) {
        let _ = socket2::SockRef::from(*self).shutdown(std::net::Shutdown::Write);
    }
}

/// Polls once without registering interest: `Pending` becomes `WouldBlock`.
/// Safe here because the writer always follows a `WouldBlock` with
/// [`WriteSink::ready`], which polls again with its real waker.
fn poll_now<T>(poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>) -> io::Result<T> {
    match poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl WriteSink for &mut WriteHalf<Tls> {
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        poll_now(|cx| Pin::new(&mut **self).poll_write_vectored(cx, bufs))
    }

    fn try_flush(&mut self) -> io::Result<()> {
        poll_now(|cx| Pin::new(&mut **self).poll_flush(cx))
    }

    /// rustls only refuses plaintext while it holds records the socket did
    /// not take, so "room again" is "those records flushed".
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::poll_fn(move |cx| Pin::new(&mut **self).poll_flush(cx))
    }

    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| Pin::new(&mut **self).poll_shutdown(cx)).await;
    }
}
