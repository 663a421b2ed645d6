//! Orders for every node, carried by the broker on the reserved channel
//! `#control`: each node subscribes to it at start and applies what it reads
//! to its own connections. The HTTP API publishes them (`/api/disconnect`,
//! `/api/publish` to `#conn:<id>`, `/api/unsubscribe`), and so can any
//! backend with a Redis client: `PUBLISH #control '{"op":"disconnect","user":"42"}'`.
//! Nodes also talk among themselves here: `query`/`answer` for
//! `/api/connections` and `alive` heartbeats (docs/API.md).
//!
//! Pure: parsing and matching; the node does the I/O.

use duplex_protocol::payload::{bytes_from_json, Encoding};
use duplex_protocol::ws::MessageKind;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The channel every node listens to for orders.
pub const CONTROL_CHANNEL: &str = "#control";

/// Channels that address one connection: `#conn:<connection id>`.
pub const CONN_CHANNEL_PREFIX: &str = "#conn:";

/// The channel one node listens to for orders meant for it alone:
/// `#node:<node id>`. Orders for one connection go there rather than to
/// every node, and replies addressed to a node (rpc, queries) use it.
pub const NODE_CHANNEL_PREFIX: &str = "#node:";

/// The node that holds a connection: the part of its id before the last dot.
pub fn node_of(connection: &str) -> Option<&str> {
    connection.rsplit_once('.').map(|(node, _)| node)
}

/// A connection id's node and number, when it has the form `<node>.<n>`.
pub fn split_connection_id(connection: &str) -> Option<(&str, u64)> {
    let (node, seq) = connection.rsplit_once('.')?;
    Some((node, seq.parse().ok()?))
}

/// Close code when no code is given: "disconnected by the server" (reconnect allowed).
pub const DEFAULT_DISCONNECT_CODE: u16 = 3003;

/// Close code of a plain client removed from its channel by an `unsubscribe`
/// order: a plain client is its channel, so it is closed, and must not
/// reconnect to the same channel (3500-4999: no automatic reconnect).
pub const UNSUBSCRIBED_CLOSE_CODE: u16 = duplex_protocol::code::CloseCode::Unsubscribed.as_u16();

/// Most connections one `query` may ask for, and one `answer` may carry.
pub const MAX_QUERY_LIMIT: usize = 10_000;

/// One connection as `/api/connections` lists it, and as nodes report it
/// to each other in `answer` orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Connection id, `<node>.<n>`.
    pub id: String,
    /// The token's `sub`; empty for anonymous clients.
    pub user: String,
    /// The node holding it.
    pub node: String,
    /// `native` (`/ws`) or `plain`.
    pub mode: String,
    /// Channels it is subscribed to, at most a fixed number of them.
    pub channels: Vec<String>,
    /// True when it holds more channels than listed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub channels_truncated: bool,
    /// When it connected, Unix seconds (by the holding node's clock).
    pub connected_at: u64,
    /// Seconds since it connected.
    pub age_seconds: u64,
    /// The client's address as the node sees it (a proxy's, behind one).
    pub remote: String,
}

/// Which connections an order is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One connection, by its id (`<node>.<n>`).
    Connection(String),
    /// Every connection of one user (the token's `sub`).
    User(String),
}

impl Target {
    /// The one node this target lives on, when it names one connection.
    pub fn node(&self) -> Option<&str> {
        match self {
            Target::Connection(id) => node_of(id),
            Target::User(_) => None,
        }
    }

    /// Whether a connection with this id and user is addressed.
    pub fn matches(&self, conn_id: &str, user: Option<&str>) -> bool {
        match self {
            Target::Connection(id) => id == conn_id,
            Target::User(u) => !u.is_empty() && Some(u.as_str()) == user,
        }
    }
}

/// As a log field shows it: `user 42`, `connection n1.7`.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Connection(id) => write!(f, "connection {id}"),
            Target::User(user) => write!(f, "user {user}"),
        }
    }
}

