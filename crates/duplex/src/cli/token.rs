//! `duplex token`: mints an HS256 connection token from the node's secret,
//! for development and for backends without a JWT library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use duplex::auth::{mint, unix_now, Claims};
use duplex::config::{Secret, Settings};
use duplex_protocol::time::NumericDate;
use serde_json::value::RawValue;

/// Arguments of `duplex token`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// User id (`sub`); empty = anonymous.
    #[arg(long, default_value = "")]
    user: String,
    /// Lifetime, e.g. 15m, 1h, 7d; 0 = never expires.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// JSON attached to the connection (`info` claim).
    #[arg(long)]
    info: Option<String>,
    /// Channels the server subscribes the client to at connect (comma-separated).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// The node's shared secret, as given to `serve --token-secret` (or token_secret in --config).
    // `--secret` was this flag's name: still accepted, no longer shown.
    #[arg(
        long,
        alias = "secret",
        env = "DUPLEX_TOKEN_SECRET",
        hide_env_values = true
    )]
    token_secret: Option<Secret>,
    /// TOML config file to read token_secret from.
    #[arg(long, env = "DUPLEX_CONFIG")]
    config: Option<PathBuf>,
}

/// Prints the token on stdout.
pub(crate) fn token(args: TokenArgs) -> anyhow::Result<()> {
    let from_file = match &args.config {
        Some(path) => Settings::from_file(path)?.token_secret,
        None => None,
    };
    let secret = args.token_secret.or(from_file).unwrap_or_default();
    let info = args
        .info
        .map(RawValue::from_string)
        .transpose()
        .context("--info must be JSON")?;
    let now = unix_now();
    let claims = Claims {
        sub: args.user,
        exp: (!args.ttl.is_zero()).then(|| NumericDate::from_secs(now + args.ttl.as_secs().max(1))),
        iat: Some(NumericDate::from_secs(now)),
        info,
        channels: args.channels,
        ..Default::default()
    };
    println!("{}", mint(secret.expose(), &claims)?);
    Ok(())
}
