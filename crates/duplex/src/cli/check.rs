//! `duplex serve --check-config`: validates the settings, loads the token
//! keys, and prints the effective rules, so an operator sees what a node
//! would enforce before it runs. Secrets are never printed.

use duplex::auth::Verifier;
use duplex::config::Config;
use duplex::permissions::Permissions;

/// Prints the effective configuration; errors if any part cannot be used.
pub(crate) fn check(config: &Config) -> anyhow::Result<()> {
    let verifier = Verifier::from_config(config)?;
    let permissions = Permissions::new(config.namespaces.clone())?;
    let mut out = String::new();
    macro_rules! say {
        ($($arg:tt)*) => {{
            out.push_str(&format!($($arg)*));
            out.push('\n');
        }};
    }
    say!("config OK");
    let scope = if config.listen.ip().is_loopback() {
        "loopback only"
    } else {
        "public"
    };
    say!("listen:     {} ({scope})", config.listen);
    match config.redis_url() {
        Some(url) => say!("broker:     redis {}", redact_url(url)),
        None => say!("broker:     memory (single node)"),
    }
    let mut auth = Vec::new();
    if !config.token_secret.is_empty() {
        auth.push("HS256/384/512 tokens (secret set)".to_string());
    }
    if !config.token_public_key.is_empty() {
        auth.push(format!(
            "RS/ES tokens (public key {})",
            config.token_public_key
        ));
    }
    match verifier {
        Some(_) => say!(
            "tokens:     {}; anonymous clients {}",
            auth.join(", "),
            if config.allow_anonymous {
                "allowed"
            } else {
                "refused"
            }
        ),
        None => say!("tokens:     off (every client is anonymous)"),
    }
    if !config.token_audience.is_empty() || !config.token_issuer.is_empty() {
        say!(
            "claims:     aud = {:?}, iss = {:?}",
            config.token_audience,
            config.token_issuer
        );
    }
    let keys = config.api_keys().count();
    if keys == 0 {
        say!("http api:   open (no API key)");
    } else {
        say!("http api:   {keys} API key(s)");
    }
    if config.allowed_origins.is_empty() {
        say!("origins:    same host (and loopback pages when listening on loopback)");
    } else {
        say!("origins:    {}", config.allowed_origins);
    }
    say!("namespaces (first match wins; backends may always publish):");
    say!("  {:<24} {:<14} publish", "pattern", "subscribe");
    for ns in permissions.effective() {
        say!(
            "  {:<24} {:<14} {}",
            ns.pattern,
            label(&ns.subscribe),
            label(&ns.publish)
        );
    }
    say!("  {:<24} {:<14} nobody", "#user:<id>", "that user");
    let url = |u: &str| {
        if u.is_empty() {
            "none".to_string()
        } else {
            redact_url(u)
        }
    };
    say!(
        "upstream:   stream {}{}, url {}",
        config.redis_prefix,
        config.upstream_stream,
        url(&config.upstream_url)
    );
    for ns in permissions.effective() {
        if ns.upstream_stream.is_some() || ns.upstream_url.is_some() {
            say!(
                "  {:<24} stream {}{}, url {}",
                ns.pattern,
                config.redis_prefix,
                ns.upstream_stream
                    .as_deref()
                    .unwrap_or(&config.upstream_stream),
                // Routing's order: its URL, its stream, then the node's URL.
                url(match (&ns.upstream_url, &ns.upstream_stream) {
                    (Some(own), _) => own,
                    (None, Some(_)) => "",
                    (None, None) => &config.upstream_url,
                })
            );
        }
    }
    for warning in config.warnings() {
        say!("warning:    {warning}");
    }
    super::print(&out)
}

/// Hides the password of a `redis://user:password@host` URL.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// The lowercase name a rule has in the config file.
fn label<T: serde::Serialize>(rule: &T) -> String {
    serde_json::to_value(rule)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
