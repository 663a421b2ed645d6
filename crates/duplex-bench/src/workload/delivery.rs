//! The delivery workloads (`fanout`, `channels`): connect and subscribe
//! every client, start the publisher, measure the window, wait for the
//! last deliveries, add up.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::stalled::Stalled;
use super::{client_config, Sample};
use crate::cli::{Common, Load};
use crate::conn::{self, now_us, Ctx};
use crate::protocol::Protocol;
use crate::publish::{self, PublishConfig, Via, Window};
use crate::pusher::PusherApp;
use crate::report::{cpu_per_delivery, round3, DeliveryReport, Report};
use crate::stats;

/// Delay between the go signal and the first publish.
const START_DELAY_US: u64 = 100_000;
/// The drain ends early when nothing arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// A delivery workload.
#[derive(Debug)]
pub(super) struct Delivery {
    /// Name in the report.
    pub(super) workload: &'static str,
    /// Subscribers to connect.
    pub(super) subscribers: usize,
    /// The channels; subscriber i is on channel i (own_channel) or 0.
    pub(super) channels: Vec<String>,
    /// Whether subscriber i has channel i.
    pub(super) own_channel: bool,
    /// Measure only; another process publishes (fanout `--listen-only`).
    pub(super) listen_only: bool,
    /// Clients on channel 0 that never read (fanout `--stalled`).
    pub(super) stalled: usize,
    /// HTTP requests in flight.
    pub(super) inflight: usize,
    /// Common flags.
    pub(super) common: Common,
    /// Publishing flags.
    pub(super) load: Load,
}

