//! Brokers carry publications between nodes.
//!
//! A [`Broker`] has node-wide subscriptions (never one per client): the node
//! subscribes a channel when its first local client wants it and
//! unsubscribes when the last one leaves. Everything published, including
//! by this node, comes back through the [`BrokerHandler`] given at
//! construction, so every node (this one too) sees one order per channel.
//!
//! Contract: delivery is at most once; per channel, messages from one
//! publisher arrive in publish order. A subscribe is answered `Ok` only
//! once the broker confirmed it (messages published after that reach this
//! node), and refused, with nothing left behind, while it cannot be. Presence and history stores will be
//! separate traits with the same memory/redis pair of implementations.

use std::time::SystemTime;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::message::Publication;

mod echo;
pub mod exclusion;
mod intake;
pub mod memory;
mod overlap;
pub mod redis;

/// Receives what the broker delivers to this node.
pub trait BrokerHandler: Send + Sync + 'static {
    /// A publication on a channel this node subscribed. Brokers await it
    /// before handing over the next one, which keeps per-channel order even
    /// when the fan-out runs on several threads.
    fn handle_publication(&self, publication: Publication) -> BoxFuture<'_, ()>;
}

/// Why a broker operation failed; all are temporary from the caller's view.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection to the broker right now.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker did not answer within the configured bound.
    #[error("broker timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The broker is shut down.
    #[error("broker is closed")]
    Closed,
    /// This broker cannot do that (e.g. upstream messages on the memory broker).
    #[error("{0}")]
    Unsupported(&'static str),
}

/// A connection held by another node: its node id and its number there
/// (the connection id `<node>.<seq>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteConnection<'a> {
    /// The node holding it.
    pub node: &'a str,
    /// Its number on that node.
    pub seq: u64,
}

/// One message from a client up to the backends: the fields of a stream entry.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Stream (key) to append to.
    pub stream: String,
    /// Field-value pairs, in order.
    pub fields: Vec<(&'static str, Bytes)>,
}

/// Connection state shown by `/health` and `/api/info`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BrokerStatus {
    /// Usable.
    Connected,
    /// Trying to (re)connect; publishes fail, subscriptions are kept and restored.
    Disconnected,
}

/// Broker state plus when it last changed and why.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerState {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// Usable or not.
    pub status: BrokerStatus,
    /// Seconds since the Unix epoch of the last change.
    pub since: u64,
    /// Last error seen, while disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Reconnects since start.
    pub reconnects: u64,
    /// Messages the broker sent that this node dropped because it could
    /// not fan them out as fast as they came (its backlog was full).
    pub dropped: u64,
    /// Bytes of messages from the broker waiting for fan-out now.
    pub backlog_bytes: u64,
}

impl BrokerState {
    pub(crate) fn new(kind: &'static str, status: BrokerStatus) -> Self {
        BrokerState {
            kind,
            status,
            since: unix_now(),
            last_error: None,
            reconnects: 0,
            dropped: 0,
            backlog_bytes: 0,
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Moves publications between nodes (or within one node).
pub trait Broker: Send + Sync + 'static {
    /// Publishes to every node that subscribed the channel, this one included.
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Publishes to every node but skips one connection held by another
    /// node (`exclude` on `/api/publish`: the sender, for a backend that
    /// publishes on a client's behalf). The holding node must learn which
    /// message to skip before the message itself, in order. A broker with
    /// one node has no other node's connections: it just publishes.
    fn publish_excluding(
        &self,
        publication: Publication,
        _excluded: RemoteConnection<'_>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.publish(publication)
    }
    /// Starts receiving a channel on this node; `Ok` once the broker
    /// confirmed it, an error (and nothing recorded) when it cannot; kept
    /// across reconnects once confirmed.
    fn subscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Stops receiving a channel on this node.
    fn unsubscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Current state, for health checks.
    fn state(&self) -> BrokerState;
    /// Leaves the broker cleanly (unsubscribe, close connections).
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Hands a client's message to the backends (Redis: `XADD` to a stream
    /// that workers read with consumer groups).
    fn append_upstream(&self, _message: Upstream) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async {
            Err(BrokerError::Unsupported(
                "upstream messages need the Redis broker (--redis) or an HTTP upstream (--upstream-url)",
            ))
        })
    }
}
