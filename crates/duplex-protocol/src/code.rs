//! Stable numbers a client can program against: error codes in replies and
//! close codes on disconnect.
//!
//! Two vocabularies, as in Centrifuge: an [`ErrorCode`] answers one command
//! and leaves the connection open; a [`CloseCode`] ends the connection and
//! says, by its range, whether reconnecting makes sense:
//!
//! - 1000–2999: standard WebSocket codes (RFC 6455); 1001 = reconnect.
//! - 3000–3499: Duplex, reconnect (with backoff) is expected to work.
//! - 3500–3999: Duplex, do not reconnect without changing something.

use serde::Serialize;

/// Error codes carried in command replies; numbers never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "u32")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Unexpected server-side failure; retrying may help.
    Internal,
    /// The frame was not valid JSON or not a command object.
    BadRequest,
    /// The method is not one this server knows.
    UnknownMethod,
    /// A channel name broke the naming rules.
    InvalidChannel,
    /// `connect` sent twice on one connection.
    AlreadyConnected,
    /// The command is not allowed for this connection.
    PermissionDenied,
    /// A per-connection limit (e.g. subscriptions) would be exceeded.
    LimitExceeded,
    /// The broker could not take the message; temporary.
    BrokerUnavailable,
    /// Too many commands too fast; slow down.
    TooManyRequests,
    /// The server did not finish in time; temporary.
    Timeout,
    /// A protocol version the server does not speak.
    UnsupportedVersion,
    /// The token has expired: get a fresh one and send it again.
    TokenExpired,
    /// The server requires a `connect` with a valid token first.
    Unauthorized,
    /// No reply from the backends within `rpc_timeout`; temporary.
    RpcTimeout,
    /// Too many rpcs waiting for replies, on this connection or on the node; temporary.
    TooManyPending,
    /// The HTTP upstream failed (connection error, non-2xx without a backend error, bad body); temporary.
    UpstreamFailed,
    /// The channel keeps no history (its namespace sets no `history_size`
    /// and `history_ttl`), or the broker holds none.
    NoHistory,
    /// The channel keeps no presence (its namespace does not set
    /// `presence = true`).
    NoPresence,
    /// A backend's own error code, passed through as is: [`BACKEND_CODES`].
    Backend(u16),
}

/// The codes a backend may answer an rpc with; they reach the client unchanged.
pub const BACKEND_CODES: std::ops::RangeInclusive<u16> = 1000..=9999;

impl ErrorCode {
    /// The wire number.
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::Internal => 100,
            ErrorCode::BadRequest => 101,
            ErrorCode::UnknownMethod => 102,
            ErrorCode::InvalidChannel => 103,
            ErrorCode::AlreadyConnected => 104,
            ErrorCode::PermissionDenied => 105,
            ErrorCode::LimitExceeded => 106,
            ErrorCode::BrokerUnavailable => 107,
            ErrorCode::TooManyRequests => 108,
            ErrorCode::Timeout => 109,
            ErrorCode::UnsupportedVersion => 110,
            ErrorCode::TokenExpired => 111,
            ErrorCode::Unauthorized => 112,
            ErrorCode::RpcTimeout => 113,
            ErrorCode::TooManyPending => 114,
            ErrorCode::UpstreamFailed => 115,
            ErrorCode::NoHistory => 116,
            ErrorCode::NoPresence => 117,
            ErrorCode::Backend(code) => u32::from(code),
        }
    }

    /// True when the same command may succeed if retried later.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            ErrorCode::Internal
                | ErrorCode::BrokerUnavailable
                | ErrorCode::TooManyRequests
                | ErrorCode::Timeout
                | ErrorCode::RpcTimeout
                | ErrorCode::TooManyPending
                | ErrorCode::UpstreamFailed
        )
    }
}

impl From<ErrorCode> for u32 {
    fn from(code: ErrorCode) -> u32 {
        code.as_u32()
    }
}

