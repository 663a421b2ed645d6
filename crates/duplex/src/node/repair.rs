//! A node repairs a Redis blip by itself: when its subscriber connection
//! comes back, every history channel it holds is read from the last offset
//! it delivered, and what it missed is fanned out, in order, before the
//! channel's live publications, so no client has to reconnect. The same
//! runs for one channel whose offsets jump while connected (live copies the
//! intake dropped under a flood): read back, never skipped. Only when
//! the gap cannot be filled (the epoch changed, or more was missed than the
//! channel keeps) are the channel's native clients closed with 3008, so
//! they resubscribe with `recover` and learn `recovered: false`.
//!
//! While a channel is repaired its live publications wait here (bounded;
//! past the bound the repair fails as above), and afterwards late copies of
//! what the repair delivered are dropped until the broker is past it, as
//! the connection's gate does for one subscriber (`conn::gate`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

use duplex_protocol::code::CloseCode;

use super::*;
use crate::broker::history::Query;
use crate::message::Position;

/// Most bytes of live publications one channel holds while it is repaired.
const MAX_HELD_BYTES: usize = 4 << 20;
/// Most publications a repair reads for one channel.
const MAX_REPAIR: usize = 10_000;
/// Reads a repair tries before it gives up on a broker that answers errors
/// (waiting 100 ms, then twice as long each time: about 3 s in all).
const READ_ATTEMPTS: u32 = 5;

/// The history channels under repair (where each delivered from is the
/// node's run, `node::tail`).
#[derive(Debug, Default)]
pub(super) struct Repairs {
    /// Channels being repaired, or just repaired.
    gates: Mutex<HashMap<ChannelName, Gate>>,
    /// Some gate exists: the one check a delivery pays when none does.
    gated: AtomicBool,
    /// Counts broker reconnects: a repair started for an earlier one stops
    /// as soon as a later one holds its channel again.
    round: std::sync::atomic::AtomicU64,
    /// One repair runs at a time: the next waits for the last to stop.
    running: tokio::sync::Mutex<()>,
}

/// What a repair finds when it looks at its channel's gate again.
#[derive(Debug)]
enum Held {
    /// Live publications that arrived meanwhile, in order.
    More(Vec<Publication>),
    /// None left: the gate now only drops late copies.
    Done,
    /// Over [`MAX_HELD_BYTES`] arrived meanwhile.
    Overflowed,
    /// A later reconnect holds the channel again: its repair takes over.
    Superseded,
}

#[derive(Debug)]
enum Gate {
    /// Under repair from `from`: live publications wait, up to
    /// [`MAX_HELD_BYTES`].
    Holding {
        from: Position,
        /// The reconnect it was closed for ([`Repairs::round`]).
        round: u64,
        held: VecDeque<Publication>,
        bytes: usize,
        overflowed: bool,
    },
    /// Repaired up to this offset: late copies at or below it are dropped.
    Floor(u64),
}

impl Repairs {
    /// Forgets a channel the node no longer holds.
    pub(super) fn forget(&self, channel: &ChannelName) {
        if self.gated.load(Ordering::SeqCst) {
            let mut gates = self.gates.lock();
            gates.remove(channel);
            self.gated.store(!gates.is_empty(), Ordering::SeqCst);
        }
    }

    /// The broker is about to subscribe again: holds the live publications
    /// of every history channel held here (with the position it last
    /// delivered) until it is repaired.
    pub(super) fn close_all(&self, tails: &super::tail::Tails) {
        let mut gates = self.gates.lock();
        // Under the gates' lock, as `take_held` marks a run repaired.
        let delivered = tails.stale_all();
        let round = self.round.fetch_add(1, Ordering::SeqCst) + 1;
        for (channel, from) in delivered {
            gates.insert(
                channel,
                Gate::Holding {
                    from,
                    round,
                    held: VecDeque::new(),
                    bytes: 0,
                    overflowed: false,
                },
            );
        }
        self.gated.store(!gates.is_empty(), Ordering::SeqCst);
    }

    /// Live copies of `first`'s channel were lost before it: holds the
    /// channel (`first` first) until it is repaired from `from`.
    pub(super) fn close_one(&self, from: Position, first: Publication) {
        let mut gates = self.gates.lock();
        let round = self.round.fetch_add(1, Ordering::SeqCst) + 1;
        let bytes = first.payload.len();
        gates.insert(
            first.channel.clone(),
            Gate::Holding {
                from,
                round,
                held: VecDeque::from([first]),
                bytes,
                overflowed: false,
            },
        );
        self.gated.store(true, Ordering::SeqCst);
    }

