//! Unit tests of the frame decoder: every rule, positive and negative.
use super::*;
use crate::ws::encode::{encode_close, encode_frame, OpCode};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Builds a client frame from its first header byte, with an optional masking key.
fn raw_frame(b0: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(if fin { 0x80 } else { 0 } | opcode, Some(KEY), payload)
}

/// Turns a server frame (as produced by `encode`) into a masked client frame.
fn mask_server_frame(server: &[u8], key: [u8; 4]) -> Vec<u8> {
    let hlen = match server[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mut out = server[..hlen].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&key);
    out.extend(
        server[hlen..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4]),
    );
    out
}

/// Decodes everything in `bytes` at once; stops at the first error.
fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let mut events = Vec::new();
    while let Some(ev) = dec.decode(&mut buf)? {
        events.push(ev);
    }
    Ok(events)
}

fn decoder() -> Decoder {
    Decoder::new(DecoderLimits::default())
}

fn one(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut events = decode_all(&mut decoder(), bytes)?;
    assert_eq!(events.len(), 1, "expected exactly one event");
    Ok(events.remove(0))
}

fn text(s: &str) -> Event {
    Event::Message {
        kind: MessageKind::Text,
        payload: Bytes::copy_from_slice(s.as_bytes()),
    }
}

fn binary(b: &[u8]) -> Event {
    Event::Message {
        kind: MessageKind::Binary,
        payload: Bytes::copy_from_slice(b),
    }
}

fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

// ---- basic frames ----

#[test]
fn rfc_example_masked_hello() {
    // RFC 6455 5.7: a single-frame masked text message "Hello".
    let bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(one(&bytes), Ok(text("Hello")));
}

#[test]
fn single_frames_of_each_kind() {
    assert_eq!(one(&frame(true, OP_TEXT, b"hi")), Ok(text("hi")));
    assert_eq!(one(&frame(true, OP_TEXT, b"")), Ok(text("")));
    assert_eq!(
        one(&frame(true, OP_BINARY, &[0, 255, 1])),
        Ok(binary(&[0, 255, 1]))
    );
    assert_eq!(
        one(&frame(true, OP_PING, b"p")),
        Ok(Event::Ping(Bytes::from_static(b"p")))
    );
    assert_eq!(
        one(&frame(true, OP_PONG, b"")),
        Ok(Event::Pong(Bytes::new()))
    );
}

#[test]
fn binary_may_hold_invalid_utf8() {
    assert_eq!(
        one(&frame(true, OP_BINARY, &[0xff, 0xfe])),
        Ok(binary(&[0xff, 0xfe]))
    );
}

#[test]
fn empty_buffer_and_partial_header_return_none() {
    let mut dec = decoder();
    let mut buf = BytesMut::new();
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(dec.bytes_needed(&buf), 2);
    let f = frame(true, OP_TEXT, b"abc");
    let mut buf = BytesMut::from(&f[..5]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 5, "partial bytes stay in the buffer");
    assert_eq!(dec.bytes_needed(&buf), f.len() - 5);
}

