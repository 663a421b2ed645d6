//! Who a plain client is and what it may read, decided at the upgrade
//! (a native client says so later, with `connect` and `subscribe`): its
//! token, its place among its user's connections, its channels.

use duplex_protocol::channel::ChannelName;
use duplex_protocol::code::CloseCode;

use super::Identity;
use crate::auth::TokenError;
use crate::limits::UserSlot;
use crate::node::Node;
use crate::session;
use crate::stats::Stats;

/// What the upgrade of a plain client decided.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Who it is, or the close code and reason it gets right after the 101
    /// (a browser reads close codes, never a failed handshake's status).
    pub(crate) identity: Option<Result<Identity, (CloseCode, String)>>,
    /// Its place in `max_connections_per_user`.
    pub(crate) user_slot: Option<UserSlot>,
    /// The channels it is subscribed to (query, token, default, own user).
    pub(crate) channels: Vec<ChannelName>,
}

/// Admits a plain client that presented `token` (`Err`: two different
/// tokens) and asked for the channels of `query`. `Err` is a refusal at
/// the HTTP level (400: a channel it may not read or cannot name).
pub(crate) fn plain(
    node: &Node,
    token: Result<Option<String>, &'static str>,
    query: Option<&str>,
) -> Result<Admission, String> {
    let mut identity = match token {
        // Without token auth tokens are ignored, conflicting or not.
        Err(reason) if node.verifier().is_some() => {
            Stats::bump(&node.stats().auth_denials);
            Err((CloseCode::InvalidToken, reason.to_string()))
        }
        token => session::authenticate(node, token.ok().flatten().as_deref()).map_err(|e| {
            let code = match e {
                TokenError::Expired => CloseCode::TokenExpired,
                TokenError::Invalid(_) => CloseCode::InvalidToken,
            };
            (code, e.to_string())
        }),
    };
    let mut user_slot = None;
    if let Ok(who) = &identity {
        match node.claim_user(&who.user) {
            Ok(slot) => user_slot = slot,
            Err(max) => {
                identity = Err((
                    CloseCode::TooManyConnections,
                    format!("this user already has {max} connections"),
                ))
            }
        }
    }
    let channels = match &identity {
        Ok(who) => plain_channels(node, query, who)?,
        Err(_) => Vec::new(),
    };
    Ok(Admission {
        identity: Some(identity),
        user_slot,
        channels,
    })
}

/// The channels a plain client asks for (`?channel=`), checked against what
/// its identity may read; the token's own channels are added by the caller.
fn plain_channels(
    node: &Node,
    query: Option<&str>,
    identity: &Identity,
) -> Result<Vec<ChannelName>, String> {
    let config = node.config();
    let mut channels: Vec<ChannelName> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key != "channel" {
            continue;
        }
        let channel = ChannelName::parse(&value, config.max_channel_length).map_err(|e| {
            format!(
                "invalid channel {:?}: {e}",
                value.chars().take(64).collect::<String>()
            )
        })?;
        may_subscribe(node, &channel, identity)?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
        if channels.len() > config.max_subscriptions {
            return Err(format!(
                "too many channels: at most {} (max_subscriptions)",
                config.max_subscriptions
            ));
        }
    }
    // No channel named, by the query or the token: the default channel (the
    // user's own channel, joined below, does not count: it is not a choice).
    if channels.is_empty() && identity.channels.is_empty() {
        let channel = ChannelName::parse(&config.default_channel, usize::MAX)
            .map_err(|e| format!("default channel: {e}"))?;
        may_subscribe(node, &channel, identity)?;
        channels.push(channel);
    }
    for name in &session::channels_at_connect(node, identity) {
        // Signed by the backend (or the user's own): trusted, reserved names included.
        let channel = ChannelName::parse(name, config.max_channel_length)
            .map_err(|e| format!("token channel {name:?}: {e}"))?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    Ok(channels)
}

/// The namespace rule for a plain client's channel. Plain clients cannot
/// present subscription tokens: private channels are for `/ws`.
fn may_subscribe(node: &Node, channel: &ChannelName, identity: &Identity) -> Result<(), String> {
    session::subscribe_rule(node, channel, &identity.user, false).map_err(|_| {
        Stats::bump(&node.stats().auth_denials);
        format!("channel {channel:?}: permission denied")
    })
}
