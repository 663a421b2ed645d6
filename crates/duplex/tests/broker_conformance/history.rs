//! The History cases (`duplex::broker::history`'s module doc), against
//! [`History`] and a [`Fixture`] like the others. Expiry is waited on by
//! polling reads with generous deadlines (Redis expires in whole seconds).

use std::sync::Arc;
use std::time::Duration;

use duplex::broker::history::{HistoryOptions, HistoryPage, Query};
use duplex::broker::{BrokerStatus, RemoteConnection};
use duplex::message::{Position, Publication};

use crate::cases::{channel, expect, nodes, subscribe, text};
use crate::fixtures::{Fixture, Node};
use crate::support;

/// Keeps 100 publications for minutes: nothing expires during a case.
const KEEP: HistoryOptions = HistoryOptions {
    size: 100,
    ttl: Duration::from_secs(300),
    meta_ttl: Duration::from_secs(3600),
};

async fn record(node: &Node, publication: Publication, options: &HistoryOptions) -> Position {
    let on = publication.channel.clone();
    node.broker
        .history()
        .expect("the broker keeps history")
        .publish(publication, options)
        .await
        .unwrap_or_else(|e| panic!("{} records on {on}: {e}", node.id))
}

async fn read(node: &Node, on: &str, query: Query, options: &HistoryOptions) -> HistoryPage {
    node.broker
        .history()
        .expect("the broker keeps history")
        .read(channel(on), query, options)
        .await
        .unwrap_or_else(|e| panic!("{} reads {on}: {e}", node.id))
}

fn query(since: Option<u64>, limit: usize, reverse: bool) -> Query {
    Query {
        since,
        limit,
        reverse,
    }
}

