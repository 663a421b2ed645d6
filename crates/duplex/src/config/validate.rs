//! Checks of a resolved [`Config`]: each refusal names the setting and says
//! what is allowed, at start, before anything listens.

use super::{Config, ConfigError};
use crate::broker::redis::{SentinelUrl, SENTINEL_SCHEME};
use crate::permissions::Permissions;

impl Config {
    /// Every check; the first refusal wins.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_broker(self)?;
        check_exposure(self)?;
        check_bounds(self)
    }
}

fn invalid(name: &'static str, reason: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        name,
        reason: reason.to_string(),
    })
}

/// Shortest `token_secret` accepted without a word: 256 bits, the HS256
/// output size (RFC 7518, section 3.2).
pub const MIN_TOKEN_SECRET: usize = 32;

impl Config {
    /// What is allowed but unwise, one sentence each, for the log at start
    /// and `--check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(len) = short_token_secret(self) {
            out.push(format!(
                "token_secret is {len} bytes: whoever holds one token can guess a secret under {MIN_TOKEN_SECRET} bytes offline \
                 and sign tokens for any user; use {MIN_TOKEN_SECRET} random bytes or more (`openssl rand -base64 32`) \
                 before this node is reachable from elsewhere"
            ));
        }
        out
    }
}

/// The length of a set `token_secret` shorter than [`MIN_TOKEN_SECRET`].
fn short_token_secret(c: &Config) -> Option<usize> {
    let len = c.token_secret.expose().len();
    (len > 0 && len < MIN_TOKEN_SECRET).then_some(len)
}

/// Why `url` cannot be a Redis URL, with what to write instead; None when
/// it can. `--redis localhost:6379` is the usual slip: the scheme is missing.
pub fn redis_url_problem(url: &str) -> Option<String> {
    if url.starts_with(SENTINEL_SCHEME) {
        let e = SentinelUrl::parse(url).err()?;
        return Some(format!(
            "{:?} is not a valid Sentinel URL: {e}",
            redacted(url)
        ));
    }
    if crate::broker::redis_cluster::topology::is_cluster_url(url) {
        let e = crate::broker::redis_cluster::topology::seeds(url).err()?;
        return Some(format!("{:?}: {e}", redacted(url)));
    }
    let e = redis::Client::open(url).err()?;
    let url = redacted(url);
    let url = url.as_str();
    Some(if url.contains("://") {
        format!("{url:?} is not a valid Redis URL ({e}); the form is redis://[user:password@]host[:port][/db], rediss:// for TLS")
    } else {
        format!("{url:?} is not a Redis URL: add the scheme, redis://{url} (rediss:// for TLS, unix:///path for a socket)")
    })
}

