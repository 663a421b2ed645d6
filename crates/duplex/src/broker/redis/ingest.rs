//! The ingest stream on Redis (`broker::ingest` holds the steps): a Stream
//! `<prefix><ingest_stream>` that backends `XADD` to, read in the consumer
//! group `duplex` by the one node holding the lease `<stream>:leader`.
//!
//! - Lease, claim and acknowledge are Functions of the `duplex` library
//!   (`functions.lua`: `duplex_lease`, `duplex_ingest_claim`,
//!   `duplex_ingest_ack`), each one atomic step; the publish is
//!   `duplex_publish` with the entry's idempotency id, which it remembers in
//!   `{<prefix><channel>}:ingested:<stream>:<entry id>` (hash-tagged by
//!   channel, as the history keys) for the time the node gives, and
//!   shortens to another when the entry is acknowledged.
//! - The reads (`XREADGROUP`, which may block) and those Functions run on a
//!   connection of their own, so a blocked read never holds up a publish;
//!   every step ends within `redis_timeout` (a read, plus its wait). A
//!   connection that broke or timed out is replaced at the next step.
//! - `NOGROUP` (Redis restarted empty, the stream deleted) makes the group
//!   again at once, reading from the stream's start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::history::with_library;
use super::{describe, is_broken, RedisBroker};
use crate::broker::history::table::secs;
use crate::broker::ingest::{
    once_id, Done, Entry, IngestLog, Once, ReadFrom, Republish, GROUP, MAX_WAIT,
};
use crate::broker::BrokerError;

/// The ingest connection, opened on first use and replaced when it broke.
#[derive(Default)]
pub(super) struct Reader {
    conn: Mutex<Option<(MultiplexedConnection, Arc<AtomicBool>)>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Reader {
    /// Drops the connection (the broker is closing).
    pub(super) fn close(&self) {
        self.conn.lock().take();
    }
}

/// Drops the connection when a blocking read is given up before its answer
/// (the node stopping): Redis would hold the connection's next command
/// (the lease given back) until that read's wait ended.
struct UnlessAnswered<'a> {
    reader: &'a Reader,
    answered: bool,
}

impl Drop for UnlessAnswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.reader.close();
        }
    }
}

impl RedisBroker {
    fn ingest_key(&self, stream: &str) -> String {
        format!("{}{stream}", self.shared.settings.prefix)
    }

    async fn reader(&self, wait: Duration) -> Result<MultiplexedConnection, BrokerError> {
        let cached = || {
            let conn = self.ingest.conn.lock();
            conn.as_ref()
                .filter(|(_, closed)| !closed.load(Ordering::Acquire))
                .map(|(conn, _)| conn.clone())
        };
        if let Some(conn) = cached() {
            return Ok(conn);
        }
        let _one_at_a_time = self.ingest.connecting.lock().await;
        if let Some(conn) = cached() {
            return Ok(conn);
        }
        let timeout = self.shared.settings.timeout;
        let (conn, closed) = self.open(timeout + wait.max(MAX_WAIT)).await?;
        *self.ingest.conn.lock() = Some((conn.clone(), closed));
        Ok(conn)
    }

