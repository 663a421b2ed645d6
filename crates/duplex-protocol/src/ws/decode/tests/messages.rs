//! Whole messages: UTF-8 across fragments, close frames, control frames in between.
use super::*;

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
