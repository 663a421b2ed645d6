//! Settings: flags > `DUPLEX_*` environment > TOML file > defaults.
//!
//! [`Settings`] is one struct that clap fills from flags and environment and
//! serde fills from the file; every field is optional so that "not given" can
//! fall through to the next layer. [`Settings::resolve`] applies the defaults
//! and checks the result, producing the [`Config`] the node runs with.

mod access;
mod default_file;
mod nats;
pub mod reload;
mod validate;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::permissions::Namespace;
use default_file::ToToml;
pub use validate::{redacted, redis_url_problem, MIN_TOKEN_SECRET};

/// Why the settings cannot run a node; shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The TOML file is not valid or has unknown keys.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// File that failed.
        path: PathBuf,
        /// Parser error with line and column.
        source: Box<toml::de::Error>,
    },
    /// A value is out of its allowed range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// Setting name as in the file.
        name: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Where a plain client's frames go (`plain_frames`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlainFrames {
    /// Published to the client's (first) channel: the classic behaviour.
    #[default]
    Channel,
    /// Appended to the upstream stream for the backends, with the channel named.
    Upstream,
    /// Both.
    Both,
}

impl PlainFrames {
    /// Whether frames are published to the channel.
    pub fn to_channel(self) -> bool {
        self != PlainFrames::Upstream
    }

    /// Whether frames go up to the backends.
    pub fn to_upstream(self) -> bool {
        self != PlainFrames::Channel
    }
}

impl ToToml for PlainFrames {
    fn to_toml(&self) -> String {
        match self {
            PlainFrames::Channel => "\"channel\"",
            PlainFrames::Upstream => "\"upstream\"",
            PlainFrames::Both => "\"both\"",
        }
        .to_string()
    }
}

/// A setting that must never be printed: Debug shows whether it is set, not its value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is unset.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The comma-separated values it holds (several during a rotation),
    /// trimmed, empty ones skipped.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split(',').map(str::trim).filter(|k| !k.is_empty())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, $env:literal, $heading:ident $(, $parser:expr)? ; )*) => {
        /// Every setting of `duplex serve`, each optional so layers can be merged.
        #[derive(Debug, Clone, Default, Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $(
                $(#[doc = $doc])*
                // Only a bool may stand bare (`--insecure` = `--insecure true`);
                // every other flag needs its value (FlagValue).
                #[arg(
                    long,
                    env = $env,
                    help_heading = heading::$heading,
                    num_args = <$ty as FlagValue>::NUM_ARGS,
                    default_missing_value = <$ty as FlagValue>::BARE,
                    hide_env_values = <$ty as FlagValue>::SECRET
                    $(, value_parser = $parser)?
                )]
                #[serde(default, deserialize_with = "de_opt")]
                pub $name: Option<$ty>,
            )*
            /// Channel namespaces and their permissions (config file only: `[[namespaces]]`).
            #[arg(skip)]
            #[serde(default)]
            pub namespaces: Option<Vec<Namespace>>,
        }

        impl Settings {
            /// Fills every unset field of `self` from `lower`.
            pub fn or(self, lower: Settings) -> Settings {
                Settings {
                    $( $name: self.$name.or(lower.$name), )*
                    namespaces: self.namespaces.or(lower.namespaces),
                }
            }
        }

        /// Resolved settings the node runs with.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            /// Channel namespaces and their permissions, in match order.
            pub namespaces: Vec<Namespace>,
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* namespaces: Vec::new() }
            }
        }

        impl Config {
            /// A complete config file of the defaults, each setting with its
            /// documentation and environment variable: `duplex genconfig`.
            pub fn default_file() -> String {
                let d = Config::default();
                let mut entries = Vec::new();
                $(
                    let mut entry = String::new();
                    $( entry.push_str("#"); entry.push_str($doc); entry.push('\n'); )*
                    entry.push_str(concat!("# env: ", $env, "\n"));
                    entry.push_str(&format!("{} = {}\n\n", stringify!($name), d.$name.to_toml()));
                    entries.push((heading::$heading, entry));
                )*
                default_file::assemble(&entries)
            }

            /// Names of the settings (as in the file) whose values differ
            /// from `other`'s: what a reload (SIGHUP) changes.
            pub fn changed(&self, other: &Config) -> Vec<&'static str> {
                let mut names = Vec::new();
                $( if self.$name != other.$name { names.push(stringify!($name)); } )*
                if self.namespaces != other.namespaces {
                    names.push("namespaces");
                }
                names
            }
        }

        impl Settings {
            fn with_defaults(self) -> Config {
                let d = Config::default();
                Config {
                    $( $name: self.$name.unwrap_or(d.$name), )*
                    namespaces: self.namespaces.unwrap_or_default(),
                }
            }
        }
    };
}

