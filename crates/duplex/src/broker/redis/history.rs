//! History on Redis: a Redis Function library (`functions.lua`, Redis 7)
//! appends to the channel's stream and publishes the live copy in one
//! atomic call, so backends with nothing but a Redis client record too:
//!
//! ```text
//! FCALL duplex_publish 1 <redis channel> <data> [size ttl_secs meta_ttl_secs]
//!   -> the offset, or nil (a plain PUBLISH) when the channel has no history
//! FCALL duplex_publish 3 K {K}:meta {K}:history <data> [...]   (keys declared)
//! FCALL duplex_history 1 <redis channel> <since|''> <limit> <0|1 reverse> <meta_ttl_secs> [size]
//!   -> [epoch, top, offset, data, offset, data, ...]
//! FCALL_RO duplex_version 0 -> the loaded library's version
//! ```
//!
//! The channel is named as a backend would `PUBLISH` it (`redis_prefix`
//! included): `redis-cli FCALL duplex_publish 1 news "data from PHP"`.
//! Without options the Function uses the namespace table the nodes store
//! in `duplex:history` (`broker::history::table`). Per channel K the keys
//! are `{K}:meta` (hash: `e` epoch, `s` top offset) and `{K}:history` (a
//! stream, ids `0-<offset>`, field `d`, trimmed with `MAXLEN ~ size`, so a
//! read passes `size` to see only the newest `size`), hash-tagged by channel so all of a channel's keys share its slot; the
//! node declares them (`declare_keys`), as a Redis Cluster requires. The
//! table itself is one key outside that slot, so on a cluster a backend
//! passes the options (the Function says so otherwise), and the live copy
//! goes out with `SPUBLISH` there (the library asks `INFO cluster` once). The live copy is the envelope of
//! `broker::history::envelope`. `duplex_history` is not read-only: it
//! starts the channel's epoch when there is none.
//!
//! The node loads the library (`FUNCTION LOAD REPLACE`) when the loaded
//! version differs, at connect and after each reconnect when the table
//! has history, and whenever an `FCALL` answers "Function not found" (a
//! Redis restarted without persistence), then retries that call once.

use std::sync::OnceLock;

use bytes::Bytes;
use duplex_protocol::channel::ChannelName;
use duplex_protocol::payload::infer_kind;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::{RedisBroker, Shared};
use crate::broker::exclusion::{self, EXCLUDE_CHANNEL_PREFIX};
use crate::broker::history::table::{self, secs, TABLE_KEY};
use crate::broker::history::{History, HistoryOptions, HistoryPage, NamespaceHistory, Query};
use crate::broker::ingest::{Once, Republish};
use crate::broker::{BrokerError, RemoteConnection};
use crate::message::{Position, Publication};

/// The library's text; `@VERSION@` stands for its version.
const SOURCE: &str = include_str!("functions.lua");

/// The library as loaded: its version (a hash of its text) filled in.
struct Library {
    version: String,
    code: String,
}

fn library() -> &'static Library {
    static LIBRARY: OnceLock<Library> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        // FNV-1a: stable across builds and Rust versions (unlike DefaultHasher).
        let hash = SOURCE.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let version = format!("{hash:016x}");
        Library {
            code: SOURCE.replace("@VERSION@", &version),
            version,
        }
    })
}

/// Whether Redis lacks the library (restarted or flushed since it was loaded).
pub(in crate::broker) fn missing_function(e: &redis::RedisError) -> bool {
    e.to_string()
        .to_ascii_lowercase()
        .contains("function not found")
}

/// Loads the library unless this very version is loaded already (on a
/// cluster connection: on every master).
pub(in crate::broker) async fn load_library<C: redis::aio::ConnectionLike>(
    conn: &mut C,
) -> redis::RedisResult<()> {
    let library = library();
    let mut version = redis::cmd("FCALL_RO");
    version.arg("duplex_version").arg(0);
    if let Ok(loaded) = version.query_async::<String>(conn).await {
        if loaded == library.version {
            return Ok(());
        }
    }
    let mut load = redis::cmd("FUNCTION");
    load.arg("LOAD").arg("REPLACE").arg(&library.code);
    load.query_async::<String>(conn).await.map(|_name| ())
}

