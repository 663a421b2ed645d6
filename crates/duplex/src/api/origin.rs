//! Which web pages may open a WebSocket here. Browsers send cookies and
//! credentials with cross-site WebSocket upgrades and never apply CORS to
//! them, so without this check any page a user visits could talk to the
//! node as that user (cross-site WebSocket hijacking).
//!
//! Requests without an `Origin` header come from non-browser clients, which
//! no page can drive, and are let through.

use super::host::is_loopback_host;

/// The Origin policy from `allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginPolicy {
    /// Any origin (`*`).
    Any,
    /// These exact origins (`scheme://host[:port]`), compared case-insensitively.
    List(Vec<String>),
    /// Default: the page must come from the host it connects to, or, when the
    /// node listens on loopback (development), from any loopback host.
    SameHost {
        /// Whether loopback origins are accepted too.
        loopback_dev: bool,
    },
}

impl OriginPolicy {
    /// Builds the policy from the setting (comma-separated; empty = default).
    pub(crate) fn from_setting(allowed: &str, listen_is_loopback: bool) -> Self {
        let entries: Vec<String> = allowed
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        if entries.iter().any(|o| o == "*") {
            OriginPolicy::Any
        } else if entries.is_empty() {
            OriginPolicy::SameHost {
                loopback_dev: listen_is_loopback,
            }
        } else {
            OriginPolicy::List(entries)
        }
    }

    /// Checks one upgrade's `Origin` against the request's `Host`.
    pub(crate) fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), String> {
        let Some(origin) = origin else {
            return Ok(());
        };
        let origin = origin.trim().to_ascii_lowercase();
        let allowed = match self {
            OriginPolicy::Any => true,
            OriginPolicy::List(list) => list.contains(&origin),
            OriginPolicy::SameHost { loopback_dev } => {
                let origin_host = origin.split_once("://").map(|(_, rest)| rest);
                let same = origin_host
                    .is_some_and(|o| host.is_some_and(|h| o.eq_ignore_ascii_case(h.trim())));
                same || (*loopback_dev && origin_host.is_some_and(is_loopback_host))
            }
        };
        if allowed {
            Ok(())
        } else {
            let shown: String = origin.chars().take(100).collect();
            Err(format!(
                "origin {shown:?} is not allowed to open WebSockets here; add it to allowed_origins"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_by_default_and_loopback_in_development() {
        let dev = OriginPolicy::from_setting("", true);
        assert!(dev.check(None, Some("x:1")).is_ok(), "non-browser client");
        assert!(dev
            .check(Some("http://chat.example:8000"), Some("chat.example:8000"))
            .is_ok());
        assert!(dev
            .check(Some("http://localhost:5173"), Some("127.0.0.1:1234"))
            .is_ok());
        assert!(dev
            .check(Some("http://[::1]:3000"), Some("127.0.0.1:1234"))
            .is_ok());
        assert!(dev
            .check(Some("https://evil.example"), Some("127.0.0.1:1234"))
            .is_err());
        assert!(dev
            .check(
                Some("http://localhost.evil.example"),
                Some("127.0.0.1:1234")
            )
            .is_err());
        assert!(dev.check(Some("null"), Some("127.0.0.1:1234")).is_err());
        let public = OriginPolicy::from_setting("", false);
        assert!(public
            .check(Some("http://localhost:5173"), Some("chat.example"))
            .is_err());
        assert!(public
            .check(Some("https://chat.example"), Some("chat.example"))
            .is_ok());
    }

    #[test]
    fn explicit_lists_and_any() {
        let list = OriginPolicy::from_setting("https://app.example, http://localhost:3000/", true);
        assert!(list
            .check(Some("https://APP.example"), Some("ws.example"))
            .is_ok());
        assert!(list
            .check(Some("http://localhost:3000"), Some("ws.example"))
            .is_ok());
        assert!(list
            .check(Some("http://localhost:3001"), Some("localhost:3001"))
            .is_err());
        let any = OriginPolicy::from_setting("*", false);
        assert!(any.check(Some("https://anything"), None).is_ok());
    }
}