#[test]
fn unfragmented_payload_is_not_copied() {
    let f = frame(true, OP_BINARY, &[9u8; 300]);
    let mut buf = BytesMut::from(&f[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Ok(Some(Event::Message { payload, .. })) = decoder().decode(&mut buf) else {
        panic!("expected a message");
    };
    assert!(range.contains(&(payload.as_ptr() as usize)));
    assert_eq!(&payload[..], &[9u8; 300][..]);
    assert!(buf.is_empty());
}

#[test]
fn several_frames_in_one_buffer_in_order() {
    let bytes = cat(&[
        frame(true, OP_TEXT, b"one"),
        frame(true, OP_PING, b"x"),
        frame(true, OP_BINARY, b"two"),
        frame(true, OP_PONG, b"y"),
        frame(true, OP_CLOSE, &[0x03, 0xE8]),
    ]);
    let mut dec = decoder();
    let mut buf = BytesMut::from(&bytes[..]);
    // Append a partial frame: it must stay in the buffer.
    let tail = frame(true, OP_TEXT, b"partial");
    buf.extend_from_slice(&tail[..4]);
    let mut events = Vec::new();
    while let Some(ev) = dec.decode(&mut buf).expect("valid") {
        events.push(ev);
    }
    assert_eq!(
        events,
        vec![
            text("one"),
            Event::Ping(Bytes::from_static(b"x")),
            binary(b"two"),
            Event::Pong(Bytes::from_static(b"y")),
            Event::Close {
                code: Some(1000),
                reason: String::new()
            },
        ]
    );
    assert_eq!(&buf[..], &tail[..4]);
    buf.extend_from_slice(&tail[4..]);
    assert_eq!(dec.decode(&mut buf), Ok(Some(text("partial"))));
}

// ---- header violations ----

#[test]
fn rsv_bits_rejected() {
    for rsv in [0x40u8, 0x20, 0x10, 0x70] {
        let f = raw_frame(0x80 | rsv | OP_TEXT, Some(KEY), b"a");
        let err = one(&f).expect_err("rsv");
        assert_eq!(err, DecodeError::ReservedBits);
        assert_eq!(err.close_code(), 1002);
        // Reported from the first byte alone.
        let mut buf = BytesMut::from(&f[..1]);
        assert_eq!(decoder().decode(&mut buf), Err(DecodeError::ReservedBits));
    }
}

#[test]
fn reserved_opcodes_rejected() {
    for op in (3u8..=7).chain(0xB..=0xF) {
        let err = one(&frame(true, op, b"")).expect_err("reserved opcode");
        assert_eq!(err, DecodeError::ReservedOpcode(op));
        assert_eq!(err.close_code(), 1002);
    }
}

#[test]
fn unmasked_frames_rejected() {
    for op in [OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE] {
        let f = raw_frame(0x80 | op, None, b"");
        let err = one(&f).expect_err("unmasked");
        assert_eq!(err, DecodeError::UnmaskedFrame);
        assert_eq!(err.close_code(), 1002);
    }
    // Also detected from the first two bytes alone, before the payload.
    let f = raw_frame(0x82, None, &[0u8; 1000]);
    let mut buf = BytesMut::from(&f[..2]);
    assert_eq!(decoder().decode(&mut buf), Err(DecodeError::UnmaskedFrame));
    // And an unmasked continuation.
    let bytes = cat(&[frame(false, OP_TEXT, b"a"), raw_frame(0x80, None, b"b")]);
    assert_eq!(
        decode_all(&mut decoder(), &bytes),
        Err(DecodeError::UnmaskedFrame)
    );
}

#[test]
fn control_frame_limits() {
    for op in [OP_PING, OP_PONG] {
        assert!(one(&frame(true, op, &[1u8; 125])).is_ok());
        let err = one(&frame(true, op, &[1u8; 126])).expect_err("too large");
        assert_eq!(err, DecodeError::ControlFrameTooLarge);
        assert_eq!(err.close_code(), 1002);
    }
    let mut close = vec![0x03, 0xE8];
    close.extend_from_slice(&[b'r'; 123]);
    assert!(one(&frame(true, OP_CLOSE, &close)).is_ok());
    close.push(b'r');
    assert_eq!(
        one(&frame(true, OP_CLOSE, &close)),
        Err(DecodeError::ControlFrameTooLarge)
    );
    // 126 with a 16-bit length <= 125 is still an extended length: rejected.
    let mut f = vec![0x89, 0x80 | 126, 0, 5];
    f.extend_from_slice(&KEY);
    f.extend_from_slice(&[0; 5]);
    assert_eq!(one(&f), Err(DecodeError::ControlFrameTooLarge));
}

#[test]
fn fragmented_control_frames_rejected() {
    for op in [OP_PING, OP_PONG, OP_CLOSE] {
        let err = one(&frame(false, op, b"")).expect_err("fragmented control");
        assert_eq!(err, DecodeError::FragmentedControlFrame);
        assert_eq!(err.close_code(), 1002);
    }
}

#[test]
fn continuation_without_message_rejected() {
    for fin in [true, false] {
        let err = one(&frame(fin, OP_CONTINUATION, b"x")).expect_err("orphan");
        assert_eq!(err, DecodeError::UnexpectedContinuation);
        assert_eq!(err.close_code(), 1002);
    }
    // After a message completed, a continuation is again unexpected.
    let bytes = cat(&[
        frame(false, OP_TEXT, b"a"),
        frame(true, OP_CONTINUATION, b"b"),
        frame(true, OP_CONTINUATION, b"c"),
    ]);
    let mut dec = decoder();
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(dec.decode(&mut buf), Ok(Some(text("ab"))));
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::UnexpectedContinuation)
    );
}

