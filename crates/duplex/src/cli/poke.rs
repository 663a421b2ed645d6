//! `duplex publish` and `duplex subscribe`: a node from a terminal.

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `duplex publish`.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// Channel to publish to.
    channel: String,
    /// Message, delivered verbatim (use --json to send a JSON value instead).
    data: String,
    /// Node to publish through (its HTTP API).
    #[arg(
        long,
        default_value = "http://127.0.0.1:1234",
        conflicts_with = "redis"
    )]
    server: String,
    /// Publish straight to Redis instead (no node needed): PUBLISH channel data.
    #[arg(long)]
    redis: Option<String>,
    /// Redis channel prefix, when the nodes use one.
    #[arg(long, default_value = "", requires = "redis")]
    redis_prefix: String,
    /// API key of the node.
    #[arg(long, env = "DUPLEX_API_KEY")]
    api_key: Option<String>,
    /// Treat DATA as a JSON value (native clients then receive it as JSON).
    #[arg(long)]
    json: bool,
}

/// Arguments of `duplex subscribe`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubscribeArgs {
    /// Channels to watch.
    #[arg(required = true)]
    channels: Vec<String>,
    /// Node to connect to.
    #[arg(long, default_value = "ws://127.0.0.1:1234")]
    server: String,
}

pub(crate) async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.redis {
        let client = redis::Client::open(url.as_str()).context("invalid Redis URL")?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("cannot connect to Redis at {url}"))?;
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(format!("{}{}", args.redis_prefix, args.channel))
            .arg(args.data.as_bytes())
            .query_async(&mut conn)
            .await
            .context("PUBLISH failed")?;
        eprintln!("published to Redis ({receivers} subscribed nodes or clients)");
        return Ok(());
    }
    let data: Value = if args.json {
        serde_json::from_str(&args.data)
            .context("DATA is not valid JSON (drop --json to send text)")?
    } else {
        Value::String(args.data.clone())
    };
    let url = format!("{}/api/publish", args.server.trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .post(&url)
        .json(&json!({"channel": args.channel, "data": data}));
    if let Some(key) = &args.api_key {
        request = request.header("Authorization", format!("apikey {key}"));
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url} answered {status}: {body}");
    }
    Ok(())
}

pub(crate) async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let url = format!("{}/ws", args.server.trim_end_matches('/'));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let command = json!({"id": 1, "method": "subscribe", "params": {"channels": args.channels}});
    ws.send(Message::text(command.to_string())).await?;
    let show_channel = args.channels.len() > 1;
    while let Some(frame) = ws.next().await {
        match frame.context("connection lost")? {
            Message::Text(text) => {
                let value: Value =
                    serde_json::from_str(&text).context("server sent invalid JSON")?;
                if let Some(error) = value.get("error") {
                    bail!("server refused: {error}");
                }
                if value.get("push").and_then(Value::as_str) != Some("message") {
                    continue;
                }
                let data = match &value["data"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if show_channel {
                    println!("{}\t{data}", value["channel"].as_str().unwrap_or(""));
                } else {
                    println!("{data}");
                }
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                bail!("server closed the connection: {code} {reason}");
            }
            _ => {}
        }
    }
    Ok(())
}
