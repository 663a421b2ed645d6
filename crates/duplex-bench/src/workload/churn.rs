//! `churn`: a soak workload. Keeps a population of native-protocol clients
//! that connect, subscribe to a few channels of a pool, leave and join
//! channels, and close after a random lifetime (so thousands come and go
//! every minute), while a publisher posts to the pool at a steady rate
//! through the HTTP API. At the end every subscription is checked against
//! the publisher's ledger (see `ledger` for the exact rule).

mod client;
mod ledger;
mod publisher;
mod report;
mod runs;

pub(crate) use report::ChurnReport;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use crate::cli::ChurnArgs;
use crate::conn::now_us;
use crate::proc;
use crate::report::{round3, Report};
use crate::stats::Errors;
use crate::target::{Server, Sources};
use ledger::{Check, Ledger, SubRecord};
use publisher::{lock, Live, PublisherConfig};
use report::{Counters, Outage};
use runs::Runs;

/// How long the end of the run waits for every client to close.
const CLOSE_ALL: Duration = Duration::from_secs(30);

/// What every client shares (one thread: `Rc`, `RefCell`).
#[derive(Debug)]
pub(super) struct Ctx {
    server: Server,
    sources: Sources,
    source_slots: u64,
    channels_json: Vec<String>,
    subs: (usize, usize),
    life: (Duration, Duration),
    flip_every: Duration,
    abrupt_share: f64,
    setup_timeout: Duration,
    gate: Semaphore,
    stop: watch::Receiver<bool>,
    counters: RefCell<Counters>,
    errors: RefCell<Errors>,
    records: RefCell<Vec<SubRecord>>,
    scratch: RefCell<Vec<u8>>,
    /// Clients spawned and not finished (connecting or connected).
    population: Cell<usize>,
}

impl Ctx {
    fn connect_failed(&self, e: String) {
        self.counters.borrow_mut().connect_failures += 1;
        self.errors.borrow_mut().add(e);
    }

    fn connected(&self) {
        let mut c = self.counters.borrow_mut();
        c.connects += 1;
        c.live += 1;
        c.peak_live = c.peak_live.max(c.live);
    }

    /// Keeps a finished subscription for the final check.
    fn record(&self, ch: u32, on: u64, off: u64, mut runs: Runs) {
        runs.shrink();
        self.records
            .borrow_mut()
            .push(SubRecord { ch, on, off, runs });
    }
}

fn check_args(a: &ChurnArgs) -> Result<(), String> {
    if a.clients == 0 || a.channels == 0 {
        return Err("--clients and --channels must be positive".into());
    }
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err("--rate must be positive".into());
    }
    if a.min_subs == 0 || a.min_subs > a.max_subs || a.max_subs > a.channels {
        return Err("need 1 <= --min-subs <= --max-subs <= --channels".into());
    }
    if a.min_life > a.max_life || a.min_life.is_zero() {
        return Err("need 0 < --min-life <= --max-life".into());
    }
    if !(0.0..=1.0).contains(&a.abrupt) {
        return Err("--abrupt is a share between 0 and 1".into());
    }
    if a.flip_every.is_zero() || a.spawn_rate == 0 {
        return Err("--flip-every and --spawn-rate must be positive".into());
    }
    Ok(())
}