/// Runs `cmd`; when the library is missing, loads it and runs `cmd` once more.
pub(in crate::broker) async fn with_library<T: redis::FromRedisValue>(
    conn: &mut impl redis::aio::ConnectionLike,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    match cmd.query_async::<T>(conn).await {
        Err(e) if missing_function(&e) => {
            load_library(conn).await?;
            cmd.query_async::<T>(conn).await
        }
        other => other,
    }
}

impl Shared {
    /// At each (re)connect: the library loaded and this deployment's
    /// namespace table written, when it has history (failures are logged:
    /// the node's own calls load the library when they miss it).
    pub(super) async fn prepare_history(&self, conn: &mut MultiplexedConnection) {
        let Some(table) = self.history_table.lock().clone() else {
            return;
        };
        let work = async {
            load_library(conn).await?;
            let mut hset = redis::cmd("HSET");
            hset.arg(TABLE_KEY).arg(&self.settings.prefix).arg(table);
            hset.query_async::<i64>(conn).await
        };
        match tokio::time::timeout(self.settings.timeout, work).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not load the history Functions into redis")
            }
            Err(_) => tracing::warn!("could not load the history Functions into redis in time"),
        }
    }
}

/// `numkeys K {K}:meta {K}:history [{K}:ingested:<id>]` of a
/// `duplex_publish` or `duplex_history` call on channel K: every key the
/// Function touches is declared, all in K's slot (a Redis Cluster
/// requires it; a single Redis does not mind).
pub(in crate::broker) fn declare_keys(fcall: &mut redis::Cmd, key: &str, id: Option<&str>) {
    fcall
        .arg(if id.is_some() { 4 } else { 3 })
        .arg(key)
        .arg(format!("{{{key}}}:meta"))
        .arg(format!("{{{key}}}:history"));
    if let Some(id) = id {
        fcall.arg(format!("{{{key}}}:ingested:{id}"));
    }
}

/// `FCALL duplex_history_restart` for the channel key `key`: a reader saw
/// `seen` but the stream ends below it (`History::restart_epoch`).
pub(in crate::broker) fn restart_call(
    key: &str,
    seen: &Position,
    options: &HistoryOptions,
) -> redis::Cmd {
    let mut fcall = redis::cmd("FCALL");
    fcall.arg("duplex_history_restart");
    declare_keys(&mut fcall, key, None);
    fcall
        .arg(&*seen.epoch)
        .arg(seen.offset)
        .arg(secs(options.meta_ttl));
    fcall
}

/// `[offset, epoch]` as the node's own `duplex_publish` answers it.
pub(in crate::broker) fn position(reply: Value) -> Result<Position, BrokerError> {
    let bad = || BrokerError::Unavailable("unexpected answer from duplex_publish".to_string());
    match reply {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(offset), epoch] => Ok(Position {
                offset: u64::try_from(*offset).map_err(|_| bad())?,
                epoch: text(epoch).ok_or_else(bad)?.into(),
            }),
            _ => Err(bad()),
        },
        Value::Nil => Err(BrokerError::Unsupported(
            "redis published without recording (history options refused by the Function)",
        )),
        _ => Err(bad()),
    }
}