    /// The channels to repair, where each stood and for which reconnect.
    fn to_repair(&self) -> Vec<(ChannelName, Position, u64)> {
        let gates = self.gates.lock();
        gates
            .iter()
            .filter_map(|(channel, gate)| match gate {
                Gate::Holding { from, round, .. } => Some((channel.clone(), from.clone(), *round)),
                Gate::Floor(_) => None,
            })
            .collect()
    }

    /// Whether `channel` is still held for the repair of reconnect `round`.
    fn current(&self, channel: &ChannelName, round: u64) -> bool {
        matches!(self.gates.lock().get(channel), Some(Gate::Holding { round: r, .. }) if *r == round)
    }

    /// A live publication: `Some` to deliver now, `None` when held for a
    /// repair or already delivered by one.
    pub(super) fn admit(&self, p: Publication) -> Option<Publication> {
        if !self.gated.load(Ordering::SeqCst) {
            return Some(p);
        }
        let mut gates = self.gates.lock();
        let Some(gate) = gates.get_mut(&p.channel) else {
            return Some(p);
        };
        let offset = p.position.as_ref().map(|at| at.offset);
        match (gate, offset) {
            (
                Gate::Holding {
                    held,
                    bytes,
                    overflowed,
                    ..
                },
                _,
            ) => {
                if *bytes + p.payload.len() > MAX_HELD_BYTES {
                    *overflowed = true;
                } else {
                    *bytes += p.payload.len();
                    held.push_back(p);
                }
                None
            }
            (Gate::Floor(floor), Some(at)) if at <= *floor => None,
            (Gate::Floor(_), Some(_)) => {
                gates.remove(&p.channel);
                self.gated.store(!gates.is_empty(), Ordering::SeqCst);
                Some(p)
            }
            (Gate::Floor(_), None) => Some(p),
        }
    }

    /// The publications held for `channel` since the last call, if the
    /// repair of `round` still owns it; once none are left the gate only
    /// drops what is at or below `covered` until the broker is past it.
    fn take_held(
        &self,
        channel: &ChannelName,
        covered: u64,
        round: u64,
        tails: &super::tail::Tails,
    ) -> Held {
        let mut gates = self.gates.lock();
        let Some(gate) = gates.get_mut(channel) else {
            return Held::Done;
        };
        match gate {
            Gate::Holding { round: r, .. } if *r != round => Held::Superseded,
            Gate::Holding {
                overflowed: true, ..
            } => Held::Overflowed,
            Gate::Holding { held, bytes, .. } if !held.is_empty() => {
                *bytes = 0;
                Held::More(held.drain(..).collect())
            }
            _ => {
                *gate = Gate::Floor(covered);
                // Before a later reconnect can make it stale again.
                tails.repaired(channel);
                Held::Done
            }
        }
    }

    /// Giving up on `channel`'s repair: what it held since the last call,
    /// or `None` once nothing is left (the gate is then gone).
    fn drain(&self, channel: &ChannelName, round: u64) -> Option<Vec<Publication>> {
        let mut gates = self.gates.lock();
        if let Some(Gate::Holding {
            held,
            bytes,
            round: r,
            ..
        }) = gates.get_mut(channel)
        {
            if *r != round {
                return None; // a later repair owns it now
            }
            if !held.is_empty() {
                *bytes = 0;
                return Some(held.drain(..).collect());
            }
        }
        gates.remove(channel);
        self.gated.store(!gates.is_empty(), Ordering::SeqCst);
        None
    }
}

impl Node {
    /// Repairs every history channel the node held when its broker
    /// connection dropped (runs as one of the node's tasks; one at a time).
    pub(super) async fn repair(&self) {
        let _one_at_a_time = self.inner.repairs.running.lock().await;
        let channels = self.inner.repairs.to_repair();
        if channels.is_empty() {
            return;
        }
        tracing::info!(
            channels = channels.len(),
            "repairing history channels (a broker reconnect, or live copies lost)"
        );
        for (channel, from, round) in channels {
            self.repair_channel(&channel, &from, round).await;
        }
    }

