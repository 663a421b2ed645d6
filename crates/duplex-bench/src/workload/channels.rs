//! `channels`: N clients each on its own channel (personal notifications);
//! each publish goes to a random one.

use super::delivery::{self, Delivery};
use crate::cli::ChannelsArgs;
use crate::report::Report;

/// Runs the per-client channels workload.
pub(super) async fn run(args: ChannelsArgs) -> Result<Report, String> {
    let inflight = args.load.inflight.unwrap_or(4);
    delivery::run(Delivery {
        workload: "channels",
        subscribers: args.clients,
        channels: (0..args.clients)
            .map(|i| format!("{}{i}", args.prefix))
            .collect(),
        own_channel: true,
        listen_only: false,
        stalled: 0,
        inflight,
        common: args.common,
        load: args.load,
    })
    .await
}
