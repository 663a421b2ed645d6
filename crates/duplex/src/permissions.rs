//! Who may subscribe to and publish on which channels: namespaces matched by
//! channel name, each with a rule for subscribing and one for publishing from
//! a client. Backends (HTTP API, Redis PUBLISH) are never limited by these.
//!
//! Pure: the session asks, with what it knows about the client.

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
}

impl Namespace {
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
    namespaces: Vec<Namespace>,
    fallback: Namespace,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            pattern: "*".to_string(),
            subscribe: SubscribeRule::Anyone,
            publish: PublishRule::Anyone,
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
        let mut fallback = Namespace::default();
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
            if ns.pattern == "*" {
                fallback = ns;
            } else {
                specific.push(ns);
            }
        }
        Ok(Permissions {
            namespaces: specific,
            fallback,
        })
    }

    /// The namespace that governs `channel`.
    pub fn namespace(&self, channel: &str) -> &Namespace {
        self.namespaces
            .iter()
            .find(|ns| ns.matches(channel))
            .unwrap_or(&self.fallback)
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
        }
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
        for bad in ["", "a*b", "#user:*"] {
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
}
