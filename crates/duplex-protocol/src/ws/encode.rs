//! Encoders for frames sent by the server to a client.
//!
//! Server frames are never masked (RFC 6455 5.1) and we never fragment what
//! we send, so every frame has FIN set. Each encoder produces header and
//! payload in one allocation so a write is one contiguous buffer, and
//! [`FrameBuilder`] lets a serializer write the payload in place without a
//! second copy.

use bytes::{BufMut as _, Bytes, BytesMut};

/// Largest possible server frame header: 2 bytes + 8-byte extended length, no mask.
const MAX_HEADER_LEN: usize = 10;

/// Largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes the server can send; named so callers cannot emit a reserved opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continuation of a fragmented message (0x0).
    Continuation = 0,
    /// Text data frame (0x1).
    Text = 1,
    /// Binary data frame (0x2).
    Binary = 2,
    /// Close control frame (0x8).
    Close = 8,
    /// Ping control frame (0x9).
    Ping = 9,
    /// Pong control frame (0xA).
    Pong = 10,
}

impl OpCode {
    /// The 4-bit opcode value as it appears on the wire.
    const fn bits(self) -> u8 {
        self as u8
    }
}

impl From<crate::ws::MessageKind> for OpCode {
    fn from(kind: crate::ws::MessageKind) -> Self {
        match kind {
            crate::ws::MessageKind::Text => OpCode::Text,
            crate::ws::MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// Length of the header for a payload of `len` bytes.
const fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Writes the header for an unmasked FIN frame into `out`, which must be exactly
/// `header_len(payload_len)` bytes long.
fn write_header(out: &mut [u8], opcode: OpCode, payload_len: usize) {
    out[0] = 0x80 | opcode.bits();
    if payload_len < 126 {
        // Fits in 7 bits by the branch condition.
        out[1] = payload_len as u8;
    } else if let Ok(len16) = u16::try_from(payload_len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len16.to_be_bytes());
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
    }
}

/// Encodes one complete frame into fresh bytes: header + payload in one allocation.
///
/// Control frames (close, ping, pong) must carry at most 125 bytes; the caller is
/// responsible for that (see [`encode_close`], which enforces it).
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let hlen = header_len(payload.len());
    let mut buf = BytesMut::with_capacity(hlen + payload.len());
    buf.resize(hlen, 0);
    write_header(&mut buf[..hlen], opcode, payload.len());
    buf.extend_from_slice(payload);
    buf.freeze()
}

/// Close frame; truncates `reason` at a UTF-8 char boundary so the payload stays <= 125 bytes.
///
/// The code is written as given: the caller must not send 1005, 1006 or 1015,
/// which RFC 6455 reserves for local use.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let max_reason = MAX_CONTROL_PAYLOAD - 2;
    let mut end = reason.len().min(max_reason);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let payload_len = 2 + reason.len();
    let mut buf = BytesMut::with_capacity(2 + payload_len);
    buf.put_u8(0x80 | OpCode::Close.bits());
    // <= 125 by construction.
    buf.put_u8(payload_len as u8);
    buf.put_u16(code);
    buf.extend_from_slice(reason);
    buf.freeze()
}

/// Builds a frame whose payload is written in place (e.g. `serde_json::to_writer`) without a second copy.
///
/// The maximum header size (10 bytes) is reserved in front of the payload
/// buffer; [`FrameBuilder::finish`] writes the real header right before the
/// payload and returns the bytes from there. If the payload outgrows the
/// capacity given to [`FrameBuilder::with_capacity`], the buffer is
/// reallocated and `finish` copies once more, so size it when you can.
#[derive(Debug)]
pub struct FrameBuilder {
    /// Opcode of the frame being built.
    opcode: OpCode,
    /// The reserved header area (always `MAX_HEADER_LEN` bytes), contiguous with `payload` unless it grew.
    head: BytesMut,
    /// The payload written so far.
    payload: BytesMut,
}

