//! A backend with nothing but a Redis client records on a history
//! channel: `FCALL duplex_publish 1 <channel> <data>` (the real
//! `redis-cli`, and the `redis` crate as a second client) answers the
//! offset and reaches the node with its position, with the settings the
//! node stored in `duplex:history` (`duplex::broker::history::table`).
//! Real redis-server (private, no persistence).

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use duplex::broker::history::{HistoryOptions, NamespaceHistory, Query};
use duplex::broker::redis::RedisSettings;
use duplex::broker::{Broker, BrokerHandler, BrokerStatus};
use duplex::message::Publication;
use duplex_protocol::channel::ChannelName;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use support::redis_server::RedisServer;

const ON: HistoryOptions = HistoryOptions {
    size: 10,
    ttl: Duration::from_secs(60),
    meta_ttl: Duration::from_secs(3600),
};

struct Record(mpsc::UnboundedSender<Publication>);

impl BrokerHandler for Record {
    fn handle_publication(&self, publication: Publication) -> BoxFuture<'_, ()> {
        let _ = self.0.send(publication);
        Box::pin(async {})
    }
}

/// A node's broker on `server` with `prefix`, connected, holding `channels`,
/// and what it receives.
async fn node(
    server: &RedisServer,
    prefix: &str,
    channels: &[&str],
) -> (Broker, mpsc::UnboundedReceiver<Publication>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let settings = RedisSettings {
        url: server.url(),
        prefix: prefix.to_string(),
        timeout: Duration::from_secs(1),
        health_interval: Duration::from_secs(1),
        max_backoff: Duration::from_millis(100),
        upstream_maxlen: 1000,
        backlog_bytes: 1 << 20,
        node_channels: Vec::new(),
        node_id: format!("n-{prefix}"),
    };
    let broker = Broker::redis(settings, Arc::new(Record(tx))).expect("a valid Redis URL");
    support::eventually("the broker connects", || async {
        broker.state().status == BrokerStatus::Connected
    })
    .await;
    for name in channels {
        let channel = ChannelName::parse(name, usize::MAX).expect("channel name");
        broker.pubsub().subscribe(channel).await.expect("subscribe");
    }
    (broker, rx)
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Publication>) -> Publication {
    match tokio::time::timeout(support::WAIT, seen.recv()).await {
        Ok(Some(p)) => p,
        _ => panic!("nothing delivered within {:?}", support::WAIT),
    }
}

/// `redis-cli -p <port> FCALL duplex_publish 1 <channel> <data>`: its output.
fn redis_cli(server: &RedisServer, channel: &str, data: &str) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &server.port.to_string(),
            "FCALL",
            "duplex_publish",
            "1",
        ])
        .args([channel, data])
        .output()
        .expect("redis-cli must be installed (it comes with redis-server)");
    assert!(out.status.success(), "redis-cli: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn fcall(server: &RedisServer, channel: &str, data: &str) -> Option<u64> {
    let mut conn = server.connection().await;
    redis::cmd("FCALL")
        .arg("duplex_publish")
        .arg(1)
        .arg(channel)
        .arg(data)
        .query_async(&mut conn)
        .await
        .expect("FCALL duplex_publish")
}

