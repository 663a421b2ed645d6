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
        Stats::bump(&self.inner.stats.messages_published);
        let channel = publication.channel.clone();
        let result = match self.history_rule(&channel) {
            None => self
                .inner
                .broker
                .pubsub()
                .publish(publication)
                .await
                .map(|()| None),
            Some(rule) => {
                let options = options(&rule);
                match self.inner.broker.history() {
                    Ok(history) => history.publish(publication, &options).await.map(Some),
                    Err(e) => Err(e),
                }
            }
        };
        self.count_failure(&channel, result)
    }

    /// Publishes skipping one connection held by another node (see
    /// [`Node::publish_excluding`]).
    pub(super) async fn publish_skipping(
        &self,
        publication: Publication,
        excluded: crate::broker::RemoteConnection<'_>,
    ) -> Result<Option<Position>, BrokerError> {
        Stats::bump(&self.inner.stats.messages_published);
        let channel = publication.channel.clone();
        let result = match self.history_rule(&channel) {
            None => self
                .inner
                .broker
                .pubsub()
                .publish_excluding(publication, excluded)
                .await
                .map(|()| None),
            Some(rule) => {
                let options = options(&rule);
                match self.inner.broker.history() {
                    Ok(history) => history
                        .publish_excluding(publication, &options, excluded)
                        .await
                        .map(Some),
                    Err(e) => Err(e),
                }
            }
        };
        self.count_failure(&channel, result)
    }

    /// Reads `channel`'s kept publications and its position, or why not
    /// ([`BrokerError::Unsupported`] when it keeps no history).
    pub(crate) async fn read_history(
        &self,
        channel: &ChannelName,
        query: Query,
    ) -> Result<(HistoryRule, HistoryPage), BrokerError> {
        let rule = self
            .history_rule(channel)
            .ok_or(BrokerError::Unsupported(NO_HISTORY))?;
        Stats::bump(&self.inner.stats.history_reads);
        let options = options(&rule);
        let page = self
            .inner
            .broker
            .history()?
            .read(channel.clone(), query, &options)
            .await?;
        // Where this node's clients of the channel stand, for a repair.
        if self.inner.hub.holds(channel.as_str()) {
            self.inner.repairs.note_position(channel, &page.top);
        }
        Ok((rule, page))
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
