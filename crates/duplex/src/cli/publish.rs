//! `duplex publish`: one message to a channel, through a node's HTTP API or
//! straight into Redis. On a history channel it says the message's offset
//! (through Redis with `FCALL duplex_publish`, the Function the nodes load).

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::server_url::{node_url, Endpoint};

/// Arguments of `duplex publish`.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// Channel to publish to.
    channel: String,
    /// Message, delivered verbatim (use --json to send a JSON value instead).
    data: String,
    /// Node to publish through (its HTTP API): http(s):// or ws(s)://, either names the node.
    #[arg(
        long,
        default_value = "http://127.0.0.1:1234",
        conflicts_with = "redis"
    )]
    server: String,
    /// Publish straight to Redis instead (no node needed; redis+sentinel://... finds the master): FCALL duplex_publish (history channels get their offset; plain PUBLISH when no node loaded the Function yet); a redis+cluster:// URL publishes with SPUBLISH (no offset).
    #[arg(long)]
    redis: Option<String>,
    /// Redis channel prefix, when the nodes use one.
    #[arg(long, default_value = "", requires = "redis")]
    redis_prefix: String,
    /// API key of the node.
    #[arg(long, env = "DUPLEX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Treat DATA as a JSON value (native clients then receive it as JSON).
    #[arg(long)]
    json: bool,
}

/// Publishes, and says where on stderr when it went to Redis.
pub(crate) async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.redis {
        return publish_to_redis(url, &args).await;
    }
    let data: Value = if args.json {
        serde_json::from_str(&args.data)
            .context("DATA is not valid JSON (drop --json to send text)")?
    } else {
        Value::String(args.data.clone())
    };
    let url = node_url(&args.server, Endpoint::Http, "/api/publish")?;
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
    let answer: Value = serde_json::from_str(&body).unwrap_or_default();
    if let Some(offset) = answer["offset"].as_u64() {
        let epoch = answer["epoch"].as_str().unwrap_or("");
        eprintln!("published at offset {offset} (epoch {epoch})");
    }
    Ok(())
}

async fn publish_to_redis(url: &str, args: &PublishArgs) -> anyhow::Result<()> {
    if let Some(problem) = duplex::config::redis_url_problem(url) {
        bail!("--redis: {problem}");
    }
    if duplex::broker::redis_cluster::topology::is_cluster_url(url) {
        return publish_to_cluster(url, args).await;
    }
    let client = duplex::broker::redis::current_client(url)
        .await
        .context("cannot find the Redis server (for redis+sentinel://: its master)")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| {
            format!(
                "cannot connect to Redis at {}",
                duplex::config::redacted(url)
            )
        })?;
    let key = format!("{}{}", args.redis_prefix, args.channel);
    let recorded: redis::RedisResult<Option<u64>> = redis::cmd("FCALL")
        .arg("duplex_publish")
        .arg(1)
        .arg(&key)
        .arg(args.data.as_bytes())
        .query_async(&mut conn)
        .await;
    match recorded {
        Ok(Some(offset)) => eprintln!("published to Redis at offset {offset}"),
        Ok(None) => eprintln!("published to Redis (the channel keeps no history)"),
        // No node has loaded the Function into this Redis yet.
        Err(e) if e.to_string().contains("Function not found") => {
            let receivers: i64 = redis::cmd("PUBLISH")
                .arg(&key)
                .arg(args.data.as_bytes())
                .query_async(&mut conn)
                .await
                .context("PUBLISH failed")?;
            eprintln!("published to Redis ({receivers} subscribed nodes or clients)");
        }
        Err(e) => return Err(e).context("FCALL duplex_publish failed"),
    }
    Ok(())
}

/// `SPUBLISH` on a Redis Cluster (what its nodes subscribe to): no history
/// offset, since recording there needs the namespace's options, which a
/// node knows (`--server`).
async fn publish_to_cluster(url: &str, args: &PublishArgs) -> anyhow::Result<()> {
    let seeds = duplex::broker::redis_cluster::topology::seeds(url)?;
    let mut conn = redis::cluster::ClusterClient::new(seeds)
        .context("invalid Redis Cluster URL")?
        .get_async_connection()
        .await
        .with_context(|| {
            format!(
                "cannot connect to the Redis Cluster at {}",
                duplex::config::redacted(url)
            )
        })?;
    let receivers: i64 = redis::cmd("SPUBLISH")
        .arg(format!("{}{}", args.redis_prefix, args.channel))
        .arg(args.data.as_bytes())
        .query_async(&mut conn)
        .await
        .context("SPUBLISH failed")?;
    eprintln!("published to the Redis Cluster with SPUBLISH ({receivers} subscribed nodes or clients; no history offset there: publish through a node for one)");
    Ok(())
}
