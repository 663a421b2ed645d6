//! The Duplex wire protocol, pure: no sockets, no tasks, no clocks.
//!
//! Keeping the protocol in its own crate lets the node, the load generator,
//! the CLI client and the fuzz targets share one codec, and lets `Cargo.toml`
//! (not code review) guarantee that it never grows I/O.
//!
//! # Layout
//!
//! - [`ws`]: WebSocket frames (RFC 6455): an incremental decoder for client
//!   frames with exact limits, and encoders for server frames.
//! - [`channel`]: channel-name rules shared by every entry point.
//! - [`code`]: stable numeric error codes and close codes.
//! - [`command`]: native-protocol commands sent by clients.
//! - [`push`]: native-protocol replies and pushes sent by the server.
//! - [`payload`]: how JSON values become message bytes and back.
//! - [`history`]: offsets, epochs and recovery as the protocol carries them.
//! - [`presence`]: members, counts and `join` / `leave` pushes.
//! - [`time`]: token times (JWT `NumericDate`), as checked and as reported.
#![forbid(unsafe_code)]

pub mod channel;
pub mod code;
pub mod command;
pub mod history;
pub mod payload;
pub mod presence;
pub mod push;
pub mod time;
pub mod ws;

/// Version of the native protocol spoken at `/ws`; bumped on breaking changes.
pub const PROTOCOL_VERSION: u32 = 1;