impl FrameBuilder {
    /// Starts a frame with a small default payload capacity, for payloads of unknown size.
    pub fn new(opcode: OpCode) -> Self {
        Self::with_capacity(opcode, 256)
    }

    /// Starts a frame whose payload can reach `payload_capacity` bytes without reallocating.
    pub fn with_capacity(opcode: OpCode, payload_capacity: usize) -> Self {
        let mut head = BytesMut::with_capacity(MAX_HEADER_LEN + payload_capacity);
        head.resize(MAX_HEADER_LEN, 0);
        let payload = head.split_off(MAX_HEADER_LEN);
        Self {
            opcode,
            head,
            payload,
        }
    }

    /// The payload buffer: append the frame's payload here (it holds only the payload, never the header).
    pub fn payload_mut(&mut self) -> &mut BytesMut {
        &mut self.payload
    }

    /// An `io::Write` that appends to the payload, for `serde_json::to_writer` and friends.
    ///
    /// A concrete type rather than `impl Write`: it has no destructor, so the
    /// borrow ends at its last use and `finish` can follow without a `drop(w)`.
    pub fn writer(&mut self) -> bytes::buf::Writer<&mut BytesMut> {
        (&mut self.payload).writer()
    }

    /// Writes the header in front of the payload and returns the complete frame.
    pub fn finish(self) -> Bytes {
        let Self {
            opcode,
            mut head,
            payload,
        } = self;
        let len = payload.len();
        let hlen = header_len(len);
        let start = MAX_HEADER_LEN - hlen;
        write_header(&mut head[start..], opcode, len);
        // O(1) when the payload did not outgrow its capacity; otherwise one copy.
        head.unsplit(payload);
        let mut frame = head.freeze();
        bytes::Buf::advance(&mut frame, start);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// Parses an unmasked server frame: (fin, opcode, payload).
    fn parse(frame: &[u8]) -> (bool, u8, &[u8]) {
        assert_eq!(frame[1] & 0x80, 0, "server frames are never masked");
        assert_eq!(frame[0] & 0x70, 0, "no RSV bits");
        let (len, off) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&frame[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), off + len, "frame length matches header");
        (frame[0] & 0x80 != 0, frame[0] & 0x0F, &frame[off..])
    }

    #[test]
    fn header_sizes_at_boundaries() {
        for (len, hlen, marker) in [
            (0usize, 2usize, 0u8),
            (1, 2, 1),
            (125, 2, 125),
            (126, 4, 126),
            (127, 4, 126),
            (65535, 4, 126),
            (65536, 10, 127),
            (70000, 10, 127),
        ] {
            let payload = vec![0xA5u8; len];
            let frame = encode_frame(OpCode::Binary, &payload);
            assert_eq!(frame.len(), hlen + len, "len {len}");
            assert_eq!(frame[1], marker, "len {len}");
            let (fin, op, p) = parse(&frame);
            assert!(fin);
            assert_eq!(op, 2);
            assert_eq!(p, &payload[..]);
        }
    }

    #[test]
    fn opcodes_on_the_wire() {
        for (op, bits) in [
            (OpCode::Continuation, 0u8),
            (OpCode::Text, 1),
            (OpCode::Binary, 2),
            (OpCode::Close, 8),
            (OpCode::Ping, 9),
            (OpCode::Pong, 10),
        ] {
            let frame = encode_frame(op, b"x");
            assert_eq!(frame[0], 0x80 | bits);
        }
    }

    #[test]
    fn text_frame_exact_bytes() {
        assert_eq!(
            &encode_frame(OpCode::Text, b"Hello")[..],
            &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']
        );
    }

