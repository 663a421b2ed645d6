//! Checks shared by the fuzz targets: reading the frames the server sends on
//! `/ws`, and checking that a message push carries exactly the published bytes.

use base64::Engine as _;
use duplex_protocol::payload::{json_form, JsonForm};
use duplex_protocol::ws::MessageKind;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The payload of a server frame, asserting it is one unmasked, final text frame (all `/ws` replies and pushes are).
pub fn text_frame_body(frame: &[u8]) -> &[u8] {
    assert!(frame.len() >= 2, "frame shorter than a header");
    assert_eq!(frame[0], 0x81, "server frames are single text frames");
    assert_eq!(frame[1] & 0x80, 0, "server frames are never masked");
    let (len, start) = match frame[1] & 0x7f {
        126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&frame[2..10]);
            (usize::try_from(u64::from_be_bytes(be)).unwrap(), 10)
        }
        n => (usize::from(n), 2),
    };
    assert_eq!(frame.len(), start + len, "frame length matches its header");
    &frame[start..]
}

/// Any reply or push the server sends on `/ws`; `data` stays raw because it may nest deeper than `Value` allows.
#[derive(Debug, Deserialize)]
pub struct ServerMessage<'a> {
    /// Reply id (absent on pushes and on errors for unreadable ids).
    pub id: Option<u64>,
    /// Result of a successful command.
    #[serde(default, borrow, deserialize_with = "present")]
    pub result: Option<&'a RawValue>,
    /// Error of a failed command.
    pub error: Option<ErrorBody>,
    /// Push kind (`message`, `disconnect`).
    pub push: Option<String>,
    /// Channel of a message push.
    pub channel: Option<String>,
    /// Data of a message push (`null` is data too, not an absent field).
    #[serde(default, borrow, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
    /// `base64` when `data` is base64.
    pub encoding: Option<String>,
}

/// Reads a field that is present as `Some`, even when it is `null` (serde maps `null` to `None` otherwise).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// The `error` object of an error reply.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    /// Numeric error code.
    pub code: u32,
    /// Explanation for people.
    pub message: String,
}

/// Parses a server frame, asserting it holds a JSON object of a known shape.
pub fn parse_server_frame(frame: &[u8]) -> ServerMessage<'_> {
    let body = text_frame_body(frame);
    match serde_json::from_slice(body) {
        Ok(message) => message,
        Err(e) => panic!(
            "server sent invalid JSON ({e}): {}",
            String::from_utf8_lossy(body)
        ),
    }
}

/// Asserts that a message push's `data` (and `encoding`) carries exactly `payload` of `kind`.
pub fn assert_push_data(push: &ServerMessage<'_>, payload: &[u8], kind: MessageKind) {
    let data = push.data.expect("a message push has data").get();
    match json_form(payload, kind) {
        JsonForm::Json => {
            assert_eq!(
                data.as_bytes(),
                payload.trim_ascii(),
                "JSON data embedded as is"
            );
            assert_eq!(push.encoding, None);
        }
        JsonForm::Text => {
            let text: String = serde_json::from_str(data).expect("text data is a JSON string");
            assert_eq!(text.as_bytes(), payload, "text data round-trips");
            assert_eq!(push.encoding, None);
        }
        JsonForm::Base64 => {
            let b64: String = serde_json::from_str(data).expect("base64 data is a JSON string");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("valid base64");
            assert_eq!(raw, payload, "binary data round-trips");
            assert_eq!(push.encoding.as_deref(), Some("base64"));
        }
    }
}
