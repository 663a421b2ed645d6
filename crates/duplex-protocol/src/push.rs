//! Everything the server sends on `/ws`, encoded straight into WebSocket
//! frames (server frames are never masked, so the same bytes can be queued
//! to every subscriber).
//!
//! - reply:  `{"id":1,"result":{...}}` or `{"id":1,"error":{"code":103,"message":"..."}}`
//! - push:   `{"push":"message","channel":"news","data":...}`
//! - push:   `{"push":"disconnect","code":3501,"reason":"...","reconnect":false}`
//! - push:   `{"push":"unsubscribe","channel":"news"}`
//!
//! A message on a history channel carries its `offset` after `channel`.
//! `join`/`leave` pushes (presence) are in [`crate::presence`]. rpc results are ordinary replies:
//! `{"id":1,"result":{"data":...}}`.

use std::io::Write;

use bytes::Bytes;
use serde::Serialize;

use crate::code::{reconnect_allowed, ErrorCode};
use crate::payload::{write_data_field, JsonForm};
use crate::time::NumericDate;
use crate::ws::{FrameBuilder, OpCode};

/// Result of `connect`: who the client is and how the server will behave.
#[derive(Debug, Serialize)]
pub struct ConnectResult<'a> {
    /// Connection id, unique across nodes.
    pub client: &'a str,
    /// Id of the node holding the connection.
    pub node: &'a str,
    /// Server software version.
    pub version: &'a str,
    /// Native protocol version spoken.
    pub protocol: u32,
    /// Seconds between server pings; answer them (browsers do) or be dropped.
    pub ping_interval: u64,
    /// Milliseconds the server waits for a backend's answer to an `rpc`
    /// before it replies 113: a client waits a little longer than this.
    pub rpc_timeout_ms: u64,
    /// User id from the token; empty for anonymous clients.
    pub user: &'a str,
    /// When the token expires (Unix seconds, the token's `exp` as it is,
    /// fraction included): refresh before then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<NumericDate>,
    /// Channels the token subscribed the client to.
    #[serde(skip_serializing_if = "<[&str]>::is_empty")]
    pub channels: &'a [&'a str],
    /// Those of them that keep history: where each stands, and
    /// `recovered` for those `connect` asked to `recover`.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "crate::history::as_map"
    )]
    pub positions: Vec<(&'a str, crate::history::ChannelPosition<'a>)>,
}

/// Result of `refresh`.
#[derive(Debug, Serialize)]
pub struct RefreshResult {
    /// When the new token expires (Unix seconds, as in its `exp`), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<NumericDate>,
}

/// Result of `subscribe` / `unsubscribe`: the channels now affected.
#[derive(Debug, Serialize)]
pub struct ChannelsResult<'a> {
    /// Channel names, in request order.
    pub channels: &'a [&'a str],
}

/// Result of `rpc`: the backend's answer.
#[derive(Debug, Serialize)]
pub struct RpcResult<'a> {
    /// Any JSON the backend replied with.
    pub data: &'a serde_json::value::RawValue,
}

/// Result of commands with nothing to report (`publish`, `ping`).
#[derive(Debug, Serialize)]
pub struct Empty {}

#[derive(Serialize)]
struct OkReply<'a, T> {
    id: u64,
    result: &'a T,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    temporary: bool,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct DisconnectPush<'a> {
    push: &'static str,
    code: u16,
    reason: &'a str,
    reconnect: bool,
}

/// Any serializable value as one text frame.
pub(crate) fn json_frame(value: &impl Serialize) -> Bytes {
    let mut frame = FrameBuilder::new(OpCode::Text);
    // Serializing our own plain structs into memory cannot fail.
    if let Err(e) = serde_json::to_writer(frame.writer(), value) {
        debug_assert!(false, "serializing a reply failed: {e}");
    }
    frame.finish()
}

/// The reply to `history`: `{"id":..,"result":{...}}` around
/// [`crate::history::write_history_result`].
pub fn history_reply<'a>(
    id: u64,
    epoch: &str,
    offset: u64,
    publications: impl IntoIterator<Item = crate::history::Kept<'a>>,
) -> Bytes {
    let mut frame = FrameBuilder::new(OpCode::Text);
    let mut w = frame.writer();
    let written = write!(w, "{{\"id\":{id},\"result\":")
        .and_then(|()| crate::history::write_history_result(&mut w, epoch, offset, publications))
        .and_then(|()| w.write_all(b"}"));
    if let Err(e) = written {
        debug_assert!(false, "writing a reply into memory failed: {e}");
    }
    frame.finish()
}

/// A successful reply frame.
pub fn reply(id: u64, result: &impl Serialize) -> Bytes {
    json_frame(&OkReply { id, result })
}

/// An error reply frame; `id` is absent when the command's id was unreadable.
pub fn error_reply(id: Option<u64>, code: ErrorCode, message: &str) -> Bytes {
    json_frame(&ErrorReply {
        id,
        error: ErrorBody {
            code,
            message,
            temporary: code.is_temporary(),
        },
    })
}

