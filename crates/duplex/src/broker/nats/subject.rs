//! Channel names as NATS subjects: the prefix, then the name with the four
//! bytes that mean something in a subject escaped, everything else verbatim.
//!
//! In a NATS subject `.` separates tokens (an empty token is invalid), a
//! `*` or `>` token is a wildcard, and whitespace ends the subject. Channel
//! names never hold whitespace or control characters
//! (`duplex_protocol::channel`), so only these are escaped, as `%` and two
//! upper-case hex digits:
//!
//! | in the name | in the subject |
//! |---|---|
//! | `%` | `%25` |
//! | `.` | `%2E` |
//! | `*` | `%2A` |
//! | `>` | `%3E` |
//!
//! A name without them is its own subject (`chat` is `chat`, `#user:42` is
//! `#user:42`), so `nats pub chat hi` reaches the clients of `chat`; and the
//! mapping is one to one (`%` itself is escaped), so two channels never
//! share a subject. Pure.

/// The bytes escaped in a subject, with their escapes.
const ESCAPES: [(char, &str); 4] = [('%', "%25"), ('.', "%2E"), ('*', "%2A"), ('>', "%3E")];

/// The subject of `channel` under `prefix`.
pub(crate) fn subject(prefix: &str, channel: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + channel.len());
    out.push_str(prefix);
    for c in channel.chars() {
        match ESCAPES.iter().find(|(special, _)| *special == c) {
            Some((_, escape)) => out.push_str(escape),
            None => out.push(c),
        }
    }
    out
}

/// Why a prefix cannot start this deployment's subjects, or None when it can:
/// tokens must not be empty (`a..b`, a leading `.`), nor wildcards, and `#`
/// is kept out for the reason `redis_prefix` keeps it out (reserved
/// channels start with the first `#`, docs/AUTH.md). A trailing `.` is
/// fine: `duplex.` puts every channel one level down (`duplex.chat`).
pub fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(
            "may not contain whitespace or control characters (a NATS subject ends there)",
        );
    }
    if prefix.contains(['*', '>']) {
        return Some("may not contain '*' or '>' (NATS wildcards)");
    }
    if prefix.starts_with('.') || prefix.contains("..") {
        return Some("may not start with '.' nor hold '..' (an empty NATS subject token)");
    }
    if prefix.contains('#') {
        return Some("may not contain '#': the node's reserved channels (#control, #node:<id>...) must stay apart from every other deployment's");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The way back, for the tests: the channel of a subject under `prefix`.
    fn channel(prefix: &str, subject: &str) -> Option<String> {
        let mut rest = subject.strip_prefix(prefix)?;
        let mut out = String::new();
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let code = rest.get(at..at + 3)?;
            let (special, _) = ESCAPES.iter().find(|(_, e)| *e == code)?;
            out.push(*special);
            rest = &rest[at + 3..];
        }
        out.push_str(rest);
        Some(out)
    }

    #[test]
    fn plain_names_are_their_own_subjects() {
        for name in [
            "chat",
            "#control",
            "#node:ab12",
            "#user:42",
            "news:eu",
            "café",
        ] {
            assert_eq!(subject("", name), name);
        }
        assert_eq!(subject("duplex.", "chat"), "duplex.chat");
    }

    #[test]
    fn special_bytes_are_escaped_and_read_back() {
        let cases = [
            ("a.b", "a%2Eb"),
            ("*", "%2A"),
            (">", "%3E"),
            ("100%", "100%25"),
            ("%2E", "%252E"),
            ("..", "%2E%2E"),
        ];
        for (name, escaped) in cases {
            assert_eq!(subject("p.", name), format!("p.{escaped}"));
            assert_eq!(channel("p.", &subject("p.", name)).as_deref(), Some(name));
        }
    }

    #[test]
    fn distinct_names_get_distinct_subjects() {
        let names = ["a.b", "a%2Eb", "a%b", "a*", "a%2A", "a>", "a"];
        let subjects: std::collections::HashSet<String> =
            names.iter().map(|n| subject("", n)).collect();
        assert_eq!(subjects.len(), names.len());
        for s in &subjects {
            assert!(!s.contains(['.', '*', '>', ' ']), "{s}");
        }
    }

    #[test]
    fn prefixes_that_break_subjects_are_refused() {
        for ok in ["", "duplex.", "app_", "a.b."] {
            assert_eq!(prefix_problem(ok), None, "{ok}");
        }
        for bad in ["a b", "x.*.", "x>", ".x", "a..b", "dx#"] {
            assert!(prefix_problem(bad).is_some(), "{bad}");
        }
    }
}
