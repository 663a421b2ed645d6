//! The embedded broker: one node, no network, publications handed straight
//! to the hub. It keeps the message kind (text or binary) as sent.

use std::sync::Arc;

use duplex_protocol::channel::ChannelName;
use futures_util::future::{self, BoxFuture, FutureExt};

use super::{BrokerError, BrokerHandler, BrokerState, BrokerStatus, Link, PubSub};
use crate::message::Publication;

/// In-process broker for a single node.
pub struct MemoryBroker {
    handler: Arc<dyn BrokerHandler>,
    state: BrokerState,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker delivering to `handler`.
    pub fn new(handler: Arc<dyn BrokerHandler>) -> Self {
        MemoryBroker {
            handler,
            state: BrokerState::new("memory", BrokerStatus::Connected),
        }
    }
}

impl Link for MemoryBroker {
    fn state(&self) -> BrokerState {
        self.state.clone()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        future::ready(()).boxed()
    }
}

impl PubSub for MemoryBroker {
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            self.handler.handle_publication(publication).await;
            Ok(())
        }
        .boxed()
    }

    fn subscribe(&self, _channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        future::ready(Ok(())).boxed()
    }

    fn unsubscribe(&self, _channel: ChannelName) -> BoxFuture<'_, Result<(), BrokerError>> {
        future::ready(Ok(())).boxed()
    }
}
