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

/// Why `history` and `recover` are refused on a channel.
pub(crate) const NO_HISTORY: &str =
    "this channel keeps no history: its namespace needs history_size and history_ttl";
