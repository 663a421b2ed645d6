//! History in the native protocol: a new subscription on a history channel
//! starts at a known position, and with `recover` first gets what the
//! client missed (all of it, or `recovered: false`: never a part); the
//! `history` command pages through what a channel kept.
//!
//! The subscription/read race: the connection holds the channel's live
//! frames (`Conn::hold`) from before it joins the channel until the reply
//! and the caught-up publications are queued, then lets through only those
//! past the read (`Conn::release`), so nothing is lost or repeated.

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::code::ErrorCode;
use std::sync::Arc;

use duplex_protocol::history::{ChannelPosition, HistoryParams, StreamPosition, SubscribeResult};
use duplex_protocol::push;

use super::rules::{broker_error, parse_channel};
use super::NativeSession;
use super::{Refusal, Reply};
use crate::broker::history::{HistoryPage, Query};
use crate::broker::BrokerError;
use crate::conn::Conn;
use crate::hub::native_frame;
use crate::node::{Node, Ticket};
use crate::permissions::HistoryRule;
use crate::stats::Stats;

/// One new history subscription, caught up and waiting for its reply to go
/// out first.
#[derive(Debug)]
pub(super) struct CaughtUp {
    pub(super) channel: ChannelName,
    pub(super) epoch: std::sync::Arc<str>,
    /// The channel's offset when the subscription took effect.
    pub(super) offset: u64,
    /// `Some` when the client asked to recover.
    pub(super) recovered: Option<bool>,
    /// The missed publications' frames (empty unless recovered).
    pub(super) frames: Vec<Bytes>,
}

/// Reads where a new subscription to `channel` starts, and with `from`
/// what the client missed since (in `cache` mode: only the latest
/// publication, for anyone who has not seen it).
pub(super) async fn catch_up(
    node: &Node,
    channel: &ChannelName,
    rule: &HistoryRule,
    from: Option<&StreamPosition>,
    ticket: Option<Ticket>,
) -> Result<CaughtUp, BrokerError> {
    let query = match (from, rule.cache) {
        (_, true) => Query {
            since: None,
            limit: 1,
            reverse: true,
        },
        // One more than allowed: a longer gap is refused, not cut.
        (Some(from), false) => Query {
            since: Some(from.offset),
            limit: rule.recovery_max.saturating_add(1),
            reverse: false,
        },
        (None, false) => Query {
            since: None,
            limit: 0,
            reverse: false,
        },
    };
    let (_, page) = node.read_history(channel, query, ticket).await?;
    let seen = from.map(|f| crate::message::Position {
        epoch: f.epoch.as_str().into(),
        offset: f.offset,
    });
    let restarted = match &seen {
        Some(seen) => node.restart_if_behind(channel, seen, &page.top).await,
        None => None,
    };
    let (recovered, frames) = if restarted.is_some() {
        // The history lost what the client saw: nothing to replay.
        (Some(false), Vec::new())
    } else if rule.cache {
        latest_only(from, &page)
    } else {
        let recovered = from
            .map(|from| crate::node::fills_gap(&from.epoch, from.offset, &page, rule.recovery_max));
        let frames = match recovered {
            Some(true) => page.publications.iter().map(native_frame).collect(),
            _ => Vec::new(),
        };
        (recovered, frames)
    };
    let stats = node.stats();
    match recovered {
        Some(true) => Stats::bump(&stats.recoveries_recovered),
        Some(false) => Stats::bump(&stats.recoveries_failed),
        None => {}
    }
    let top = restarted.unwrap_or_else(|| page.top.clone());
    Ok(CaughtUp {
        channel: channel.clone(),
        epoch: top.epoch,
        offset: top.offset,
        recovered,
        frames,
    })
}

