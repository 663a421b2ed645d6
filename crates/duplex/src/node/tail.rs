//! What this node has seen of each history channel it holds: the last
//! position it delivered (where a repair starts after a broker reconnect)
//! and, once a client subscribed through it, an unbroken run of the
//! channel's latest offsets, so later subscribe positions and recoveries
//! are answered here instead of by one broker read each: a recovery storm
//! of 2,000 clients of one channel costs one read, not 2,000.
//!
//! Why a run answers correctly: it is only opened under the channel's
//! stripe lock by a connection whose subscription the broker confirmed, and
//! dropped when the node leaves the channel, so every publication above its
//! top reaches this node live, after the run is read. A reader that joined
//! the channel before reading the run therefore gets the run's part from
//! the run and everything later live (its gate drops late copies at or
//! below what it read, `conn::gate`). A run grows only by the next offset;
//! anything else (a gap, another epoch) starts it again from there. A
//! broker reconnect marks every run stale (neither answered nor merged)
//! until the channel's repair ends.
//!
//! Bounded: a channel keeps at most what one recovery may ask for
//! (`min(history_size, recovery_max_publications)`, 1 in `cache` mode,
//! nothing for channels nobody recovered on), all channels together at
//! most [`BUDGET_BYTES`] of payloads, and nothing older than
//! `history_ttl` (positions: `history_meta_ttl`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_protocol::channel::ChannelName;
use parking_lot::Mutex;

use crate::broker::history::{HistoryPage, Query};
use crate::message::{Position, Publication};
use crate::permissions::HistoryRule;

/// Most payload bytes all runs of a node keep together.
pub(super) const BUDGET_BYTES: usize = 64 << 20;

/// The runs and delivered positions of the history channels held here.
#[derive(Debug, Default)]
pub(super) struct Tails {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    channels: HashMap<ChannelName, Tail>,
    /// Payload bytes kept by every run.
    bytes: usize,
    generations: u64,
}

#[derive(Debug)]
struct Tail {
    /// Changes whenever the run may no longer follow the broker: a
    /// merge started under another generation is dropped.
    generation: u64,
    /// The last position delivered here: a repair reads from it.
    delivered: Option<Position>,
    /// Set by [`Tails::open`]: the run is followed and answered.
    limits: Option<Limits>,
    /// Since a broker reconnect, until the repair ends.
    stale: bool,
    run: Option<Run>,
}

/// How much a run keeps and how long it may be answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    /// Most publications kept.
    pub(super) cap: usize,
    /// `history_ttl`: the broker keeps nothing longer after the last publish.
    pub(super) ttl: Duration,
    /// `history_meta_ttl`: nor the position.
    pub(super) meta_ttl: Duration,
}

impl Limits {
    /// What a subscriber of `rule` needs: the publications a recovery may
    /// ask for (`recovering`), the latest one in `cache` mode, or none.
    pub(super) fn for_subscriber(rule: &HistoryRule, recovering: bool) -> Limits {
        let cap = match (rule.cache, recovering) {
            (true, _) => 1,
            (false, true) => rule.size.min(rule.recovery_max),
            (false, false) => 0,
        };
        Limits {
            cap,
            ttl: rule.ttl,
            meta_ttl: rule.meta_ttl,
        }
    }
}

/// Every offset above `base` up to `top` of one epoch, in `kept`.
#[derive(Debug)]
struct Run {
    epoch: Arc<str>,
    base: u64,
    kept: VecDeque<Publication>,
    bytes: usize,
    /// When the last publication arrived (or the run was read).
    seen: Instant,
}

/// Proof that a reader joined the channel before it read: the run it may
/// merge its read into, if that run is still the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    generation: u64,
}

impl Run {
    fn top(&self) -> u64 {
        self.base + self.kept.len() as u64
    }

    fn position(&self) -> Position {
        Position {
            offset: self.top(),
            epoch: self.epoch.clone(),
        }
    }
}

impl Tails {
    /// A publication a repair delivers here.
    /// `held` says whether the node holds the channel: a late copy for a
    /// channel it left makes no entry (it would never be removed).
    pub(super) fn note(&self, p: &Publication, held: impl FnOnce() -> bool) {
        let _ = self.record(p, held, false);
    }

    /// A live publication, noted unless it skips offsets after the last
    /// one delivered here in the same epoch (their live copies never
    /// arrived): then `Err` with where this node stood, nothing noted.
    pub(super) fn note_live(
        &self,
        p: &Publication,
        held: impl FnOnce() -> bool,
    ) -> Result<(), Position> {
        self.record(p, held, true)
    }

