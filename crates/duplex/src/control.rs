//! Orders for every node, carried by the broker on the reserved channel
//! `#control`: each node subscribes to it at start and applies what it reads
//! to its own connections. The HTTP API publishes them (`/api/disconnect`,
//! `/api/publish` to `#conn:<id>`), and so can any backend with a Redis
//! client: `PUBLISH #control '{"op":"disconnect","user":"42"}'`.
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

/// Close code when no code is given: "disconnected by the server" (reconnect allowed).
pub const DEFAULT_DISCONNECT_CODE: u16 = 3003;

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

/// One order, as JSON on `#control`.
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
        /// The data, as in `/api/publish`. (A `Value`, not a `RawValue`:
        /// serde cannot buffer raw values inside a tagged enum.)
        data: serde_json::Value,
        /// `text` (default) or `base64`.
        #[serde(default)]
        encoding: Encoding,
    },
    /// A backend's answer to a client's rpc, sent to the holding node's
    /// `#node:<id>` channel (the stream entry's `reply_to`).
    Reply {
        /// The connection that asked (the entry's `connection`).
        connection: String,
        /// The request id (the entry's `request`).
        #[serde(alias = "request_id")]
        request: String,
        /// The answer, any JSON (absent means `null`).
        #[serde(default)]
        data: Option<serde_json::Value>,
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
}

impl Order {
    /// Parses and checks an order read from `#control`.
    pub fn parse(payload: &[u8]) -> Result<Order, BadOrder> {
        let order: Order =
            serde_json::from_slice(payload).map_err(|e| BadOrder::Malformed(e.to_string()))?;
        order.check()?;
        Ok(order)
    }

    /// The channel that reaches every node concerned: the holding node's
    /// own channel for an order about one connection, else `#control`.
    pub fn channel(&self) -> String {
        let node = match self {
            Order::Disconnect { target, .. } => target.node(),
            Order::Send { connection, .. } | Order::Reply { connection, .. } => node_of(connection),
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
    data: &serde_json::Value,
    encoding: Encoding,
) -> Result<(bytes::Bytes, MessageKind), BadOrder> {
    let raw: Box<RawValue> =
        serde_json::value::to_raw_value(data).map_err(|e| BadOrder::Data(e.to_string()))?;
    bytes_from_json(&raw, encoding).map_err(|e| BadOrder::Data(e.to_string()))
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
