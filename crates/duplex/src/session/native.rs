//! The native JSON protocol at `/ws`: commands with ids, replies with the
//! same ids, pushes for messages. See docs/PROTOCOL.md for the wire format.

use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::code::{CloseCode, ErrorCode};
use duplex_protocol::command::{self, Command, ConnectParams, PublishParams};
use duplex_protocol::payload::bytes_from_json;
use duplex_protocol::push::{self, ChannelsResult, ConnectResult, Empty};
use duplex_protocol::ws::MessageKind;
use duplex_protocol::PROTOCOL_VERSION;
use indexmap::IndexSet;

use super::rate::{RateLimit, Verdict};
use super::Flow;
use crate::broker::BrokerError;
use crate::conn::Conn;
use crate::message::Publication;
use crate::node::Node;

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
    channels: IndexSet<ChannelName>,
    publish_rate: RateLimit,
}

/// A reply frame, or the error to answer with.
type Reply = Result<Bytes, (ErrorCode, String)>;

impl NativeSession {
    pub(crate) fn new(max_publish_rate: u32) -> Self {
        NativeSession {
            status: Status::Connecting,
            channels: IndexSet::new(),
            publish_rate: RateLimit::new(max_publish_rate),
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
                conn.mark_introduced();
                let id = request.id;
                let result = match self.rate_verdict(&request.command) {
                    Verdict::Allow => self.run(node, conn, id, request.command).await,
                    Verdict::Refuse => Err((
                        ErrorCode::TooManyRequests,
                        "publish rate limit exceeded; slow down".to_string(),
                    )),
                    Verdict::Close => {
                        return Flow::Close(
                            CloseCode::TooManyRequests,
                            "kept publishing over the rate limit".to_string(),
                        );
                    }
                };
                match result {
                    Ok(frame) => frame,
                    Err((code, message)) => push::error_reply(Some(id), code, &message),
                }
            }
        };
        node.send_to(conn, frame, "reply");
        Flow::Continue
    }

    /// Only publishes count against the rate limit.
    fn rate_verdict(&mut self, command: &Command) -> Verdict {
        match command {
            Command::Publish(_) => self.publish_rate.check(),
            _ => Verdict::Allow,
        }
    }

    async fn run(&mut self, node: &Node, conn: &Arc<Conn>, id: u64, command: Command) -> Reply {
        if let Command::Connect(params) = command {
            return self.connect(node, conn, id, params);
        }
        self.status = Status::Connected;
        match command {
            Command::Subscribe(p) => self.subscribe(node, conn, id, p.into_names()).await,
            Command::Unsubscribe(p) => self.unsubscribe(node, conn, id, p.into_names()).await,
            Command::Publish(p) => publish(node, id, p).await,
            Command::Ping => Ok(push::reply(id, &Empty {})),
            _ => Err((ErrorCode::UnknownMethod, "method not supported".to_string())),
        }
    }

    fn connect(&mut self, node: &Node, conn: &Arc<Conn>, id: u64, params: ConnectParams) -> Reply {
        if self.status == Status::Connected {
            return Err((ErrorCode::AlreadyConnected, "already connected".to_string()));
        }
        if let Some(v) = params.protocol.filter(|v| *v != PROTOCOL_VERSION) {
            return Err((
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {v} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        self.status = Status::Connected;
        tracing::debug!(conn = %conn.id, name = params.name.as_deref().unwrap_or(""), version = params.version.as_deref().unwrap_or(""), "client connected");
        let ping_interval = node.config().ping_interval.as_secs().max(1);
        Ok(push::reply(
            id,
            &ConnectResult {
                client: &conn.id,
                node: node.id(),
                version: env!("CARGO_PKG_VERSION"),
                protocol: PROTOCOL_VERSION,
                ping_interval,
            },
        ))
    }

    async fn subscribe(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        id: u64,
        names: Vec<String>,
    ) -> Reply {
        let channels = parse_channels(node, &names)?;
        let new: IndexSet<&ChannelName> = channels
            .iter()
            .filter(|c| !self.channels.contains(*c))
            .collect();
        let max = node.config().max_subscriptions;
        if self.channels.len() + new.len() > max {
            return Err((
                ErrorCode::LimitExceeded,
                format!("subscription limit: at most {max} channels per connection"),
            ));
        }
        for channel in new {
            node.subscribe(conn, channel).await.map_err(broker_error)?;
            self.channels.insert(channel.clone());
        }
        Ok(channels_reply(id, &names))
    }

    async fn unsubscribe(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        id: u64,
        names: Vec<String>,
    ) -> Reply {
        let channels = parse_channels(node, &names)?;
        for channel in &channels {
            if self.channels.shift_remove(channel) {
                node.unsubscribe(conn, channel).await;
            }
        }
        Ok(channels_reply(id, &names))
    }

    pub(crate) fn into_channels(self) -> Vec<ChannelName> {
        self.channels.into_iter().collect()
    }
}

async fn publish(node: &Node, id: u64, params: PublishParams) -> Reply {
    let channel = parse_channel(node, &params.channel)?;
    let (payload, kind) = bytes_from_json(&params.data, params.encoding)
        .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
    let publication = Publication {
        channel,
        payload,
        kind,
        exclude: None,
    };
    node.publish(publication).await.map_err(broker_error)?;
    Ok(push::reply(id, &Empty {}))
}

fn parse_channel(node: &Node, name: &str) -> Result<ChannelName, (ErrorCode, String)> {
    let channel = ChannelName::parse(name, node.config().max_channel_length).map_err(|e| {
        let shown: String = name.chars().take(64).collect();
        (ErrorCode::InvalidChannel, format!("{e}: {shown:?}"))
    })?;
    if channel.is_reserved() {
        return Err((
            ErrorCode::PermissionDenied,
            format!("channel {channel:?}: names starting with '#' are reserved for the server"),
        ));
    }
    Ok(channel)
}

fn parse_channels(node: &Node, names: &[String]) -> Result<Vec<ChannelName>, (ErrorCode, String)> {
    if names.is_empty() {
        return Err((
            ErrorCode::BadRequest,
            "no channel given: use \"channel\" or \"channels\"".to_string(),
        ));
    }
    names.iter().map(|n| parse_channel(node, n)).collect()
}

fn channels_reply(id: u64, names: &[String]) -> Bytes {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    push::reply(id, &ChannelsResult { channels: &refs })
}

fn broker_error(e: BrokerError) -> (ErrorCode, String) {
    match e {
        BrokerError::Timeout(_) => (ErrorCode::Timeout, e.to_string()),
        _ => (ErrorCode::BrokerUnavailable, e.to_string()),
    }
}
