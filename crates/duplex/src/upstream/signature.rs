//! The `Duplex-Signature` header on every POST to an HTTP upstream, so the
//! backend can tell a request came from a node that holds
//! `upstream_secret` (and is recent), as Stripe signs its webhooks:
//!
//! ```text
//! Duplex-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! With several secrets (comma-separated, to rotate) there is one `v1=` per
//! secret, in their order; a backend accepts the request when any of them
//! matches a secret it knows. Pure: the caller gives the time.

use std::fmt::Write;

use ring::hmac;

use crate::config::Secret;

/// The header's name (HTTP header names are case-insensitive).
pub(crate) const HEADER: &str = "duplex-signature";

/// Signs request bodies with the node's upstream secrets.
pub(crate) struct Signer {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

impl Signer {
    /// A signer for `upstream_secret`; `None` when it is unset (requests go
    /// unsigned).
    pub(crate) fn new(secret: &Secret) -> Option<Signer> {
        let keys: Vec<hmac::Key> = secret
            .parts()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
            .collect();
        (!keys.is_empty()).then_some(Signer { keys })
    }

    /// The header value for `body` sent at `unix_secs`.
    pub(crate) fn header(&self, unix_secs: u64, body: &[u8]) -> String {
        let t = unix_secs.to_string();
        let mut value = format!("t={t}");
        for key in &self.keys {
            let mut context = hmac::Context::with_key(key);
            context.update(t.as_bytes());
            context.update(b".");
            context.update(body);
            value.push_str(",v1=");
            for byte in context.sign().as_ref() {
                let _ = write!(value, "{byte:02x}");
            }
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_timestamp_and_body_with_each_secret() {
        // Expected values from Python's hmac module, e.g.
        // hmac.new(b"s3cret", b'1767000000.{"kind":"rpc"}', hashlib.sha256).hexdigest()
        let body = br#"{"kind":"rpc"}"#;
        let one = Signer::new(&Secret::from("s3cret")).expect("a secret");
        assert_eq!(
            one.header(1_767_000_000, body),
            "t=1767000000,v1=2556eacf957ff7d8d9c4c13578ec766919a678925d63fef4fef75d7e4d4d8761"
        );
        let two = Signer::new(&Secret::from("s3cret, next")).expect("secrets");
        assert_eq!(
            two.header(1_767_000_000, body),
            "t=1767000000,v1=2556eacf957ff7d8d9c4c13578ec766919a678925d63fef4fef75d7e4d4d8761,v1=7dc767104532e8461b081e00e498d31ef76a3a9c88943561438d4a40a895546e"
        );
        assert_ne!(
            one.header(1_767_000_001, body),
            one.header(1_767_000_000, body)
        );
    }

    #[test]
    fn no_secret_no_signer() {
        assert!(Signer::new(&Secret::default()).is_none());
        assert!(Signer::new(&Secret::from(" , ")).is_none());
    }
}
