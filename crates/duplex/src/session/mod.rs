//! One client's state machine, the only place that knows both a client and
//! the node: what it is subscribed to, whether it introduced itself, what it
//! may do. Transport hands it whole messages; it answers with frames queued
//! on the connection and tells transport when to close.
//!
//! - [`plain`]: the classic mode at `/`: frames in are publishes, messages
//!   out are the published bytes.
//! - [`native`]: the JSON protocol at `/ws` (see docs/PROTOCOL.md).

pub(crate) mod admit;
pub(crate) mod native;
pub(crate) mod plain;

use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::code::CloseCode;
use duplex_protocol::time::NumericDate;
use duplex_protocol::ws::MessageKind;

use crate::auth::TokenError;
use crate::conn::Conn;
use crate::limits::UserSlot;
use crate::node::Node;
use crate::permissions::{Asker, Denied};
use crate::stats::Stats;

/// Channels a backend uses to reach every connection of one user, on every node.
pub(crate) const USER_CHANNEL_PREFIX: &str = "#user:";

/// Who a client is, from its token.
#[derive(Debug, Default, Clone)]
pub(crate) struct Identity {
    /// User id; empty for anonymous clients.
    pub(crate) user: String,
    /// Token expiry (`exp`), Unix seconds.
    pub(crate) expires: Option<NumericDate>,
    /// Channels the token subscribes the client to.
    pub(crate) channels: Vec<String>,
    /// The token's `info` claim (what presence shows of the client).
    pub(crate) info: Option<Box<serde_json::value::RawValue>>,
}

/// `#user:<id>` belongs to the connections of user `<id>` (never to anonymous ones).
pub(crate) fn is_own_user_channel(channel: &ChannelName, user: Option<&str>) -> bool {
    match (channel.as_str().strip_prefix(USER_CHANNEL_PREFIX), user) {
        (Some(id), Some(user)) => !user.is_empty() && id == user,
        _ => false,
    }
}

/// What a token established about a connection. Boxed in the sessions, so
/// anonymous connections (the common idle case) pay one pointer for it.
#[derive(Debug)]
pub(crate) struct Authenticated {
    /// User id (`sub`).
    user: Box<str>,
    /// The connection's place in `max_connections_per_user`, freed on drop.
    _slot: Option<UserSlot>,
    /// The token's `info` claim, shown to presence.
    info: Option<Box<serde_json::value::RawValue>>,
}

impl Authenticated {
    /// `None` for an anonymous, uncounted connection without `info`.
    pub(crate) fn new(
        user: &str,
        slot: Option<UserSlot>,
        info: Option<Box<serde_json::value::RawValue>>,
    ) -> Option<Box<Self>> {
        (!user.is_empty() || slot.is_some() || info.is_some()).then(|| {
            Box::new(Authenticated {
                user: user.into(),
                _slot: slot,
                info,
            })
        })
    }
}

/// The one subscribe rule of both modes: a reserved channel only when it is
/// the client's own `#user:<id>`, any other by its namespace.
pub(crate) fn subscribe_rule(
    node: &Node,
    channel: &ChannelName,
    user: &str,
    has_channel_token: bool,
) -> Result<(), Denied> {
    if channel.is_reserved() {
        return if is_own_user_channel(channel, Some(user)) {
            Ok(())
        } else {
            Err(Denied::Reserved)
        };
    }
    let asker = Asker {
        user,
        has_channel_token,
        subscribed: false,
    };
    node.permissions().can_subscribe(channel.as_str(), asker)
}

/// The token `info` of a session's client, if it had one.
pub(crate) fn info_of(auth: &Option<Box<Authenticated>>) -> Option<&serde_json::value::RawValue> {
    auth.as_deref().and_then(|a| a.info.as_deref())
}

/// The user id of a session's client; empty when anonymous.
pub(crate) fn user_of(auth: &Option<Box<Authenticated>>) -> &str {
    auth.as_deref().map_or("", |a| &a.user)
}

/// The channels a connection joins when its token is accepted: the token's
/// `channels`, and the user's own `#user:<id>` (with `user_channels` on), so
/// a backend reaches every connection of a user with no client action.
pub(crate) fn channels_at_connect(node: &Node, identity: &Identity) -> Vec<String> {
    let mut channels = identity.channels.clone();
    channels.retain(|c| {
        let order = c == crate::control::CONTROL_CHANNEL
            || c.starts_with(crate::control::NODE_CHANNEL_PREFIX);
        if order {
            tracing::warn!(channel = %c, user = %identity.user, "ignoring an order channel in a token's channels: nothing is delivered there");
        }
        !order
    });
    if node.config().user_channels && !identity.user.is_empty() {
        let own = format!("{USER_CHANNEL_PREFIX}{}", identity.user);
        if !channels.contains(&own) {
            channels.push(own);
        }
    }
    channels
}

/// Checks a subscription token: signed, unexpired, for this channel and this user.
pub(crate) fn check_channel_token(
    node: &Node,
    token: &str,
    channel: &str,
    user: &str,
) -> Result<(), TokenError> {
    let Some(verifier) = node.verifier() else {
        return Err(TokenError::Invalid(
            "this server has no token keys".to_string(),
        ));
    };
    let claims = verifier.verify(token)?;
    if claims.channel.as_deref() != Some(channel) || claims.sub != user {
        return Err(TokenError::Invalid(
            "subscription token is for another channel or user".to_string(),
        ));
    }
    Ok(())
}

/// Checks a client's token. Without token auth everyone is anonymous; with
/// it, a missing token is refused unless `allow_anonymous`.
pub(crate) fn authenticate(node: &Node, token: Option<&str>) -> Result<Identity, TokenError> {
    let Some(verifier) = node.verifier() else {
        return Ok(Identity::default());
    };
    let result = match token.filter(|t| !t.is_empty()) {
        Some(token) => verifier.verify(token).and_then(|claims| {
            if claims.channel.is_some() {
                return Err(TokenError::Invalid(
                    "a subscription token is not a connection token".to_string(),
                ));
            }
            Ok(Identity {
                user: claims.sub,
                expires: claims.exp,
                channels: claims.channels,
                info: claims.info,
            })
        }),
        None if node.config().allow_anonymous => Ok(Identity::default()),
        None => Err(TokenError::Invalid(
            "a token is required: send it in connect (or ?token= on /)".to_string(),
        )),
    };
    if result.is_err() {
        Stats::bump(&node.stats().auth_denials);
    }
    result
}

/// What transport does after a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep reading.
    Continue,
    /// Close with this code and reason.
    Close(CloseCode, String),
}

/// A session of either mode.
#[derive(Debug)]
pub(crate) enum Session {
    Plain(plain::PlainSession),
    Native(native::NativeSession),
}

impl Session {
    /// Handles one complete client message.
    pub(crate) async fn on_message(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        kind: MessageKind,
        payload: Bytes,
    ) -> Flow {
        match self {
            Session::Plain(s) => s.on_message(node, conn, kind, payload).await,
            Session::Native(s) => {
                if let Some(taken) = node.take_revoked(conn.seq) {
                    s.forget_channels(&taken);
                }
                s.on_message(node, conn, kind, payload).await
            }
        }
    }

    /// The channels held, so they can be released when the connection ends.
    pub(crate) fn into_channels(self) -> Vec<ChannelName> {
        match self {
            Session::Plain(s) => s.into_channels(),
            Session::Native(s) => s.into_channels(),
        }
    }
}