/// Why the server closed a connection; sent as the WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: the client asked to close, or a clean end.
    Normal,
    /// 1001: the node is shutting down; reconnect at once (to another node).
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError,
    /// 1003: a frame type this endpoint does not accept (binary on `/ws`).
    UnsupportedData,
    /// 1007: a text message that is not valid UTF-8.
    InvalidPayload,
    /// 1008: a policy forbids what the client did (e.g. plain publish disabled).
    PolicyViolation,
    /// 1009: a message larger than the configured limit.
    MessageTooBig,
    /// 1011: the server hit an unexpected condition.
    InternalError,
    /// 3001: the client did not read fast enough; its queue overflowed.
    SlowConsumer,
    /// 3002: no pong (or any frame) within the heartbeat timeout.
    HeartbeatTimeout,
    /// 3003: disconnected by the server or an operator; may reconnect.
    ServerDisconnect,
    /// 3004: kept publishing over the rate limit after being told; reconnect with backoff.
    TooManyRequests,
    /// 3005: connected to `/ws` but sent no command within the connect timeout.
    ConnectTimeout,
    /// 3006: the connection token expired and was not refreshed; reconnect with a new one.
    TokenExpired,
    /// 3007: the user already holds `max_connections_per_user` connections.
    TooManyConnections,
    /// 3008: the node lost publications of a history channel this client
    /// holds and could not fill the gap (epoch changed, gap too large):
    /// reconnect and `recover` (the answer says `recovered: false`).
    InsufficientState,
    /// 3500: the token is invalid; do not reconnect with the same token.
    InvalidToken,
    /// 3501: the client sent something the protocol forbids; fix the client.
    BadRequest,
    /// 3502: a backend took this plain client off its channel (`POST
    /// /api/unsubscribe`); a plain client is its channel, so it is closed.
    Unsubscribed,
}

impl CloseCode {
    /// The wire number.
    pub const fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::SlowConsumer => 3001,
            CloseCode::HeartbeatTimeout => 3002,
            CloseCode::ServerDisconnect => 3003,
            CloseCode::TooManyRequests => 3004,
            CloseCode::ConnectTimeout => 3005,
            CloseCode::TokenExpired => 3006,
            CloseCode::TooManyConnections => 3007,
            CloseCode::InsufficientState => 3008,
            CloseCode::InvalidToken => 3500,
            CloseCode::BadRequest => 3501,
            CloseCode::Unsubscribed => 3502,
        }
    }

    /// Maps a WebSocket decoder's close code back to the enum.
    pub fn from_u16(code: u16) -> Option<Self> {
        Some(match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::ProtocolError,
            1003 => CloseCode::UnsupportedData,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::PolicyViolation,
            1009 => CloseCode::MessageTooBig,
            1011 => CloseCode::InternalError,
            3001 => CloseCode::SlowConsumer,
            3002 => CloseCode::HeartbeatTimeout,
            3003 => CloseCode::ServerDisconnect,
            3004 => CloseCode::TooManyRequests,
            3005 => CloseCode::ConnectTimeout,
            3006 => CloseCode::TokenExpired,
            3007 => CloseCode::TooManyConnections,
            3008 => CloseCode::InsufficientState,
            3500 => CloseCode::InvalidToken,
            3501 => CloseCode::BadRequest,
            3502 => CloseCode::Unsubscribed,
            _ => return None,
        })
    }

    /// Whether a client should reconnect after this close (with backoff).
    pub fn reconnect(self) -> bool {
        reconnect_allowed(self.as_u16())
    }
}

/// The range rule for any close code, including ones this version does not name.
pub fn reconnect_allowed(code: u16) -> bool {
    matches!(code, 1001 | 1006 | 1011..=1014 | 3000..=3499)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip_and_ranges() {
        for code in [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::ProtocolError,
            CloseCode::UnsupportedData,
            CloseCode::InvalidPayload,
            CloseCode::PolicyViolation,
            CloseCode::MessageTooBig,
            CloseCode::InternalError,
            CloseCode::SlowConsumer,
            CloseCode::HeartbeatTimeout,
            CloseCode::ServerDisconnect,
            CloseCode::TooManyRequests,
            CloseCode::ConnectTimeout,
            CloseCode::TokenExpired,
            CloseCode::TooManyConnections,
            CloseCode::InsufficientState,
            CloseCode::InvalidToken,
            CloseCode::BadRequest,
            CloseCode::Unsubscribed,
        ] {
            assert_eq!(CloseCode::from_u16(code.as_u16()), Some(code));
        }
        assert!(CloseCode::GoingAway.reconnect());
        assert!(CloseCode::SlowConsumer.reconnect());
        assert!(!CloseCode::BadRequest.reconnect());
        assert!(!CloseCode::MessageTooBig.reconnect());
        assert!(CloseCode::TokenExpired.reconnect());
        assert!(!CloseCode::InvalidToken.reconnect());
        assert!(!CloseCode::Unsubscribed.reconnect());
    }

    #[test]
    fn error_codes_serialize_as_numbers() {
        assert_eq!(
            serde_json::to_string(&ErrorCode::UnknownMethod).unwrap(),
            "102"
        );
        assert!(ErrorCode::BrokerUnavailable.is_temporary());
        assert!(!ErrorCode::BadRequest.is_temporary());
        assert_eq!(ErrorCode::RpcTimeout.as_u32(), 113);
        assert_eq!(ErrorCode::UpstreamFailed.as_u32(), 115);
        assert_eq!(
            serde_json::to_string(&ErrorCode::Backend(4040)).unwrap(),
            "4040"
        );
        assert!(!ErrorCode::Backend(1000).is_temporary());
    }
}
