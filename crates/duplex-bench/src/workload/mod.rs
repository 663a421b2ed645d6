//! The workloads, and what `fanout` and `channels` share: connect the
//! subscribers, run the publisher, wait for the last deliveries, measure.

mod channels;
mod churn;
mod delivery;
mod fanout;
mod idle;
mod stalled;

pub(crate) use churn::ChurnReport;
pub(crate) use delivery::Drain;
pub(crate) use stalled::StalledReport;

use crate::cli::{Command, Common};
use crate::conn::ClientConfig;
use crate::report::Report;
use crate::target::{Server, Sources};

/// Runs one workload to its report.
pub(crate) async fn run(command: Command) -> Result<Report, String> {
    match command {
        Command::Fanout(args) => fanout::run(args).await,
        Command::Channels(args) => channels::run(args).await,
        Command::Idle(args) => idle::run(args).await,
        Command::Churn(args) => churn::run(args).await,
    }
}

/// Client settings from the common flags.
fn client_config(common: &Common) -> Result<ClientConfig, String> {
    let server = Server::parse(&common.server)?;
    Ok(ClientConfig {
        protocol: common.protocol,
        sources: Sources::new(&server, common.source_offset, common.per_source),
        server,
        app_key: common.app_key.clone(),
        concurrency: common.concurrency,
        setup_timeout: common.setup_timeout,
        verbose: !common.json,
        delayed_ack: common.delayed_ack,
    })
}

/// CPU and memory readings at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    server_cpu: Option<f64>,
    server_rss: Option<u64>,
    generator_cpu: f64,
    receiver_cpu: f64,
}

impl Sample {
    /// Reads now; call from the receive (main) thread.
    fn take(server_pid: Option<u32>) -> Self {
        use crate::proc::{cpu_seconds, rss_kib, Target};
        let server = server_pid.map(Target::Pid);
        Sample {
            server_cpu: server.and_then(|t| cpu_seconds(t).ok()),
            server_rss: server.and_then(|t| rss_kib(t).ok()),
            generator_cpu: cpu_seconds(Target::SelfProcess).unwrap_or(0.0),
            receiver_cpu: cpu_seconds(Target::SelfThread).unwrap_or(0.0),
        }
    }
}
