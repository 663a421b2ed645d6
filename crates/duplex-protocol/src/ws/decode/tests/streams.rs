//! Bytes arriving piecemeal, and encode/decode round trips.
use super::*;

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
