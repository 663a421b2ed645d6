//! The broker contract (`duplex::broker`'s module doc), checked once for
//! every broker: each case in `broker_conformance/cases.rs` is written
//! against the ability traits only and stamped out here per backend, so a
//! test is named `<backend>::<case>` (`cargo test --test broker_conformance
//! redis::`). A new backend is one `conformance!` line below plus its
//! [`Fixture`](fixtures::Fixture) in `broker_conformance/fixtures.rs`:
//! how to start it, make a node on it, take it down and bring it back.
//!
//! Real backends only: the Redis cases run on a private redis-server,
//! the NATS cases on a private nats-server.

mod support;

#[path = "broker_conformance/cases.rs"]
mod cases;
#[path = "broker_conformance/fixtures.rs"]
mod fixtures;
#[path = "broker_conformance/history.rs"]
mod history;
#[path = "broker_conformance/ingest.rs"]
mod ingest;
#[path = "broker_conformance/presence.rs"]
mod presence;

/// Stamps the cases out for one backend: `conformance!(module, Fixture)`
/// runs every group; `conformance!(module, Fixture, [groups], [not held])`
/// runs the listed groups and, for each group of an ability the backend
/// does not hold, one test `<module>::not_held::<group>` checking that the
/// broker refuses it and says what to use instead: skipped in the open,
/// never passed in silence.
macro_rules! conformance {
    ($backend:ident, $fixture:ty) => {
        conformance!($backend, $fixture, [pubsub, upstream, history, ingest, presence], []);
    };
    ($backend:ident, $fixture:ty, [$($group:ident),* $(,)?], [$($absent:ident),* $(,)?]) => {
        mod $backend {
            $( conformance!(@group $group, $fixture); )*
            mod not_held {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $absent() {
                        let fixture =
                            <$fixture as crate::fixtures::Fixture>::start().await;
                        crate::cases::ability_not_held(fixture, stringify!($absent)).await;
                    }
                )*
            }
        }
    };
    (@group pubsub, $fixture:ty) => {
        conformance!(
            @cases $fixture,
            subscribe_is_confirmed_before_ok,
            unsubscribe_stops_delivery,
            each_subscribed_node_gets_each_publication_once,
            each_publisher_keeps_its_order,
            kinds_follow_the_backend_rule,
            excluding_a_connection_on_another_node,
            a_local_sender_is_excluded_here_only,
            an_outage_is_reported_and_refused,
            subscriptions_survive_a_restart,
        );
    };
    (@group upstream, $fixture:ty) => {
        conformance!(@cases $fixture, upstream_entries_are_appended_in_order);
    };
    (@group history, $fixture:ty) => {
        conformance!(
            @cases $fixture,
            history_offsets_start_at_one_and_reach_every_node,
            history_reads_since_limit_and_reverse,
            history_keeps_at_most_size,
            history_a_reader_ahead_of_the_stream_starts_a_new_epoch,
            history_ttl_drops_publications_but_keeps_the_position,
            history_meta_expiry_starts_a_new_epoch,
            history_starts_a_new_epoch_when_the_backend_comes_back_empty,
            history_racing_publishers_get_unique_increasing_offsets,
            a_raw_publish_on_a_history_channel_has_no_position,
            history_publishes_keep_exclusions,
        );
    };
    (@group ingest, $fixture:ty) => {
        conformance!(
            @cases $fixture,
            ingest_lease_goes_to_one_holder_at_a_time,
            ingest_entries_are_read_claimed_published_once_and_acknowledged,
        );
    };
    (@group presence, $fixture:ty) => {
        conformance!(
            @cases $fixture,
            presence_users_join_on_their_first_connection_and_leave_after_their_last,
            presence_changes_are_stamped_in_the_channels_order,
            presence_anonymous_members_are_each_their_own_user,
            presence_members_and_stats_are_exact,
            presence_a_silent_nodes_members_go_after_its_lease_and_leave_once,
            presence_a_swept_node_learns_it_and_rejoin_restores_its_members,
            presence_an_expired_lease_not_yet_swept_is_renewed,
            presence_a_join_sweeps_expired_leases_first,
            presence_forget_removes_a_node_at_once,
            presence_a_backend_back_empty_loses_every_lease,
            presence_a_restarted_node_does_not_renew_its_previous_run,
            presence_a_tick_costs_the_same_whatever_the_channel_size,
        );
    };
    (@cases $fixture:ty, $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture =
                    <$fixture as crate::fixtures::Fixture>::start().await;
                crate::cases::$case(fixture).await;
            }
        )+
    };
}

conformance!(memory, crate::fixtures::Memory);
conformance!(redis, crate::fixtures::Redis);
conformance!(
    nats,
    crate::fixtures::Nats,
    [pubsub, upstream],
    [history, ingest, presence]
);
// The ingest stream is refused on a cluster for now (docs/SCALING.md).
conformance!(
    redis_cluster,
    crate::fixtures::RedisCluster,
    [pubsub, upstream, history, presence],
    [ingest]
);