/// How each setting type is read from the TOML file (durations as "25s").
trait FileValue: Sized {
    fn de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

impl FileValue for Duration {
    fn de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        humantime_serde::deserialize(d)
    }
}

macro_rules! plain_file_value {
    ($($t:ty),*) => {$(
        impl FileValue for $t {
            fn de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$t>::deserialize(d)
            }
        }
    )*};
}
plain_file_value!(
    SocketAddr,
    String,
    Secret,
    bool,
    usize,
    u32,
    LogFormat,
    PlainFrames
);

/// How a setting's flag takes its value: a bool may stand bare
/// (`--insecure` = `--insecure true`); any other flag needs its value, so
/// `--listen` alone says a value is missing instead of trying "true";
/// and `--help` never shows a secret's value from the environment.
trait FlagValue {
    const NUM_ARGS: RangeInclusive<usize> = 1..=1;
    const BARE: Option<&'static str> = None;
    const SECRET: bool = false;
}

impl FlagValue for Secret {
    const SECRET: bool = true;
}

impl FlagValue for bool {
    const NUM_ARGS: RangeInclusive<usize> = 0..=1;
    const BARE: Option<&'static str> = Some("true");
}

macro_rules! flag_needs_value {
    ($($t:ty),*) => {$( impl FlagValue for $t {} )*};
}
flag_needs_value!(
    SocketAddr,
    String,
    Duration,
    usize,
    u32,
    LogFormat,
    PlainFrames
);

/// The groups of `serve --help` and `duplex genconfig`, in the order
/// their first setting appears in the list below.
mod heading {
    pub(super) const NETWORK: &str = "Network";
    pub(super) const BROKER: &str = "Broker (Redis or NATS)";
    pub(super) const UPSTREAM: &str = "Upstream (send, rpc, plain frames to the backends)";
    pub(super) const PLAIN: &str = "Plain clients (/)";
    pub(super) const AUTH: &str = "Authentication";
    pub(super) const LIMITS: &str = "Limits";
    pub(super) const TIMEOUTS: &str = "Timeouts, heartbeats and batching";
    pub(super) const LOGGING: &str = "Logging";
}

fn de_opt<'de, D: serde::Deserializer<'de>, T: FileValue>(d: D) -> Result<Option<T>, D::Error> {
    T::de(d).map(Some)
}

