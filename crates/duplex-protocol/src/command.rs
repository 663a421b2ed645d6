//! Commands a native-protocol client sends, one JSON object per text frame:
//!
//! ```json
//! {"id": 1, "method": "subscribe", "params": {"channels": ["news", "chat"]}}
//! ```
//!
//! Every command carries an `id` (an integer from 0 to 2^53-1, so JavaScript
//! can hold it) and gets exactly one reply with the same `id`. Unknown fields
//! are ignored so that newer clients can talk to older servers.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::code::ErrorCode;
use crate::payload::Encoding;

/// Largest id a command may carry: JavaScript's `Number.MAX_SAFE_INTEGER`.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Every method [`decode`] knows, by the name clients send: the list
/// docs/PROTOCOL.md section 3.1 shows (crates/duplex/tests/docs.rs holds
/// the two together). Keep it in step with the match in [`decode`].
pub const METHODS: &[&str] = &[
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "refresh",
    "send",
    "rpc",
    "history",
    "presence",
    "presence_stats",
];

/// One decoded command and the id its reply must carry.
#[derive(Debug)]
pub struct Request {
    /// Echoed in the reply.
    pub id: u64,
    /// What the client asks for.
    pub command: Command,
}

/// The methods of protocol version 1.
#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    /// Introduces the client, with its token when the server requires one.
    Connect(ConnectParams),
    /// Adds channels to this connection.
    Subscribe(ChannelsParams),
    /// Removes channels from this connection.
    Unsubscribe(ChannelsParams),
    /// Publishes to a channel on every node.
    Publish(PublishParams),
    /// Application-level liveness check; answered with an empty result.
    Ping,
    /// Presents a fresh connection token before the current one expires.
    Refresh(RefreshParams),
    /// Sends a message up to the backends (fire and forget; acknowledged once handed over).
    Send(SendParams),
    /// Asks the backends a question; the reply carries the backend's answer.
    Rpc(RpcParams),
    /// Reads a history channel's kept publications.
    History(crate::history::HistoryParams),
    /// Lists a presence channel's members.
    Presence(crate::presence::PresenceParams),
    /// Counts a presence channel's connections and users.
    PresenceStats(crate::presence::PresenceParams),
}

/// Longest rpc method name, in bytes.
pub const MAX_RPC_METHOD: usize = 255;

/// Parameters of `rpc`.
#[derive(Debug, Deserialize)]
pub struct RpcParams {
    /// The backend's name for the call, 1 to [`MAX_RPC_METHOD`] bytes.
    pub method: String,
    /// Arguments, any JSON; `null` when absent.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// A channel the call is about: it picks the namespace's upstream, and
    /// the client must be allowed to publish there.
    #[serde(default)]
    pub channel: Option<String>,
}

impl RpcParams {
    /// The arguments as JSON text (`null` when absent).
    pub fn data_json(&self) -> &str {
        self.data.as_deref().map_or("null", RawValue::get)
    }
}

/// Parameters of `send`.
#[derive(Debug, Deserialize)]
pub struct SendParams {
    /// Message data; see [`crate::payload`] for how it becomes bytes.
    pub data: Box<RawValue>,
    /// How `data` is to be read.
    #[serde(default)]
    pub encoding: Encoding,
    /// A channel the message is about: it picks the namespace's upstream,
    /// and the client must be allowed to publish there.
    #[serde(default)]
    pub channel: Option<String>,
}

/// Parameters of `refresh`.
#[derive(Debug, Default, Deserialize)]
pub struct RefreshParams {
    /// The new connection token (JWT) for the same user.
    pub token: String,
}

/// Parameters of `connect`.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectParams {
    /// Client software name, for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Client software version, for logs.
    #[serde(default)]
    pub version: Option<String>,
    /// Connection token (JWT); required when the server has token auth on.
    #[serde(default)]
    pub token: Option<String>,
    /// Protocol version the client speaks; absent means the current one.
    #[serde(default)]
    pub protocol: Option<u32>,
    /// For the token's history channels: the last position the client saw
    /// on each, as `subscribe`'s `recover`; the missed publications follow
    /// the reply.
    #[serde(default)]
    pub recover: crate::history::RecoverParams,
    /// Whether the client wants `join` / `leave` pushes on the token's
    /// presence channels whose namespace sets `join_leave`.
    #[serde(default)]
    pub join_leave: bool,
}