/// `cache` mode: the latest publication is the channel's state. A client
/// already at the top needs nothing; anyone else gets the latest, if one is
/// kept (recovered), or nothing (not recovered, when it asked).
fn latest_only(from: Option<&StreamPosition>, page: &HistoryPage) -> (Option<bool>, Vec<Bytes>) {
    let at_top =
        from.is_some_and(|from| *from.epoch == *page.top.epoch && from.offset >= page.top.offset);
    if at_top {
        return (Some(true), Vec::new());
    }
    let latest: Vec<Bytes> = page
        .publications
        .first()
        .map(native_frame)
        .into_iter()
        .collect();
    let recovered = from.map(|_| !latest.is_empty() || page.top.offset == 0);
    (recovered, latest)
}

impl NativeSession {
    /// Joins `channel` on this node; a history channel's live frames are
    /// held from before it joins until its caught-up part is queued
    /// ([`release`]), after the reply.
    pub(super) async fn join(
        &mut self,
        node: &Node,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        from: Option<&StreamPosition>,
    ) -> Result<Option<CaughtUp>, BrokerError> {
        let Some(rule) = node.history_rule(channel) else {
            node.subscribe(conn, channel).await?;
            self.channels.insert(channel.clone());
            return Ok(None);
        };
        conn.hold(channel);
        let recovering = from.is_some();
        let ticket = match node
            .subscribe_history(conn, channel, &rule, recovering)
            .await
        {
            Ok(ticket) => ticket,
            Err(e) => {
                conn.discard(channel);
                return Err(e);
            }
        };
        self.channels.insert(channel.clone());
        match catch_up(node, channel, &rule, from, ticket).await {
            Ok(done) => Ok(Some(done)),
            Err(e) => {
                conn.discard(channel);
                self.channels.shift_remove(channel);
                node.unsubscribe(conn, channel).await;
                Err(e)
            }
        }
    }

    /// `history`: the channel's kept publications (after `since`, at most
    /// `limit`, capped by its `history_size`), for a client that may
    /// subscribe to it.
    pub(super) async fn history(
        &self,
        node: &Node,
        conn: &Conn,
        id: u64,
        params: HistoryParams,
    ) -> Reply {
        let channel = parse_channel(node, &params.channel, None)?;
        if !self.channels.contains(&channel) {
            self.may_subscribe(node, conn, &channel, None)?;
        }
        let Some(rule) = node.history_rule(&channel) else {
            return Err(no_history());
        };
        let query = crate::node::history_query(&rule, params.since, params.limit, params.reverse);
        let (_, page) = node
            .read_history(&channel, query, None)
            .await
            .map_err(|e| Refusal::from(broker_error(e)))?;
        Ok(push::history_reply(
            id,
            &page.top.epoch,
            page.top.offset,
            page.publications.iter().map(crate::node::kept),
        ))
    }
}

/// Each caught-up channel's position, as `subscribe` and `connect` answer it.
pub(super) fn positions(caught_up: &[CaughtUp]) -> Vec<(&str, ChannelPosition<'_>)> {
    caught_up
        .iter()
        .map(|c| {
            let at = ChannelPosition {
                epoch: &c.epoch,
                offset: c.offset,
                recovered: c.recovered,
            };
            (c.channel.as_str(), at)
        })
        .collect()
}

/// The `subscribe` reply with each history channel's position.
pub(super) fn subscribe_reply(id: u64, names: &[String], caught_up: &[CaughtUp]) -> Bytes {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let positions = positions(caught_up);
    push::reply(
        id,
        &SubscribeResult {
            channels: &refs,
            positions,
        },
    )
}

/// Queues each caught-up channel's missed publications, then what was held
/// for it after them, and lets its live frames through.
pub(super) fn release(node: &Node, conn: &Conn, caught_up: Vec<CaughtUp>) {
    for done in caught_up {
        if conn
            .release(&done.channel, done.frames, done.offset)
            .is_err()
        {
            Stats::bump(&node.stats().slow_consumer_disconnects);
            tracing::warn!(conn = %conn.id, addr = %conn.remote, channel = %done.channel, "slow consumer disconnected: outbound queue full while catching up");
            return;
        }
    }
}

fn no_history() -> Refusal {
    Refusal::Error(ErrorCode::NoHistory, crate::node::NO_HISTORY.to_string())
}
