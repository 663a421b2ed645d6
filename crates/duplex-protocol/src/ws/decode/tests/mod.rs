//! Unit tests of the frame decoder: every rule, positive and negative.
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

mod frames;
mod limits;
mod messages;
mod streams;
