//! The native command decoder on arbitrary bytes, then the payload mapping of
//! whatever decoded.
//!
//! Checks: no panic; an error carries an id only when the input is an object
//! whose `id` is a valid id (0..=2^53-1), and a decoded request has exactly
//! that id; the error reply frame is valid JSON echoing id and code; channel
//! names and `ChannelName::parse` agree; a publish's `data` becomes bytes as
//! documented (JSON strings unescaped, other JSON verbatim, base64 decoded)
//! and the message push built from those bytes carries them back exactly.
#![no_main]

use duplex_fuzz::{assert_push_data, parse_server_frame};
use duplex_protocol::channel::{self, ChannelName, DEFAULT_MAX_CHANNEL_LENGTH};
use duplex_protocol::command::{self, Command, PublishParams, MAX_ID};
use duplex_protocol::payload::{bytes_from_json, json_form, Encoding, PayloadError};
use duplex_protocol::push;
use duplex_protocol::ws::MessageKind;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check_names(names: &[String]) {
    for name in names {
        let valid = channel::validate(name, DEFAULT_MAX_CHANNEL_LENGTH).is_ok();
        assert_eq!(
            valid,
            ChannelName::parse(name, DEFAULT_MAX_CHANNEL_LENGTH).is_ok()
        );
        if valid {
            assert!(!name.is_empty() && name.len() <= DEFAULT_MAX_CHANNEL_LENGTH);
            assert!(!name.chars().any(|c| c.is_control() || c.is_whitespace()));
        }
    }
}

fn check_publish(p: &PublishParams) {
    let text = p.data.get();
    let is_string = text.starts_with('"');
    let unescaped = serde_json::from_str::<String>(text).ok();
    match bytes_from_json(&p.data, p.encoding) {
        Ok((bytes, kind)) => {
            match p.encoding {
                Encoding::Json => {
                    assert_eq!(kind, MessageKind::Text);
                    let expected = if is_string {
                        unescaped.expect("decoded string").into_bytes()
                    } else {
                        text.as_bytes().to_vec()
                    };
                    assert_eq!(&bytes[..], expected, "JSON data maps to its text");
                }
                Encoding::Base64 => {
                    assert_eq!(kind, MessageKind::Binary);
                    assert!(is_string && unescaped.is_some());
                }
            }
            let frame = push::message(&p.channel, &bytes, json_form(&bytes, kind));
            let message = parse_server_frame(&frame);
            assert_eq!(message.push.as_deref(), Some("message"));
            assert_eq!(message.channel.as_deref(), Some(p.channel.as_str()));
            assert_push_data(&message, &bytes, kind);
        }
        Err(PayloadError::InvalidBase64) => assert_eq!(p.encoding, Encoding::Base64),
        Err(PayloadError::InvalidString(_)) => assert!(is_string && unescaped.is_none()),
    }
}

fuzz_target!(|data: &[u8]| {
    // An independent reading of the id; `None` when serde_json's `Value` cannot
    // hold the input (e.g. nesting deeper than its recursion limit).
    let value: Option<Value> = serde_json::from_slice(data).ok();
    let valid_id = |v: &Value| {
        v.get("id")
            .and_then(Value::as_u64)
            .filter(|id| *id <= MAX_ID)
    };
    match command::decode(data) {
        Err(e) => {
            assert!(!e.message.is_empty());
            if let Some(id) = e.id {
                assert!(id <= MAX_ID);
                if let Some(v) = &value {
                    assert_eq!(Some(id), valid_id(v), "error id differs from the input's");
                }
            }
            let frame = push::error_reply(e.id, e.code, &e.message);
            let reply = parse_server_frame(&frame);
            assert_eq!(reply.id, e.id);
            let error = reply.error.expect("an error reply has an error");
            assert_eq!(error.code, e.code.as_u32());
            assert_eq!(error.message, e.message);
        }
        Ok(request) => {
            assert!(request.id <= MAX_ID);
            if let Some(v) = &value {
                assert!(v.is_object());
                assert_eq!(Some(request.id), valid_id(v));
            }
            match request.command {
                Command::Subscribe(p) | Command::Unsubscribe(p) => check_names(&p.into_names().0),
                Command::Publish(p) => {
                    check_names(std::slice::from_ref(&p.channel));
                    check_publish(&p);
                }
                // Connect, ping (and methods added later) have nothing to map.
                _ => {}
            }
        }
    }
});
