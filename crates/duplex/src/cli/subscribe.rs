//! `duplex subscribe`: every message of some channels, one line each on
//! stdout, for as long as it runs: it reconnects when the node restarts,
//! and presents a token when the node wants one.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use duplex::auth::{mint, unix_now, Claims};
use duplex::config::Secret;
use duplex_protocol::time::NumericDate;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::server_url::{node_url, Endpoint};

/// What `subscribe --help` says after the flags.
const AFTER_HELP: &str = "\
Output: one line per message on stdout. Text arrives as is and JSON as its \
JSON text; a binary message (or one that is not UTF-8) is printed as \
`base64:` followed by its bytes in base64, so a text message that itself \
starts with `base64:` looks the same. With several channels each line \
starts with the channel and a tab. Status lines go to stderr.

Reconnects: when the node goes away (close 1001, a restart) at once, after \
a lost connection or a close 3000-3499 with backoff up to 5 s, retrying \
while the node refuses connections. Exits 1 if the first connection fails, \
on a refusal (token, channel) and on a close that says not to reconnect.";

/// Arguments of `duplex subscribe`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct SubscribeArgs {
    /// Channels to watch.
    #[arg(required = true)]
    channels: Vec<String>,
    /// Node to connect to (its /ws endpoint): http(s):// or ws(s)://, either names the node.
    #[arg(long, default_value = "http://127.0.0.1:1234")]
    server: String,
    /// Connection token, for a node with token auth (wins over --token-secret).
    #[arg(long, env = "DUPLEX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The node's shared secret: mint a token for --user at each connection, as `duplex token` does.
    #[arg(long, env = "DUPLEX_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<Secret>,
    /// User id (`sub`) of the tokens minted from --token-secret [default: anonymous].
    #[arg(long)]
    user: Option<String>,
}

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Lifetime of a token minted here; a connection that outlives it is
/// closed with 3006 and comes back with a fresh one.
const MINTED_TTL: u64 = 3600;

/// Prints until interrupted, or until the node refuses for good.
pub(crate) async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let url = node_url(&args.server, Endpoint::WebSocket, "/ws")?;
    let tokens = Tokens::new(&args)?;
    let show_channel = args.channels.len() > 1;
    let mut ever_subscribed = false;
    let mut failures = 0u32;
    loop {
        let token = tokens.next()?;
        let end = run_session(&url, &args.channels, token, show_channel).await?;
        if end.subscribed {
            ever_subscribed = true;
            failures = 0;
        }
        let delay = match end.next {
            // Before the first subscription, whatever went wrong is likely
            // a mistake (wrong port, node not started): say so and stop.
            _ if !ever_subscribed => bail!("{}", end.why),
            Next::Stop => bail!("{}", end.why),
            Next::AtOnce if failures == 0 => Duration::ZERO,
            Next::AtOnce | Next::Backoff => backoff(failures),
            Next::NewToken if tokens.can_mint() => Duration::ZERO,
            Next::NewToken => bail!("{}: pass a fresh --token", end.why),
        };
        failures = failures.saturating_add(1);
        eprintln!(
            "duplex: {}; reconnecting in {} ms",
            end.why,
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
    }
}

/// 100 ms after the first failure, doubling up to [`MAX_BACKOFF`], with
/// up to a fifth added at random so many subscribers do not retry in step.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(6))
        .min(MAX_BACKOFF);
    base + base.mul_f64(rand::random::<f64>() / 5.0)
}

/// Where each connection's token comes from.
enum Tokens {
    None,
    Given(String),
    Minted { secret: Secret, user: String },
}

impl Tokens {
    fn new(args: &SubscribeArgs) -> anyhow::Result<Tokens> {
        Ok(match (&args.token, &args.token_secret) {
            (Some(token), _) => Tokens::Given(token.clone()),
            (None, Some(secret)) if !secret.is_empty() => Tokens::Minted {
                secret: secret.clone(),
                user: args.user.clone().unwrap_or_default(),
            },
            _ if args.user.is_some() => {
                bail!("--user needs --token-secret (or DUPLEX_TOKEN_SECRET) to sign a token with")
            }
            _ => Tokens::None,
        })
    }

    fn can_mint(&self) -> bool {
        matches!(self, Tokens::Minted { .. })
    }

