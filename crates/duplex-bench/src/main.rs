//! `duplex-bench`: a load generator for WebSocket push servers on loopback
//! (Duplex plain and native protocols, Pusher Channels v7).
//!
//! Workloads: `fanout` (N subscribers on one channel), `channels` (N
//! clients each on its own channel), `idle` (hold N connections, measure
//! the server's memory per connection and the connect rate). All client
//! sockets live on one current-thread runtime; the publisher has its own
//! thread. Output: one JSON object on stdout, and a short summary on stderr
//! unless `--json`.

mod cli;
mod conn;
mod proc;
mod protocol;
mod publish;
mod pusher;
mod report;
mod stats;
mod target;
mod workload;
mod ws;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let json_only = cli.command.common().json;
    let nofile = proc::raise_nofile();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(json_only, &format!("runtime: {e}")),
    };
    if !json_only {
        match &nofile {
            Ok(limit) => eprintln!("duplex-bench: open files limit {limit}"),
            Err(e) => eprintln!("duplex-bench: could not raise the open files limit: {e}"),
        }
    }
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, workload::run(cli.command));
    match result {
        Ok(report) => {
            if !json_only {
                eprintln!("{}", report.summary());
            }
            println!("{}", report.to_json());
        }
        Err(e) => fail(json_only, &e),
    }
    // Connections are closed by the process exit; do not wait for tasks.
    std::process::exit(0);
}

/// Reports a fatal error (as JSON too, so scripts see it) and exits 1.
fn fail(json_only: bool, message: &str) -> ! {
    if !json_only {
        eprintln!("duplex-bench: {message}");
    }
    println!("{}", serde_json::json!({ "error": message }));
    std::process::exit(1);
}
