//! A recovery storm, measured: N native clients of one history channel
//! leave at once, `behind` messages are published while they are away, and
//! all come back at once with `recover`. Reports how long until every one
//! had all it missed (and the p50/p99 per client), how many recovered, and
//! what the node and Redis did for it: history reads (own and shared) and
//! Redis commands.
//!
//! ```sh
//! cargo run --release --example recovery_storm -- \
//!     ws://127.0.0.1:1234 redis://127.0.0.1:6379 2000 100 storm
//! ```
//! (the node must give the channel's namespace history: bench/history.sh
//! starts one so.)

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, redis_url, clients, behind, channel] = args.as_slice() else {
        return Err("usage: recovery_storm WS_URL REDIS_URL CLIENTS BEHIND CHANNEL".into());
    };
    let clients: usize = clients.parse().map_err(|_| "CLIENTS: a number")?;
    let behind: u64 = behind.parse().map_err(|_| "BEHIND: a number")?;
    let http = server.replacen("ws", "http", 1);
    let ws_url = format!("{server}/ws");

    // Everyone subscribes and learns the position.
    let mut joined = Vec::new();
    for chunk in (0..clients).collect::<Vec<_>>().chunks(200) {
        let batch = chunk.iter().map(|_| join(&ws_url, channel, None));
        for result in futures_util::future::join_all(batch).await {
            joined.push(result?);
        }
    }
    let position = joined[0].1.clone();
    // All leave at once.
    drop(joined);
    let api = reqwest::Client::new();
    for i in 0..behind {
        let body = json!({"channel": channel, "data": {"n": i}});
        let sent = api
            .post(format!("{http}/api/publish"))
            .json(&body)
            .send()
            .await;
        if !sent.map_err(|e| e.to_string())?.status().is_success() {
            return Err("publish refused".into());
        }
    }
    let redis_before = redis_commands(redis_url).await?;
    let node_before = node_stats(&api, &http).await?;

    // All come back at once.
    let started = Instant::now();
    let returns = (0..clients).map(|_| {
        let (url, channel, from) = (ws_url.clone(), channel.clone(), position.clone());
        tokio::spawn(async move { come_back(&url, &channel, from, behind, started).await })
    });
    let mut times = Vec::new();
    let mut recovered = 0usize;
    for result in futures_util::future::join_all(returns).await {
        let (took, was_recovered) = result.map_err(|e| e.to_string())??;
        times.push(took);
        recovered += usize::from(was_recovered);
    }
    let all = started.elapsed();
    let redis_after = redis_commands(redis_url).await?;
    let node_after = node_stats(&api, &http).await?;
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let delta =
        |k: &str| node_after[k].as_u64().unwrap_or(0) - node_before[k].as_u64().unwrap_or(0);
    let report = json!({
        "workload": "recovery_storm",
        "clients": clients,
        "behind": behind,
        "recovered": recovered,
        "all_recovered_ms": all.as_secs_f64() * 1e3,
        "p50_ms": pct(0.5).as_secs_f64() * 1e3,
        "p99_ms": pct(0.99).as_secs_f64() * 1e3,
        "history_reads": delta("history_reads"),
        "history_reads_shared": delta("history_reads_shared"),
        "redis_commands": redis_after.0 - redis_before.0,
        "redis_fcalls": redis_after.1 - redis_before.1,
    });
    println!("{report}");
    Ok(())
}

/// Connects and subscribes; the socket and the channel's position.
async fn join(url: &str, channel: &str, from: Option<&Value>) -> Result<(Ws, Value), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut params = json!({"channel": channel});
    if let Some(from) = from {
        params["recover"] = json!({ channel: from });
    }
    let command = json!({"id": 1, "method": "subscribe", "params": params});
    ws.send(Message::text(command.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let reply = next_json(&mut ws).await?;
        if reply["id"] == 1 {
            let at = &reply["result"]["positions"][channel];
            if at.is_null() {
                return Err(format!(
                    "no position: is {channel} a history channel? {reply}"
                ));
            }
            return Ok((ws, at.clone()));
        }
    }
}

/// Comes back with `recover`; how long from `started` until all `behind`
/// messages arrived, and whether the reply said recovered.
async fn come_back(
    url: &str,
    channel: &str,
    from: Value,
    behind: u64,
    started: Instant,
) -> Result<(Duration, bool), String> {
    let from = json!({"epoch": from["epoch"], "offset": from["offset"]});
    let (mut ws, at) = join(url, channel, Some(&from)).await?;
    let recovered = at["recovered"] == true;
    let mut got = 0;
    while recovered && got < behind {
        if next_json(&mut ws).await?["push"] == "message" {
            got += 1;
        }
    }
    Ok((started.elapsed(), recovered))
}

async fn next_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .map_err(|_| "nothing within a minute".to_string())?;
        match next {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).map_err(|e| e.to_string())
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        }
    }
}

/// Redis's `total_commands_processed` and FCALL count.
async fn redis_commands(url: &str) -> Result<(u64, u64), String> {
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
    let field = |line_start: &str, key: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| {
                l.split([':', ',', '='])
                    .skip_while(|part| *part != key)
                    .nth(1)
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let total = field("total_commands_processed:", "total_commands_processed");
    let fcalls = field("cmdstat_fcall:", "calls");
    Ok((total, fcalls))
}

async fn node_stats(api: &reqwest::Client, http: &str) -> Result<Value, String> {
    let info: Value = api
        .get(format!("{http}/api/info"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(info["stats"].clone())
}
