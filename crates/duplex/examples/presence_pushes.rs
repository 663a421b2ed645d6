//! Join/leave throughput before fan-out falls behind (issue 18,
//! "Performance"): LISTENERS native clients subscribe to a `join_leave`
//! presence channel; then, for each target RATE of changes per second,
//! CHURNERS more clients subscribe and unsubscribe at that pace for SECONDS
//! (each change is a `join` or `leave` push to every listener). Reports the
//! changes made, the pushes the listeners got of those expected, how long
//! after the churn stopped the last one arrived (`drain_ms`: fan-out keeps
//! up while it stays small), and the node's CPU. One JSON line per rate.
//!
//! ```sh
//! cargo run --release --example presence_pushes -- ws://127.0.0.1:1234 \
//!     NODE_PID room:pushes 1000 100,200,400,800 5 20
//! ```
//! (the node must give the channel's namespace `presence = true` and
//! `join_leave = true`: bench/presence.sh starts one so.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{command, cpu_s, round, Ws};

/// How long the listeners may take to get the last push of a round.
const DRAIN: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, node_pid, channel, listeners, rates, seconds, churners] = args.as_slice() else {
        return Err(
            "usage: presence_pushes WS_URL NODE_PID CHANNEL LISTENERS RATE,RATE,... SECONDS CHURNERS"
                .into(),
        );
    };
    let number = |s: &str, what: &str| s.parse::<u64>().map_err(|_| format!("{what}: a number"));
    let listeners = number(listeners, "LISTENERS")? as usize;
    let seconds = number(seconds, "SECONDS")?;
    let churners = number(churners, "CHURNERS")?.max(1);
    let rates: Vec<u64> = rates
        .split(',')
        .map(|r| number(r, "RATE"))
        .collect::<Result<_, _>>()?;
    let ws_url = format!("{server}/ws");

    let pushes = Arc::new(AtomicU64::new(0));
    let mut held = Vec::with_capacity(listeners);
    for chunk in (0..listeners).collect::<Vec<_>>().chunks(250) {
        let batch = chunk.iter().map(|_| subscribed(&ws_url, channel));
        for result in futures_util::future::join_all(batch).await {
            held.push(tokio::spawn(count(result?, pushes.clone())));
        }
    }
    settle(&pushes).await;

    for rate in rates {
        pushes.store(0, Ordering::SeqCst);
        let cpu_before = cpu_s(node_pid)?;
        let started = Instant::now();
        let until = started + Duration::from_secs(seconds);
        // Each churner makes rate / churners changes a second, two per cycle.
        let cycle = Duration::from_secs_f64(2.0 * churners as f64 / rate.max(1) as f64);
        let mut tasks = Vec::new();
        for _ in 0..churners {
            let ws = connect(&ws_url).await?;
            tasks.push(tokio::spawn(churn(ws, channel.clone(), cycle, until)));
        }
        let mut changes = 0;
        for task in tasks {
            changes += task.await.map_err(|e| e.to_string())??;
        }
        let churned = started.elapsed();
        let expected = changes * listeners as u64;
        let drained = Instant::now();
        while pushes.load(Ordering::SeqCst) < expected && drained.elapsed() < DRAIN {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let drain_ms = drained.elapsed().as_secs_f64() * 1e3;
        let took = started.elapsed().as_secs_f64();
        let cpu = cpu_s(node_pid)? - cpu_before;
        settle(&pushes).await;
        println!(
            "{}",
            json!({
                "workload": "pushes", "listeners": listeners, "target_changes_per_s": rate,
                "changes": changes,
                "changes_per_s": round(changes as f64 / churned.as_secs_f64()),
                "pushes_expected": expected,
                "pushes_received": pushes.load(Ordering::SeqCst),
                "deliveries_per_s": round(expected as f64 / took),
                "drain_ms": round(drain_ms),
                "node_cpu_pct": round(cpu * 100.0 / took),
            })
        );
    }
    for task in held {
        task.abort();
    }
    Ok(())
}

/// Waits until no push arrived for half a second.
async fn settle(pushes: &AtomicU64) {
    let mut last = u64::MAX;
    loop {
        let now = pushes.load(Ordering::SeqCst);
        if now == last {
            return;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Connects and subscribes to `channel`.
async fn subscribed(url: &str, channel: &str) -> Result<Ws, String> {
    let mut ws = connect(url).await?;
    command(&mut ws, 1, "subscribe", channel).await?;
    Ok(ws)
}

/// Connects only.
async fn connect(url: &str) -> Result<Ws, String> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    Ok(ws)
}

/// Counts the `join` and `leave` pushes a listener gets.
async fn count(mut ws: Ws, pushes: Arc<AtomicU64>) {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Text(text) = message {
            if text.contains("\"push\":\"join\"") || text.contains("\"push\":\"leave\"") {
                pushes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Subscribes and unsubscribes once per `cycle` until `until`; the changes.
async fn churn(
    mut ws: Ws,
    channel: String,
    cycle: Duration,
    until: Instant,
) -> Result<u64, String> {
    let mut ticks = tokio::time::interval(cycle);
    let (mut id, mut changes) = (0, 0);
    while Instant::now() < until {
        ticks.tick().await;
        id += 2;
        command(&mut ws, id, "subscribe", &channel).await?;
        command(&mut ws, id + 1, "unsubscribe", &channel).await?;
        changes += 2;
    }
    Ok(changes)
}