    /// The token for the next connection: a fresh one when minting.
    fn next(&self) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Tokens::None => None,
            Tokens::Given(token) => Some(token.clone()),
            Tokens::Minted { secret, user } => {
                let now = unix_now();
                let claims = Claims {
                    sub: user.clone(),
                    exp: Some(NumericDate::from_secs(now + MINTED_TTL)),
                    iat: Some(NumericDate::from_secs(now)),
                    ..Default::default()
                };
                Some(mint(secret.expose(), &claims)?)
            }
        })
    }
}

/// How one connection ended, when it may be worth another.
struct End {
    /// Whether the node confirmed the subscription on it.
    subscribed: bool,
    /// What happened, for the status line.
    why: String,
    next: Next,
}

/// What PROTOCOL.md section 5 says to do after a close.
enum Next {
    AtOnce,
    Backoff,
    NewToken,
    Stop,
}

impl Next {
    fn after_close(code: u16) -> Next {
        match code {
            1001 => Next::AtOnce,
            3006 => Next::NewToken,
            1006 | 1011..=1014 | 3000..=3499 => Next::Backoff,
            _ => Next::Stop,
        }
    }
}

const CONNECT_ID: u64 = 1;
const SUBSCRIBE_ID: u64 = 2;

/// One connection: connect, subscribe, print. Err only for what no
/// reconnect can mend (a refused command, stdout gone).
async fn run_session(
    url: &str,
    channels: &[String],
    token: Option<String>,
    show_channel: bool,
) -> anyhow::Result<End> {
    let lost = |subscribed, why| End {
        subscribed,
        why,
        next: Next::Backoff,
    };
    let mut ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(e) => return Ok(lost(false, format!("cannot connect to {url}: {e}"))),
    };
    let mut connect = json!({"name": "duplex subscribe", "version": env!("CARGO_PKG_VERSION")});
    if let Some(token) = token {
        connect["token"] = Value::String(token);
    }
    let commands = [
        json!({"id": CONNECT_ID, "method": "connect", "params": connect}),
        json!({"id": SUBSCRIBE_ID, "method": "subscribe", "params": {"channels": channels}}),
    ];
    for command in commands {
        if let Err(e) = ws.send(Message::text(command.to_string())).await {
            return Ok(lost(false, format!("connection lost: {e}")));
        }
    }
    let mut subscribed = false;
    loop {
        let frame = match ws.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Ok(lost(subscribed, format!("connection lost: {e}"))),
            None => return Ok(lost(subscribed, "connection lost".to_string())),
        };
        match frame {
            Message::Text(text) => {
                let value: Value =
                    serde_json::from_str(&text).context("the node sent invalid JSON")?;
                if let Some(error) = value.get("error") {
                    let temporary = error["temporary"] == true;
                    let what = match value["id"].as_u64() {
                        Some(CONNECT_ID) => "connect",
                        Some(SUBSCRIBE_ID) => "the subscription",
                        _ => "a command",
                    };
                    let why = format!("the node refused {what}: {error}");
                    if temporary {
                        // A broker outage: the node may take it later.
                        return Ok(lost(subscribed, why));
                    }
                    return Err(anyhow!(why));
                }
                if value["id"].as_u64() == Some(SUBSCRIBE_ID) {
                    subscribed = true;
                    eprintln!("duplex: subscribed to {}", channels.join(", "));
                    continue;
                }
                if value["push"] == "message" {
                    print_message(&value, show_channel)?;
                }
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Ok(End {
                    subscribed,
                    why: format!("the node closed the connection: {code} {reason}"),
                    next: Next::after_close(code),
                });
            }
            _ => {}
        }
    }
}

/// One line on stdout: `[channel\t]data`, binary as `base64:<data>`.
/// A closed stdout (`duplex subscribe news | head -1`) ends the command.
fn print_message(push: &Value, show_channel: bool) -> anyhow::Result<()> {
    let data = match &push["data"] {
        Value::String(s) if push["encoding"] == "base64" => format!("base64:{s}"),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut line = String::new();
    if show_channel {
        line.push_str(push["channel"].as_str().unwrap_or(""));
        line.push('\t');
    }
    line.push_str(&data);
    line.push('\n');
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => other.context("cannot write to stdout"),
    }
}
