//! The client protocols measured: Duplex plain mode, Duplex native, and
//! Pusher Channels v7. Per protocol: the URL path, how to subscribe (setup
//! path, may allocate), and how to find the benchmark payload in a pushed
//! message (hot path: a byte scan, no JSON parse, no allocation).
//!
//! Payloads are ASCII `<seq>:<publish unix time in µs>:` padded with `x`.

use std::fmt::Write as _;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::ws;

/// Which wire protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    /// Duplex plain mode: `ws://host/?channel=<name>`, frames are the raw payload.
    Plain,
    /// Duplex native JSON protocol at `/ws`.
    Native,
    /// Pusher Channels protocol v7 at `/app/<key>`.
    Pusher,
    /// Socket.IO 4 (Engine.IO 4, WebSocket transport only) at `/socket.io/`:
    /// subscribes with an acknowledged `subscribe` event naming the room;
    /// data arrives as `42["message","<payload>"]` (see bench/socketio/).
    #[value(name = "socketio")]
    SocketIo,
}

/// What a pushed data message turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// A benchmark payload.
    Payload {
        /// Sequence number within its stream.
        seq: u64,
        /// Publish time, unix µs.
        ts: u64,
    },
    /// An application-level ping (Pusher's, Engine.IO's) to answer with
    /// [`Protocol::pong`].
    AppPing,
    /// Anything else (replies, unknown pushes).
    Other,
}

/// The Pusher application-level pong.
pub(crate) const PUSHER_PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

static DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"data\":"));
static PUSHER_PING: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"pusher:ping"));
static SIO_ARG: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\",\""));

/// The Engine.IO pong (its ping is the message `2`).
const ENGINE_IO_PONG: &[u8] = b"3";

impl Protocol {
    /// Lower-case name, as on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Plain => "plain",
            Protocol::Native => "native",
            Protocol::Pusher => "pusher",
            Protocol::SocketIo => "socketio",
        }
    }

    /// The answer to an [`Inbound::AppPing`].
    pub(crate) fn pong(self) -> &'static [u8] {
        match self {
            Protocol::SocketIo => ENGINE_IO_PONG,
            _ => PUSHER_PONG,
        }
    }

    /// Request target (path and query) of a client that will be on `channel`.
    pub(crate) fn path(self, base: &str, channel: &str, app_key: &str) -> String {
        match self {
            Protocol::Plain => format!("{base}/?channel={}", url_encode(channel)),
            Protocol::Native => format!("{base}/ws"),
            Protocol::Pusher => format!(
                "{base}/app/{}?protocol=7&client=duplex-bench&version=1",
                url_encode(app_key)
            ),
            Protocol::SocketIo => format!("{base}/socket.io/?EIO=4&transport=websocket"),
        }
    }

    /// Classifies one data message (hot path).
    pub(crate) fn classify(self, msg: &[u8]) -> Inbound {
        let found = match self {
            Protocol::Plain => parse_prefix(msg),
            Protocol::Native | Protocol::Pusher => DATA.find(msg).and_then(|at| {
                let rest = &msg[at + 7..];
                let skip = rest
                    .iter()
                    .position(|b| !matches!(b, b' ' | b'"'))
                    .unwrap_or(rest.len());
                parse_prefix(&rest[skip..])
            }),
            // `42["message","<payload>"]`: the payload follows the first `","`.
            Protocol::SocketIo if msg.starts_with(b"42[") => SIO_ARG
                .find(msg)
                .and_then(|at| parse_prefix(&msg[at + 3..])),
            Protocol::SocketIo => None,
        };
        match found {
            Some((seq, ts)) => Inbound::Payload { seq, ts },
            None if self == Protocol::Pusher && PUSHER_PING.find(msg).is_some() => Inbound::AppPing,
            None if self == Protocol::SocketIo && msg == b"2" => Inbound::AppPing,
            None => Inbound::Other,
        }
    }

    /// After the WebSocket handshake: subscribes to `channel` and waits for
    /// the server to confirm (plain mode subscribes by URL: nothing to do).
    pub(crate) async fn subscribe(
        self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        mask: [u8; 4],
        channel: &str,
    ) -> Result<(), String> {
        let channel_json = Value::String(channel.to_string()).to_string();
        match self {
            Protocol::Plain => Ok(()),
            Protocol::Native => {
                let cmd = format!(
                    r#"{{"id":1,"method":"subscribe","params":{{"channel":{channel_json}}}}}"#
                );
                send_text(stream, cmd.as_bytes(), mask).await?;
                loop {
                    let msg = parse_json(&ws::read_message(stream, buf, mask).await?)?;
                    if msg.get("id").and_then(Value::as_u64) == Some(1) {
                        return match msg.get("error") {
                            Some(e) => Err(format!("subscribe refused: {e}")),
                            None => Ok(()),
                        };
                    }
                }
            }
            Protocol::Pusher => {
                wait_pusher_event(stream, buf, mask, "pusher:connection_established").await?;
                let cmd = format!(
                    r#"{{"event":"pusher:subscribe","data":{{"channel":{channel_json}}}}}"#
                );
                send_text(stream, cmd.as_bytes(), mask).await?;
                wait_pusher_event(stream, buf, mask, "pusher_internal:subscription_succeeded").await
            }
            Protocol::SocketIo => {
                // Engine.IO open (`0{...}`), then the Socket.IO connect to
                // the main namespace (`40` → `40{"sid":...}`), then an
                // acknowledged subscribe (`421[...]` → `431[...]`).
                wait_socketio(stream, buf, mask, b"0").await?;
                send_text(stream, b"40", mask).await?;
                wait_socketio(stream, buf, mask, b"40").await?;
                let cmd = format!(r#"421["subscribe",{channel_json}]"#);
                send_text(stream, cmd.as_bytes(), mask).await?;
                wait_socketio(stream, buf, mask, b"431").await
            }
        }
    }
}

