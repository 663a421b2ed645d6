//! Who may do what in the native protocol, and how refusals read: channel
//! names, permissions, tokens, budgets, and the error codes for each.

use super::*;

impl NativeSession {
    /// The namespace rule for subscribing (own `#user:` channels are always allowed).
    pub(super) fn may_subscribe(
        &self,
        node: &Node,
        conn: &Conn,
        channel: &ChannelName,
        token: Option<&str>,
    ) -> Result<(), Refusal> {
        let user = user_of(&self.auth);
        let has_channel_token = match token {
            None => false,
            Some(token) => {
                match crate::session::check_channel_token(node, token, channel.as_str(), user) {
                    Ok(()) => true,
                    Err(TokenError::Expired) => {
                        Stats::bump(&node.stats().auth_denials);
                        return Err(Refusal::Error(
                            ErrorCode::TokenExpired,
                            "subscription token expired: get a fresh one".to_string(),
                        ));
                    }
                    Err(TokenError::Invalid(why)) => {
                        tracing::debug!(conn = %conn.id, %channel, why, "subscription token refused");
                        false
                    }
                }
            }
        };
        crate::session::subscribe_rule(node, channel, user, has_channel_token)
            .map_err(|denied| deny(node, conn, channel, denied))
    }

    pub(super) async fn publish(
        &self,
        node: &Node,
        conn: &Conn,
        id: u64,
        params: PublishParams,
    ) -> Reply {
        let channel = parse_channel(node, &params.channel, None)?;
        self.may_publish(node, conn, &channel)?;
        Ok(publish(node, id, channel, params).await?)
    }

    /// The namespace rule for publishing from this client (`#` channels
    /// are refused before, by [`parse_channel`]).
    pub(super) fn may_publish(
        &self,
        node: &Node,
        conn: &Conn,
        channel: &ChannelName,
    ) -> Result<(), Refusal> {
        let asker = Asker {
            user: user_of(&self.auth),
            has_channel_token: false,
            subscribed: self.channels.contains(channel),
        };
        node.permissions()
            .can_publish(channel.as_str(), asker)
            .map_err(|denied| deny(node, conn, channel, denied))
    }

    /// The channel a `send` or `rpc` names, if any: it picks the upstream,
    /// so the client must be allowed to publish there (as for `publish`).
    pub(super) fn upstream_channel(
        &self,
        node: &Node,
        conn: &Conn,
        name: Option<&str>,
    ) -> Result<Option<ChannelName>, Refusal> {
        let Some(name) = name else {
            return Ok(None);
        };
        let channel = parse_channel(node, name, None)?;
        self.may_publish(node, conn, &channel)?;
        Ok(Some(channel))
    }
}

/// Counts and logs a denial; the answer never says whether the channel exists.
pub(super) fn deny(node: &Node, conn: &Conn, channel: &ChannelName, denied: Denied) -> Refusal {
    Stats::bump(&node.stats().auth_denials);
    tracing::debug!(conn = %conn.id, %channel, %denied, "permission denied");
    Refusal::Error(ErrorCode::PermissionDenied, denied.to_string())
}

pub(super) async fn publish(
    node: &Node,
    id: u64,
    channel: ChannelName,
    params: PublishParams,
) -> Result<Bytes, (ErrorCode, String)> {
    let (payload, kind) = bytes_from_json(&params.data, params.encoding)
        .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
    let publication = Publication {
        channel,
        payload,
        kind,
        exclude: None,
        position: None,
    };
    Stats::bump(&node.stats().client_publishes);
    let position = node.publish(publication).await.map_err(broker_error)?;
    Ok(match position {
        Some(at) => push::reply(
            id,
            &serde_json::json!({"offset": at.offset, "epoch": &*at.epoch}),
        ),
        None => push::reply(id, &Empty {}),
    })
}

/// Parses a channel a client names. Reserved (`#`) channels are refused,
/// except the user's own `#user:<id>` when `user` (the client's id) allows it.
pub(super) fn parse_channel(
    node: &Node,
    name: &str,
    user: Option<&str>,
) -> Result<ChannelName, (ErrorCode, String)> {
    let channel = ChannelName::parse(name, node.config().max_channel_length).map_err(|e| {
        let shown: String = name.chars().take(64).collect();
        (ErrorCode::InvalidChannel, format!("{e}: {shown:?}"))
    })?;
    if channel.is_reserved() && !is_own_user_channel(&channel, user) {
        Stats::bump(&node.stats().auth_denials);
        tracing::debug!(%channel, "reserved channel refused");
        return Err((
            ErrorCode::PermissionDenied,
            format!("channel {channel:?}: permission denied"),
        ));
    }
    Ok(channel)
}

