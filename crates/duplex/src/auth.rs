//! Who a client is: connection tokens (JWT) minted by the application's
//! backend and checked here with a shared secret (HS256/384/512) or a public
//! key (RS256/384/512, ES256/384), so the backend never talks to the node to
//! let a client in.
//!
//! Public keys may also come from a JWKS URL (an identity provider's key
//! set), matched by the token's `kid` and re-fetched in the background so
//! keys can rotate; a failed fetch keeps the previous keys.
//!
//! The key is chosen by the token's `alg` family and each key only accepts
//! its own family: an HS256 token "signed" with the RSA public key as an HMAC
//! secret (the classic confusion attack) meets no HMAC key, and `alg: none`
//! is not an algorithm at all.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use parking_lot::RwLock;

use duplex_protocol::time::NumericDate;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Config;

/// What a verified connection token says about the client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// User id; empty means anonymous.
    #[serde(default)]
    pub sub: String,
    /// Expiry, Unix seconds (a fraction allowed, RFC 7519); absent means the
    /// token never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<NumericDate>,
    /// Not valid before, Unix seconds (a fraction allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<NumericDate>,
    /// Issued at, Unix seconds (a fraction allowed); not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<NumericDate>,
    /// Application data attached to the connection, passed on as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// Channels the server subscribes the client to at connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Set only in subscription tokens: the one private channel they open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// Why a token was not accepted; the two cases tell the client different things.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Well signed but past `exp`: get a fresh token and try again.
    #[error("token expired")]
    Expired,
    /// Never acceptable: bad signature, algorithm, audience, shape...
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Why the token settings cannot be used; shown to the operator at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The public key file could not be read.
    #[error("cannot read token_public_key {path}: {source}")]
    Read {
        /// File that failed.
        path: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not an RSA or EC public key in PEM.
    #[error("token_public_key {0} is not an RSA or EC (P-256/P-384) public key in PEM format")]
    NotAKey(String),
    /// Minting needs the shared secret.
    #[error("no token_secret configured (--token-secret or DUPLEX_TOKEN_SECRET)")]
    NoSecret,
    /// The token library refused to sign.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// The JWKS could not be fetched or read.
    #[error("JWKS {url}: {reason}")]
    Jwks {
        /// Where it was fetched from.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// One key and the algorithms it may verify.
struct KeyEntry {
    key: DecodingKey,
    validation: Validation,
}

/// Checks connection tokens against the configured keys.
pub struct Verifier {
    keys: Vec<KeyEntry>,
    jwks: Option<Jwks>,
}

/// Keys from a JWKS URL, replaced as a whole on each successful fetch.
struct Jwks {
    url: String,
    refresh: Duration,
    audience: String,
    issuer: String,
    /// (`kid`, key) pairs; empty until the first successful fetch.
    keys: RwLock<Vec<(Option<String>, KeyEntry)>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("jwks", &self.jwks.as_ref().map(|j| &j.url))
            .finish()
    }
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];

impl Verifier {
    /// The verifier the config asks for; `None` when no token key is set
    /// (every client is anonymous and the classic demo works as is).
    pub fn from_config(config: &Config) -> Result<Option<Verifier>, AuthError> {
        let mut keys = Vec::new();
        let validation = |algorithms: &[Algorithm]| {
            make_validation(algorithms, &config.token_audience, &config.token_issuer)
        };
        if !config.token_secret.is_empty() {
            keys.push(KeyEntry {
                key: DecodingKey::from_secret(config.token_secret.expose().as_bytes()),
                validation: validation(HMAC),
            });
        }
        if !config.token_public_key.is_empty() {
            let path = &config.token_public_key;
            let pem = std::fs::read(Path::new(path)).map_err(|source| AuthError::Read {
                path: path.clone(),
                source,
            })?;
            let entry = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                KeyEntry {
                    key,
                    validation: validation(RSA),
                }
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                KeyEntry {
                    key,
                    validation: validation(EC),
                }
            } else {
                return Err(AuthError::NotAKey(path.clone()));
            };
            keys.push(entry);
        }
        let jwks = (!config.token_jwks_url.is_empty()).then(|| Jwks {
            url: config.token_jwks_url.clone(),
            refresh: config.token_jwks_refresh,
            audience: config.token_audience.clone(),
            issuer: config.token_issuer.clone(),
            keys: RwLock::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        });
        Ok((!keys.is_empty() || jwks.is_some()).then_some(Verifier { keys, jwks }))
    }

    /// Fetches the JWKS now; returns how many usable keys it holds.
    pub async fn refresh_jwks(&self) -> Result<usize, AuthError> {
        let Some(jwks) = &self.jwks else {
            return Ok(0);
        };
        let failed = |reason: String| AuthError::Jwks {
            url: jwks.url.clone(),
            reason,
        };
        let set: JwkSet = jwks
            .http
            .get(&jwks.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| failed(e.to_string()))?
            .json()
            .await
            .map_err(|e| failed(format!("not a JWKS: {e}")))?;
        let mut entries = Vec::new();
        for jwk in &set.keys {
            // Only public-key families: an HMAC key published in a JWKS would
            // let anyone who reads it sign tokens.
            let algorithms = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => RSA,
                AlgorithmParameters::EllipticCurve(_) => EC,
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let validation = make_validation(algorithms, &jwks.audience, &jwks.issuer);
            entries.push((jwk.common.key_id.clone(), KeyEntry { key, validation }));
        }
        if entries.is_empty() {
            return Err(failed("no RSA or EC keys in it".to_string()));
        }
        let count = entries.len();
        *jwks.keys.write() = entries;
        Ok(count)
    }

    /// Re-fetches the JWKS every `token_jwks_refresh` until the verifier is
    /// dropped; failures keep the previous keys and retry sooner.
    pub async fn keep_jwks_fresh(verifier: Weak<Verifier>) {
        loop {
            let Some(v) = verifier.upgrade() else { return };
            let Some(jwks) = &v.jwks else { return };
            let wait = match v.refresh_jwks().await {
                Ok(count) => {
                    tracing::debug!(url = jwks.url, keys = count, "JWKS refreshed");
                    jwks.refresh
                }
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys");
                    jwks.refresh.min(Duration::from_secs(10))
                }
            };
            drop(v);
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether keys from the JWKS are loaded (true when there is no JWKS).
    pub fn jwks_ready(&self) -> bool {
        self.jwks.as_ref().is_none_or(|j| !j.keys.read().is_empty())
    }

    /// Verifies signature and time and audience/issuer claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("malformed: {e}")))?;
        let accepts = |k: &KeyEntry| k.validation.algorithms.contains(&header.alg);
        if let Some(entry) = self.keys.iter().find(|k| accepts(k)) {
            return check(token, entry);
        }
        if let Some(jwks) = &self.jwks {
            let keys = jwks.keys.read();
            let mut candidates = keys
                .iter()
                .filter(|(kid, k)| accepts(k) && (header.kid.is_none() || *kid == header.kid))
                .peekable();
            if candidates.peek().is_none() {
                return Err(TokenError::Invalid(format!(
                    "no key for kid {:?} and algorithm {:?}",
                    header.kid, header.alg
                )));
            }
            let mut last = TokenError::Invalid("no key".to_string());
            for (_, entry) in candidates {
                match check(token, entry) {
                    Ok(claims) => return Ok(claims),
                    Err(TokenError::Expired) => return Err(TokenError::Expired),
                    Err(e) => last = e,
                }
            }
            return Err(last);
        }
        Err(TokenError::Invalid(format!(
            "algorithm {:?} is not accepted here",
            header.alg
        )))
    }
}