    /// One lock for the gap check and the note.
    fn record(
        &self,
        p: &Publication,
        held: impl FnOnce() -> bool,
        refuse_gaps: bool,
    ) -> Result<(), Position> {
        let Some(at) = &p.position else {
            return Ok(());
        };
        let mut state = self.state.lock();
        let State {
            channels, bytes, ..
        } = &mut *state;
        if !channels.contains_key(&p.channel) && !held() {
            return Ok(());
        }
        let tail = channels.entry(p.channel.clone()).or_insert_with(|| Tail {
            generation: 0,
            delivered: None,
            limits: None,
            stale: false,
            run: None,
        });
        if let Some(d) = &tail.delivered {
            if refuse_gaps && d.epoch == at.epoch && at.offset > d.offset.saturating_add(1) {
                return Err(d.clone());
            }
        }
        let newer = tail
            .delivered
            .as_ref()
            .is_none_or(|d| d.epoch != at.epoch || d.offset < at.offset);
        if newer {
            tail.delivered = Some(at.clone());
        }
        if let Some(limits) = tail.limits {
            follow(&mut tail.run, p, at, limits.cap, bytes);
            trim(tail, bytes);
        }
        Ok(())
    }

    /// Starts following `channel` for a subscriber that joined it (the
    /// caller holds the channel's stripe lock and the broker confirmed
    /// the subscription): later subscribers may be answered from the run.
    pub(super) fn open(&self, channel: &ChannelName, limits: Limits) -> Option<Ticket> {
        let mut state = self.state.lock();
        state.generations += 1;
        let fresh = state.generations;
        let State {
            channels, bytes, ..
        } = &mut *state;
        let tail = channels.entry(channel.clone()).or_insert_with(|| Tail {
            generation: fresh,
            delivered: None,
            limits: None,
            stale: false,
            run: None,
        });
        if tail.stale {
            return None;
        }
        match &mut tail.limits {
            Some(known) => {
                known.cap = known.cap.max(limits.cap);
                known.ttl = limits.ttl;
                known.meta_ttl = limits.meta_ttl;
            }
            None => {
                // Followed from now on: what it saw before may predate
                // this subscription of the broker.
                tail.generation = fresh;
                drop_run(tail, bytes);
                tail.limits = Some(limits);
            }
        }
        trim(tail, bytes);
        Some(Ticket {
            generation: tail.generation,
        })
    }

    /// Answers `query` from the run, when it holds all of it.
    pub(super) fn serve(&self, channel: &ChannelName, query: Query) -> Option<HistoryPage> {
        let mut state = self.state.lock();
        let State {
            channels, bytes, ..
        } = &mut *state;
        let tail = channels.get_mut(channel)?;
        let limits = tail.limits?;
        if tail.stale {
            return None;
        }
        let run = tail.run.as_mut()?;
        let age = run.seen.elapsed();
        if age > limits.meta_ttl {
            return None;
        }
        if age > limits.ttl && !run.kept.is_empty() {
            // The broker dropped them by now: so does the run.
            *bytes -= run.bytes;
            run.base = run.top();
            run.kept.clear();
            run.bytes = 0;
        }
        answer(run, query)
    }

    /// Takes in what a reader holding `ticket` read from the broker.
    pub(super) fn merge(&self, channel: &ChannelName, ticket: Ticket, page: &HistoryPage) {
        let mut state = self.state.lock();
        let State {
            channels, bytes, ..
        } = &mut *state;
        let Some(tail) = channels.get_mut(channel) else {
            return;
        };
        if tail.stale || tail.generation != ticket.generation || tail.limits.is_none() {
            return;
        }
        if tail.delivered.is_none() {
            tail.delivered = Some(page.top.clone());
        }
        let merged = merged_run(tail.run.take(), page, bytes);
        tail.run = merged;
        trim(tail, bytes);
    }

    /// The broker lost its connection: every run is stale until repaired;
    /// answers the channels to repair and where each stood.
    pub(super) fn stale_all(&self) -> Vec<(ChannelName, Position)> {
        let mut state = self.state.lock();
        state.generations += 1;
        let fresh = state.generations;
        state
            .channels
            .iter_mut()
            .filter_map(|(channel, tail)| {
                tail.stale = true;
                tail.generation = fresh;
                tail.delivered.clone().map(|at| (channel.clone(), at))
            })
            .collect()
    }

    /// Where a repair of `channel` would start.
    #[cfg(test)]
    fn delivered(&self, channel: &ChannelName) -> Option<Position> {
        let state = self.state.lock();
        state.channels.get(channel)?.delivered.clone()
    }

    /// `channel` is repaired: its run follows the broker again.
    pub(super) fn repaired(&self, channel: &ChannelName) {
        if let Some(tail) = self.state.lock().channels.get_mut(channel) {
            tail.stale = false;
        }
    }

    /// Forgets `channel` (the node left it, or its repair failed).
    pub(super) fn remove(&self, channel: &ChannelName) {
        let mut state = self.state.lock();
        if let Some(mut tail) = state.channels.remove(channel) {
            drop_run(&mut tail, &mut state.bytes);
        }
    }