/// What `duplex_publish` with an idempotency id answers: `[offset, epoch,
/// repeat]` (offset 0 without history). A library loaded by an older node
/// answers as without the id (`[offset, epoch]` or nil) and has published.
fn once(reply: Value) -> Result<Once, BrokerError> {
    let bad = || BrokerError::Unavailable("unexpected answer from duplex_publish".to_string());
    let at = |offset: i64, epoch: &Value| -> Result<Option<Position>, BrokerError> {
        let epoch = text(epoch).ok_or_else(bad)?;
        Ok((offset > 0).then(|| Position {
            offset: offset.unsigned_abs(),
            epoch: epoch.into(),
        }))
    };
    match reply {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(offset), epoch, Value::Int(1)] => Ok(Once::Repeat(at(*offset, epoch)?)),
            [Value::Int(offset), epoch, Value::Int(0)] | [Value::Int(offset), epoch] => {
                Ok(Once::First(at(*offset, epoch)?))
            }
            _ => Err(bad()),
        },
        Value::Nil => Ok(Once::First(None)),
        _ => Err(bad()),
    }
}

/// A bulk or simple string reply as text.
fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

impl RedisBroker {
    /// `FCALL duplex_publish` for `p`: recorded with `options` (none: a
    /// plain publish), and for a republished ingest entry with its
    /// idempotency id and how long a repeat is recognised.
    fn publish_call(
        &self,
        p: &Publication,
        options: Option<&HistoryOptions>,
        once: Option<(&str, std::time::Duration)>,
    ) -> redis::Cmd {
        let key = format!("{}{}", self.shared.settings.prefix, p.channel);
        let mut fcall = redis::cmd("FCALL");
        fcall.arg("duplex_publish");
        declare_keys(&mut fcall, &key, once.map(|(id, _)| id));
        fcall.arg(p.payload.as_ref());
        match options {
            Some(o) => fcall.arg(o.size).arg(secs(o.ttl)).arg(secs(o.meta_ttl)),
            None => fcall.arg(0).arg(0).arg(0),
        };
        fcall.arg(1);
        if let Some((id, keep)) = once {
            fcall.arg(id).arg(secs(keep));
        }
        fcall
    }

    /// Runs a `duplex_publish` call (after the exclusion notice, if any, in
    /// one pipeline); its reply.
    async fn record(
        &self,
        p: &Publication,
        fcall: redis::Cmd,
        excluded: Option<RemoteConnection<'_>>,
    ) -> Result<Value, BrokerError> {
        let prefix = &self.shared.settings.prefix;
        let notice = excluded.map(|e| {
            let connection = format!("{}.{}", e.node, e.seq);
            let to = format!("{prefix}{EXCLUDE_CHANNEL_PREFIX}{}", e.node);
            (
                to,
                exclusion::notice(&connection, p.channel.as_str(), &p.payload),
            )
        });
        self.on_publisher(|mut conn| async move {
            let Some((to, notice)) = notice else {
                return with_library::<Value>(&mut conn, &fcall).await;
            };
            let mut pipe = redis::pipe();
            pipe.cmd("PUBLISH").arg(to).arg(notice).ignore();
            pipe.add_command(fcall.clone());
            match pipe.query_async::<Vec<Value>>(&mut conn).await {
                // The notice went out: only the publish is retried.
                Err(e) if missing_function(&e) => {
                    load_library(&mut conn).await?;
                    fcall.query_async::<Value>(&mut conn).await
                }
                other => other.map(|mut replies| replies.pop().unwrap_or(Value::Nil)),
            }
        })
        .await
    }

    /// Publishes `p` through `fcall` with the echo filter told of a local
    /// sender (and told again when nothing comes back); the reply.
    async fn publish_recorded(
        &self,
        p: &Publication,
        fcall: redis::Cmd,
        excluded: Option<RemoteConnection<'_>>,
    ) -> Result<Value, BrokerError> {
        self.subscriber_up()?;
        let key = format!("{}{}", self.shared.settings.prefix, p.channel);
        if let Some(sender) = p.exclude {
            self.shared.echo.expect(&key, p.payload.clone(), sender);
        }
        let result = self.record(p, fcall, excluded).await;
        if let (Err(_), Some(sender)) = (&result, p.exclude) {
            self.shared.echo.forget(&key, &p.payload, sender);
        }
        result
    }

