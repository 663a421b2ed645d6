//! Single frames: what decodes, and the header rules that reject.
use super::*;

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