#[test]
fn new_data_frame_during_message_rejected() {
    for (op, fin) in [
        (OP_TEXT, true),
        (OP_BINARY, true),
        (OP_TEXT, false),
        (OP_BINARY, false),
    ] {
        let bytes = cat(&[frame(false, OP_BINARY, b"a"), frame(fin, op, b"b")]);
        let err = decode_all(&mut decoder(), &bytes).expect_err("interleaved");
        assert_eq!(err, DecodeError::MessageInProgress);
        assert_eq!(err.close_code(), 1002);
    }
}

#[test]
fn length_msb_rejected() {
    let mut f = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
    f.extend_from_slice(&KEY);
    let mut buf = BytesMut::from(&f[..]);
    let err = decoder().decode(&mut buf).expect_err("msb");
    assert_eq!(err, DecodeError::InvalidLength);
    assert_eq!(err.close_code(), 1002);
    // Largest legal 64-bit value is rejected by the size limit instead.
    let mut f = vec![
        0x82,
        0x80 | 127,
        0x7F,
        0xFF,
        0xFF,
        0xFF,
        0xFF,
        0xFF,
        0xFF,
        0xFF,
    ];
    f.extend_from_slice(&KEY);
    let mut buf = BytesMut::from(&f[..]);
    assert!(matches!(
        decoder().decode(&mut buf),
        Err(DecodeError::MessageTooLarge { .. })
    ));
}

#[test]
fn non_minimal_length_encoding_accepted() {
    // 127 + 64-bit length 3 for a data frame (the RFC asks senders for minimal encoding; we are lenient).
    let mut f = vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 3];
    f.extend_from_slice(&KEY);
    f.extend(b"abc".iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    assert_eq!(one(&f), Ok(text("abc")));
}

// ---- size limits ----

#[test]
fn single_frame_size_limit_is_inclusive() {
    let max = 64 * 1024;
    for op in [OP_TEXT, OP_BINARY] {
        let ok = one(&frame(true, op, &vec![b'a'; max])).expect("exactly the limit");
        let Event::Message { payload, .. } = ok else {
            panic!("expected a message")
        };
        assert_eq!(payload.len(), max);
        let err = one(&frame(true, op, &vec![b'a'; max + 1])).expect_err("over");
        assert_one_over(&err, max);
    }
}

#[test]
fn size_limit_checked_from_header_before_payload() {
    let max = 64 * 1024;
    let f = frame(true, OP_BINARY, &vec![0; max + 1]);
    // Only the header (2 + 8 + 4 bytes) has arrived.
    let mut buf = BytesMut::from(&f[..14]);
    assert!(matches!(
        decoder().decode(&mut buf),
        Err(DecodeError::MessageTooLarge { .. })
    ));
    // Even before the masking key.
    let mut buf = BytesMut::from(&f[..10]);
    assert!(matches!(
        decoder().decode(&mut buf),
        Err(DecodeError::MessageTooLarge { .. })
    ));
    // Continuation: the running total is checked at the header too.
    let mut dec = decoder();
    let first = frame(false, OP_BINARY, &vec![0; max - 10]);
    let second = frame(true, OP_CONTINUATION, &[0; 11]);
    let mut buf = BytesMut::from(&first[..]);
    buf.extend_from_slice(&second[..6]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::MessageTooLarge {
            size: max as u64 + 1,
            limit: max
        })
    );
}

