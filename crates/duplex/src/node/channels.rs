//! Channels on this node: subscribing and leaving them (one broker
//! subscription per channel, whatever the number of local subscribers),
//! queueing to one connection, and publishing through the broker
//! (`node::history` holds `publish` itself).

use super::*;

impl Node {
    /// The lock that orders one channel's subscription changes (channels
    /// share [`STRIPES`] locks).
    pub(super) fn stripe(&self, channel: &ChannelName) -> &tokio::sync::Mutex<()> {
        let i = self.inner.hasher.hash_one(channel.as_str()) as usize % STRIPES;
        &self.inner.stripes[i]
    }

    /// Subscribes `conn` (which must not hold `channel` yet) on this node.
    pub(crate) async fn subscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
    ) -> Result<(), BrokerError> {
        let _guard = self.stripe(channel).lock().await;
        self.subscribe_held(conn, channel).await
    }

    async fn subscribe_held(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
    ) -> Result<(), BrokerError> {
        if self.inner.hub.subscribe(channel, conn) {
            if let Err(e) = self.inner.broker.pubsub().subscribe(channel.clone()).await {
                self.inner.hub.unsubscribe(channel.as_str(), conn.seq);
                return Err(e);
            }
        }
        self.inner.stats.subscriptions.fetch_add(1, Relaxed);
        Ok(())
    }

    /// [`Node::subscribe`] to a history channel, opening the node's run of
    /// it under the same lock (`node::tail`): the ticket lets this
    /// subscriber's reads be answered from, and merged into, the run
    /// (`recovering`: it will ask for what it missed).
    pub(crate) async fn subscribe_history(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        rule: &crate::permissions::HistoryRule,
        recovering: bool,
    ) -> Result<Option<Ticket>, BrokerError> {
        let _guard = self.stripe(channel).lock().await;
        self.subscribe_held(conn, channel).await?;
        let limits = tail::Limits::for_subscriber(rule, recovering);
        Ok(self.inner.tails.open(channel, limits))
    }

    /// Unsubscribes `conn` (which must hold `channel`).
    /// Queues a reply or control frame (`what` names it in the log). An
    /// overflow cuts the client as a slow consumer, counted and logged just
    /// like an overflowing delivery.
    pub(crate) fn send_to(&self, conn: &Conn, frame: Bytes, what: &'static str) {
        if let Err(PushError::SlowConsumer) = conn.send(frame) {
            Stats::bump(&self.inner.stats.slow_consumer_disconnects);
            tracing::warn!(conn = %conn.id, addr = %conn.remote, frame = what, "slow consumer disconnected: outbound queue full");
        }
    }

    /// A channel an `unsubscribe` order already took is skipped.
    pub(crate) async fn unsubscribe(&self, conn: &Conn, channel: &ChannelName) {
        let removed = {
            let _guard = self.stripe(channel).lock().await;
            self.unsubscribe_held(conn, channel).await
        };
        if removed {
            self.leave_presence(conn, channel).await;
        }
    }

    /// Under the channel's stripe lock: removes `conn` from `channel` if it
    /// is there (false if not), leaving the broker after the last one. The
    /// caller then calls [`Node::leave_presence`], outside the stripe lock.
    pub(super) async fn unsubscribe_held(&self, conn: &Conn, channel: &ChannelName) -> bool {
        if !self.inner.hub.contains(channel.as_str(), conn.seq) {
            return false;
        }
        // The node itself listens on the order channels: a client that was
        // let in there must not take the node's own subscription with it.
        if self.inner.hub.unsubscribe(channel.as_str(), conn.seq) && !is_order_channel(channel) {
            self.inner.repairs.forget(channel);
            self.inner.tails.remove(channel);
            if let Err(e) = self
                .inner
                .broker
                .pubsub()
                .unsubscribe(channel.clone())
                .await
            {
                tracing::warn!(%channel, error = %e, "broker unsubscribe failed");
            }
        }
        self.inner.stats.subscriptions.fetch_sub(1, Relaxed);
        true
    }

    /// Publishes to every subscriber on every node except one connection,
    /// on whichever node it is (`<node>.<n>`; a connection that no longer
    /// exists skips nothing).
    pub async fn publish_excluding(
        &self,
        mut publication: Publication,
        connection: &str,
    ) -> Result<Option<crate::message::Position>, BrokerError> {
        match crate::control::split_connection_id(connection) {
            Some((node, seq)) if node == self.inner.id => {
                publication.exclude = Some(seq);
                self.publish(publication).await
            }
            Some((node, seq)) => {
                let excluded = crate::broker::RemoteConnection { node, seq };
                self.publish_skipping(publication, Some(excluded)).await
            }
            None => self.publish(publication).await,
        }
    }

    pub(super) fn count_failure<T>(
        &self,
        channel: &ChannelName,
        result: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        if let Err(e) = &result {
            Stats::bump(&self.inner.stats.publish_failures);
            if let Some(skipped) = self.inner.publish_warnings.allow() {
                tracing::warn!(%channel, error = %e, similar_skipped = skipped, "publish failed (counted in publish_failures)");
            }
        }
        result
    }

    /// Channels with local subscribers and their counts.
    pub fn channels(&self) -> Vec<(ChannelName, usize)> {
        self.inner.hub.channels()
    }
}
