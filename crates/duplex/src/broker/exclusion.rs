//! Exclusion notices: how one node has another skip one of its connections
//! for one message (`exclude` on `/api/publish`, for a backend publishing
//! on a client's behalf: Pusher's `socket_id`, Laravel's `toOthers()`).
//!
//! Only bytes travel on a channel (that keeps `PUBLISH` from any client
//! compatible), so the excluded connection cannot ride along in the
//! message. Instead the publisher sends a notice on the holding node's
//! `#exclude:<node>` channel just before the message, on the same Redis
//! connection: Redis hands both to that node in that order, the node files
//! the notice in its echo filter as soon as it arrives (ahead of the fan-out
//! queue), and the message is matched against it like a plain client's own
//! echo. A Redis-only backend can do the same (docs/API.md):
//!
//! ```text
//! MULTI
//! PUBLISH #exclude:n1 '{"connection":"n1.17","channel":"chat","data":"hi"}'
//! PUBLISH chat hi
//! EXEC
//! ```
//!
//! Pure: building and reading notices.

use bytes::Bytes;
use duplex_protocol::payload::{bytes_from_json, Encoding};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// On a Redis Cluster the notice and the message live on different
/// shards, read by the holding node over different connections, so their
/// order is lost: there a plain publish carries its exclusion in front of
/// the data instead, `ENVELOPE <node>.<seq> <data>`, which every node
/// strips (raw subscribers on Redis see it; WebSocket clients never do).
pub const ENVELOPE: &[u8] = b"\xFFDXE1 ";

/// `data` with its excluded connection (`<node>.<seq>`) in front ([`ENVELOPE`]).
pub fn wrap(connection: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE.len() + connection.len() + 1 + data.len());
    out.extend_from_slice(ENVELOPE);
    out.extend_from_slice(connection.as_bytes());
    out.push(b' ');
    out.extend_from_slice(data);
    out
}

/// A message as it arrived: the data without an [`ENVELOPE`], and the
/// connection number to skip when the exclusion names this node.
pub fn unwrap(node_id: &str, payload: Bytes) -> (Bytes, Option<u64>) {
    let Some(rest) = payload.strip_prefix(ENVELOPE) else {
        return (payload, None);
    };
    let Some(space) = rest.iter().position(|b| *b == b' ') else {
        return (payload, None);
    };
    let connection = std::str::from_utf8(&rest[..space]).ok();
    let data = payload.slice(ENVELOPE.len() + space + 1..);
    let seq = connection
        .and_then(|c| c.rsplit_once('.'))
        .filter(|(node, _)| *node == node_id)
        .and_then(|(_, seq)| seq.parse().ok());
    (data, seq)
}

/// Channel of the notices for one node: `#exclude:<node id>`.
pub const EXCLUDE_CHANNEL_PREFIX: &str = "#exclude:";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Notice<'a> {
    #[serde(borrow)]
    connection: &'a str,
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, skip_serializing_if = "is_json")]
    encoding: Encoding,
}

fn is_json(e: &Encoding) -> bool {
    *e == Encoding::Json
}

/// Which message to skip for which of this node's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// Channel name as published (without the Redis prefix).
    pub channel: String,
    /// Exactly the message's bytes.
    pub payload: Bytes,
    /// The connection's number on this node.
    pub seq: u64,
}

/// Why a notice was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    /// Not a notice at all.
    #[error("not an exclusion notice: {0}")]
    Malformed(String),
    /// The connection id is not `<node>.<number>` of this node.
    #[error("connection {0:?} is not one of this node's")]
    NotOurs(String),
}

/// The notice for `payload` on `channel`, skipping `connection` (`<node>.<seq>`).
pub fn notice(connection: &str, channel: &str, payload: &[u8]) -> Vec<u8> {
    let (text, encoding) = match std::str::from_utf8(payload) {
        Ok(text) => (serde_json::Value::from(text).to_string(), Encoding::Json),
        Err(_) => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
            (serde_json::Value::from(b64).to_string(), Encoding::Base64)
        }
    };
    let Ok(data) = RawValue::from_string(text) else {
        // A JSON string literal is always valid JSON.
        return Vec::new();
    };
    let notice = Notice {
        connection,
        channel: channel.into(),
        data: &data,
        encoding,
    };
    serde_json::to_vec(&notice).unwrap_or_default()
}

/// Reads a notice received on this node's `#exclude:<node>` channel.
pub fn parse(node: &str, bytes: &[u8]) -> Result<Exclusion, NoticeError> {
    let notice: Notice<'_> =
        serde_json::from_slice(bytes).map_err(|e| NoticeError::Malformed(e.to_string()))?;
    let seq = match notice.connection.rsplit_once('.') {
        Some((n, seq)) if n == node => seq.parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| NoticeError::NotOurs(notice.connection.to_string()))?;
    let (payload, _kind) = bytes_from_json(notice.data, notice.encoding)
        .map_err(|e| NoticeError::Malformed(e.to_string()))?;
    Ok(Exclusion {
        channel: notice.channel.into_owned(),
        payload,
        seq,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_envelope_names_the_connection_only_to_its_node() {
        let sent = Bytes::from(wrap("n1.17", b"hi there"));
        assert_eq!(
            unwrap("n1", sent.clone()),
            (Bytes::from("hi there"), Some(17))
        );
        assert_eq!(unwrap("n2", sent), (Bytes::from("hi there"), None));
        let plain = Bytes::from("\u{ff}not ours");
        assert_eq!(unwrap("n1", plain.clone()), (plain, None));
    }
    use super::*;

    #[test]
    fn notices_read_back_for_text_and_binary() {
        for payload in [&b"hi \"there\""[..], &[0xff, 0x00, 0x80][..], b""] {
            let n = notice("n1.17", "chat", payload);
            let e = parse("n1", &n).unwrap();
            assert_eq!(e.channel, "chat");
            assert_eq!(e.payload.as_ref(), payload);
            assert_eq!(e.seq, 17);
        }
    }

    #[test]
    fn a_backend_written_notice_is_read_as_documented() {
        let e = parse(
            "n1",
            br#"{"connection":"n1.17","channel":"chat","data":{"text":"hi"}}"#,
        )
        .unwrap();
        assert_eq!(e.payload.as_ref(), br#"{"text":"hi"}"#);
    }

    #[test]
    fn others_and_garbage_are_refused() {
        let n = notice("n2.17", "chat", b"x");
        assert!(matches!(parse("n1", &n), Err(NoticeError::NotOurs(_))));
        assert!(matches!(
            parse("n1", &notice("n1.x", "c", b"x")),
            Err(NoticeError::NotOurs(_))
        ));
        assert!(matches!(
            parse("n1", b"nope"),
            Err(NoticeError::Malformed(_))
        ));
        assert!(matches!(
            parse(
                "n1",
                br#"{"connection":"n1.1","channel":"c","data":"x","extra":1}"#
            ),
            Err(NoticeError::Malformed(_))
        ));
    }
}
