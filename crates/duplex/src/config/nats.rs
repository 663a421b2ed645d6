//! The NATS broker's settings (`nats`, `nats_prefix`, `nats_timeout`) and
//! what the config check refuses with it: a second broker, every setting
//! that needs what only Redis (or the embedded broker) keeps, and upstream
//! stream names too long for a JetStream stream.

use super::{Config, ConfigError};
use crate::broker::nats::upstream::{stream_name, MAX_STREAM_NAME};
use crate::broker::nats::{nats_url_problem, subject::prefix_problem, NatsSettings};

impl Config {
    /// The NATS URL(s), when a NATS broker is configured.
    pub fn nats_url(&self) -> Option<&str> {
        Some(self.nats.as_str()).filter(|u| !u.is_empty())
    }

    /// The NATS broker's settings for node `id` holding `node_channels`,
    /// when one is configured (reconnect pauses and backlog as for Redis).
    pub fn nats_settings(&self, id: &str, node_channels: &[String]) -> Option<NatsSettings> {
        Some(NatsSettings {
            url: self.nats_url()?.to_string(),
            prefix: self.nats_prefix.clone(),
            timeout: self.nats_timeout,
            max_backoff: self.redis_max_backoff,
            backlog_bytes: self.redis_backlog_bytes,
            node_channels: node_channels.to_vec(),
            node_id: id.to_string(),
            upstream_maxlen: self.upstream_maxlen,
        })
    }
}

fn invalid(name: &'static str, reason: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { name, reason })
}

/// Refusals at start for a node on NATS; nothing to check without it.
pub(super) fn check_nats(c: &Config) -> Result<(), ConfigError> {
    if let Some(problem) = prefix_problem(&c.nats_prefix) {
        return invalid("nats_prefix", problem.to_string());
    }
    let Some(url) = c.nats_url() else {
        return Ok(());
    };
    if c.redis_url().is_some() {
        return invalid(
            "nats",
            "redis and nats are two brokers and a node runs on one: set --redis (Redis: channels, history, presence, streams) or --nats (NATS: channels only), not both".to_string(),
        );
    }
    if let Some(problem) = nats_url_problem(url) {
        return invalid("nats", problem);
    }
    if c.nats_timeout.is_zero() {
        return invalid("nats_timeout", "must be above zero".to_string());
    }
    if !c.ingest_stream.is_empty() {
        return invalid(
            "ingest_stream",
            "needs Redis (--redis): the ingest stream is a Redis Stream; on NATS backends publish to the channel's subject (docs/SCALING.md) or through the HTTP API".to_string(),
        );
    }
    for ns in &c.namespaces {
        let needs = if ns.history().is_some() {
            "history (history_size) needs Redis (--redis): the NATS broker keeps no history, so clients could not recover what they missed"
        } else if ns.presence().is_some() {
            "presence needs Redis (--redis): the NATS broker keeps no presence"
        } else {
            continue;
        };
        return invalid("namespaces", format!("namespace {:?}: {needs}", ns.pattern));
    }
    check_stream_names(c)
}

/// Every upstream stream must make a JetStream stream name the server takes.
fn check_stream_names(c: &Config) -> Result<(), ConfigError> {
    let own = std::iter::once(c.upstream_stream.as_str());
    let namespaces = c
        .namespaces
        .iter()
        .filter_map(|ns| ns.upstream_stream.as_deref());
    for stream in own.chain(namespaces) {
        let name = stream_name(&c.nats_prefix, stream);
        if name.len() > MAX_STREAM_NAME {
            return invalid(
                "upstream_stream",
                format!("{stream:?} with nats_prefix makes the JetStream stream name {name:?}, over {MAX_STREAM_NAME} bytes: name a shorter stream"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, Settings};

    fn refusal(toml: &str) -> (&'static str, String) {
        let settings: Settings = toml::from_str(toml).expect("valid TOML");
        match settings.resolve() {
            Err(ConfigError::Invalid { name, reason }) => (name, reason),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_nats_node_runs_channels_and_upstream_streams_only() {
        let ok: Settings =
            toml::from_str("nats = \"nats://127.0.0.1:4222\"\nnats_prefix = \"duplex.\"").unwrap();
        let config = ok.resolve().expect("valid");
        let settings = config.nats_settings("n1", &[]).expect("a NATS broker");
        assert_eq!(settings.prefix, "duplex.");
        let nats = "nats = \"nats://127.0.0.1:4222\"\n";
        let (name, why) = refusal(&format!("{nats}redis = \"redis://127.0.0.1\""));
        assert_eq!(name, "nats");
        assert!(why.contains("--redis") && why.contains("--nats"), "{why}");
        let (name, why) = refusal("nats = \"127.0.0.1:4222\"");
        assert_eq!(name, "nats");
        assert!(why.contains("nats://"), "{why}");
        let (name, _) = refusal(&format!("{nats}nats_prefix = \"a.*.\""));
        assert_eq!(name, "nats_prefix");
        let (name, why) = refusal(&format!("{nats}ingest_stream = \"in\""));
        assert_eq!(name, "ingest_stream");
        assert!(why.contains("needs Redis"), "{why}");
        let ns = "[[namespaces]]\npattern = \"chat:*\"\n";
        let (name, why) = refusal(&format!(
            "{nats}{ns}history_size = 10\nhistory_ttl = \"60s\""
        ));
        assert_eq!(name, "namespaces");
        assert!(
            why.contains("history") && why.contains("needs Redis"),
            "{why}"
        );
        let (_, why) = refusal(&format!("{nats}{ns}presence = true"));
        assert!(why.contains("presence needs Redis"), "{why}");
        let streams: Settings = toml::from_str(&format!(
            "{nats}plain_frames = \"both\"\n{ns}upstream_stream = \"up\""
        ))
        .unwrap();
        streams
            .resolve()
            .expect("upstream streams live on JetStream");
        let long = "x".repeat(250);
        let (name, why) = refusal(&format!(
            "{nats}nats_prefix = \"app.\"\n{ns}upstream_stream = \"{long}\""
        ));
        assert_eq!(name, "upstream_stream");
        assert!(why.contains("JetStream stream name"), "{why}");
    }
}
