//! WebSocket transport: the HTTP upgrade, then two tasks per connection.
//!
//! - [`upgrade`]: checks the handshake, answers 101, and hands the raw TCP
//!   stream to a connection task (or refuses with a status and a reason).
//! - [`reader`]: the connection task: reads, decodes frames, feeds the
//!   session, and tears everything down at the end.
//! - [`writer`]: drains the outbound queue with coalesced vectored writes.
//! - [`outbound`]: the bounded queue between producers and the writer.
//!
//! Frames are decoded by `duplex_protocol::ws`, a sans-IO decoder whose
//! buffers we own: an idle connection holds no read buffer at all.

pub(crate) mod outbound;
pub(crate) mod reader;
pub mod upgrade;
pub(crate) mod writer;

use std::time::Duration;

/// How long a closing connection waits for the peer's close frame.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);