    #[test]
    fn encode_close_plain() {
        let frame = encode_close(1000, "bye");
        assert_eq!(&frame[..], &[0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);
        let frame = encode_close(4001, "");
        assert_eq!(&frame[..], &[0x88, 2, 0x0F, 0xA1]);
    }

    #[test]
    fn encode_close_truncates_at_char_boundary() {
        // 122 ASCII bytes + a 2-byte char: 124 bytes, only 123 fit -> drop the char.
        let reason = format!("{}é", "a".repeat(122));
        let frame = encode_close(1001, &reason);
        let (_, op, p) = parse(&frame);
        assert_eq!(op, 8);
        assert_eq!(p.len(), 2 + 122);
        assert!(std::str::from_utf8(&p[2..]).is_ok());

        // A 4-byte char straddling the boundary: 121 + 4 = 125 > 123.
        let reason = format!("{}😀tail", "b".repeat(121));
        let frame = encode_close(1001, &reason);
        let (_, _, p) = parse(&frame);
        assert_eq!(&p[2..], "b".repeat(121).as_bytes());

        // Exactly 123 bytes fits unchanged.
        let reason = format!("{}😀", "c".repeat(119));
        assert_eq!(reason.len(), 123);
        let frame = encode_close(1001, &reason);
        let (_, _, p) = parse(&frame);
        assert_eq!(p.len(), 125);
        assert_eq!(&p[2..], reason.as_bytes());

        // Long multibyte reason: always <= 125 and valid UTF-8.
        let reason = "ж".repeat(200);
        let frame = encode_close(1011, &reason);
        let (_, _, p) = parse(&frame);
        assert!(p.len() <= 125);
        assert_eq!(p.len(), 2 + 122);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }

    #[test]
    fn frame_builder_matches_encode_frame() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut fb = FrameBuilder::with_capacity(OpCode::Binary, len);
            fb.payload_mut().extend_from_slice(&payload);
            assert_eq!(
                fb.finish(),
                encode_frame(OpCode::Binary, &payload),
                "len {len}"
            );
        }
    }

    #[test]
    fn frame_builder_in_place_when_capacity_suffices() {
        let mut fb = FrameBuilder::with_capacity(OpCode::Text, 64);
        let payload_ptr = fb.payload_mut().as_ptr() as usize;
        fb.payload_mut().extend_from_slice(b"hello");
        let frame = fb.finish();
        // The payload was not moved: it sits right after the 2-byte header.
        assert_eq!(frame.as_ptr() as usize + 2, payload_ptr);
        assert_eq!(&frame[..], b"\x81\x05hello");
    }

    #[test]
    fn frame_builder_grows_past_capacity() {
        let mut fb = FrameBuilder::with_capacity(OpCode::Binary, 4);
        let payload = vec![7u8; 70_000];
        fb.payload_mut().extend_from_slice(&payload);
        assert_eq!(fb.finish(), encode_frame(OpCode::Binary, &payload));
    }

    #[test]
    fn frame_builder_with_serde_json_writer() {
        let value = serde_json::json!({"type": "pub", "channel": "news", "data": [1, 2, 3]});
        let mut fb = FrameBuilder::new(OpCode::Text);
        serde_json::to_writer(fb.writer(), &value).expect("serialize");
        let frame = fb.finish();
        let expected = serde_json::to_vec(&value).expect("serialize");
        assert_eq!(frame, encode_frame(OpCode::Text, &expected));
    }

    #[test]
    fn frame_builder_writer_and_empty() {
        let fb = FrameBuilder::new(OpCode::Ping);
        assert_eq!(&fb.finish()[..], &[0x89, 0x00]);
        let mut fb = FrameBuilder::new(OpCode::Text);
        fb.writer().write_all(b"ab").expect("write");
        fb.payload_mut().extend_from_slice(b"cd");
        assert_eq!(&fb.finish()[..], b"\x81\x04abcd");
    }

    #[test]
    fn opcode_from_message_kind() {
        assert_eq!(OpCode::from(crate::ws::MessageKind::Text), OpCode::Text);
        assert_eq!(OpCode::from(crate::ws::MessageKind::Binary), OpCode::Binary);
    }
}
