//! The opening-handshake key computation (RFC 6455 section 4.2.2).
//!
//! It lives here, not in the HTTP layer, so every server entry point derives
//! `Sec-WebSocket-Accept` the same way and it is tested against the RFC example.

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// The GUID that RFC 6455 appends to the client's key before hashing.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Computes `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`, proving to the client that we speak WebSocket.
///
/// The key is used as sent (no trimming, no base64 decoding), as the RFC requires.
pub fn accept_key(sec_websocket_key: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(sec_websocket_key);
    hasher.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_example() {
        // RFC 6455 section 1.3 (also checked against an independent SHA-1 + base64).
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn different_keys_differ() {
        assert_ne!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            accept_key(b"x3JJHMbDL1EzLkh9GBhXDw==")
        );
        // Known value from common client test vectors.
        assert_eq!(
            accept_key(b"x3JJHMbDL1EzLkh9GBhXDw=="),
            "HSmrc0sMlYUkAGmm5OPpG2HaGWk="
        );
    }
}
