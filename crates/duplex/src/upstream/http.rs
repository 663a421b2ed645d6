//! The HTTP upstream (`upstream_url`): client `send`s and `rpc`s POSTed as
//! JSON to a backend endpoint, for deployments without Redis. Each request
//! carries its URL (the node's, or its channel's namespace's), and one task
//! with one HTTP client drives them all, at most `upstream_concurrency` at
//! once; the queue in front of it is bounded by `max_inflight_rpcs`, like
//! the call table.
//!
//! The backend answers 2xx with the rpc's reply as the JSON body (empty
//! means `null`), or non-2xx with `{"error":{"code":C,"message":M}}` for
//! its own error (C in 1000–9999 reaches the client as is). Anything else
//! is 115 for the client; a request that takes longer than `rpc_timeout`
//! is 113.
//!
//! With `upstream_secret` set, every request (to the node's URL or a
//! namespace's) carries a `Duplex-Signature` header over its time and body
//! (`signature.rs`), so the backend can refuse anyone else's.
//!
//! How each request ended goes to the node through the callback given at
//! start, so this driver knows nothing of nodes or connections.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use duplex_protocol::code::ErrorCode;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::call::{Answer, Outcome};
use super::signature::{self, Signer};

/// Told how each request ended: the node answers the call or counts the frame.
pub(crate) type Finished = Box<dyn Fn(Job, Outcome) + Send + Sync>;

/// One request for the backend endpoint.
#[derive(Debug)]
pub(crate) struct Job {
    /// The call's request id (also in the body).
    pub(crate) request: u64,
    /// The calling connection, to match the answer.
    pub(crate) connection: Arc<str>,
    /// Whether a reply body is wanted; `None` for a plain client's frame,
    /// which nobody answers (its outcome is only counted).
    pub(crate) answer: Option<Answer>,
    /// The JSON body.
    pub(crate) body: bytes::Bytes,
    /// Where to POST it.
    pub(crate) url: Arc<str>,
}

/// The queue to the driver task, and the node's own URL.
#[derive(Debug)]
pub(crate) struct HttpUpstream {
    jobs: mpsc::Sender<Job>,
    /// `upstream_url`, when set (namespaces may have their own).
    default_url: Option<Arc<str>>,
}

/// What the driver needs besides the queue.
struct Driver {
    client: reqwest::Client,
    concurrency: usize,
    /// Largest reply body read, in bytes (`max_message_size`).
    max_body: usize,
    /// Signs each request when `upstream_secret` is set.
    signer: Option<Signer>,
    finished: Finished,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: BackendError,
}

#[derive(Deserialize)]
struct BackendError {
    code: i64,
    #[serde(default)]
    message: String,
}

impl HttpUpstream {
    /// The upstream and its driver, which the node runs as one of its tasks.
    /// `default_url` is the node's `upstream_url`, if any; `signer` signs
    /// every request; `finished` hears how each one ended.
    pub(crate) fn start(
        default_url: Option<&str>,
        timeout: Duration,
        concurrency: usize,
        capacity: usize,
        max_body: usize,
        signer: Option<Signer>,
        finished: Finished,
    ) -> (
        HttpUpstream,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (jobs, queue) = mpsc::channel(capacity);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        let driver = Driver {
            client,
            concurrency,
            max_body,
            signer,
            finished,
        };
        let upstream = HttpUpstream {
            jobs,
            default_url: default_url.map(Arc::from),
        };
        (upstream, driver.run(queue))
    }

    /// The node's `upstream_url`, for calls whose namespace names none.
    pub(crate) fn default_url(&self) -> Option<&Arc<str>> {
        self.default_url.as_ref()
    }

    /// Queues a request; gives it back when the queue is full.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => job,
        })
    }
}

impl Driver {
    async fn run(self, queue: mpsc::Receiver<Job>) {
        let jobs = futures_util::stream::unfold(queue, |mut queue| async move {
            queue.recv().await.map(|job| (job, queue))
        });
        let driver = &self;
        jobs.for_each_concurrent(self.concurrency, |job| async move {
            let outcome = driver.post(&job.url, job.body.clone(), job.answer).await;
            (driver.finished)(job, outcome);
        })
        .await;
    }

    async fn post(&self, url: &str, body: bytes::Bytes, answer: Option<Answer>) -> Outcome {
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signer) = &self.signer {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request.header(signature::HEADER, signer.header(now, &body));
        }
        let sent = request.body(body).send().await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => return failure(url, &e),
        };
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_body {
                        return Outcome::Error(
                            ErrorCode::UpstreamFailed,
                            format!("upstream reply is over {} bytes", self.max_body),
                        );
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return failure(url, &e),
            }
        }
        if status.is_success() {
            if answer != Some(Answer::Rpc) || body.iter().all(u8::is_ascii_whitespace) {
                return Outcome::Data(null());
            }
            return match serde_json::from_slice::<Box<RawValue>>(&body) {
                Ok(data) => Outcome::Data(data),
                Err(e) => Outcome::Error(
                    ErrorCode::UpstreamFailed,
                    format!("upstream reply is not JSON: {e}"),
                ),
            };
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => Outcome::backend_error(error.code, &error.message),
            Err(_) => {
                tracing::debug!(url, %status, "upstream answered an error status");
                Outcome::Error(
                    ErrorCode::UpstreamFailed,
                    format!("upstream answered HTTP {}", status.as_u16()),
                )
            }
        }
    }
}

/// A request that got no answer: 113 on timeout, 115 otherwise.
fn failure(url: &str, e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        return Outcome::Error(
            ErrorCode::RpcTimeout,
            "the upstream did not answer within rpc_timeout".to_string(),
        );
    }
    tracing::debug!(url, error = %e, "upstream request failed");
    Outcome::Error(
        ErrorCode::UpstreamFailed,
        "the upstream could not be reached".to_string(),
    )
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_string()).unwrap_or_else(|_| unreachable!("null is JSON"))
}
