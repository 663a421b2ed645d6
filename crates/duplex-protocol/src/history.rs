//! Positions in a channel's history and what `subscribe` (with `recover`)
//! and `history` carry about them.
//!
//! A history channel numbers its publications: `offset` is +1 per
//! publication, and `epoch` names the run of offsets (it changes whenever
//! the history may have lost data). A client keeps the last `{epoch,
//! offset}` it saw per channel and sends it back in `subscribe`'s
//! `recover` to get what it missed, or `recovered: false` when that is no
//! longer possible.

use std::collections::HashMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::payload::{write_data_field, JsonForm};

/// Where a client stands in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The run of offsets this one belongs to.
    pub epoch: String,
    /// The last publication seen (0: none yet).
    pub offset: u64,
}

/// Per channel, what `recover` asked for, keyed by channel name.
pub type RecoverParams = HashMap<String, StreamPosition>;

/// One channel's history state in a `subscribe` result.
#[derive(Debug, Serialize)]
pub struct ChannelPosition<'a> {
    /// The channel's epoch.
    pub epoch: &'a str,
    /// Its last offset when the subscription took effect.
    pub offset: u64,
    /// Present when the client asked to recover: whether every missed
    /// publication follows (`true`), or the app must reload (`false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// Result of `subscribe`: the channels now affected and, for history
/// channels, where each stands.
#[derive(Debug, Serialize)]
pub struct SubscribeResult<'a> {
    /// Channel names, in request order.
    pub channels: &'a [&'a str],
    /// History channels' positions, by name.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    pub positions: Vec<(&'a str, ChannelPosition<'a>)>,
}

/// Serializes `(name, position)` pairs as a JSON object.
pub(crate) fn as_map<S: serde::Serializer>(
    entries: &[(&str, ChannelPosition<'_>)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(entries.iter().map(|(k, v)| (k, v)))
}

/// Parameters of `history`.
#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    /// The channel to read.
    pub channel: String,
    /// Only publications at offsets above this one (compare the result's
    /// `epoch` with yours: offsets of another epoch mean nothing);
    /// absent: from the oldest kept.
    #[serde(default)]
    pub since: Option<u64>,
    /// At most this many (the server caps it at the channel's
    /// `history_size`).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Newest first (with `since`: the newest ones above it).
    #[serde(default)]
    pub reverse: bool,
}

/// One kept publication, as `history` lists it.
#[derive(Debug, Clone, Copy)]
pub struct Kept<'a> {
    /// Its offset.
    pub offset: u64,
    /// Its bytes.
    pub payload: &'a [u8],
    /// How it is shown (as in a `message` push).
    pub form: JsonForm,
}

/// The result object of `history` (and the body of `GET /api/history`):
/// `{"epoch":..,"offset":..,"publications":[{"offset":..,"data":..},..]}`,
/// each publication's `data` as a `message` push shows it.
pub fn write_history_result<'a>(
    w: &mut impl Write,
    epoch: &str,
    offset: u64,
    publications: impl IntoIterator<Item = Kept<'a>>,
) -> std::io::Result<()> {
    w.write_all(b"{\"epoch\":")?;
    serde_json::to_writer(&mut *w, epoch).map_err(std::io::Error::other)?;
    write!(w, ",\"offset\":{offset},\"publications\":[")?;
    for (i, p) in publications.into_iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write!(w, "{{\"offset\":{},", p.offset)?;
        write_data_field(w, p.payload, p.form)?;
        w.write_all(b"}")?;
    }
    w.write_all(b"]}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_result_shows_data_as_pushes_do() {
        let mut out = Vec::new();
        let kept = [
            Kept {
                offset: 4,
                payload: br#"{"a":1}"#,
                form: JsonForm::Json,
            },
            Kept {
                offset: 5,
                payload: b"hi",
                form: JsonForm::Text,
            },
            Kept {
                offset: 6,
                payload: &[0xff],
                form: JsonForm::Base64,
            },
        ];
        write_history_result(&mut out, "e1", 6, kept).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"epoch":"e1","offset":6,"publications":[
                {"offset":4,"data":{"a":1}},
                {"offset":5,"data":"hi"},
                {"offset":6,"data":"/w==","encoding":"base64"},
            ]})
        );
    }

    #[test]
    fn subscribe_results_name_positions_by_channel() {
        let r = SubscribeResult {
            channels: &["news", "chat"],
            positions: vec![(
                "news",
                ChannelPosition {
                    epoch: "e",
                    offset: 3,
                    recovered: Some(true),
                },
            )],
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"channels":["news","chat"],
                "positions":{"news":{"epoch":"e","offset":3,"recovered":true}}})
        );
    }
}