    /// Runs `request` on the ingest connection within `redis_timeout` plus
    /// `wait` (a blocking read's); a connection that broke, or a request
    /// that timed out, leaves the connection to be replaced.
    async fn on_reader<T, F, Fut>(&self, wait: Duration, request: F) -> Result<T, BrokerError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let bound = self.shared.settings.timeout + wait;
        let attempt = async {
            let conn = self.reader(wait).await?;
            request(conn).await.map_err(|e| {
                if is_broken(&e) {
                    *self.ingest.conn.lock() = None;
                }
                BrokerError::Unavailable(describe(&e))
            })
        };
        match tokio::time::timeout(bound, attempt).await {
            Ok(result) => result,
            Err(_) => {
                *self.ingest.conn.lock() = None;
                Err(BrokerError::Timeout(bound))
            }
        }
    }

    /// A Function of the library on the ingest connection (loaded first if missing).
    async fn ingest_call(&self, fcall: redis::Cmd) -> Result<Value, BrokerError> {
        self.on_reader(Duration::ZERO, |mut conn| async move {
            with_library::<Value>(&mut conn, &fcall).await
        })
        .await
    }

    async fn do_lease(
        &self,
        stream: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        let mut fcall = redis::cmd("FCALL");
        fcall
            .arg("duplex_lease")
            .arg(1)
            .arg(format!("{}:leader", self.ingest_key(stream)))
            .arg(holder)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        Ok(int(&self.ingest_call(fcall).await?)? == 1)
    }

    async fn do_claim(
        &self,
        stream: &str,
        consumer: &str,
        min_idle: Duration,
    ) -> Result<u64, BrokerError> {
        let mut fcall = redis::cmd("FCALL");
        fcall
            .arg("duplex_ingest_claim")
            .arg(1)
            .arg(self.ingest_key(stream))
            .arg(GROUP)
            .arg(consumer)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX));
        let moved = int(&self.ingest_call(fcall).await?)?;
        Ok(moved.unsigned_abs())
    }

    async fn do_read(
        &self,
        stream: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
    ) -> Result<Vec<Entry>, BrokerError> {
        let key = self.ingest_key(stream);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        let (wait, after) = match &from {
            ReadFrom::Pending(after) => (Duration::ZERO, after.as_str()),
            ReadFrom::New(wait) => {
                let wait = (*wait).clamp(Duration::from_millis(1), MAX_WAIT);
                cmd.arg("BLOCK").arg(wait.as_millis() as u64);
                (wait, ">")
            }
        };
        cmd.arg("STREAMS").arg(&key).arg(after);
        let mut guard = UnlessAnswered {
            reader: &self.ingest,
            answered: false,
        };
        let reply = self
            .on_reader(wait, |mut conn| async move {
                match cmd.query_async::<Value>(&mut conn).await {
                    Err(e) if e.code() == Some("NOGROUP") => Ok(None),
                    other => other.map(Some),
                }
            })
            .await;
        guard.answered = true;
        match reply? {
            Some(reply) => entries(reply),
            None => {
                tracing::info!(stream = %key, "the ingest stream's consumer group is gone (redis restarted empty, or the stream was deleted): making it again");
                self.do_claim(stream, consumer, Duration::ZERO).await?;
                Ok(Vec::new())
            }
        }
    }

    async fn do_ack(&self, stream: &str, done: &[Done], keep: Duration) -> Result<(), BrokerError> {
        let prefix = &self.shared.settings.prefix;
        let mut fcall = redis::cmd("FCALL");
        fcall
            .arg("duplex_ingest_ack")
            .arg(1)
            .arg(self.ingest_key(stream))
            .arg(GROUP);
        let mut expire = redis::pipe();
        let mut keys = 0;
        for entry in done {
            fcall.arg(&entry.id);
            if let Some(channel) = &entry.channel {
                let once = once_id(stream, &entry.id);
                expire
                    .cmd("EXPIRE")
                    .arg(format!("{{{prefix}{channel}}}:ingested:{once}"))
                    .arg(secs(keep))
                    .ignore();
                keys += 1;
            }
        }
        self.ingest_call(fcall).await?;
        if keys == 0 {
            return Ok(());
        }
        // Only shortens what would expire anyway: done on the ingest
        // connection, off the publish path.
        self.on_reader(Duration::ZERO, |mut conn| async move {
            expire.query_async::<()>(&mut conn).await
        })
        .await
    }
}

/// An integer reply.
fn int(reply: &Value) -> Result<i64, BrokerError> {
    match reply {
        Value::Int(n) => Ok(*n),
        _ => Err(BrokerError::Unavailable(format!(
            "unexpected answer from redis: {reply:?}"
        ))),
    }
}

