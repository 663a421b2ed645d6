//! A raw TCP WebSocket client, for what well-behaved libraries refuse to do:
//! never answer pings, send unmasked or malformed frames.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::WAIT;

/// A raw client on a socket, or on its read half once split.
pub struct Raw<S = TcpStream> {
    pub tcp: S,
    buf: Vec<u8>,
}

/// One server frame: opcode and payload (server frames are never masked).
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A client frame; `mask` false sends it unmasked (a protocol violation).
pub fn frame(first_byte: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![first_byte];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

impl Raw {
    /// Splits off the write half, to write and read at the same time.
    pub fn into_split(self) -> (Raw<OwnedReadHalf>, OwnedWriteHalf) {
        let (read, write) = self.tcp.into_split();
        let raw = Raw {
            tcp: read,
            buf: self.buf,
        };
        (raw, write)
    }

    /// Joins the halves back together.
    pub fn reunite(read: Raw<OwnedReadHalf>, write: OwnedWriteHalf) -> Raw {
        Raw {
            tcp: read.tcp.reunite(write).expect("halves of one socket"),
            buf: read.buf,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// Connects and completes the handshake on `path`.
    pub async fn connect(addr: std::net::SocketAddr, path: &str) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .expect("write handshake");
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let head = raw.read_until_headers_end().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        raw
    }
}

impl<S: AsyncRead + Unpin> Raw<S> {
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("server answered within the wait")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn read_until_headers_end(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                self.buf.drain(..end + 4);
                return head;
            }
            assert!(self.fill().await, "connection closed during handshake");
        }
    }

    /// Next server frame, or None at end of stream.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let len7 = (self.buf[1] & 0x7f) as usize;
                let (header, len) = match len7 {
                    126 if self.buf.len() >= 4 => {
                        (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (10, u64::from_be_bytes(b) as usize)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n),
                };
                if header != usize::MAX && self.buf.len() >= header + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Some(Frame { opcode, payload });
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads frames until a close frame; returns its code.
    pub async fn close_code(&mut self) -> u16 {
        while let Some(f) = self.next_frame().await {
            if f.opcode == 8 {
                return f.close_code().unwrap_or(1005);
            }
        }
        panic!("connection ended without a close frame");
    }
}