    async fn repair_channel(&self, channel: &ChannelName, from: &Position, round: u64) {
        let Some(rule) = self.history_rule(channel) else {
            // No history any more (a reload): nothing to repair from.
            return self.give_up(channel, None, round).await;
        };
        let max = rule.size.min(MAX_REPAIR);
        let page = match self.read_missed(channel, from, max, round).await {
            Ok(Some(page)) => page,
            Ok(None) => return, // a later reconnect's repair takes over
            Err(why) => return self.give_up(channel, Some(why), round).await,
        };
        let mut covered = page.top.offset;
        for p in page.publications.iter().cloned() {
            if !self.inner.repairs.current(channel, round) {
                return;
            }
            self.fan_out(p).await;
        }
        loop {
            let tails = &self.inner.tails;
            match self.inner.repairs.take_held(channel, covered, round, tails) {
                Held::Done => break,
                Held::Superseded => return,
                Held::More(held) => {
                    for p in held {
                        let offset = p.position.as_ref().map(|at| at.offset);
                        if offset.is_some_and(|at| at <= covered) {
                            continue;
                        }
                        covered = covered.max(offset.unwrap_or(0));
                        self.fan_out(p).await;
                    }
                }
                Held::Overflowed => {
                    let why = format!("over {MAX_HELD_BYTES} bytes arrived during the repair");
                    return self.give_up(channel, Some(why), round).await;
                }
            }
        }
        Stats::bump(&self.inner.stats.history_repairs);
        tracing::info!(%channel, from = from.offset, to = covered, "history channel repaired: what it missed was read back and delivered in order");
    }

    /// Reads what `channel` missed after `from`: `Ok(None)` when a later
    /// reconnect took the channel over, `Err` with why the gap cannot be
    /// filled (a broker that keeps failing is retried first: a read that
    /// fails for a passing reason must not cost every client a reconnect).
    async fn read_missed(
        &self,
        channel: &ChannelName,
        from: &Position,
        max: usize,
        round: u64,
    ) -> Result<Option<Arc<crate::broker::history::HistoryPage>>, String> {
        let query = Query {
            since: Some(from.offset),
            limit: max.saturating_add(1),
            reverse: false,
        };
        let mut wait = std::time::Duration::from_millis(100);
        for attempt in 1..=READ_ATTEMPTS {
            if !self.inner.repairs.current(channel, round) {
                return Ok(None);
            }
            match self.read_history(channel, query, None).await {
                Ok((_, page)) if fills_gap(&from.epoch, from.offset, &page, max) => {
                    return Ok(Some(page))
                }
                Ok((_, page)) => {
                    self.restart_if_behind(channel, from, &page.top).await;
                    return Err(format!(
                        "{} missed, epoch {} (was {})",
                        page.top.offset.saturating_sub(from.offset),
                        page.top.epoch,
                        from.epoch
                    ));
                }
                Err(e) if attempt == READ_ATTEMPTS => return Err(e.to_string()),
                Err(e) => {
                    tracing::info!(%channel, attempt, error = %e, "history repair read failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        Ok(None)
    }

    /// Delivers one publication here, as the broker's would be.
    async fn fan_out(&self, p: Publication) {
        let hub = &self.inner.hub;
        self.inner.tails.note(&p, || hub.holds(p.channel.as_str()));
        Hub::broadcast_parallel(&self.inner.hub, p).await;
    }

    /// The gap cannot be filled (`why`): the channel's native clients are
    /// closed with 3008 (they resubscribe with `recover` and learn it), and
    /// what was held goes, in order, to those left before live ones do.
    async fn give_up(&self, channel: &ChannelName, why: Option<String>, round: u64) {
        if !self.inner.repairs.current(channel, round) {
            return; // a later reconnect's repair takes over
        }
        self.inner.tails.remove(channel);
        if let Some(why) = why {
            Stats::bump(&self.inner.stats.history_repairs_failed);
            let mut closed = 0usize;
            for conn in self.inner.hub.subscribers(channel.as_str()) {
                if conn.wire == Wire::Native {
                    conn.close(
                        CloseCode::InsufficientState.as_u16(),
                        "messages of a history channel were lost: reconnect and recover",
                        crate::conn::Queued::Flush,
                    );
                    closed += 1;
                }
            }
            tracing::warn!(%channel, why, closed, "history channel not repaired after a broker reconnect: its native clients were closed with 3008 to recover");
        }
        while let Some(held) = self.inner.repairs.drain(channel, round) {
            for p in held {
                self.fan_out(p).await;
            }
        }
    }
}
