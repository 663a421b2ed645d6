//! The publisher: its own thread and current-thread runtime, a ticker that
//! decides how many messages are due (precise rate, bursts after a late
//! wake-up), and a sender for each way of publishing: Redis `PUBLISH`
//! (pipelined), Duplex `POST /api/publish`, the signed Pusher HTTP API, or
//! a WebSocket client (Duplex plain or native).
//!
//! Sequence numbers are per channel and the publish timestamp is taken when
//! the sender formats the message, so `(seq, ts)` grow together on every
//! channel. Messages whose timestamp falls in the measured window are
//! counted per channel: that is what subscribers are expected to receive.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::conn::now_us;
use crate::protocol::{url_encode, write_payload, Protocol};
use crate::pusher::{pusher_query, PusherApp};
use crate::stats::Errors;
use crate::target::Server;
use crate::{proc, ws};

/// Most messages sent in one Redis pipeline or one WebSocket write.
const MAX_BATCH: usize = 1024;

/// How messages are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Via {
    /// Plain Redis `PUBLISH channel payload`.
    Redis,
    /// The server's HTTP API (Duplex `/api/publish`, or the Pusher HTTP API).
    Http,
    /// A WebSocket client publishing like any client.
    Ws,
}

/// Everything the publisher needs.
#[derive(Debug, Clone)]
pub(crate) struct PublishConfig {
    /// Publishing path.
    pub(crate) via: Via,
    /// Protocol of the server (picks the HTTP API and the WebSocket dialect).
    pub(crate) protocol: Protocol,
    /// Server under test.
    pub(crate) server: Server,
    /// Redis URL for `--via redis`.
    pub(crate) redis_url: String,
    /// Duplex API key (`Authorization: apikey ..`).
    pub(crate) api_key: Option<String>,
    /// Pusher credentials.
    pub(crate) pusher: PusherApp,
    /// Pusher event name.
    pub(crate) event: String,
    /// Payload size in bytes.
    pub(crate) size: usize,
    /// Messages per second.
    pub(crate) rate: f64,
    /// HTTP requests in flight at once.
    pub(crate) inflight: usize,
    /// Channels (streams); message `k` goes to channel 0 or a random one.
    pub(crate) channels: Vec<String>,
    /// Pick a random channel for each message.
    pub(crate) random: bool,
}

/// When to publish, in unix µs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Publishing starts (warm-up begins).
    pub(crate) t0: u64,
    /// Measured window start.
    pub(crate) start: u64,
    /// Measured window end; publishing stops.
    pub(crate) end: u64,
}

/// What the publisher did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Per channel: messages published (and accepted) in the window.
    pub(crate) window_counts: Vec<u64>,
    /// Messages published, warm-up included.
    pub(crate) total: u64,
    /// Messages sent after the window closed (publisher fell behind).
    pub(crate) after_window: u64,
    /// Publish errors.
    pub(crate) errors: Errors,
    /// CPU seconds of the publisher thread.
    pub(crate) cpu_s: f64,
}

/// The running publisher thread.
#[derive(Debug)]
pub(crate) struct Handle {
    /// Resolves once connected (or failed to).
    pub(crate) ready: oneshot::Receiver<Result<(), String>>,
    /// Send the window to start publishing.
    pub(crate) go: oneshot::Sender<Window>,
    /// Resolves when done.
    pub(crate) done: oneshot::Receiver<Outcome>,
}

/// Starts the publisher thread; it connects, reports ready, waits for `go`.
pub(crate) fn spawn(cfg: PublishConfig) -> Result<Handle, String> {
    let (ready_tx, ready) = oneshot::channel();
    let (go, go_rx) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("publisher runtime: {e}"))?;
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            let outcome = local.block_on(&runtime, run(cfg, ready_tx, go_rx));
            let _ = done_tx.send(outcome);
        })
        .map_err(|e| format!("publisher thread: {e}"))?;
    Ok(Handle { ready, go, done })
}

async fn run(
    cfg: PublishConfig,
    ready: oneshot::Sender<Result<(), String>>,
    go: oneshot::Receiver<Window>,
) -> Outcome {
    let sink = match Sink::connect(&cfg).await {
        Ok(sink) => {
            let _ = ready.send(Ok(()));
            sink
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Outcome::default();
        }
    };
    let Ok(window) = go.await else {
        return Outcome::default();
    };
    let seqs = Rc::new(RefCell::new(Seqs::new(cfg.channels.len(), window)));
    let errors = Rc::new(RefCell::new(Errors::default()));
    let (tx, rx) = mpsc::unbounded_channel();
    let ticker =
        tokio::task::spawn_local(tick(cfg.rate, window, cfg.channels.len(), cfg.random, tx));
    sink.run(&cfg, rx, &seqs, &errors).await;
    let _ = ticker.await;
    let errors = errors.borrow().clone();
    let seqs = seqs.borrow();
    Outcome {
        window_counts: seqs.counts.clone(),
        total: seqs.total,
        after_window: seqs.after,
        errors,
        cpu_s: proc::cpu_seconds(proc::Target::SelfThread).unwrap_or(0.0),
    }
}

