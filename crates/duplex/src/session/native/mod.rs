//! The native JSON protocol at `/ws`: commands with ids, replies with the
//! same ids, pushes for messages. See docs/PROTOCOL.md for the wire format.

mod history;
pub(crate) mod presence;
mod rules;

use rules::{
    authenticate, broker_error, call_error, channels_reply, over_budget, parse_channels,
    subscriptions_refused, upstream_budget,
};

use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::code::{CloseCode, ErrorCode};
use duplex_protocol::command::{self, Command, ConnectParams, PublishParams, RefreshParams};
use duplex_protocol::payload::bytes_from_json;
use duplex_protocol::push::{self, ChannelsResult, ConnectResult, Empty, RefreshResult};
use duplex_protocol::ws::MessageKind;
use duplex_protocol::PROTOCOL_VERSION;
use indexmap::IndexSet;
use serde_json::value::RawValue;

use crate::auth::TokenError;
use crate::broker::BrokerError;
use crate::conn::Conn;
use crate::limits::AddressSubscriptions;
use crate::message::Publication;
use crate::node::{Message, Node, Sent};
use crate::permissions::{Asker, Denied};
use crate::rate::{RateLimit, Verdict};
use crate::session::is_own_user_channel;
use crate::session::{user_of, Authenticated, Flow, Identity};
use crate::stats::Stats;
use crate::upstream::{CallError, OverBudget};

/// Where the client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// No command yet.
    Connecting,
    /// Introduced itself (or implicitly, by sending another command first).
    Connected,
}

/// State of one native client.
#[derive(Debug)]
pub(crate) struct NativeSession {
    status: Status,
    /// Who the token said the client is; None while anonymous.
    auth: Option<Box<Authenticated>>,
    channels: IndexSet<ChannelName>,
    publish_rate: RateLimit,
    /// Bytes per second up to the backends (`max_upstream_rate`); made at
    /// the first `send` or `rpc`, so idle connections do not pay for it.
    upstream_budget: Option<Box<RateLimit>>,
    /// This connection's part of its address's subscriptions
    /// (`max_subscriptions_per_ip`); made at the first subscription.
    address_subscriptions: Option<Box<AddressSubscriptions>>,
}

/// Why a command got no result.
#[derive(Debug)]
enum Refusal {
    /// Answer with this error; the connection lives on.
    Error(ErrorCode, String),
    /// End the connection.
    Close(CloseCode, String),
}

impl From<(ErrorCode, String)> for Refusal {
    fn from((code, message): (ErrorCode, String)) -> Self {
        Refusal::Error(code, message)
    }
}

/// A reply frame, or why there is none.
type Reply = Result<Bytes, Refusal>;

impl NativeSession {
    pub(crate) fn new(max_publish_rate: u32) -> Self {
        NativeSession {
            status: Status::Connecting,
            auth: None,
            channels: IndexSet::new(),
            publish_rate: RateLimit::new(max_publish_rate),
            upstream_budget: None,
            address_subscriptions: None,
        }
    }

    pub(crate) async fn on_message(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        kind: MessageKind,
        payload: Bytes,
    ) -> Flow {
        if kind == MessageKind::Binary {
            return Flow::Close(
                CloseCode::UnsupportedData,
                "binary frames are not accepted on /ws: send JSON text".to_string(),
            );
        }
        let frame = match command::decode(&payload) {
            Err(e) => {
                tracing::debug!(conn = %conn.id, code = e.code.as_u32(), error = %e.message, "bad command");
                push::error_reply(e.id, e.code, &e.message)
            }
            Ok(request) => {
                let id = request.id;
                let result = match self.rate_verdict(&request.command) {
                    Verdict::Allow => {
                        let ran = self.run(node, conn, id, request.command).await;
                        // Introduced once connected (with token auth: a
                        // refused connect leaves `connect_timeout` running).
                        if self.status == Status::Connected {
                            conn.mark_introduced();
                        }
                        match ran {
                            Ok(Some(frame)) => Ok(frame),
                            // Answered later, when the backend replies (or on timeout).
                            Ok(None) => return Flow::Continue,
                            Err(refusal) => Err(refusal),
                        }
                    }
                    Verdict::Refuse => Err(Refusal::Error(
                        ErrorCode::TooManyRequests,
                        "publish rate limit exceeded; slow down".to_string(),
                    )),
                    Verdict::Close => Err(Refusal::Close(
                        CloseCode::TooManyRequests,
                        "kept publishing over the rate limit".to_string(),
                    )),
                };
                match result {
                    Ok(frame) => frame,
                    Err(Refusal::Error(code, message)) => {
                        push::error_reply(Some(id), code, &message)
                    }
                    Err(Refusal::Close(code, reason)) => return Flow::Close(code, reason),
                }
            }
        };
        node.send_to(conn, frame, "reply");
        Flow::Continue
    }