/// Reads Socket.IO messages until one starts with `prefix`; answers
/// Engine.IO pings, fails on a connect error (`44...`).
async fn wait_socketio(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    mask: [u8; 4],
    prefix: &[u8],
) -> Result<(), String> {
    loop {
        let msg = ws::read_message(stream, buf, mask).await?;
        if msg.starts_with(prefix) {
            return Ok(());
        }
        if msg.as_slice() == b"2" {
            send_text(stream, ENGINE_IO_PONG, mask).await?;
        } else if msg.starts_with(b"44") {
            let shown: String = String::from_utf8_lossy(&msg).chars().take(120).collect();
            return Err(format!("socket.io connect refused: {shown}"));
        }
    }
}

async fn send_text(stream: &mut TcpStream, text: &[u8], mask: [u8; 4]) -> Result<(), String> {
    ws::send_frame(stream, ws::OP_TEXT, text, mask)
        .await
        .map_err(|e| format!("write: {e}"))
}

fn parse_json(msg: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(msg).map_err(|e| {
        let shown: String = String::from_utf8_lossy(msg).chars().take(120).collect();
        format!("unexpected message during setup ({e}): {shown}")
    })
}

/// Reads Pusher messages until `event`; answers `pusher:ping`, fails on `pusher:error`.
async fn wait_pusher_event(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    mask: [u8; 4],
    event: &str,
) -> Result<(), String> {
    loop {
        let msg = parse_json(&ws::read_message(stream, buf, mask).await?)?;
        match msg.get("event").and_then(Value::as_str) {
            Some(e) if e == event => return Ok(()),
            Some("pusher:error") => {
                return Err(format!(
                    "pusher:error: {}",
                    msg.get("data").cloned().unwrap_or(Value::Null)
                ))
            }
            Some("pusher:ping") => send_text(stream, PUSHER_PONG, mask).await?,
            _ => {}
        }
    }
}

/// Parses `<digits>:<digits>:` at the start of `b`.
pub(crate) fn parse_prefix(b: &[u8]) -> Option<(u64, u64)> {
    let (seq, used) = parse_u64_colon(b)?;
    let (ts, _) = parse_u64_colon(&b[used..])?;
    Some((seq, ts))
}

/// Parses 1-20 decimal digits followed by `:`; returns the value and bytes used.
fn parse_u64_colon(b: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &c) in b.iter().enumerate().take(21) {
        match c {
            b'0'..=b'9' => {
                value = value.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            }
            b':' if i > 0 => return Some((value, i + 1)),
            _ => return None,
        }
    }
    None
}

