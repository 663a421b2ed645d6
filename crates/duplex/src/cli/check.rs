//! `duplex serve --check-config`: validates the settings, loads the token
//! keys, and prints the effective rules, so an operator sees what a node
//! would enforce before it runs. Secrets are never printed.

use duplex::auth::Verifier;
use duplex::config::{redacted, Config};
use duplex::permissions::Permissions;

/// Prints the effective configuration; errors if any part cannot be used.
pub(crate) fn check(config: &Config) -> anyhow::Result<()> {
    let verifier = Verifier::from_config(config)?;
    let permissions = Permissions::new(config.namespaces.clone())?;
    let mut out = String::new();
    say(&mut out, "config OK");
    let scope = if config.listen.ip().is_loopback() {
        "loopback only"
    } else {
        "public"
    };
    say(&mut out, format!("listen:     {} ({scope})", config.listen));
    match (config.nats_url(), config.redis_url()) {
        (Some(url), _) => say(
            &mut out,
            format!(
                "broker:     nats {} (subjects prefix {:?})",
                redacted(url),
                config.nats_prefix
            ),
        ),
        (None, Some(url)) => say(&mut out, format!("broker:     redis {}", redacted(url))),
        (None, None) => say(&mut out, "broker:     memory (single node)"),
    }
    if !config.ingest_stream.is_empty() {
        say(
            &mut out,
            format!(
                "ingest:     stream {}{} read by one node at a time (lease {:?})",
                config.redis_prefix,
                config.ingest_stream,
                config.node_heartbeat * 3
            ),
        );
    }
    access(&mut out, config, verifier.is_some());
    namespaces(&mut out, &permissions);
    upstreams(&mut out, config, &permissions);
    for warning in config.warnings() {
        say(&mut out, format!("warning:    {warning}"));
    }
    super::print(&out)
}

fn say(out: &mut String, line: impl std::fmt::Display) {
    out.push_str(&line.to_string());
    out.push('\n');
}

/// Who may connect and call the API: tokens, claims, API keys, origins.
fn access(out: &mut String, config: &Config, tokens_on: bool) {
    let mut auth = Vec::new();
    if !config.token_secret.is_empty() {
        auth.push("HS256/384/512 tokens (secret set)".to_string());
    }
    if !config.token_public_key.is_empty() {
        auth.push(format!(
            "RS/ES tokens (public key {})",
            config.token_public_key
        ));
    }
    if tokens_on {
        let anonymous = if config.allow_anonymous {
            "allowed"
        } else {
            "refused"
        };
        say(
            out,
            format!(
                "tokens:     {}; anonymous clients {anonymous}",
                auth.join(", ")
            ),
        );
    } else {
        say(out, "tokens:     off (every client is anonymous)");
    }
    if !config.token_audience.is_empty() || !config.token_issuer.is_empty() {
        say(
            out,
            format!(
                "claims:     aud = {:?}, iss = {:?}",
                config.token_audience, config.token_issuer
            ),
        );
    }
    match config.api_keys().count() {
        0 => say(out, "http api:   open (no API key)"),
        keys => say(out, format!("http api:   {keys} API key(s)")),
    }
    if config.allowed_origins.is_empty() {
        say(
            out,
            "origins:    same host (and loopback pages when listening on loopback)",
        );
    } else {
        say(out, format!("origins:    {}", config.allowed_origins));
    }
}

/// The namespace rules in match order.
fn namespaces(out: &mut String, permissions: &Permissions) {
    say(
        out,
        "namespaces (first match wins; backends may always publish):",
    );
    say(
        out,
        format!("  {:<24} {:<14} publish", "pattern", "subscribe"),
    );
    for ns in permissions.effective() {
        say(
            out,
            format!(
                "  {:<24} {:<14} {}",
                ns.pattern,
                label(&ns.subscribe),
                label(&ns.publish)
            ),
        );
    }
    say(
        out,
        format!("  {:<24} {:<14} nobody", "#user:<id>", "that user"),
    );
}

/// Where client messages go up: the node's stream and URL, and each
/// namespace's own.
fn upstreams(out: &mut String, config: &Config, permissions: &Permissions) {
    let url = |u: &str| {
        if u.is_empty() {
            "none".to_string()
        } else {
            redacted(u)
        }
    };
    say(
        out,
        format!(
            "upstream:   stream {}, url {}",
            stream_label(config, &config.upstream_stream),
            url(&config.upstream_url)
        ),
    );
    for ns in permissions.effective() {
        if ns.upstream_stream.is_none() && ns.upstream_url.is_none() {
            continue;
        }
        let stream = ns
            .upstream_stream
            .as_deref()
            .unwrap_or(&config.upstream_stream);
        // Routing's order: its URL, its stream, then the node's URL.
        let target = match (&ns.upstream_url, &ns.upstream_stream) {
            (Some(own), _) => &**own,
            (None, Some(_)) => "",
            (None, None) => config.upstream_url.as_str(),
        };
        say(
            out,
            format!(
                "  {:<24} stream {}, url {}",
                ns.pattern,
                stream_label(config, stream),
                url(target)
            ),
        );
    }
}

/// Where an upstream stream lives: its Redis key, or on NATS its
/// JetStream stream (docs/UPSTREAM.md, "On NATS").
fn stream_label(config: &Config, stream: &str) -> String {
    match config.nats_url() {
        Some(_) => format!(
            "{} (jetstream)",
            duplex::broker::nats::upstream::stream_name(&config.nats_prefix, stream)
        ),
        None => format!("{}{stream}", config.redis_prefix),
    }
}

/// The lowercase name a rule has in the config file.
fn label<T: serde::Serialize>(rule: &T) -> String {
    serde_json::to_value(rule)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