/// Emits channel indices at `rate` from `t0` until `end`.
async fn tick(rate: f64, w: Window, channels: usize, random: bool, tx: mpsc::UnboundedSender<u32>) {
    use rand::Rng as _;
    let wait = |unix_us: u64| {
        tokio::time::Instant::now() + Duration::from_micros(unix_us.saturating_sub(now_us()))
    };
    let start = wait(w.t0);
    let end = start + Duration::from_micros(w.end.saturating_sub(w.t0));
    let period = Duration::from_secs_f64((1.0 / rate).max(0.001));
    // Message k is due at start + k / rate, for every k before `end`.
    let last = ((end - start).as_secs_f64() * rate - 1e-9).ceil() as u64;
    let mut rng = rand::rng();
    let mut sent: u64 = 0;
    let mut k: u32 = 0;
    loop {
        let at = start + period * k;
        if at >= end {
            return;
        }
        tokio::time::sleep_until(at).await;
        k += 1;
        let now = tokio::time::Instant::now().min(end);
        let due = (((now - start).as_secs_f64() * rate).floor() as u64 + 1).min(last);
        while sent < due {
            let ch = if random && channels > 1 {
                rng.random_range(0..channels as u32)
            } else {
                0
            };
            if tx.send(ch).is_err() {
                return;
            }
            sent += 1;
        }
    }
}

/// Per-channel sequence numbers and in-window counts.
#[derive(Debug)]
struct Seqs {
    next: Vec<u64>,
    counts: Vec<u64>,
    window: Window,
    total: u64,
    after: u64,
}

impl Seqs {
    fn new(channels: usize, window: Window) -> Self {
        Seqs {
            next: vec![0; channels],
            counts: vec![0; channels],
            window,
            total: 0,
            after: 0,
        }
    }

    /// Next `(seq, ts)` on channel `ch`, counted; `true` if in the window.
    fn take(&mut self, ch: usize) -> (u64, u64, bool) {
        let seq = self.next[ch];
        self.next[ch] += 1;
        let ts = now_us();
        self.total += 1;
        let in_window = ts >= self.window.start && ts < self.window.end;
        if in_window {
            self.counts[ch] += 1;
        } else if ts >= self.window.end {
            self.after += 1;
        }
        (seq, ts, in_window)
    }

    /// A message that was not accepted: subscribers should not expect it.
    fn uncount(&mut self, ch: usize, in_window: bool) {
        if in_window {
            self.counts[ch] = self.counts[ch].saturating_sub(1);
        }
    }
}

/// A connected publishing path.
enum Sink {
    Redis(redis::aio::MultiplexedConnection),
    Http(reqwest::Client),
    Ws(TcpStream, Vec<u8>),
}

