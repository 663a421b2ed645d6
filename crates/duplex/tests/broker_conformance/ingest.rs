//! The ingest stream's cases (`duplex::broker::ingest`'s module doc),
//! against [`IngestLog`] alone: a backend without it says what to use; one
//! with it gives its lease to one holder at a time, hands entries out in
//! order, lets another consumer claim what a dead one read, publishes an
//! id once, and forgets what was acknowledged. Entries are appended with
//! the backend's [`UpstreamLog`](duplex::broker::UpstreamLog), as a
//! backend's `XADD` would.

use std::time::Duration;

use bytes::Bytes;
use duplex::broker::ingest::{Done, Entry, IngestLog, Once, ReadFrom, Republish};
use duplex::broker::{Broker, BrokerError, Upstream};

use crate::cases::{channel, expect, nodes, subscribe, text};
use crate::fixtures::Fixture;

const STREAM: &str = "in";

/// The node's ingest ability, or None when the backend rightly has none.
fn ingest<F: Fixture>(broker: &Broker) -> Option<&dyn IngestLog> {
    match broker.ingest() {
        Ok(ingest) => {
            assert!(F::INGEST, "the fixture says no ingest stream");
            Some(ingest)
        }
        Err(BrokerError::Unsupported(why)) => {
            assert!(!F::INGEST, "the backend lost its ingest stream: {why}");
            assert!(why.contains("--redis"), "says what to use: {why}");
            None
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

pub(crate) async fn ingest_lease_goes_to_one_holder_at_a_time<F: Fixture>(fixture: F) {
    let node = fixture.node("n0").await;
    let Some(ingest) = ingest::<F>(&node.broker) else {
        return;
    };
    let ttl = Duration::from_secs(30);
    let lease = |holder: &'static str, ttl: Duration| async move {
        ingest
            .lease(STREAM, holder, ttl)
            .await
            .unwrap_or_else(|e| panic!("lease for {holder}: {e}"))
    };
    assert!(lease("a", ttl).await, "free: taken");
    assert!(!lease("b", ttl).await, "another's");
    assert!(lease("a", ttl).await, "extended by its holder");
    assert!(
        !lease("b", Duration::ZERO).await,
        "only the holder gives it back"
    );
    assert!(!lease("b", ttl).await, "still a's");
    lease("a", Duration::ZERO).await;
    assert!(lease("b", ttl).await, "given back: taken");
}

/// The entries' ids and `data`.
fn data(entries: &[Entry]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            let data = e
                .field("data")
                .map(|d| String::from_utf8_lossy(d).to_string());
            (e.id.clone(), data.unwrap_or_default())
        })
        .collect()
}

async fn read(ingest: &dyn IngestLog, consumer: &str, from: ReadFrom) -> Vec<(String, String)> {
    let entries = ingest
        .read(STREAM, consumer, from, 10)
        .await
        .unwrap_or_else(|e| panic!("{consumer} reads: {e}"));
    data(&entries)
}

async fn once(ingest: &dyn IngestLog, on: &str, data: &str, id: &str) -> Once {
    let republish = Republish {
        publication: text(on, data),
        history: None,
        excluded: None,
        id,
        keep: Duration::from_secs(60),
    };
    ingest
        .publish_once(republish)
        .await
        .unwrap_or_else(|e| panic!("publish {id}: {e}"))
}

pub(crate) async fn ingest_entries_are_read_claimed_published_once_and_acknowledged<F: Fixture>(
    fixture: F,
) {
    let mut nodes = nodes(&fixture).await;
    let (zero, last) = (
        nodes[0].broker.clone(),
        nodes[nodes.len() - 1].broker.clone(),
    );
    let Some(first) = ingest::<F>(&zero) else {
        return;
    };
    subscribe(&nodes[0], "ing").await;
    let made = first.claim(STREAM, "n0", Duration::ZERO).await;
    assert_eq!(made.expect("the group made"), 0);
    let upstream = zero.upstream().expect("streams");
    for n in ["1", "2", "3"] {
        let fields = vec![
            ("channel", Bytes::from_static(b"ing")),
            ("data", Bytes::copy_from_slice(n.as_bytes())),
        ];
        let entry = Upstream {
            stream: STREAM.to_string(),
            fields,
        };
        upstream.append(entry).await.expect("append");
    }
    let wait = ReadFrom::New(Duration::from_millis(500));
    let taken = first
        .read(STREAM, "n0", wait.clone(), 2)
        .await
        .expect("read");
    let taken = data(&taken);
    let firsts: Vec<&str> = taken.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(firsts, ["1", "2"], "in order, at most as many as asked");

    // n0 is gone with two entries read: n1 claims them, and reads them
    // first (its own pending entries), then the rest.
    let other = ingest::<F>(&last).expect("the same backend");
    let moved = other.claim(STREAM, "n1", Duration::ZERO).await;
    assert_eq!(moved.expect("claim"), 2);
    assert_eq!(
        read(other, "n1", ReadFrom::Pending("0".into())).await,
        taken
    );
    let after = taken[0].0.clone();
    assert_eq!(
        read(other, "n1", ReadFrom::Pending(after)).await,
        taken[1..]
    );
    let rest = read(other, "n1", wait.clone()).await;
    assert_eq!(
        rest.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
        ["3"]
    );

    // Published once per id, whoever publishes it.
    let id = format!("{STREAM}:{}", taken[0].0);
    assert_eq!(once(first, "ing", "1", &id).await, Once::First(None));
    assert_eq!(once(other, "ing", "1", &id).await, Once::Repeat(None));
    let id = format!("{STREAM}:{}", taken[1].0);
    assert_eq!(once(other, "ing", "2", &id).await, Once::First(None));
    expect(&mut nodes[0], "ing", "1").await;
    expect(&mut nodes[0], "ing", "2").await;

    let done: Vec<Done> = taken
        .iter()
        .chain(&rest)
        .map(|(id, _)| Done {
            id: id.clone(),
            channel: Some(channel("ing")),
        })
        .collect();
    other
        .ack(STREAM, &done, Duration::from_secs(60))
        .await
        .expect("ack");
    assert_eq!(read(other, "n1", ReadFrom::Pending("0".into())).await, []);
    assert_eq!(read(other, "n1", wait).await, [], "nothing new");
}
