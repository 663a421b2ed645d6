//! Upstream streams on JetStream: clients' `send`/`rpc` entries kept in a
//! JetStream stream that workers read with a durable pull consumer and
//! ack, so a worker that is down loses nothing (what a Redis Stream read
//! with a consumer group does on the Redis broker; docs/UPSTREAM.md, "On
//! NATS").
//!
//! - **Names.** The upstream stream `S` (`upstream_stream`, a namespace's
//!   own, `duplex:upstream` by default) is the JetStream stream
//!   [`stream_name`]: `nats_prefix` + `S` with every byte but ASCII
//!   letters, digits, `:` and `-` written `_` and two upper-case hex
//!   digits (`duplex:upstream` stays `duplex:upstream`; `app.` + `up` is
//!   `app_2Eup`). So narrow, because a stream name is a subject token, a
//!   file name on the server, and (measured on nats-server 2.9.10) one
//!   holding `%` takes publishes but never hands them to a pull consumer.
//!   The stream captures one subject, [`stream_subject`]:
//!   `<nats_prefix>_duplex.upstream.<S>`, `S` escaped as channel names are
//!   (`subject`: `%`, `.`, `*`, `>`, and here also whitespace, control
//!   characters, `/` and `\`, as `%` and two hex digits). That subject
//!   has a `.` after the prefix, so it is never a channel's subject (a
//!   channel's `.` is escaped): no client publishing on a channel can
//!   write into a stream.
//! - **The stream.** The node makes it at its first append to it when it
//!   is missing (`get_or_create_stream`: file storage, limits retention,
//!   `max_msgs` = `upstream_maxlen`, the oldest dropped first, as
//!   `XADD MAXLEN ~` trims); one made beforehand by an operator (replicas,
//!   other limits) is used as it is, provided it captures the subject.
//! - **An entry** is one message: the first `data` field is the payload,
//!   byte for byte; every other field is a header `Duplex-<field>` whose
//!   value is the field's bytes when they are header-safe text (UTF-8, no
//!   control characters, no whitespace at either end, which NATS clients
//!   trim), else a header `Duplex-<field>-Base64` holding them in standard
//!   padded base64. `Duplex-Fields` lists every field name, `data`
//!   included, comma-separated in the entry's order (NATS headers are a
//!   map, so this is the only place the order survives).
//! - **The append** is a JetStream publish whose ack is awaited: `Ok`
//!   once the server stored it, everything within the broker timeout. A
//!   stream gone since (a NATS that came back without its store) is made
//!   again and the entry published once more.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::context::{ContextBuilder, PublishErrorKind};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::Context;
use async_nats::{Client, HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use bytes::Bytes;
use parking_lot::Mutex;

use super::Shared;
use crate::broker::{BrokerError, Upstream};

/// Every field but `data` travels in a header named this, then the field.
pub const FIELD_HEADER_PREFIX: &str = "Duplex-";
/// The header listing the entry's field names in order.
pub const FIELDS_HEADER: &str = "Duplex-Fields";
/// Appended to a field's header name when its value is base64.
pub const BASE64_SUFFIX: &str = "-Base64";
/// Between the prefix and a stream's token in its subject.
const SUBJECT_MARK: &str = "_duplex.upstream.";
/// Longest JetStream stream name the node makes (a file name on the server).
pub const MAX_STREAM_NAME: usize = 255;

/// `text` as one subject token (module doc), one to one.
pub fn subject_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let special = matches!(c, '%' | '.' | '*' | '>' | '/' | '\\');
        if special || c.is_whitespace() || c.is_control() {
            push_escaped(&mut out, '%', c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Every byte of `c` as `escape` and two upper-case hex digits.
fn push_escaped(out: &mut String, escape: char, c: char) {
    let mut utf8 = [0u8; 4];
    for b in c.encode_utf8(&mut utf8).bytes() {
        out.push_str(&format!("{escape}{b:02X}"));
    }
}

/// The JetStream stream that holds upstream stream `stream` under
/// `prefix` (module doc), one to one.
pub fn stream_name(prefix: &str, stream: &str) -> String {
    let text = format!("{prefix}{stream}");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == ':' || c == '-' {
            out.push(c);
        } else {
            push_escaped(&mut out, '_', c);
        }
    }
    out
}

/// The one subject that stream captures.
pub fn stream_subject(prefix: &str, stream: &str) -> String {
    format!("{prefix}{SUBJECT_MARK}{}", subject_token(stream))
}

/// Whether a value can ride verbatim in a NATS header.
fn header_safe(text: &str) -> bool {
    !text.chars().any(char::is_control) && text.trim() == text
}

/// An entry's fields as the headers and payload of one NATS message
/// (module doc). Field names come from the node's code, never a peer.
pub(crate) fn encode(fields: &[(&'static str, Bytes)]) -> Result<(HeaderMap, Bytes), BrokerError> {
    let bad_name = |name: &str| {
        BrokerError::Unavailable(format!("upstream field {name:?} cannot name a NATS header"))
    };
    let mut headers = HeaderMap::new();
    let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
    let list: HeaderValue = names.join(",").parse().map_err(|_| bad_name("Fields"))?;
    headers.insert(FIELDS_HEADER, list);
    let mut payload = None;
    for (name, value) in fields {
        if *name == "data" && payload.is_none() {
            payload = Some(value.clone());
            continue;
        }
        let (header, value) = match std::str::from_utf8(value) {
            Ok(text) if header_safe(text) => {
                (format!("{FIELD_HEADER_PREFIX}{name}"), text.to_string())
            }
            _ => (
                format!("{FIELD_HEADER_PREFIX}{name}{BASE64_SUFFIX}"),
                base64::engine::general_purpose::STANDARD.encode(value),
            ),
        };
        let header = HeaderName::try_from(header).map_err(|_| bad_name(name))?;
        let value: HeaderValue = value.parse().map_err(|_| bad_name(name))?;
        headers.append(header, value);
    }
    Ok((headers, payload.unwrap_or_default()))
}

/// The node's JetStream context and the streams known to exist.
pub(super) struct Streams {
    context: OnceLock<Context>,
    ready: Mutex<HashSet<String>>,
}

impl Streams {
    pub(super) fn new() -> Self {
        Streams {
            context: OnceLock::new(),
            ready: Mutex::default(),
        }
    }

    /// The context on `client` (one, for its acknowledgement task).
    fn context(&self, client: &Client, timeout: Duration) -> &Context {
        self.context
            .get_or_init(|| ContextBuilder::new().timeout(timeout).build(client.clone()))
    }
}

/// What an append failed with: a broker error, or the stream is missing.
enum Failure {
    Broker(BrokerError),
    NoStream,
}

impl From<BrokerError> for Failure {
    fn from(e: BrokerError) -> Self {
        Failure::Broker(e)
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats jetstream {what} failed: {e}"))
}

impl Shared {
    /// Appends one entry to its JetStream stream, the ack awaited, within
    /// the broker timeout (module doc).
    pub(super) async fn append(&self, message: Upstream) -> Result<(), BrokerError> {
        let client = self.up()?;
        let timeout = self.settings.timeout;
        let context = self.upstream.context(client, timeout);
        let (headers, payload) = encode(&message.fields)?;
        let prefix = &self.settings.prefix;
        let name = stream_name(prefix, &message.stream);
        let subject = stream_subject(prefix, &message.stream);
        let work = async {
            for _ in 0..2 {
                self.ensure(context, &name, &subject).await?;
                match publish(context, &name, &subject, headers.clone(), payload.clone()).await {
                    Err(Failure::NoStream) => {
                        self.upstream.ready.lock().remove(&name);
                    }
                    Err(Failure::Broker(e)) => return Err(e),
                    Ok(()) => return Ok(()),
                }
            }
            Err(BrokerError::Unavailable(format!(
                "nats jetstream: no stream takes {subject} (is {name} missing or changed?)"
            )))
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(BrokerError::Timeout(timeout)))
    }

    /// Makes the stream `name` unless it is known to exist; one that
    /// exists must capture `subject`.
    async fn ensure(
        &self,
        context: &Context,
        name: &str,
        subject: &str,
    ) -> Result<(), BrokerError> {
        if self.upstream.ready.lock().contains(name) {
            return Ok(());
        }
        let config = StreamConfig {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            max_messages: self.settings.upstream_maxlen.max(1) as i64,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            description: Some("duplex: clients' send/rpc messages for backend workers".to_string()),
            ..Default::default()
        };
        let stream = context
            .get_or_create_stream(config)
            .await
            .map_err(|e| unavailable("stream create", e))?;
        let subjects = &stream.cached_info().config.subjects;
        if !subjects.iter().any(|s| s == subject) {
            return Err(BrokerError::Unavailable(format!(
                "nats jetstream stream {name} exists but does not capture {subject} (its subjects: {subjects:?}); add it or delete the stream"
            )));
        }
        self.upstream.ready.lock().insert(name.to_string());
        Ok(())
    }
}

/// Publishes on `subject` and waits for the ack from stream `name`.
async fn publish(
    context: &Context,
    name: &str,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<(), Failure> {
    let sent = context
        .publish_with_headers(subject.to_string(), headers, payload)
        .await
        .map_err(|e| match e.kind() {
            PublishErrorKind::StreamNotFound => Failure::NoStream,
            _ => Failure::Broker(unavailable("publish", e)),
        })?;
    let ack = sent.await.map_err(|e| match e.kind() {
        PublishErrorKind::StreamNotFound => Failure::NoStream,
        _ => Failure::Broker(unavailable("publish ack", e)),
    })?;
    if ack.stream != name {
        return Err(Failure::Broker(BrokerError::Unavailable(format!(
            "nats jetstream stored {subject} in stream {} instead of {name}",
            ack.stream
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The way back, as a worker reads an entry (docs/UPSTREAM.md).
    fn decode(headers: &HeaderMap, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
        let list = headers.get(FIELDS_HEADER).expect("field list").as_str();
        let mut seen: std::collections::HashMap<&str, usize> = Default::default();
        list.split(',')
            .map(|name| {
                if name == "data" {
                    return (name.to_string(), payload.to_vec());
                }
                let nth = seen.entry(name).or_default();
                let plain = format!("{FIELD_HEADER_PREFIX}{name}");
                let value = match headers.get_all(plain.as_str()).nth(*nth) {
                    Some(v) => v.as_str().as_bytes().to_vec(),
                    None => {
                        let b64 = format!("{plain}{BASE64_SUFFIX}");
                        let v = headers.get(b64.as_str()).expect("a header").as_str();
                        base64::engine::general_purpose::STANDARD
                            .decode(v)
                            .expect("base64")
                    }
                };
                *nth += 1;
                (name.to_string(), value)
            })
            .collect()
    }

    #[test]
    fn names_and_subjects_escape_what_they_cannot_hold() {
        assert_eq!(subject_token("duplex:upstream"), "duplex:upstream");
        assert_eq!(
            subject_token("a.b*c>d/e\\f g%"),
            "a%2Eb%2Ac%3Ed%2Fe%5Cf%20g%25"
        );
        assert_eq!(subject_token("x\u{00a0}y\u{7f}"), "x%C2%A0y%7F");
        assert_eq!(stream_name("", "duplex:upstream"), "duplex:upstream");
        assert_eq!(stream_name("app.", "up_1"), "app_2Eup_5F1");
        assert_eq!(stream_name("", "caf\u{e9}%"), "caf_C3_A9_25");
        assert_eq!(
            stream_subject("", "duplex:upstream"),
            "_duplex.upstream.duplex:upstream"
        );
        assert_eq!(stream_subject("app.", "a.b"), "app._duplex.upstream.a%2Eb");
    }

    #[test]
    fn entries_round_trip_exactly() {
        let fields = vec![
            ("kind", Bytes::from_static(b"rpc")),
            ("data", Bytes::from_static(&[0xff, 0x00, b'\r', b'\n'])),
            ("user", Bytes::from_static(b"")),
            ("method", Bytes::from_static(b"line\nbreak")),
            ("channel", Bytes::from_static(b" padded ")),
            ("raw", Bytes::from_static(&[0xc3, 0x28])),
            ("ts", Bytes::from_static(b"1767000000000")),
        ];
        let (headers, payload) = encode(&fields).expect("encodes");
        assert_eq!(payload.as_ref(), &[0xff, 0x00, b'\r', b'\n']);
        assert_eq!(headers.get("Duplex-kind").map(|v| v.as_str()), Some("rpc"));
        assert!(headers.get("Duplex-method-Base64").is_some());
        let expected: Vec<(String, Vec<u8>)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        assert_eq!(decode(&headers, &payload), expected);
    }

    #[test]
    fn an_entry_without_data_has_an_empty_payload() {
        let (headers, payload) = encode(&[("kind", Bytes::from_static(b"send"))]).expect("encodes");
        assert!(payload.is_empty());
        assert_eq!(headers.get(FIELDS_HEADER).map(|v| v.as_str()), Some("kind"));
    }
}
