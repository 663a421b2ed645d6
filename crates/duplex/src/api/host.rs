//! Which names the node answers to: the `Host` check against DNS rebinding.
//!
//! A page on `http://evil.example` can make its own name resolve to
//! 127.0.0.1 once the page has loaded; the browser then sends the page's
//! requests (same-origin to it, so no CORS and no Origin check apply) to the
//! node on this machine, with `Host: evil.example`. The only thing in such a
//! request the attacker cannot choose is that name, so the node refuses
//! names it does not serve.
//!
//! Default: a node listening on loopback answers only to loopback names
//! (`localhost`, `*.localhost`, 127.0.0.0/8, `[::1]`; any port). A node
//! listening on another address answers to any name: it is reachable
//! directly there, and such a node requires token auth and an API key
//! (`Config::validate`), so a rebinding page gains nothing a direct request
//! would not. `allowed_hosts` lists the names instead, for both.

/// The `Host` policy from `allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPolicy {
    /// Any name (`*`, or the default on a non-loopback address).
    Any,
    /// Loopback names and addresses only (the default on loopback).
    Loopback,
    /// These names or addresses (lowercase, without port or brackets).
    List(Vec<String>),
}

impl HostPolicy {
    /// Builds the policy from the setting (comma-separated; empty = default).
    pub(crate) fn from_setting(allowed: &str, listen_is_loopback: bool) -> Self {
        let entries: Vec<String> = allowed
            .split(',')
            .map(|h| host_name(h.trim()).to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if entries.iter().any(|h| h == "*") {
            HostPolicy::Any
        } else if !entries.is_empty() {
            HostPolicy::List(entries)
        } else if listen_is_loopback {
            HostPolicy::Loopback
        } else {
            HostPolicy::Any
        }
    }

    /// Whether a request naming `host` (`host[:port]`, from the `Host`
    /// header or an absolute URI; None when absent) is served.
    pub(crate) fn allows(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostPolicy::Any, _) => true,
            (_, None) => false,
            (HostPolicy::Loopback, Some(host)) => is_loopback_host(host),
            (HostPolicy::List(list), Some(host)) => {
                let name = host_name(host.trim());
                list.iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(name))
            }
        }
    }
}

/// The name or address of `host[:port]` (`[v6]:port` gives `v6`), with one
/// trailing dot of a fully qualified name dropped.
fn host_name(host_port: &str) -> &str {
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None if host_port.matches(':').count() > 1 => host_port, // bare IPv6 in a setting
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// `host[:port]` naming this machine: `localhost`, `*.localhost` (RFC 6761:
/// always loopback), or a loopback address.
pub(crate) fn is_loopback_host(host_port: &str) -> bool {
    let host = host_name(host_port).to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_nodes_answer_to_loopback_names_only() {
        let policy = HostPolicy::from_setting("", true);
        assert_eq!(policy, HostPolicy::Loopback);
        for host in [
            "localhost",
            "localhost:1234",
            "LocalHost:1234",
            "localhost.:1234",
            "app.localhost:5173",
            "127.0.0.1:1234",
            "127.1.2.3",
            "[::1]:1234",
            "[::1]",
        ] {
            assert!(policy.allows(Some(host)), "{host}");
        }
        for host in [
            "evil.example:1234",
            "localhost.evil.example",
            "evil-localhost:1234",
            "10.0.0.1:1234",
            "[::2]:1234",
            "",
        ] {
            assert!(!policy.allows(Some(host)), "{host}");
        }
        assert!(!policy.allows(None), "no Host at all");
    }

    #[test]
    fn public_nodes_answer_to_any_name_unless_listed() {
        assert_eq!(HostPolicy::from_setting("", false), HostPolicy::Any);
        assert!(HostPolicy::Any.allows(Some("anything:1")));
        assert!(HostPolicy::Any.allows(None));
        let listed = HostPolicy::from_setting(" Chat.Example, 10.0.0.5:1234, [::1] ", false);
        assert_eq!(
            listed,
            HostPolicy::List(vec!["chat.example".into(), "10.0.0.5".into(), "::1".into()])
        );
        for host in ["chat.example", "CHAT.example:443", "10.0.0.5:80", "[::1]:9"] {
            assert!(listed.allows(Some(host)), "{host}");
        }
        for host in ["localhost:1234", "evil.example", "chat.example.evil"] {
            assert!(!listed.allows(Some(host)), "{host}");
        }
        assert!(!listed.allows(None));
        // A list applies on loopback too; `*` is any.
        assert!(!HostPolicy::from_setting("chat.example", true).allows(Some("localhost")));
        assert_eq!(HostPolicy::from_setting("a, *", true), HostPolicy::Any);
    }
}
