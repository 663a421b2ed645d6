//! The channels a node holds: one NATS subscription each, read by a task
//! of its own into the intake queue.
//!
//! A reader never waits on fan-out (`Intake::push` drops, counted, when the
//! backlog is full), so a NATS subscription's buffer only absorbs bursts.
//! Each channel's messages keep their order: one subscription, one reader,
//! one intake lane.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Message, Subscriber};
use duplex_protocol::channel::ChannelName;
use duplex_protocol::payload::infer_kind;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{subject, Shared, EXCLUDE_HEADER};
use crate::broker::BrokerError;
use crate::message::Publication;

/// One held channel's reader task.
pub(super) struct Reader {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    /// Unsubscribes and waits (within `timeout`) for the reader to end:
    /// nothing of the channel is taken in after.
    pub(super) async fn stop(self, timeout: Duration) {
        self.stop.cancel();
        let _ = tokio::time::timeout(timeout, self.task).await;
    }
}

impl Shared {
    /// Subscribes `channel` and starts its reader, without confirming.
    pub(super) async fn open(
        self: &Arc<Self>,
        client: &Client,
        channel: ChannelName,
    ) -> Result<Reader, BrokerError> {
        let subject = subject::subject(&self.settings.prefix, channel.as_str());
        let subscriber = client
            .subscribe(subject)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("nats subscribe failed: {e}")))?;
        let stop = self.cancel.child_token();
        let task = tokio::spawn(read(Arc::clone(self), channel, subscriber, stop.clone()));
        Ok(Reader { stop, task })
    }

    /// Holds `channel` for the node's whole life (its order channels),
    /// confirmed with the connection's first round trip.
    pub(super) async fn hold(
        self: &Arc<Self>,
        client: &Client,
        channel: ChannelName,
    ) -> Result<(), BrokerError> {
        let reader = self.open(client, channel.clone()).await?;
        self.channels.lock().insert(channel, reader);
        Ok(())
    }

    /// `PubSub::subscribe`: `Ok` once a round trip behind the SUB came back;
    /// on any failure the subscription is taken back (nothing left behind).
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        channel: ChannelName,
    ) -> Result<(), BrokerError> {
        if self.channels.lock().contains_key(&channel) {
            return Ok(());
        }
        let client = self.up()?;
        let reader = self.open(client, channel.clone()).await?;
        if let Err(e) = self.round_trip().await {
            reader.stop(self.settings.timeout).await;
            tracing::warn!(%channel, error = %e, "nats did not confirm a subscription in time");
            return Err(e);
        }
        let replaced = self.channels.lock().insert(channel, reader);
        if let Some(older) = replaced {
            older.stop(self.settings.timeout).await;
        }
        Ok(())
    }

    /// `PubSub::unsubscribe`: the reader ends before this returns. Works
    /// while NATS is away too (the client sends the UNSUB when it is back,
    /// and does not restore a dropped subscription).
    pub(super) async fn unsubscribe(&self, channel: ChannelName) -> Result<(), BrokerError> {
        let reader = self.channels.lock().remove(&channel);
        if let Some(reader) = reader {
            reader.stop(self.settings.timeout).await;
        }
        Ok(())
    }

    /// One message of a held channel, into the intake queue.
    fn take_in(&self, channel: &ChannelName, message: Message) {
        let exclude = message.headers.as_ref().and_then(|headers| {
            headers
                .get_all(EXCLUDE_HEADER)
                .find_map(|v| own_seq(&self.settings.node_id, v.as_str()))
        });
        let publication = Publication {
            kind: infer_kind(&message.payload),
            channel: channel.clone(),
            payload: message.payload,
            exclude,
            position: None,
        };
        if let Err(full) = self.intake.push(publication) {
            if let Some(skipped) = self.drop_warnings.allow() {
                tracing::warn!(
                    backlog_bytes = full.backlog,
                    limit = self.settings.backlog_bytes,
                    similar_skipped = skipped,
                    "dropped a message from nats: the node cannot fan out as fast as they arrive and the busiest channels' backlog is full (counted in broker.dropped)"
                );
            }
        }
    }
}

/// The connection number in `<node>.<seq>` when `node` is this one.
fn own_seq(node: &str, connection: &str) -> Option<u64> {
    let (holder, seq) = connection.trim().rsplit_once('.')?;
    (holder == node).then(|| seq.parse().ok()).flatten()
}

/// Reads one subscription until stopped (then unsubscribes) or closed.
async fn read(
    shared: Arc<Shared>,
    channel: ChannelName,
    mut subscriber: Subscriber,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                let _ = subscriber.unsubscribe().await;
                return;
            }
            message = subscriber.next() => match message {
                Some(message) => shared.take_in(&channel, message),
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::own_seq;

    #[test]
    fn exclusions_name_this_node_or_nobody() {
        assert_eq!(own_seq("n1", "n1.17"), Some(17));
        assert_eq!(own_seq("a.b", "a.b.3"), Some(3), "a node id may hold dots");
        assert_eq!(own_seq("n1", "n2.17"), None);
        assert_eq!(own_seq("n1", "n1.x"), None);
        assert_eq!(own_seq("n1", "garbage"), None);
    }
}
