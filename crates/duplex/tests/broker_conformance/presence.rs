//! The Presence cases (`duplex::broker::presence`'s module doc), against
//! [`Presence`] and a [`Fixture`] like the others. "Nodes" here share one
//! backend through [`Fixture::peer`] (the memory broker tells them apart by
//! the connection ids' node part). A node that "vanishes" just stops
//! ticking; its lease is short ([`SHORT`]) while the live nodes' is long
//! ([`LONG`]), and expiry is waited on by polling with a deadline.

use std::time::Duration;

use bytes::Bytes;
use duplex::broker::presence::{Change, Member, Presence, PresenceStats};
use duplex::broker::BrokerStatus;
use futures_util::stream::{self, StreamExt};

use crate::cases::channel;
use crate::fixtures::{Fixture, Node};
use crate::support;

/// A lease that outlives every case.
const LONG: Duration = Duration::from_secs(120);
/// A vanishing node's lease.
const SHORT: Duration = Duration::from_secs(1);

fn member(conn: &str, user: &str, info: &str) -> Member {
    Member {
        conn: conn.to_string(),
        user: user.to_string(),
        info: Bytes::copy_from_slice(info.as_bytes()),
    }
}

fn presence(node: &Node) -> &dyn Presence {
    node.broker.presence().expect("the broker keeps presence")
}

async fn join(node: &Node, on: &str, m: &Member, ttl: Duration) -> Change {
    presence(node)
        .join(&channel(on), m, ttl)
        .await
        .unwrap_or_else(|e| panic!("{} joins {} to {on}: {e}", node.id, m.conn))
}

async fn leave(node: &Node, on: &str, conn: &str) -> Change {
    presence(node)
        .leave(&channel(on), conn)
        .await
        .unwrap_or_else(|e| panic!("{} removes {conn} from {on}: {e}", node.id))
}

async fn tick(node: &Node, on: &str, ttl: Duration) -> Change {
    let mut changes = presence(node)
        .tick(&node.id, &[channel(on)], ttl)
        .await
        .unwrap_or_else(|e| panic!("{} ticks {on}: {e}", node.id));
    assert_eq!(changes.len(), 1, "one answer per channel");
    changes.remove(0)
}

/// The channel's members, sorted by connection id.
async fn members(node: &Node, on: &str) -> Vec<Member> {
    let mut list = presence(node)
        .members(&channel(on))
        .await
        .unwrap_or_else(|e| panic!("{} lists {on}: {e}", node.id));
    list.sort();
    list
}

async fn stats(node: &Node, on: &str) -> PresenceStats {
    presence(node)
        .stats(&channel(on))
        .await
        .unwrap_or_else(|e| panic!("{} counts {on}: {e}", node.id))
}

fn counts(connections: u64, users: u64) -> PresenceStats {
    PresenceStats { connections, users }
}

/// The connection ids of a list, sorted.
fn conns(list: &[Member]) -> Vec<&str> {
    let mut ids: Vec<&str> = list.iter().map(|m| m.conn.as_str()).collect();
    ids.sort_unstable();
    ids
}

/// Nodes `n0`, `n1`, ... on one backend.
async fn peers<F: Fixture>(fixture: &F, count: usize) -> Vec<Node> {
    let first = fixture.node("n0").await;
    let mut nodes = Vec::new();
    for i in 1..count {
        nodes.push(fixture.peer(&first, &format!("n{i}")).await);
    }
    nodes.insert(0, first);
    nodes
}

/// Waits until the channel lists exactly `wanted` (connection ids).
async fn until_listed(node: &Node, on: &str, wanted: &[&str]) {
    support::eventually(&format!("{on} lists {wanted:?}"), || async {
        conns(&members(node, on).await) == wanted
    })
    .await;
}

/// A user joins with their first connection, whichever node holds it, and
/// leaves after their last; members and stats count both connections.
pub(crate) async fn presence_users_join_on_their_first_connection_and_leave_after_their_last<
    F: Fixture,
