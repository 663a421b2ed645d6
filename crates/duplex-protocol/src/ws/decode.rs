//! Incremental (sans-IO) decoder for frames sent by clients to the server.
//!
//! The caller owns the read buffer and feeds it to [`Decoder::decode`], which
//! consumes whole frames from its front. Every limit is checked from the frame
//! header, before the payload is buffered, so a peer can never make us hold
//! more than `max_message_size` bytes of message plus one frame header. An idle
//! decoder owns no heap memory; memory is held only while a fragmented message
//! is being assembled, and its capacity never exceeds `max_message_size`.

use bytes::{Buf as _, Bytes, BytesMut};

use super::MessageKind;

/// Opcode of a continuation frame.
const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: u8 = 125;

/// Close code for protocol violations (RFC 6455 7.4.1).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for payloads inconsistent with the message type, e.g. bad UTF-8.
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// Close code for messages too big to process.
const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// Limits enforced while decoding, so one connection cannot make the node buffer without bound.
#[derive(Debug, Clone, Copy)]
pub struct DecoderLimits {
    /// Largest message accepted, in payload bytes (inclusive), whether sent as one frame or as fragments.
    pub max_message_size: usize,
    /// Largest number of frames (counting the first) a fragmented message may span; values below 1 act as 1.
    pub max_fragments: usize,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            max_fragments: 1024,
        }
    }
}

/// What the decoder produced from one or more complete frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete data message (reassembled if it was fragmented).
    Message {
        /// Whether the message was sent as text (valid UTF-8) or binary.
        kind: MessageKind,
        /// The unmasked payload.
        payload: Bytes,
    },
    /// A ping; the server should answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong, e.g. the answer to our keepalive ping.
    Pong(Bytes),
    /// A close frame; the server should answer with a close and end the connection.
    Close {
        /// code None when the close frame had an empty payload
        code: Option<u16>,
        /// The reason sent by the client (valid UTF-8, possibly empty).
        reason: String,
    },
}

/// A protocol violation by the client; the connection must be closed with [`DecodeError::close_code`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// RSV1/2/3 set while no extension was negotiated.
    #[error("reserved bits set in frame header (no extension negotiated)")]
    ReservedBits,
    /// An opcode that RFC 6455 reserves (3-7, 0xB-0xF).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// Clients must mask every frame (RFC 6455 5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A close, ping or pong frame with a payload over 125 bytes.
    #[error("control frame payload larger than 125 bytes")]
    ControlFrameTooLarge,
    /// A close, ping or pong frame without FIN.
    #[error("control frame is fragmented")]
    FragmentedControlFrame,
    /// A continuation frame with no fragmented message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still in progress.
    #[error("new data frame while a fragmented message is in progress")]
    MessageInProgress,
    /// A 64-bit payload length with the most significant bit set.
    #[error("64-bit payload length has its most significant bit set")]
    InvalidLength,
    /// The message (one frame or the sum of its fragments) exceeds `max_message_size`.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Size the message would reach with the offending frame.
        size: u64,
        /// The configured limit.
        limit: usize,
    },
    /// A fragmented message spans more than `max_fragments` frames.
    #[error("too many fragments: a message may span at most {limit} frames")]
    TooManyFragments {
        /// The configured limit.
        limit: usize,
    },
    /// A text message that is not valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame whose payload is exactly one byte (half a close code).
    #[error("close frame payload of 1 byte")]
    CloseFrameTooShort,
    /// A close code that RFC 6455 7.4 does not allow on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A close reason that is not valid UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
}

impl DecodeError {
    /// The close code the server must send for this violation.
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::ReservedBits
            | DecodeError::ReservedOpcode(_)
            | DecodeError::UnmaskedFrame
            | DecodeError::ControlFrameTooLarge
            | DecodeError::FragmentedControlFrame
            | DecodeError::UnexpectedContinuation
            | DecodeError::MessageInProgress
            | DecodeError::InvalidLength
            | DecodeError::CloseFrameTooShort
            | DecodeError::InvalidCloseCode(_) => CLOSE_PROTOCOL_ERROR,
            DecodeError::MessageTooLarge { .. } | DecodeError::TooManyFragments { .. } => {
                CLOSE_MESSAGE_TOO_BIG
            }
            DecodeError::InvalidUtf8 | DecodeError::InvalidCloseReason => CLOSE_INVALID_PAYLOAD,
        }
    }
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Partial {
    /// Kind announced by the first fragment.
    kind: MessageKind,
    /// Unmasked payload received so far.
    data: BytesMut,
    /// Frames received so far, counting the first.
    fragments: usize,
    /// Prefix of `data` known to be valid UTF-8 (text only); the rest is an incomplete char.
    utf8_valid_up_to: usize,
}

