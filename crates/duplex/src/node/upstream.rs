//! Client calls handed up to the backends: `rpc` (and, with an HTTP
//! upstream, `send`). On Redis the call is an entry in the upstream stream
//! naming this node's reply channel; with `upstream_url` it is a POST. The
//! answer comes back through [`Node::finish_call`].

use std::sync::Arc;

use bytes::Bytes;
use duplex_protocol::payload::Encoding;
use serde::Serialize;
use serde_json::value::RawValue;

use super::http_upstream::Job;
use super::rpc::{Answer, Full};
use super::Node;
use crate::broker::{BrokerError, Upstream};
use crate::conn::Conn;

/// Why a call was not handed to the backends.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// A bound on waiting calls was reached.
    #[error(transparent)]
    Full(#[from] Full),
    /// The broker could not take it (outage, timeout, or no upstream at all).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The JSON body POSTed to `upstream_url`: the stream entry's fields.
#[derive(Serialize)]
struct HttpCall<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<Encoding>,
    connection: &'a str,
    user: &'a str,
    node: &'a str,
    request: String,
    ts: u128,
}

/// Why an rpc cannot go anywhere.
const NO_UPSTREAM: &str =
    "rpc needs the Redis broker (--redis) or an HTTP upstream (--upstream-url)";

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl Node {
    /// Whether `send` and `rpc` go to `upstream_url` rather than the stream.
    pub(crate) fn has_http_upstream(&self) -> bool {
        self.inner.http.is_some()
    }

    /// The channel backends publish rpc replies to: this node's own, with
    /// the Redis prefix, exactly as a worker's `PUBLISH` must name it.
    pub fn reply_channel(&self) -> String {
        format!("{}{}", self.inner.config.redis_prefix, self.node_channel())
    }

    /// Starts an rpc: the client's reply is queued when the backend answers,
    /// on timeout, or never if the connection ends first.
    pub(crate) async fn call_upstream(
        &self,
        conn: &Arc<Conn>,
        command: u64,
        method: &str,
        data: &RawValue,
    ) -> Result<(), CallError> {
        if !self.has_http_upstream() && self.inner.config.redis_url().is_none() {
            return Err(BrokerError::Unsupported(NO_UPSTREAM).into());
        }
        let request = self.begin_call(conn, command, Answer::Rpc)?;
        if self.has_http_upstream() {
            return self.post_call(conn, request, Answer::Rpc, Some(method), data, None);
        }
        let fields = vec![
            ("kind", Bytes::from_static(b"rpc")),
            ("method", Bytes::copy_from_slice(method.as_bytes())),
            ("data", Bytes::copy_from_slice(data.get().as_bytes())),
            ("encoding", Bytes::from_static(b"json")),
            ("connection", Bytes::copy_from_slice(conn.id.as_bytes())),
            (
                "user",
                Bytes::copy_from_slice(conn.user().unwrap_or("").as_bytes()),
            ),
            ("node", Bytes::copy_from_slice(self.inner.id.as_bytes())),
            ("request", Bytes::from(request.to_string())),
            ("reply_to", Bytes::from(self.reply_channel())),
            ("ts", Bytes::from(unix_millis().to_string())),
        ];
        let appended = self
            .inner
            .broker
            .append_upstream(Upstream {
                stream: self.inner.config.upstream_stream.clone(),
                fields,
            })
            .await;
        match appended {
            Ok(()) => Ok(()),
            // Already answered (timed out while Redis was slow): no second reply.
            Err(_) if !self.abandon_call(request) => Ok(()),
            Err(e) => {
                crate::stats::Stats::bump(&self.inner.stats.rpc_failures);
                Err(e.into())
            }
        }
    }

    /// A client's `send` through the HTTP upstream, acknowledged after the
    /// backend's 2xx (the data checked by the caller).
    pub(crate) fn send_upstream_http(
        &self,
        conn: &Arc<Conn>,
        command: u64,
        data: &RawValue,
        encoding: Encoding,
    ) -> Result<(), CallError> {
        let request = self.begin_call(conn, command, Answer::Send)?;
        self.post_call(conn, request, Answer::Send, None, data, Some(encoding))
    }

    fn post_call(
        &self,
        conn: &Conn,
        request: u64,
        answer: Answer,
        method: Option<&str>,
        data: &RawValue,
        encoding: Option<Encoding>,
    ) -> Result<(), CallError> {
        let call = HttpCall {
            kind: if answer == Answer::Rpc { "rpc" } else { "send" },
            method,
            data,
            encoding,
            connection: &conn.id,
            user: conn.user().unwrap_or(""),
            node: &self.inner.id,
            request: request.to_string(),
            ts: unix_millis(),
        };
        let full = || {
            self.abandon_call(request);
            CallError::Full(Full::Node(self.inner.config.max_inflight_rpcs))
        };
        let (Some(http), Ok(body)) = (&self.inner.http, serde_json::to_vec(&call)) else {
            return Err(full());
        };
        let job = Job {
            request,
            connection: Arc::clone(&conn.id),
            answer,
            body,
        };
        http.submit(job).map_err(|_| full())
    }
}
