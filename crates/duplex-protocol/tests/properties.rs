//! Property tests of the pure protocol parts: whatever the input, the codec
//! round-trips what it should and never panics.

use bytes::BytesMut;
use duplex_protocol::channel;
use duplex_protocol::command;
use duplex_protocol::ws::{Decoder, DecoderLimits, Event, MessageKind};
use proptest::prelude::*;

/// A masked client frame.
fn client_frame(opcode: u8, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

proptest! {
    /// Any binary message, cut into any fragments and fed in any chunks,
    /// comes out whole and unchanged.
    #[test]
    fn fragmented_messages_round_trip(
        payload in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        chunk in 1usize..700,
        key in any::<[u8; 4]>(),
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut bounds = vec![0];
        bounds.extend(points.into_iter().filter(|&p| p > 0 && p < payload.len()));
        bounds.push(payload.len());
        let mut wire = Vec::new();
        for (i, w) in bounds.windows(2).enumerate() {
            let opcode = if i == 0 { 2 } else { 0 };
            wire.extend(client_frame(opcode, i + 2 == bounds.len(), &payload[w[0]..w[1]], key));
        }
        let mut decoder = Decoder::new(DecoderLimits { max_message_size: 4096, max_fragments: 16 });
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(event) = decoder.decode(&mut buf).expect("valid frames") {
                events.push(event);
            }
        }
        prop_assert_eq!(events, vec![Event::Message { kind: MessageKind::Binary, payload: payload.into() }]);
    }

    /// Arbitrary bytes never panic the decoder; an error carries a real close code.
    #[test]
    fn garbage_never_panics_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut decoder = Decoder::new(DecoderLimits::default());
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    prop_assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    break;
                }
            }
        }
    }

    /// Arbitrary text never panics the command decoder; errors carry an id
    /// only when one was readable.
    #[test]
    fn command_decoding_never_panics(text in ".{0,200}") {
        if let Err(e) = command::decode(text.as_bytes()) {
            prop_assert!(!e.message.is_empty());
            if let Some(id) = e.id {
                prop_assert!(id <= command::MAX_ID);
            }
        }
    }

    /// The channel rules are exactly: 1..=max bytes, no control, whitespace
    /// or format (`Cf`) character, and `#` only as the first character or
    /// anywhere in a name starting with `#`.
    #[test]
    fn channel_rules_match_the_model(
        name in "\\PC{0,40}|[ \t\n\u{0}-\u{1f}a-z:#\u{200b}-\u{200f}\u{202a}-\u{202e}\u{ad}]{0,20}|#[a-z:#]{0,10}",
        max in 1usize..50,
    ) {
        let model = !name.is_empty()
            && name.len() <= max
            && !name.chars().any(|c| c.is_control() || c.is_whitespace() || channel::is_format_char(c))
            && (name.starts_with('#') || !name.contains('#'));
        prop_assert_eq!(channel::validate(&name, max).is_ok(), model);
    }
}