fn table(entries: &[(&str, Option<HistoryOptions>)]) -> Vec<NamespaceHistory> {
    entries.iter().map(|(p, o)| (p.to_string(), *o)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_fcall_records_with_the_stored_settings() {
    let server = RedisServer::start();
    let (broker, mut seen) = node(&server, "", &["news", "other"]).await;
    let history = broker.history().expect("redis keeps history");
    let namespaces = table(&[("news", Some(ON)), ("chat:*", Some(ON)), ("*", None)]);
    history
        .set_namespaces(&namespaces)
        .await
        .expect("table stored");

    assert_eq!(redis_cli(&server, "news", "data from cli"), "1");
    let got = next(&mut seen).await;
    assert_eq!(got.payload.as_ref(), b"data from cli", "the data, verbatim");
    let first = got
        .position
        .expect("a recorded publication carries its position");
    assert_eq!(first.offset, 1);

    assert_eq!(fcall(&server, "news", "data from PHP").await, Some(2));
    let got = next(&mut seen).await;
    assert_eq!(got.payload.as_ref(), b"data from PHP");
    assert_eq!(
        got.position.map(|p| (p.offset, p.epoch)),
        Some((2, first.epoch.clone()))
    );

    // No history in its namespace: a plain PUBLISH, nil, no position.
    assert_eq!(fcall(&server, "other", "plain").await, None);
    let got = next(&mut seen).await;
    assert_eq!((got.payload.as_ref(), got.position), (&b"plain"[..], None));

    let channel = ChannelName::parse("news", usize::MAX).expect("channel name");
    let query = Query {
        since: None,
        limit: 10,
        reverse: false,
    };
    let page = history.read(channel, query, &ON).await.expect("read");
    let kept: Vec<_> = page
        .publications
        .iter()
        .map(|p| p.payload.clone())
        .collect();
    assert_eq!(kept, ["data from cli", "data from PHP"]);
    assert_eq!((page.top.offset, page.top.epoch), (2, first.epoch.clone()));
}

/// Each deployment's table is found by its prefix (the longest that
/// starts the channel's Redis name), and comes back, with the Functions,
/// after Redis restarts empty: the node stores both again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_prefix_has_its_table_and_it_survives_a_restart() {
    let mut server = RedisServer::start();
    let (plain, mut plain_seen) = node(&server, "", &["feed"]).await;
    let (app, mut app_seen) = node(&server, "app:", &["feed"]).await;
    let plain_history = plain.history().expect("history");
    plain_history
        .set_namespaces(&table(&[("*", Some(ON))]))
        .await
        .expect("table stored");
    app.history()
        .expect("history")
        .set_namespaces(&table(&[("feed", None), ("*", Some(ON))]))
        .await
        .expect("table stored");

    assert_eq!(redis_cli(&server, "app:feed", "not recorded"), "");
    assert_eq!(
        next(&mut app_seen).await.position,
        None,
        "app: has no history on feed"
    );
    assert_eq!(redis_cli(&server, "feed", "recorded"), "1");
    assert_eq!(
        next(&mut plain_seen).await.position.map(|p| p.offset),
        Some(1)
    );

    server.restart();
    for broker in [&plain, &app] {
        support::eventually("reconnected", || async {
            let state = broker.state();
            state.status == BrokerStatus::Connected && state.reconnects >= 1
        })
        .await;
    }
    support::eventually("the tables are stored again", || async {
        let mut conn = server.connection().await;
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg("duplex:history")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        fields.len() == 2
    })
    .await;
    // Loaded by the nodes at reconnect, not by an FCALL of theirs.
    assert_eq!(redis_cli(&server, "feed", "after the restart"), "1");
    let got = next(&mut plain_seen).await;
    assert_eq!(got.payload.as_ref(), b"after the restart");
    assert_eq!(got.position.map(|p| p.offset), Some(1), "a new epoch at 1");
}

/// Functions flushed behind the node's back (as a Redis restarted without
/// persistence does): each of its calls loads them again and is retried
/// once, the excluding publish (a pipeline behind its notice) included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_library_is_loaded_again_by_each_call() {
    let server = RedisServer::start();
    let (broker, mut seen) = node(&server, "", &["news"]).await;
    let history = broker.history().expect("history");
    let flush = || async {
        let mut conn = server.connection().await;
        let _: () = redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .expect("FUNCTION FLUSH");
    };
    let news = || ChannelName::parse("news", usize::MAX).expect("channel name");
    let publication = |data: &str| Publication {
        channel: news(),
        payload: bytes::Bytes::copy_from_slice(data.as_bytes()),
        kind: duplex_protocol::ws::MessageKind::Text,
        exclude: None,
        position: None,
    };
    flush().await;
    let first = history
        .publish(publication("one"), &ON)
        .await
        .expect("publish");
    assert_eq!(first.offset, 1);
    flush().await;
    let excluded = duplex::broker::RemoteConnection {
        node: "elsewhere",
        seq: 1,
    };
    let second = history
        .publish_excluding(publication("two"), &ON, excluded)
        .await
        .expect("publish_excluding");
    assert_eq!(second.offset, 2);
    flush().await;
    let query = Query {
        since: Some(1),
        limit: 10,
        reverse: false,
    };
    let page = history.read(news(), query, &ON).await.expect("read");
    assert_eq!(page.top, second);
    assert_eq!(page.publications.len(), 1);
    for (data, at) in [("one", first), ("two", second)] {
        let got = next(&mut seen).await;
        assert_eq!(
            (got.payload.as_ref(), got.position),
            (data.as_bytes(), Some(at))
        );
    }
}
