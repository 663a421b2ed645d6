//! What a message up looks like to a backend: the fields of a stream entry
//! and the same fields as the JSON body POSTed to an upstream URL.

use bytes::Bytes;
use duplex_protocol::payload::Encoding;
use duplex_protocol::ws::MessageKind;
use serde::Serialize;
use serde_json::value::RawValue;

use super::route::Route;
use crate::broker::Upstream;

/// Who sent a message up, as every entry and body names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sender<'a> {
    /// The connection's id (where a reply or an order goes).
    pub(crate) connection: &'a str,
    /// Its user, empty when anonymous.
    pub(crate) user: &'a str,
    /// The node holding it.
    pub(crate) node: &'a str,
}

/// A stream entry: `kind`, the data and its encoding, the sender, when,
/// `extra` fields (an rpc's method, request, reply_to), then the routing
/// channel.
pub(crate) fn stream_entry(
    sender: Sender<'_>,
    kind: &'static str,
    (data, encoding): (Bytes, &'static str),
    extra: Vec<(&'static str, Bytes)>,
    route: &Route<'_>,
) -> Upstream {
    let mut fields = vec![
        ("kind", Bytes::from_static(kind.as_bytes())),
        ("data", data),
        ("encoding", Bytes::from_static(encoding.as_bytes())),
        (
            "connection",
            Bytes::copy_from_slice(sender.connection.as_bytes()),
        ),
        ("user", Bytes::copy_from_slice(sender.user.as_bytes())),
        ("node", Bytes::copy_from_slice(sender.node.as_bytes())),
        ("ts", Bytes::from(unix_millis().to_string())),
    ];
    fields.extend(extra);
    if let Some(channel) = route.channel {
        fields.push(("channel", Bytes::copy_from_slice(channel.as_bytes())));
    }
    Upstream {
        stream: route.stream.clone(),
        fields,
    }
}

/// The encoding field of a stream entry for a frame of this kind.
pub(crate) fn entry_encoding(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Text => "text",
        MessageKind::Binary => "binary",
    }
}

/// The JSON body POSTed to an upstream URL: the stream entry's fields.
#[derive(Serialize)]
pub(crate) struct HttpCall<'a> {
    /// `send` or `rpc`.
    pub(crate) kind: &'static str,
    /// An rpc's method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<&'a str>,
    /// The client's data, as JSON.
    pub(crate) data: &'a RawValue,
    /// How `data` is encoded, when the client said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encoding: Option<Encoding>,
    /// The sender's connection.
    pub(crate) connection: &'a str,
    /// The sender's user.
    pub(crate) user: &'a str,
    /// The sender's node.
    pub(crate) node: &'a str,
    /// The call's request id (empty for a plain frame nobody answers).
    pub(crate) request: String,
    /// Unix milliseconds when it went up.
    pub(crate) ts: u128,
    /// The routing channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) channel: Option<&'a str>,
}

impl<'a> HttpCall<'a> {
    /// A body for `sender`'s call, stamped now.
    pub(crate) fn new(sender: Sender<'a>, kind: &'static str, data: &'a RawValue) -> Self {
        HttpCall {
            kind,
            method: None,
            data,
            encoding: None,
            connection: sender.connection,
            user: sender.user,
            node: sender.node,
            request: String::new(),
            ts: unix_millis(),
            channel: None,
        }
    }
}

/// A plain frame as JSON `data`: text as a string, anything else base64.
pub(crate) fn frame_data(
    payload: &[u8],
    kind: MessageKind,
) -> Result<(Box<RawValue>, Option<Encoding>), serde_json::Error> {
    use base64::Engine as _;
    let (text, encoding) = match (kind, std::str::from_utf8(payload)) {
        (MessageKind::Text, Ok(text)) => (text.to_string(), None),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(payload),
            Some(Encoding::Base64),
        ),
    };
    Ok((serde_json::value::to_raw_value(&text)?, encoding))
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_become_json_data_text_as_is_binary_as_base64() {
        let (data, encoding) = frame_data(b"hi \"you\"", MessageKind::Text).unwrap();
        assert_eq!((data.get(), encoding), (r#""hi \"you\"""#, None));
        let (data, encoding) = frame_data(&[0xff, 0], MessageKind::Binary).unwrap();
        assert_eq!(
            (data.get(), encoding),
            (r#""/wA=""#, Some(Encoding::Base64))
        );
        // Text frames that are not UTF-8 cannot happen on a socket, but stay lossless.
        let (_, encoding) = frame_data(&[0xff], MessageKind::Text).unwrap();
        assert_eq!(encoding, Some(Encoding::Base64));
    }

    #[test]
    fn an_entry_names_sender_and_channel_after_the_extras() {
        let sender = Sender {
            connection: "c1",
            user: "u",
            node: "n1",
        };
        let route = Route {
            stream: "s".into(),
            url: None,
            channel: Some("chat:1"),
        };
        let entry = stream_entry(
            sender,
            "send",
            (Bytes::from_static(b"x"), "text"),
            vec![],
            &route,
        );
        let names: Vec<_> = entry.fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "kind",
                "data",
                "encoding",
                "connection",
                "user",
                "node",
                "ts",
                "channel"
            ]
        );
        assert_eq!(entry.stream, "s");
    }
}