/// A URL as it may be shown: a password in it replaced by `***`.
pub fn redacted(url: &str) -> String {
    if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
        // Several hosts: not a URL the url crate reads.
        let query = rest.find('?').map_or(rest.len(), |i| i);
        return match rest[..query].rsplit_once('@') {
            Some((userinfo, after)) => {
                let shown = match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => userinfo.to_string(),
                };
                let tail = if rest[query..].contains("password") {
                    "?***"
                } else {
                    &rest[query..]
                };
                format!("{SENTINEL_SCHEME}{shown}@{after}{tail}")
            }
            None if rest[query..].contains("password") => {
                format!("{SENTINEL_SCHEME}{}?***", &rest[..query])
            }
            None => url.to_string(),
        };
    }
    // `redis+cluster://user:pw@h:1,h:2` is no URL the parser takes.
    if let Some(rest) = url.strip_prefix(crate::broker::redis_cluster::topology::CLUSTER_SCHEME) {
        if let Some((auth, hosts)) = rest.rsplit_once('@') {
            if let Some((user, _)) = auth.split_once(':') {
                return format!(
                    "{}{user}:***@{hosts}",
                    crate::broker::redis_cluster::topology::CLUSTER_SCHEME
                );
            }
        }
        return url.to_string();
    }
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// Channels, Redis and where client messages can go.
fn check_broker(c: &Config) -> Result<(), ConfigError> {
    if let Err(e) = duplex_protocol::channel::validate(&c.default_channel, c.max_channel_length) {
        return invalid("default_channel", &e.to_string());
    }
    if c.redis_prefix.contains('#') {
        // Reserved Redis channels are `<prefix>#...`: with no `#` in any
        // prefix, their first `#` ends the prefix, which is what keeps
        // deployments on one Redis apart (duplex_protocol::channel).
        return invalid(
            "redis_prefix",
            "may not contain '#': this node's reserved Redis channels are <prefix>#control, <prefix>#node:<id>, <prefix>#user:<id>..., \
             and only a '#'-free prefix keeps every other deployment's channel names away from them (docs/AUTH.md, \"Sharing one Redis\")",
        );
    }
    if let Some(problem) = c.redis_url().and_then(redis_url_problem) {
        return invalid("redis", &problem);
    }
    if c.redis_timeout.is_zero() {
        return invalid("redis_timeout", "must be above zero");
    }
    super::nats::check_nats(c)?;
    if !c.upstream_url.is_empty() {
        match url::Url::parse(&c.upstream_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return invalid("upstream_url", "must be an http:// or https:// URL"),
        }
    }
    // The one place that says where plain frames can go up: a Redis
    // Stream, or the HTTP upstream (namespaces may name their own URLs).
    let streams = c.redis_url().is_some() || c.nats_url().is_some();
    if c.plain_frames.to_upstream() && !streams && c.upstream_url.is_empty() {
        return invalid(
            "plain_frames",
            "\"upstream\" and \"both\" need Redis (--redis), NATS (--nats) or an HTTP upstream (--upstream-url); use \"channel\"",
        );
    }
    if !streams {
        if let Some(ns) = c.namespaces.iter().find(|ns| ns.upstream_stream.is_some()) {
            return invalid(
                "namespaces",
                &format!(
                    "namespace {:?}: upstream_stream needs Redis (--redis) or NATS (--nats): the memory broker has no streams; use upstream_url (an HTTP upstream)",
                    ns.pattern,
                ),
            );
        }
    }
    check_ingest(c)?;
    check_cluster(c)?;
    if c.query_timeout.is_zero() || c.node_heartbeat.is_zero() {
        return invalid(
            "query_timeout",
            "query_timeout and node_heartbeat must be above zero",
        );
    }
    Ok(())
}

/// On a Redis Cluster (`redis+cluster://`) everything but the ingest
/// stream works; it is refused here rather than failing later
/// (docs/SCALING.md).
fn check_cluster(c: &Config) -> Result<(), ConfigError> {
    if !c
        .redis_url()
        .is_some_and(crate::broker::redis_cluster::topology::is_cluster_url)
    {
        return Ok(());
    }
    if !c.ingest_stream.is_empty() {
        return invalid(
            "ingest_stream",
            "is not supported on a Redis Cluster (redis+cluster://) yet: backends publish with SPUBLISH or POST /api/publish",
        );
    }
    Ok(())
}

/// The ingest stream: Redis only, and never a stream clients' messages go
/// up to (the nodes would publish what clients sent the backends).
fn check_ingest(c: &Config) -> Result<(), ConfigError> {
    if c.ingest_stream.is_empty() {
        return Ok(());
    }
    if c.redis_url().is_none() {
        return invalid(
            "ingest_stream",
            "needs Redis (--redis): the ingest stream is a Redis Stream the nodes read; on the memory broker publish through the HTTP API",
        );
    }
    let mut upstream = std::iter::once(c.upstream_stream.as_str()).chain(
        c.namespaces
            .iter()
            .filter_map(|ns| ns.upstream_stream.as_deref()),
    );
    if let Some(same) = upstream.find(|s| *s == c.ingest_stream) {
        return invalid(
            "ingest_stream",
            &format!("{same:?} is also an upstream stream (clients' messages to the backends): the nodes would publish them; name another stream"),
        );
    }
    Ok(())
}