/// Parameters of `subscribe` and `unsubscribe`: `channel` or `channels`.
#[derive(Debug, Default, Deserialize)]
pub struct ChannelsParams {
    /// A single channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// Several channels at once.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Subscription token (JWT with `channel` and `sub`) for a private `channel`.
    #[serde(default)]
    pub token: Option<String>,
    /// `subscribe` only: per history channel, the last position the
    /// client saw; the missed publications follow the reply.
    #[serde(default)]
    pub recover: crate::history::RecoverParams,
    /// `subscribe` only: whether the client wants `join` / `leave` pushes
    /// on those of the channels whose namespace sets `join_leave`
    /// (pushes cost every listener a write per change: opt in).
    #[serde(default)]
    pub join_leave: bool,
}

impl ChannelsParams {
    /// All named channels, `channel` first, in request order, and the token.
    pub fn into_names(self) -> (Vec<String>, Option<String>) {
        let (names, token, _) = self.into_parts();
        (names, token)
    }

    /// The names as [`ChannelsParams::into_names`] gives them, the token
    /// and the positions to recover from.
    pub fn into_parts(self) -> (Vec<String>, Option<String>, crate::history::RecoverParams) {
        let mut names = self.channels;
        if let Some(one) = self.channel {
            names.insert(0, one);
        }
        (names, self.token, self.recover)
    }
}

/// Parameters of `publish`.
#[derive(Debug, Deserialize)]
pub struct PublishParams {
    /// Target channel.
    pub channel: String,
    /// Message data; see [`crate::payload`] for how it becomes bytes.
    pub data: Box<RawValue>,
    /// How to read `data`; JSON by default.
    #[serde(default)]
    pub encoding: Encoding,
}

/// A command that cannot be run, with what the error reply must say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// The command's id when it could be read, so the reply can carry it.
    pub id: Option<u64>,
    /// Stable code for programs.
    pub code: ErrorCode,
    /// Explanation for people.
    pub message: String,
}

impl CommandError {
    fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError {
            id,
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    id: Option<serde_json::Number>,
    #[serde(default, borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

/// Decodes one text frame into a request, or says exactly what is wrong.
pub fn decode(frame: &[u8]) -> Result<Request, CommandError> {
    // serde would also read a struct from an array by position; only objects are commands.
    if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(CommandError::new(
            None,
            ErrorCode::BadRequest,
            "a command must be a JSON object with \"id\", \"method\" and optional \"params\"",
        ));
    }
    let env: Envelope<'_> = serde_json::from_slice(frame).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "malformed JSON"
        } else {
            "a command must be an object with \"id\", \"method\" and optional \"params\""
        };
        CommandError::new(None, ErrorCode::BadRequest, format!("{what}: {e}"))
    })?;
    let id = match env.id {
        None => {
            return Err(CommandError::new(
                None,
                ErrorCode::BadRequest,
                "missing \"id\"",
            ));
        }
        Some(n) => match n.as_u64() {
            Some(id) if id <= MAX_ID => id,
            _ => {
                return Err(CommandError::new(
                    None,
                    ErrorCode::BadRequest,
                    format!("\"id\" must be an integer from 0 to {MAX_ID}"),
                ))
            }
        },
    };
    let Some(method) = env.method else {
        return Err(CommandError::new(
            Some(id),
            ErrorCode::BadRequest,
            "missing \"method\"",
        ));
    };
    let params = env.params.map(RawValue::get).unwrap_or("{}");
    let command = match &*method {
        "connect" => Command::Connect(parse_params(id, "connect", params)?),
        "subscribe" => Command::Subscribe(parse_params(id, "subscribe", params)?),
        "unsubscribe" => Command::Unsubscribe(parse_params(id, "unsubscribe", params)?),
        "publish" => Command::Publish(parse_params(id, "publish", params)?),
        "ping" => Command::Ping,
        "refresh" => Command::Refresh(parse_params(id, "refresh", params)?),
        "send" => Command::Send(parse_params(id, "send", params)?),
        "rpc" => Command::Rpc(rpc_params(id, params)?),
        "history" => Command::History(parse_params(id, "history", params)?),
        "presence" => Command::Presence(parse_params(id, "presence", params)?),
        "presence_stats" => Command::PresenceStats(parse_params(id, "presence_stats", params)?),
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(CommandError::new(
                Some(id),
                ErrorCode::UnknownMethod,
                format!("unknown method {shown:?}"),
            ));
        }
    };
    Ok(Request { id, command })
}