/// The offsets and payloads of a page, and its top offset.
fn offsets(page: &HistoryPage) -> Vec<(u64, String)> {
    page.publications
        .iter()
        .map(|p| {
            let position = p
                .position
                .as_ref()
                .expect("a read publication has a position");
            assert_eq!(position.epoch, page.top.epoch, "one epoch per page");
            (
                position.offset,
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect()
}

fn numbered(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, String)> {
    range.map(|i| (i, format!("m{i}"))).collect()
}

/// Offsets start at 1 and go +1; the live copy on every node (the
/// publisher's included) carries the position the publish answered.
pub(crate) async fn history_offsets_start_at_one_and_reach_every_node<F: Fixture>(fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "h:live").await;
    }
    let last = nodes.len() - 1;
    let mut answered = Vec::new();
    for i in 1..=3u64 {
        let position = record(&nodes[last], text("h:live", &format!("m{i}")), &KEEP).await;
        assert_eq!(position.offset, i, "offsets from 1, +1");
        assert!(!position.epoch.is_empty() && !position.epoch.contains(' '));
        answered.push(position);
    }
    assert!(answered.iter().all(|p| p.epoch == answered[0].epoch));
    for node in &mut nodes {
        for (i, position) in answered.iter().enumerate() {
            let got = expect(node, "h:live", &format!("m{}", i + 1)).await;
            assert_eq!(got.position.as_ref(), Some(position), "node {}", node.id);
        }
    }
}

/// A read answers the top position and the publications after `since`,
/// oldest first (or newest first with `reverse`), at most `limit`; a
/// channel never published gets an epoch at offset 0, kept by the next publish.
pub(crate) async fn history_reads_since_limit_and_reverse<F: Fixture>(fixture: F) {
    let nodes = nodes(&fixture).await;
    let (writer, reader) = (&nodes[0], &nodes[nodes.len() - 1]);
    let empty = read(reader, "h:read", query(None, 10, false), &KEEP).await;
    assert_eq!(empty.top.offset, 0);
    assert!(empty.publications.is_empty());
    for i in 1..=5u64 {
        let position = record(writer, text("h:read", &format!("m{i}")), &KEEP).await;
        assert_eq!(position.epoch, empty.top.epoch, "the read's epoch is kept");
    }
    let all = read(reader, "h:read", query(None, 10, false), &KEEP).await;
    assert_eq!(
        all.top,
        Position {
            offset: 5,
            epoch: empty.top.epoch.clone()
        }
    );
    assert_eq!(offsets(&all), numbered(1..=5));
    let page = read(reader, "h:read", query(Some(2), 2, false), &KEEP).await;
    assert_eq!(offsets(&page), numbered(3..=4));
    let newest = read(reader, "h:read", query(None, 2, true), &KEEP).await;
    assert_eq!(offsets(&newest), vec![(5, "m5".into()), (4, "m4".into())]);
    let back = read(reader, "h:read", query(Some(3), 10, true), &KEEP).await;
    assert_eq!(offsets(&back), vec![(5, "m5".into()), (4, "m4".into())]);
    let none = read(reader, "h:read", query(Some(5), 10, false), &KEEP).await;
    assert!(none.publications.is_empty());
    let top_only = read(reader, "h:read", query(None, 0, false), &KEEP).await;
    assert_eq!((top_only.top.offset, top_only.publications.len()), (5, 0));
}

/// At most `size` publications are kept: the oldest go, offsets go on.
pub(crate) async fn history_keeps_at_most_size<F: Fixture>(fixture: F) {
    let node = fixture.node("n0").await;
    let small = HistoryOptions { size: 3, ..KEEP };
    for i in 1..=5u64 {
        record(&node, text("h:size", &format!("m{i}")), &small).await;
    }
    let page = read(&node, "h:size", query(None, 10, false), &small).await;
    assert_eq!(page.top.offset, 5);
    assert_eq!(offsets(&page), numbered(3..=5));
    let since = read(&node, "h:size", query(Some(1), 10, false), &small).await;
    assert_eq!(offsets(&since), numbered(3..=5), "2 is gone");
    let newest = read(&node, "h:size", query(None, 10, true), &small).await;
    assert_eq!(
        offsets(&newest),
        numbered(3..=5).into_iter().rev().collect::<Vec<_>>()
    );
}

/// A reader that saw an offset the channel's history, in the same epoch,
/// no longer reaches (a failover lost the newest publications) makes the
/// backend start a new epoch; a reader of another epoch, or not ahead,
/// changes nothing.
pub(crate) async fn history_a_reader_ahead_of_the_stream_starts_a_new_epoch<F: Fixture>(
    fixture: F,
) {
    let node = fixture.node("n0").await;
    let history = node.broker.history().expect("history");
    for i in 1..=3u64 {
        record(&node, text("h:ahead", &format!("m{i}")), &KEEP).await;
    }
    let before = read(&node, "h:ahead", query(None, 0, false), &KEEP)
        .await
        .top;
    let restart = |seen: Position| async move {
        history
            .restart_epoch(channel("h:ahead"), &seen, &KEEP)
            .await
            .expect("restart_epoch")
    };
    let not_ahead = Position {
        offset: 3,
        ..before.clone()
    };
    assert_eq!(restart(not_ahead).await, before, "a reader at the top");
    let other = Position {
        offset: 9,
        epoch: "another-epoch".into(),
    };
    assert_eq!(restart(other).await, before, "a reader of another epoch");
    let ahead = Position {
        offset: 5,
        ..before.clone()
    };
    let after = restart(ahead.clone()).await;
    assert_ne!(after.epoch, before.epoch, "a new epoch");
    assert_eq!(after.offset, 0);
    assert!(read(&node, "h:ahead", query(None, 10, false), &KEEP)
        .await
        .publications
        .is_empty());
    // The same news from a second reader changes nothing more.
    assert_eq!(restart(ahead).await, after);
    let next = record(&node, text("h:ahead", "m4"), &KEEP).await;
    assert_eq!((next.offset, next.epoch), (1, after.epoch));
}

/// `ttl` after the last publish the publications are gone, while the
/// epoch and top stay (until `meta_ttl`): the next publish goes on from there.
pub(crate) async fn history_ttl_drops_publications_but_keeps_the_position<F: Fixture>(fixture: F) {
    let node = fixture.node("n0").await;
    // Two seconds: the read just after the publishes sees them even on a slow machine.
    let short = HistoryOptions {
        ttl: Duration::from_secs(2),
        ..KEEP
    };
    let first = record(&node, text("h:ttl", "m1"), &short).await;
    record(&node, text("h:ttl", "m2"), &short).await;
    let page = read(&node, "h:ttl", query(None, 10, false), &short).await;
    assert_eq!(offsets(&page), numbered(1..=2), "kept until the ttl");
    support::eventually("the publications expire", || async {
        read(&node, "h:ttl", query(None, 10, false), &short)
            .await
            .publications
            .is_empty()
    })
    .await;
    let page = read(&node, "h:ttl", query(None, 10, false), &short).await;
    assert_eq!(
        page.top,
        Position {
            offset: 2,
            epoch: first.epoch.clone()
        }
    );
    let next = record(&node, text("h:ttl", "m3"), &short).await;
    assert_eq!(
        next,
        Position {
            offset: 3,
            epoch: first.epoch
        }
    );
}

/// `meta_ttl` after the last publish the epoch and top are gone too: the
/// next read or publish starts a new epoch at offset 1.
pub(crate) async fn history_meta_expiry_starts_a_new_epoch<F: Fixture>(fixture: F) {
    let node = fixture.node("n0").await;
    let short = HistoryOptions {
        size: 10,
        ttl: Duration::from_secs(1),
        meta_ttl: Duration::from_secs(2),
    };
    let first = record(&node, text("h:meta", "m1"), &short).await;
    assert_eq!(first.offset, 1);
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let fresh = loop {
        let page = read(&node, "h:meta", query(None, 10, false), &short).await;
        if page.top.epoch != first.epoch {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the epoch never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((fresh.top.offset, fresh.publications.len()), (0, 0));
    let next = record(&node, text("h:meta", "m1 again"), &short).await;
    assert_eq!(
        next,
        Position {
            offset: 1,
            epoch: fresh.top.epoch
        }
    );
}

/// A backend that comes back empty (Redis restarted without persistence;
/// for memory, a new broker) starts a new epoch at offset 1, by itself
/// (Redis: the Functions are loaded again), and the live copy carries it.
pub(crate) async fn history_starts_a_new_epoch_when_the_backend_comes_back_empty<F: Fixture>(
    mut fixture: F,
) {
    let mut node = fixture.node("n0").await;
    subscribe(&node, "h:restart").await;
    let before = record(&node, text("h:restart", "m1"), &KEEP).await;
    expect(&mut node, "h:restart", "m1").await;
    if fixture.restart() {
        support::eventually("reconnected", || async {
            let state = node.broker.state();
            state.status == BrokerStatus::Connected && state.reconnects >= 1
        })
        .await;
    } else {
        node = fixture.node("n0").await;
        subscribe(&node, "h:restart").await;
    }
    let after = record(&node, text("h:restart", "m1 again"), &KEEP).await;
    assert_eq!(after.offset, 1);
    assert_ne!(after.epoch, before.epoch, "a new epoch");
    let got = expect(&mut node, "h:restart", "m1 again").await;
    assert_eq!(got.position, Some(after));
}

/// Two publishers on two nodes racing on one channel: the offsets they
/// get are unique and each one's increase; every node receives the
/// channel in offset order, each offset once.
pub(crate) async fn history_racing_publishers_get_unique_increasing_offsets<F: Fixture>(
    fixture: F,
) {
    const EACH: u64 = 200;
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "h:race").await;
    }
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let broker = nodes[p % nodes.len()].broker.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..EACH {
                    let message = text("h:race", &format!("{p}:{i}"));
                    let history = broker.history().expect("history");
                    got.push(history.publish(message, &KEEP).await.expect("publish"));
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for publisher in publishers {
        let got = publisher.await.expect("publisher");
        assert!(
            got.windows(2).all(|w| w[0].offset < w[1].offset),
            "increasing"
        );
        all.extend(got);
    }
    let epoch: Arc<str> = all[0].epoch.clone();
    assert!(all.iter().all(|p| p.epoch == epoch), "one epoch");
    let mut offsets: Vec<u64> = all.iter().map(|p| p.offset).collect();
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (1..=2 * EACH).collect::<Vec<_>>(),
        "unique, no gap"
    );
    for node in &mut nodes {
        for offset in 1..=2 * EACH {
            let got = node.seen.next().await;
            let position = got.position.expect("a recorded publication");
            assert_eq!(
                (position.offset, &position.epoch),
                (offset, &epoch),
                "node {}",
                node.id
            );
        }
    }
}

/// A raw publish on a history channel (a backend's plain `PUBLISH`)
/// arrives verbatim with no position and is not recorded.
pub(crate) async fn a_raw_publish_on_a_history_channel_has_no_position<F: Fixture>(fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "h:raw").await;
    }
    let last = nodes.len() - 1;
    record(&nodes[last], text("h:raw", "m1"), &KEEP).await;
    fixture.raw_publish(&nodes[last], "h:raw", "raw").await;
    record(&nodes[last], text("h:raw", "m2"), &KEEP).await;
    for node in &mut nodes {
        let first = expect(node, "h:raw", "m1").await;
        assert_eq!(first.position.map(|p| p.offset), Some(1));
        let raw = expect(node, "h:raw", "raw").await;
        assert_eq!(raw.position, None, "node {}", node.id);
        let second = expect(node, "h:raw", "m2").await;
        assert_eq!(second.position.map(|p| p.offset), Some(2));
    }
    let page = read(&nodes[0], "h:raw", query(None, 10, false), &KEEP).await;
    assert_eq!(offsets(&page), vec![(1, "m1".into()), (2, "m2".into())]);
}

