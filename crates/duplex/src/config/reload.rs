//! Which settings a running node takes from a new config (SIGHUP) and which
//! need a restart.
//!
//! A setting is reloadable when the node reads it each time it uses it
//! (admitting a connection, checking a token or a key, reading a message)
//! or rebuilds what depends on it in place (the token verifier, the
//! namespace rules, the TLS certificate). Settings captured at start (the
//! listen address, the broker, background tasks' intervals, tables sized
//! at start) keep their running values until a restart, and the reload
//! says so. Connections already open keep what they were admitted with:
//! a lowered `max_message_size` applies to new connections, new namespace
//! rules to new subscriptions.
//!
//! Pure: the node applies the plan (`Node::reload`, `server`).

use super::Config;

macro_rules! reloadable {
    ($($name:ident),* $(,)?) => {
        /// Settings a running node takes from a new config.
        pub const RELOADABLE: &[&str] = &[$(stringify!($name)),*];

        /// `live` with every reloadable setting taken from `new`.
        fn adopt(live: &Config, new: &Config) -> Config {
            let mut next = live.clone();
            $( next.$name = new.$name.clone(); )*
            next
        }
    };
}

reloadable!(
    // Who may connect and call the API.
    api_key,
    token_secret,
    token_public_key,
    token_jwks_url,
    token_jwks_refresh,
    token_audience,
    token_issuer,
    allow_anonymous,
    user_channels,
    namespaces,
    tls_cert,
    tls_key,
    // Limits read at each use.
    max_connections,
    max_subscriptions,
    max_publish_rate,
    max_upstream_rate,
    max_channel_length,
    max_message_size,
    max_fragments,
    max_queued_bytes,
    max_queued_messages,
    handshake_timeout,
    // Plain mode.
    default_channel,
    plain_publish,
    plain_echo,
    plain_frames,
);

/// What a reload does.
#[derive(Debug, Clone)]
pub struct ReloadPlan {
    /// The config to run with from now on.
    pub config: Config,
    /// Changed settings that take effect now.
    pub applied: Vec<&'static str>,
    /// Changed settings that keep their running value until a restart.
    pub need_restart: Vec<&'static str>,
}

/// Splits the difference between the running config and a new, valid one.
pub fn plan(live: &Config, new: &Config) -> ReloadPlan {
    let (mut applied, mut need_restart): (Vec<_>, Vec<_>) = live
        .changed(new)
        .into_iter()
        .partition(|name| RELOADABLE.contains(name));
    let mut config = adopt(live, new);
    if live.tls() != new.tls() {
        // A new certificate is taken at once; turning TLS on or off changes
        // what the port speaks: that is a restart.
        config.tls_cert = live.tls_cert.clone();
        config.tls_key = live.tls_key.clone();
        applied.retain(|name| !name.starts_with("tls_"));
        need_restart.extend(
            ["tls_cert", "tls_key"]
                .iter()
                .filter(|n| live.changed(new).contains(n)),
        );
    }
    ReloadPlan {
        config,
        applied,
        need_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloadable_settings_apply_and_the_rest_wait_for_a_restart() {
        let live = Config::default();
        let new = Config {
            api_key: "k2".into(),
            max_connections: 7,
            listen: "127.0.0.1:9".parse().unwrap(),
            redis: "redis://elsewhere".into(),
            ..Config::default()
        };
        let plan = plan(&live, &new);
        assert_eq!(plan.applied, ["api_key", "max_connections"]);
        assert_eq!(plan.need_restart, ["listen", "redis"]);
        assert_eq!(plan.config.api_key.expose(), "k2");
        assert_eq!(plan.config.max_connections, 7);
        assert_eq!(plan.config.listen, live.listen, "kept until a restart");
        assert_eq!(plan.config.redis, "");
        assert!(super::plan(&live, &live).applied.is_empty());
    }

    #[test]
    fn turning_tls_on_needs_a_restart_but_a_new_certificate_does_not() {
        let plain = Config::default();
        let tls = Config {
            tls_cert: "a.pem".into(),
            tls_key: "a.key".into(),
            ..Config::default()
        };
        let on = plan(&plain, &tls);
        assert!(on.applied.is_empty());
        assert_eq!(on.need_restart, ["tls_cert", "tls_key"]);
        assert_eq!(on.config.tls_cert, "");
        let rotated = Config {
            tls_cert: "b.pem".into(),
            ..tls.clone()
        };
        let swap = plan(&tls, &rotated);
        assert_eq!(swap.applied, ["tls_cert"]);
        assert_eq!(swap.config.tls_cert, "b.pem");
    }

    #[test]
    fn every_reloadable_name_is_a_setting() {
        let changed_all = Config::default().changed(&Config {
            namespaces: vec![Default::default()],
            ..Config::default()
        });
        assert_eq!(changed_all, ["namespaces"]);
        // adopt() would not compile with a name that is not a field; this
        // guards the list against duplicates.
        let mut names = RELOADABLE.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), RELOADABLE.len());
    }
}
