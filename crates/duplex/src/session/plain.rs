//! Plain mode, the classic demo's contract: a WebSocket at `/` is
//! subscribed to the default channel (or `?channel=a&channel=b`); every
//! message on those channels arrives as one frame of exactly the published
//! bytes; every frame the client sends is published to its first channel.
//! There is no error channel in this mode: a publish the broker refuses, or
//! a frame over the publish rate or over the byte budget up to the
//! backends, is counted (`plain_publish_dropped`) and logged.

use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::code::CloseCode;
use duplex_protocol::ws::MessageKind;

use super::{user_of, Authenticated, Flow};
use crate::conn::Conn;
use crate::limits::{AddressFull, AddressSubscriptions};
use crate::message::Publication;
use crate::node::{Message, Node};
use crate::permissions::{Asker, Denied};
use crate::rate::{RateLimit, Verdict};
use crate::stats::Stats;
use crate::upstream::{OverBudget, Route};

/// State of one plain client.
#[derive(Debug)]
pub(crate) struct PlainSession {
    /// Subscribed channels; the first is where the client's frames go.
    channels: Vec<ChannelName>,
    /// Who the token said the client is; None while anonymous.
    auth: Option<Box<Authenticated>>,
    publish_rate: RateLimit,
    /// Bytes per second up to the backends (`max_upstream_rate`); made at
    /// the first frame that goes up.
    upstream_budget: Option<Box<RateLimit>>,
    /// This connection's part of its address's subscriptions.
    _address_subscriptions: AddressSubscriptions,
}

/// Why a plain client could not be subscribed to its channels.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unstarted {
    /// The broker refused a subscription (the detail is for the log).
    #[error("broker unavailable, try again")]
    Broker(String),
    /// The client's address holds `max_subscriptions_per_ip`.
    #[error(transparent)]
    AddressFull(#[from] AddressFull),
}

impl PlainSession {
    /// Subscribes the connection to `channels` (non-empty, validated,
    /// distinct), all of them or none when its address has no room for them.
    pub(crate) async fn start(
        node: &Node,
        conn: &Arc<Conn>,
        channels: Vec<ChannelName>,
        auth: Option<Box<Authenticated>>,
    ) -> Result<Self, (Self, Unstarted)> {
        let mut share = node.address_subscriptions(conn);
        let reserved = share.reserve(channels.len());
        let mut session = PlainSession {
            channels: Vec::with_capacity(channels.len()),
            auth,
            publish_rate: RateLimit::new(node.config().max_publish_rate),
            upstream_budget: None,
            _address_subscriptions: share,
        };
        if let Err(full) = reserved {
            Stats::bump(&node.stats().subscriptions_refused);
            tracing::debug!(conn = %conn.id, addr = %conn.remote, %full, "plain client refused");
            return Err((session, full.into()));
        }
        for channel in channels {
            if let Err(e) = node.subscribe(conn, &channel).await {
                return Err((session, Unstarted::Broker(e.to_string())));
            }
            session.channels.push(channel);
        }
        Ok(session)
    }

    pub(crate) async fn on_message(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        kind: MessageKind,
        payload: Bytes,
    ) -> Flow {
        let config = node.config();
        if !config.plain_publish {
            return Flow::Close(
                CloseCode::PolicyViolation,
                "publishing is disabled for plain clients".to_string(),
            );
        }
        let Some(channel) = self.channels.first() else {
            return Flow::Continue;
        };
        let frames = config.plain_frames;
        // The channel's namespace may have its own stream or URL.
        let route = frames
            .to_upstream()
            .then(|| node.route(Some(channel.as_str())));
        // No error channel in plain mode: over a limit, the frame is
        // dropped and counted; a client that keeps going is closed.
        let (budget, rate) = (&mut self.upstream_budget, &mut self.publish_rate);
        if let Err(flow) = within_limits(budget, rate, node, conn, payload.len(), route.as_ref()) {
            return flow;
        }
        if frames.to_channel() {
            if let Some(denied) = self.publish_denied(node, channel) {
                Stats::bump(&node.stats().auth_denials);
                return Flow::Close(
                    CloseCode::PolicyViolation,
                    format!("{denied} ({channel:?}, the first channel of this connection)"),
                );
            }
        }
        if let Some(route) = route {
            // The route's URL (the namespace's, else the node's) takes
            // frames as it takes `send` and `rpc`, else its stream.
            let message = Message {
                payload: payload.clone(),
                kind,
                send: None,
            };
            if let Err(e) = node.send_up(conn, message, &route).await {
                // Counted in upstream_failures by the node; a POST's own
                // outcome is counted when it ends.
                Stats::bump(&node.stats().plain_publish_dropped);
                tracing::debug!(conn = %conn.id, %channel, error = %e, "plain client's message dropped: upstream refused it");
            }
        }
        if frames.to_channel() {
            let publication = Publication {
                channel: channel.clone(),
                payload,
                kind,
                exclude: (!config.plain_echo).then_some(conn.seq),
                position: None,
            };
            Stats::bump(&node.stats().client_publishes);
            if let Err(e) = node.publish(publication).await {
                Stats::bump(&node.stats().plain_publish_dropped);
                // Node::publish already logged it (throttled); this one is at debug.
                tracing::debug!(conn = %conn.id, %channel, error = %e, "plain client's message dropped: broker refused it");
            }
        }
        Flow::Continue
    }

    /// Why this client may not publish to its channel, if it may not.
    fn publish_denied(&self, node: &Node, channel: &ChannelName) -> Option<Denied> {
        if channel.is_reserved() {
            // `#user:` and other server channels are written by backends only.
            return Some(Denied::Forbidden);
        }
        let asker = Asker {
            user: user_of(&self.auth),
            has_channel_token: false,
            subscribed: true,
        };
        node.permissions()
            .can_publish(channel.as_str(), asker)
            .err()
    }

    pub(crate) fn into_channels(self) -> Vec<ChannelName> {
        self.channels
    }
}

/// Charges a frame of `cost` bytes against the connection's byte budget
/// (when it goes up to a backend) and then its publish rate; `Err` is
/// what becomes of the frame and the client when over a limit. The byte
/// budget comes first, so that its refusals in a row are its own and not
/// the publish rate's.
fn within_limits(
    upstream_budget: &mut Option<Box<RateLimit>>,
    publish_rate: &mut RateLimit,
    node: &Node,
    conn: &Arc<Conn>,
    cost: usize,
    route: Option<&Route<'_>>,
) -> Result<(), Flow> {
    if let Some(route) = route {
        let budget =
            upstream_budget.get_or_insert_with(|| Box::new(node.connection_upstream_budget()));
        match node.charge_upstream(conn, budget, cost, route) {
            Ok(()) => {}
            Err(over @ OverBudget::KeptOn(_)) => {
                return Err(Flow::Close(CloseCode::TooManyRequests, over.to_string()));
            }
            Err(OverBudget::Connection(_) | OverBudget::Node(_)) => {
                Stats::bump(&node.stats().plain_publish_dropped);
                return Err(Flow::Continue);
            }
        }
    }
    match publish_rate.check() {
        Verdict::Allow => Ok(()),
        Verdict::Refuse => {
            Stats::bump(&node.stats().plain_publish_dropped);
            // Not sent after all: its bytes go back to its budget.
            if let (Some(_), Some(budget)) = (route, upstream_budget.as_deref_mut()) {
                budget.refund(cost as u64);
            }
            Err(Flow::Continue)
        }
        Verdict::Close => Err(Flow::Close(
            CloseCode::TooManyRequests,
            "kept publishing over the rate limit".to_string(),
        )),
    }
}
