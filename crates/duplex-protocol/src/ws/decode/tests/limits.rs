//! Size and fragment-count limits.
use super::*;

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