    /// An ingest entry's publication, unless its id was published before.
    pub(super) async fn publish_once(&self, r: Republish<'_>) -> Result<Once, BrokerError> {
        if let Some(options) = &r.history {
            options.check()?;
        }
        let p = &r.publication;
        let fcall = self.publish_call(p, r.history.as_ref(), Some((r.id, r.keep)));
        let once = once(self.publish_recorded(p, fcall, r.excluded).await?)?;
        if let (Once::Repeat(_), Some(sender)) = (&once, p.exclude) {
            let key = format!("{}{}", self.shared.settings.prefix, p.channel);
            self.shared.echo.forget(&key, &p.payload, sender);
        }
        Ok(once)
    }

    async fn history_publish(
        &self,
        p: Publication,
        options: &HistoryOptions,
        excluded: Option<RemoteConnection<'_>>,
    ) -> Result<Position, BrokerError> {
        options.check()?;
        let fcall = self.publish_call(&p, Some(options), None);
        position(self.publish_recorded(&p, fcall, excluded).await?)
    }

    async fn history_read(
        &self,
        channel: ChannelName,
        query: Query,
        options: &HistoryOptions,
    ) -> Result<HistoryPage, BrokerError> {
        options.check()?;
        let key = format!("{}{}", self.shared.settings.prefix, channel);
        let mut fcall = redis::cmd("FCALL");
        fcall.arg("duplex_history");
        declare_keys(&mut fcall, &key, None);
        fcall
            .arg(query.since.map(|s| s.to_string()).unwrap_or_default())
            .arg(query.limit)
            .arg(if query.reverse { "1" } else { "0" })
            .arg(secs(options.meta_ttl))
            .arg(options.size);
        let reply = self
            .on_publisher(|mut conn| async move { with_library::<Value>(&mut conn, &fcall).await })
            .await?;
        page(channel, reply)
    }

    async fn store_namespaces(&self, table: Option<String>) -> Result<(), BrokerError> {
        let prefix = self.shared.settings.prefix.clone();
        self.on_publisher(|mut conn| async move {
            let cmd = match table {
                Some(table) => {
                    load_library(&mut conn).await?;
                    let mut hset = redis::cmd("HSET");
                    hset.arg(TABLE_KEY).arg(prefix).arg(table);
                    hset
                }
                None => {
                    let mut hdel = redis::cmd("HDEL");
                    hdel.arg(TABLE_KEY).arg(prefix);
                    hdel
                }
            };
            cmd.query_async::<i64>(&mut conn).await.map(|_| ())
        })
        .await
    }
}

/// `[epoch, top, offset, data, ...]` as `duplex_history` answers it.
pub(in crate::broker) fn page(
    channel: ChannelName,
    reply: Value,
) -> Result<HistoryPage, BrokerError> {
    let bad = || BrokerError::Unavailable("unexpected answer from duplex_history".to_string());
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let mut items = items.into_iter();
    let (Some(epoch), Some(Value::Int(top))) = (items.next(), items.next()) else {
        return Err(bad());
    };
    let epoch: std::sync::Arc<str> = text(&epoch).ok_or_else(bad)?.into();
    let offset = |v: i64| u64::try_from(v).map_err(|_| bad());
    let mut publications = Vec::new();
    while let (Some(Value::Int(at)), Some(Value::BulkString(data))) = (items.next(), items.next()) {
        let payload = Bytes::from(data);
        publications.push(Publication {
            channel: channel.clone(),
            kind: infer_kind(&payload),
            payload,
            exclude: None,
            position: Some(Position {
                offset: offset(at)?,
                epoch: std::sync::Arc::clone(&epoch),
            }),
        });
    }
    Ok(HistoryPage {
        top: Position {
            offset: offset(top)?,
            epoch,
        },
        publications,
    })
}

