//! Command-line interface.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::protocol::Protocol;
use crate::publish::Via;

/// Load generator for WebSocket push servers on loopback.
#[derive(Debug, Parser)]
#[command(name = "duplex-bench", version, about)]
pub(crate) struct Cli {
    /// Workload.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The workloads.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// N subscribers on one channel, one publisher at R messages/s.
    Fanout(FanoutArgs),
    /// N clients each on its own channel (`<prefix><i>`), publishes spread over random channels.
    Channels(ChannelsArgs),
    /// Open and hold N connections: connect rate and server RSS per connection.
    Idle(IdleArgs),
    /// Soak: a churning population of native clients, steady HTTP publishes, a delivery check.
    Churn(ChurnArgs),
}

impl Command {
    /// The flags every workload has.
    pub(crate) fn common(&self) -> &Common {
        match self {
            Command::Fanout(a) => &a.common,
            Command::Channels(a) => &a.common,
            Command::Idle(a) => &a.common,
            Command::Churn(a) => &a.common,
        }
    }
}

/// Flags of every workload.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// Server URL (also the base of the HTTP API).
    #[arg(long, default_value = "ws://127.0.0.1:1234")]
    pub(crate) server: String,
    /// Client protocol.
    #[arg(long, value_enum, default_value = "plain")]
    pub(crate) protocol: Protocol,
    /// Pid of the server: report its CPU per delivery and RSS from /proc.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Print only one JSON object on stdout (no summary on stderr).
    #[arg(long)]
    pub(crate) json: bool,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) concurrency: usize,
    /// Bound on connect + handshake + subscribe of one connection.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) setup_timeout: Duration,
    /// Source addresses start at 127.0.0.(1 + offset): give each generator process its own range.
    #[arg(long, default_value_t = 0)]
    pub(crate) source_offset: u32,
    /// Connections per source address. The kernel's ephemeral port search gets
    /// slow as a source address fills its ~28k ports; 5000 keeps connect() cheap.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) per_source: u32,
    /// Ask the kernel to delay ACKs (TCP_QUICKACK off, renewed after every read):
    /// fewer ACK packets, so less generator CPU; changes TCP timing (see README).
    #[arg(long)]
    pub(crate) delayed_ack: bool,
    /// Pusher app id (HTTP API path).
    #[arg(long, default_value = "app-id")]
    pub(crate) app_id: String,
    /// Pusher app key (WebSocket path and HTTP auth_key).
    #[arg(long, default_value = "app-key")]
    pub(crate) app_key: String,
    /// Pusher app secret (HTTP API signing).
    #[arg(long, default_value = "app-secret")]
    pub(crate) app_secret: String,
}

/// Flags of the publishing workloads.
#[derive(Debug, Clone, Args)]
pub(crate) struct Load {
    /// Messages published per second (in total).
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Measured publishing time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Publishing time before the measurement (not counted).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) warmup: Duration,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub(crate) size: usize,
    /// How messages are published.
    #[arg(long, value_enum, default_value = "http")]
    pub(crate) via: Via,
    /// Redis URL for `--via redis` (the Redis the server uses).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis: String,
    /// Duplex API key, sent as `Authorization: apikey <key>`.
    #[arg(long)]
    pub(crate) api_key: Option<String>,
    /// HTTP publish requests in flight at once (1 keeps the order; default 1 for fanout, 4 for channels).
    #[arg(long)]
    pub(crate) inflight: Option<usize>,
    /// Pusher event name.
    #[arg(long, default_value = "bench")]
    pub(crate) event: String,
    /// Unix time (seconds) at which publishing (the warm-up) starts; give
    /// every generator process of one run the same value (see `--listen-only`).
    #[arg(long)]
    pub(crate) start_at: Option<f64>,
    /// Longest wait after publishing for the last deliveries.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) drain: Duration,
}