    /// Publishes, upstream sends and rpcs count against the rate limit.
    fn rate_verdict(&mut self, command: &Command) -> Verdict {
        match command {
            Command::Publish(_) | Command::Send(_) | Command::Rpc(_) => self.publish_rate.check(),
            _ => Verdict::Allow,
        }
    }

    /// Runs one command; `Ok(None)` when the reply comes later (rpc).
    async fn run(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        id: u64,
        command: Command,
    ) -> Result<Option<Bytes>, Refusal> {
        if let Command::Connect(params) = command {
            return self.connect(node, conn, id, params).await;
        }
        if self.status == Status::Connecting {
            if node.verifier().is_some() && !node.config().allow_anonymous {
                Stats::bump(&node.stats().auth_denials);
                return Err(Refusal::Error(
                    ErrorCode::Unauthorized,
                    "send connect with a token first".to_string(),
                ));
            }
            // Without token auth, any command introduces the client anonymously.
            self.status = Status::Connected;
        }
        let reply = match command {
            Command::Subscribe(p) => return self.subscribe(node, conn, id, p).await,
            Command::History(p) => self.history(node, conn, id, p).await,
            Command::Presence(p) => self.presence(node, conn, id, p).await,
            Command::PresenceStats(p) => self.presence_stats(node, conn, id, p).await,
            Command::Unsubscribe(p) => self.unsubscribe(node, conn, id, p.into_names().0).await,
            Command::Publish(p) => self.publish(node, conn, id, p).await,
            Command::Refresh(p) => self.refresh(node, conn, id, p),
            Command::Send(p) => {
                let channel = self.upstream_channel(node, conn, p.channel.as_deref())?;
                let (payload, kind) = bytes_from_json(&p.data, p.encoding)
                    .map_err(|e| Refusal::Error(ErrorCode::BadRequest, e.to_string()))?;
                let route = node.route(channel.as_ref().map(ChannelName::as_str));
                let budget = upstream_budget(&mut self.upstream_budget, node);
                node.charge_upstream(conn, budget, payload.len(), &route)
                    .map_err(over_budget)?;
                let message = Message {
                    payload,
                    kind,
                    send: Some((id, &p.data, p.encoding)),
                };
                match node
                    .send_up(conn, message, &route)
                    .await
                    .map_err(call_error)?
                {
                    Sent::Appended => Ok(push::reply(id, &Empty {})),
                    // Acknowledged when the POST ends.
                    Sent::Posting => return Ok(None),
                }
            }
            Command::Rpc(p) => {
                let channel = self.upstream_channel(node, conn, p.channel.as_deref())?;
                let data = p.data.as_deref().unwrap_or(RawValue::NULL);
                let route = node.route(channel.as_ref().map(ChannelName::as_str));
                let budget = upstream_budget(&mut self.upstream_budget, node);
                let cost = data.get().len() + p.method.len();
                node.charge_upstream(conn, budget, cost, &route)
                    .map_err(over_budget)?;
                node.call_upstream(conn, id, &p.method, data, route)
                    .await
                    .map_err(call_error)?;
                return Ok(None);
            }
            Command::Ping => Ok(push::reply(id, &Empty {})),
            _ => Err(Refusal::Error(
                ErrorCode::UnknownMethod,
                "method not supported".to_string(),
            )),
        };
        reply.map(Some)
    }

