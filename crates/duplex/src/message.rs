//! The unit that moves between publishers, brokers and the hub.

use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::ws::MessageKind;

/// One message on one channel, as bytes: what Redis carries verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Channel the message was published to (without any Redis prefix).
    pub channel: ChannelName,
    /// Exactly the published bytes.
    pub payload: Bytes,
    /// Text or binary; through Redis inferred from UTF-8 validity.
    pub kind: MessageKind,
    /// Node-local connection not to deliver to (a plain sender with echo off).
    pub exclude: Option<u64>,
    /// Where the channel's history recorded it; `None` for a publication
    /// nothing recorded (no history, or a raw `PUBLISH` from a backend).
    pub position: Option<Position>,
}

/// A publication's place in its channel's history: offsets count from 1
/// within one epoch and are only compared within it (cheap to clone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// 1 for the first publication of the epoch, +1 for each next one.
    pub offset: u64,
    /// Names one unbroken run of offsets: it changes whenever the
    /// history may have lost data (expired, flushed, restarted).
    pub epoch: Arc<str>,
}

/// What a subscriber reads on its socket: the plain bytes or the native
/// protocol's JSON pushes (the hub encodes each message once per wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Exactly the published bytes, one frame per message.
    Plain,
    /// Native protocol JSON pushes.
    Native,
}
