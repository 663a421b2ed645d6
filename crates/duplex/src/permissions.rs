//! Who may subscribe to and publish on which channels: namespaces matched by
//! channel name, each with a rule for subscribing and one for publishing from
//! a client. Backends (HTTP API, Redis PUBLISH) are never limited by these.
//!
//! A namespace may also send its channels' upstream messages (plain frames,
//! and native `send`/`rpc` naming a channel) to its own Redis Stream or HTTP
//! endpoint instead of the node's: [`Permissions::upstream`].
//!
//! Pure: the session asks, with what it knows about the client.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who may subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeRule {
    /// Any client, anonymous included.
    #[default]
    Anyone,
    /// Clients whose token names a user.
    Authenticated,
    /// Clients presenting a subscription token for this channel (private channels).
    Token,
}

/// Who may publish from a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublishRule {
    /// Any client.
    #[default]
    Anyone,
    /// Clients whose token names a user.
    Authenticated,
    /// Clients subscribed to the channel on the same connection.
    Subscribers,
    /// No client; only backends publish here.
    Nobody,
}

/// One namespace as written in the config file (`[[namespaces]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Channels it covers: an exact name (`news`) or a prefix ending in `*` (`chat:*`).
    pub pattern: String,
    /// Who may subscribe.
    #[serde(default)]
    pub subscribe: SubscribeRule,
    /// Who may publish from a client.
    #[serde(default)]
    pub publish: PublishRule,
    /// Redis Stream for upstream messages routed by these channels, instead
    /// of the node's `upstream_stream` (after `redis_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_stream: Option<String>,
    /// HTTP endpoint for `send` and `rpc` naming these channels, instead of
    /// the node's `upstream_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_url: Option<String>,
    /// Publications kept per channel for recovery and `history`; with
    /// `history_ttl`, turns history on (docs/DELIVERY.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub history_size: usize,
    /// How long they are kept after the channel's last publication.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub history_ttl: Option<Duration>,
    /// How long the channel's epoch and last offset outlive its data, so a
    /// client away longer than `history_ttl` learns it missed something
    /// rather than starting over silently [default: 30 days].
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub history_meta_ttl: Option<Duration>,
    /// Most publications one recovery may deliver; a larger gap answers
    /// `recovered: false` [default: 1000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_max_publications: Option<usize>,
    /// `stream` (every missed publication) or `cache` (only the latest: a
    /// new subscriber gets the channel's last state at once) [default: stream].
    #[serde(default, skip_serializing_if = "RecoveryMode::is_stream")]
    pub recovery_mode: RecoveryMode,
    /// Each native subscriber is a member others can list (`presence`,
    /// `presence_stats`; docs/PRESENCE.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presence: bool,
    /// Native subscribers get `join` / `leave` pushes (needs `presence`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join_leave: bool,
    /// How long a node's members outlive its last lease renewal: the bound
    /// for a killed node's members to go [default: 10s].
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub presence_ttl: Option<Duration>,
}

/// What a subscriber gets from a channel's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryMode {
    /// Every publication it missed (or `recovered: false`).
    #[default]
    Stream,
    /// Only the latest publication, also for a new subscriber: the
    /// channel's current state (last price, last document version).
    Cache,
}

impl RecoveryMode {
    fn is_stream(&self) -> bool {
        *self == RecoveryMode::Stream
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A namespace's history settings, when it keeps history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRule {
    /// `history_size`.
    pub size: usize,
    /// `history_ttl`.
    pub ttl: Duration,
    /// `history_meta_ttl`.
    pub meta_ttl: Duration,
    /// `recovery_max_publications`.
    pub recovery_max: usize,
    /// `recovery_mode = "cache"`.
    pub cache: bool,
}

/// A namespace's presence settings, when its channels keep members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceRule {
    /// `join_leave`: subscribers who ask get `join` and `leave` pushes.
    pub join_leave: bool,
    /// `presence_ttl`: the lease a node renews every third of it.
    pub ttl: Duration,
}

/// `presence_ttl` when unset.
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(10);
/// Shortest `presence_ttl`: a node must renew within a third of it.
pub const MIN_PRESENCE_TTL: Duration = Duration::from_millis(300);

