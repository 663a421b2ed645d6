//! Where the Redis broker connects: the one server a `redis://` URL names,
//! or the current master of a group that Redis Sentinel watches
//! (`redis+sentinel://`), asked of the sentinels again at every connect
//! and checked with `ROLE` on the connection itself, so that a node never
//! keeps talking to a master that a failover demoted (`PUBLISH` still
//! succeeds on a replica, but reaches only that replica's subscribers).
//!
//! The URL form: `redis+sentinel://[user:password@]host[:port][,host[:port]...]/<master name>[/db]`
//! with `?sentinel_username=...&sentinel_password=...` when the sentinels
//! themselves ask for credentials; the user and password before `@` are the
//! master's. A sentinel named without a port listens on 26379.

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    ProtocolVersion, RedisConnectionInfo, RedisError, Role,
};

/// The scheme of a URL that names a Sentinel group.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// Port of a sentinel named without one (Redis Sentinel's default).
const SENTINEL_PORT: u16 = 26379;

/// Why a `redis+sentinel://` URL cannot be used (what to write instead is in the text).
#[derive(Debug, thiserror::Error)]
pub enum SentinelUrlError {
    /// Nothing between `//` and the master name.
    #[error("no sentinel address: the form is redis+sentinel://host:26379[,host:port...]/<master name>[/db]")]
    NoSentinels,
    /// No master name after the addresses.
    #[error(
        "no master name: the form is redis+sentinel://host:26379[,host:port...]/<master name>[/db]"
    )]
    NoService,
    /// A sentinel address that is not `host[:port]`.
    #[error("bad sentinel address {0:?}: write host or host:port")]
    Address(String),
    /// A db that is not a number, or more path after it.
    #[error("bad db {0:?}: after the master name comes at most a db number")]
    Db(String),
    /// A query parameter other than the sentinel credentials.
    #[error("unknown parameter {0:?}: only sentinel_username and sentinel_password are taken")]
    Parameter(String),
    /// The master's credentials before `@` cannot be read.
    #[error("bad credentials before '@': {0}")]
    Credentials(RedisError),
}

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone)]
pub struct SentinelUrl {
    /// Sentinel addresses, in the order given.
    pub sentinels: Vec<(String, u16)>,
    /// The master name the sentinels monitor (`sentinel monitor <name> ...`).
    pub service: String,
    /// Db, user and password for the master.
    pub redis: RedisConnectionInfo,
    /// User for the sentinels, when they ask for one.
    pub sentinel_username: Option<String>,
    /// Password for the sentinels, when they ask for one.
    pub sentinel_password: Option<String>,
}

impl SentinelUrl {
    /// Parses `url` when it has the Sentinel scheme; `Ok(None)` for any other URL.
    pub fn parse(url: &str) -> Result<Option<SentinelUrl>, SentinelUrlError> {
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            return Ok(None);
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let sentinels = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(parse_host)
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(SentinelUrlError::NoSentinels);
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let service = segments.next().ok_or(SentinelUrlError::NoService)?;
        let db = match (segments.next(), segments.next()) {
            (None, _) => 0,
            (Some(db), None) => db
                .parse::<i64>()
                .map_err(|_| SentinelUrlError::Db(db.to_string()))?,
            (Some(_), Some(_)) => return Err(SentinelUrlError::Db(path.to_string())),
        };
        let mut redis = match userinfo {
            // redis-rs reads (and percent-decodes) the credentials of a plain URL.
            Some(userinfo) => format!("redis://{userinfo}@localhost/")
                .into_connection_info()
                .map_err(SentinelUrlError::Credentials)?
                .redis_settings()
                .clone(),
            None => RedisConnectionInfo::default(),
        };
        redis = redis.set_db(db).set_protocol(ProtocolVersion::RESP3);
        let mut parsed = SentinelUrl {
            sentinels,
            service: service.to_string(),
            redis,
            sentinel_username: None,
            sentinel_password: None,
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "sentinel_username" => parsed.sentinel_username = Some(value.into_owned()),
                "sentinel_password" => parsed.sentinel_password = Some(value.into_owned()),
                _ => return Err(SentinelUrlError::Parameter(key.into_owned())),
            }
        }
        Ok(Some(parsed))
    }

    /// How each sentinel is reached (RESP2: the lookups are plain requests).
    fn sentinel_infos(&self) -> Vec<ConnectionInfo> {
        let mut settings = RedisConnectionInfo::default();
        if let Some(user) = &self.sentinel_username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.sentinel_password {
            settings = settings.set_password(password);
        }
        self.sentinels
            .iter()
            .filter_map(|(host, port)| {
                ConnectionAddr::Tcp(host.clone(), *port)
                    .into_connection_info()
                    .ok()
                    .map(|info| info.set_redis_settings(settings.clone()))
            })
            .collect()
    }
}

