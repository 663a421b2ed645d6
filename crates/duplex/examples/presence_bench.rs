//! Presence at 10,000 members, measured (issue 18, "Performance"):
//!
//! 1. MEMBERS native clients subscribe to one presence channel; then
//!    `GET /api/presence_stats`, `GET /api/presence` and the native
//!    `presence` command are timed one after another (p50/p99 ms, answer
//!    size);
//! 2. steady state: Redis `total_commands_processed` (and per command) over
//!    STEADY_SECS with nothing else happening, Redis and node CPU;
//! 3. churn: CHURN extra clients subscribe and unsubscribe the channel as
//!    fast as their replies come for CHURN_SECS: changes/s, subscribe reply
//!    p50/p99, node and Redis CPU; then the member count is checked.
//!
//! One JSON line per part on stdout.
//!
//! ```sh
//! cargo run --release --example presence_bench -- ws://127.0.0.1:1234 \
//!     redis://127.0.0.1:6379 NODE_PID REDIS_PID room:bench 10000 20 100 10
//! ```
//! (the node must give the channel's namespace `presence = true`:
//! bench/presence.sh starts one so.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

mod common;
use common::{command, cpu_s, round, Ws};

const HTTP_STATS: usize = 50;
const HTTP_MEMBERS: usize = 20;
const NATIVE_MEMBERS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, redis_url, node_pid, redis_pid, channel, members, steady, churn, churn_secs] =
        args.as_slice()
    else {
        return Err(
            "usage: presence_bench WS_URL REDIS_URL NODE_PID REDIS_PID CHANNEL \
                    MEMBERS STEADY_SECS CHURN CHURN_SECS"
                .into(),
        );
    };
    let number = |s: &str, what: &str| s.parse::<u64>().map_err(|_| format!("{what}: a number"));
    let members = number(members, "MEMBERS")? as usize;
    let steady = Duration::from_secs(number(steady, "STEADY_SECS")?);
    let churn = number(churn, "CHURN")? as usize;
    let churn_secs = Duration::from_secs(number(churn_secs, "CHURN_SECS")?);
    let (node_pid, redis_pid) = (node_pid.clone(), redis_pid.clone());
    let http = server.replacen("ws", "http", 1);
    let ws_url = format!("{server}/ws");
    let api = reqwest::Client::new();

    // 1. The members: each holds its socket, read (and so answered) by a task.
    let started = Instant::now();
    let closed = Arc::new(AtomicU64::new(0));
    let mut held = Vec::with_capacity(members);
    for chunk in (0..members).collect::<Vec<_>>().chunks(250) {
        let batch = chunk.iter().map(|_| subscribed(&ws_url, channel));
        for result in futures_util::future::join_all(batch).await {
            let (ws, _) = result?;
            held.push(tokio::spawn(drain(ws, closed.clone())));
        }
    }
    let joined_in = started.elapsed();
    let stats = http_json(
        &api,
        &format!("{http}/api/presence_stats?channel={channel}"),
    )
    .await?;
    if stats.0["connections"] != json!(members) {
        return Err(format!("presence_stats after the joins: {}", stats.0));
    }

    let mut stats_ms = Vec::new();
    let mut stats_bytes = 0;
    for _ in 0..HTTP_STATS {
        let t = Instant::now();
        let (_, bytes) = http_json(
            &api,
            &format!("{http}/api/presence_stats?channel={channel}"),
        )
        .await?;
        stats_ms.push(ms(t.elapsed()));
        stats_bytes = bytes;
    }
    let mut members_ms = Vec::new();
    let mut members_bytes = 0;
    for _ in 0..HTTP_MEMBERS {
        let t = Instant::now();
        let (answer, bytes) =
            http_json(&api, &format!("{http}/api/presence?channel={channel}")).await?;
        members_ms.push(ms(t.elapsed()));
        members_bytes = bytes;
        let listed = answer["members"].as_array().map_or(0, Vec::len);
        if listed != members {
            return Err(format!("/api/presence listed {listed}, not {members}"));
        }
    }
    // The native command, from one client that is not a member itself.
    let (mut asker, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut native_ms = Vec::new();
    let mut native_bytes = 0;
    for id in 0..NATIVE_MEMBERS {
        let t = Instant::now();
        let (reply, bytes) = command(&mut asker, id as u64 + 1, "presence", channel).await?;
        native_ms.push(ms(t.elapsed()));
        native_bytes = bytes;
        let listed = reply["result"]["members"].as_array().map_or(0, Vec::len);
        if listed != members {
            return Err(format!(
                "presence listed {listed}, not {members}: {reply:.200}"
            ));
        }
    }
    let mut native_stats_ms = Vec::new();
    for id in 0..HTTP_STATS {
        let t = Instant::now();
        command(&mut asker, 1000 + id as u64, "presence_stats", channel).await?;
        native_stats_ms.push(ms(t.elapsed()));
    }
    println!(
        "{}",
        json!({
            "workload": "query", "members": members,
            "joined_in_ms": round(ms(joined_in)),
            "api_presence_stats": summary(&mut stats_ms, stats_bytes),
            "api_presence": summary(&mut members_ms, members_bytes),
            "native_presence": summary(&mut native_ms, native_bytes),
            "native_presence_stats": summary(&mut native_stats_ms, 0),
        })
    );

    // 2. Steady state: nothing but the node's own ticks.
    let before = (
        redis_info(redis_url).await?,
        cpu_s(&redis_pid)?,
        cpu_s(&node_pid)?,
    );
    tokio::time::sleep(steady).await;
    let after = (
        redis_info(redis_url).await?,
        cpu_s(&redis_pid)?,
        cpu_s(&node_pid)?,
    );
    let secs = steady.as_secs_f64();
    // The INFO that took the first reading is counted in the second.
    let commands = after.0 .0 - before.0 .0 - 1;
    println!(
        "{}",
        json!({
            "workload": "steady", "members": members, "seconds": secs,
            "redis_commands": commands,
            "redis_commands_per_s": round(commands as f64 / secs),
            "redis_calls_by_command": calls_delta(&before.0 .1, &after.0 .1),
            "redis_cpu_ms_per_s": round((after.1 - before.1) * 1e3 / secs),
            "node_cpu_ms_per_s": round((after.2 - before.2) * 1e3 / secs),
        })
    );

    // 3. Churn: CHURN clients subscribe and unsubscribe as fast as they can.
    let mut churners = Vec::new();
    for _ in 0..churn {
        let (ws, _) = tokio_tungstenite::connect_async(&ws_url)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        churners.push(ws);
    }
    let before = (
        redis_info(redis_url).await?,
        cpu_s(&redis_pid)?,
        cpu_s(&node_pid)?,
    );
    let t0 = Instant::now();
    let runs = churners.into_iter().map(|ws| {
        let channel = channel.clone();
        tokio::spawn(async move { churn_loop(ws, &channel, t0 + churn_secs).await })
    });
    let mut subscribe_ms = Vec::new();
    let mut changes = 0u64;
    for result in futures_util::future::join_all(runs).await {
        let (times, n) = result.map_err(|e| e.to_string())??;
        subscribe_ms.extend(times);
        changes += n;
    }
    let took = t0.elapsed().as_secs_f64();
    let after = (
        redis_info(redis_url).await?,
        cpu_s(&redis_pid)?,
        cpu_s(&node_pid)?,
    );
    let (end, _) = http_json(
        &api,
        &format!("{http}/api/presence_stats?channel={channel}"),
    )
    .await?;
    println!(
        "{}",
        json!({
            "workload": "churn", "members": members, "clients": churn, "seconds": round(took),
            "changes": changes,
            "changes_per_s": round(changes as f64 / took),
            "subscribe_reply": summary(&mut subscribe_ms, 0),
            "node_cpu_pct": round((after.2 - before.2) * 100.0 / took),
            "redis_cpu_pct": round((after.1 - before.1) * 100.0 / took),
            "node_cpu_us_per_change": round((after.2 - before.2) * 1e6 / changes.max(1) as f64),
            "redis_commands_per_change":
                round((after.0 .0 - before.0 .0) as f64 / changes.max(1) as f64),
            "connections_after": end["connections"],
            "members_closed": closed.load(Ordering::Relaxed),
        })
    );
    for task in held {
        task.abort();
    }
    Ok(())
}