/// Longest per-namespace `upstream_stream`, in bytes.
pub const MAX_UPSTREAM_STREAM: usize = 255;

/// `history_meta_ttl` when unset: as Centrifugo, 30 days.
pub const DEFAULT_HISTORY_META_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// `recovery_max_publications` when unset.
pub const DEFAULT_RECOVERY_MAX: usize = 1000;
/// Largest `history_size`: what one channel may hold.
pub const MAX_HISTORY_SIZE: usize = 1_000_000;

impl Namespace {
    /// Its history settings, or `None` when it keeps no history.
    pub fn history(&self) -> Option<HistoryRule> {
        let ttl = self.history_ttl.filter(|t| !t.is_zero())?;
        (self.history_size > 0).then(|| HistoryRule {
            size: self.history_size,
            ttl,
            meta_ttl: self.history_meta_ttl.unwrap_or(DEFAULT_HISTORY_META_TTL),
            recovery_max: self
                .recovery_max_publications
                .unwrap_or(DEFAULT_RECOVERY_MAX),
            cache: self.recovery_mode == RecoveryMode::Cache,
        })
    }

    /// Its presence settings, or `None` when its channels keep no members.
    pub fn presence(&self) -> Option<PresenceRule> {
        self.presence.then(|| PresenceRule {
            join_leave: self.join_leave,
            ttl: self.presence_ttl.unwrap_or(DEFAULT_PRESENCE_TTL),
        })
    }

    fn check_presence(&self) -> Result<(), String> {
        if !self.presence && self.join_leave {
            return Err("join_leave needs presence = true".into());
        }
        if !self.presence && self.presence_ttl.is_some() {
            return Err("presence_ttl needs presence = true".into());
        }
        if self.presence_ttl.is_some_and(|t| t < MIN_PRESENCE_TTL) {
            return Err(format!(
                "presence_ttl must be at least {MIN_PRESENCE_TTL:?}"
            ));
        }
        Ok(())
    }

    fn check_history(&self) -> Result<(), String> {
        let ttl = self.history_ttl.unwrap_or_default();
        match (self.history_size, ttl.is_zero()) {
            (0, true) => {}
            (0, false) => {
                return Err("history_ttl without history_size: set both to keep history".into())
            }
            (_, true) => {
                return Err("history_size without history_ttl: set both to keep history".into())
            }
            (size, false) if size > MAX_HISTORY_SIZE => {
                return Err(format!("history_size is over {MAX_HISTORY_SIZE}"))
            }
            _ => {}
        }
        if let Some(meta) = self.history_meta_ttl {
            if meta < ttl {
                return Err("history_meta_ttl must be at least history_ttl (the epoch must outlive the data)".into());
            }
        }
        if self.recovery_max_publications == Some(0) {
            return Err("recovery_max_publications must be at least 1".into());
        }
        Ok(())
    }

    /// Whether it covers `channel`.
    fn matches(&self, channel: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => channel == self.pattern,
        }
    }
}

/// What the permission check needs to know about a client.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// User id; empty for anonymous clients.
    pub user: &'a str,
    /// Whether the client holds a valid subscription token for the channel.
    pub has_channel_token: bool,
    /// Whether the client is subscribed to the channel (for publishing).
    pub subscribed: bool,
}

/// Why a permission check failed; never says whether the channel exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The namespace wants an authenticated user.
    #[error("permission denied: sign in first")]
    NotAuthenticated,
    /// The namespace wants a subscription token for the channel.
    #[error("permission denied: this channel needs a subscription token")]
    NeedsToken,
    /// The namespace wants the publisher to be subscribed.
    #[error("permission denied: subscribe before publishing here")]
    NotSubscribed,
    /// Clients may not publish here at all.
    #[error("permission denied: clients cannot publish here")]
    Forbidden,
    /// A server channel (`#...`) that is not the client's own.
    #[error("permission denied")]
    Reserved,
}

/// All namespaces, in config order (first match wins), and the default rules.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    namespaces: Vec<Governed>,
    fallback: Governed,
    /// Some namespace keeps history.
    any_history: bool,
    /// Some namespace keeps presence.
    any_presence: bool,
}

/// A namespace and its upstream URL, shared by every call routed there.
#[derive(Debug, Clone, Default)]
struct Governed {
    ns: Namespace,
    url: Option<Arc<str>>,
}

