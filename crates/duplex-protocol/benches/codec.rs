//! Micro-benchmarks of the protocol hot paths: server frame encoding (what
//! the hub does once per publication) and client input decoding (what every
//! reader task does per frame). Counters are payload bytes, so divan shows
//! throughput; run with `cargo bench -p duplex-protocol`.

use bytes::{BufMut as _, BytesMut};
use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use duplex_protocol::command;
use duplex_protocol::payload::json_form;
use duplex_protocol::push;
use duplex_protocol::ws::{encode_frame, Decoder, DecoderLimits, MessageKind, OpCode};

fn main() {
    divan::main();
}

/// Channel name used by every push and command below.
const CHANNEL: &str = "news";

/// Masking key of the client frames (any fixed key will do).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A JSON document of exactly `len` bytes (`len >= 8`): `{"d":"xxx…"}`.
fn json_payload(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"{\"d\":\"");
    out.resize(len - 2, b'x');
    out.extend_from_slice(b"\"}");
    out
}

/// A native `publish` command of exactly `len` bytes, its data padded to fit.
fn publish_json(len: usize) -> Vec<u8> {
    let head = format!(r#"{{"id":1,"method":"publish","params":{{"channel":"{CHANNEL}","data":"#);
    let tail = b"}}";
    let mut out = head.into_bytes();
    let data = json_payload(len - out.len() - tail.len());
    out.extend_from_slice(&data);
    out.extend_from_slice(tail);
    assert_eq!(out.len(), len, "publish command size");
    out
}

/// A native `subscribe` command of exactly `len` bytes: as many channels as fit.
fn subscribe_json(len: usize) -> Vec<u8> {
    let mut out = br#"{"id":1,"method":"subscribe","params":{"channels":["#.to_vec();
    let tail = b"]}}";
    for i in 0.. {
        let name = format!("\"room:{i:05}\",");
        // Leave room for a last name of at least one character plus quotes.
        if out.len() + name.len() + 3 + tail.len() > len {
            break;
        }
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b'"');
    out.resize(len - tail.len() - 1, b'z');
    out.push(b'"');
    out.extend_from_slice(tail);
    assert_eq!(out.len(), len, "subscribe command size");
    out
}

/// A masked, final text frame carrying `payload`, as a browser sends it.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.put_u8(0x81);
    match u16::try_from(payload.len()) {
        Ok(n) if n < 126 => out.put_u8(0x80 | n as u8),
        Ok(n) => {
            out.put_u8(0x80 | 126);
            out.put_u16(n);
        }
        Err(_) => {
            out.put_u8(0x80 | 127);
            out.put_u64(payload.len() as u64);
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// Server frames, encoded once per publication and shared by every subscriber.
mod encode {
    use super::*;

    /// Plain mode (`hub::plain_frame`): header plus one copy of the payload.
    #[divan::bench(args = [16, 128, 4096])]
    fn plain_text_frame(bencher: Bencher, len: usize) {
        let payload = json_payload(len);
        bencher
            .counter(BytesCount::new(len))
            .bench_local(|| encode_frame(OpCode::Text, black_box(&payload)));
    }

    /// Native mode (`hub::native_frame`): JSON check of the payload plus the push envelope.
    #[divan::bench(args = [16, 128, 4096])]
    fn native_json_push(bencher: Bencher, len: usize) {
        let payload = json_payload(len);
        bencher.counter(BytesCount::new(len)).bench_local(|| {
            let payload = black_box(&payload[..]);
            push::message(
                black_box(CHANNEL),
                payload,
                json_form(payload, MessageKind::Text),
                None,
            )
        });
    }
}

/// Client input, once per frame read from a socket.
mod decode {
    use super::*;

    /// One masked text frame through the reader's `Decoder` (header checks, unmask, UTF-8 check).
    #[divan::bench(args = [128, 4096])]
    fn masked_client_frame(bencher: Bencher, len: usize) {
        let frame = client_frame(&publish_json(len));
        let limits = DecoderLimits::default();
        let mut check = BytesMut::from(&frame[..]);
        let decoded = Decoder::new(limits).decode(&mut check);
        assert!(
            matches!(decoded, Ok(Some(_))) && check.is_empty(),
            "bench frame must decode to one message: {decoded:?}"
        );
        bencher
            .counter(BytesCount::new(len))
            .with_inputs(|| BytesMut::from(&frame[..]))
            .bench_local_values(|mut buf| Decoder::new(limits).decode(&mut buf));
    }

    /// A native `subscribe` command (many channels at 4 KiB) through `command::decode`.
    #[divan::bench(args = [128, 4096])]
    fn subscribe_command(bencher: Bencher, len: usize) {
        let frame = subscribe_json(len);
        command::decode(&frame).expect("bench subscribe command must parse");
        bencher
            .counter(BytesCount::new(len))
            .bench_local(|| command::decode(black_box(&frame)));
    }

    /// A native `publish` command (data kept as raw JSON) through `command::decode`.
    #[divan::bench(args = [128, 4096])]
    fn publish_command(bencher: Bencher, len: usize) {
        let frame = publish_json(len);
        command::decode(&frame).expect("bench publish command must parse");
        bencher
            .counter(BytesCount::new(len))
            .bench_local(|| command::decode(black_box(&frame)));
    }
}
