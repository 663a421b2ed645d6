//! Where a client's message up goes: the namespace of the channel it names
//! may have its own stream and URL; otherwise the node's.

use std::sync::Arc;

use crate::permissions::UpstreamOverride;

/// Where one upstream message goes.
#[derive(Debug, Clone)]
pub(crate) struct Route<'a> {
    /// The Redis Stream (before `redis_prefix`); owned, as a reload may
    /// replace the config and namespaces it came from.
    pub(crate) stream: String,
    /// The HTTP endpoint, when there is one: `send`, `rpc` and plain frames
    /// go there instead of the stream.
    pub(crate) url: Option<Arc<str>>,
    /// The channel that picked the route, named in the entry or body.
    pub(crate) channel: Option<&'a str>,
}

impl<'a> Route<'a> {
    /// The most specific destination first: the channel's namespace's
    /// `upstream_url`, then its `upstream_stream`, then the node's
    /// `upstream_url`, then the node's `upstream_stream`. A namespace that
    /// names its own stream keeps its messages off the node's URL.
    pub(crate) fn resolve(
        own: UpstreamOverride<'_>,
        node_url: Option<&Arc<str>>,
        node_stream: &str,
        channel: Option<&'a str>,
    ) -> Route<'a> {
        let url = match own.stream {
            Some(_) => own.url,
            None => own.url.or(node_url),
        };
        Route {
            stream: own.stream.unwrap_or(node_stream).to_string(),
            url: url.cloned(),
            channel,
        }
    }

    /// The stream or URL whose node-wide byte budget the message spends.
    pub(crate) fn destination(&self) -> &str {
        self.url.as_deref().unwrap_or(&self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        stream: Option<&str>,
        url: Option<&Arc<str>>,
        node_url: Option<&Arc<str>>,
    ) -> (String, Option<String>) {
        let own = UpstreamOverride { stream, url };
        let route = Route::resolve(own, node_url, "node-stream", Some("chat:1"));
        (route.stream, route.url.map(|u| u.to_string()))
    }

    #[test]
    fn the_most_specific_destination_wins() {
        let ns: Arc<str> = Arc::from("http://ns");
        let node: Arc<str> = Arc::from("http://node");
        let s = |v: &str| v.to_string();
        // Nothing of its own: the node's URL, else the node's stream.
        assert_eq!(resolve(None, None, None), (s("node-stream"), None));
        assert_eq!(
            resolve(None, None, Some(&node)),
            (s("node-stream"), Some(s("http://node")))
        );
        // The namespace's URL beats the node's.
        assert_eq!(
            resolve(None, Some(&ns), Some(&node)),
            (s("node-stream"), Some(s("http://ns")))
        );
        // The namespace's own stream keeps its messages off the node's URL.
        assert_eq!(
            resolve(Some("ns-stream"), None, Some(&node)),
            (s("ns-stream"), None)
        );
        assert_eq!(
            resolve(Some("ns-stream"), Some(&ns), Some(&node)),
            (s("ns-stream"), Some(s("http://ns")))
        );
    }
}