impl Partial {
    /// Appends the payload of the complete frame at the front of `buf` and consumes the frame.
    fn append(
        &mut self,
        buf: &mut BytesMut,
        header: &FrameHeader,
        limit: usize,
    ) -> Result<(), DecodeError> {
        let start = self.data.len();
        self.reserve_exact_capped(header.payload_len, limit);
        self.data
            .extend_from_slice(&buf[header.header_len..header.frame_len()]);
        buf.advance(header.frame_len());
        unmask(&mut self.data[start..], header.mask);
        self.fragments += 1;
        if self.kind == MessageKind::Text {
            self.validate_utf8()?;
        }
        Ok(())
    }

    /// Grows `data` geometrically but never past `limit`, so a message's buffer is bounded exactly.
    fn reserve_exact_capped(&mut self, additional: usize, limit: usize) {
        let needed = self.data.len() + additional;
        if needed <= self.data.capacity() {
            return;
        }
        let new_cap = needed
            .max(self.data.capacity().saturating_mul(2))
            .min(limit.max(needed));
        let mut grown = BytesMut::with_capacity(new_cap);
        grown.extend_from_slice(&self.data);
        self.data = grown;
    }

    /// Validates the bytes received since the last check; an incomplete char at the end is allowed.
    fn validate_utf8(&mut self) -> Result<(), DecodeError> {
        match std::str::from_utf8(&self.data[self.utf8_valid_up_to..]) {
            Ok(_) => self.utf8_valid_up_to = self.data.len(),
            Err(e) => {
                if e.error_len().is_some() {
                    return Err(DecodeError::InvalidUtf8);
                }
                self.utf8_valid_up_to += e.valid_up_to();
            }
        }
        Ok(())
    }
}

/// A validated frame header whose whole frame is in the buffer.
#[derive(Debug)]
struct FrameHeader {
    /// FIN bit.
    fin: bool,
    /// The 4-bit opcode (known not to be reserved).
    opcode: u8,
    /// Masking key.
    mask: [u8; 4],
    /// Header length including extended length and masking key.
    header_len: usize,
    /// Payload length (known to be within limits).
    payload_len: usize,
}

impl FrameHeader {
    /// Total length of the frame on the wire.
    fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Result of looking at the front of the buffer.
#[derive(Debug)]
enum Parsed {
    /// The frame is not complete yet; `needed` more bytes are required (as far as known).
    Incomplete {
        /// Lower bound on the bytes missing from the current frame.
        needed: usize,
    },
    /// A complete, validated frame is at the front of the buffer.
    Frame(FrameHeader),
}

/// Incremental decoder of client frames for one connection; holds only the fragmented message in progress.
#[derive(Debug)]
pub struct Decoder {
    /// Limits applied to every message.
    limits: DecoderLimits,
    /// The fragmented message being assembled, if any.
    partial: Option<Partial>,
}

impl Decoder {
    /// Creates a decoder enforcing `limits`; it allocates nothing until a fragmented message arrives.
    pub fn new(limits: DecoderLimits) -> Self {
        Self {
            limits,
            partial: None,
        }
    }

