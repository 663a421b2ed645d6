//! One client's state machine, the only place that knows both a client and
//! the node: what it is subscribed to, whether it introduced itself, what it
//! may do. Transport hands it whole messages; it answers with frames queued
//! on the connection and tells transport when to close.
//!
//! - [`plain`]: the classic mode at `/`: frames in are publishes, messages
//!   out are the published bytes.
//! - [`native`]: the JSON protocol at `/ws` (see docs/PROTOCOL.md).

pub(crate) mod native;
pub(crate) mod plain;
mod rate;

use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::code::CloseCode;
use duplex_protocol::ws::MessageKind;

use crate::conn::Conn;
use crate::node::Node;

/// What transport does after a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep reading.
    Continue,
    /// Close with this code and reason.
    Close(CloseCode, String),
}

/// A session of either mode.
#[derive(Debug)]
pub(crate) enum Session {
    Plain(plain::PlainSession),
    Native(native::NativeSession),
}

impl Session {
    /// Handles one complete client message.
    pub(crate) async fn on_message(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        kind: MessageKind,
        payload: Bytes,
    ) -> Flow {
        match self {
            Session::Plain(s) => s.on_message(node, conn, kind, payload).await,
            Session::Native(s) => s.on_message(node, conn, kind, payload).await,
        }
    }

    /// The channels held, so they can be released when the connection ends.
    pub(crate) fn into_channels(self) -> Vec<ChannelName> {
        match self {
            Session::Plain(s) => s.into_channels(),
            Session::Native(s) => s.into_channels(),
        }
    }
}