/// The last frame before a close, so clients without close-code tables learn why.
pub fn disconnect(code: u16, reason: &str) -> Bytes {
    json_frame(&DisconnectPush {
        push: "disconnect",
        code,
        reason,
        reconnect: reconnect_allowed(code),
    })
}

#[derive(Serialize)]
struct UnsubscribePush<'a> {
    push: &'static str,
    channel: &'a str,
}

/// Tells a client the server removed it from a channel (`/api/unsubscribe`):
/// `{"push":"unsubscribe","channel":"news"}`. No more messages from it follow.
pub fn unsubscribed(channel: &str) -> Bytes {
    json_frame(&UnsubscribePush {
        push: "unsubscribe",
        channel,
    })
}

/// Where a message is in its channel's history: its offset, and the epoch
/// when the message starts one (offset 1), so a live subscriber sees the
/// epoch change.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The offset.
    pub offset: u64,
    /// The epoch, written only on an epoch's first message.
    pub epoch: &'a str,
}

/// A message push frame: encoded once per publication, shared by all
/// native subscribers; `at` is its place in the channel's history.
pub fn message(channel: &str, payload: &[u8], form: JsonForm, at: Option<At<'_>>) -> Bytes {
    let mut frame = FrameBuilder::with_capacity(OpCode::Text, payload.len() + channel.len() + 72);
    let mut w = frame.writer();
    let written: std::io::Result<()> = (|| {
        w.write_all(b"{\"push\":\"message\",\"channel\":")?;
        serde_json::to_writer(&mut w, channel).map_err(std::io::Error::other)?;
        if let Some(at) = at {
            write!(w, ",\"offset\":{}", at.offset)?;
            if at.offset == 1 {
                w.write_all(b",\"epoch\":")?;
                serde_json::to_writer(&mut w, at.epoch).map_err(std::io::Error::other)?;
            }
        }
        w.write_all(b",")?;
        write_data_field(&mut w, payload, form)?;
        w.write_all(b"}")
    })();
    if let Err(e) = written {
        debug_assert!(false, "writing a push into memory failed: {e}");
    }
    frame.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{Decoder, DecoderLimits, Event};

    /// Server frames are unmasked; strip the 2..10 byte header to get the JSON.
    fn body(frame: &Bytes) -> serde_json::Value {
        let len = (frame[1] & 0x7f) as usize;
        let start = match len {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        assert_eq!(frame[0], 0x81, "FIN + text");
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    #[test]
    fn replies() {
        let r = reply(
            7,
            &ChannelsResult {
                channels: &["a", "b"],
            },
        );
        assert_eq!(
            body(&r),
            serde_json::json!({"id":7,"result":{"channels":["a","b"]}})
        );
        let e = error_reply(Some(3), ErrorCode::UnknownMethod, "unknown method \"x\"");
        assert_eq!(
            body(&e),
            serde_json::json!({"id":3,"error":{"code":102,"message":"unknown method \"x\""}})
        );
        let e = error_reply(None, ErrorCode::BrokerUnavailable, "redis down");
        assert_eq!(
            body(&e),
            serde_json::json!({"error":{"code":107,"message":"redis down","temporary":true}})
        );
    }

    #[test]
    fn message_pushes() {
        let m = message("news", br#"{"a":1}"#, JsonForm::Json, None);
        assert_eq!(
            body(&m),
            serde_json::json!({"push":"message","channel":"news","data":{"a":1}})
        );
        let at = |offset| {
            Some(At {
                offset,
                epoch: "e1",
            })
        };
        let m = message("n\"s", b"data from PHP", JsonForm::Text, at(7));
        assert_eq!(
            body(&m),
            serde_json::json!({"push":"message","channel":"n\"s","offset":7,"data":"data from PHP"})
        );
        // An epoch's first message says which epoch.
        let m = message("n", b"x", JsonForm::Text, at(1));
        assert_eq!(
            body(&m),
            serde_json::json!({"push":"message","channel":"n","offset":1,"epoch":"e1","data":"x"})
        );
        let m = message("b", &[0, 1, 2], JsonForm::Base64, None);
        assert_eq!(
            body(&m),
            serde_json::json!({"push":"message","channel":"b","data":"AAEC","encoding":"base64"})
        );
        let big = vec![b'x'; 70_000];
        let m = message("big", &big, JsonForm::Text, None);
        assert_eq!(body(&m)["data"].as_str().unwrap().len(), 70_000);
    }

    #[test]
    fn disconnect_push() {
        let d = disconnect(1001, "shutting down");
        assert_eq!(
            body(&d),
            serde_json::json!({"push":"disconnect","code":1001,"reason":"shutting down","reconnect":true})
        );
        // Sanity: our decoder refuses server frames (unmasked), as a server must.
        let mut buf = bytes::BytesMut::from(&d[..]);
        let mut dec = Decoder::new(DecoderLimits::default());
        assert!(!matches!(
            dec.decode(&mut buf),
            Ok(Some(Event::Message { .. }))
        ));
    }

    #[test]
    fn unsubscribe_push() {
        assert_eq!(
            body(&unsubscribed("news")),
            serde_json::json!({"push":"unsubscribe","channel":"news"})
        );
    }
}
