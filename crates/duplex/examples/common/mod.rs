//! What the presence benchmarks share (`presence_bench`, `presence_pushes`):
//! one native command and its reply, a process's CPU time, rounding.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A native client's socket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for one reply.
const WAIT: Duration = Duration::from_secs(60);

/// Sends one command on `channel` and waits for its reply (pushes before
/// it are skipped); the reply and its size in bytes. An error reply is an
/// error.
pub(crate) async fn command(
    ws: &mut Ws,
    id: u64,
    method: &str,
    channel: &str,
) -> Result<(Value, usize), String> {
    // Every subscriber asks for join / leave pushes (they come only where
    // the namespace sets join_leave, as in presence_pushes).
    let command =
        json!({"id": id, "method": method, "params": {"channel": channel, "join_leave": true}});
    ws.send(Message::text(command.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .map_err(|_| format!("{method}: no reply within a minute"))?;
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        };
        let reply: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if reply["id"] == id {
            if !reply["error"].is_null() {
                return Err(format!("{method}: {reply}"));
            }
            return Ok((reply, text.len()));
        }
    }
}

/// CPU seconds a process has used (user + system), from /proc (100 Hz ticks).
pub(crate) fn cpu_s(pid: &str) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, here 11 and 12 (after pid, comm, state).
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// Three decimals, for the JSON lines.
pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
