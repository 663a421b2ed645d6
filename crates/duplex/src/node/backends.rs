//! What backends ask of a node beyond publishing: orders on `#control`
//! (disconnect a user or a connection, send to one connection). Client
//! messages up to them are `node::upstream`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use duplex_protocol::channel::ChannelName;
use duplex_protocol::ws::MessageKind;

use super::Node;
use crate::broker::BrokerError;
use crate::conn::Conn;
use crate::conn::Queued;
use crate::control::{Order, ReplyError, Target, CONN_CHANNEL_PREFIX, NODE_CHANNEL_PREFIX};
use crate::hub::{native_frame, plain_frame};
use crate::message::Publication;
use crate::message::Wire;
use crate::stats::Stats;
use crate::upstream::Outcome;

impl Node {
    /// Starts the node heartbeat (Redis), which `/api/connections` relies
    /// on. The orders themselves need nothing here: the broker holds
    /// `#control` and this node's `#node:<id>` from its start (Redis:
    /// `RedisSettings::node_channels`, restored after every reconnect; the
    /// memory broker is given the same list).
    pub fn listen_for_orders(&self) {
        self.start_heartbeat();
        self.start_probe();
    }

    /// This node's own order channel, `#node:<id>`.
    pub fn node_channel(&self) -> String {
        format!("{NODE_CHANNEL_PREFIX}{}", self.inner.id)
    }

    /// Publishes an order to the nodes it concerns (this one included): the
    /// holding node for one connection, every node otherwise.
    pub async fn publish_order(&self, order: &Order) -> Result<(), BrokerError> {
        self.publish_order_on(&order.channel(), order).await
    }

    /// Publishes an order on a given channel (answers go to the asker's `reply_to`).
    pub(super) async fn publish_order_on(
        &self,
        channel: &str,
        order: &Order,
    ) -> Result<(), BrokerError> {
        let channel = ChannelName::parse(channel, usize::MAX)
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let payload =
            serde_json::to_vec(order).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        self.inner
            .broker
            .pubsub()
            .publish(Publication {
                channel,
                payload: payload.into(),
                kind: MessageKind::Text,
                exclude: None,
                position: None,
            })
            .await
    }

    /// Carries out an order read from `#control` or `#node:<id>` on this node's connections.
    pub(super) fn apply_order(&self, payload: &[u8]) {
        let order = match Order::parse(payload) {
            Ok(order) => order,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a bad order on #control");
                return;
            }
        };
        match order {
            Order::Disconnect {
                target,
                code,
                reason,
            } => {
                let reason = if reason.is_empty() {
                    "disconnected by the server".to_string()
                } else {
                    reason
                };
                let mut closed = 0usize;
                for conn in self.addressed(&target) {
                    conn.close(code, &reason, Queued::Drop);
                    closed += 1;
                }
                if closed > 0 {
                    self.inner
                        .stats
                        .api_disconnects
                        .fetch_add(closed as u64, Relaxed);
                    tracing::info!(to = %target, code, closed, "disconnected by order");
                }
            }
            Order::Send {
                connection,
                data,
                encoding,
            } => self.send_to_connection(&connection, &data, encoding),
            Order::Unsubscribe { target, channel } => self.unsubscribe_by_order(target, channel),
            Order::Query {
                request,
                reply_to,
                user,
                limit,
            } => self.answer_query(request, reply_to, user, limit),
            Order::Answer {
                request,
                node,
                connections,
                truncated,
            } => self.take_answer(request, node, connections, truncated),
            Order::Alive { node } => self.heard_alive(node),
            Order::Probe { seq } => self.inner.probe.heard(seq),
            Order::Reply {
                connection,
                request,
                data,
                error,
            } => self.finish_call(&request, &connection, reply_outcome(data, error)),
        }
    }

    /// Applies a reply order here when the connection is on this node (no
    /// broker round trip), else publishes it to the holding node.
    pub async fn reply(&self, order: &Order) -> Result<(), BrokerError> {
        match order {
            Order::Reply {
                connection,
                request,
                data,
                error,
            } if crate::control::node_of(connection) == Some(self.id()) => {
                let outcome = reply_outcome(data.clone(), error.clone());
                self.finish_call(request, connection, outcome);
                Ok(())
            }
            _ => self.publish_order(order).await,
        }
    }

    /// Delivers a `send` order's data to one of this node's connections, on
    /// the channel `#conn:<id>`.
    fn send_to_connection(
        &self,
        id: &str,
        data: &serde_json::value::RawValue,
        encoding: duplex_protocol::payload::Encoding,
    ) {
        let Some(conn) = self.local_connection(id) else {
            return;
        };
        let (Ok((payload, kind)), Ok(channel)) = (
            crate::control::send_payload(data, encoding),
            ChannelName::parse(&format!("{CONN_CHANNEL_PREFIX}{id}"), usize::MAX),
        ) else {
            return;
        };
        let publication = Publication {
            channel,
            payload,
            kind,
            exclude: None,
            position: None,
        };
        let frame = match conn.wire {
            Wire::Plain => plain_frame(&publication),
            Wire::Native => native_frame(&publication),
        };
        Stats::bump(&self.inner.stats.deliveries);
        self.send_to(&conn, frame, "message to one connection");
    }

    /// The connection with this id, if it is on this node (`<node id>.<seq>`).
    fn local_connection(&self, id: &str) -> Option<Arc<Conn>> {
        let seq = id
            .strip_prefix(self.inner.id.as_str())?
            .strip_prefix('.')?
            .parse::<u64>()
            .ok()?;
        self.connection_by_seq(seq)
    }

    /// This node's connections an order is for.
    pub(super) fn addressed(&self, target: &Target) -> Vec<Arc<Conn>> {
        match target {
            Target::Connection(id) => self.local_connection(id).into_iter().collect(),
            Target::User(_) => self
                .connections()
                .into_iter()
                .filter(|c| target.matches(&c.id, c.user()))
                .collect(),
        }
    }
}

/// What a reply order means for the client: the backend's JSON as it wrote it.
fn reply_outcome(
    data: Option<Box<serde_json::value::RawValue>>,
    error: Option<ReplyError>,
) -> Outcome {
    if let Some(error) = error {
        return Outcome::backend_error(error.code, &error.message);
    }
    match data {
        Some(raw) => Outcome::Data(raw),
        None => match serde_json::value::to_raw_value(&serde_json::Value::Null) {
            Ok(null) => Outcome::Data(null),
            Err(e) => Outcome::Error(
                duplex_protocol::code::ErrorCode::UpstreamFailed,
                format!("backend reply cannot be encoded: {e}"),
            ),
        },
    }
}
