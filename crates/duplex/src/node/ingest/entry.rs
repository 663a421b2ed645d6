//! What an ingest stream entry asks to publish, or why it cannot be
//! published (the entry is then dropped and counted). Pure.
//!
//! Fields: `channel` (the channel's name, as clients name it), `data` (the
//! message's bytes as they are; kind inferred from UTF-8 validity, as for a
//! Redis `PUBLISH`), optional `encoding` (`base64`: `data` is base64 of
//! raw bytes, delivered as binary), optional `exclude` (a connection id
//! `<node>.<n>` not to deliver to). Other fields are ignored.

use base64::Engine;
use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::payload::infer_kind;
use duplex_protocol::ws::MessageKind;

use crate::broker::ingest::Entry;
use crate::control::{split_connection_id, CONN_CHANNEL_PREFIX};
use crate::message::Publication;

/// An entry's publication and the connection it skips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// What to publish (no `exclude` or position yet).
    pub(crate) publication: Publication,
    /// The connection id (`<node>.<n>`) not to deliver to.
    pub(crate) exclude: Option<String>,
}

/// The limits an entry is held to (read from the running config at each entry).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `max_channel_length`.
    pub(crate) channel: usize,
    /// `max_message_size`: the largest data, in bytes, after decoding.
    pub(crate) message: usize,
}

/// The entry's publication, or why it has none (said in the log).
pub(crate) fn parse(entry: &Entry, limits: Limits) -> Result<Parsed, String> {
    if entry.fields.is_none() {
        return Err("trimmed from the stream before it was read".to_string());
    }
    let channel = channel(entry.field("channel"), limits.channel)?;
    let data = entry
        .field("data")
        .ok_or_else(|| "no data field".to_string())?;
    let (payload, kind) = match entry.field("encoding").map(|e| e.as_ref()) {
        None | Some(b"") => (data.clone(), infer_kind(data)),
        Some(b"base64") => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| "data is not valid base64 (encoding base64)".to_string())?;
            (Bytes::from(raw), MessageKind::Binary)
        }
        Some(other) => {
            return Err(format!(
                "unknown encoding {:?}: base64, or none for the data as it is",
                shown(other)
            ))
        }
    };
    if payload.len() > limits.message {
        return Err(format!(
            "data of {} bytes is over max_message_size ({})",
            payload.len(),
            limits.message
        ));
    }
    let exclude = match entry.field("exclude") {
        None => None,
        Some(id) => match std::str::from_utf8(id)
            .ok()
            .filter(|id| split_connection_id(id).is_some())
        {
            Some(id) => Some(id.to_string()),
            None => {
                return Err(format!(
                    "exclude {:?} is not a connection id <node>.<number>",
                    shown(id)
                ))
            }
        },
    };
    Ok(Parsed {
        publication: Publication {
            channel,
            payload,
            kind,
            exclude: None,
            position: None,
        },
        exclude,
    })
}

fn channel(field: Option<&Bytes>, max: usize) -> Result<ChannelName, String> {
    let raw = field.ok_or_else(|| "no channel field".to_string())?;
    let name =
        std::str::from_utf8(raw).map_err(|_| format!("channel {:?} is not UTF-8", shown(raw)))?;
    let channel = ChannelName::parse(name, max)
        .map_err(|e| format!("invalid channel {:?}: {e}", shown(raw)))?;
    if name.starts_with(CONN_CHANNEL_PREFIX) {
        return Err(format!(
            "channel {name:?} names one connection: publish to it with POST /api/publish or a send order on #control"
        ));
    }
    Ok(channel)
}

/// At most 64 characters of a field, for the log.
fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        channel: 32,
        message: 8,
    };

    fn entry(fields: &[(&str, &[u8])]) -> Entry {
        Entry {
            id: "1-0".to_string(),
            fields: Some(
                fields
                    .iter()
                    .map(|(f, v)| (Bytes::from(f.to_string()), Bytes::copy_from_slice(v)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn data_as_it_is_or_from_base64() {
        let text = parse(
            &entry(&[("channel", b"news:eu"), ("data", b"hi"), ("ts", b"1")]),
            LIMITS,
        )
        .expect("an entry");
        assert_eq!(text.publication.channel.as_str(), "news:eu");
        assert_eq!(text.publication.payload.as_ref(), b"hi");
        assert_eq!(text.publication.kind, MessageKind::Text);
        assert_eq!(text.exclude, None);
        let raw =
            parse(&entry(&[("channel", b"c"), ("data", &[0xff, 0])]), LIMITS).expect("raw bytes");
        assert_eq!(raw.publication.kind, MessageKind::Binary);
        let decoded = parse(
            &entry(&[
                ("channel", b"c"),
                ("data", b"AP8="),
                ("encoding", b"base64"),
                ("exclude", b"n1.7"),
            ]),
            LIMITS,
        )
        .expect("base64");
        assert_eq!(decoded.publication.payload.as_ref(), [0, 0xff]);
        assert_eq!(decoded.publication.kind, MessageKind::Binary);
        assert_eq!(decoded.exclude.as_deref(), Some("n1.7"));
        let empty = parse(&entry(&[("channel", b"c"), ("data", b"")]), LIMITS).expect("empty data");
        assert!(empty.publication.payload.is_empty());
    }

    #[test]
    fn bad_entries_say_why() {
        let why = |fields: &[(&str, &[u8])]| parse(&entry(fields), LIMITS).unwrap_err();
        assert_eq!(why(&[("data", b"x")]), "no channel field");
        assert!(why(&[("channel", b"a b"), ("data", b"x")]).starts_with("invalid channel \"a b\""));
        assert!(why(&[("channel", &[0xff]), ("data", b"x")]).contains("not UTF-8"));
        assert!(why(&[("channel", b"#conn:n1.2"), ("data", b"x")]).contains("one connection"));
        assert_eq!(why(&[("channel", b"c")]), "no data field");
        assert!(
            why(&[("channel", b"c"), ("data", b"!!"), ("encoding", b"base64")]).contains("base64")
        );
        assert!(
            why(&[("channel", b"c"), ("data", b"x"), ("encoding", b"json")])
                .contains("unknown encoding")
        );
        assert!(
            why(&[("channel", b"c"), ("data", b"123456789")]).contains("over max_message_size (8)")
        );
        assert!(
            why(&[("channel", b"c"), ("data", b"x"), ("exclude", b"nobody")])
                .contains("connection id")
        );
        let trimmed = Entry {
            id: "1-0".to_string(),
            fields: None,
        };
        assert!(parse(&trimmed, LIMITS).unwrap_err().contains("trimmed"));
    }
}
