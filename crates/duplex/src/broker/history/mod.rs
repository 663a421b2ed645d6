//! History: a channel's recent publications kept by the broker, each at
//! an offset within an epoch, so clients can read what they missed.
//!
//! [`History::publish`] appends and publishes as one atomic step: the
//! offset it answers is the one the live copy carries to every node that
//! holds the channel (this one too), and every node receives a channel's
//! recorded publications in offset order. Both backends keep the same
//! rules (checked by `tests/broker_conformance.rs`):
//!
//! - Offsets start at 1 and go +1 per publication, per channel, across
//!   every node and publisher; they are only compared within one epoch.
//! - At most [`HistoryOptions::size`] publications are kept (the oldest
//!   go), and none longer than [`HistoryOptions::ttl`] after the channel's
//!   last publish (the whole stream expires, as Centrifugo's does).
//! - The epoch and top offset live [`HistoryOptions::meta_ttl`] after the
//!   last publish. Once they are gone (expired, Redis flushed or restarted
//!   without persistence, a new memory broker) the next publish or read
//!   starts a new epoch at offset 1.
//! - `exclude` on the publication (a local sender) and
//!   [`History::publish_excluding`] (another node's connection) work as
//!   for [`PubSub`](super::PubSub).
//!
//! A plain [`PubSub::publish`](super::PubSub::publish) (or a raw Redis
//! `PUBLISH`) on a history channel is delivered live with no position and
//! is not recorded.
//!
//! Backends: [`memory`] (a ring per channel) and the Redis Function library
//! of `broker/redis/history.rs`.

pub(crate) mod envelope;
pub mod memory;
pub mod table;

use std::time::Duration;

use duplex_protocol::channel::ChannelName;
use futures_util::future::{self, BoxFuture, FutureExt};

use super::{BrokerError, RemoteConnection};
use crate::message::{Position, Publication};

/// A namespace's history settings (`history_size`, `history_ttl`,
/// `history_meta_ttl`), given with every call so a reload applies at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Most publications kept per channel.
    pub size: usize,
    /// How long they are kept after the channel's last publish (Redis:
    /// whole seconds, rounded up).
    pub ttl: Duration,
    /// How long the epoch and top offset outlive the last publish.
    pub meta_ttl: Duration,
}

impl HistoryOptions {
    /// Refuses options that keep nothing (history is then off).
    pub(crate) fn check(&self) -> Result<(), BrokerError> {
        if self.size == 0 || self.ttl.is_zero() || self.meta_ttl.is_zero() {
            return Err(BrokerError::Unsupported(
                "history is off for this channel (history_size, history_ttl and history_meta_ttl must be above 0)",
            ));
        }
        Ok(())
    }
}

/// What a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// Only publications at offsets above this one (`None`: from the oldest kept).
    pub since: Option<u64>,
    /// At most this many (0: just the top position).
    pub limit: usize,
    /// The newest first instead of the oldest first.
    pub reverse: bool,
}

/// A read's answer, taken atomically with the channel's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The channel's epoch and last offset (0 when nothing is published in it yet).
    pub top: Position,
    /// The publications asked for, each with its position.
    pub publications: Vec<Publication>,
}

/// One namespace's history as the Redis Function finds it for a backend's
/// `FCALL` without options: its pattern and its settings (`None`: off).
pub type NamespaceHistory = (String, Option<HistoryOptions>);

/// Keeps channels' recent publications at offsets (the module doc holds the contract).
pub trait History: Send + Sync + 'static {
    /// Appends to the channel's history and publishes, as one step; the
    /// position the live copy carries.
    fn publish<'a>(
        &'a self,
        publication: Publication,
        options: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Position, BrokerError>>;

    /// As [`Self::publish`] but skipping one connection held by another
    /// node, as [`PubSub::publish_excluding`](super::PubSub::publish_excluding).
    fn publish_excluding<'a>(
        &'a self,
        publication: Publication,
        options: &'a HistoryOptions,
        _excluded: RemoteConnection<'a>,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        self.publish(publication, options)
    }

    /// Reads the channel's publications and position in one step; a
    /// channel with no epoch gets a new one (top offset 0).
    fn read<'a>(
        &'a self,
        channel: ChannelName,
        query: Query,
        options: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>>;

    /// A reader saw `seen` (an epoch and an offset in it) but the
    /// channel's history in that epoch ends below it: the backend lost
    /// its newest publications (Redis: an asynchronous replica promoted by
    /// a failover). Unless the channel already moved to another epoch or
    /// caught up, starts a new epoch, so the lost offsets, handed out again
    /// to new publications, are never taken for the ones readers saw; the
    /// channel's position after.
    fn restart_epoch<'a>(
        &'a self,
        channel: ChannelName,
        seen: &'a Position,
        options: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Position, BrokerError>>;

    /// Tells the backend the deployment's namespace table, for publishes
    /// that come without options (Redis: a backend's `FCALL duplex_publish`);
    /// the Redis broker writes it again after every reconnect.
    fn set_namespaces(
        &self,
        _namespaces: &[NamespaceHistory],
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        future::ready(Ok(())).boxed()
    }
}

/// A fresh epoch: microseconds since the Unix epoch and a random part, in hex.
pub(crate) fn new_epoch() -> std::sync::Arc<str> {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{micros:x}{:04x}", rand::random::<u16>()).into()
}