impl Sink {
    async fn connect(cfg: &PublishConfig) -> Result<Sink, String> {
        match cfg.via {
            Via::Redis => {
                let client = redis::Client::open(cfg.redis_url.as_str())
                    .map_err(|e| format!("redis {}: {e}", cfg.redis_url))?;
                let conn = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.get_multiplexed_async_connection(),
                )
                .await
                .map_err(|_| format!("redis {}: connect timed out", cfg.redis_url))?
                .map_err(|e| format!("redis {}: {e}", cfg.redis_url))?;
                Ok(Sink::Redis(conn))
            }
            Via::Http => reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(cfg.inflight.max(1))
                .timeout(Duration::from_secs(10))
                .build()
                .map(Sink::Http)
                .map_err(|e| format!("http client: {e}")),
            Via::Ws => {
                let channel = cfg.channels.first().map(String::as_str).unwrap_or("bench");
                let path = cfg
                    .protocol
                    .path(&cfg.server.base_path, channel, &cfg.pusher.key);
                let mut stream = TcpStream::connect(cfg.server.addr)
                    .await
                    .map_err(|e| format!("publisher connect {}: {e}", cfg.server.addr))?;
                let _ = stream.set_nodelay(true);
                let mut buf = Vec::new();
                ws::handshake(&mut stream, &cfg.server.host, &path, &mut buf)
                    .await
                    .map_err(|e| format!("publisher {e}"))?;
                Ok(Sink::Ws(stream, buf))
            }
        }
    }

    async fn run(
        self,
        cfg: &PublishConfig,
        mut rx: mpsc::UnboundedReceiver<u32>,
        seqs: &Rc<RefCell<Seqs>>,
        errors: &Rc<RefCell<Errors>>,
    ) {
        match self {
            Sink::Redis(mut conn) => {
                let mut batch = Vec::with_capacity(MAX_BATCH);
                let mut payload = String::new();
                while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                    let mut pipe = redis::pipe();
                    let mut sent = Vec::with_capacity(batch.len());
                    for &ch in &batch {
                        let ch = ch as usize;
                        let (seq, ts, in_window) = seqs.borrow_mut().take(ch);
                        write_payload(&mut payload, seq, ts, cfg.size);
                        pipe.cmd("PUBLISH")
                            .arg(&cfg.channels[ch])
                            .arg(payload.as_str());
                        sent.push((ch, in_window));
                    }
                    batch.clear();
                    match pipe.query_async::<Vec<i64>>(&mut conn).await {
                        Ok(receivers) => {
                            for (&(ch, in_window), &n) in sent.iter().zip(&receivers) {
                                if n == 0 {
                                    seqs.borrow_mut().uncount(ch, in_window);
                                    errors.borrow_mut().add(
                                        "redis PUBLISH reached no subscriber (is the server on this Redis, subscribed?)",
                                    );
                                }
                            }
                        }
                        Err(e) => {
                            for &(ch, in_window) in &sent {
                                seqs.borrow_mut().uncount(ch, in_window);
                                errors.borrow_mut().add(format!("redis PUBLISH: {e}"));
                            }
                        }
                    }
                }
            }
            Sink::Http(client) => run_http(cfg, client, rx, seqs, errors).await,
            Sink::Ws(stream, buf) => run_ws(cfg, stream, buf, rx, seqs, errors).await,
        }
    }
}

/// HTTP publishing with up to `inflight` requests at once (1 keeps order).
async fn run_http(
    cfg: &PublishConfig,
    client: reqwest::Client,
    mut rx: mpsc::UnboundedReceiver<u32>,
    seqs: &Rc<RefCell<Seqs>>,
    errors: &Rc<RefCell<Errors>>,
) {
    let inflight = cfg.inflight.max(1);
    let gate = std::sync::Arc::new(Semaphore::new(inflight));
    let channels_json: Vec<String> = cfg
        .channels
        .iter()
        .map(|c| serde_json::Value::String(c.clone()).to_string())
        .collect();
    let event_json = serde_json::Value::String(cfg.event.clone()).to_string();
    let mut payload = String::new();
    while let Some(ch) = rx.recv().await {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let ch = ch as usize;
        let (seq, ts, in_window) = seqs.borrow_mut().take(ch);
        write_payload(&mut payload, seq, ts, cfg.size);
        let request = match cfg.protocol {
            Protocol::Pusher => {
                let body = format!(
                    r#"{{"name":{event_json},"channels":[{}],"data":"{payload}"}}"#,
                    channels_json[ch]
                );
                let path = format!("/apps/{}/events", url_encode(&cfg.pusher.id));
                let query = pusher_query(&cfg.pusher, &path, body.as_bytes(), ts / 1_000_000);
                client
                    .post(format!("{}{path}?{query}", cfg.server.http_base))
                    .header("content-type", "application/json")
                    .body(body)
            }
            Protocol::Plain | Protocol::Native | Protocol::SocketIo => {
                let body = format!(r#"{{"channel":{},"data":"{payload}"}}"#, channels_json[ch]);
                // Socket.IO has no publish API: bench/socketio/server.mjs
                // takes the same body at /publish.
                let path = match cfg.protocol {
                    Protocol::SocketIo => "/publish",
                    _ => "/api/publish",
                };
                let mut r = client
                    .post(format!("{}{path}", cfg.server.http_base))
                    .header("content-type", "application/json")
                    .body(body);
                if let Some(key) = &cfg.api_key {
                    r = r.header("authorization", format!("apikey {key}"));
                }
                r
            }
        };
        let seqs = seqs.clone();
        let errors = errors.clone();
        tokio::task::spawn_local(async move {
            let failure = match request.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    if status.is_success() {
                        None
                    } else {
                        let body: String =
                            String::from_utf8_lossy(&body).chars().take(160).collect();
                        Some(format!("HTTP publish: {status}: {body}"))
                    }
                }
                Err(e) => Some(format!("HTTP publish: {e}")),
            };
            if let Some(f) = failure {
                seqs.borrow_mut().uncount(ch, in_window);
                errors.borrow_mut().add(f);
            }
            drop(permit);
        });
    }
    // Wait for the requests still in flight.
    let _ = gate.acquire_many(inflight as u32).await;
}