/// Verifies with one key (signature, algorithm, aud/iss), then the times;
/// maps the library's errors to what the client is told.
fn check(token: &str, entry: &KeyEntry) -> Result<Claims, TokenError> {
    let claims = jsonwebtoken::decode::<Claims>(token, &entry.key, &entry.validation)
        .map_err(|e| TokenError::Invalid(e.to_string()))?
        .claims;
    let now = unix_now_precise();
    if claims.exp.is_some_and(|exp| expired(exp, now)) {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| !nbf.has_come(now)) {
        return Err(TokenError::Invalid("not valid yet (nbf)".to_string()));
    }
    Ok(claims)
}

/// The one notion of "expired", at connect and while connected (the
/// heartbeat sweep): `now >= exp`, both in Unix seconds with fractions,
/// no leeway (RFC 7519 4.1.4).
pub fn expired(exp: NumericDate, now: f64) -> bool {
    exp.has_come(now)
}

/// Seconds since the Unix epoch with their fraction: the clock token times
/// (`exp`, `nbf`) are compared with.
pub fn unix_now_precise() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The checks every key applies: its algorithms, aud/iss when set. Times
/// are checked by [`check`] instead: the library reads a fractional `exp`
/// rounded to whole seconds and compares it with whole seconds, `exp < now`,
/// where the heartbeat sweep closes at `now >= exp`.
fn make_validation(algorithms: &[Algorithm], audience: &str, issuer: &str) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms.to_vec();
    v.leeway = 0;
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims = HashSet::new();
    if audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&[audience]);
        v.required_spec_claims.insert("aud".to_string());
    }
    if !issuer.is_empty() {
        v.set_issuer(&[issuer]);
        v.required_spec_claims.insert("iss".to_string());
    }
    v
}

