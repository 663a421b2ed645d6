//! The server under test: `--server ws://host:port[/prefix]` parsed into a
//! socket address, the Host header, a path prefix and the HTTP base URL;
//! and the client source addresses (127.0.0.x) connections are spread over.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Where the server listens.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    /// `host:port` as given, for the Host header.
    pub(crate) host: String,
    /// Resolved address.
    pub(crate) addr: SocketAddr,
    /// Path prefix without trailing slash (usually empty).
    pub(crate) base_path: String,
    /// `http://host:port` + prefix, for HTTP publishing.
    pub(crate) http_base: String,
}

impl Server {
    /// Parses and resolves `ws://host:port[/prefix]` (or `http://`).
    pub(crate) fn parse(url: &str) -> Result<Server, String> {
        let rest = if let Some(r) = url.strip_prefix("ws://") {
            r
        } else if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("wss://") || url.starts_with("https://") {
            return Err(format!("{url}: TLS is not supported, use ws://"));
        } else {
            return Err(format!("{url}: expected ws://host:port"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("{url}: {with_port} resolves to nothing"))?;
        let base_path = path.trim_end_matches('/').to_string();
        Ok(Server {
            host: authority.to_string(),
            addr,
            http_base: format!("http://{authority}{base_path}"),
            base_path,
        })
    }
}

/// Picks the local address of each client connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sources {
    /// Spread over 127.0.0.x (only when the server is on IPv4 loopback).
    spread: bool,
    /// First source is 127.0.0.(1 + offset).
    offset: u32,
    /// Connections per source address.
    per_source: u32,
}

impl Sources {
    /// Spreads over 127.0.0.(1 + offset).. when `server` is on IPv4 loopback.
    pub(crate) fn new(server: &Server, offset: u32, per_source: u32) -> Self {
        Sources {
            spread: matches!(server.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()),
            offset,
            per_source: per_source.max(1),
        }
    }

    /// Local address for connection `i` (`None`: let the kernel choose).
    pub(crate) fn for_index(&self, i: usize) -> Result<Option<SocketAddr>, String> {
        if !self.spread {
            return Ok(None);
        }
        let host = 1 + u64::from(self.offset) + i as u64 / u64::from(self.per_source);
        if host > 254 {
            return Err(format!(
                "no source address left for connection {i}: 127.0.0.{host} is past 127.0.0.254 (lower --source-offset or raise --per-source)"
            ));
        }
        Ok(Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, host as u8)),
            0,
        )))
    }
}

impl Sources {
    /// Local address of source `slot` (127.0.0.(1 + offset + slot)), for
    /// workloads that rotate over a few addresses instead of filling them.
    pub(crate) fn for_slot(&self, slot: u32) -> Result<Option<SocketAddr>, String> {
        self.for_index(slot as usize * self.per_source as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let s = Server::parse("ws://127.0.0.1:1234").unwrap();
        assert_eq!(s.addr, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(s.host, "127.0.0.1:1234");
        assert_eq!(s.base_path, "");
        assert_eq!(s.http_base, "http://127.0.0.1:1234");
        let s = Server::parse("ws://127.0.0.1:99/pre/").unwrap();
        assert_eq!((s.base_path.as_str(), s.addr.port()), ("/pre", 99));
        let s = Server::parse("ws://127.0.0.1").unwrap();
        assert_eq!(s.addr.port(), 80);
        assert!(Server::parse("wss://x").is_err());
        assert!(Server::parse("127.0.0.1:1").is_err());
        assert!(Server::parse("ws://").is_err());
    }

    #[test]
    fn spreads_sources() {
        let s = Server::parse("ws://127.0.0.1:1234").unwrap();
        let src = Sources::new(&s, 0, 20_000);
        assert_eq!(
            src.for_index(0).unwrap(),
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            src.for_index(20_000).unwrap(),
            Some("127.0.0.2:0".parse().unwrap())
        );
        let src = Sources::new(&s, 10, 100);
        assert_eq!(
            src.for_index(250).unwrap(),
            Some("127.0.0.13:0".parse().unwrap())
        );
        assert!(Sources::new(&s, 250, 1).for_index(10).is_err());
    }
}
