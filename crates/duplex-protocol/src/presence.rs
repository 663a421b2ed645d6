//! Presence as the protocol carries it: the `presence` and
//! `presence_stats` commands' parameters and results, and the `join` /
//! `leave` pushes (docs/PROTOCOL.md, docs/PRESENCE.md).
//!
//! A member is one connection: `conn` (its id, `<node>.<seq>`), `user`
//! (`""`: anonymous) and `info` (the token's `info` claim, any JSON; absent
//! when the token had none). Pushes name a user, with the connection that
//! made them join or the last one that left: the shape Pusher's
//! `member_added` / `member_removed` need (`user_id` + `user_info`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Parameters of `presence` and `presence_stats`.
#[derive(Debug, Deserialize)]
pub struct PresenceParams {
    /// The channel asked about.
    pub channel: String,
}

/// One member as `presence` lists it.
#[derive(Debug, Serialize)]
pub struct MemberView<'a> {
    /// Its connection id.
    pub conn: &'a str,
    /// Its user id; `""` when anonymous.
    pub user: &'a str,
    /// The token's `info` claim; absent when there was none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

/// Result of `presence` (and body of `GET /api/presence`).
#[derive(Debug, Serialize)]
pub struct PresenceResult<'a> {
    /// Every member connection, in no particular order.
    pub members: Vec<MemberView<'a>>,
}

/// Result of `presence_stats` (and body of `GET /api/presence_stats`).
#[derive(Debug, Serialize)]
pub struct PresenceStatsResult {
    /// Member connections.
    pub connections: u64,
    /// Distinct users (each anonymous connection counts as one).
    pub users: u64,
}

/// Whether a push says a user joined or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// The user's first connection in the channel came.
    Join,
    /// The user's last connection in the channel went.
    Leave,
}

/// A `join` or `leave` push:
/// `{"push":"join","channel":"room","user":"ada","conn":"n1.7","info":{..}}`.
/// Nodes also pass it to each other as is (docs/PRESENCE.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresencePush<'a> {
    /// `join` or `leave`.
    pub push: Presence,
    /// The channel.
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// The user who joined or left; `""` when anonymous.
    #[serde(borrow)]
    pub user: Cow<'a, str>,
    /// The connection that made them join, or the last one that left.
    #[serde(borrow)]
    pub conn: Cow<'a, str>,
    /// That connection's token `info`; absent when there was none.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
    /// Between nodes only (clients never see it): the change's place in
    /// the channel's order, so a node can drop a user's push that crossed
    /// a newer one on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

impl PresencePush<'_> {
    /// The push as JSON text (what nodes pass each other).
    pub fn to_json(&self) -> Vec<u8> {
        // Our own plain structs always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The push as a server frame (without the nodes' `at`).
    pub fn frame(&self) -> bytes::Bytes {
        crate::push::json_frame(&PresencePush {
            at: None,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_round_trips_with_its_info() {
        let info = RawValue::from_string(r#"{"name":"Ada"}"#.into()).unwrap();
        let push = PresencePush {
            push: Presence::Join,
            channel: "room".into(),
            user: "ada".into(),
            conn: "n1.7".into(),
            info: Some(&info),
            at: Some(42),
        };
        let json = push.to_json();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&json).unwrap(),
            serde_json::json!({"push":"join","channel":"room","conn":"n1.7","user":"ada","info":{"name":"Ada"},"at":42})
        );
        let back: PresencePush<'_> = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.push, Presence::Join);
        assert_eq!(back.user, "ada");
        assert_eq!(back.info.unwrap().get(), r#"{"name":"Ada"}"#);
        assert_eq!(back.at, Some(42));
        // Clients never see the nodes' stamp.
        let frame = back.frame();
        let body = &frame[frame.iter().position(|b| *b == b'{').unwrap()..];
        let frame: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert!(frame.get("at").is_none(), "{frame}");
        assert_eq!(frame["user"], "ada");
    }

    #[test]
    fn a_member_without_info_has_no_info_field() {
        let m = MemberView {
            conn: "n1.8",
            user: "",
            info: None,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"conn":"n1.8","user":""}"#
        );
    }
}
