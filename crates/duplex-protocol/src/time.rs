//! Token times as JWTs carry them: RFC 7519 `NumericDate`, seconds since the
//! Unix epoch where a fraction is allowed (`"exp": 1795793072.5`). One type
//! for the node's token checks and for the `connect`/`refresh` replies that
//! report a token's expiry, so both read and write the same value.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Seconds since the Unix epoch, finite and not negative, maybe fractional.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct NumericDate(f64);

/// Largest whole number of seconds written as a JSON integer (2^53, exact in f64).
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

impl NumericDate {
    /// A whole number of seconds (what tokens minted by Duplex carry).
    pub fn from_secs(secs: u64) -> Self {
        // Exact up to 2^53 s, some 285 million years from now.
        NumericDate(secs as f64)
    }

    /// `secs` when it is a usable time: finite and not negative.
    pub fn from_f64(secs: f64) -> Option<Self> {
        (secs.is_finite() && secs >= 0.0).then_some(NumericDate(secs))
    }

    /// The time in seconds, with its fraction.
    pub fn as_f64(self) -> f64 {
        self.0
    }

    /// Whether this moment has come at `now` (Unix seconds): `now >= self`.
    /// A token is expired once its `exp` has come (RFC 7519 4.1.4) and
    /// valid once its `nbf` has (4.1.5).
    pub fn has_come(self, now: f64) -> bool {
        now >= self.0
    }
}

impl Serialize for NumericDate {
    /// Whole seconds as a JSON integer (`1795793072`, as before fractions were
    /// accepted), a fraction as a JSON float.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.fract() == 0.0 && self.0 <= MAX_EXACT {
            // Whole, not negative, at most 2^53: exact as u64.
            s.serialize_u64(self.0 as u64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for NumericDate {
    /// Any JSON number that is a usable time; strings, booleans, negative
    /// numbers are refused.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = f64::deserialize(d)?;
        NumericDate::from_f64(secs).ok_or_else(|| {
            serde::de::Error::custom("a time must be a number of seconds, not negative")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_fractional_seconds_read_and_write_back() {
        for text in [
            "1795793072",
            "1795793072.5",
            "0",
            "0.25",
            "9007199254740992",
        ] {
            let date: NumericDate = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&date).unwrap(), text);
        }
        let date: NumericDate = serde_json::from_str("1.5e9").unwrap();
        assert_eq!(serde_json::to_string(&date).unwrap(), "1500000000");
        assert_eq!(
            serde_json::to_string(&NumericDate::from_secs(42)).unwrap(),
            "42"
        );
    }

    #[test]
    fn odd_values_are_refused() {
        for text in [
            "-1",
            "-0.5",
            "\"1795793072\"",
            "true",
            "null",
            "[1]",
            "1e400",
        ] {
            assert!(serde_json::from_str::<NumericDate>(text).is_err(), "{text}");
        }
        assert!(NumericDate::from_f64(f64::NAN).is_none());
        assert!(NumericDate::from_f64(f64::INFINITY).is_none());
    }

    #[test]
    fn a_moment_has_come_at_and_after_it() {
        let exp = NumericDate::from_f64(100.5).unwrap();
        assert!(!exp.has_come(100.4));
        assert!(exp.has_come(100.5));
        assert!(exp.has_come(101.0));
    }
}