/// Runs the churn workload to its report.
pub(super) async fn run(a: ChurnArgs) -> Result<Report, String> {
    check_args(&a)?;
    let verbose = !a.common.json;
    let server = Server::parse(&a.common.server)?;
    let names: Vec<String> = (0..a.channels)
        .map(|k| format!("{}{k}", a.prefix))
        .collect();
    let channels_json: Vec<String> = names
        .iter()
        .map(|n| serde_json::Value::String(n.clone()).to_string())
        .collect();
    let ledger = Arc::new(Mutex::new(Ledger::new(a.channels)));
    let live = Arc::new(Live::default());
    let publisher = publisher::spawn(
        PublisherConfig {
            http_base: server.http_base.clone(),
            api_key: a.api_key.clone(),
            channels_json: channels_json.clone(),
            rate: a.rate,
            size: a.size,
            health_every: a.health_every,
        },
        Arc::clone(&ledger),
        Arc::clone(&live),
    )?;
    match publisher.ready.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("node not reachable: {e}")),
        Err(_) => return Err("publisher thread ended".into()),
    }
    let (stop_tx, stop) = watch::channel(false);
    let ctx = Rc::new(Ctx {
        sources: Sources::new(&server, a.common.source_offset, a.common.per_source),
        server,
        source_slots: u64::from(a.sources.max(1)),
        channels_json,
        subs: (a.min_subs, a.max_subs),
        life: (a.min_life, a.max_life),
        flip_every: a.flip_every,
        abrupt_share: a.abrupt,
        setup_timeout: a.common.setup_timeout,
        gate: Semaphore::new(a.common.concurrency.max(1)),
        stop,
        counters: RefCell::default(),
        errors: RefCell::default(),
        records: RefCell::default(),
        scratch: RefCell::new(vec![0; 64 * 1024]),
        population: Cell::new(0),
    });
    let started = Instant::now();
    let t0 = now_us();
    if verbose {
        eprintln!(
            "churn: {} clients on {} channels, {}/s for {:?} against {}",
            a.clients, a.channels, a.rate, a.duration, a.common.server
        );
    }
    churn(&ctx, &a, &live, started, verbose).await;

    // Stop publishing, let the last deliveries arrive, close everyone.
    live.stop.store(true, Relaxed);
    let outcome = publisher
        .done
        .await
        .map_err(|_| "publisher thread died".to_string())?;
    tokio::time::sleep(a.drain).await;
    let _ = stop_tx.send(true);
    let closing = Instant::now();
    while ctx.population.get() > 0 && closing.elapsed() < CLOSE_ALL {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed_s = started.elapsed().as_secs_f64();

    let ledger = lock(&ledger);
    let windows = ledger.windows();
    let mut check = Check::default();
    for rec in ctx.records.borrow().iter() {
        ledger.check(&windows, rec, &mut check);
    }
    let (accepted, refused, unanswered) = ledger.totals();
    let rel = |(a, b): (u64, u64)| Outage {
        from_s: round3(a.saturating_sub(t0) as f64 / 1e6),
        to_s: round3(b.min(now_us()).saturating_sub(t0) as f64 / 1e6),
    };
    let mut errors = ctx.errors.borrow().clone();
    errors.merge(&outcome.errors);
    let report = ChurnReport {
        workload: "churn",
        clients: a.clients,
        channels: a.channels,
        rate: a.rate,
        size: a.size,
        duration_s: a.duration.as_secs_f64(),
        elapsed_s: round3(elapsed_s),
        counters: ctx.counters.borrow().clone(),
        published: accepted,
        publish_refused: refused,
        publish_unanswered: unanswered,
        publish_late: outcome.late,
        unhealthy: ledger.unhealthy().iter().copied().map(rel).collect(),
        outage_windows: windows.into_iter().map(rel).collect(),
        check,
        clients_left: ctx.population.get() as u64,
        generator_cpu_s: round3(proc::cpu_seconds(proc::Target::SelfProcess).unwrap_or(0.0)),
        publisher_cpu_s: round3(outcome.cpu_s),
        generator_peak_rss_kib: proc::peak_rss_kib(proc::Target::SelfProcess).unwrap_or(0),
        error_count: errors.total(),
        errors: errors.map().clone(),
    };
    Ok(Report::Churn(Box::new(report)))
}

/// Keeps the population up (at most `--spawn-rate` new clients a second)
/// for `--duration`, printing a progress line every `--progress-every`.
async fn churn(ctx: &Rc<Ctx>, a: &ChurnArgs, live: &Live, started: Instant, verbose: bool) {
    let tick = Duration::from_millis(20);
    let per_tick = ((a.spawn_rate as f64) * tick.as_secs_f64()).ceil().max(1.0) as usize;
    let mut next_client: u64 = 0;
    let mut next_progress = started + a.progress_every;
    let mut last = (Counters::default(), 0u64, 0u64);
    while started.elapsed() < a.duration {
        let mut spawned = 0;
        while ctx.population.get() < a.clients && spawned < per_tick {
            let c = Rc::clone(ctx);
            let i = next_client;
            next_client += 1;
            spawned += 1;
            ctx.population.set(ctx.population.get() + 1);
            tokio::task::spawn_local(async move {
                client::run(Rc::clone(&c), i).await;
                c.population.set(c.population.get() - 1);
            });
        }
        if verbose && Instant::now() >= next_progress {
            next_progress += a.progress_every;
            let c = ctx.counters.borrow().clone();
            let (acc, refd) = (live.accepted.load(Relaxed), live.refused.load(Relaxed));
            let secs = a.progress_every.as_secs_f64();
            eprintln!(
                "  [{:>5.0}s] live {:>5}  connects +{:<5} closes +{:<5} dropped {:<3} subs +{:<5} unsubs +{:<5} pushes {:>6.0}/s  published +{} refused +{}  health {}",
                started.elapsed().as_secs_f64(),
                c.live,
                c.connects - last.0.connects,
                (c.closes_graceful + c.closes_abrupt) - (last.0.closes_graceful + last.0.closes_abrupt),
                c.dropped_by_server,
                c.subscribes - last.0.subscribes,
                c.unsubscribes - last.0.unsubscribes,
                (c.deliveries - last.0.deliveries) as f64 / secs,
                acc - last.1,
                refd - last.2,
                if live.healthy.load(Relaxed) { "ok" } else { "DOWN" },
            );
            last = (c, acc, refd);
        }
        tokio::time::sleep(tick).await;
    }
}