    /// Consumes complete frames from the front of `buf` and returns the next event,
    /// or `Ok(None)` when `buf` does not yet hold a complete frame (the partial bytes stay in `buf`).
    ///
    /// Header violations are reported as soon as the offending header bytes are
    /// in `buf`, before any payload is buffered. Payloads of unfragmented frames
    /// are unmasked in place and returned without copying (they share `buf`'s
    /// allocation). After an error the decoder must not be used again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, DecodeError> {
        loop {
            let header = match self.parse(buf)? {
                Parsed::Incomplete { .. } => return Ok(None),
                Parsed::Frame(header) => header,
            };
            match header.opcode {
                OP_TEXT | OP_BINARY => {
                    let kind = if header.opcode == OP_TEXT {
                        MessageKind::Text
                    } else {
                        MessageKind::Binary
                    };
                    if header.fin {
                        let payload = take_payload(buf, &header);
                        if kind == MessageKind::Text && std::str::from_utf8(&payload).is_err() {
                            return Err(DecodeError::InvalidUtf8);
                        }
                        return Ok(Some(Event::Message {
                            kind,
                            payload: payload.freeze(),
                        }));
                    }
                    let mut partial = Partial {
                        kind,
                        data: BytesMut::new(),
                        fragments: 0,
                        utf8_valid_up_to: 0,
                    };
                    partial.append(buf, &header, self.limits.max_message_size)?;
                    self.partial = Some(partial);
                }
                OP_CONTINUATION => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(DecodeError::UnexpectedContinuation);
                    };
                    partial.append(buf, &header, self.limits.max_message_size)?;
                    if header.fin {
                        if let Some(done) = self.partial.take() {
                            if done.kind == MessageKind::Text
                                && done.utf8_valid_up_to != done.data.len()
                            {
                                return Err(DecodeError::InvalidUtf8);
                            }
                            return Ok(Some(Event::Message {
                                kind: done.kind,
                                payload: done.data.freeze(),
                            }));
                        }
                    }
                }
                OP_CLOSE => {
                    let payload = take_payload(buf, &header);
                    return parse_close(&payload).map(Some);
                }
                OP_PING => return Ok(Some(Event::Ping(take_payload(buf, &header).freeze()))),
                OP_PONG => return Ok(Some(Event::Pong(take_payload(buf, &header).freeze()))),
                other => return Err(DecodeError::ReservedOpcode(other)),
            }
        }
    }

    /// How many more bytes the current partial frame needs, if known (lets the caller size its read).
    ///
    /// Best effort: until the length field has arrived it counts only up to the
    /// end of the header. It is at least 1 when [`Decoder::decode`] returned
    /// `Ok(None)` for this `buf`; it is 0 when `decode` can make progress right
    /// away (a complete frame, or a violation, is already in `buf`).
    pub fn bytes_needed(&self, buf: &BytesMut) -> usize {
        match self.parse(buf) {
            Ok(Parsed::Incomplete { needed }) => needed.max(1),
            Ok(Parsed::Frame(_)) | Err(_) => 0,
        }
    }

    /// True while a fragmented message is being assembled (memory is held).
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Validates the header at the front of `buf` as far as it has arrived.
    fn parse(&self, buf: &[u8]) -> Result<Parsed, DecodeError> {
        let Some(&b0) = buf.first() else {
            return Ok(Parsed::Incomplete { needed: 2 });
        };
        if b0 & 0x70 != 0 {
            return Err(DecodeError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let is_control = match opcode {
            OP_CONTINUATION => {
                let Some(partial) = &self.partial else {
                    return Err(DecodeError::UnexpectedContinuation);
                };
                let limit = self.limits.max_fragments.max(1);
                if partial.fragments >= limit {
                    return Err(DecodeError::TooManyFragments { limit });
                }
                false
            }
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(DecodeError::MessageInProgress);
                }
                false
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(DecodeError::FragmentedControlFrame);
                }
                true
            }
            other => return Err(DecodeError::ReservedOpcode(other)),
        };

        let Some(&b1) = buf.get(1) else {
            return Ok(Parsed::Incomplete { needed: 1 });
        };
        if b1 & 0x80 == 0 {
            return Err(DecodeError::UnmaskedFrame);
        }
        let len7 = b1 & 0x7F;
        if is_control && len7 > MAX_CONTROL_PAYLOAD {
            return Err(DecodeError::ControlFrameTooLarge);
        }
        let ext_len = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + ext_len + 4;
        if buf.len() < 2 + ext_len {
            return Ok(Parsed::Incomplete {
                needed: header_len - buf.len(),
            });
        }
        let payload_len: u64 = match len7 {
            126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(DecodeError::InvalidLength);
                }
                len
            }
            n => u64::from(n),
        };

        let payload_len = if is_control {
            // <= 125 by the check above.
            payload_len as usize
        } else {
            let already = self.partial.as_ref().map_or(0, |p| p.data.len());
            let size = (already as u64).saturating_add(payload_len);
            let limit = self.limits.max_message_size;
            let too_large = DecodeError::MessageTooLarge { size, limit };
            if size > limit as u64 {
                return Err(too_large);
            }
            usize::try_from(payload_len).map_err(|_| too_large)?
        };

        let frame_len = header_len + payload_len;
        if buf.len() < frame_len {
            return Ok(Parsed::Incomplete {
                needed: frame_len - buf.len(),
            });
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[header_len - 4..header_len]);
        Ok(Parsed::Frame(FrameHeader {
            fin,
            opcode,
            mask,
            header_len,
            payload_len,
        }))
    }
}

/// Splits the complete frame off the front of `buf` and returns its unmasked payload, without copying.
fn take_payload(buf: &mut BytesMut, header: &FrameHeader) -> BytesMut {
    let mut payload = buf.split_to(header.frame_len());
    payload.advance(header.header_len);
    unmask(&mut payload, header.mask);
    payload
}

/// Parses the payload of a close frame (RFC 6455 5.5.1, 7.4).
fn parse_close(payload: &[u8]) -> Result<Event, DecodeError> {
    match payload {
        [] => Ok(Event::Close {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(DecodeError::CloseFrameTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(DecodeError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| DecodeError::InvalidCloseReason)?
                .to_owned();
            Ok(Event::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

/// Whether a peer may send `code` in a close frame (RFC 6455 7.4.1/7.4.2 plus the IANA-registered 1012-1014).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `data` with the masking key, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let [m0, m1, m2, m3] = mask;
    let wide = u64::from_ne_bytes([m0, m1, m2, m3, m0, m1, m2, m3]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let unmasked = u64::from_ne_bytes(word) ^ wide;
        chunk.copy_from_slice(&unmasked.to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key phase is 0 again.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
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
            assert_eq!(
                err,
                DecodeError::MessageTooLarge {
                    size: max as u64 + 1,
                    limit: max
                }
            );
            assert_eq!(err.close_code(), 1009);
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
                assert_eq!(
                    err,
                    DecodeError::MessageTooLarge {
                        size: max as u64 + 1,
                        limit: max
                    }
                );
                assert_eq!(err.close_code(), 1009);
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
}
