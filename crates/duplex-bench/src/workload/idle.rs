//! `idle`: open N connections with bounded concurrency (the connect rate),
//! hold them, and report the server's RSS per connection.

use super::{client_config, Sample};
use crate::cli::IdleArgs;
use crate::conn::{self, Ctx};
use crate::proc;
use crate::report::{round3, IdleReport, Report};

/// Runs the idle-connections workload.
pub(super) async fn run(args: IdleArgs) -> Result<Report, String> {
    let verbose = !args.common.json;
    let cfg = client_config(&args.common)?;
    let ctx = Ctx::new(cfg, 0);
    let n = args.connections;
    let before = Sample::take(args.common.server_pid);
    if verbose {
        eprintln!(
            "opening {n} {} connections to {} ({} handshakes in flight) ...",
            args.common.protocol.name(),
            args.common.server,
            args.common.concurrency
        );
    }
    let channel = args.channel.clone();
    let own = args.own_channel;
    let ramp = conn::open_all(&ctx, n, false, |i| {
        if own {
            format!("{channel}-{i}")
        } else {
            channel.clone()
        }
    })
    .await;
    let connected = Sample::take(args.common.server_pid);
    if verbose {
        eprintln!(
            "  {} established in {:.2} s ({} failed); holding {:?} ...",
            ramp.established,
            ramp.elapsed.as_secs_f64(),
            ramp.failed,
            args.hold
        );
    }
    tokio::time::sleep(args.hold).await;
    let after = Sample::take(args.common.server_pid);
    let alive = ctx.live.get();
    ctx.finished.set(true);

    let st = ctx.stats.borrow();
    let server_cpu = match (before.server_cpu, connected.server_cpu) {
        (Some(a), Some(b)) => Some(round3(b - a)),
        _ => None,
    };
    let per_connection = match (before.server_rss, after.server_rss) {
        (Some(a), Some(b)) if ramp.established > 0 => {
            Some(round3((b as f64 - a as f64) / ramp.established as f64))
        }
        _ => None,
    };
    let secs = ramp.elapsed.as_secs_f64();
    let report = IdleReport {
        workload: "idle",
        protocol: args.common.protocol,
        connections: n,
        established: ramp.established,
        failed: ramp.failed,
        alive_after_hold: alive,
        connect_s: round3(secs),
        connect_rate: if secs > 0.0 {
            (ramp.established as f64 / secs).round()
        } else {
            0.0
        },
        concurrency: args.common.concurrency,
        hold_s: args.hold.as_secs_f64(),
        server_rss_before_kib: before.server_rss,
        server_rss_after_kib: after.server_rss,
        server_rss_per_connection_kib: per_connection,
        server_connect_cpu_s: server_cpu,
        server_cpu_us_per_connect: server_cpu
            .filter(|_| ramp.established > 0)
            .map(|c| round3(c * 1e6 / ramp.established as f64)),
        generator_connect_cpu_s: round3(connected.generator_cpu - before.generator_cpu),
        generator_rss_kib: proc::rss_kib(proc::Target::SelfProcess).unwrap_or(0),
        pings: st.pings,
        error_count: st.errors.total(),
        errors: st.errors.map().clone(),
    };
    Ok(Report::Idle(Box::new(report)))
}