fn rpc_params(id: u64, params: &str) -> Result<RpcParams, CommandError> {
    let p: RpcParams = parse_params(id, "rpc", params)?;
    if p.method.is_empty() || p.method.len() > MAX_RPC_METHOD {
        return Err(CommandError::new(
            Some(id),
            ErrorCode::BadRequest,
            format!("invalid params for rpc: \"method\" must be 1 to {MAX_RPC_METHOD} bytes"),
        ));
    }
    Ok(p)
}

fn parse_params<'a, T: Deserialize<'a>>(
    id: u64,
    method: &str,
    params: &'a str,
) -> Result<T, CommandError> {
    // serde would also read a JSON array positionally; the protocol says object.
    if !params.trim_start().starts_with('{') {
        return Err(CommandError::new(
            Some(id),
            ErrorCode::BadRequest,
            format!("invalid params for {method}: must be a JSON object"),
        ));
    }
    serde_json::from_str(params).map_err(|e| {
        CommandError::new(
            Some(id),
            ErrorCode::BadRequest,
            format!("invalid params for {method}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(frame: &str) -> CommandError {
        decode(frame.as_bytes()).unwrap_err()
    }

    #[test]
    fn params_must_be_an_object_not_an_array() {
        let e = err(r#"{"id":3,"method":"subscribe","params":["a"]}"#);
        assert_eq!((e.id, e.code), (Some(3), ErrorCode::BadRequest));
        assert!(e.message.contains("JSON object"), "{}", e.message);
        let e = err(r#"{"id":4,"method":"publish","params":"x"}"#);
        assert_eq!((e.id, e.code), (Some(4), ErrorCode::BadRequest));
    }

    #[test]
    fn every_listed_method_is_known() {
        for method in METHODS {
            let frame = format!(r#"{{"id":1,"method":"{method}"}}"#);
            if let Err(e) = decode(frame.as_bytes()) {
                assert_ne!(e.code, ErrorCode::UnknownMethod, "{method}");
            }
        }
        assert_eq!(
            err(r#"{"id":1,"method":"fly"}"#).code,
            ErrorCode::UnknownMethod
        );
    }

    #[test]
    fn decodes_each_method() {
        let r =
            decode(br#"{"id":1,"method":"subscribe","params":{"channels":["a","b"]}}"#).unwrap();
        assert_eq!(r.id, 1);
        match r.command {
            Command::Subscribe(p) => assert_eq!(p.into_names().0, ["a", "b"]),
            other => panic!("{other:?}"),
        }
        let r = decode(br#"{"id":2,"method":"unsubscribe","params":{"channel":"a"}}"#).unwrap();
        match r.command {
            Command::Unsubscribe(p) => assert_eq!(p.into_names().0, ["a"]),
            other => panic!("{other:?}"),
        }
        let r = decode(br#"{"method":"publish","id":3,"params":{"channel":"c","data":{"x":1}}}"#)
            .unwrap();
        match r.command {
            Command::Publish(p) => {
                assert_eq!(p.channel, "c");
                assert_eq!(p.data.get(), r#"{"x":1}"#);
            }
            other => panic!("{other:?}"),
        }
        let r = decode(br#"{"id":4,"method":"ping"}"#).unwrap();
        assert!(matches!(r.command, Command::Ping));
        let r =
            decode(br#"{"id":5,"method":"connect","params":{"name":"t","extra":true}}"#).unwrap();
        match r.command {
            Command::Connect(p) => assert_eq!(p.name.as_deref(), Some("t")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_and_wrong_shape() {
        let e = err("{not json");
        assert_eq!((e.id, e.code), (None, ErrorCode::BadRequest));
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        for frame in [
            "[1,2]",
            "42",
            "\"x\"",
            "null",
            r#"{"id":"1","method":"ping"}"#,
        ] {
            let e = err(frame);
            assert_eq!(e.code, ErrorCode::BadRequest, "{frame}");
        }
        let e = err(r#"{"id":7,"method":"subscribe","params":{"channels":"a"}}"#);
        assert_eq!((e.id, e.code), (Some(7), ErrorCode::BadRequest));
        let e = err(r#"{"id":7,"method":"publish","params":{"channel":"a"}}"#);
        assert_eq!((e.id, e.code), (Some(7), ErrorCode::BadRequest));
        let e = err(r#"{"id":8}"#);
        assert_eq!((e.id, e.code), (Some(8), ErrorCode::BadRequest));
    }

    #[test]
    fn ids_must_be_safe_integers() {
        for frame in [
            r#"{"id":-1,"method":"ping"}"#,
            r#"{"id":1.5,"method":"ping"}"#,
            r#"{"id":9007199254740992,"method":"ping"}"#,
            r#"{"id":123456789012345678901234567890,"method":"ping"}"#,
            r#"{"method":"ping"}"#,
        ] {
            assert_eq!(err(frame).id, None, "{frame}");
        }
        assert_eq!(
            decode(br#"{"id":9007199254740991,"method":"ping"}"#)
                .unwrap()
                .id,
            MAX_ID
        );
    }

    #[test]
    fn rpc_needs_a_method_name() {
        let r =
            decode(br#"{"id":6,"method":"rpc","params":{"method":"sum","data":[1,2]}}"#).unwrap();
        match r.command {
            Command::Rpc(p) => assert_eq!((p.method.as_str(), p.data_json()), ("sum", "[1,2]")),
            other => panic!("{other:?}"),
        }
        let r = decode(br#"{"id":6,"method":"rpc","params":{"method":"now"}}"#).unwrap();
        assert!(matches!(r.command, Command::Rpc(p) if p.data_json() == "null"));
        for bad in [
            r#"{"id":6,"method":"rpc","params":{"method":""}}"#.to_string(),
            r#"{"id":6,"method":"rpc","params":{"data":1}}"#.to_string(),
            format!(
                r#"{{"id":6,"method":"rpc","params":{{"method":"{}"}}}}"#,
                "m".repeat(256)
            ),
        ] {
            let e = err(&bad);
            assert_eq!((e.id, e.code), (Some(6), ErrorCode::BadRequest), "{bad}");
        }
    }

    #[test]
    fn send_and_rpc_may_name_a_channel() {
        let r = decode(br#"{"id":1,"method":"send","params":{"data":1,"channel":"orders:7"}}"#)
            .unwrap();
        assert!(matches!(r.command, Command::Send(p) if p.channel.as_deref() == Some("orders:7")));
        let r = decode(br#"{"id":2,"method":"send","params":{"data":1}}"#).unwrap();
        assert!(matches!(r.command, Command::Send(p) if p.channel.is_none()));
        let r =
            decode(br#"{"id":3,"method":"rpc","params":{"method":"m","channel":"c"}}"#).unwrap();
        assert!(matches!(r.command, Command::Rpc(p) if p.channel.as_deref() == Some("c")));
        let e = err(r#"{"id":4,"method":"rpc","params":{"method":"m","channel":7}}"#);
        assert_eq!((e.id, e.code), (Some(4), ErrorCode::BadRequest));
    }

    #[test]
    fn unknown_method_keeps_id() {
        let e = err(r#"{"id":9,"method":"fly"}"#);
        assert_eq!((e.id, e.code), (Some(9), ErrorCode::UnknownMethod));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let frame =
            format!(r#"{{"id":1,"method":"publish","params":{{"channel":"a","data":{deep}}}}}"#);
        // serde_json skips raw values iteratively: no recursion, no stack overflow.
        let r = decode(frame.as_bytes()).unwrap();
        assert!(matches!(r.command, Command::Publish(p) if p.data.get().len() == 200_000));
        let deep_env = "[".repeat(100_000);
        assert_eq!(err(&deep_env).code, ErrorCode::BadRequest);
        let deep_params = format!(r#"{{"id":1,"method":"subscribe","params":{deep}}}"#);
        assert_eq!(err(&deep_params).code, ErrorCode::BadRequest);
    }
}