/// Mints an HS256 token from the shared secret: for `duplex token`, tests,
/// and backends without a JWT library.
pub fn mint(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::NoSecret);
    }
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Seconds since the Unix epoch, the unit of `exp`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, Settings};

    fn verifier(secret: &str) -> Verifier {
        let config = Settings {
            token_secret: Some(Secret::from(secret)),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        Verifier::from_config(&config).unwrap().unwrap()
    }

    #[test]
    fn minted_tokens_verify_and_carry_their_claims() {
        let claims = Claims {
            sub: "42".into(),
            exp: Some(NumericDate::from_secs(unix_now() + 60)),
            info: Some(RawValue::from_string(r#"{"name":"Ada"}"#.into()).unwrap()),
            channels: vec!["news".into()],
            ..Default::default()
        };
        let token = mint("s3cret", &claims).unwrap();
        let got = verifier("s3cret").verify(&token).unwrap();
        assert_eq!(got.sub, "42");
        assert_eq!(got.channels, vec!["news".to_string()]);
        assert_eq!(got.info.unwrap().get(), r#"{"name":"Ada"}"#);
    }

    #[test]
    fn expired_and_forged_tokens_are_told_apart() {
        let expired = Claims {
            sub: "1".into(),
            exp: Some(NumericDate::from_secs(unix_now() - 1)),
            ..Default::default()
        };
        let v = verifier("s3cret");
        assert_eq!(
            v.verify(&mint("s3cret", &expired).unwrap()).unwrap_err(),
            TokenError::Expired
        );
        let forged = mint("other", &Claims::default()).unwrap();
        assert!(matches!(v.verify(&forged), Err(TokenError::Invalid(_))));
        assert!(matches!(v.verify("not.a.jwt"), Err(TokenError::Invalid(_))));
        assert!(matches!(v.verify(""), Err(TokenError::Invalid(_))));
    }

    /// RFC 7519 NumericDates may have a fraction: read as such, compared
    /// with the clock's fraction, with the heartbeat's notion of expired.
    #[test]
    fn fractional_times_are_numeric_dates() {
        let v = verifier("s3cret");
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        let now = unix_now_precise();
        let valid = sign(serde_json::json!({
            "sub": "1", "exp": now + 60.5, "nbf": now - 0.5, "iat": now - 0.25
        }));
        let claims = v.verify(&valid).unwrap();
        let exp = claims.exp.unwrap();
        assert_eq!(exp.as_f64(), now + 60.5);
        assert!(!expired(exp, now + 60.4) && expired(exp, now + 60.5));
        let lapsed = sign(serde_json::json!({"sub": "1", "exp": now - 0.5}));
        assert_eq!(v.verify(&lapsed).unwrap_err(), TokenError::Expired);
        let early = sign(serde_json::json!({"sub": "1", "nbf": now + 30.5}));
        assert!(matches!(v.verify(&early), Err(TokenError::Invalid(why)) if why.contains("nbf")));
        // Odd types stay refused, signed or not.
        for odd in [
            serde_json::json!({"sub": "1", "exp": "soon"}),
            serde_json::json!({"sub": "1", "exp": -5}),
            serde_json::json!({"sub": "1", "nbf": true}),
            serde_json::json!({"sub": "1", "iat": [1]}),
        ] {
            assert!(
                matches!(v.verify(&sign(odd.clone())), Err(TokenError::Invalid(_))),
                "{odd}"
            );
        }
    }

    #[test]
    fn debug_output_holds_no_key() {
        let v = verifier("very-secret-value");
        assert!(!format!("{v:?}").contains("very-secret-value"));
    }
}
