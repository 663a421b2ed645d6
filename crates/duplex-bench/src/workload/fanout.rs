//! `fanout`: N subscribers on one channel.

use super::delivery::{self, Delivery};
use crate::cli::FanoutArgs;
use crate::report::Report;

/// Runs the fan-out workload.
pub(super) async fn run(args: FanoutArgs) -> Result<Report, String> {
    let inflight = args.load.inflight.unwrap_or(1);
    delivery::run(Delivery {
        workload: "fanout",
        subscribers: args.subscribers,
        channels: vec![args.channel],
        own_channel: false,
        listen_only: args.listen_only,
        stalled: args.stalled,
        inflight,
        common: args.common,
        load: args.load,
    })
    .await
}
