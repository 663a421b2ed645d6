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
mod tests;
