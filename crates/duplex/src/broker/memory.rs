//! The embedded broker: one node, no network, publications handed straight
//! to the hub. It keeps the message kind (text or binary) as sent.
//!
//! Like every broker it hands over only the channels the node holds (its
//! order channels for its whole life, others between subscribe and
//! unsubscribe), so a publication nobody here wants costs no fan-out and is
//! not counted as received.

use std::collections::HashSet;
use std::sync::Arc;

use duplex_protocol::channel::ChannelName;
use futures_util::future::{self, BoxFuture, FutureExt};
use parking_lot::RwLock;

use super::history::memory::Store;
use super::presence::memory::Store as PresenceStore;
use super::{BrokerError, BrokerHandler, BrokerState, BrokerStatus, Link, PubSub};
use crate::message::Publication;

/// In-process broker for a single node.
pub struct MemoryBroker {
    pub(super) handler: Arc<dyn BrokerHandler>,
    state: BrokerState,
    /// The node's own channels, held whatever its clients do.
    node_channels: HashSet<String>,
    /// Channels subscribed by the node for its clients.
    subscribed: RwLock<HashSet<ChannelName>>,
    /// Channels' histories (`broker::history::memory`).
    pub(super) history: Store,
    /// Channels' members (`broker::presence::memory`).
    pub(super) presence: PresenceStore,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker delivering to `handler` the publications on
    /// `node_channels` and on the channels subscribed meanwhile.
    pub fn new(handler: Arc<dyn BrokerHandler>, node_channels: &[String]) -> Self {
        MemoryBroker {
            handler,
            state: BrokerState::new("memory", BrokerStatus::Connected),
            node_channels: node_channels.iter().cloned().collect(),
            subscribed: RwLock::default(),
            history: Store::default(),
            presence: PresenceStore::default(),
        }
    }

    pub(super) fn holds(&self, channel: &ChannelName) -> bool {
        self.node_channels.contains(channel.as_str()) || self.subscribed.read().contains(channel)
    }
}

impl Link for MemoryBroker {
    fn state(&self) -> BrokerState {
        self.state.clone()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        future::ready(()).boxed()
    }

    fn shared(&self) -> bool {
        false
    }
}

impl PubSub for MemoryBroker {
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            if self.holds(&publication.channel) {
                self.handler.handle_publication(publication).await;
            }
            Ok(())
        }
        .boxed()
    }

    fn subscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.subscribed.write().insert(channel);
        future::ready(Ok(())).boxed()
    }

    fn unsubscribe(&self, channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.subscribed.write().remove(&channel);
        future::ready(Ok(())).boxed()
    }
}
