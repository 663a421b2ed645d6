//! A minimal RFC 6455 client: the opening handshake, a frame header parser
//! over borrowed bytes (no allocation), and a masked frame encoder.
//!
//! Only what a load generator needs: server frames are read in place from a
//! buffer the caller owns; client frames are always masked with a key fixed
//! per connection.

use std::io;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Continuation frame.
pub(crate) const OP_CONT: u8 = 0x0;
/// Text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong frame.
pub(crate) const OP_PONG: u8 = 0xA;

/// Largest server frame accepted (a guard against garbage lengths).
pub(crate) const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Largest response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// One parsed frame header; the payload is `buf[header_len..header_len + payload_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// FIN bit.
    pub(crate) fin: bool,
    /// Opcode (low 4 bits of the first byte).
    pub(crate) opcode: u8,
    /// Bytes of header before the payload.
    pub(crate) header_len: usize,
    /// Payload length.
    pub(crate) payload_len: usize,
}

impl Frame {
    /// Header plus payload.
    pub(crate) fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// A server frame that breaks RFC 6455 (for a client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Server frames must not be masked.
    Masked,
    /// RSV bits set without a negotiated extension.
    Reserved,
    /// Opcode 3-7 or 11-15.
    BadOpcode(u8),
    /// Control frame longer than 125 bytes or fragmented.
    BadControl,
    /// Longer than [`MAX_FRAME`].
    TooBig(u64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Masked => write!(f, "protocol error: masked server frame"),
            FrameError::Reserved => write!(f, "protocol error: RSV bits set"),
            FrameError::BadOpcode(op) => write!(f, "protocol error: opcode {op:#x}"),
            FrameError::BadControl => write!(f, "protocol error: bad control frame"),
            FrameError::TooBig(n) => write!(f, "protocol error: frame of {n} bytes"),
        }
    }
}

/// Parses the frame at the start of `buf`. `Ok(None)` means more bytes are
/// needed (header or payload incomplete).
pub(crate) fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || b1 & 0x7F > 125 {
                return Err(FrameError::BadControl);
            }
        }
        other => return Err(FrameError::BadOpcode(other)),
    }
    let (header_len, len) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (4, u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (10, u64::from_be_bytes(a))
        }
        n => (2, u64::from(n)),
    };
    if len > MAX_FRAME as u64 {
        return Err(FrameError::TooBig(len));
    }
    let frame = Frame {
        fin,
        opcode,
        header_len,
        payload_len: len as usize,
    };
    if buf.len() < frame.total_len() {
        return Ok(None);
    }
    Ok(Some(frame))
}

/// Appends one masked client frame (FIN set) to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | (opcode & 0x0F));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A close frame's code and reason, for error messages.
pub(crate) fn describe_close(payload: &[u8]) -> String {
    match payload {
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let reason = String::from_utf8_lossy(reason);
            if reason.is_empty() {
                format!("closed by server: {code}")
            } else {
                format!("closed by server: {code} {reason}")
            }
        }
        _ => "closed by server: no code".to_string(),
    }
}

/// A fresh random `Sec-WebSocket-Key` (16 random bytes, base64).
pub(crate) fn new_key() -> String {
    BASE64.encode(rand::random::<[u8; 16]>())
}

/// The `Sec-WebSocket-Accept` value a server must answer for `key`.
pub(crate) fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// The client's opening request.
pub(crate) fn handshake_request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Checks a complete response head (up to and including the blank line).
pub(crate) fn check_response(head: &[u8], key: &str) -> Result<(), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split(' ').nth(1).unwrap_or("");
    if code != "101" {
        return Err(format!("handshake refused: {}", status.trim()));
    }
    let want = accept_key(key);
    let accepted = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == want
        })
    });
    if !accepted {
        return Err("handshake: missing or wrong Sec-WebSocket-Accept".to_string());
    }
    Ok(())
}

/// Performs the opening handshake. On success `buf` holds whatever the
/// server sent after the response head (the start of its first frames).
pub(crate) async fn handshake(
    stream: &mut TcpStream,
    host: &str,
    path: &str,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let key = new_key();
    stream
        .write_all(handshake_request(host, path, &key).as_bytes())
        .await
        .map_err(|e| format!("handshake write: {e}"))?;
    buf.clear();
    loop {
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            let head_len = end + 4;
            let result = check_response(&buf[..head_len], &key);
            if let Err(reason) = result {
                // Show a bit of the body: servers explain refusals there.
                let body = String::from_utf8_lossy(&buf[head_len..]);
                let body: String = body.chars().take(160).collect();
                return Err(if body.trim().is_empty() {
                    reason
                } else {
                    format!("{reason}: {}", body.trim())
                });
            }
            buf.drain(..head_len);
            return Ok(());
        }
        if buf.len() > MAX_HEAD {
            return Err("handshake: response head too large".to_string());
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("handshake read: {e}"))?;
        if n == 0 {
            return Err("handshake: connection closed by server".to_string());
        }
    }
}

