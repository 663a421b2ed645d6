//! SIGHUP: the settings are read again (the config file; flags and
//! environment as they were at start) and a valid result goes to the node,
//! which applies what it can (`duplex::config::reload`) and logs the rest;
//! an invalid one is logged and the node keeps its running config.

use std::path::PathBuf;

use duplex::config::{Config, Settings};
use tokio::sync::mpsc;

/// Starts listening for SIGHUP (before the node starts, so a SIGHUP during
/// start-up cannot kill the process) and yields each new valid config.
pub(crate) fn on_sighup(
    file: Option<PathBuf>,
    flags: Settings,
) -> anyhow::Result<mpsc::Receiver<Config>> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        use anyhow::Context;
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!(file = ?file, "SIGHUP received: reading the config again");
                match read(file.as_ref(), &flags) {
                    Ok(config) => {
                        if tx.send(config).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!(
                        "reload refused, the new config is invalid: {e:#}; still running with the old config"
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (file, flags, tx);
    Ok(rx)
}

fn read(file: Option<&PathBuf>, flags: &Settings) -> anyhow::Result<Config> {
    let settings = match file {
        Some(path) => flags.clone().or(Settings::from_file(path)?),
        None => flags.clone(),
    };
    Ok(settings.resolve()?)
}