#[test]
fn fragmented_size_limit_is_inclusive() {
    let max = 64 * 1024;
    let parts = [max / 4, max / 4, max / 4];
    let last_ok = max - parts.iter().sum::<usize>();
    for (last, expect_ok) in [(last_ok, true), (last_ok + 1, false)] {
        let mut frames = vec![frame(false, OP_TEXT, &vec![b'x'; parts[0]])];
        frames.push(frame(false, OP_CONTINUATION, &vec![b'x'; parts[1]]));
        frames.push(frame(false, OP_CONTINUATION, &vec![b'x'; parts[2]]));
        frames.push(frame(true, OP_CONTINUATION, &vec![b'x'; last]));
        let res = decode_all(&mut decoder(), &cat(&frames));
        if expect_ok {
            let events = res.expect("exactly the limit");
            assert_eq!(events.len(), 1);
            let Event::Message { kind, payload } = &events[0] else {
                panic!("expected a message")
            };
            assert_eq!(*kind, MessageKind::Text);
            assert_eq!(payload.len(), max);
        } else {
            let err = res.expect_err("over the limit");
            assert_one_over(&err, max);
        }
    }
}

#[test]
fn fragment_buffer_capacity_never_exceeds_limit() {
    let limits = DecoderLimits {
        max_message_size: 1000,
        max_fragments: 1024,
    };
    let mut dec = Decoder::new(limits);
    let mut buf = BytesMut::from(&frame(false, OP_BINARY, &[1; 600])[..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    buf.extend_from_slice(&frame(false, OP_CONTINUATION, &[2; 300]));
    assert_eq!(dec.decode(&mut buf), Ok(None));
    let cap = dec.partial.as_ref().map(|p| p.data.capacity());
    assert!(cap.is_some_and(|c| (900..=1000).contains(&c)), "{cap:?}");
    buf.extend_from_slice(&frame(true, OP_CONTINUATION, &[3; 100]));
    let Ok(Some(Event::Message { payload, .. })) = dec.decode(&mut buf) else {
        panic!("expected a message")
    };
    assert_eq!(payload.len(), 1000);
}

#[test]
fn custom_small_limits() {
    let limits = DecoderLimits {
        max_message_size: 10,
        max_fragments: 2,
    };
    let mut dec = Decoder::new(limits);
    assert_eq!(
        decode_all(&mut dec, &frame(true, OP_BINARY, &[0; 10])),
        Ok(vec![binary(&[0; 10])])
    );
    assert!(matches!(
        decode_all(&mut dec, &frame(true, OP_BINARY, &[0; 11])),
        Err(DecodeError::MessageTooLarge { .. })
    ));
}

#[test]
fn max_fragments_inclusive() {
    let limits = DecoderLimits {
        max_message_size: 64 * 1024,
        max_fragments: 5,
    };
    // Exactly 5 frames: passes.
    let mut frames = vec![frame(false, OP_TEXT, b"a")];
    for _ in 0..3 {
        frames.push(frame(false, OP_CONTINUATION, b"b"));
    }
    frames.push(frame(true, OP_CONTINUATION, b"c"));
    assert_eq!(
        decode_all(&mut Decoder::new(limits), &cat(&frames)),
        Ok(vec![text("abbbc")])
    );
    // 6 frames: fails at the 6th header.
    let mut frames = vec![frame(false, OP_TEXT, b"a")];
    for _ in 0..4 {
        frames.push(frame(false, OP_CONTINUATION, b"b"));
    }
    let mut bytes = cat(&frames);
    bytes.push(0x80); // first byte of the 6th frame (FIN continuation)
    let err = decode_all(&mut Decoder::new(limits), &bytes).expect_err("too many");
    assert_eq!(err, DecodeError::TooManyFragments { limit: 5 });
    assert_eq!(err.close_code(), 1009);
    assert!(err.to_string().contains("too many fragments"));
    // Default limit: 1024 frames pass, 1025 fail.
    let build = |n: usize| {
        let mut frames = vec![frame(false, OP_BINARY, b"")];
        for i in 1..n {
            frames.push(frame(i == n - 1, OP_CONTINUATION, b"z"));
        }
        cat(&frames)
    };
    let ok = decode_all(&mut decoder(), &build(1024)).expect("1024 fragments");
    assert_eq!(ok, vec![binary(&[b'z'; 1023])]);
    assert_eq!(
        decode_all(&mut decoder(), &build(1025)),
        Err(DecodeError::TooManyFragments { limit: 1024 })
    );
}

// ---- UTF-8 ----

#[test]
fn invalid_utf8_single_frame() {
    for bad in [
        &[0xffu8][..],
        &[0xc3, 0x28],
        &[0xf0, 0x9f, 0x98],
        &[0xed, 0xa0, 0x80],
    ] {
        let err = one(&frame(true, OP_TEXT, bad)).expect_err("bad utf8");
        assert_eq!(err, DecodeError::InvalidUtf8);
        assert_eq!(err.close_code(), 1007);
    }
}

#[test]
fn utf8_split_across_fragments() {
    let emoji = "😀".as_bytes();
    assert_eq!(emoji.len(), 4);
    for split in 1..4 {
        let bytes = cat(&[
            frame(false, OP_TEXT, &[b"a", &emoji[..split]].concat()),
            frame(true, OP_CONTINUATION, &[&emoji[split..], b"b"].concat()),
        ]);
        assert_eq!(
            decode_all(&mut decoder(), &bytes),
            Ok(vec![text("a😀b")]),
            "split {split}"
        );
    }
    // One byte per fragment.
    let mut frames = vec![frame(false, OP_TEXT, &emoji[..1])];
    frames.push(frame(false, OP_CONTINUATION, &emoji[1..2]));
    frames.push(frame(false, OP_CONTINUATION, &emoji[2..3]));
    frames.push(frame(true, OP_CONTINUATION, &emoji[3..]));
    assert_eq!(
        decode_all(&mut decoder(), &cat(&frames)),
        Ok(vec![text("😀")])
    );
}

#[test]
fn invalid_utf8_in_first_fragment_fails_before_fin() {
    let mut dec = decoder();
    let mut buf = BytesMut::from(&frame(false, OP_TEXT, &[b'o', b'k', 0xff])[..]);
    let err = dec.decode(&mut buf).expect_err("fails immediately");
    assert_eq!(err, DecodeError::InvalidUtf8);
    // Invalid in a middle fragment, also before FIN.
    let bytes = cat(&[
        frame(false, OP_TEXT, b"ok"),
        frame(false, OP_CONTINUATION, &[0xc3, 0x28]),
    ]);
    assert_eq!(
        decode_all(&mut decoder(), &bytes),
        Err(DecodeError::InvalidUtf8)
    );
    // A prefix that can never complete (0xF0 0x80) fails immediately too.
    let bytes = frame(false, OP_TEXT, &[0xf0, 0x80]);
    assert_eq!(
        decode_all(&mut decoder(), &bytes),
        Err(DecodeError::InvalidUtf8)
    );
}

#[test]
fn incomplete_utf8_at_fin_fails() {
    let emoji = "😀".as_bytes();
    let bytes = cat(&[
        frame(false, OP_TEXT, &emoji[..2]),
        frame(true, OP_CONTINUATION, &emoji[2..3]),
    ]);
    let err = decode_all(&mut decoder(), &bytes).expect_err("incomplete");
    assert_eq!(err, DecodeError::InvalidUtf8);
    assert_eq!(err.close_code(), 1007);
    // Completed by a wrong continuation byte.
    let bytes = cat(&[
        frame(false, OP_TEXT, &emoji[..2]),
        frame(true, OP_CONTINUATION, b"ab"),
    ]);
    assert_eq!(
        decode_all(&mut decoder(), &bytes),
        Err(DecodeError::InvalidUtf8)
    );
}

#[test]
fn binary_fragments_skip_utf8() {
    let bytes = cat(&[
        frame(false, OP_BINARY, &[0xff]),
        frame(true, OP_CONTINUATION, &[0xf0]),
    ]);
    assert_eq!(
        decode_all(&mut decoder(), &bytes),
        Ok(vec![binary(&[0xff, 0xf0])])
    );
}

// ---- close frames ----

#[test]
fn close_frames() {
    assert_eq!(
        one(&frame(true, OP_CLOSE, b"")),
        Ok(Event::Close {
            code: None,
            reason: String::new()
        })
    );
    assert_eq!(
        one(&frame(true, OP_CLOSE, &[0x03, 0xE9, b'b', b'y', b'e'])),
        Ok(Event::Close {
            code: Some(1001),
            reason: "bye".into()
        })
    );
    let err = one(&frame(true, OP_CLOSE, &[0x03])).expect_err("1 byte");
    assert_eq!(err, DecodeError::CloseFrameTooShort);
    assert_eq!(err.close_code(), 1002);
    let err = one(&frame(true, OP_CLOSE, &[0x03, 0xE8, 0xff])).expect_err("bad reason");
    assert_eq!(err, DecodeError::InvalidCloseReason);
    assert_eq!(err.close_code(), 1007);
    // Our own encoder's output decodes back.
    let own = mask_server_frame(&encode_close(4000, "née"), KEY);
    assert_eq!(
        one(&own),
        Ok(Event::Close {
            code: Some(4000),
            reason: "née".into()
        })
    );
}

#[test]
fn close_codes() {
    let valid = [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ];
    let invalid = [
        0u16, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    for code in valid {
        assert_eq!(
            one(&frame(true, OP_CLOSE, &code.to_be_bytes())),
            Ok(Event::Close {
                code: Some(code),
                reason: String::new()
            }),
            "code {code}"
        );
    }
    for code in invalid {
        let err = one(&frame(true, OP_CLOSE, &code.to_be_bytes())).expect_err("invalid");
        assert_eq!(err, DecodeError::InvalidCloseCode(code), "code {code}");
        assert_eq!(err.close_code(), 1002);
    }
}

// ---- interleaving ----

#[test]
fn control_frames_between_fragments() {
    let bytes = cat(&[
        frame(false, OP_TEXT, b"hel"),
        frame(true, OP_PING, b"p1"),
        frame(false, OP_CONTINUATION, b"lo "),
        frame(true, OP_PONG, b"p2"),
        frame(true, OP_CONTINUATION, b"world"),
    ]);
    let mut dec = decoder();
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Event::Ping(Bytes::from_static(b"p1"))))
    );
    assert!(dec.in_message());
    assert_eq!(
        dec.decode(&mut buf),
        Ok(Some(Event::Pong(Bytes::from_static(b"p2"))))
    );
    assert!(dec.in_message());
    assert_eq!(dec.decode(&mut buf), Ok(Some(text("hello world"))));
    assert!(!dec.in_message());
    assert_eq!(dec.decode(&mut buf), Ok(None));
}