/// Where a namespace sends its channels' upstream messages; `None` = the node's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamOverride<'a> {
    /// Its `upstream_stream`.
    pub stream: Option<&'a str>,
    /// Its `upstream_url`.
    pub url: Option<&'a Arc<str>>,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            pattern: "*".to_string(),
            subscribe: SubscribeRule::Anyone,
            publish: PublishRule::Anyone,
            upstream_stream: None,
            upstream_url: None,
            history_size: 0,
            history_ttl: None,
            history_meta_ttl: None,
            recovery_max_publications: None,
            recovery_mode: RecoveryMode::Stream,
            presence: false,
            join_leave: false,
            presence_ttl: None,
        }
    }
}

/// A namespace the config cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace {pattern:?}: {reason}")]
pub struct InvalidNamespace {
    /// The namespace's pattern.
    pub pattern: String,
    /// What is wrong.
    pub reason: String,
}

impl Permissions {
    /// Checks the namespaces and builds the rule set; a `*` namespace, if
    /// any, becomes the default for channels no other namespace covers.
    pub fn new(namespaces: Vec<Namespace>) -> Result<Self, InvalidNamespace> {
        let mut fallback = Governed::default();
        let mut specific = Vec::new();
        for ns in namespaces {
            let bad = |reason: &str| InvalidNamespace {
                pattern: ns.pattern.clone(),
                reason: reason.to_string(),
            };
            if ns.pattern.is_empty() {
                return Err(bad("empty pattern"));
            }
            if ns.pattern[..ns.pattern.len() - 1].contains('*') {
                return Err(bad("'*' may only end a pattern"));
            }
            if ns.pattern.starts_with('#') {
                return Err(bad("'#' channels are the server's own (#user:<id>)"));
            }
            // A pattern no valid name can match is a typo ('#' inside, spaces...).
            let stem = ns.pattern.strip_suffix('*').unwrap_or(&ns.pattern);
            if !stem.is_empty() {
                if let Err(e) = duplex_protocol::channel::validate(stem, usize::MAX) {
                    return Err(bad(&format!("no channel can match it: {e}")));
                }
            }
            if let Some(stream) = &ns.upstream_stream {
                if stream.is_empty() || stream.len() > MAX_UPSTREAM_STREAM {
                    return Err(bad(&format!(
                        "upstream_stream must be 1 to {MAX_UPSTREAM_STREAM} bytes"
                    )));
                }
            }
            ns.check_history().map_err(|why| bad(&why))?;
            ns.check_presence().map_err(|why| bad(&why))?;
            if let Some(url) = &ns.upstream_url {
                match url::Url::parse(url) {
                    Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                    _ => return Err(bad("upstream_url must be an http:// or https:// URL")),
                }
            }
            let governed = Governed {
                url: ns.upstream_url.as_deref().map(Arc::from),
                ns,
            };
            if governed.ns.pattern == "*" {
                fallback = governed;
            } else {
                specific.push(governed);
            }
        }
        let any_history = specific
            .iter()
            .chain(std::iter::once(&fallback))
            .any(|g| g.ns.history().is_some());
        let any_presence = specific
            .iter()
            .chain(std::iter::once(&fallback))
            .any(|g| g.ns.presence);
        Ok(Permissions {
            namespaces: specific,
            fallback,
            any_history,
            any_presence,
        })
    }

    /// The namespace that governs `channel`.
    pub fn namespace(&self, channel: &str) -> &Namespace {
        &self.governing(channel).ns
    }

    fn governing(&self, channel: &str) -> &Governed {
        self.namespaces
            .iter()
            .find(|g| g.ns.matches(channel))
            .unwrap_or(&self.fallback)
    }