    /// `connect`: who the client is, and the token's channels joined (a
    /// history channel's position in the reply, what it missed after it
    /// when `recover` asked); `Ok(None)` when the reply went out first.
    async fn connect(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        id: u64,
        params: ConnectParams,
    ) -> Result<Option<Bytes>, Refusal> {
        if self.status == Status::Connected {
            return Err(Refusal::Error(
                ErrorCode::AlreadyConnected,
                "already connected".to_string(),
            ));
        }
        if let Some(v) = params.protocol.filter(|v| *v != PROTOCOL_VERSION) {
            return Err(Refusal::Error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {v} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        let identity = authenticate(node, conn, params.token.as_deref())?;
        let slot = node.claim_user(&identity.user).map_err(|max| {
            Refusal::Close(
                CloseCode::TooManyConnections,
                format!("this user already has {max} connections"),
            )
        })?;
        let (granted, caught_up) = self
            .join_token_channels(node, conn, &identity, &params)
            .await?;
        self.status = Status::Connected;
        conn.authenticated(&identity.user, identity.expires);
        tracing::debug!(conn = %conn.id, user = identity.user, name = params.name.as_deref().unwrap_or(""), version = params.version.as_deref().unwrap_or(""), "client connected");
        let ping_interval = node.config().ping_interval.as_secs().max(1);
        let rpc_timeout_ms = u64::try_from(node.config().rpc_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let reply = push::reply(
            id,
            &ConnectResult {
                client: &conn.id,
                node: node.id(),
                version: env!("CARGO_PKG_VERSION"),
                protocol: PROTOCOL_VERSION,
                ping_interval,
                rpc_timeout_ms,
                user: &identity.user,
                expires: identity.expires,
                channels: &granted.iter().map(String::as_str).collect::<Vec<_>>(),
                positions: history::positions(&caught_up),
            },
        );
        self.auth = Authenticated::new(&identity.user, slot, identity.info);
        if caught_up.is_empty() {
            return Ok(Some(reply));
        }
        node.send_to(conn, reply, "reply");
        history::release(node, conn, caught_up);
        Ok(None)
    }

    /// Joins `channels` (already counted for the address) as `member`
    /// (user and token `info`) where they keep presence, catching history
    /// channels up from `recover`; on a failure none is left caught up and
    /// the address share is given back.
    async fn join_all<'c>(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        channels: impl IntoIterator<Item = &'c ChannelName>,
        recover: &duplex_protocol::history::RecoverParams,
        member: crate::node::Joiner<'_>,
    ) -> Result<Vec<history::CaughtUp>, Refusal> {
        let mut caught_up = Vec::new();
        for channel in channels {
            let joined = self
                .join(node, conn, channel, recover.get(channel.as_str()))
                .await;
            let joined = match joined {
                Ok(done) => self.enter(node, conn, channel, member).await.map(|()| done),
                Err(e) => Err(e),
            };
            match joined {
                Ok(done) => caught_up.extend(done),
                Err(e) => {
                    self.release_subscriptions();
                    history::release(node, conn, caught_up);
                    return Err(broker_error(e).into());
                }
            }
        }
        Ok(caught_up)
    }

    /// Joins the channels a signed token names (trusted: they may be
    /// reserved ones and pass `max_subscriptions`; they count for the
    /// address), catching history channels up from `recover`.
    async fn join_token_channels(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        identity: &crate::session::Identity,
        params: &command::ConnectParams,
    ) -> Result<(Vec<String>, Vec<history::CaughtUp>), Refusal> {
        let granted = crate::session::channels_at_connect(node, identity);
        let mut fresh = IndexSet::new();
        for name in &granted {
            let channel =
                ChannelName::parse(name, node.config().max_channel_length).map_err(|e| {
                    Refusal::Close(CloseCode::InvalidToken, format!("token channel: {e}"))
                })?;
            if !self.channels.contains(&channel) {
                fresh.insert(channel);
            }
        }
        let share = self
            .address_subscriptions
            .get_or_insert_with(|| Box::new(node.address_subscriptions(conn)));
        share
            .reserve(fresh.len())
            .map_err(|full| subscriptions_refused(node, conn, full.to_string()))?;
        let member = crate::node::Joiner {
            user: &identity.user,
            info: identity.info.as_deref(),
            wants_pushes: params.join_leave,
        };
        let caught_up = self
            .join_all(node, conn, &fresh, &params.recover, member)
            .await?;
        Ok((granted, caught_up))
    }

    fn refresh(&mut self, node: &Node, conn: &Arc<Conn>, id: u64, params: RefreshParams) -> Reply {
        if node.verifier().is_none() {
            return Err(Refusal::Error(
                ErrorCode::BadRequest,
                "this server does not use tokens".to_string(),
            ));
        }
        let fresh = authenticate(node, conn, Some(&params.token))?;
        if fresh.user != user_of(&self.auth) {
            Stats::bump(&node.stats().auth_denials);
            return Err(Refusal::Close(
                CloseCode::InvalidToken,
                "refresh token is for another user".to_string(),
            ));
        }
        conn.authenticated(&fresh.user, fresh.expires);
        Ok(push::reply(
            id,
            &RefreshResult {
                expires: fresh.expires,
            },
        ))
    }

    /// Subscribes the channels not held yet; a history channel's reply
    /// names its position, and with `recover` the missed publications
    /// follow it (see `history.rs`).
    async fn subscribe(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        id: u64,
        params: command::ChannelsParams,
    ) -> Result<Option<Bytes>, Refusal> {
        let join_leave = params.join_leave;
        let (names, token, recover) = params.into_parts();
        let channels = parse_channels(node, &names, Some(user_of(&self.auth)))?;
        let new: IndexSet<&ChannelName> = channels
            .iter()
            .filter(|c| !self.channels.contains(*c))
            .collect();
        if token.is_some() && channels.len() != 1 {
            return Err(Refusal::Error(
                ErrorCode::BadRequest,
                "a subscription token goes with exactly one channel".to_string(),
            ));
        }
        for channel in &new {
            self.may_subscribe(node, conn, channel, token.as_deref())?;
        }
        let max = node.config().max_subscriptions;
        if self.channels.len() + new.len() > max {
            return Err(subscriptions_refused(
                node,
                conn,
                format!(
                    "subscription limit: at most {max} channels per connection (max_subscriptions)"
                ),
            ));
        }
        // Counted for the address before anything changes: all or nothing.
        let share = self
            .address_subscriptions
            .get_or_insert_with(|| Box::new(node.address_subscriptions(conn)));
        share
            .reserve(new.len())
            .map_err(|full| subscriptions_refused(node, conn, full.to_string()))?;
        let user = crate::session::user_of(&self.auth).to_string();
        let info = crate::session::info_of(&self.auth).map(ToOwned::to_owned);
        let member = crate::node::Joiner {
            user: &user,
            info: info.as_deref(),
            wants_pushes: join_leave,
        };
        let caught_up = self.join_all(node, conn, new, &recover, member).await?;
        if caught_up.is_empty() {
            return Ok(Some(channels_reply(id, &names)));
        }
        node.send_to(
            conn,
            history::subscribe_reply(id, &names, &caught_up),
            "reply",
        );
        history::release(node, conn, caught_up);
        Ok(None)
    }

    async fn unsubscribe(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        id: u64,
        names: Vec<String>,
    ) -> Reply {
        let channels = parse_channels(node, &names, Some(user_of(&self.auth)))?;
        for channel in &channels {
            if self.channels.shift_remove(channel) {
                node.unsubscribe(conn, channel).await;
                conn.discard(channel);
            }
        }
        self.release_subscriptions();
        Ok(channels_reply(id, &names))
    }

    pub(crate) fn into_channels(self) -> Vec<ChannelName> {
        self.channels.into_iter().collect()
    }
}
