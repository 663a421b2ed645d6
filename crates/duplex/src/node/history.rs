//! History channels on this node: publishing with an offset, reading what
//! a channel kept, and the namespace table backends' `FCALL` resolves.
//! Catching a new subscription up is the session's (`session::native`),
//! with the connection's gate (`conn::gate`).

use super::*;
use crate::broker::history::{HistoryOptions, HistoryPage, NamespaceHistory, Query};
use crate::message::Position;
use crate::permissions::HistoryRule;
use duplex_protocol::history::Kept;
use duplex_protocol::payload::json_form;
use std::collections::HashMap;

/// The broker's options for a namespace's history rule.
pub(crate) fn options(rule: &HistoryRule) -> HistoryOptions {
    HistoryOptions {
        size: rule.size,
        ttl: rule.ttl,
        meta_ttl: rule.meta_ttl,
    }
}

impl Node {
    /// The history settings of `channel`, if its namespace keeps history.
    pub(crate) fn history_rule(&self, channel: &ChannelName) -> Option<HistoryRule> {
        if channel.is_reserved() {
            return None;
        }
        self.permissions().history(channel.as_str())
    }

    /// Hands the namespace table to the broker (start and reload), for
    /// publishes from backends that name no options (`FCALL duplex_publish`).
    pub(super) fn share_history_table(&self) {
        let keeps = self.permissions().keeps_history();
        self.inner.keeps_history.store(keeps, Relaxed);
        let table: Vec<NamespaceHistory> = self
            .permissions()
            .history_table()
            .into_iter()
            .map(|(pattern, rule)| (pattern.to_string(), rule.as_ref().map(options)))
            .collect();
        let node = self.clone();
        self.inner.tasks.spawn(async move {
            let Ok(history) = node.inner.broker.history() else {
                return;
            };
            // Kept by the broker and written again at its next connect.
            if let Err(e) = history.set_namespaces(&table).await {
                tracing::debug!(error = %e, "namespace history table not written yet");
            }
        });
    }

    /// Publishes to every subscriber on every node; on a history channel
    /// through the broker's atomic append-and-publish, answering the
    /// publication's position.
    pub async fn publish(&self, publication: Publication) -> Result<Option<Position>, BrokerError> {
        self.publish_skipping(publication, None).await
    }

    /// [`Node::publish`], skipping one connection held by another node when
    /// `skip` names one (see [`Node::publish_excluding`]).
    pub(super) async fn publish_skipping(
        &self,
        publication: Publication,
        skip: Option<crate::broker::RemoteConnection<'_>>,
    ) -> Result<Option<Position>, BrokerError> {
        Stats::bump(&self.inner.stats.messages_published);
        let channel = publication.channel.clone();
        let broker = &self.inner.broker;
        let result = match (self.history_rule(&channel), skip) {
            (None, None) => broker.pubsub().publish(publication).await.map(|()| None),
            (None, Some(skip)) => broker
                .pubsub()
                .publish_excluding(publication, skip)
                .await
                .map(|()| None),
            (Some(rule), skip) => {
                let options = options(&rule);
                match (broker.history(), skip) {
                    (Ok(history), None) => history.publish(publication, &options).await.map(Some),
                    (Ok(history), Some(skip)) => history
                        .publish_excluding(publication, &options, skip)
                        .await
                        .map(Some),
                    (Err(e), _) => Err(e),
                }
            }
        };
        self.count_failure(&channel, result)
    }

    /// Reads `channel`'s kept publications and its position, or why not
    /// ([`BrokerError::Unsupported`] when it keeps no history). A reader
    /// that joined the channel (`ticket`, from [`Node::subscribe_history`])
    /// is answered from the node's run of it when that holds the whole
    /// answer (`node::tail`), and what it reads goes into the run; identical
    /// broker reads at once share one read ([`Flights`]). A recovery storm
    /// costs one read per channel, not one per client.
    pub(crate) async fn read_history(
        &self,
        channel: &ChannelName,
        query: Query,
        ticket: Option<Ticket>,
    ) -> Result<(HistoryRule, Arc<HistoryPage>), BrokerError> {
        let rule = self
            .history_rule(channel)
            .ok_or(BrokerError::Unsupported(NO_HISTORY))?;
        if ticket.is_some() {
            if let Some(page) = self.inner.tails.serve(channel, query) {
                Stats::bump(&self.inner.stats.history_reads_local);
                return Ok((rule, Arc::new(page)));
            }
        }
        let key = (channel.clone(), query.since, query.limit, query.reverse);
        let page = match self.inner.flights.join(&key, ticket) {
            Some(waiting) => {
                Stats::bump(&self.inner.stats.history_reads_shared);
                waiting.await.unwrap_or(Err(Shared::Closed))
            }
            None => {
                let read = self.read_once(channel, query, &rule).await;
                if let (Some(ticket), Ok(page)) = (ticket, &read) {
                    self.inner.tails.merge(channel, ticket, page);
                }
                self.serve_waiting(key, rule);
                read
            }
        };
        let page = page.map_err(Shared::into_error)?;
        Ok((rule, page))
    }

