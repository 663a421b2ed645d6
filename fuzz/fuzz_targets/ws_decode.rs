//! The WebSocket frame decoder on arbitrary bytes, fed whole and in arbitrary
//! chunks, with small limits so the limit paths are reached.
//!
//! Input: `[size_lo, size_hi, fragments, chunking, wire...]`.
//!
//! Checks: no panic; every message is within `max_message_size` and text is
//! valid UTF-8; control payloads stay within 125 bytes; close codes are ones
//! a peer may send; errors map to 1002/1007/1009; `bytes_needed` is at least
//! 1 after `Ok(None)` and no event appears before that many bytes arrived;
//! and chunking never changes the outcome (same events, same error, same
//! leftover). After an error the decoder is not fed again, as its contract asks.
#![no_main]

use bytes::BytesMut;
use duplex_protocol::ws::{DecodeError, Decoder, DecoderLimits, Event, MessageKind};
use libfuzzer_sys::fuzz_target;

/// Everything one run produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<Event>,
    error: Option<DecodeError>,
    /// Bytes left undecoded and whether a fragmented message was open (only compared without error).
    rest: Option<(usize, bool)>,
}

fn check_event(limits: &DecoderLimits, event: &Event) {
    match event {
        Event::Message { kind, payload } => {
            assert!(
                payload.len() <= limits.max_message_size,
                "message of {} bytes over the limit {}",
                payload.len(),
                limits.max_message_size
            );
            if *kind == MessageKind::Text {
                assert!(
                    std::str::from_utf8(payload).is_ok(),
                    "text message is not UTF-8"
                );
            }
        }
        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125, "control payload over 125"),
        Event::Close { code, reason } => {
            match code {
                Some(c) => assert!(
                    matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999),
                    "close code {c} not allowed from a peer"
                ),
                None => assert!(reason.is_empty(), "reason without a code"),
            }
            assert!(
                reason.len() <= 123,
                "close reason longer than a control frame allows"
            );
        }
    }
}

fn check_error(e: &DecodeError) {
    assert!(matches!(e.close_code(), 1002 | 1007 | 1009), "{e:?}");
    assert!(!e.to_string().is_empty());
}

/// Decodes `wire` fed in the given chunk sizes (cycled), checking every step.
fn run(limits: DecoderLimits, wire: &[u8], chunks: &mut dyn FnMut() -> usize) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut fed = 0;
    // Bytes still to come before an event may appear: `bytes_needed` after the last `Ok(None)`.
    let mut quiet_for = 0usize;
    while fed < wire.len() {
        let n = chunks().clamp(1, wire.len() - fed);
        buf.extend_from_slice(&wire[fed..fed + n]);
        fed += n;
        quiet_for = quiet_for.saturating_sub(n);
        loop {
            let before = buf.len();
            let progress_promised = decoder.bytes_needed(&buf) == 0;
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => {
                    assert_eq!(quiet_for, 0, "event before bytes_needed bytes arrived");
                    check_event(&limits, &event);
                    events.push(event);
                }
                Ok(None) => {
                    assert!(
                        !progress_promised || buf.len() < before,
                        "bytes_needed said 0 but decode made no progress"
                    );
                    quiet_for = decoder.bytes_needed(&buf);
                    assert!(quiet_for >= 1, "bytes_needed is 0 after Ok(None)");
                    break;
                }
                Err(e) => {
                    check_error(&e);
                    return Outcome {
                        events,
                        error: Some(e),
                        rest: None,
                    };
                }
            }
        }
    }
    Outcome {
        events,
        error: None,
        rest: Some((buf.len(), decoder.in_message())),
    }
}

fuzz_target!(|data: &[u8]| {
    let [lo, hi, fragments, chunking, wire @ ..] = data else {
        return;
    };
    let limits = DecoderLimits {
        max_message_size: usize::from(u16::from_le_bytes([*lo, *hi])) % 1024,
        max_fragments: usize::from(*fragments % 8),
    };
    let whole = run(limits, wire, &mut || usize::MAX);
    // A small xorshift stream of chunk sizes from 1 to `max_chunk`.
    let max_chunk = [1usize, 2, 3, 5, 8, 17, 64, 200][usize::from(chunking & 7)];
    let mut state = u32::from(*chunking) | 0x100;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + state as usize % max_chunk
    };
    let chunked = run(limits, wire, &mut next);
    assert_eq!(whole, chunked, "chunking changed the outcome");
});
