//! What `duplex genconfig` prints around and for each setting: the header,
//! the namespaces example, and each type's default written as TOML.

use std::net::SocketAddr;
use std::time::Duration;

use super::{LogFormat, Secret};

/// The whole file: the header, each heading's settings (headings in the
/// order they first appear in `entries`, as in `serve --help`), the
/// namespaces example.
pub(super) fn assemble(entries: &[(&'static str, String)]) -> String {
    let mut headings: Vec<&str> = Vec::new();
    for (heading, _) in entries {
        if !headings.contains(heading) {
            headings.push(heading);
        }
    }
    let mut out = String::from(DEFAULT_FILE_HEADER);
    for heading in headings {
        out.push_str(&format!("# ---- {heading} ----\n\n"));
        for (_, entry) in entries.iter().filter(|(h, _)| *h == heading) {
            out.push_str(entry);
        }
    }
    out.push_str(DEFAULT_FILE_NAMESPACES);
    out
}

/// The top of `duplex genconfig`'s output.
const DEFAULT_FILE_HEADER: &str = "\
# Duplex configuration: every setting with its default.
# Use with `duplex serve --config duplex.toml`; check with `--check-config`.
# Flags and DUPLEX_* environment variables override what is here.

";

/// The namespaces example at the end of `duplex genconfig`'s output.
const DEFAULT_FILE_NAMESPACES: &str = "\
# Channel namespaces (file only), first match wins; a \"*\" pattern sets the default.
# subscribe: anyone | authenticated | token    publish: anyone | authenticated | subscribers | nobody
# upstream_stream, upstream_url (optional): where these channels' upstream messages go
# (plain frames, send/rpc naming a channel) instead of the node's upstream_stream/upstream_url.
#
# [[namespaces]]
# pattern = \"chat:*\"
# subscribe = \"authenticated\"
# publish = \"subscribers\"
# upstream_stream = \"duplex:upstream:chat\"
";

/// How a default is written in `duplex genconfig`'s file.
pub(super) trait ToToml {
    fn to_toml(&self) -> String;
}

macro_rules! toml_as_is {
    ($($t:ty),*) => {$(
        impl ToToml for $t {
            fn to_toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
toml_as_is!(bool, usize, u32);

macro_rules! toml_quoted {
    ($($t:ty),*) => {$(
        impl ToToml for $t {
            fn to_toml(&self) -> String {
                toml::Value::String(self.to_string()).to_string()
            }
        }
    )*};
}
toml_quoted!(String, SocketAddr);

impl ToToml for Duration {
    fn to_toml(&self) -> String {
        toml::Value::String(humantime::format_duration(*self).to_string()).to_string()
    }
}

impl ToToml for Secret {
    fn to_toml(&self) -> String {
        // Defaults hold no secrets; never print a real one here.
        "\"\"".to_string()
    }
}

impl ToToml for LogFormat {
    fn to_toml(&self) -> String {
        match self {
            LogFormat::Text => "\"text\"",
            LogFormat::Json => "\"json\"",
        }
        .to_string()
    }
}
