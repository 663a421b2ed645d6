//! Reading a settings file, and what the rest of the node asks of a
//! resolved [`Config`] beyond its fields.

use std::path::Path;

use super::{Config, ConfigError, Settings};

impl Settings {
    /// Reads a TOML file of the same keys (snake_case, durations like "25s").
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Applies defaults and validates.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let config = self.with_defaults();
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// The Redis URL, when a Redis broker is configured.
    pub fn redis_url(&self) -> Option<&str> {
        Some(self.redis.as_str()).filter(|u| !u.is_empty())
    }

    /// Whether clients must present connection tokens.
    pub fn token_auth(&self) -> bool {
        !self.token_secret.is_empty()
            || !self.token_public_key.is_empty()
            || !self.token_jwks_url.is_empty()
    }

    /// Whether the node serves TLS (`wss://`, `https://`).
    pub fn tls(&self) -> bool {
        !self.tls_cert.is_empty() || !self.tls_key.is_empty()
    }

    /// The accepted API keys; none means the API is open.
    pub fn api_keys(&self) -> impl Iterator<Item = &str> {
        self.api_key.parts()
    }
}