/// WebSocket publishing: frames are written in batches; what the server
/// sends back (plain echo, native replies, pings) is read and dropped,
/// error replies counted.
async fn run_ws(
    cfg: &PublishConfig,
    mut stream: TcpStream,
    mut inbox: Vec<u8>,
    mut rx: mpsc::UnboundedReceiver<u32>,
    seqs: &Rc<RefCell<Seqs>>,
    errors: &Rc<RefCell<Errors>>,
) {
    let mask = rand::random::<[u8; 4]>();
    let channels_json: Vec<String> = cfg
        .channels
        .iter()
        .map(|c| serde_json::Value::String(c.clone()).to_string())
        .collect();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut out = Vec::new();
    let mut payload = String::new();
    let mut command = String::new();
    let mut id: u64 = 1;
    let fail = |e: String| errors.borrow_mut().add(e);
    loop {
        // What the server sent: answer pings, count error replies.
        loop {
            match ws::parse_frame(&inbox) {
                Ok(Some(frame)) => {
                    let body = &inbox[frame.header_len..frame.total_len()];
                    match frame.opcode {
                        ws::OP_PING => ws::encode_frame(&mut out, ws::OP_PONG, body, mask),
                        ws::OP_CLOSE => {
                            fail(format!("publisher {}", ws::describe_close(body)));
                            return;
                        }
                        ws::OP_TEXT
                            if cfg.protocol == Protocol::Native
                                && memchr::memmem::find(body, b"\"error\"").is_some() =>
                        {
                            let shown: String =
                                String::from_utf8_lossy(body).chars().take(160).collect();
                            fail(format!("publish error reply: {shown}"));
                        }
                        _ => {}
                    }
                    inbox.drain(..frame.total_len());
                }
                Ok(None) => break,
                Err(e) => {
                    fail(format!("publisher: {e}"));
                    return;
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                fail(format!("publisher write: {e}"));
                return;
            }
            out.clear();
        }
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    return;
                }
                for &ch in &batch {
                    let ch = ch as usize;
                    let (seq, ts, _) = seqs.borrow_mut().take(ch);
                    write_payload(&mut payload, seq, ts, cfg.size);
                    let frame: &str = match cfg.protocol {
                        Protocol::Native => {
                            command.clear();
                            command.push_str(r#"{"id":"#);
                            command.push_str(&id.to_string());
                            command.push_str(r#","method":"publish","params":{"channel":"#);
                            command.push_str(&channels_json[ch]);
                            command.push_str(r#","data":""#);
                            command.push_str(&payload);
                            command.push_str(r#""}}"#);
                            id += 1;
                            &command
                        }
                        _ => &payload,
                    };
                    ws::encode_frame(&mut out, ws::OP_TEXT, frame.as_bytes(), mask);
                }
                batch.clear();
            }
            readable = stream.readable() => {
                if let Err(e) = readable {
                    fail(format!("publisher read: {e}"));
                    return;
                }
                match stream.try_read_buf(&mut inbox) {
                    Ok(0) => {
                        fail("publisher: connection closed by server (EOF)".to_string());
                        return;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        fail(format!("publisher read: {e}"));
                        return;
                    }
                }
                if inbox.capacity() - inbox.len() < 4096 {
                    inbox.reserve(64 * 1024);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_count_the_window() {
        let now = now_us();
        let mut s = Seqs::new(
            2,
            Window {
                t0: now,
                start: now,
                end: now + 60_000_000,
            },
        );
        assert_eq!(s.take(1).0, 0);
        assert_eq!(s.take(1).0, 1);
        let (seq, ts, in_window) = s.take(0);
        assert_eq!(seq, 0);
        assert!(in_window && ts >= now);
        s.uncount(1, true);
        assert_eq!(s.counts, vec![1, 1]);
        assert_eq!(s.total, 3);
        // Before the window: counted in total only.
        let mut s = Seqs::new(
            1,
            Window {
                t0: now,
                start: now + 60_000_000,
                end: now + 70_000_000,
            },
        );
        assert!(!s.take(0).2);
        assert_eq!((s.counts[0], s.total, s.after), (0, 1, 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ticker_emits_rate_times_duration() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t0 = now_us() + 10_000;
        let w = Window {
            t0,
            start: t0,
            end: t0 + 300_000,
        };
        tick(1000.0, w, 10, true, tx).await;
        let mut n = 0;
        while let Ok(ch) = rx.try_recv() {
            assert!(ch < 10);
            n += 1;
        }
        // 1000/s for 0.3 s: 300, or a few less if the last wake-up comes late.
        assert!((280..=300).contains(&n), "{n}");
    }
}
