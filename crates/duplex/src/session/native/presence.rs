//! Presence in the native protocol: a subscription to a presence channel
//! makes the connection a member (its user and token `info`), and the
//! `presence` / `presence_stats` commands answer who is there, for a
//! client that may subscribe to the channel (docs/PRESENCE.md).

use duplex_protocol::channel::ChannelName;
use duplex_protocol::code::ErrorCode;
use duplex_protocol::presence::{MemberView, PresenceParams, PresenceResult, PresenceStatsResult};
use duplex_protocol::push;

use super::rules::{broker_error, parse_channel};
use super::{NativeSession, Refusal, Reply};
use crate::broker::BrokerError;
use crate::conn::Conn;
use crate::node::{Joiner, Node};

/// What a client asking about a channel without presence is told.
pub(crate) const NO_PRESENCE: &str =
    "this channel keeps no presence (its namespace does not set presence = true)";

/// Makes `conn`, just subscribed to `channel`, a member when the channel
/// keeps presence; on an error the caller takes the subscription back.
pub(super) async fn enter(
    node: &Node,
    conn: &Conn,
    channel: &ChannelName,
    who: Joiner<'_>,
) -> Result<(), BrokerError> {
    match node.presence_rule(channel) {
        Some(rule) => node.join_presence(conn, channel, rule, who).await,
        None => Ok(()),
    }
}

impl NativeSession {
    /// A channel the client may ask about: subscribed, or one it may
    /// subscribe to (refused with subscribe's own error), with presence.
    fn presence_channel(
        &self,
        node: &Node,
        conn: &Conn,
        name: &str,
    ) -> Result<ChannelName, Refusal> {
        let channel = parse_channel(node, name, None)?;
        if !self.channels.contains(&channel) {
            self.may_subscribe(node, conn, &channel, None)?;
        }
        if node.presence_rule(&channel).is_none() {
            return Err(Refusal::Error(
                ErrorCode::NoPresence,
                NO_PRESENCE.to_string(),
            ));
        }
        Ok(channel)
    }

    /// `presence`: the channel's members on every node.
    pub(super) async fn presence(
        &self,
        node: &Node,
        conn: &Conn,
        id: u64,
        params: PresenceParams,
    ) -> Reply {
        let channel = self.presence_channel(node, conn, &params.channel)?;
        let members = node
            .presence_members(&channel)
            .await
            .map_err(|e| Refusal::from(broker_error(e)))?;
        Ok(push::reply(id, &presence_result(&members)))
    }

    /// `presence_stats`: the channel's counts of connections and users.
    pub(super) async fn presence_stats(
        &self,
        node: &Node,
        conn: &Conn,
        id: u64,
        params: PresenceParams,
    ) -> Reply {
        let channel = self.presence_channel(node, conn, &params.channel)?;
        let stats = node
            .presence_stats(&channel)
            .await
            .map_err(|e| Refusal::from(broker_error(e)))?;
        Ok(push::reply(
            id,
            &PresenceStatsResult {
                connections: stats.connections,
                users: stats.users,
            },
        ))
    }
}

/// Members as the protocol and the HTTP API list them.
pub(crate) fn presence_result(members: &[crate::broker::presence::Member]) -> PresenceResult<'_> {
    PresenceResult {
        members: members
            .iter()
            .map(|m| MemberView {
                conn: &m.conn,
                user: &m.user,
                info: crate::node::info_json(&m.info),
            })
            .collect(),
    }
}

impl NativeSession {
    /// [`enter`] for a channel `subscribe` just joined; on an error the
    /// subscription is taken back.
    pub(super) async fn enter(
        &mut self,
        node: &Node,
        conn: &Conn,
        channel: &ChannelName,
        who: Joiner<'_>,
    ) -> Result<(), BrokerError> {
        let Err(e) = enter(node, conn, channel, who).await else {
            return Ok(());
        };
        conn.discard(channel);
        self.channels.shift_remove(channel);
        node.unsubscribe(conn, channel).await;
        Err(e)
    }
}
