//! Command-line interface: `serve`, `publish`, `subscribe`, `token`, `genconfig`.
//! The only place that uses `anyhow`: errors here end with a message to a person.

mod check;
mod errors;
mod publish;
mod reload;
mod server_url;
mod subscribe;
mod token;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use duplex::config::{LogFormat, Settings};
use tracing_subscriber::EnvFilter;

/// Real-time messaging gateway: WebSocket clients <-> channels <-> memory or Redis broker.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (embedded broker by default; --redis to share channels between nodes).
    Serve {
        /// TOML file with the same settings (snake_case keys); flags and DUPLEX_* env win over it.
        #[arg(long, env = "DUPLEX_CONFIG")]
        config: Option<PathBuf>,
        /// Validate the settings, print the effective rules (no secrets), and exit.
        #[arg(long)]
        check_config: bool,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Publish one message to a channel, through a node's HTTP API or straight to Redis.
    Publish(publish::PublishArgs),
    /// Print every message of the given channels, one line each, until interrupted (reconnects).
    Subscribe(subscribe::SubscribeArgs),
    /// Mint a connection token (HS256) from the node's secret.
    Token(token::TokenArgs),
    /// Print a complete, commented config file of the defaults.
    Genconfig,
}

/// Runs the command and turns errors into a message and exit code 1.
pub(crate) fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let cli = Cli::try_parse_from(&args)
        .unwrap_or_else(|e| errors::blame_environment(e, &Cli::command(), &args).exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duplex: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                config,
                check_config,
                settings,
            } => serve(config, check_config, *settings).await,
            Command::Publish(args) => publish::publish(args).await,
            Command::Subscribe(args) => subscribe::subscribe(args).await,
            Command::Token(args) => token::token(args),
            Command::Genconfig => print(&duplex::config::Config::default_file()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duplex: {}", errors::report(&e));
            ExitCode::FAILURE
        }
    }
}

async fn serve(file: Option<PathBuf>, check_only: bool, flags: Settings) -> anyhow::Result<()> {
    let settings = match &file {
        Some(path) => flags.clone().or(Settings::from_file(path)?),
        None => flags.clone(),
    };
    let config = settings.resolve()?;
    if check_only {
        return check::check(&config);
    }
    init_logging(config.log_format, &config.log_level)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let reloads = reload::on_sighup(file, flags)?;
    let listener = duplex::server::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    duplex::server::run_reloading(listener, config, shutdown_signal(), reloads).await?;
    Ok(())
}

fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(level),
    }
    .context("invalid log filter")?;
    // Colours only for a person at a terminal, never into a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

/// Writes to stdout; a closed pipe (`duplex genconfig | head`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