impl History for RedisBroker {
    fn publish<'a>(
        &'a self,
        publication: Publication,
        options: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        self.history_publish(publication, options, None).boxed()
    }

    fn publish_excluding<'a>(
        &'a self,
        publication: Publication,
        options: &'a HistoryOptions,
        excluded: RemoteConnection<'a>,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        self.history_publish(publication, options, Some(excluded))
            .boxed()
    }

    fn read<'a>(
        &'a self,
        channel: ChannelName,
        query: Query,
        options: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        self.history_read(channel, query, options).boxed()
    }

    fn restart_epoch<'a>(
        &'a self,
        channel: ChannelName,
        seen: &'a Position,
        options: &'a HistoryOptions,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        async move {
            options.check()?;
            let key = format!("{}{}", self.shared.settings.prefix, channel);
            let fcall = restart_call(&key, seen, options);
            let reply = self
                .on_publisher(
                    |mut conn| async move { with_library::<Value>(&mut conn, &fcall).await },
                )
                .await?;
            Ok(page(channel, reply)?.top)
        }
        .boxed()
    }

    fn set_namespaces(
        &self,
        namespaces: &[NamespaceHistory],
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let table = table::any_history(namespaces).then(|| table::encode(namespaces));
        *self.shared.history_table.lock() = table.clone();
        self.store_namespaces(table).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_carries_its_version() {
        let library = library();
        assert_eq!(library.version.len(), 16);
        assert!(library.code.starts_with("#!lua name=duplex\n"));
        assert!(library
            .code
            .contains(&format!("local VERSION = '{}'", library.version)));
        assert!(!library.code.contains("@VERSION@"));
    }

    #[test]
    fn replies_read_as_positions_and_pages() {
        let got = position(Value::Array(vec![
            Value::Int(7),
            Value::BulkString(b"e1".to_vec()),
        ]));
        assert_eq!(
            got.ok().map(|p| (p.offset, p.epoch)),
            Some((7, "e1".into()))
        );
        assert!(position(Value::Nil).is_err());
        assert!(position(Value::Array(vec![Value::Int(-1), Value::Nil])).is_err());
        let channel = ChannelName::parse("c", 16).expect("name");
        let reply = Value::Array(vec![
            Value::BulkString(b"e1".to_vec()),
            Value::Int(3),
            Value::Int(3),
            Value::BulkString(vec![0xff]),
        ]);
        let page = page(channel.clone(), reply).expect("a page");
        assert_eq!(page.top.offset, 3);
        assert_eq!(page.publications[0].payload.as_ref(), [0xff]);
        assert_eq!(
            page.publications[0].kind,
            duplex_protocol::ws::MessageKind::Binary
        );
        assert!(super::page(channel, Value::Int(1)).is_err());
    }

    #[test]
    fn idempotent_publishes_answer_first_or_repeat() {
        let e1 = || Value::BulkString(b"e1".to_vec());
        let at = |offset| {
            Some(Position {
                offset,
                epoch: "e1".into(),
            })
        };
        let reply = |items: Vec<Value>| once(Value::Array(items)).ok();
        assert_eq!(
            reply(vec![Value::Int(4), e1(), Value::Int(0)]),
            Some(Once::First(at(4)))
        );
        assert_eq!(
            reply(vec![Value::Int(4), e1(), Value::Int(1)]),
            Some(Once::Repeat(at(4)))
        );
        let plain = vec![Value::Int(0), Value::BulkString(Vec::new()), Value::Int(1)];
        assert_eq!(reply(plain), Some(Once::Repeat(None)));
        // A library of an older node ignores the id and has published.
        assert_eq!(reply(vec![Value::Int(4), e1()]), Some(Once::First(at(4))));
        assert_eq!(once(Value::Nil).ok(), Some(Once::First(None)));
        assert!(once(Value::Int(4)).is_err());
        assert!(reply(vec![Value::Int(4), Value::Nil, Value::Int(0)]).is_none());
    }
}