/// One order, as JSON on `#control`. Read orders with [`Order::parse`]:
/// `send` and `reply` carry the backend's JSON verbatim, which serde's
/// tagged-enum reading would re-encode (keys sorted, big numbers rounded).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Order {
    /// Close the addressed connections with a code and reason.
    Disconnect {
        /// Who.
        #[serde(flatten)]
        target: Target,
        /// Close code, 3000–4999.
        #[serde(default = "default_code")]
        code: u16,
        /// Close reason, at most 123 bytes.
        #[serde(default)]
        reason: String,
    },
    /// Deliver a message to one connection (`#conn:<id>` addressing).
    Send {
        /// The connection id.
        connection: String,
        /// The data, as in `/api/publish`: the backend's JSON text as sent.
        data: Box<RawValue>,
        /// `text` (default) or `base64`.
        #[serde(default)]
        encoding: Encoding,
    },
    /// Remove the addressed connections from one channel: a native client
    /// gets an `unsubscribe` push, a plain one is closed with
    /// [`UNSUBSCRIBED_CLOSE_CODE`].
    Unsubscribe {
        /// Who.
        #[serde(flatten)]
        target: Target,
        /// The channel.
        channel: String,
    },
    /// Ask every node for its connections (of one user, or all): each
    /// answers on `reply_to` with an `answer` carrying the same `request`.
    Query {
        /// Chosen by the asker, echoed in the answers.
        request: String,
        /// Where the answers go: a `#node:<id>` channel.
        reply_to: String,
        /// Only this user's connections; all when absent.
        #[serde(default)]
        user: Option<String>,
        /// Most connections one node reports.
        limit: usize,
    },
    /// One node's answer to a `query`.
    Answer {
        /// The query's `request`.
        request: String,
        /// The answering node.
        node: String,
        /// Its matching connections, at most the query's `limit`.
        connections: Vec<ConnectionInfo>,
        /// True when the node has more than it listed.
        #[serde(default)]
        truncated: bool,
    },
    /// A node's heartbeat on `#control` (and its greeting to a node it had
    /// not heard from, on that node's `#node:<id>`): the live-node registry.
    Alive {
        /// The node id.
        node: String,
    },
    /// The liveness probe: a node's message to itself on its own
    /// `#node:<id>`, expected back within `broker_probe_interval`
    /// (`node/probe.rs`).
    Probe {
        /// The probe's number, this node's run.
        seq: u64,
    },
    /// A backend's answer to a client's rpc, sent to the holding node's
    /// `#node:<id>` channel (the stream entry's `reply_to`).
    Reply {
        /// The connection that asked (the entry's `connection`).
        connection: String,
        /// The request id (the entry's `request`).
        #[serde(alias = "request_id")]
        request: String,
        /// The answer, any JSON (absent means `null`), as the backend wrote it.
        #[serde(default)]
        data: Option<Box<RawValue>>,
        /// Or the backend's error instead of data.
        #[serde(default)]
        error: Option<ReplyError>,
    },
}

/// A backend's error answer to an rpc: `code` in 1000–9999 reaches the
/// client as is (see duplex_protocol::code::BACKEND_CODES).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    /// The backend's code.
    pub code: i64,
    /// For people.
    #[serde(default)]
    pub message: String,
}

fn default_code() -> u16 {
    DEFAULT_DISCONNECT_CODE
}

/// Why an order cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadOrder {
    /// Not JSON of a known order.
    #[error("not a control order: {0}")]
    Malformed(String),
    /// A close code applications may not send.
    #[error("close code {0} is outside 3000-4999")]
    Code(u16),
    /// A reason that does not fit a close frame.
    #[error("close reason is over 123 bytes")]
    Reason,
    /// Data that cannot become bytes.
    #[error("bad data: {0}")]
    Data(String),
    /// Not a valid channel name.
    #[error("bad channel: {0}")]
    Channel(String),
    /// Answers may only go to a node's own channel.
    #[error("reply_to must be a #node:<id> channel")]
    ReplyTo,
    /// A query limit, or an answer's size, out of bounds.
    #[error("limit {0} is outside 1-10000")]
    Limit(usize),
}

impl Order {
    /// Parses and checks an order read from `#control`.
    pub fn parse(payload: &[u8]) -> Result<Order, BadOrder> {
        let malformed = |e: serde_json::Error| BadOrder::Malformed(e.to_string());
        let op: OpOnly<'_> = serde_json::from_slice(payload).map_err(malformed)?;
        let order: Order = match op.op.as_ref() {
            "send" => serde_json::from_slice::<SendWire>(payload)
                .map_err(malformed)?
                .into(),
            "reply" => serde_json::from_slice::<ReplyWire>(payload)
                .map_err(malformed)?
                .into(),
            _ => serde_json::from_slice(payload).map_err(malformed)?,
        };
        order.check()?;
        Ok(order)
    }

