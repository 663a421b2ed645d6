//! WebSocket transport: bytes <-> frames, two tasks per connection, once
//! `api::upgrade` has answered the handshake with 101.
//!
//! - [`stream`]: what reading and writing mean on plain TCP and on TLS.
//! - [`reader`]: the connection task: reads, decodes frames, feeds the
//!   session, and tears everything down at the end.
//! - [`writer`]: drains the outbound queue with coalesced vectored writes.
//! - The bounded queue between producers and the writer is `conn::outbound`.
//! - [`sockets`]: every accepted connection counted until it closes, HTTP
//!   connections capped with fair eviction, file descriptors kept in reserve.
//!
//! Frames are decoded by `duplex_protocol::ws`, a sans-IO decoder whose
//! buffers we own: an idle connection holds no read buffer at all.

pub(crate) mod reader;
pub(crate) mod sockets;
pub(crate) mod stream;
pub(crate) mod writer;

use std::time::Duration;

/// How long a closing connection waits for the peer's close frame.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod size_tests {
    use std::sync::Arc;

    use crate::config::Config;
    use crate::conn::outbound::QueueLimits;
    use crate::conn::Conn;
    use crate::message::Wire;
    use crate::node::Node;
    use crate::session::{native::NativeSession, Session};

    /// Every idle connection holds these two futures: keep them small
    /// (boxing the command handlers took the reader from ~5 KiB to ~700 B).
    /// Sizes move with rustc's layout (rustc 1.95, debug: writer 400,
    /// reader 728, Conn 360 bytes), so the bounds leave about twice that:
    /// a compiler update passes, a handler left unboxed (kilobytes) fails.
    #[tokio::test]
    async fn connection_tasks_stay_small() {
        let limits = QueueLimits {
            max_bytes: 1,
            max_frames: 1,
        };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let coalescer = Arc::new(crate::conn::coalesce::Coalescer::new(
            std::time::Duration::ZERO,
            1,
        ));
        let conn = Conn::new(1, "n", Wire::Native, addr, limits, &coalescer, 0);
        let writer = super::writer::run(Arc::clone(&conn));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let node = Node::start(Config::default()).unwrap();
        let session = Session::Native(NativeSession::new(0));
        let reader = super::reader::run(
            node,
            Arc::clone(&conn),
            stream,
            bytes::BytesMut::new(),
            session,
        );
        let sizes = (
            std::mem::size_of_val(&writer),
            std::mem::size_of_val(&reader),
            std::mem::size_of::<Conn>(),
        );
        eprintln!("writer, reader, Conn: {sizes:?} bytes");
        assert!(
            sizes.0 <= 1024 && sizes.1 <= 1536 && sizes.2 <= 768,
            "writer, reader, Conn: {sizes:?} bytes"
        );
    }
}