/// `fanout` flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct FanoutArgs {
    /// Common flags.
    #[command(flatten)]
    pub(crate) common: Common,
    /// Publishing flags.
    #[command(flatten)]
    pub(crate) load: Load,
    /// Subscribers on the channel.
    #[arg(long, default_value_t = 2000)]
    pub(crate) subscribers: usize,
    /// The channel.
    #[arg(long, default_value = "bench")]
    pub(crate) channel: String,
    /// Only subscribe and measure: another generator process, started with
    /// the same `--start-at`, publishes. Spreads the receive work of a large
    /// fan-out over processes; expected deliveries are the in-window sequence
    /// numbers seen by any subscriber of this process.
    #[arg(long, requires = "start_at")]
    pub(crate) listen_only: bool,
    /// Also subscribe K clients that never read after subscribing: does the
    /// server cut them (and how), do the readers notice, does its memory
    /// stay bounded? Reported under `stalled`; not counted as subscribers.
    #[arg(long, default_value_t = 0)]
    pub(crate) stalled: usize,
}

/// `channels` flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChannelsArgs {
    /// Common flags.
    #[command(flatten)]
    pub(crate) common: Common,
    /// Publishing flags.
    #[command(flatten)]
    pub(crate) load: Load,
    /// Clients, each on its own channel.
    #[arg(long, alias = "subscribers", default_value_t = 1000)]
    pub(crate) clients: usize,
    /// Channel name prefix: client i is on `<prefix><i>`.
    #[arg(long, default_value = "ch-")]
    pub(crate) prefix: String,
}

/// `idle` flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    /// Common flags.
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 19_000)]
    pub(crate) connections: usize,
    /// How long to hold them before measuring the server's RSS.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) hold: Duration,
    /// Channel every connection subscribes to.
    #[arg(long, default_value = "bench")]
    pub(crate) channel: String,
    /// Subscribe connection i to its own channel `<channel>-<i>` instead.
    #[arg(long)]
    pub(crate) own_channel: bool,
}

/// `churn` flags. Clients always speak the native protocol (`--protocol` is
/// ignored) and publishes go through `POST /api/publish`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChurnArgs {
    /// Common flags.
    #[command(flatten)]
    pub(crate) common: Common,
    /// Clients kept connected (the population).
    #[arg(long, default_value_t = 3000)]
    pub(crate) clients: usize,
    /// Channels in the pool.
    #[arg(long, default_value_t = 100)]
    pub(crate) channels: usize,
    /// Channel name prefix: the pool is `<prefix>0..<prefix><channels - 1>`.
    #[arg(long, default_value = "soak-")]
    pub(crate) prefix: String,
    /// Publishes per second over the pool (HTTP API, one request at a time).
    #[arg(long, default_value_t = 200.0)]
    pub(crate) rate: f64,
    /// How long to churn.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Fewest channels a client subscribes to.
    #[arg(long, default_value_t = 1)]
    pub(crate) min_subs: usize,
    /// Most channels a client subscribes to.
    #[arg(long, default_value_t = 4)]
    pub(crate) max_subs: usize,
    /// Shortest client life.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) min_life: Duration,
    /// Longest client life (uniform in between).
    #[arg(long, default_value = "115s", value_parser = humantime::parse_duration)]
    pub(crate) max_life: Duration,
    /// Mean time between a client's leave-one-join-another (uniform 0.5x..1.5x).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub(crate) flip_every: Duration,
    /// Share of clients that end with a TCP reset instead of a WebSocket close.
    #[arg(long, default_value_t = 0.3)]
    pub(crate) abrupt: f64,
    /// Most new clients started per second (the ramp, and replacements).
    #[arg(long, default_value_t = 500)]
    pub(crate) spawn_rate: u32,
    /// Source addresses clients rotate over (127.0.0.(1 + offset)..).
    #[arg(long, default_value_t = 8)]
    pub(crate) sources: u32,
    /// Duplex API key, sent as `Authorization: apikey <key>`.
    #[arg(long)]
    pub(crate) api_key: Option<String>,
    /// Interval of the `/health` poll that finds the broker outages.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub(crate) health_every: Duration,
    /// Wait after the last publish before closing every client.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) drain: Duration,
    /// Interval of the progress line on stderr.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) progress_every: Duration,
}
