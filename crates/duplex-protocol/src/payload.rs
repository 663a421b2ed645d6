//! How JSON values become message bytes, and message bytes become JSON.
//!
//! What travels between nodes (and through Redis) is only bytes, so that a
//! backend's plain `PUBLISH channel "data from PHP"` reaches a plain client
//! verbatim. The native protocol and the HTTP API speak JSON; these two
//! functions are the whole mapping between the worlds:
//!
//! - into bytes: a JSON string becomes its text (so `"hi"` delivers `hi`),
//!   any other JSON value becomes its JSON text (`{"a":1}` delivers `{"a":1}`);
//!   with `encoding: "base64"` a string is decoded to raw (binary) bytes.
//! - into JSON: bytes that are a JSON document are embedded as that value;
//!   other UTF-8 text becomes a JSON string; anything else (or a binary
//!   message) becomes a base64 string flagged with `"encoding":"base64"`.

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ws::MessageKind;

/// How the `data` field of a publish is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `data` is JSON: a string is delivered as its text, other values as JSON text.
    #[default]
    Json,
    /// `data` is a base64 string holding raw bytes, delivered as a binary message.
    Base64,
}

/// Why a `data` field could not become message bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// `encoding: base64` with something that is not a base64 string.
    #[error("data is not a valid base64 string")]
    InvalidBase64,
    /// A JSON string literal that serde could not unescape (lone surrogates).
    #[error("data is not a valid JSON string: {0}")]
    InvalidString(String),
}

/// Turns the `data` of a publish (API or native client) into message bytes.
pub fn bytes_from_json(
    data: &RawValue,
    encoding: Encoding,
) -> Result<(Bytes, MessageKind), PayloadError> {
    let text = data.get();
    let is_string = text.starts_with('"');
    match encoding {
        Encoding::Base64 => {
            if !is_string {
                return Err(PayloadError::InvalidBase64);
            }
            let s: std::borrow::Cow<'_, str> = serde_json::from_str(text)
                .map_err(|e| PayloadError::InvalidString(e.to_string()))?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|_| PayloadError::InvalidBase64)?;
            Ok((Bytes::from(raw), MessageKind::Binary))
        }
        Encoding::Json if is_string => {
            let s: std::borrow::Cow<'_, str> = serde_json::from_str(text)
                .map_err(|e| PayloadError::InvalidString(e.to_string()))?;
            Ok((Bytes::copy_from_slice(s.as_bytes()), MessageKind::Text))
        }
        Encoding::Json => Ok((Bytes::copy_from_slice(text.as_bytes()), MessageKind::Text)),
    }
}

/// The kind a message has when only its bytes are known (e.g. from Redis).
pub fn infer_kind(payload: &[u8]) -> MessageKind {
    if std::str::from_utf8(payload).is_ok() {
        MessageKind::Text
    } else {
        MessageKind::Binary
    }
}

/// How message bytes are shown in a JSON push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonForm {
    /// The bytes are a JSON document: embed them as they are.
    Json,
    /// The bytes are UTF-8 text but not JSON: embed as a JSON string.
    Text,
    /// Binary: embed as a base64 string, flagged with `"encoding":"base64"`.
    Base64,
}

/// Decides once per message how every native subscriber will see it.
pub fn json_form(payload: &[u8], kind: MessageKind) -> JsonForm {
    if kind == MessageKind::Binary || std::str::from_utf8(payload).is_err() {
        return JsonForm::Base64;
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
        JsonForm::Json
    } else {
        JsonForm::Text
    }
}

/// Writes `"data":...` (and the encoding flag when needed) for a push.
pub(crate) fn write_data_field(
    out: &mut impl std::io::Write,
    payload: &[u8],
    form: JsonForm,
) -> std::io::Result<()> {
    out.write_all(b"\"data\":")?;
    match form {
        JsonForm::Json => out.write_all(payload),
        JsonForm::Text => {
            // Invariant: json_form only picks Text for valid UTF-8.
            let text = String::from_utf8_lossy(payload);
            serde_json::to_writer(&mut *out, &text).map_err(std::io::Error::other)
        }
        JsonForm::Base64 => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
            serde_json::to_writer(&mut *out, &b64).map_err(std::io::Error::other)?;
            out.write_all(b",\"encoding\":\"base64\"")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn json_string_is_delivered_as_text() {
        let (b, k) = bytes_from_json(&raw(r#""data from PHP""#), Encoding::Json).unwrap();
        assert_eq!(&b[..], b"data from PHP");
        assert_eq!(k, MessageKind::Text);
        let (b, _) = bytes_from_json(&raw(r#""a\"b\u00e9""#), Encoding::Json).unwrap();
        assert_eq!(std::str::from_utf8(&b).unwrap(), "a\"bé");
    }

    #[test]
    fn other_json_is_delivered_as_json_text() {
        let (b, _) = bytes_from_json(&raw(r#"{"a":[1,2]}"#), Encoding::Json).unwrap();
        assert_eq!(&b[..], br#"{"a":[1,2]}"#);
        let (b, _) = bytes_from_json(&raw("42"), Encoding::Json).unwrap();
        assert_eq!(&b[..], b"42");
    }

    #[test]
    fn base64_is_binary() {
        let (b, k) = bytes_from_json(&raw(r#""AP8=""#), Encoding::Base64).unwrap();
        assert_eq!(&b[..], &[0u8, 255]);
        assert_eq!(k, MessageKind::Binary);
        assert_eq!(
            bytes_from_json(&raw("12"), Encoding::Base64),
            Err(PayloadError::InvalidBase64)
        );
        assert_eq!(
            bytes_from_json(&raw(r#""!!""#), Encoding::Base64),
            Err(PayloadError::InvalidBase64)
        );
    }

    #[test]
    fn forms() {
        assert_eq!(json_form(b"{\"a\":1}", MessageKind::Text), JsonForm::Json);
        assert_eq!(
            json_form(b"data from PHP", MessageKind::Text),
            JsonForm::Text
        );
        assert_eq!(
            json_form(b"{\"a\":1}", MessageKind::Binary),
            JsonForm::Base64
        );
        assert_eq!(
            json_form(&[0xff, 0xfe], MessageKind::Text),
            JsonForm::Base64
        );
        assert_eq!(json_form(b"[1] x", MessageKind::Text), JsonForm::Text);
        assert_eq!(infer_kind(&[0xff]), MessageKind::Binary);
        assert_eq!(infer_kind(b"ok"), MessageKind::Text);
    }

    #[test]
    fn data_field() {
        let mut out = Vec::new();
        write_data_field(&mut out, b"hi \"x\"", JsonForm::Text).unwrap();
        assert_eq!(out, br#""data":"hi \"x\"""#);
        out.clear();
        write_data_field(&mut out, &[1, 2], JsonForm::Base64).unwrap();
        assert_eq!(out, br#""data":"AQI=","encoding":"base64""#);
    }
}