    /// A reader saw `seen` but the channel's history, in the same epoch,
    /// ends below it at `top`: the broker lost its newest publications (a
    /// failover promoted a replica that missed them). Starts a new epoch
    /// so the offsets handed out again are never taken for the lost ones
    /// (`History::restart_epoch`); the node's run of the channel goes
    /// with the old epoch. The position after, or `None` when `seen` was
    /// not ahead (or the restart failed: logged, and the next reader tries).
    pub(crate) async fn restart_if_behind(
        &self,
        channel: &ChannelName,
        seen: &Position,
        top: &Position,
    ) -> Option<Position> {
        if seen.epoch != top.epoch || seen.offset <= top.offset {
            return None;
        }
        let rule = self.history_rule(channel)?;
        let history = self.inner.broker.history().ok()?;
        match history
            .restart_epoch(channel.clone(), seen, &options(&rule))
            .await
        {
            Ok(now) => {
                Stats::bump(&self.inner.stats.history_epochs_restarted);
                self.inner.tails.remove(channel);
                tracing::warn!(%channel, seen = seen.offset, top = top.offset, epoch = %now.epoch, "history channel behind what a reader saw (publications lost by a broker failover?): new epoch started");
                Some(now)
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "history channel behind what a reader saw; starting a new epoch failed");
                None
            }
        }
    }

    async fn read_once(&self, channel: &ChannelName, query: Query, rule: &HistoryRule) -> Read {
        Stats::bump(&self.inner.stats.history_reads);
        let options = options(rule);
        let history = self.inner.broker.history().map_err(Shared::from)?;
        match history.read(channel.clone(), query, &options).await {
            Ok(page) => Ok(Arc::new(page)),
            Err(e) => Err(Shared::from(e)),
        }
    }

    /// Answers those who asked while the last read ran (it may have
    /// started before they joined the channel): from the run when it now
    /// holds their answer, else by reading again, until nobody waits.
    fn serve_waiting(&self, key: ReadKey, rule: HistoryRule) {
        let Some(waiting) = self.inner.flights.next_batch(&key) else {
            return;
        };
        let node = self.clone();
        self.inner.tasks.spawn(async move {
            let mut waiting = waiting;
            loop {
                let (channel, since, limit, reverse) = key.clone();
                let query = Query {
                    since,
                    limit,
                    reverse,
                };
                let waiting_now = std::mem::take(&mut waiting);
                let left = node.answer_from_tail(&channel, query, waiting_now);
                if !left.is_empty() {
                    let read = node.read_once(&channel, query, &rule).await;
                    let ticket = left.iter().find_map(|(_, ticket)| *ticket);
                    if let (Some(ticket), Ok(page)) = (ticket, &read) {
                        node.inner.tails.merge(&channel, ticket, page);
                    }
                    for (tx, _) in left {
                        let _ = tx.send(read.clone());
                    }
                }
                match node.inner.flights.next_batch(&key) {
                    Some(next) => waiting = next,
                    None => return,
                }
            }
        });
    }

    /// Answers the waiting readers that joined the channel from its run
    /// when it holds their answer; those left need a broker read.
    fn answer_from_tail(
        &self,
        channel: &ChannelName,
        query: Query,
        waiting: Vec<Waiter>,
    ) -> Vec<Waiter> {
        let joined = waiting.iter().any(|(_, ticket)| ticket.is_some());
        let Some(page) = joined
            .then(|| self.inner.tails.serve(channel, query))
            .flatten()
        else {
            return waiting;
        };
        let page = Arc::new(page);
        let (served, left): (Vec<Waiter>, Vec<Waiter>) = waiting
            .into_iter()
            .partition(|(_, ticket)| ticket.is_some());
        for (tx, _) in served {
            Stats::bump(&self.inner.stats.history_reads_local);
            let _ = tx.send(Ok(Arc::clone(&page)));
        }
        left
    }
}

/// What identifies a read: channel, since, limit, reverse.
pub(super) type ReadKey = (ChannelName, Option<u64>, usize, bool);
/// A read's outcome, shareable between those who asked.
type Read = Result<Arc<HistoryPage>, Shared>;
/// One reader waiting for the next read, and its ticket if it joined the channel.
type Waiter = (tokio::sync::oneshot::Sender<Read>, Option<Ticket>);

/// A broker error as shared between the readers of one read.
#[derive(Debug, Clone)]
pub(super) enum Shared {
    /// The node shut down while they waited.
    Closed,
    /// The backend keeps no history.
    Unsupported(&'static str),
    /// Anything else, as text.
    Failed(String),
}

impl From<BrokerError> for Shared {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unsupported(why) => Shared::Unsupported(why),
            e => Shared::Failed(e.to_string()),
        }
    }
}