#[test]
fn close_between_fragments_is_reported() {
    let bytes = cat(&[
        frame(false, OP_BINARY, b"a"),
        frame(true, OP_CLOSE, &1000u16.to_be_bytes()),
    ]);
    let mut dec = decoder();
    assert_eq!(
        decode_all(&mut dec, &bytes),
        Ok(vec![Event::Close {
            code: Some(1000),
            reason: String::new()
        }])
    );
    assert!(dec.in_message());
}

#[test]
fn in_message_tracks_partial() {
    let mut dec = decoder();
    assert!(!dec.in_message());
    let mut buf = BytesMut::from(&frame(false, OP_BINARY, b"a")[..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert!(dec.in_message());
    buf.extend_from_slice(&frame(true, OP_CONTINUATION, b"b"));
    assert_eq!(dec.decode(&mut buf), Ok(Some(binary(b"ab"))));
    assert!(!dec.in_message());
}

#[test]
fn idle_decoder_is_small() {
    assert!(std::mem::size_of::<Decoder>() <= 96);
}

// ---- incremental delivery ----

fn sample_stream() -> Vec<u8> {
    cat(&[
        frame(true, OP_TEXT, b"first"),
        frame(false, OP_TEXT, "é😀".as_bytes().split_at(3).0),
        frame(true, OP_PING, b"ping"),
        frame(false, OP_CONTINUATION, &"é😀".as_bytes()[3..5]),
        frame(true, OP_CONTINUATION, &"é😀".as_bytes()[5..]),
        frame(true, OP_BINARY, &[7u8; 200]),
        frame(true, OP_BINARY, &[8u8; 70_000][..65_536]),
        frame(true, OP_PONG, b""),
        frame(true, OP_CLOSE, &[0x0F, 0xA0, b'x']),
    ])
}

#[test]
fn one_byte_at_a_time_matches_all_at_once() {
    let bytes = sample_stream();
    let all = decode_all(&mut decoder(), &bytes).expect("valid stream");
    assert_eq!(all.len(), 7);
    assert_eq!(all[1], Event::Ping(Bytes::from_static(b"ping")));
    assert_eq!(all[2], text("é😀"));

    let mut dec = decoder();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for &b in &bytes {
        buf.extend_from_slice(&[b]);
        while let Some(ev) = dec.decode(&mut buf).expect("valid stream") {
            events.push(ev);
        }
        assert!(dec.bytes_needed(&buf) >= 1);
    }
    assert_eq!(events, all);
    assert!(buf.is_empty());
}

#[test]
fn bytes_needed_never_overshoots() {
    // Feeding exactly `bytes_needed` each time must hit every frame boundary exactly.
    let bytes = sample_stream();
    let all = decode_all(&mut decoder(), &bytes).expect("valid stream");
    let mut dec = decoder();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut pos = 0;
    let mut reads = 0;
    while pos < bytes.len() {
        let n = dec.bytes_needed(&buf);
        assert!(n >= 1);
        assert!(pos + n <= bytes.len(), "overshoot at {pos}");
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        reads += 1;
        while let Some(ev) = dec.decode(&mut buf).expect("valid") {
            events.push(ev);
        }
    }
    assert_eq!(events, all);
    // Header (<= 2 steps for length, 1 for the rest) per frame, not one per byte.
    assert!(reads <= 9 * 3, "reads {reads}");
}

#[test]
fn bytes_needed_values() {
    let dec = decoder();
    let f = frame(true, OP_BINARY, &[0; 300]); // 2 + 2 + 4 + 300
    assert_eq!(dec.bytes_needed(&BytesMut::from(&f[..1])), 1);
    assert_eq!(dec.bytes_needed(&BytesMut::from(&f[..2])), 6);
    assert_eq!(dec.bytes_needed(&BytesMut::from(&f[..4])), 304);
    assert_eq!(dec.bytes_needed(&BytesMut::from(&f[..100])), 208);
    assert_eq!(dec.bytes_needed(&BytesMut::from(&f[..])), 0);
    let f = frame(true, OP_BINARY, &[0; 70_000]); // 2 + 8 + 4
    let big = Decoder::new(DecoderLimits {
        max_message_size: 1 << 20,
        max_fragments: 1,
    });
    assert_eq!(big.bytes_needed(&BytesMut::from(&f[..2])), 12);
    assert_eq!(big.bytes_needed(&BytesMut::from(&f[..10])), 70_004);
    // Over the default limit: decode would fail now, so nothing more is needed.
    assert_eq!(dec.bytes_needed(&BytesMut::from(&f[..10])), 0);
}

// ---- encode/decode round trips ----

#[test]
fn round_trip_length_boundaries() {
    let limits = DecoderLimits {
        max_message_size: 1 << 20,
        max_fragments: 16,
    };
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 65537] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let server = encode_frame(OpCode::Binary, &payload);
        let client = mask_server_frame(&server, [1, 2, 3, 4]);
        let mut dec = Decoder::new(limits);
        assert_eq!(
            decode_all(&mut dec, &client),
            Ok(vec![binary(&payload)]),
            "len {len}"
        );
    }
    for len in [0usize, 125] {
        let payload = vec![b'p'; len];
        for (op, ev) in [
            (OpCode::Ping, Event::Ping(Bytes::from(payload.clone()))),
            (OpCode::Pong, Event::Pong(Bytes::from(payload.clone()))),
        ] {
            let client = mask_server_frame(&encode_frame(op, &payload), KEY);
            assert_eq!(one(&client), Ok(ev));
        }
    }
}