/// `host`, `host:port` or `[v6]:port`.
fn parse_host(text: &str) -> Result<(String, u16), SentinelUrlError> {
    let bad = || SentinelUrlError::Address(text.to_string());
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(port) => port.parse::<u16>().map_err(|_| bad())?,
        None => SENTINEL_PORT,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Where the broker's connections go: one server, or a Sentinel group's master.
pub(super) enum Address {
    /// The one server of a `redis://` (or `rediss://`, `unix://`) URL, as
    /// before Sentinel support: no lookup, no role check.
    Direct(redis::Client),
    /// The master of a Sentinel group, looked up at every connect.
    Sentinel(Watched),
}

/// A Sentinel group and what the node last learned of it.
pub(super) struct Watched {
    service: String,
    /// The library's lookup state (it caches its sentinel connections).
    sentinels: tokio::sync::Mutex<Sentinel>,
    /// The master's credentials, db and protocol.
    master: SentinelNodeConnectionInfo,
    /// The master last found (`host:port`), so a change is logged once.
    last: Mutex<Option<String>>,
}

impl Address {
    /// The address a broker URL names; every connection speaks RESP3
    /// (pushes for the subscriber, the close notice for the others).
    pub(super) fn open(url: &str) -> Result<Address, RedisError> {
        match SentinelUrl::parse(url).map_err(invalid)? {
            None => {
                let info = url.into_connection_info()?;
                let resp3 = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                Ok(Address::Direct(redis::Client::open(
                    info.set_redis_settings(resp3),
                )?))
            }
            Some(parsed) => Ok(Address::Sentinel(Watched {
                sentinels: tokio::sync::Mutex::new(Sentinel::build(parsed.sentinel_infos())?),
                master: SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(parsed.redis.clone()),
                service: parsed.service,
                last: Mutex::new(None),
            })),
        }
    }

    /// Whether the server behind it can change (a failover): then every
    /// connection is checked to be the master's, on connect and on the
    /// subscriber's health interval.
    pub(super) fn follows_failover(&self) -> bool {
        matches!(self, Address::Sentinel(_))
    }

    /// A new connection to the server (the current master, for Sentinel);
    /// the caller bounds it in time.
    pub(super) async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, String> {
        match self {
            Address::Direct(client) => client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map_err(|e| super::describe(&e)),
            Address::Sentinel(watched) => watched.connect(config).await,
        }
    }
}

impl Watched {
    async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, String> {
        let client = {
            let mut sentinels = self.sentinels.lock().await;
            sentinels
                .async_master_for(&self.service, Some(&self.master))
                .await
                .map_err(|e| {
                    format!(
                        "no master for {:?} from the sentinels: {}",
                        self.service,
                        super::describe(&e)
                    )
                })?
        };
        let found = client.get_connection_info().addr().to_string();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .map_err(|e| format!("master {found}: {}", super::describe(&e)))?;
        // The sentinels may name a master that a failover demoted since.
        check_master(&mut conn).await?;
        let previous = self.last.lock().replace(found.clone());
        if previous.as_deref() != Some(found.as_str()) {
            tracing::info!(service = %self.service, master = %found, previous = ?previous, "redis sentinel: connecting to the master");
        }
        Ok(conn)
    }
}

/// A client for the server a broker URL names now (a Sentinel group's
/// current master), for one-off tools such as `duplex publish --redis`.
pub async fn current_client(url: &str) -> Result<redis::Client, RedisError> {
    match SentinelUrl::parse(url).map_err(invalid)? {
        None => redis::Client::open(url),
        Some(parsed) => {
            let master = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(parsed.redis.clone());
            Sentinel::build(parsed.sentinel_infos())?
                .async_master_for(&parsed.service, Some(&master))
                .await
        }
    }
}

/// `Ok` when the server on `conn` is a master; why not otherwise.
pub(super) async fn check_master(conn: &mut MultiplexedConnection) -> Result<(), String> {
    role_check(conn)
        .await
        .map_err(|e| format!("ROLE failed: {}", super::describe(&e)))?
}

/// Asks `ROLE`: the outer error is the request's, the inner one the verdict.
pub(super) async fn role_check(
    conn: &mut MultiplexedConnection,
) -> redis::RedisResult<Result<(), String>> {
    Ok(match redis::cmd("ROLE").query_async::<Role>(conn).await? {
        Role::Primary { .. } => Ok(()),
        Role::Replica {
            primary_ip,
            primary_port,
            ..
        } => Err(format!(
            "the server is a replica of {primary_ip}:{primary_port} now (failed over): looking up the master again"
        )),
        other => Err(format!("the server is not a master: {other:?}")),
    })
}

fn invalid(e: SentinelUrlError) -> RedisError {
    RedisError::from((
        ErrorKind::InvalidClientConfig,
        "invalid redis+sentinel URL",
        e.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let url = "redis+sentinel://u:p%40ss@a:26380,b,[::1]:7/mymaster/2?sentinel_password=s";
        let parsed = SentinelUrl::parse(url).expect("valid").expect("sentinel");
        assert_eq!(
            parsed.sentinels,
            vec![
                ("a".to_string(), 26380),
                ("b".to_string(), SENTINEL_PORT),
                ("::1".to_string(), 7)
            ]
        );
        assert_eq!(parsed.service, "mymaster");
        assert_eq!(parsed.redis.db(), 2);
        assert_eq!(parsed.redis.username(), Some("u"));
        assert_eq!(parsed.redis.password(), Some("p@ss"));
        assert_eq!(parsed.sentinel_password.as_deref(), Some("s"));
    }

    #[test]
    fn refuses_what_cannot_be_used() {
        for url in [
            "redis+sentinel:///mymaster",
            "redis+sentinel://a:26379",
            "redis+sentinel://a:26379/",
            "redis+sentinel://a:x/m",
            "redis+sentinel://a/m/zero",
            "redis+sentinel://a/m/1/2",
            "redis+sentinel://a/m?db=1",
        ] {
            assert!(SentinelUrl::parse(url).is_err(), "{url}");
        }
        assert!(SentinelUrl::parse("redis://a/0").expect("ok").is_none());
    }
}