/// Writes the benchmark payload for (`seq`, `ts`) padded with `x` to `size` bytes.
pub(crate) fn write_payload(out: &mut String, seq: u64, ts: u64, size: usize) {
    out.clear();
    let _ = write!(out, "{seq}:{ts}:");
    while out.len() < size {
        out.push('x');
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let mut s = String::new();
        write_payload(&mut s, 42, 1_700_000_000_123_456, 64);
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("42:1700000000123456:xxx"));
        assert_eq!(
            parse_prefix(s.as_bytes()),
            Some((42, 1_700_000_000_123_456))
        );
        // A size smaller than the prefix is not padded, never truncated.
        write_payload(&mut s, 7, 9, 2);
        assert_eq!(s, "7:9:");
    }

    #[test]
    fn prefix_parser_rejects_garbage() {
        assert_eq!(parse_prefix(b"1:2:"), Some((1, 2)));
        assert_eq!(parse_prefix(b"1:2"), None);
        assert_eq!(parse_prefix(b":1:2:"), None);
        assert_eq!(parse_prefix(b"1::"), None);
        assert_eq!(parse_prefix(b"a1:2:"), None);
        assert_eq!(parse_prefix(b"99999999999999999999999:1:"), None);
        assert_eq!(parse_prefix(b""), None);
    }

    #[test]
    fn classifies_plain() {
        let p = Protocol::Plain;
        assert_eq!(
            p.classify(b"3:1000:xxxx"),
            Inbound::Payload { seq: 3, ts: 1000 }
        );
        assert_eq!(p.classify(b"hello"), Inbound::Other);
    }

    #[test]
    fn classifies_native() {
        let p = Protocol::Native;
        let push = br#"{"push":"message","channel":"ch:1:2:","data":"5:123456:xxxx"}"#;
        assert_eq!(p.classify(push), Inbound::Payload { seq: 5, ts: 123456 });
        assert_eq!(p.classify(br#"{"id":1,"result":{}}"#), Inbound::Other);
        assert_eq!(
            p.classify(br#"{"push":"message","channel":"c","data": "8:9:"}"#),
            Inbound::Payload { seq: 8, ts: 9 }
        );
        assert_eq!(
            p.classify(br#"{"event":"pusher:ping","data":{}}"#),
            Inbound::Other
        );
    }

    #[test]
    fn classifies_pusher() {
        let p = Protocol::Pusher;
        let msg = br#"{"event":"bench","channel":"ch-1","data":"11:222:xx"}"#;
        assert_eq!(p.classify(msg), Inbound::Payload { seq: 11, ts: 222 });
        assert_eq!(
            p.classify(br#"{"event":"pusher:ping","data":{}}"#),
            Inbound::AppPing
        );
        assert_eq!(
            p.classify(br#"{"event":"pusher:pong","data":{}}"#),
            Inbound::Other
        );
    }

    /// An unmasked server text frame.
    fn server_text(text: &str) -> Vec<u8> {
        assert!(text.len() < 126);
        let mut f = vec![0x81, text.len() as u8];
        f.extend_from_slice(text.as_bytes());
        f
    }

    /// Reads one masked client frame; returns (opcode, unmasked payload).
    async fn client_frame(s: &mut TcpStream) -> (u8, String) {
        use tokio::io::AsyncReadExt;
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.unwrap();
        assert_eq!(h[1] & 0x80, 0x80, "client frames are masked");
        let len = match h[1] & 0x7F {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).await.unwrap();
                u16::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut mask = [0u8; 4];
        s.read_exact(&mut mask).await.unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        for (i, b) in body.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        (h[0] & 0x0F, String::from_utf8(body).unwrap())
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pusher_subscribe_conversation() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = pair().await;
        let fake = tokio::spawn(async move {
            server
                .write_all(&server_text(
                    r#"{"event":"pusher:connection_established","data":"{}"}"#,
                ))
                .await
                .unwrap();
            // A WebSocket ping and a Pusher ping before the subscription.
            server.write_all(b"\x89\x01p").await.unwrap();
            server
                .write_all(&server_text(r#"{"event":"pusher:ping","data":{}}"#))
                .await
                .unwrap();
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(client_frame(&mut server).await);
            }
            server
                .write_all(&server_text(
                    r#"{"event":"pusher_internal:subscription_succeeded","channel":"ch-1"}"#,
                ))
                .await
                .unwrap();
            // Leftover after the confirmation stays in the buffer.
            server
                .write_all(&server_text(r#"{"event":"x","data":"1:2:"}"#))
                .await
                .unwrap();
            seen
        });
        let mut buf = Vec::new();
        Protocol::Pusher
            .subscribe(&mut client, &mut buf, [1, 2, 3, 4], "ch-1")
            .await
            .unwrap();
        let seen = fake.await.unwrap();
        // Subscribes as soon as the connection is established, then answers
        // the pings that were already on their way.
        assert_eq!(
            seen[0],
            (
                0x1,
                r#"{"event":"pusher:subscribe","data":{"channel":"ch-1"}}"#.to_string()
            )
        );
        assert_eq!(seen[1], (0xA, "p".to_string()), "pong echoes the ping");
        assert_eq!(
            seen[2],
            (0x1, String::from_utf8(PUSHER_PONG.to_vec()).unwrap())
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pusher_error_and_native_refusal_are_reported() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = pair().await;
        server
            .write_all(&server_text(
                r#"{"event":"pusher:error","data":{"code":4001,"message":"no app"}}"#,
            ))
            .await
            .unwrap();
        let err = Protocol::Pusher
            .subscribe(&mut client, &mut Vec::new(), [0; 4], "c")
            .await
            .unwrap_err();
        assert!(err.contains("4001"), "{err}");

        let (mut client, mut server) = pair().await;
        let fake = tokio::spawn(async move {
            let cmd = client_frame(&mut server).await;
            server
                .write_all(&server_text(
                    r#"{"id":1,"error":{"code":105,"message":"reserved"}}"#,
                ))
                .await
                .unwrap();
            cmd
        });
        let err = Protocol::Native
            .subscribe(&mut client, &mut Vec::new(), [9; 4], "#x")
            .await
            .unwrap_err();
        assert!(err.starts_with("subscribe refused"), "{err}");
        let (_, cmd) = fake.await.unwrap();
        assert_eq!(
            cmd,
            r##"{"id":1,"method":"subscribe","params":{"channel":"#x"}}"##
        );
    }

    #[test]
    fn classifies_socketio() {
        let p = Protocol::SocketIo;
        assert_eq!(
            p.classify(br#"42["message","11:222:xx"]"#),
            Inbound::Payload { seq: 11, ts: 222 }
        );
        assert_eq!(p.classify(b"2"), Inbound::AppPing);
        assert_eq!(p.pong(), b"3");
        assert_eq!(p.classify(br#"431["ok"]"#), Inbound::Other);
        assert_eq!(p.classify(br#"42["message","x"]"#), Inbound::Other);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn socketio_subscribe_conversation() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = pair().await;
        let fake = tokio::spawn(async move {
            server
                .write_all(&server_text(r#"0{"sid":"a","pingInterval":25000}"#))
                .await
                .unwrap();
            let connect = client_frame(&mut server).await;
            server.write_all(&server_text("2")).await.unwrap();
            server
                .write_all(&server_text(r#"40{"sid":"b"}"#))
                .await
                .unwrap();
            let pong = client_frame(&mut server).await;
            let subscribe = client_frame(&mut server).await;
            server
                .write_all(&server_text(r#"431["ok"]"#))
                .await
                .unwrap();
            vec![connect, pong, subscribe]
        });
        let mut buf = Vec::new();
        Protocol::SocketIo
            .subscribe(&mut client, &mut buf, [5, 6, 7, 8], "room-1")
            .await
            .unwrap();
        let seen = fake.await.unwrap();
        assert_eq!(seen[0], (0x1, "40".to_string()));
        assert_eq!(seen[1], (0x1, "3".to_string()));
        assert_eq!(seen[2], (0x1, r#"421["subscribe","room-1"]"#.to_string()));
    }

    #[test]
    fn paths() {
        assert_eq!(
            Protocol::Plain.path("", "a b/c", "k"),
            "/?channel=a%20b%2Fc"
        );
        assert_eq!(Protocol::Native.path("/base", "x", "k"), "/base/ws");
        assert_eq!(
            Protocol::Pusher.path("", "x", "app-key"),
            "/app/app-key?protocol=7&client=duplex-bench&version=1"
        );
        assert_eq!(
            Protocol::SocketIo.path("", "x", "k"),
            "/socket.io/?EIO=4&transport=websocket"
        );
    }
}
