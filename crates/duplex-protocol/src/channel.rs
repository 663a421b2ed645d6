//! Channel names: one rule set for WebSocket clients, the HTTP API and Redis.
//!
//! Names map 1:1 to Redis channels (after an optional prefix), so the rules
//! only forbid what would make logs, URLs or terminals lie: control
//! characters, whitespace, and absurd lengths. Names starting with `#` are
//! reserved for server-addressed channels (`#user:42`, `#conn:...`).

use std::fmt;
use std::sync::Arc;

/// Default longest channel name in bytes.
pub const DEFAULT_MAX_CHANNEL_LENGTH: usize = 255;

/// Why a channel name was refused; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The empty string names nothing.
    #[error("channel name is empty")]
    Empty,
    /// Longer than the configured maximum.
    #[error("channel name is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
        /// Configured maximum in bytes.
        max: usize,
    },
    /// Holds a control character or whitespace.
    #[error("channel name contains a forbidden character at byte {0} (control characters and whitespace are not allowed)")]
    ForbiddenChar(usize),
}

/// A validated channel name, cheap to clone and share between the hub and brokers.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` against the rules with the given maximum length.
    pub fn parse(name: &str, max_len: usize) -> Result<Self, ChannelError> {
        validate(name, max_len)?;
        Ok(ChannelName(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for names the server reserves for addressing (`#user:...`).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('#')
    }
}

/// Checks `name` without allocating.
pub fn validate(name: &str, max_len: usize) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > max_len {
        return Err(ChannelError::TooLong {
            len: name.len(),
            max: max_len,
        });
    }
    if let Some((at, _)) = name
        .char_indices()
        .find(|(_, c)| c.is_control() || c.is_whitespace())
    {
        return Err(ChannelError::ForbiddenChar(at));
    }
    Ok(())
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "channel",
            "chat:room-1",
            "news.sport",
            "#user:42",
            "ünïcode",
            "a/b*c",
        ] {
            assert!(ChannelName::parse(name, 255).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_empty_long_and_control() {
        assert_eq!(ChannelName::parse("", 10), Err(ChannelError::Empty));
        assert_eq!(
            ChannelName::parse("abcdefghijk", 10),
            Err(ChannelError::TooLong { len: 11, max: 10 })
        );
        assert!(ChannelName::parse("abcdefghij", 10).is_ok());
        assert_eq!(
            ChannelName::parse("a\u{0}b", 10),
            Err(ChannelError::ForbiddenChar(1))
        );
        assert_eq!(
            ChannelName::parse("a b", 10),
            Err(ChannelError::ForbiddenChar(1))
        );
        assert!(ChannelName::parse("a\nb", 10).is_err());
        assert!(ChannelName::parse("a\u{7f}", 10).is_err());
        assert!(ChannelName::parse(&"x".repeat(10 * 1024), 255).is_err());
    }

    #[test]
    fn reserved_prefix() {
        assert!(ChannelName::parse("#user:1", 255).unwrap().is_reserved());
        assert!(!ChannelName::parse("user:1", 255).unwrap().is_reserved());
    }
}
