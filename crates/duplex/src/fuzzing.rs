//! Hooks for the fuzz targets in the repository's `fuzz/` crate, compiled only
//! with the `fuzzing` cargo feature (off by default). Not a stable API: it
//! exposes just enough of a native session to drive it the way the `/ws`
//! reader task does, without sockets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::ws::MessageKind;

use crate::conn::Conn;
use crate::conn::Queued;
use crate::message::Wire;
use crate::node::{Node, Refused};
use crate::session::native::NativeSession;
use crate::session::Flow;

/// One native (`/ws`) connection on a node, so the `session` fuzz target can drive it like the reader task.
#[derive(Debug)]
pub struct NativeClient {
    conn: Arc<Conn>,
    session: NativeSession,
}

impl NativeClient {
    /// Registers a native connection with a fresh session on `node`, as the `/ws` upgrade does.
    pub fn connect(node: &Node) -> Result<Self, Refused> {
        let remote = SocketAddr::from(([127, 0, 0, 1], 0));
        let conn = node.register(Wire::Native, remote)?;
        let session = NativeSession::new(node.config().max_publish_rate);
        Ok(NativeClient { conn, session })
    }

    /// Hands one complete message to the session; `Some((code, reason))` when it closed the connection.
    pub async fn on_message(
        &mut self,
        node: &Node,
        kind: MessageKind,
        payload: Bytes,
    ) -> Option<(u16, String)> {
        match self
            .session
            .on_message(node, &self.conn, kind, payload)
            .await
        {
            Flow::Continue => None,
            Flow::Close(code, reason) => {
                self.conn.close(code.as_u16(), &reason, Queued::Drop);
                Some((code.as_u16(), reason))
            }
        }
    }

    /// Takes every frame queued for the client (replies and pushes), as the writer task would.
    pub fn take_frames(&self) -> Vec<Bytes> {
        let mut batch = VecDeque::new();
        self.conn.outbound.take(&mut batch);
        // A second, empty take tells the queue the "writer" is idle again.
        self.conn.outbound.take(&mut VecDeque::new());
        batch.into()
    }

    /// Ends the connection as the reader task does; returns the channels the session released.
    pub async fn disconnect(self, node: &Node) -> Vec<String> {
        let channels = self.session.into_channels();
        let names = channels.iter().map(|c| c.as_str().to_owned()).collect();
        node.deregister(&self.conn, channels).await;
        names
    }
}