pub(super) fn parse_channels(
    node: &Node,
    names: &[String],
    user: Option<&str>,
) -> Result<Vec<ChannelName>, (ErrorCode, String)> {
    if names.is_empty() {
        return Err((
            ErrorCode::BadRequest,
            "no channel given: use \"channel\" or \"channels\"".to_string(),
        ));
    }
    names.iter().map(|n| parse_channel(node, n, user)).collect()
}

pub(super) fn channels_reply(id: u64, names: &[String]) -> Bytes {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    push::reply(id, &ChannelsResult { channels: &refs })
}

/// Checks the token a client presents; `None` when the server has no token auth.
pub(super) fn authenticate(
    node: &Node,
    conn: &Conn,
    token: Option<&str>,
) -> Result<Identity, Refusal> {
    match crate::session::authenticate(node, token) {
        Ok(identity) => Ok(identity),
        Err(TokenError::Expired) => {
            tracing::debug!(conn = %conn.id, "expired token refused");
            Err(Refusal::Error(
                ErrorCode::TokenExpired,
                "token expired: get a fresh one and send it again".to_string(),
            ))
        }
        Err(TokenError::Invalid(why)) if token.is_none_or(str::is_empty) => {
            tracing::debug!(conn = %conn.id, why, "connect without a token refused");
            Err(Refusal::Error(ErrorCode::Unauthorized, why))
        }
        Err(TokenError::Invalid(why)) => {
            tracing::debug!(conn = %conn.id, why, "invalid token refused");
            Err(Refusal::Close(CloseCode::InvalidToken, why))
        }
    }
}

/// An rpc or HTTP send that could not start.
pub(super) fn call_error(e: CallError) -> (ErrorCode, String) {
    match e {
        CallError::Full(full) => (ErrorCode::TooManyPending, full.to_string()),
        CallError::Broker(e) => broker_error(e),
    }
}

pub(super) fn broker_error(e: BrokerError) -> (ErrorCode, String) {
    match e {
        BrokerError::Timeout(_) => (ErrorCode::Timeout, e.to_string()),
        BrokerError::Unsupported(_) => (ErrorCode::UnknownMethod, e.to_string()),
        _ => (ErrorCode::BrokerUnavailable, e.to_string()),
    }
}

impl NativeSession {
    /// Drops channels the node took away (`unsubscribe` orders): the client
    /// was told with a push, and may subscribe again.
    pub(crate) fn forget_channels(&mut self, taken: &[ChannelName]) {
        for channel in taken {
            self.channels.shift_remove(channel);
        }
        self.release_subscriptions();
    }

    /// Gives the address back the subscriptions this connection no longer holds.
    pub(super) fn release_subscriptions(&mut self) {
        if let Some(share) = &mut self.address_subscriptions {
            share.release_to(self.channels.len());
        }
    }
}

/// The connection's byte budget up to the backends, made on first use.
pub(super) fn upstream_budget<'a>(
    budget: &'a mut Option<Box<RateLimit>>,
    node: &Node,
) -> &'a mut RateLimit {
    budget.get_or_insert_with(|| Box::new(node.connection_upstream_budget()))
}

/// A message up refused for its bytes: error 108, or close 3004 for a
/// client that keeps going (as the publish rate limit does).
pub(super) fn over_budget(over: OverBudget) -> Refusal {
    match over {
        OverBudget::KeptOn(_) => Refusal::Close(CloseCode::TooManyRequests, over.to_string()),
        OverBudget::Connection(_) | OverBudget::Node(_) => {
            Refusal::Error(ErrorCode::TooManyRequests, over.to_string())
        }
    }
}

/// A subscribe over a limit: error 106 naming it, counted, logged at debug
/// (the client is told; nothing changed).
pub(super) fn subscriptions_refused(node: &Node, conn: &Conn, why: String) -> Refusal {
    Stats::bump(&node.stats().subscriptions_refused);
    tracing::debug!(conn = %conn.id, addr = %conn.remote, why, "subscribe refused");
    Refusal::Error(ErrorCode::LimitExceeded, why)
}