/// The entries of an `XREADGROUP` reply: nil when a wait ended with none;
/// RESP3 answers a map of one stream, RESP2 an array of `[stream, entries]`.
pub(super) fn entries(reply: Value) -> Result<Vec<Entry>, BrokerError> {
    let bad = || BrokerError::Unavailable("unexpected XREADGROUP answer".to_string());
    let list = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(mut streams) if streams.len() == 1 => streams.pop().map(|(_, list)| list),
        Value::Array(mut streams) if streams.len() == 1 => match streams.pop() {
            Some(Value::Array(mut pair)) if pair.len() == 2 => pair.pop(),
            _ => None,
        },
        _ => None,
    };
    let Some(Value::Array(list)) = list else {
        return Err(bad());
    };
    list.into_iter()
        .map(|item| match item {
            Value::Array(pair) => {
                let mut pair = pair.into_iter();
                let id = pair.next().and_then(bulk).ok_or_else(bad)?;
                let id = String::from_utf8(id.to_vec()).map_err(|_| bad())?;
                Ok(Entry {
                    id,
                    fields: fields(pair.next().unwrap_or(Value::Nil)),
                })
            }
            _ => Err(bad()),
        })
        .collect()
}

/// An entry's fields: a flat array (or a map); nil for a trimmed entry.
fn fields(value: Value) -> Option<Vec<(Bytes, Bytes)>> {
    match value {
        Value::Array(flat) => {
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut items = flat.into_iter();
            while let (Some(f), Some(v)) = (items.next(), items.next()) {
                out.push((bulk(f)?, bulk(v)?));
            }
            Some(out)
        }
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(f, v)| Some((bulk(f)?, bulk(v)?)))
            .collect(),
        _ => None,
    }
}

fn bulk(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s)),
        Value::Int(n) => Some(Bytes::from(n.to_string())),
        _ => None,
    }
}

impl IngestLog for RedisBroker {
    fn lease<'a>(
        &'a self,
        stream: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        self.do_lease(stream, holder, ttl).boxed()
    }

    fn claim<'a>(
        &'a self,
        stream: &'a str,
        consumer: &'a str,
        min_idle: Duration,
    ) -> BoxFuture<'a, Result<u64, BrokerError>> {
        self.do_claim(stream, consumer, min_idle).boxed()
    }

    fn read<'a>(
        &'a self,
        stream: &'a str,
        consumer: &'a str,
        from: ReadFrom,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Entry>, BrokerError>> {
        self.do_read(stream, consumer, from, count).boxed()
    }

    fn ack<'a>(
        &'a self,
        stream: &'a str,
        done: &'a [Done],
        keep: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.do_ack(stream, done, keep).boxed()
    }

    fn publish_once<'a>(
        &'a self,
        republish: Republish<'a>,
    ) -> BoxFuture<'a, Result<Once, BrokerError>> {
        self.publish_once(republish).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn xreadgroup_replies_in_resp3_and_resp2() {
        let list = Value::Array(vec![
            Value::Array(vec![
                b("1-0"),
                Value::Array(vec![b("channel"), b("news"), b("data"), b("x")]),
            ]),
            Value::Array(vec![b("2-0"), Value::Nil]),
        ]);
        let resp3 = entries(Value::Map(vec![(b("s"), list.clone())])).expect("entries");
        let resp2 = entries(Value::Array(vec![Value::Array(vec![b("s"), list])])).expect("entries");
        assert_eq!(resp3, resp2);
        assert_eq!(resp3.len(), 2);
        assert_eq!(resp3[0].id, "1-0");
        assert_eq!(
            resp3[0].field("channel").map(|v| v.as_ref()),
            Some(&b"news"[..])
        );
        assert_eq!(resp3[0].field("encoding"), None);
        assert_eq!(resp3[1].fields, None, "a trimmed entry");
        assert_eq!(entries(Value::Nil).expect("none"), Vec::new());
        assert!(entries(Value::Int(3)).is_err());
    }
}