    /// The channel that reaches every node concerned: the holding node's
    /// own channel for an order about one connection, else `#control`.
    pub fn channel(&self) -> String {
        let node = match self {
            Order::Disconnect { target, .. } => target.node(),
            Order::Send { connection, .. } | Order::Reply { connection, .. } => node_of(connection),
            Order::Unsubscribe { target, .. } => target.node(),
            // Published on channels their senders choose (`reply_to`, `#node:<id>`).
            Order::Query { .. }
            | Order::Answer { .. }
            | Order::Alive { .. }
            | Order::Probe { .. } => None,
        };
        match node {
            Some(node) => format!("{NODE_CHANNEL_PREFIX}{node}"),
            None => CONTROL_CHANNEL.to_string(),
        }
    }

    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), BadOrder> {
        match self {
            Order::Disconnect { code, reason, .. } => {
                if !(3000..=4999).contains(code) {
                    return Err(BadOrder::Code(*code));
                }
                if reason.len() > 123 {
                    return Err(BadOrder::Reason);
                }
            }
            Order::Send { data, encoding, .. } => {
                send_payload(data, *encoding)?;
            }
            Order::Unsubscribe { channel, .. } => {
                duplex_protocol::channel::validate(channel, usize::MAX)
                    .map_err(|e| BadOrder::Channel(e.to_string()))?;
            }
            Order::Query {
                reply_to, limit, ..
            } => {
                if !reply_to.starts_with(NODE_CHANNEL_PREFIX) {
                    return Err(BadOrder::ReplyTo);
                }
                if *limit == 0 || *limit > MAX_QUERY_LIMIT {
                    return Err(BadOrder::Limit(*limit));
                }
            }
            Order::Answer { connections, .. } => {
                if connections.len() > MAX_QUERY_LIMIT {
                    return Err(BadOrder::Limit(connections.len()));
                }
            }
            Order::Alive { node } => {
                if node.is_empty() || node.len() > 255 {
                    return Err(BadOrder::Malformed(
                        "node id is empty or over 255 bytes".into(),
                    ));
                }
            }
            Order::Probe { .. } => {}
            Order::Reply { data, error, .. } => {
                if data.is_some() && error.is_some() {
                    return Err(BadOrder::Malformed(
                        "a reply has \"data\" or \"error\", not both".to_string(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The bytes and kind of a `send` order's data.
pub fn send_payload(
    data: &RawValue,
    encoding: Encoding,
) -> Result<(bytes::Bytes, MessageKind), BadOrder> {
    bytes_from_json(data, encoding).map_err(|e| BadOrder::Data(e.to_string()))
}

/// An order's `op`, read first to pick how to read the rest.
#[derive(Deserialize)]
struct OpOnly<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
}

/// A `send` order as it travels, read by a struct of its own so that
/// `data` stays the text the backend wrote.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendWire {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    connection: String,
    data: Box<RawValue>,
    #[serde(default)]
    encoding: Encoding,
}

impl From<SendWire> for Order {
    fn from(w: SendWire) -> Order {
        Order::Send {
            connection: w.connection,
            data: w.data,
            encoding: w.encoding,
        }
    }
}

/// A `reply` order as it travels (see [`SendWire`]), and the body of
/// `POST /api/reply`, which is the same without `op`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyWire {
    #[serde(default, rename = "op")]
    _op: Option<serde::de::IgnoredAny>,
    connection: String,
    #[serde(alias = "request_id")]
    request: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ReplyError>,
}

impl From<ReplyWire> for Order {
    fn from(w: ReplyWire) -> Order {
        Order::Reply {
            connection: w.connection,
            request: w.request,
            data: w.data,
            error: w.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_about_one_connection_go_to_its_node_only() {
        assert_eq!(node_of("a.b.17"), Some("a.b"));
        assert_eq!(node_of("nodots"), None);
        let one = Order::parse(br#"{"op":"disconnect","connection":"n1.7"}"#).unwrap();
        assert_eq!(one.channel(), "#node:n1");
        let send = Order::parse(br#"{"op":"send","connection":"n2.3","data":1}"#).unwrap();
        assert_eq!(send.channel(), "#node:n2");
        let user = Order::parse(br#"{"op":"disconnect","user":"42"}"#).unwrap();
        assert_eq!(user.channel(), CONTROL_CHANNEL);
        let unsub =
            Order::parse(br#"{"op":"unsubscribe","connection":"n3.1","channel":"news"}"#).unwrap();
        assert_eq!(unsub.channel(), "#node:n3");
        let unsub = Order::parse(br#"{"op":"unsubscribe","user":"7","channel":"news"}"#).unwrap();
        assert_eq!(unsub.channel(), CONTROL_CHANNEL);
    }

    #[test]
    fn queries_answer_only_to_node_channels_and_stay_bounded() {
        let ok = br##"{"op":"query","request":"r1","reply_to":"#node:n1","user":"42","limit":10}"##;
        assert!(matches!(
            Order::parse(ok),
            Ok(Order::Query { limit: 10, .. })
        ));
        for bad in [
            &br##"{"op":"query","request":"r","reply_to":"news","limit":10}"##[..],
            br##"{"op":"query","request":"r","reply_to":"#node:n1","limit":0}"##,
            br##"{"op":"query","request":"r","reply_to":"#node:n1","limit":10001}"##,
            br##"{"op":"unsubscribe","user":"1","channel":"has space"}"##,
            br##"{"op":"alive","node":""}"##,
        ] {
            assert!(
                Order::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let answer = Order::Answer {
            request: "r1".into(),
            node: "n2".into(),
            connections: vec![ConnectionInfo {
                id: "n2.1".into(),
                user: "42".into(),
                node: "n2".into(),
                mode: "native".into(),
                channels: vec!["news".into()],
                channels_truncated: false,
                connected_at: 1,
                age_seconds: 2,
                remote: "127.0.0.1:5".into(),
            }],
            truncated: false,
        };
        let wire = serde_json::to_vec(&answer).unwrap();
        assert!(matches!(
            Order::parse(&wire),
            Ok(Order::Answer { connections, .. }) if connections.len() == 1
        ));
    }

    #[test]
    fn send_and_reply_keep_the_backends_json_text() {
        let text = r#"{"b":1,"a":123456789012345678901234567890,"a":2,"e":1E2}"#;
        let send = format!(r#"{{"op":"send","connection":"n1.7","data":{text}}}"#);
        let Ok(Order::Send { data, .. }) = Order::parse(send.as_bytes()) else {
            panic!("send");
        };
        assert_eq!(data.get(), text);
        let wire = serde_json::to_string(&Order::Send {
            connection: "n1.7".into(),
            data,
            encoding: Encoding::Json,
        })
        .unwrap();
        assert!(wire.contains(text), "{wire}");
        let reply = format!(r#"{{"op":"reply","connection":"n1.7","request":"1","data":{text}}}"#);
        let Ok(Order::Reply {
            data: Some(data), ..
        }) = Order::parse(reply.as_bytes())
        else {
            panic!("reply");
        };
        assert_eq!(data.get(), text);
        assert!(Order::parse(br#"{"op":"send","connection":"n1.7","data":1,"extra":2}"#).is_err());
    }

    #[test]
    fn replies_go_to_the_asking_node() {
        let reply =
            Order::parse(br#"{"op":"reply","connection":"n1.7","request":"42","data":{"a":1}}"#)
                .unwrap();
        assert_eq!(reply.channel(), "#node:n1");
        let error = Order::parse(
            br#"{"op":"reply","connection":"n1.7","request_id":"42","error":{"code":4000,"message":"no"}}"#,
        )
        .unwrap();
        assert!(matches!(
            error,
            Order::Reply {
                error: Some(ReplyError { code: 4000, .. }),
                ..
            }
        ));
        let both =
            br#"{"op":"reply","connection":"n1.7","request":"1","data":1,"error":{"code":1000}}"#;
        assert!(Order::parse(both).is_err());
        assert!(Order::parse(br#"{"op":"reply","request":"1"}"#).is_err());
    }

    #[test]
    fn orders_parse_and_check() {
        let order = Order::parse(br#"{"op":"disconnect","user":"42"}"#).unwrap();
        match order {
            Order::Disconnect { target, code, .. } => {
                assert_eq!(target, Target::User("42".into()));
                assert_eq!(code, 3003);
                assert!(target.matches("n1.1", Some("42")));
                assert!(!target.matches("n1.1", Some("43")));
                assert!(!target.matches("n1.1", None));
            }
            other => panic!("{other:?}"),
        }
        let order =
            Order::parse(br#"{"op":"disconnect","connection":"n1.7","code":4000,"reason":"bye"}"#)
                .unwrap();
        assert!(matches!(order, Order::Disconnect { code: 4000, .. }));
        assert!(Order::parse(br#"{"op":"send","connection":"n1.7","data":{"a":1}}"#).is_ok());
        for bad in [
            &br#"{"op":"disconnect","user":"1","code":1000}"#[..],
            br#"{"op":"explode"}"#,
            br#"not json"#,
            br#"{"op":"send","connection":"x","data":"!!","encoding":"base64"}"#,
        ] {
            assert!(
                Order::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"op":"disconnect","user":"1","reason":"{}"}}"#,
            "x".repeat(124)
        );
        assert_eq!(Order::parse(long.as_bytes()).unwrap_err(), BadOrder::Reason);
        // The empty user never matches anonymous connections.
        assert!(!Target::User(String::new()).matches("n1.1", Some("")));
    }
}