/// Connects and subscribes; the socket and the reply.
async fn subscribed(url: &str, channel: &str) -> Result<(Ws, Value), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (reply, _) = command(&mut ws, 1, "subscribe", channel).await?;
    Ok((ws, reply))
}

/// Reads a member's socket until it ends (so pings are answered).
async fn drain(mut ws: Ws, closed: Arc<AtomicU64>) {
    while let Some(Ok(_)) = ws.next().await {}
    closed.fetch_add(1, Ordering::Relaxed);
}

/// Subscribe, unsubscribe, again, until `until`: the subscribe reply times
/// (ms) and the number of changes (each subscribe and unsubscribe).
async fn churn_loop(mut ws: Ws, channel: &str, until: Instant) -> Result<(Vec<f64>, u64), String> {
    let mut times = Vec::new();
    let mut changes = 0;
    let mut id = 0;
    while Instant::now() < until {
        id += 1;
        let t = Instant::now();
        command(&mut ws, id, "subscribe", channel).await?;
        times.push(ms(t.elapsed()));
        id += 1;
        command(&mut ws, id, "unsubscribe", channel).await?;
        changes += 2;
    }
    Ok((times, changes))
}

async fn http_json(api: &reqwest::Client, url: &str) -> Result<(Value, usize), String> {
    let response = api.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "{url}: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((value, body.len()))
}

/// Redis's `total_commands_processed` and calls per command.
async fn redis_info(url: &str) -> Result<(u64, BTreeMap<String, u64>), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("all")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let mut total = 0;
    let mut calls = BTreeMap::new();
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("total_commands_processed:") {
            total = v.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("cmdstat_") {
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let n = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            calls.insert(name.to_string(), n);
        }
    }
    Ok((total, calls))
}

fn calls_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, n) in after {
        let d = n - before.get(name).copied().unwrap_or(0);
        // Not the INFO that took the readings.
        if d > 0 && name != "info" {
            out.insert(name.clone(), json!(d));
        }
    }
    Value::Object(out)
}

fn summary(times: &mut [f64], bytes: usize) -> Value {
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    json!({"n": times.len(), "p50_ms": round(pct(0.5)), "p99_ms": round(pct(0.99)), "bytes": bytes})
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