impl Shared {
    fn into_error(self) -> BrokerError {
        match self {
            Shared::Closed => BrokerError::Closed,
            Shared::Unsupported(why) => BrokerError::Unsupported(why),
            Shared::Failed(why) => BrokerError::Unavailable(why),
        }
    }
}

/// History reads in flight, by [`ReadKey`]: a read that starts while an
/// identical one runs waits for the next one, which starts when the
/// running one ends and serves everyone who waited meanwhile (a read that
/// started before a subscriber joined its channel could miss what was
/// published in between, so nobody joins a read already running).
#[derive(Debug, Default)]
pub(super) struct Flights {
    running: parking_lot::Mutex<HashMap<ReadKey, Vec<Waiter>>>,
}

impl Flights {
    /// `None`: no identical read runs, the caller reads (and must call
    /// [`Flights::next_batch`] after). `Some`: the next read's result.
    fn join(
        &self,
        key: &ReadKey,
        ticket: Option<Ticket>,
    ) -> Option<tokio::sync::oneshot::Receiver<Read>> {
        let mut running = self.running.lock();
        match running.get_mut(key) {
            Some(waiting) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                waiting.push((tx, ticket));
                Some(rx)
            }
            None => {
                running.insert(key.clone(), Vec::new());
                None
            }
        }
    }

    /// Those waiting for the next read of `key`, or `None` (and the key
    /// forgotten) when nobody is.
    fn next_batch(&self, key: &ReadKey) -> Option<Vec<Waiter>> {
        let mut running = self.running.lock();
        let waiting = running.get_mut(key).map(std::mem::take).unwrap_or_default();
        if waiting.is_empty() {
            running.remove(key);
            return None;
        }
        Some(waiting)
    }
}

/// The read a `history` command or `GET /api/history` asks for, its limit
/// capped by the channel's `history_size`.
pub(crate) fn history_query(
    rule: &HistoryRule,
    since: Option<u64>,
    limit: Option<usize>,
    reverse: bool,
) -> Query {
    Query {
        since,
        limit: limit.unwrap_or(rule.size).min(rule.size),
        reverse,
    }
}

/// A kept publication as `history` lists it.
pub(crate) fn kept(p: &crate::message::Publication) -> Kept<'_> {
    Kept {
        offset: p.position.as_ref().map_or(0, |at| at.offset),
        payload: &p.payload,
        form: json_form(&p.payload, p.kind),
    }
}

/// Whether a read after `offset` in `epoch` fills the whole gap: the same
/// epoch, at most `max` missed, and every offset from `offset + 1` to the
/// top in hand. Anything less is no recovery at all.
pub(crate) fn fills_gap(epoch: &str, offset: u64, page: &HistoryPage, max: usize) -> bool {
    if epoch != &*page.top.epoch || offset > page.top.offset {
        return false;
    }
    let Ok(missed) = usize::try_from(page.top.offset - offset) else {
        return false;
    };
    missed <= max
        && page.publications.len() == missed
        && page
            .publications
            .iter()
            .zip(offset + 1..)
            .all(|(p, want)| p.position.as_ref().is_some_and(|at| at.offset == want))
}

/// Why `history` and `recover` are refused on a channel.
pub(crate) const NO_HISTORY: &str =
    "this channel keeps no history: its namespace needs history_size and history_ttl";

#[cfg(test)]
mod tests {
    use super::*;
    use duplex_protocol::ws::MessageKind;

    fn page(epoch: &str, top: u64, offsets: &[u64]) -> HistoryPage {
        let epoch: Arc<str> = epoch.into();
        let channel = ChannelName::parse("news", 64).unwrap();
        HistoryPage {
            top: Position {
                offset: top,
                epoch: epoch.clone(),
            },
            publications: offsets
                .iter()
                .map(|&offset| Publication {
                    channel: channel.clone(),
                    payload: Bytes::new(),
                    kind: MessageKind::Text,
                    exclude: None,
                    position: Some(Position {
                        offset,
                        epoch: epoch.clone(),
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn only_the_whole_gap_in_the_same_epoch_recovers() {
        assert!(fills_gap("e", 5, &page("e", 5, &[]), 10), "nothing missed");
        assert!(fills_gap("e", 2, &page("e", 5, &[3, 4, 5]), 10));
        assert!(
            !fills_gap("x", 2, &page("e", 5, &[3, 4, 5]), 10),
            "other epoch"
        );
        assert!(
            !fills_gap("e", 1, &page("e", 5, &[3, 4, 5]), 10),
            "2 is gone"
        );
        assert!(
            !fills_gap("e", 2, &page("e", 5, &[3, 4, 5]), 2),
            "over the max"
        );
        assert!(
            !fills_gap("e", 7, &page("e", 5, &[]), 10),
            "ahead of the top"
        );
        assert!(!fills_gap("e", 2, &page("e", 5, &[3, 5]), 10), "a hole");
    }
}
