//! WebSocket (RFC 6455) framing for the server side, sans I/O.
//!
//! We keep our own codec instead of `fastwebsockets` because that crate does
//! not bound the size of a reassembled fragmented message, does not reject
//! unmasked client frames and allocates 8 KiB per connection up front. A
//! Duplex node holds tens of thousands of connections, so the parser must
//! enforce exact limits before buffering, be fuzzable without sockets, and
//! leave every buffer under the caller's control (an idle decoder owns no heap
//! memory).
//!
//! - [`decode`]: incremental decoder for frames sent by clients.
//! - [`encode`]: encoders for frames sent by the server (never masked).
//! - [`handshake`]: the `Sec-WebSocket-Accept` computation.

pub mod decode;
pub mod encode;
pub mod handshake;

pub use decode::{DecodeError, Decoder, DecoderLimits, Event};
pub use encode::{encode_close, encode_frame, FrameBuilder, OpCode};
pub use handshake::accept_key;

/// Kind of a data message, kept end to end so a binary frame arrives as binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A text message: the payload is valid UTF-8.
    Text,
    /// A binary message: the payload is opaque bytes.
    Binary,
}