#[test]
fn unmask_matches_naive() {
    for len in 0..40 {
        let orig: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
        let mut fast = orig.clone();
        unmask(&mut fast, KEY);
        let naive: Vec<u8> = orig
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ KEY[i % 4])
            .collect();
        assert_eq!(fast, naive, "len {len}");
    }
}

// ---- randomized round trip ----

/// Deterministic xorshift64 generator (no dependency needed).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn randomized_round_trip() {
    const CHARS: &[char] = &['a', 'Z', ' ', '0', 'é', 'ж', '€', '中', '😀', '𝄞'];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _round in 0..200 {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for _msg in 0..rng.below(8) + 1 {
            let key = (rng.next() as u32).to_ne_bytes();
            // Payload: mostly small, sometimes crossing the 16-bit length boundary.
            let len_hint = match rng.below(10) {
                0 => 60_000 + rng.below(5_000),
                1..=3 => 126 + rng.below(400),
                _ => rng.below(126),
            };
            let (kind, payload): (MessageKind, Vec<u8>) = if rng.below(2) == 0 {
                let mut s = String::new();
                while s.len() < len_hint {
                    s.push(CHARS[rng.below(CHARS.len())]);
                }
                (MessageKind::Text, s.into_bytes())
            } else {
                let b = (0..len_hint).map(|_| rng.next() as u8).collect();
                (MessageKind::Binary, b)
            };
            if rng.below(5) == 0 {
                let ping: Vec<u8> = (0..rng.below(126)).map(|_| rng.next() as u8).collect();
                stream.extend(raw_frame(0x89, Some(key), &ping));
                expected.push(Event::Ping(Bytes::from(ping)));
            }
            // Split into 1..=6 fragments at random byte offsets (may split chars).
            let nfrag = rng.below(6) + 1;
            let mut cuts: Vec<usize> = (0..nfrag - 1)
                .map(|_| rng.below(payload.len() + 1))
                .collect();
            cuts.sort_unstable();
            cuts.push(payload.len());
            let mut start = 0;
            for (i, &end) in cuts.iter().enumerate() {
                let fin = i == cuts.len() - 1;
                let op = if i == 0 {
                    if kind == MessageKind::Text {
                        OP_TEXT
                    } else {
                        OP_BINARY
                    }
                } else {
                    OP_CONTINUATION
                };
                let fkey = (rng.next() as u32).to_ne_bytes();
                stream.extend(raw_frame(
                    if fin { 0x80 } else { 0 } | op,
                    Some(fkey),
                    &payload[start..end],
                ));
                start = end;
                if !fin && rng.below(4) == 0 {
                    let pong: Vec<u8> = (0..rng.below(20)).map(|_| rng.next() as u8).collect();
                    stream.extend(raw_frame(0x8A, Some(fkey), &pong));
                    expected.push(Event::Pong(Bytes::from(pong)));
                }
            }
            expected.push(Event::Message {
                kind,
                payload: Bytes::from(payload),
            });
        }
        // Deliver in random-sized chunks.
        let mut dec = decoder();
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let n = (rng.below(300) + 1).min(stream.len() - pos);
            buf.extend_from_slice(&stream[pos..pos + n]);
            pos += n;
            while let Some(ev) = dec.decode(&mut buf).expect("valid random stream") {
                events.push(ev);
            }
        }
        assert!(buf.is_empty());
        assert!(!dec.in_message());
        assert_eq!(events, expected);
    }
}

#[test]
fn randomized_garbage_never_panics() {
    let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
    for _ in 0..2000 {
        let len = rng.below(64);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Bias towards masked, plausible headers so we get past the first checks.
        if let Some(b) = bytes.get_mut(1) {
            *b |= 0x80;
        }
        if let Some(b) = bytes.first_mut() {
            *b &= 0x8F;
        }
        let mut dec = decoder();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
        let _ = dec.bytes_needed(&buf);
    }
}

#[test]
fn error_messages_are_clear() {
    assert_eq!(
        DecodeError::MessageTooLarge {
            size: 65537,
            limit: 65536
        }
        .to_string(),
        "message of 65537 bytes exceeds the limit of 65536 bytes"
    );
    assert_eq!(
        DecodeError::ReservedOpcode(0xB).to_string(),
        "reserved opcode 0xb"
    );
}

/// A message one byte over `max` is refused with 1009, naming both sizes.
fn assert_one_over(err: &DecodeError, max: usize) {
    assert_eq!(
        *err,
        DecodeError::MessageTooLarge {
            size: max as u64 + 1,
            limit: max
        }
    );
    assert_eq!(err.close_code(), 1009);
}