    /// Payload bytes kept (for tests and the budget).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

/// Grows `run` by one delivered publication, or starts it again there.
fn follow(run: &mut Option<Run>, p: &Publication, at: &Position, cap: usize, bytes: &mut usize) {
    if let Some(r) = run {
        if r.epoch == at.epoch && at.offset <= r.top() {
            return; // a late copy of what the run holds
        }
        if r.epoch == at.epoch && at.offset == r.top() + 1 {
            r.seen = Instant::now();
            push(r, p.clone(), cap, bytes);
            return;
        }
        *bytes -= r.bytes;
    }
    let mut r = Run {
        epoch: at.epoch.clone(),
        base: at.offset.saturating_sub(1),
        kept: VecDeque::new(),
        bytes: 0,
        seen: Instant::now(),
    };
    push(&mut r, p.clone(), cap, bytes);
    *run = Some(r);
}

/// Appends the next offset (kept only when `cap` allows).
fn push(run: &mut Run, p: Publication, cap: usize, bytes: &mut usize) {
    if cap == 0 {
        run.base += 1;
        return;
    }
    run.bytes += p.payload.len();
    *bytes += p.payload.len();
    run.kept.push_back(p);
}

/// Drops the oldest kept publications over the channel's cap or the
/// node's budget.
fn trim(tail: &mut Tail, bytes: &mut usize) {
    let cap = tail.limits.map_or(0, |l| l.cap);
    let Some(run) = &mut tail.run else {
        return;
    };
    while run.kept.len() > cap || (*bytes > BUDGET_BYTES && !run.kept.is_empty()) {
        if let Some(old) = run.kept.pop_front() {
            run.bytes -= old.payload.len();
            *bytes -= old.payload.len();
            run.base += 1;
        }
    }
}

fn drop_run(tail: &mut Tail, bytes: &mut usize) {
    if let Some(run) = tail.run.take() {
        *bytes -= run.bytes;
    }
}

/// The page `query` asks for, when the run holds all of it.
fn answer(run: &Run, query: Query) -> Option<HistoryPage> {
    let top = run.top();
    let publications = match (query.since, query.reverse) {
        (_, _) if query.limit == 0 => Vec::new(),
        (Some(since), false) if since >= run.base && since <= top => {
            let from = usize::try_from(since - run.base).ok()?;
            run.kept
                .iter()
                .skip(from)
                .take(query.limit)
                .cloned()
                .collect()
        }
        (None, true) if query.limit <= run.kept.len() || run.base == 0 => {
            run.kept.iter().rev().take(query.limit).cloned().collect()
        }
        _ => return None,
    };
    Some(HistoryPage {
        top: run.position(),
        publications,
    })
}

/// `run` with a broker page merged in, when they join into one unbroken
/// run of one epoch (else whichever reaches further, or the run as it was).
fn merged_run(run: Option<Run>, page: &HistoryPage, bytes: &mut usize) -> Option<Run> {
    let read = page_run(page);
    let Some(mut run) = run else {
        *bytes += read.bytes;
        return Some(read);
    };
    if run.epoch != read.epoch || read.top() < run.base {
        // Another epoch, or older than the run: keep following the run.
        return Some(run);
    }
    if read.base > run.top() {
        // The read is ahead of what arrived live (that follows late): the
        // run answers correctly either way; keep whichever holds more.
        if read.kept.len() <= run.kept.len() {
            return Some(run);
        }
        *bytes -= run.bytes;
        *bytes += read.bytes;
        return Some(read);
    }
    let (run_base, run_top) = (run.base, run.top());
    let mut before: Vec<Publication> = Vec::new();
    for p in read.kept {
        let offset = p.position.as_ref().map_or(0, |at| at.offset);
        if offset <= run_base {
            before.push(p);
        } else if offset > run_top {
            run.bytes += p.payload.len();
            *bytes += p.payload.len();
            run.kept.push_back(p);
        }
    }
    for p in before.into_iter().rev() {
        run.bytes += p.payload.len();
        *bytes += p.payload.len();
        run.kept.push_front(p);
        run.base -= 1;
    }
    Some(run)
}

/// The longest unbroken run a page holds up to its top (only the
/// position when its publications stop short of the top).
fn page_run(page: &HistoryPage) -> Run {
    let top = page.top.offset;
    let mut ordered: Vec<&Publication> = page
        .publications
        .iter()
        .filter(|p| {
            p.position
                .as_ref()
                .is_some_and(|at| at.epoch == page.top.epoch)
        })
        .collect();
    ordered.sort_by_key(|p| p.position.as_ref().map_or(0, |at| at.offset));
    let mut kept = VecDeque::new();
    let mut want = top;
    for p in ordered.into_iter().rev() {
        if p.position.as_ref().map_or(0, |at| at.offset) != want || want == 0 {
            break;
        }
        kept.push_front(p.clone());
        want -= 1;
    }
    let bytes = kept.iter().map(|p| p.payload.len()).sum();
    Run {
        epoch: page.top.epoch.clone(),
        base: want,
        kept,
        bytes,
        seen: Instant::now(),
    }
}

#[cfg(test)]
mod tests;
