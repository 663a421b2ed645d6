//! What a call up to the backends is and how it ends: the reply it wants,
//! its outcome, and why it may not start at all.

use duplex_protocol::code::{ErrorCode, BACKEND_CODES};
use serde_json::value::RawValue;

use crate::broker::BrokerError;

/// What the client's reply looks like when the answer comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `{"result":{"data":...}}`.
    Rpc,
    /// `{"result":{}}`: a `send` the HTTP upstream acknowledged.
    Send,
}

/// How a call ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The backend's answer.
    Data(Box<RawValue>),
    /// An error for the client: the backend's own or the node's.
    Error(ErrorCode, String),
}

impl Outcome {
    /// A backend's error: its code passes through when in [`BACKEND_CODES`];
    /// any other code is the backend's bug, reported to the client as 115.
    pub(crate) fn backend_error(code: i64, message: &str) -> Outcome {
        match u16::try_from(code) {
            Ok(code) if BACKEND_CODES.contains(&code) => {
                Outcome::Error(ErrorCode::Backend(code), message.to_string())
            }
            _ => Outcome::Error(
                ErrorCode::UpstreamFailed,
                format!(
                    "backend error code {code} is outside {}-{}: {message}",
                    BACKEND_CODES.start(),
                    BACKEND_CODES.end()
                ),
            ),
        }
    }
}

/// Why a call could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Full {
    /// `max_pending_rpcs` on this connection.
    #[error("this connection already has {0} calls waiting for replies (max_pending_rpcs)")]
    Connection(usize),
    /// `max_inflight_rpcs` on this node.
    #[error(
        "this node already has {0} calls waiting for replies (max_inflight_rpcs); retry later"
    )]
    Node(usize),
    /// The client's address holds its fair share (`rpc_fair_share_per_ip`).
    #[error("your address holds its share of this node's calls waiting for replies: {share} while {holders} addresses have calls waiting (rpc_fair_share_per_ip of max_inflight_rpcs); retry later")]
    Address {
        /// The address's share now.
        share: usize,
        /// Addresses holding calls, the caller's included.
        holders: usize,
    },
    /// The client's user holds its fair share (`rpc_fair_share_per_user`).
    #[error("your user holds its share of this node's calls waiting for replies: {share} while {holders} users have calls waiting (rpc_fair_share_per_user of max_inflight_rpcs); retry later")]
    User {
        /// The user's share now.
        share: usize,
        /// Users holding calls, the caller's included.
        holders: usize,
    },
}

/// Why a call was not handed to the backends.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// A bound on waiting calls was reached.
    #[error(transparent)]
    Full(#[from] Full),
    /// The broker could not take it (outage, timeout, or no upstream at all).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_codes_pass_through_only_in_range() {
        assert!(matches!(
            Outcome::backend_error(4040, "no"),
            Outcome::Error(ErrorCode::Backend(4040), _)
        ));
        for bad in [999, 10_000, -1, 70_000] {
            assert!(matches!(
                Outcome::backend_error(bad, "no"),
                Outcome::Error(ErrorCode::UpstreamFailed, _)
            ));
        }
    }
}
