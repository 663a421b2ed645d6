//! History on a Redis Cluster: the same Function library as on a single
//! Redis (`broker/redis/history.rs`), loaded on every master, called on the
//! master of the channel's slot with every key declared, all hash-tagged by
//! the channel (`{K}:meta`, `{K}:history`), so a channel's state lives on
//! the shard that carries its messages and the append-and-publish stays
//! one atomic step there (its live copy goes out with `SPUBLISH`).
//!
//! The namespace table the nodes keep for backends' option-less calls is
//! a key of its own slot, which a cluster Function may not read: on a
//! cluster the node always passes the options, and so must a backend
//! (docs/SCALING.md).

use duplex_protocol::channel::ChannelName;
use futures_util::future::{BoxFuture, FutureExt};
use redis::Value;

use super::RedisClusterBroker;
use crate::broker::exclusion::{self, EXCLUDE_CHANNEL_PREFIX};
use crate::broker::history::table::secs;
use crate::broker::history::{History, HistoryOptions, HistoryPage, NamespaceHistory, Query};
use crate::broker::redis::history::{
    declare_keys, load_library, page, position, restart_call, with_library,
};
use crate::broker::{BrokerError, RemoteConnection};
use crate::message::{Position, Publication};

impl RedisClusterBroker {
    async fn history_publish(
        &self,
        p: Publication,
        options: &HistoryOptions,
        excluded: Option<RemoteConnection<'_>>,
    ) -> Result<Position, BrokerError> {
        options.check()?;
        self.subscriber_up()?;
        let prefix = &self.shared.settings.prefix;
        let key = format!("{prefix}{}", p.channel);
        if let Some(e) = excluded {
            // On its own shard: sent and answered before the message.
            let connection = format!("{}.{}", e.node, e.seq);
            let mut notice = redis::cmd("SPUBLISH");
            notice
                .arg(format!("{prefix}{EXCLUDE_CHANNEL_PREFIX}{}", e.node))
                .arg(exclusion::notice(
                    &connection,
                    p.channel.as_str(),
                    &p.payload,
                ));
            self.command::<i64>(notice).await?;
        }
        let mut fcall = redis::cmd("FCALL");
        fcall.arg("duplex_publish");
        declare_keys(&mut fcall, &key, None);
        fcall
            .arg(p.payload.as_ref())
            .arg(options.size)
            .arg(secs(options.ttl))
            .arg(secs(options.meta_ttl))
            .arg(1);
        if let Some(sender) = p.exclude {
            self.shared.echo.expect(&key, p.payload.clone(), sender);
        }
        let result = self
            .on_conn(|mut conn| async move { with_library::<Value>(&mut conn, &fcall).await })
            .await;
        if let (Err(_), Some(sender)) = (&result, p.exclude) {
            self.shared.echo.forget(&key, &p.payload, sender);
        }
        position(result?)
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
            .on_conn(|mut conn| async move { with_library::<Value>(&mut conn, &fcall).await })
            .await?;
        page(channel, reply)
    }
}

impl History for RedisClusterBroker {
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
                .on_conn(|mut conn| async move { with_library::<Value>(&mut conn, &fcall).await })
                .await?;
            Ok(page(channel, reply)?.top)
        }
        .boxed()
    }

    /// No table on a cluster (another slot): the library is loaded on
    /// every master so the first publishes need no retry.
    fn set_namespaces(
        &self,
        _namespaces: &[NamespaceHistory],
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            self.on_conn(|mut conn| async move { load_library(&mut conn).await })
                .await
        }
        .boxed()
    }
}
