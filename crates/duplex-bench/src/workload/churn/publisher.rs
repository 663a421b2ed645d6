//! The churn publisher, on its own thread: `POST /api/publish` one request
//! at a time at a steady rate over the channel pool, every attempt and the
//! node's answer in the ledger; and a `/health` poll that records when the
//! node said its broker was away.
//!
//! Payloads are `<seq>:<sent unix µs>:<channel index>:` padded with `x`;
//! `seq` counts per channel from 0 and is the attempt's index in the ledger.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ledger::Ledger;
use crate::conn::now_us;
use crate::proc;
use crate::stats::Errors;

/// A request that could not start this long after it was due counts as late.
const LATE: Duration = Duration::from_secs(1);
/// Bound on one publish or health request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the publisher thread needs.
#[derive(Debug, Clone)]
pub(super) struct PublisherConfig {
    /// `http://host:port` of the node.
    pub(super) http_base: String,
    /// `Authorization: apikey <key>`.
    pub(super) api_key: Option<String>,
    /// JSON-encoded channel names of the pool.
    pub(super) channels_json: Vec<String>,
    /// Messages per second, over all channels.
    pub(super) rate: f64,
    /// Payload bytes.
    pub(super) size: usize,
    /// Interval of the `/health` poll.
    pub(super) health_every: Duration,
}

/// Live counters, read by the progress line.
#[derive(Debug, Default)]
pub(super) struct Live {
    /// Publishes accepted (HTTP 2xx).
    pub(super) accepted: AtomicU64,
    /// Publishes refused or failed.
    pub(super) refused: AtomicU64,
    /// The last `/health` poll was OK.
    pub(super) healthy: AtomicBool,
    /// Set to stop publishing and polling.
    pub(super) stop: AtomicBool,
}

/// What the publisher thread reports at the end.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Requests that started more than [`LATE`] after they were due.
    pub(super) late: u64,
    /// Why publishes failed.
    pub(super) errors: Errors,
    /// CPU seconds of the thread.
    pub(super) cpu_s: f64,
}

/// The running publisher thread.
#[derive(Debug)]
pub(super) struct Handle {
    /// Resolves after the first `/health` answer (an error if the node did
    /// not answer at all).
    pub(super) ready: oneshot::Receiver<Result<(), String>>,
    /// Resolves when the thread is done (after `Live::stop`).
    pub(super) done: oneshot::Receiver<Outcome>,
}

/// Starts the thread: it polls `/health` and, once healthy, publishes.
pub(super) fn spawn(
    cfg: PublisherConfig,
    ledger: Arc<Mutex<Ledger>>,
    live: Arc<Live>,
) -> Result<Handle, String> {
    let (ready_tx, ready) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("publisher runtime: {e}"))?;
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            let outcome = local.block_on(&runtime, async move {
                let health = tokio::task::spawn_local(poll_health(
                    client.clone(),
                    cfg.clone(),
                    Arc::clone(&ledger),
                    Arc::clone(&live),
                    ready_tx,
                ));
                let outcome = publish(&client, &cfg, &ledger, &live).await;
                let _ = health.await;
                outcome
            });
            let _ = done_tx.send(outcome);
        })
        .map_err(|e| format!("publisher thread: {e}"))?;
    Ok(Handle { ready, done })
}

/// Publishes until `live.stop`; waits for the first healthy poll before starting.
async fn publish(
    client: &reqwest::Client,
    cfg: &PublisherConfig,
    ledger: &Mutex<Ledger>,
    live: &Live,
) -> Outcome {
    use rand::Rng as _;
    let mut outcome = Outcome::default();
    while !live.healthy.load(Relaxed) && !live.stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{}/api/publish", cfg.http_base);
    let period = Duration::from_secs_f64(1.0 / cfg.rate);
    let start = Instant::now();
    let mut body = String::new();
    let mut k: u32 = 0;
    while !live.stop.load(Relaxed) {
        let due = start + period * k;
        k = k.wrapping_add(1);
        let now = Instant::now();
        if now < due {
            tokio::time::sleep_until(due).await;
        } else if now - due > LATE {
            outcome.late += 1;
        }
        let ch = rand::rng().random_range(0..cfg.channels_json.len());
        let sent = now_us();
        let seq = lock(ledger).begin(ch, sent);
        body.clear();
        body.push_str(r#"{"channel":"#);
        body.push_str(&cfg.channels_json[ch]);
        body.push_str(r#","data":""#);
        let prefix = body.len();
        body.push_str(&format!("{seq}:{sent}:{ch}:"));
        while body.len() - prefix < cfg.size {
            body.push('x');
        }
        body.push_str(r#""}"#);
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(key) = &cfg.api_key {
            request = request.header("authorization", format!("apikey {key}"));
        }
        let ok = match request.send().await {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let text: String = text.chars().take(120).collect();
                outcome.errors.add(format!("publish HTTP {status}: {text}"));
                false
            }
            Err(e) => {
                outcome.errors.add(format!("publish: {e}"));
                false
            }
        };
        lock(ledger).finish(ch, seq, now_us(), ok);
        if ok {
            live.accepted.fetch_add(1, Relaxed);
        } else {
            live.refused.fetch_add(1, Relaxed);
        }
    }
    outcome.cpu_s = proc::cpu_seconds(proc::Target::SelfThread).unwrap_or(0.0);
    outcome
}

/// Polls `/health` until `live.stop`, recording the spans it was not OK.
async fn poll_health(
    client: reqwest::Client,
    cfg: PublisherConfig,
    ledger: Arc<Mutex<Ledger>>,
    live: Arc<Live>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let url = format!("{}/health", cfg.http_base);
    let mut ready = Some(ready);
    let mut healthy = true;
    let mut last_ok = now_us();
    let mut tick = tokio::time::interval(cfg.health_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !live.stop.load(Relaxed) {
        tick.tick().await;
        let polled = now_us();
        let answer = client
            .get(&url)
            .timeout(cfg.health_every.max(Duration::from_secs(1)))
            .send()
            .await;
        let ok = matches!(&answer, Ok(r) if r.status().is_success());
        if let Some(tx) = ready.take() {
            match &answer {
                Ok(_) => {
                    let _ = tx.send(Ok(()));
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{url}: {e}")));
                    return;
                }
            }
        }
        if ok {
            if !healthy {
                lock(&ledger).healthy_at(polled);
            }
            last_ok = polled;
        } else if healthy {
            lock(&ledger).unhealthy_from(last_ok);
        }
        healthy = ok;
        live.healthy.store(ok, Relaxed);
    }
}

/// The ledger, even if a panic elsewhere poisoned the lock (it holds plain data).
pub(super) fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}