    /// Where upstream messages routed by `channel` go, when its namespace
    /// says (the first match, as for the rules).
    pub fn upstream(&self, channel: &str) -> UpstreamOverride<'_> {
        let governed = self.governing(channel);
        UpstreamOverride {
            stream: governed.ns.upstream_stream.as_deref(),
            url: governed.url.as_ref(),
        }
    }

    /// Whether any namespace keeps history (when none does, nothing needs
    /// a per-channel look).
    pub fn keeps_history(&self) -> bool {
        self.any_history
    }

    /// The history settings of `channel`'s namespace, if it keeps history.
    pub fn history(&self, channel: &str) -> Option<HistoryRule> {
        self.governing(channel).ns.history()
    }

    /// Whether any namespace keeps presence (the node then needs a broker
    /// with presence, and ticks).
    pub fn keeps_presence(&self) -> bool {
        self.any_presence
    }

    /// The presence settings of `channel`'s namespace, if it keeps members.
    pub fn presence(&self, channel: &str) -> Option<PresenceRule> {
        self.governing(channel).ns.presence()
    }

    /// Every namespace in match order (the default last) with its history
    /// settings, as backends' `FCALL duplex_publish` must resolve them.
    pub fn history_table(&self) -> Vec<(&str, Option<HistoryRule>)> {
        self.namespaces
            .iter()
            .chain(std::iter::once(&self.fallback))
            .map(|g| (g.ns.pattern.as_str(), g.ns.history()))
            .collect()
    }

    /// Whether some namespace has its own `upstream_url` (the node then
    /// needs its HTTP client even without a node-wide URL).
    pub fn has_upstream_urls(&self) -> bool {
        self.effective().any(|ns| ns.upstream_url.is_some())
    }

    /// May this client subscribe to `channel`?
    pub fn can_subscribe(&self, channel: &str, asker: Asker<'_>) -> Result<(), Denied> {
        match self.namespace(channel).subscribe {
            SubscribeRule::Anyone => Ok(()),
            SubscribeRule::Authenticated if !asker.user.is_empty() => Ok(()),
            SubscribeRule::Authenticated => Err(Denied::NotAuthenticated),
            SubscribeRule::Token if asker.has_channel_token => Ok(()),
            SubscribeRule::Token => Err(Denied::NeedsToken),
        }
    }

    /// May this client publish to `channel`?
    pub fn can_publish(&self, channel: &str, asker: Asker<'_>) -> Result<(), Denied> {
        match self.namespace(channel).publish {
            PublishRule::Anyone => Ok(()),
            PublishRule::Authenticated if !asker.user.is_empty() => Ok(()),
            PublishRule::Authenticated => Err(Denied::NotAuthenticated),
            PublishRule::Subscribers if asker.subscribed => Ok(()),
            PublishRule::Subscribers => Err(Denied::NotSubscribed),
            PublishRule::Nobody => Err(Denied::Forbidden),
        }
    }

    /// Every namespace in the order they are matched, the default last.
    pub fn effective(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces
            .iter()
            .chain(std::iter::once(&self.fallback))
            .map(|g| &g.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(pattern: &str, subscribe: SubscribeRule, publish: PublishRule) -> Namespace {
        Namespace {
            pattern: pattern.into(),
            subscribe,
            publish,
            upstream_stream: None,
            upstream_url: None,
            ..Default::default()
        }
    }

    #[test]
    fn presence_options_need_presence_and_a_usable_lease() {
        let with = |presence, join_leave, ttl: Option<Duration>| {
            Permissions::new(vec![Namespace {
                pattern: "room:*".into(),
                presence,
                join_leave,
                presence_ttl: ttl,
                ..Default::default()
            }])
        };
        let refused = |p: Result<Permissions, InvalidNamespace>| p.unwrap_err().reason;
        assert!(refused(with(false, true, None)).contains("join_leave needs presence"));
        assert!(
            refused(with(false, false, Some(Duration::from_secs(5)))).contains("needs presence")
        );
        assert!(refused(with(true, false, Some(Duration::from_millis(10)))).contains("at least"));
        let p = with(true, true, None).unwrap();
        assert!(p.keeps_presence());
        assert_eq!(
            p.presence("room:1"),
            Some(PresenceRule {
                join_leave: true,
                ttl: DEFAULT_PRESENCE_TTL
            })
        );
        assert_eq!(p.presence("other"), None);
        assert!(!with(false, false, None).unwrap().keeps_presence());
    }

    const ANON: Asker<'static> = Asker {
        user: "",
        has_channel_token: false,
        subscribed: false,
    };

    #[test]
    fn first_match_wins_and_star_is_the_default() {
        let p = Permissions::new(vec![
            ns("chat:vip", SubscribeRule::Token, PublishRule::Subscribers),
            ns(
                "chat:*",
                SubscribeRule::Authenticated,
                PublishRule::Authenticated,
            ),
            ns("*", SubscribeRule::Anyone, PublishRule::Nobody),
        ])
        .unwrap();
        assert_eq!(p.namespace("chat:vip").subscribe, SubscribeRule::Token);
        assert_eq!(p.namespace("chat:1").pattern, "chat:*");
        assert_eq!(p.namespace("chat:vipx").pattern, "chat:*");
        assert_eq!(p.namespace("news").pattern, "*");
        assert_eq!(p.effective().count(), 3);

        assert_eq!(p.can_subscribe("news", ANON), Ok(()));
        assert_eq!(p.can_publish("news", ANON), Err(Denied::Forbidden));
        assert_eq!(
            p.can_subscribe("chat:1", ANON),
            Err(Denied::NotAuthenticated)
        );
        let bob = Asker {
            user: "bob",
            ..ANON
        };
        assert_eq!(p.can_subscribe("chat:1", bob), Ok(()));
        assert_eq!(p.can_publish("chat:1", bob), Ok(()));
        assert_eq!(p.can_subscribe("chat:vip", bob), Err(Denied::NeedsToken));
        let holder = Asker {
            has_channel_token: true,
            ..bob
        };
        assert_eq!(p.can_subscribe("chat:vip", holder), Ok(()));
        assert_eq!(p.can_publish("chat:vip", bob), Err(Denied::NotSubscribed));
        let member = Asker {
            subscribed: true,
            ..bob
        };
        assert_eq!(p.can_publish("chat:vip", member), Ok(()));
    }

    #[test]
    fn without_namespaces_everything_is_open() {
        let p = Permissions::default();
        assert_eq!(p.can_subscribe("x", ANON), Ok(()));
        assert_eq!(p.can_publish("x", ANON), Ok(()));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "a*b",
            "#user:*",
            "dx:#*",
            "a#b",
            "has space",
            "zw\u{200D}j*",
        ] {
            assert!(
                Permissions::new(vec![ns(bad, SubscribeRule::Anyone, PublishRule::Anyone)])
                    .is_err(),
                "{bad:?}"
            );
        }
        let toml_ns: Namespace = toml::from_str(
            "pattern = \"news\"\nsubscribe = \"authenticated\"\npublish = \"nobody\"",
        )
        .unwrap();
        assert_eq!(toml_ns.publish, PublishRule::Nobody);
        assert!(toml::from_str::<Namespace>("pattern = \"x\"\nsubscribe = \"everyone\"").is_err());
    }

    #[test]
    fn a_namespace_may_route_its_channels_upstream() {
        let toml_ns = |text: &str| toml::from_str::<Namespace>(text).unwrap();
        let p = Permissions::new(vec![
            ns("orders:vip", SubscribeRule::Anyone, PublishRule::Anyone),
            toml_ns(
                "pattern = \"orders:*\"\nupstream_stream = \"orders\"\nupstream_url = \"http://b/orders\"",
            ),
            toml_ns("pattern = \"*\"\nupstream_stream = \"rest\""),
        ])
        .unwrap();
        let orders = p.upstream("orders:1");
        assert_eq!(orders.stream, Some("orders"));
        assert_eq!(orders.url.map(|u| &**u), Some("http://b/orders"));
        // The first match wins: orders:vip has no upstream of its own.
        assert!(p.upstream("orders:vip").stream.is_none());
        assert!(p.upstream("orders:vip").url.is_none());
        assert_eq!(p.upstream("news").stream, Some("rest"));
        assert!(p.has_upstream_urls());
        assert!(!Permissions::default().has_upstream_urls());

        let long = "s".repeat(MAX_UPSTREAM_STREAM + 1);
        for bad in [
            "pattern = \"x\"\nupstream_stream = \"\"".to_string(),
            format!("pattern = \"x\"\nupstream_stream = \"{long}\""),
            "pattern = \"x\"\nupstream_url = \"ftp://b/x\"".to_string(),
            "pattern = \"x\"\nupstream_url = \"not a url\"".to_string(),
        ] {
            let err = Permissions::new(vec![toml_ns(&bad)]).unwrap_err();
            assert!(err.reason.contains("upstream_"), "{bad}: {err}");
        }
    }
}
