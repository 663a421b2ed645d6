//! The envelope that carries a recorded publication's position through a
//! Redis `PUBLISH`: `\xFF` `DXH1 <offset> <epoch> ` then the data, exactly.
//!
//! `\xFF` never starts UTF-8 text, so a backend's text published raw is
//! never mistaken for it and arrives verbatim with no position (the
//! classic demo). A raw *binary* `PUBLISH` that starts with exactly these
//! bytes would be misread as a recorded one: do not publish such bytes.
//! Written by the Redis Function (`broker/redis/functions.lua`), read by
//! the subscriber. Pure.

use bytes::Bytes;

use crate::message::Position;

/// What every envelope starts with.
pub(crate) const MAGIC: &[u8] = b"\xFFDXH1 ";

/// The envelope around `data` (what the Function publishes; for tests).
#[cfg(test)]
pub(crate) fn wrap(offset: u64, epoch: &str, data: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(format!("{offset} {epoch} ").as_bytes());
    out.extend_from_slice(data);
    out
}

/// The data and its position when `payload` is an envelope; else the
/// payload untouched and no position.
pub(crate) fn unwrap(payload: Bytes) -> (Bytes, Option<Position>) {
    match parse(&payload) {
        Some((start, position)) => (payload.slice(start..), Some(position)),
        None => (payload, None),
    }
}

/// Where the data starts, and the position, for an envelope.
fn parse(payload: &[u8]) -> Option<(usize, Position)> {
    let rest = payload.strip_prefix(MAGIC)?;
    let offset_len = rest.iter().position(|b| *b == b' ')?;
    let offset: u64 = std::str::from_utf8(&rest[..offset_len])
        .ok()?
        .parse()
        .ok()?;
    let after = &rest[offset_len + 1..];
    let epoch_len = after.iter().position(|b| *b == b' ')?;
    let epoch = std::str::from_utf8(&after[..epoch_len]).ok()?;
    if epoch.is_empty() {
        return None;
    }
    let start = MAGIC.len() + offset_len + 1 + epoch_len + 1;
    Some((
        start,
        Position {
            offset,
            epoch: epoch.into(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_unwrap_to_data_and_position() {
        for data in [&b"hello"[..], b"", b"with spaces and \xff bytes"] {
            let (got, position) = unwrap(Bytes::from(wrap(42, "e1", data)));
            assert_eq!(got.as_ref(), data);
            let position = position.expect("a position");
            assert_eq!((position.offset, &*position.epoch), (42, "e1"));
        }
    }

    #[test]
    fn anything_else_is_left_verbatim() {
        for raw in [
            &b"plain text"[..],
            b"\xFFDXH1 ",
            b"\xFFDXH1 x e data",
            b"\xFFDXH1 1  data",
            b"\xFFDXH1 1",
            b"\xFF\x00binary",
        ] {
            let (got, position) = unwrap(Bytes::copy_from_slice(raw));
            assert_eq!((got.as_ref(), position), (raw, None));
        }
    }
}
