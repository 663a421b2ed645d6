//! Ingest: a stream that backends append publications to (Redis: `XADD`)
//! and the nodes republish, each entry once, in the stream's order.
//!
//! The node drives it (`node::ingest`): one node at a time holds a lease
//! and reads; the others wait to take the lease over when it lapses. What
//! this ability offers is the steps, each one bounded by the broker's
//! timeout:
//!
//! - [`IngestLog::lease`]: take, extend or give back the stream's lease.
//! - [`IngestLog::claim`]: make the consumer group if it is missing, and
//!   move entries other consumers read but never acknowledged to this one
//!   (a crashed leader's), dropping consumers left with none.
//! - [`IngestLog::read`]: this consumer's own unacknowledged entries after
//!   an id, or new ones (waiting a while for them); a group that vanished
//!   (Redis restarted empty, the stream deleted) is made again.
//! - [`IngestLog::publish_once`]: publishes an entry's publication (through
//!   the history's atomic path when it has options) unless an earlier call
//!   with the same idempotency id did within `keep`: a leader that crashed
//!   between publishing and acknowledging is not repeated by the next one.
//! - [`IngestLog::ack`]: acknowledges entries and forgets what no consumer
//!   needs any more (Redis: trims the stream below the oldest pending entry).

use std::time::Duration;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use futures_util::future::BoxFuture;

use super::history::HistoryOptions;
use super::{BrokerError, RemoteConnection};
use crate::message::{Position, Publication};

/// The consumer group every node of a deployment reads the stream in.
pub const GROUP: &str = "duplex";

/// The longest a read waits for new entries ([`ReadFrom::New`] is capped
/// to it), so a reader comes back often to check its lease.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// One stream entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream's id for it (Redis: `<ms>-<seq>`), increasing in stream order.
    pub id: String,
    /// Its field-value pairs in order; `None` when it was trimmed away
    /// between its delivery and this read.
    pub fields: Option<Vec<(Bytes, Bytes)>>,
}

impl Entry {
    /// The value of the first field named `name`.
    pub fn field(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(f, _)| f.as_ref() == name.as_bytes())
            .map(|(_, v)| v)
    }
}

/// Which entries a read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// This consumer's own unacknowledged entries after this id (`0`: all).
    Pending(String),
    /// Entries no consumer has read yet, waiting at most this long for one.
    New(Duration),
}

/// What [`IngestLog::publish_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// Published now; the position when the channel keeps history.
    First(Option<Position>),
    /// Published before under the same id: nothing was published now; the
    /// position the first publish answered.
    Repeat(Option<Position>),
}

/// An entry the node is done with: the channel it was published on (its
/// idempotency key lives there), none for an entry it dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The entry's id.
    pub id: String,
    /// Where it was published, if it was.
    pub channel: Option<ChannelName>,
}

/// One publication to republish, as [`IngestLog::publish_once`] takes it.
#[derive(Debug, Clone)]
pub struct Republish<'a> {
    /// What to publish (`exclude` set for a connection of this node).
    pub publication: Publication,
    /// The channel's history settings; `None`: a plain publish.
    pub history: Option<HistoryOptions>,
    /// A connection of another node to skip.
    pub excluded: Option<RemoteConnection<'a>>,
    /// Names the entry across nodes and retries (the stream and entry id).
    pub id: &'a str,
    /// How long a repeat of `id` is recognised.
    pub keep: Duration,
}

/// Reads the ingest stream as one of the nodes sharing it (the module doc
/// holds the steps; Redis implements them, `broker/redis/ingest.rs`).
pub trait IngestLog: Send + Sync + 'static {
    /// Takes the lease on `stream` for `holder` while it is free, extends it
    /// while it is `holder`'s (for `ttl` from now), or with a zero `ttl`
    /// gives it back; whether `holder` holds it now.
    fn lease<'a>(
        &'a self,
        stream: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// Makes the group if it is missing and moves every entry pending for
    /// at least `min_idle` (any consumer's) to `consumer`: how many moved.
    fn claim<'a>(
        &'a self,
        stream: &'a str,
        consumer: &'a str,
        min_idle: Duration,
    ) -> BoxFuture<'a, Result<u64, BrokerError>>;

    /// At most `count` entries, in stream order.
    fn read<'a>(
        &'a self,
        stream: &'a str,
        consumer: &'a str,
        from: ReadFrom,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Entry>, BrokerError>>;

    /// Acknowledges `done` (not empty) and lets their idempotency keys
    /// expire `keep` from now.
    fn ack<'a>(
        &'a self,
        stream: &'a str,
        done: &'a [Done],
        keep: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Publishes unless `republish.id` was published within `keep`.
    fn publish_once<'a>(
        &'a self,
        republish: Republish<'a>,
    ) -> BoxFuture<'a, Result<Once, BrokerError>>;
}

/// The idempotency id of an entry: its stream and id (Redis key
/// `{<channel>}:ingested:<stream>:<entry id>`).
pub fn once_id(stream: &str, entry: &str) -> String {
    format!("{stream}:{entry}")
}