/// A recorded publication keeps `exclude` as a plain one does: a local
/// sender is skipped on its node only, another node's connection (on a
/// backend with several nodes) on that node only; each with its position.
pub(crate) async fn history_publishes_keep_exclusions<F: Fixture>(fixture: F) {
    let mut nodes = nodes(&fixture).await;
    for node in &nodes {
        subscribe(node, "h:excl").await;
    }
    let mut own = text("h:excl", "mine");
    own.exclude = Some(3);
    record(&nodes[0], own, &KEEP).await;
    let holder = nodes.len() - 1;
    let holder_id = if F::NODES == 1 {
        "elsewhere".to_string()
    } else {
        nodes[holder].id.clone()
    };
    let excluded = RemoteConnection {
        node: &holder_id,
        seq: 7,
    };
    let history = nodes[0].broker.history().expect("history");
    let position = history
        .publish_excluding(text("h:excl", "not for 7"), &KEEP, excluded)
        .await
        .expect("publish_excluding");
    assert_eq!(position.offset, 2);
    for (n, node) in nodes.iter_mut().enumerate() {
        let got = expect(node, "h:excl", "mine").await;
        assert_eq!(got.exclude, (n == 0).then_some(3), "node {}", node.id);
        assert_eq!(got.position.map(|p| p.offset), Some(1));
        let got = expect(node, "h:excl", "not for 7").await;
        let marked = (F::NODES > 1 && n == holder).then_some(7);
        assert_eq!(got.exclude, marked, "node {}", node.id);
        assert_eq!(got.position, Some(position.clone()));
    }
}
