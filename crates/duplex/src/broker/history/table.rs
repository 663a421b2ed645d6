//! The namespace table a deployment stores in Redis for the Function
//! `duplex_publish` called without options (a backend's `FCALL`): hash
//! `duplex:history`, field = the deployment's `redis_prefix`, value = one
//! line per namespace in config order, `<size> <ttl> <meta_ttl> <pattern>`
//! (seconds; `0 0 0` = no history). The Function takes the field that is
//! the longest prefix of the channel's Redis name, strips it, and uses the
//! first line whose pattern matches (exact name, or a prefix ending in
//! `*`: the rule of `permissions.rs`). Pure.

use std::time::Duration;

use super::NamespaceHistory;

/// The Redis hash holding every deployment's table.
pub const TABLE_KEY: &str = "duplex:history";

/// Whole seconds for Redis `EXPIRE`, rounded up, at least 1, at most a
/// century (Redis refuses expiries that overflow its clock).
pub(crate) fn secs(d: Duration) -> u64 {
    const CENTURY: u64 = 100 * 365 * 24 * 3600;
    let whole = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    whole.clamp(1, CENTURY)
}

/// The table's text, in the namespaces' order.
pub fn encode(namespaces: &[NamespaceHistory]) -> String {
    let mut out = String::new();
    for (pattern, options) in namespaces {
        let line = match options {
            Some(o) if o.check().is_ok() => {
                format!(
                    "{} {} {} {pattern}\n",
                    o.size,
                    secs(o.ttl),
                    secs(o.meta_ttl)
                )
            }
            _ => format!("0 0 0 {pattern}\n"),
        };
        out.push_str(&line);
    }
    out
}

/// Whether any namespace has history (else the node need not load the Functions).
pub(crate) fn any_history(namespaces: &[NamespaceHistory]) -> bool {
    namespaces
        .iter()
        .any(|(_, o)| o.is_some_and(|o| o.check().is_ok()))
}

#[cfg(test)]
mod tests {
    use super::super::HistoryOptions;
    use super::*;

    #[test]
    fn lines_in_order_with_seconds_rounded_up() {
        let on = HistoryOptions {
            size: 10,
            ttl: Duration::from_millis(1500),
            meta_ttl: Duration::from_secs(3600),
        };
        let table = vec![
            ("chat:*".to_string(), Some(on)),
            ("news".to_string(), None),
            ("*".to_string(), Some(HistoryOptions { size: 0, ..on })),
        ];
        assert_eq!(encode(&table), "10 2 3600 chat:*\n0 0 0 news\n0 0 0 *\n");
        assert!(any_history(&table));
        assert!(!any_history(&table[1..]));
        assert_eq!(secs(Duration::ZERO), 1);
    }
}