settings! {
    /// Address and port to listen on [default: 127.0.0.1:1234].
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 1234)), "DUPLEX_LISTEN", NETWORK;
    /// Redis URL (redis://host:port/db), a Sentinel group's master (redis+sentinel://host:26379,host2:26379/mymaster[/db]), or redis+cluster://host:port,host:port for a Redis Cluster with sharded Pub/Sub (docs/SCALING.md); unset = embedded in-memory broker, single node.
    redis: String = String::new(), "DUPLEX_REDIS", BROKER;
    /// Prefix added to channel names in Redis; no '#'. Deployments sharing one Redis need prefixes none of which is a prefix of another's (docs/AUTH.md) [default: empty, names map 1:1].
    redis_prefix: String = String::new(), "DUPLEX_REDIS_PREFIX", BROKER;
    /// NATS URL (nats://host:4222, comma-separated for a cluster's servers) instead of Redis: channels as core NATS subjects, so `nats pub <channel> data` reaches clients; upstream streams as JetStream streams (the server needs -js); no history, presence or ingest stream (docs/SCALING.md) [default: none].
    nats: String = String::new(), "DUPLEX_NATS", BROKER;
    /// Prefix added to NATS subjects (e.g. `duplex.`); no '#', '*', '>' or empty token [default: empty, names map 1:1 but for '%', '.', '*', '>', escaped as %25, %2E, %2A, %3E].
    nats_prefix: String = String::new(), "DUPLEX_NATS_PREFIX", BROKER;
    /// Bound on each NATS connect attempt, publish and subscribe round trip; also the PING interval of the connection [default: 5s].
    nats_timeout: Duration = Duration::from_secs(5), "DUPLEX_NATS_TIMEOUT", BROKER, humantime::parse_duration;
    /// Bound on each Redis operation and connect attempt [default: 5s].
    redis_timeout: Duration = Duration::from_secs(5), "DUPLEX_REDIS_TIMEOUT", BROKER, humantime::parse_duration;
    /// Interval of the health PING on the Redis subscriber connection [default: 5s].
    redis_health_interval: Duration = Duration::from_secs(5), "DUPLEX_REDIS_HEALTH_INTERVAL", BROKER, humantime::parse_duration;
    /// Interval of the pub/sub liveness probe on a shared broker (Redis or NATS): the node publishes to its own #node:<id> channel and expects it back within redis_timeout; when it does not, /health says degraded (503) and the subscriber connection is made again; 0s turns it off [default: 5s].
    broker_probe_interval: Duration = Duration::from_secs(5), "DUPLEX_BROKER_PROBE_INTERVAL", BROKER, humantime::parse_duration;
    /// Bytes of messages from Redis (or NATS) that may wait for fan-out; beyond it the busiest channels' new messages are dropped, counted in broker.dropped (memory stays bounded whatever backends publish) [default: 16777216].
    redis_backlog_bytes: usize = 16 * 1024 * 1024, "DUPLEX_REDIS_BACKLOG_BYTES", BROKER;
    /// Redis Stream (after redis_prefix) that backends `XADD` publications to, fields channel, data, optional encoding (base64) and exclude (a connection id): the nodes publish each entry exactly once, in the stream's order, as the HTTP API does (offsets on history channels), one node at a time reading it in the consumer group `duplex` under the lease `<stream>:leader` (3 x node_heartbeat), and trim what they acknowledged (docs/DELIVERY.md); needs Redis [default: none, off].
    ingest_stream: String = String::new(), "DUPLEX_INGEST_STREAM", BROKER;
    /// Redis Stream (on NATS: JetStream stream, docs/UPSTREAM.md "On NATS") that client `send`s, `rpc`s and upstream plain frames are appended to, for backend workers, when no upstream_url applies; a namespace may name its own [default: duplex:upstream].
    upstream_stream: String = "duplex:upstream".to_string(), "DUPLEX_UPSTREAM_STREAM", UPSTREAM;
    /// Approximate cap on each upstream stream's length in entries (`XADD MAXLEN ~`): Redis memory per stream stays under about (upstream_maxlen + 100) x 1.26 x (max_message_size + 1 KiB), 0.85 GB at the defaults (docs/UPSTREAM.md); on NATS the exact max_msgs of a JetStream stream the node makes [default: 10000].
    upstream_maxlen: usize = 10_000, "DUPLEX_UPSTREAM_MAXLEN", UPSTREAM;
    /// Backend HTTP endpoint that client `send`s, `rpc`s and upstream plain frames are POSTed to as JSON, instead of the stream; on the memory broker the only way up; a namespace may name its own [default: none].
    upstream_url: String = String::new(), "DUPLEX_UPSTREAM_URL", UPSTREAM;
    /// Most requests to upstream_url in flight at once; more wait in a queue bounded by max_inflight_rpcs [default: 64].
    upstream_concurrency: usize = 64, "DUPLEX_UPSTREAM_CONCURRENCY", UPSTREAM;
    /// Secret that signs every POST to upstream_url (and to namespaces' URLs) with a header `Duplex-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, so the backend can refuse requests that are not from a node; comma-separated to rotate, one v1= per secret in order; examples/upstream/http_backend.* check it (docs/UPSTREAM.md) [default: none, unsigned].
    upstream_secret: Secret = Secret::default(), "DUPLEX_UPSTREAM_SECRET", UPSTREAM;
    /// How long a client's `rpc` waits for the backend's reply before it gets error 113 [default: 10s].
    rpc_timeout: Duration = Duration::from_secs(10), "DUPLEX_RPC_TIMEOUT", UPSTREAM, humantime::parse_duration;
    /// Most rpcs one connection may have waiting for replies; more get error 114 [default: 32].
    max_pending_rpcs: usize = 32, "DUPLEX_MAX_PENDING_RPCS", UPSTREAM;
    /// Most rpcs (and HTTP-upstream sends) waiting on this node; more get error 114 [default: 10000].
    max_inflight_rpcs: usize = 10_000, "DUPLEX_MAX_INFLIGHT_RPCS", UPSTREAM;
    /// Share max_inflight_rpcs among client addresses: while N addresses have calls waiting, one may hold at most max(max_pending_rpcs, 90% of max_inflight_rpcs / N), more get error 114; behind a proxy all clients have its address, so turn it off there (rpc_fair_share_per_user still applies) [default: true].
    rpc_fair_share_per_ip: bool = true, "DUPLEX_RPC_FAIR_SHARE_PER_IP", UPSTREAM;
    /// The same share among users (the token's `sub`; anonymous clients are not counted per user) [default: true].
    rpc_fair_share_per_user: bool = true, "DUPLEX_RPC_FAIR_SHARE_PER_USER", UPSTREAM;
    /// Longest wait between Redis (or NATS) reconnect attempts [default: 2s].
    redis_max_backoff: Duration = Duration::from_secs(2), "DUPLEX_REDIS_MAX_BACKOFF", BROKER, humantime::parse_duration;
    /// Node id shown in APIs and connection ids [default: random].
    node_id: String = String::new(), "DUPLEX_NODE_ID", BROKER;
    /// Channel of plain clients at `/` that name none [default: channel].
    default_channel: String = "channel".to_string(), "DUPLEX_DEFAULT_CHANNEL", PLAIN;
    /// API keys accepted by /api/* as `Authorization: apikey <key>`, comma-separated so keys can be rotated [default: none, API open].
    api_key: Secret = Secret::default(), "DUPLEX_API_KEY", AUTH;
    /// Shared secret that verifies HS256/384/512 connection tokens, at least 32 random bytes (`openssl rand -base64 32`): a shorter one is refused on a non-loopback --listen unless --insecure, and warned about at start otherwise; setting it (or token_public_key) makes tokens required [default: none].
    token_secret: Secret = Secret::default(), "DUPLEX_TOKEN_SECRET", AUTH;
    /// PEM file with the RSA or EC public key that verifies RS256/ES256 connection tokens [default: none].
    token_public_key: String = String::new(), "DUPLEX_TOKEN_PUBLIC_KEY", AUTH;
    /// URL of a JWKS (JSON Web Key Set) with RSA/EC keys for RS/ES tokens, matched by `kid` and re-fetched in the background [default: none].
    token_jwks_url: String = String::new(), "DUPLEX_TOKEN_JWKS_URL", AUTH;
    /// How often the JWKS is re-fetched [default: 5m].
    token_jwks_refresh: Duration = Duration::from_secs(300), "DUPLEX_TOKEN_JWKS_REFRESH", AUTH, humantime::parse_duration;
    /// Required `aud` claim of connection tokens [default: not checked].
    token_audience: String = String::new(), "DUPLEX_TOKEN_AUDIENCE", AUTH;
    /// Required `iss` claim of connection tokens [default: not checked].
    token_issuer: String = String::new(), "DUPLEX_TOKEN_ISSUER", AUTH;
    /// PEM file with the TLS certificate chain; with tls_key, serves wss:// and https:// [default: none, plain ws://].
    tls_cert: String = String::new(), "DUPLEX_TLS_CERT", NETWORK;
    /// PEM file with the TLS private key (PKCS#8, PKCS#1 or SEC1) for tls_cert [default: none].
    tls_key: String = String::new(), "DUPLEX_TLS_KEY", NETWORK;
    /// Web origins allowed to open WebSockets, comma-separated (`https://app.example`), `*` = any [default: the node's own host, plus loopback pages when listening on loopback].
    allowed_origins: String = String::new(), "DUPLEX_ALLOWED_ORIGINS", NETWORK;
    /// Host names or addresses this node answers to, comma-separated (port ignored, case-insensitive), `*` = any; other `Host` headers get 421, against DNS rebinding [default: loopback names (localhost, *.localhost, 127.0.0.0/8, [::1]) when listening on loopback, any name otherwise].
    allowed_hosts: String = String::new(), "DUPLEX_ALLOWED_HOSTS", NETWORK;
    /// Subscribe every authenticated connection to its user's `#user:<id>` channel, so backends reach a user with no client action [default: true].
    user_channels: bool = true, "DUPLEX_USER_CHANNELS", AUTH;
    /// With token auth on, also let clients without a token in, as anonymous [default: false].
    allow_anonymous: bool = false, "DUPLEX_ALLOW_ANONYMOUS", AUTH;
    /// Whether plain clients' frames are published to their channel [default: true].
    plain_publish: bool = true, "DUPLEX_PLAIN_PUBLISH", PLAIN;
    /// Whether a plain client receives its own messages back [default: true].
    plain_echo: bool = true, "DUPLEX_PLAIN_ECHO", PLAIN;
    /// Where plain clients' frames go: channel (published to their channel), upstream (to the backends: POSTed to upstream_url when one applies, else appended to upstream_stream; needs Redis, NATS or upstream_url) or both [default: channel].
    plain_frames: PlainFrames = PlainFrames::Channel, "DUPLEX_PLAIN_FRAMES", PLAIN;
    /// How long /api/connections waits for the other nodes' answers before it says `incomplete` [default: 1s].
    query_timeout: Duration = Duration::from_secs(1), "DUPLEX_QUERY_TIMEOUT", BROKER, humantime::parse_duration;
    /// Interval of each node's `alive` heartbeat on #control (Redis only); a node silent for 3 intervals is no longer expected to answer /api/connections, and the ingest stream's lease lasts 3 intervals, renewed every one [default: 5s].
    node_heartbeat: Duration = Duration::from_secs(5), "DUPLEX_NODE_HEARTBEAT", BROKER, humantime::parse_duration;
    /// Largest message a client may send, in bytes, inclusive [default: 65536].
    max_message_size: usize = 64 * 1024, "DUPLEX_MAX_MESSAGE_SIZE", LIMITS;
    /// Most frames one fragmented message may have [default: 1024].
    max_fragments: usize = 1024, "DUPLEX_MAX_FRAGMENTS", LIMITS;
    /// Most open client connections on this node, 0 = no limit; more get HTTP 503 [default: 100000].
    max_connections: usize = 100_000, "DUPLEX_MAX_CONNECTIONS", LIMITS;
    /// Most open connections from one client address, 0 = no limit; more get HTTP 429 [default: 0].
    max_connections_per_ip: usize = 0, "DUPLEX_MAX_CONNECTIONS_PER_IP", LIMITS;
    /// Most open connections not (yet) upgraded to WebSocket: HTTP requests and handshakes in progress, 0 = no limit but the fd limit; when full, a newcomer closes the oldest such connection of the address holding the most of them [default: 1024].
    max_http_connections: usize = 1024, "DUPLEX_MAX_HTTP_CONNECTIONS", LIMITS;
    /// Most open connections of one user (the token's `sub`), 0 = no limit; more are closed with 3007 [default: 0].
    max_connections_per_user: usize = 0, "DUPLEX_MAX_CONNECTIONS_PER_USER", LIMITS;
    /// WebSocket handshakes per second from one client address (burst as large), 0 = no limit; more get HTTP 429 [default: 0].
    max_handshakes_per_ip: u32 = 0, "DUPLEX_MAX_HANDSHAKES_PER_IP", LIMITS;
    /// Publishes per second one connection may make (burst as large), 0 = no limit [default: 1000].
    max_publish_rate: u32 = 1000, "DUPLEX_MAX_PUBLISH_RATE", LIMITS;
    /// Bytes per second one connection may send up to the backends (`send` and `rpc` data, plain frames with plain_frames upstream or both), in bursts of up to one max_message_size message; over it error 108 (a plain frame is dropped), and after max_publish_rate refusals in a row close 3004; 0 = no limit [default: 65536].
    max_upstream_rate: usize = 64 * 1024, "DUPLEX_MAX_UPSTREAM_RATE", UPSTREAM;
    /// Bytes per second all connections of this node together may send to one upstream (each stream and each URL has its own budget), in bursts of up to one max_message_size message; over it error 108 (a plain frame is dropped); 0 = no limit [default: 8388608].
    max_upstream_node_rate: usize = 8 * 1024 * 1024, "DUPLEX_MAX_UPSTREAM_NODE_RATE", UPSTREAM;
    /// Most channels one connection may subscribe to; more get error 106 (at `/`: HTTP 400) [default: 1000].
    max_subscriptions: usize = 1_000, "DUPLEX_MAX_SUBSCRIPTIONS", LIMITS;
    /// Most subscriptions all connections from one client address may hold together, 0 = no limit; more get error 106 (at `/`: HTTP 429); behind a proxy all clients have its address, so raise it or set 0 there [default: 20000].
    max_subscriptions_per_ip: usize = 20_000, "DUPLEX_MAX_SUBSCRIPTIONS_PER_IP", LIMITS;
    /// Longest channel name in bytes [default: 255].
    max_channel_length: usize = duplex_protocol::channel::DEFAULT_MAX_CHANNEL_LENGTH, "DUPLEX_MAX_CHANNEL_LENGTH", LIMITS;
    /// Outbound bytes queued for one client before it is cut as a slow consumer [default: 1048576].
    max_queued_bytes: usize = 1024 * 1024, "DUPLEX_MAX_QUEUED_BYTES", LIMITS;
    /// Outbound messages queued for one client before it is cut as a slow consumer [default: 4096].
    max_queued_messages: usize = 4096, "DUPLEX_MAX_QUEUED_MESSAGES", LIMITS;
    /// Hold every client's outgoing messages up to this long and send them in one write: less CPU per message, up to this much added latency; 0 = write each at once while fan-out keeps up and batch by itself while it does not [default: 0s].
    write_delay: Duration = Duration::ZERO, "DUPLEX_WRITE_DELAY", TIMEOUTS, humantime::parse_duration;
    /// Interval of server pings to every client [default: 25s].
    ping_interval: Duration = Duration::from_secs(25), "DUPLEX_PING_INTERVAL", TIMEOUTS, humantime::parse_duration;
    /// How long after a ping a silent client is dropped [default: 10s].
    pong_timeout: Duration = Duration::from_secs(10), "DUPLEX_PONG_TIMEOUT", TIMEOUTS, humantime::parse_duration;
    /// Longest wait for a connection's HTTP request headers, against slowloris [default: 10s].
    handshake_timeout: Duration = Duration::from_secs(10), "DUPLEX_HANDSHAKE_TIMEOUT", TIMEOUTS, humantime::parse_duration;
    /// Longest wait for a whole HTTP request body, from the end of its headers; later, 408 and the connection is closed [default: 10s].
    request_timeout: Duration = Duration::from_secs(10), "DUPLEX_REQUEST_TIMEOUT", TIMEOUTS, humantime::parse_duration;
    /// How long a /ws client may stay connected without sending its first command (with token auth: without a successful connect), 0 = no limit [default: 10s].
    connect_timeout: Duration = Duration::from_secs(10), "DUPLEX_CONNECT_TIMEOUT", TIMEOUTS, humantime::parse_duration;
    /// How long shutdown waits for queues to flush and clients to close [default: 5s].
    shutdown_timeout: Duration = Duration::from_secs(5), "DUPLEX_SHUTDOWN_TIMEOUT", TIMEOUTS, humantime::parse_duration;
    /// Largest HTTP API request body in bytes [default: 1048576].
    max_http_body: usize = 1024 * 1024, "DUPLEX_MAX_HTTP_BODY", LIMITS;
    /// Allow a non-loopback --listen without authentication (logs a loud warning) [default: false].
    insecure: bool = false, "DUPLEX_INSECURE", AUTH;
    /// Log format: text or json [default: text].
    log_format: LogFormat = LogFormat::Text, "DUPLEX_LOG_FORMAT", LOGGING;
    /// Log filter, e.g. info or duplex=debug [default: info; RUST_LOG also works].
    log_level: String = "info".to_string(), "DUPLEX_LOG_LEVEL", LOGGING;
}

#[cfg(test)]
mod tests;
