//! The publish connection: one multiplexed connection for `PUBLISH`,
//! `XADD` and the Functions, opened on demand, replaced when Redis closed
//! it or the subscriber connection was lost since it opened, every request
//! (connecting included) bounded by `redis_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::RedisBroker;
use crate::broker::BrokerError;

/// redis-rs tells a connection's push sender when the connection ends
/// (the server went away or closed it); a request on a dead connection
/// would fail with "broken pipe" without ever reaching Redis, so a dead one
/// is replaced before use instead (issue 15: the first `send` after a
/// Redis restart used to get 107 while `/health` said 200).
#[derive(Clone)]
pub(super) struct Publisher {
    pub(super) conn: MultiplexedConnection,
    pub(super) closed: Arc<AtomicBool>,
    /// `Shared::links_lost` when it was opened: once the subscriber
    /// connection is lost after, this one is replaced too.
    lost_before: u64,
}

impl Publisher {
    fn live(&self, links_lost: u64) -> Option<MultiplexedConnection> {
        (!self.closed.load(Ordering::Acquire) && self.lost_before == links_lost)
            .then(|| self.conn.clone())
    }
}

/// A Redis error as an operator reads it, with a hint where one helps.
pub(super) fn describe(e: &redis::RedisError) -> String {
    let text = e.to_string();
    if text.to_ascii_lowercase().contains("hello") {
        format!("{text} (the node speaks RESP3 to Redis: Redis 6 or later is needed)")
    } else {
        text
    }
}

/// Whether the connection that gave this error must be replaced.
pub(super) fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

impl RedisBroker {
    pub(super) async fn publisher(&self) -> Result<MultiplexedConnection, BrokerError> {
        let lost = || self.shared.links_lost.load(Ordering::SeqCst);
        let cached = || self.publisher.lock().as_ref().and_then(|p| p.live(lost()));
        if let Some(conn) = cached() {
            return Ok(conn);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(conn) = cached() {
            return Ok(conn);
        }
        let timeout = self.shared.settings.timeout;
        let lost_before = lost();
        let (conn, closed) = self.open(timeout).await?;
        *self.publisher.lock() = Some(Publisher {
            conn: conn.clone(),
            closed,
            lost_before,
        });
        Ok(conn)
    }

    /// A new multiplexed connection (RESP3) whose replies may take
    /// `response_timeout`, and the flag its close notice sets (a restart,
    /// Redis's idle `timeout`), so a closed one is replaced before use.
    pub(super) async fn open(
        &self,
        response_timeout: Duration,
    ) -> Result<(MultiplexedConnection, Arc<AtomicBool>), BrokerError> {
        let closed = Arc::new(AtomicBool::new(false));
        let on_close = Arc::clone(&closed);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.shared.settings.timeout))
            .set_response_timeout(Some(response_timeout))
            .set_push_sender(move |push: redis::PushInfo| {
                if push.kind == redis::PushKind::Disconnection {
                    on_close.store(true, Ordering::Release);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let conn = self
            .shared
            .address
            .connect(&config)
            .await
            .map_err(BrokerError::Unavailable)?;
        Ok((conn, closed))
    }

    /// Runs one command on the publish connection; connecting (or waiting
    /// for another caller's connect) and the command together end within
    /// `redis_timeout`.
    pub(super) async fn command<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, BrokerError> {
        self.on_publisher(|mut conn| async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// Runs a pipeline on the publish connection, bounded like [`Self::command`].
    pub(super) async fn pipeline(&self, pipe: redis::Pipeline) -> Result<(), BrokerError> {
        self.on_publisher(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// Runs `request` on the publish connection within `redis_timeout`,
    /// connecting first if needed; a connection that broke or timed out is
    /// dropped so the next request opens a fresh one.
    pub(super) async fn on_publisher<T, F, Fut>(&self, request: F) -> Result<T, BrokerError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let timeout = self.shared.settings.timeout;
        let attempt = async {
            let conn = self.publisher().await?;
            request(conn).await.map_err(|e| {
                if is_broken(&e) {
                    *self.publisher.lock() = None;
                }
                BrokerError::Unavailable(describe(&e))
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                *self.publisher.lock() = None;
                Err(BrokerError::Timeout(timeout))
            }
        }
    }
}
