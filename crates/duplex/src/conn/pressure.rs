//! When to batch writes without being told to: the decision, no I/O.
//!
//! Writing each delivery at once is the cheapest way while the node keeps
//! up, and the only way with no added latency. When publications arrive
//! faster than one write per delivery can drain them (a backend pushing
//! through Redis faster than the sockets take it), writing each at once
//! falls further behind with every message: Redis buffers the backlog until
//! it cuts the subscriber, and everything queued is lost. Batching each
//! connection's backlog into one `writev` costs a fraction of the CPU per
//! message, so the node catches up instead.
//!
//! The signal is how much of the wall-clock time fan-out keeps busy: a node
//! that spends most of every window fanning out has no slack left. Once
//! batching is on, fan-out only queues and is cheap, so the way back is
//! judged on fan-out plus the busiest flush lane, and only after a run of
//! calm windows, so the node does not flap at the edge.

use std::time::Duration;

/// How often the load is sampled.
pub(crate) const WINDOW: Duration = Duration::from_millis(100);
/// Busy fraction of a window above which batching starts.
const ENGAGE_AT: f64 = 0.7;
/// Busy fraction (fan-out plus the busiest lane) below which a window is calm.
const CALM_BELOW: f64 = 0.3;
/// Calm windows in a row before batching stops.
const CALM_WINDOWS: u32 = 10;

/// What one window measured, as fractions of its wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Load {
    /// Time spent fanning publications out (concurrent fan-outs add up).
    pub(crate) fanout: f64,
    /// Time the busiest flush lane spent writing.
    pub(crate) flush: f64,
}

/// The batching decision, with its hysteresis.
#[derive(Debug, Default)]
pub(crate) struct Pressure {
    engaged: bool,
    calm: u32,
}

impl Pressure {
    /// Takes one window's load; returns the new decision when it changes.
    pub(crate) fn observe(&mut self, load: Load) -> Option<bool> {
        if !self.engaged {
            if load.fanout >= ENGAGE_AT {
                self.engaged = true;
                self.calm = 0;
                return Some(true);
            }
            return None;
        }
        if load.fanout + load.flush < CALM_BELOW {
            self.calm += 1;
        } else {
            self.calm = 0;
        }
        if self.calm >= CALM_WINDOWS {
            self.engaged = false;
            self.calm = 0;
            return Some(false);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(fanout: f64, flush: f64) -> Load {
        Load { fanout, flush }
    }

    #[test]
    fn a_busy_window_starts_batching_and_a_quiet_one_does_not() {
        let mut p = Pressure::default();
        assert_eq!(p.observe(load(0.5, 0.0)), None);
        assert_eq!(p.observe(load(0.69, 0.0)), None);
        assert_eq!(p.observe(load(0.95, 0.0)), Some(true));
        assert_eq!(p.observe(load(1.5, 0.9)), None, "already on");
    }

    #[test]
    fn batching_stops_only_after_a_run_of_calm_windows() {
        let mut p = Pressure::default();
        p.observe(load(1.0, 0.0));
        for _ in 0..CALM_WINDOWS - 1 {
            assert_eq!(p.observe(load(0.05, 0.1)), None);
        }
        assert_eq!(
            p.observe(load(0.2, 0.2)),
            None,
            "one busy window resets the run"
        );
        for _ in 0..CALM_WINDOWS - 1 {
            assert_eq!(p.observe(load(0.05, 0.1)), None);
        }
        assert_eq!(p.observe(load(0.05, 0.1)), Some(false));
        assert_eq!(p.observe(load(0.05, 0.1)), None, "already off");
    }

    #[test]
    fn cheap_fanout_with_busy_lanes_stays_batched() {
        let mut p = Pressure::default();
        p.observe(load(0.8, 0.0));
        for _ in 0..100 {
            assert_eq!(p.observe(load(0.1, 0.9)), None, "the lanes are behind");
        }
    }
}