>(
    fixture: F,
) {
    let nodes = peers(&fixture, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let tab1 = member("n0.1", "alice", r#"{"name":"Alice"}"#);
    let tab2 = member("n1.1", "alice", r#"{"name":"Alice"}"#);
    let bob = member("n1.2", "bob", "");
    assert_eq!(
        join(a, "p:tabs", &tab1, LONG).await.joined,
        vec![tab1.clone()]
    );
    let second = join(b, "p:tabs", &tab2, LONG).await;
    assert!(
        second.joined.is_empty() && second.left.is_empty(),
        "{second:?}"
    );
    assert_eq!(
        join(b, "p:tabs", &bob, LONG).await.joined,
        vec![bob.clone()]
    );
    assert_eq!(stats(a, "p:tabs").await, counts(3, 2));
    assert_eq!(
        members(b, "p:tabs").await,
        vec![tab1.clone(), tab2.clone(), bob.clone()]
    );
    let first_out = leave(a, "p:tabs", &tab1.conn).await;
    assert!(
        first_out.left.is_empty(),
        "alice still has a tab: {first_out:?}"
    );
    assert_eq!(stats(b, "p:tabs").await, counts(2, 2));
    assert_eq!(leave(b, "p:tabs", &tab2.conn).await.left, vec![tab2]);
    assert_eq!(leave(b, "p:tabs", &bob.conn).await.left, vec![bob.clone()]);
    assert_eq!(stats(a, "p:tabs").await, counts(0, 0));
    assert!(members(a, "p:tabs").await.is_empty());
    let again = leave(b, "p:tabs", &bob.conn).await;
    assert!(
        again.joined.is_empty() && again.left.is_empty(),
        "{again:?}"
    );
}

/// Changes that join or leave someone carry increasing stamps, whichever
/// node made them, so a node can drop a push that crossed a newer one (a
/// page reload that lands on another node: the old tab's leave on one node,
/// the new tab's join on the other); changes of nobody carry 0.
pub(crate) async fn presence_changes_are_stamped_in_the_channels_order<F: Fixture>(fixture: F) {
    let nodes = peers(&fixture, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut last = 0;
    for round in 0..5 {
        let old_tab = member(&format!("n0.{round}"), "ada", "");
        let new_tab = member(&format!("n1.{round}"), "ada", "");
        for (node, change) in [
            (a, join(a, "p:stamps", &old_tab, LONG).await),
            (a, leave(a, "p:stamps", &old_tab.conn).await),
            (b, join(b, "p:stamps", &new_tab, LONG).await),
            (b, leave(b, "p:stamps", &new_tab.conn).await),
        ] {
            assert_eq!(change.joined.len() + change.left.len(), 1, "{change:?}");
            assert!(
                change.stamp > last,
                "{}: stamp {} after {last}",
                node.id,
                change.stamp
            );
            last = change.stamp;
        }
    }
    let stay = member("n0.99", "bo", "");
    assert!(join(a, "p:stamps", &stay, LONG).await.stamp > last);
    let second = join(b, "p:stamps", &member("n1.99", "bo", ""), LONG).await;
    assert_eq!((second.joined.len(), second.stamp), (0, 0), "{second:?}");
    assert_eq!(tick(a, "p:stamps", LONG).await.stamp, 0);
}

/// Each anonymous member is a user of its own: it joins and leaves alone
/// and counts as one user.
pub(crate) async fn presence_anonymous_members_are_each_their_own_user<F: Fixture>(fixture: F) {
    let node = fixture.node("n0").await;
    let first = member("n0.1", "", "");
    let second = member("n0.2", "", "");
    let named = member("n0.3", "alice", "");
    for m in [&first, &second, &named] {
        assert_eq!(join(&node, "p:anon", m, LONG).await.joined, vec![m.clone()]);
    }
    assert_eq!(stats(&node, "p:anon").await, counts(3, 3));
    assert_eq!(leave(&node, "p:anon", &first.conn).await.left, vec![first]);
    assert_eq!(stats(&node, "p:anon").await, counts(2, 2));
    assert_eq!(members(&node, "p:anon").await, vec![second, named]);
}

/// Members carry their info as given (bytes, any JSON); joining a
/// member that is there again only updates its info; channels are apart.
pub(crate) async fn presence_members_and_stats_are_exact<F: Fixture>(fixture: F) {
    let nodes = peers(&fixture, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let ann = member("n0.7", "ann", r#"{"name":"Ann \"A\" é","tags":[1,2]}"#);
    let ben = member("n1.8", "ben", "");
    let anon = member("n1.9", "", "{}");
    join(a, "p:exact", &ann, LONG).await;
    join(b, "p:exact", &ben, LONG).await;
    join(b, "p:exact", &anon, LONG).await;
    join(b, "p:other", &member("n1.10", "ann", ""), LONG).await;
    assert_eq!(
        members(a, "p:exact").await,
        vec![ann.clone(), ben.clone(), anon.clone()]
    );
    assert_eq!(stats(b, "p:exact").await, counts(3, 3));
    assert_eq!(stats(a, "p:other").await, counts(1, 1));
    let renamed = member("n0.7", "ann", r#"{"name":"Ann B"}"#);
    let again = join(a, "p:exact", &renamed, LONG).await;
    assert!(again.is_empty(), "a member there already: {again:?}");
    assert_eq!(members(b, "p:exact").await, vec![renamed, ben, anon]);
    assert_eq!(stats(a, "p:exact").await, counts(3, 3));
    assert!(members(a, "p:never").await.is_empty());
    assert_eq!(stats(a, "p:never").await, counts(0, 0));
}

/// A node that stops ticking: once its lease expires no query lists its
/// members, swept or not; two nodes then tick at once, and between them
/// each user it took away is answered as left exactly once, while a user
/// still connected elsewhere is not.
pub(crate) async fn presence_a_silent_nodes_members_go_after_its_lease_and_leave_once<
    F: Fixture,
>(
    fixture: F,
) {
    let nodes = peers(&fixture, 3).await;
    let (a, silent, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let live = [
        member("n0.1", "alice", ""),
        member("n0.2", "", ""),
        member("n2.1", "dave", ""),
    ];
    join(a, "p:crash", &live[0], LONG).await;
    join(a, "p:crash", &live[1], LONG).await;
    join(c, "p:crash", &live[2], LONG).await;
    let gone = [
        member("n1.1", "alice", ""),
        member("n1.2", "bob", "{}"),
        member("n1.3", "", ""),
        member("n1.4", "carol", ""),
    ];
    let rejoined = presence(silent)
        .rejoin(&channel("p:crash"), &gone, SHORT)
        .await
        .expect("rejoin");
    assert_eq!(conns(&rejoined.joined), ["n1.2", "n1.3", "n1.4"]);
    assert_eq!(stats(a, "p:crash").await, counts(7, 6));
    until_listed(c, "p:crash", &["n0.1", "n0.2", "n2.1"]).await;
    assert_eq!(stats(c, "p:crash").await, counts(3, 3), "before any sweep");
    let (from_a, from_c) = tokio::join!(tick(a, "p:crash", LONG), tick(c, "p:crash", LONG));
    assert!(!from_a.lease_lost && !from_c.lease_lost);
    let mut left = from_a.left;
    left.extend(from_c.left);
    assert_eq!(
        conns(&left),
        ["n1.2", "n1.3", "n1.4"],
        "each departed user once"
    );
    let (again_a, again_c) = tokio::join!(tick(a, "p:crash", LONG), tick(c, "p:crash", LONG));
    assert!(
        again_a.is_empty() && again_c.is_empty(),
        "{again_a:?} {again_c:?}"
    );
    assert_eq!(stats(a, "p:crash").await, counts(3, 3), "after the sweep");
    assert_eq!(
        leave(a, "p:crash", "n0.1").await.left.len(),
        1,
        "alice's last tab"
    );
}

/// A node whose lease was swept learns it from its tick (and from a join,
/// which takes a new lease); its rejoin brings its members back, joining
/// the users no other node holds.
pub(crate) async fn presence_a_swept_node_learns_it_and_rejoin_restores_its_members<F: Fixture>(
    fixture: F,
) {
    let nodes = peers(&fixture, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    join(a, "p:swept", &member("n0.1", "alice", ""), LONG).await;
    let mine = [member("n1.1", "alice", ""), member("n1.2", "bob", "")];
    for m in &mine {
        join(b, "p:swept", m, SHORT).await;
    }
    until_listed(a, "p:swept", &["n0.1"]).await;
    assert_eq!(conns(&tick(a, "p:swept", LONG).await.left), ["n1.2"]);
    let told = tick(b, "p:swept", LONG).await;
    assert!(told.lease_lost && told.left.is_empty(), "{told:?}");
    assert!(
        tick(b, "p:swept", LONG).await.lease_lost,
        "until it rejoins"
    );
    let carol = member("n1.3", "carol", "");
    let joined = join(b, "p:swept", &carol, LONG).await;
    assert!(joined.lease_lost, "a join on a lost lease says so too");
    assert_eq!(joined.joined, vec![carol]);
    let back = presence(b)
        .rejoin(&channel("p:swept"), &mine, LONG)
        .await
        .expect("rejoin");
    assert_eq!(conns(&back.joined), ["n1.2"], "alice never left");
    assert_eq!(
        conns(&members(a, "p:swept").await),
        ["n0.1", "n1.1", "n1.2", "n1.3"]
    );
    assert_eq!(stats(a, "p:swept").await, counts(4, 3));
    assert!(tick(b, "p:swept", LONG).await.is_empty());
}

/// A node's own lease that expired but was not swept yet is renewed by
/// its tick: its members count again and nothing was lost.
pub(crate) async fn presence_an_expired_lease_not_yet_swept_is_renewed<F: Fixture>(fixture: F) {
    let node = fixture.node("n0").await;
    join(&node, "p:late", &member("n0.1", "alice", ""), SHORT).await;
    until_listed(&node, "p:late", &[]).await;
    assert_eq!(stats(&node, "p:late").await, counts(0, 0));
    let late = tick(&node, "p:late", LONG).await;
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(stats(&node, "p:late").await, counts(1, 1));
}

/// Every change sweeps other nodes' expired leases first: a user whose
/// only connection was on a vanished node and who comes back on another
/// leaves, then joins, in that one answer.
pub(crate) async fn presence_a_join_sweeps_expired_leases_first<F: Fixture>(fixture: F) {
    let nodes = peers(&fixture, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let before = member("n1.1", "alice", "");
    join(b, "p:back", &before, SHORT).await;
    until_listed(a, "p:back", &[]).await;
    let after = member("n0.1", "alice", "");
    let change = join(a, "p:back", &after, LONG).await;
    assert_eq!((change.left, change.joined), (vec![before], vec![after]));
    assert_eq!(stats(a, "p:back").await, counts(1, 1));
}

/// A clean shutdown removes all of a node's members at once and answers
/// the users who thereby left; other nodes' members stay.
pub(crate) async fn presence_forget_removes_a_node_at_once<F: Fixture>(fixture: F) {
    let nodes = peers(&fixture, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    for m in [
        member("n0.1", "alice", ""),
        member("n0.2", "bob", ""),
        member("n0.3", "", ""),
    ] {
        join(a, "p:bye", &m, LONG).await;
    }
    join(a, "p:bye2", &member("n0.4", "ann", ""), LONG).await;
    join(b, "p:bye", &member("n1.1", "alice", ""), LONG).await;
    let changes = presence(a)
        .forget(&a.id, &[channel("p:bye"), channel("p:bye2")])
        .await
        .expect("forget");
    assert_eq!(changes.len(), 2, "one answer per channel");
    assert_eq!(conns(&changes[0].left), ["n0.2", "n0.3"]);
    assert_eq!(conns(&changes[1].left), ["n0.4"]);
    assert_eq!(conns(&members(b, "p:bye").await), ["n1.1"]);
    assert_eq!(stats(b, "p:bye2").await, counts(0, 0));
    assert!(
        tick(a, "p:bye", LONG).await.lease_lost,
        "its lease went too"
    );
}

/// A backend that comes back empty (Redis restarted without persistence;
/// for memory, a new broker) has lost every lease: the tick says so and a
/// rejoin restores the members.
pub(crate) async fn presence_a_backend_back_empty_loses_every_lease<F: Fixture>(mut fixture: F) {
    let mut node = fixture.node("n0").await;
    let alice = member("n0.1", "alice", "");
    join(&node, "p:restart", &alice, LONG).await;
    if fixture.restart() {
        support::eventually("reconnected", || async {
            let state = node.broker.state();
            state.status == BrokerStatus::Connected && state.reconnects >= 1
        })
        .await;
    } else {
        node = fixture.node("n0").await;
    }
    // The first call after a restart may find its connection broken.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let lost = loop {
        let on = [channel("p:restart")];
        match presence(&node).tick(&node.id, &on, LONG).await {
            Ok(mut changes) => break changes.remove(0),
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no tick answered: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(lost.lease_lost, "{lost:?}");
    assert!(members(&node, "p:restart").await.is_empty());
    let back = presence(&node)
        .rejoin(&channel("p:restart"), std::slice::from_ref(&alice), LONG)
        .await
        .expect("rejoin");
    assert_eq!(back.joined, vec![alice.clone()]);
    assert_eq!(members(&node, "p:restart").await, vec![alice]);
}

/// A node restarted under the same node id takes a new lease: its previous
/// run's members go after their lease like any vanished node's, swept by
/// the new run's tick. Only on a backend that outlives a node.
pub(crate) async fn presence_a_restarted_node_does_not_renew_its_previous_run<F: Fixture>(
    fixture: F,
) {
    if F::NODES < 2 {
        return;
    }
    let old = fixture.node("n0").await;
    join(&old, "p:rerun", &member("n0.1", "alice", ""), SHORT).await;
    old.broker.close().await;
    drop(old);
    let new = fixture.node("n0").await;
    let bob = member("n0.2", "bob", "");
    join(&new, "p:rerun", &bob, SHORT).await;
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let left = loop {
        let change = tick(&new, "p:rerun", SHORT).await;
        assert!(!change.lease_lost, "the new run's lease holds");
        if !change.left.is_empty() {
            break change.left;
        }
        assert!(tokio::time::Instant::now() < deadline, "alice never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(conns(&left), ["n0.1"]);
    assert_eq!(members(&new, "p:rerun").await, vec![bob]);
}

/// Users joining at once.
const CROWD: usize = 10_000;

/// 10,000 members join (one call each, many at once); then a tick of
/// their channel costs the backend as many commands as a tick of a
/// channel of one (Redis: counted by `INFO stats`).
pub(crate) async fn presence_a_tick_costs_the_same_whatever_the_channel_size<F: Fixture>(
    fixture: F,
) {
    let node = fixture.node("n0").await;
    let crowd: Vec<Member> = (0..CROWD)
        .map(|i| member(&format!("n0.{i}"), &format!("u{}", i / 2), ""))
        .collect();
    let joined = stream::iter(&crowd)
        .map(|m| join(&node, "p:crowd", m, LONG))
        .buffer_unordered(64)
        .fold(0, |n, change| async move { n + change.joined.len() })
        .await;
    assert_eq!(joined, CROWD / 2, "two tabs per user");
    assert_eq!(
        stats(&node, "p:crowd").await,
        counts(CROWD as u64, CROWD as u64 / 2)
    );
    join(&node, "p:one", &member("n0.x", "solo", ""), LONG).await;
    let Some(idle) = cost(&fixture, || async {}).await else {
        return;
    };
    let ticks = |on: &'static str| {
        let node = &node;
        move || async move { assert!(tick(node, on, LONG).await.is_empty()) }
    };
    let big = cost(&fixture, ticks("p:crowd")).await.unwrap_or(idle) - idle;
    let small = cost(&fixture, ticks("p:one")).await.unwrap_or(idle) - idle;
    eprintln!("redis commands: a tick of {CROWD} members {big}, of 1 member {small}");
    assert_eq!(big, small, "a tick's commands do not grow with the channel");
    assert!(big <= 10, "a handful of commands per channel: {big}");
}

/// The fewest commands the backend counted around `work` in three runs
/// (other clients' commands, such as a health PING, come and go).
async fn cost<F, W, Fut>(fixture: &F, work: W) -> Option<u64>
where
    F: Fixture,
    W: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut fewest = None;
    for _ in 0..3 {
        let before = fixture.commands_processed().await?;
        work().await;
        let after = fixture.commands_processed().await?;
        fewest = Some(fewest.map_or(after - before, |f: u64| f.min(after - before)));
    }
    fewest
}