/// Who may reach the node and how: listen address, tokens, TLS, hosts, namespaces.
fn check_exposure(c: &Config) -> Result<(), ConfigError> {
    if !c.listen.ip().is_loopback() && !c.insecure {
        if !c.token_auth() {
            return invalid(
                "listen",
                &format!(
                    "refusing to listen on {} without client authentication: anyone who reaches it could read and write every channel. \
                     Set --token-secret (HS256 tokens) or --token-public-key (RS256/ES256) so clients must present a token, \
                     listen on 127.0.0.1 behind a proxy, or pass --insecure (DUPLEX_INSECURE=true) to accept the risk",
                    c.listen
                ),
            );
        }
        if short_token_secret(c).is_some() {
            return invalid(
                "token_secret",
                &format!(
                    "refusing to listen on {} with a token secret of {} bytes: whoever holds one token can guess a short secret offline \
                     and then sign tokens for any user. Use at least {MIN_TOKEN_SECRET} random bytes (`openssl rand -base64 32`), \
                     or pass --insecure to accept the risk",
                    c.listen,
                    c.token_secret.expose().len()
                ),
            );
        }
        if c.api_keys().next().is_none() {
            return invalid(
                "listen",
                &format!(
                    "refusing to listen on {} with an open HTTP API: anyone who reaches it could publish anywhere. \
                     Set --api-key, or pass --insecure to accept the risk",
                    c.listen
                ),
            );
        }
    }
    if c.tls_cert.is_empty() != c.tls_key.is_empty() {
        return invalid(
            if c.tls_cert.is_empty() { "tls_cert" } else { "tls_key" },
            "tls_cert and tls_key go together: set both (PEM files) to serve wss:// and https://, or neither for plain ws://",
        );
    }
    if c.allow_anonymous && !c.token_auth() {
        return invalid(
            "allow_anonymous",
            "only means something with token auth (token_secret or token_public_key)",
        );
    }
    if let Err(e) = Permissions::new(c.namespaces.clone()) {
        return invalid("namespaces", &e.to_string());
    }
    if let Some(entry) = c
        .allowed_hosts
        .split(',')
        .find(|h| h.contains('/') || h.trim().contains(char::is_whitespace))
    {
        return invalid(
            "allowed_hosts",
            &format!(
                "{:?} is not a host name: list names or addresses as browsers send them in Host (chat.example, 10.0.0.5:1234), no scheme or path",
                entry.trim()
            ),
        );
    }
    if !c.token_jwks_url.is_empty() {
        match url::Url::parse(&c.token_jwks_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return invalid("token_jwks_url", "must be an http:// or https:// URL"),
        }
        if c.token_jwks_refresh.is_zero() {
            return invalid("token_jwks_refresh", "must be above zero");
        }
    }
    Ok(())
}

/// Sizes, counts and timeouts that must leave room for something.
fn check_bounds(c: &Config) -> Result<(), ConfigError> {
    if c.max_message_size == 0 {
        return invalid("max_message_size", "must be at least 1");
    }
    if c.max_fragments == 0 {
        return invalid("max_fragments", "must be at least 1");
    }
    if c.max_queued_bytes < c.max_message_size.min(64 * 1024) {
        return invalid(
            "max_queued_bytes",
            "must hold at least one message (>= 64 KiB or max_message_size)",
        );
    }
    if c.max_queued_messages == 0 {
        return invalid("max_queued_messages", "must be at least 1");
    }
    if c.ping_interval.is_zero() || c.pong_timeout.is_zero() {
        return invalid(
            "ping_interval",
            "ping_interval and pong_timeout must be above zero",
        );
    }
    if c.upstream_concurrency == 0 {
        return invalid("upstream_concurrency", "must be at least 1");
    }
    if c.rpc_timeout.is_zero() {
        return invalid("rpc_timeout", "must be above zero");
    }
    if c.max_pending_rpcs == 0 || c.max_inflight_rpcs == 0 {
        return invalid(
            "max_pending_rpcs",
            "max_pending_rpcs and max_inflight_rpcs must be at least 1",
        );
    }
    if c.handshake_timeout.is_zero() {
        return invalid("handshake_timeout", "must be above zero");
    }
    if c.request_timeout.is_zero() {
        return invalid("request_timeout", "must be above zero");
    }
    Ok(())
}