fn check(d: &Delivery) -> Result<(), String> {
    if d.subscribers == 0 {
        return Err("no subscribers asked for".into());
    }
    if !(d.load.rate > 0.0 && d.load.rate.is_finite()) {
        return Err("--rate must be positive".into());
    }
    if d.load.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if d.common.protocol == Protocol::SocketIo && d.load.via != Via::Http {
        return Err("--protocol socketio publishes only --via http (the /publish route of bench/socketio/server.mjs; its Redis adapter has its own message format)".into());
    }
    if d.load.via == Via::Ws {
        match d.common.protocol {
            Protocol::Pusher => {
                return Err("--via ws is not available with --protocol pusher (Pusher clients may only send client events on private channels): use --via http".into())
            }
            Protocol::Plain if d.channels.len() > 1 => {
                return Err("--via ws --protocol plain publishes only to the connection's own channel: use --protocol native, or --via http/redis".into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs a delivery workload to its report.
pub(super) async fn run(d: Delivery) -> Result<Report, String> {
    check(&d)?;
    let verbose = !d.common.json;
    let cfg = client_config(&d.common)?;
    let server = cfg.server.clone();
    let ctx = Ctx::new(cfg, d.subscribers);
    let own = d.own_channel;
    let stream_of = move |i: usize| if own { i } else { 0 };

    if verbose {
        eprintln!(
            "connecting {} {} subscribers to {} ...",
            d.subscribers,
            d.common.protocol.name(),
            d.common.server
        );
    }
    let ramp = conn::open_all(&ctx, d.subscribers, true, |i| {
        d.channels[stream_of(i)].clone()
    })
    .await;
    if ramp.established == 0 {
        let errors = ctx.stats.borrow().errors.clone();
        let first = errors.map().keys().next().cloned().unwrap_or_default();
        return Err(format!(
            "no subscriber could connect ({} failures; e.g. {first})",
            ramp.failed
        ));
    }
    if verbose {
        eprintln!(
            "  {} connected in {:.2} s ({} failed)",
            ramp.established,
            ramp.elapsed.as_secs_f64(),
            ramp.failed
        );
    }

    let stalled = if d.stalled > 0 {
        let stalled = Stalled::open(&ctx.cfg, d.stalled, d.subscribers, &d.channels[0]).await;
        if verbose {
            eprintln!(
                "  {} stalled clients subscribed (they never read)",
                stalled.len()
            );
        }
        Some(stalled)
    } else {
        None
    };

    let kernel_tcp_peak = watch_kernel_tcp(&ctx);

    let publisher = if d.listen_only {
        None
    } else {
        Some(publish::spawn(PublishConfig {
            via: d.load.via,
            protocol: d.common.protocol,
            server,
            redis_url: d.load.redis.clone(),
            api_key: d.load.api_key.clone(),
            pusher: PusherApp {
                id: d.common.app_id.clone(),
                key: d.common.app_key.clone(),
                secret: d.common.app_secret.clone(),
            },
            event: d.load.event.clone(),
            size: d.load.size,
            rate: d.load.rate,
            inflight: d.inflight,
            channels: d.channels.clone(),
            random: own,
        })?)
    };
    let publisher = match publisher {
        Some(publish::Handle { ready, go, done }) => {
            match ready.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("publisher: {e}")),
                Err(_) => return Err("publisher thread ended".into()),
            }
            Some((go, done))
        }
        None => None,
    };
    let t0 = start_time(d.load.start_at)?;
    let start = t0 + d.load.warmup.as_micros() as u64;
    let window = Window {
        t0,
        start,
        end: start + d.load.duration.as_micros() as u64,
    };
    ctx.stats.borrow_mut().window = (window.start, window.end);
    let publisher = match publisher {
        Some((go, done)) => {
            if go.send(window).is_err() {
                return Err("publisher thread ended".into());
            }
            Some(done)
        }
        None => None,
    };
    if verbose {
        eprintln!(
            "publishing {}/s via {:?} for {:?} (+{:?} warm-up) ...",
            d.load.rate, d.load.via, d.load.duration, d.load.warmup
        );
    }
    tokio::time::sleep(Duration::from_micros(window.start.saturating_sub(now_us()))).await;
    let before = Sample::take(d.common.server_pid);
    let measure_start = Instant::now();

    let outcome = match publisher {
        Some(done) => done
            .await
            .map_err(|_| "publisher thread died".to_string())?,
        None => listen(&ctx, window, d.load.drain).await,
    };
    let expected_total: u64 = {
        let st = ctx.stats.borrow();
        st.subs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.connected)
            .map(|(i, _)| {
                outcome
                    .window_counts
                    .get(stream_of(i))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    };
    let drained = drain(&ctx, expected_total, d.load.drain).await;
    let after = Sample::take(d.common.server_pid);
    let measured_s = measure_start.elapsed().as_secs_f64();
    ctx.finished.set(true);
    let kernel_tcp_peak_kib = kernel_tcp_peak.get();
    let stalled_failures = stalled
        .as_ref()
        .map(|s| s.failures().clone())
        .unwrap_or_default();
    let stalled = match stalled {
        Some(s) => Some(s.inspect().await),
        None => None,
    };

    let st = ctx.stats.borrow();
    let totals = st.totals(|i| {
        outcome
            .window_counts
            .get(stream_of(i))
            .copied()
            .unwrap_or(0)
    });
    let mut errors = st.errors.clone();
    errors.merge(&outcome.errors);
    errors.merge(&stalled_failures);
    let unique = totals.received - totals.duplicates;
    let server_cpu = match (before.server_cpu, after.server_cpu) {
        (Some(a), Some(b)) => Some(round3(b - a)),
        _ => None,
    };
    let generator_cpu = after.generator_cpu - before.generator_cpu;
    let receiver_cpu = after.receiver_cpu - before.receiver_cpu;
    let duration_s = d.load.duration.as_secs_f64();
    let peak = d
        .common
        .server_pid
        .and_then(|pid| crate::proc::peak_rss_kib(crate::proc::Target::Pid(pid)).ok());
    let report = DeliveryReport {
        workload: d.workload,
        protocol: d.common.protocol,
        via: d.load.via,
        subscribers: d.subscribers,
        connected: ramp.established,
        disconnected: ramp.established - ctx.live.get(),
        channels: d.channels.len(),
        rate: d.load.rate,
        size: d.load.size,
        duration_s,
        warmup_s: d.load.warmup.as_secs_f64(),
        published: outcome.window_counts.iter().sum(),
        published_total: outcome.total,
        published_late: outcome.after_window,
        totals: totals.clone(),
        latency_us: stats::latency(&st.latency),
        read_latency_us: stats::latency(&st.read_latency),
        deliveries_per_s: (totals.received as f64 / duration_s).round(),
        connect_s: round3(ramp.elapsed.as_secs_f64()),
        server_cpu_s: server_cpu,
        server_cpu_us_per_delivery: cpu_per_delivery(server_cpu, unique),
        server_rss_kib: after.server_rss,
        server_peak_rss_kib: peak,
        kernel_tcp_peak_kib,
        generator_cpu_s: round3(generator_cpu),
        generator_cpu_us_per_delivery: cpu_per_delivery(Some(generator_cpu), unique),
        receiver_cpu_s: round3(receiver_cpu),
        receiver_cpu_us_per_delivery: cpu_per_delivery(Some(receiver_cpu), unique),
        publisher_cpu_s: round3(outcome.cpu_s),
        measured_s: round3(measured_s),
        drain: drained,
        warmup_received: st.warmup_received,
        other_messages: st.other_messages,
        pings: st.pings,
        error_count: errors.total(),
        errors: errors.map().clone(),
        stalled,
    };
    Ok(Report::Delivery(Box::new(report)))
}

/// Samples the machine's TCP socket memory every 100 ms until the run is
/// over; the cell holds the highest reading (socket buffers of clients that
/// stopped reading are memory the server's RSS does not show).
fn watch_kernel_tcp(ctx: &Rc<Ctx>) -> Rc<Cell<Option<u64>>> {
    let peak = Rc::new(Cell::new(None));
    let (ctx, out) = (ctx.clone(), peak.clone());
    tokio::task::spawn_local(async move {
        while !ctx.finished.get() {
            if let Ok(kib) = crate::proc::kernel_tcp_kib() {
                out.set(Some(out.get().map_or(kib, |p: u64| p.max(kib))));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    peak
}

/// When publishing starts, unix µs: `--start-at`, or just after now.
fn start_time(start_at: Option<f64>) -> Result<u64, String> {
    let now = now_us();
    match start_at {
        None => Ok(now + START_DELAY_US),
        Some(at) => {
            let at = (at * 1e6) as u64;
            if at < now {
                return Err(format!(
                    "--start-at is {:.1} s in the past once every subscriber is connected: give the run more time",
                    (now - at) as f64 / 1e6
                ));
            }
            Ok(at)
        }
    }
}

/// A `--listen-only` process's stand-in for the publisher's outcome: waits
/// out the window, then until in-window messages stop arriving (they may be
/// far behind under overload; at most `limit`), then expects every sequence
/// number between the lowest and highest seen in the window.
async fn listen(ctx: &Ctx, window: Window, limit: Duration) -> publish::Outcome {
    let end = window.end + START_DELAY_US;
    tokio::time::sleep(Duration::from_micros(end.saturating_sub(now_us()))).await;
    let deadline = Instant::now() + limit;
    let mut last = ctx.stats.borrow().window_received;
    let mut last_change = Instant::now();
    while Instant::now() < deadline && last_change.elapsed() < DRAIN_IDLE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = ctx.stats.borrow().window_received;
        if got != last {
            last = got;
            last_change = Instant::now();
        }
    }
    let seen = ctx
        .stats
        .borrow()
        .window_seqs
        .map_or(0, |(lo, hi)| hi - lo + 1);
    publish::Outcome {
        window_counts: vec![seen],
        total: seen,
        ..Default::default()
    }
}

/// How the wait for the last deliveries ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Drain {
    /// Everything expected arrived.
    Complete,
    /// Nothing arrived for [`DRAIN_IDLE`]: what is missing is lost.
    Quiet,
    /// `--drain` ran out while deliveries were still arriving: "lost"
    /// includes messages that were still on their way.
    Deadline,
    /// Every connection is gone.
    Closed,
}

/// Waits until `expected` in-window deliveries arrived, nothing arrived for
/// [`DRAIN_IDLE`], every connection is gone, or `limit` passed.
async fn drain(ctx: &Ctx, expected: u64, limit: Duration) -> Drain {
    let deadline = Instant::now() + limit;
    let mut last = ctx.stats.borrow().window_received;
    let mut last_change = Instant::now();
    loop {
        let got = ctx.stats.borrow().window_received;
        let now = Instant::now();
        if got != last {
            last = got;
            last_change = now;
        }
        if got >= expected {
            return Drain::Complete;
        }
        if ctx.live.get() == 0 {
            return Drain::Closed;
        }
        if now - last_change >= DRAIN_IDLE {
            return Drain::Quiet;
        }
        if now >= deadline {
            return Drain::Deadline;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