/// Reads the next complete data message during connection setup (may
/// allocate: this is not the hot path). Pings are answered, pongs skipped;
/// a close frame or an I/O error becomes `Err`.
pub(crate) async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    mask: [u8; 4],
) -> Result<Vec<u8>, String> {
    loop {
        match parse_frame(buf).map_err(|e| e.to_string())? {
            Some(frame) => {
                let payload = buf[frame.header_len..frame.total_len()].to_vec();
                buf.drain(..frame.total_len());
                match frame.opcode {
                    OP_PING => {
                        let mut out = Vec::with_capacity(payload.len() + 6);
                        encode_frame(&mut out, OP_PONG, &payload, mask);
                        stream
                            .write_all(&out)
                            .await
                            .map_err(|e| format!("write: {e}"))?;
                    }
                    OP_CLOSE => return Err(describe_close(&payload)),
                    OP_PONG => {}
                    _ => return Ok(payload),
                }
            }
            None => {
                let n = stream
                    .read_buf(buf)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("connection closed by server (EOF)".to_string());
                }
            }
        }
    }
}

/// Sends one masked frame.
pub(crate) async fn send_frame(
    stream: &mut TcpStream,
    opcode: u8,
    payload: &[u8],
    mask: [u8; 4],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    encode_frame(&mut out, opcode, payload, mask);
    stream.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (len, mut at) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&frame[2..10]);
                (u64::from_be_bytes(a) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let mask = [frame[at], frame[at + 1], frame[at + 2], frame[at + 3]];
        at += 4;
        let payload = frame[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        (frame[0], payload)
    }

    #[test]
    fn parses_small_text_frame() {
        let buf = b"\x81\x05hello\x89";
        let f = parse_frame(buf).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                fin: true,
                opcode: OP_TEXT,
                header_len: 2,
                payload_len: 5
            }
        );
        assert_eq!(&buf[f.header_len..f.total_len()], b"hello");
        // The trailing byte is an incomplete next frame.
        assert_eq!(parse_frame(&buf[f.total_len()..]).unwrap(), None);
    }

    #[test]
    fn parses_16_and_64_bit_lengths() {
        let mut buf = vec![0x82, 126, 0x01, 0x00];
        buf.extend(std::iter::repeat_n(7u8, 256));
        let f = parse_frame(&buf).unwrap().unwrap();
        assert_eq!((f.opcode, f.header_len, f.payload_len), (OP_BINARY, 4, 256));
        assert_eq!(parse_frame(&buf[..100]).unwrap(), None);

        let mut buf = vec![0x81, 127];
        buf.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_frame(&buf).unwrap(), None, "payload not there yet");
        buf.extend(std::iter::repeat_n(b'x', 70_000));
        let f = parse_frame(&buf).unwrap().unwrap();
        assert_eq!((f.header_len, f.payload_len), (10, 70_000));
    }

    #[test]
    fn incomplete_headers_need_more() {
        assert_eq!(parse_frame(b"").unwrap(), None);
        assert_eq!(parse_frame(b"\x81").unwrap(), None);
        assert_eq!(parse_frame(b"\x81\x7e\x01").unwrap(), None);
        assert_eq!(parse_frame(b"\x81\x7f\x00\x00").unwrap(), None);
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(parse_frame(b"\x81\x85abcd"), Err(FrameError::Masked));
        assert_eq!(parse_frame(b"\xc1\x00"), Err(FrameError::Reserved));
        assert_eq!(parse_frame(b"\x83\x00"), Err(FrameError::BadOpcode(3)));
        assert_eq!(parse_frame(b"\x09\x00"), Err(FrameError::BadControl));
        assert_eq!(
            parse_frame(b"\x89\x7e\x00\x80"),
            Err(FrameError::BadControl)
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(parse_frame(&huge), Err(FrameError::TooBig(_))));
    }

    #[test]
    fn control_and_continuation_frames() {
        let f = parse_frame(b"\x89\x02hi").unwrap().unwrap();
        assert_eq!((f.opcode, f.payload_len), (OP_PING, 2));
        let f = parse_frame(b"\x01\x01a").unwrap().unwrap();
        assert!(!f.fin);
        let f = parse_frame(b"\x80\x01b").unwrap().unwrap();
        assert_eq!((f.fin, f.opcode), (true, OP_CONT));
    }

    #[test]
    fn encodes_masked_frames_of_every_length_class() {
        for len in [0usize, 5, 125, 126, 65_535, 65_536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_frame(&mut out, OP_BINARY, &payload, [1, 2, 3, 4]);
            let (b0, back) = unmask(&out);
            assert_eq!(b0, 0x82);
            assert_eq!(back, payload, "len {len}");
        }
        let mut out = Vec::new();
        encode_frame(&mut out, OP_PONG, b"", [9, 9, 9, 9]);
        assert_eq!(out, [0x8A, 0x80, 9, 9, 9, 9]);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(BASE64.decode(new_key()).unwrap().len(), 16);
    }

    #[test]
    fn checks_the_response_head() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(check_response(ok, key), Ok(()));
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(check_response(wrong, key).is_err());
        let refused = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(
            check_response(refused, key),
            Err("handshake refused: HTTP/1.1 400 Bad Request".to_string())
        );
        let req = handshake_request("127.0.0.1:1234", "/?channel=a", key);
        assert!(req.starts_with("GET /?channel=a HTTP/1.1\r\nHost: 127.0.0.1:1234\r\n"));
        assert!(req.ends_with("Sec-WebSocket-Version: 13\r\n\r\n"));
    }

    #[test]
    fn describes_close_frames() {
        assert_eq!(
            describe_close(b"\x0b\xb9slow consumer"),
            "closed by server: 3001 slow consumer"
        );
        assert_eq!(describe_close(b"\x03\xe8"), "closed by server: 1000");
        assert_eq!(describe_close(b""), "closed by server: no code");
    }
}
