//! Stalled subscribers (`fanout --stalled K`): clients that subscribe like
//! the others and then never read, the way a phone that lost its radio
//! does. What a server should do with them is the question: cut them
//! (Duplex: close code 3001 once its per-client queue is full) or buffer
//! for them without bound. The run reports the readers' deliveries as usual
//! (are they disturbed?), the server's peak RSS (is memory bounded?) and,
//! here, what became of the stalled clients: after the run each one is read
//! to its end, and the close frame or EOF found there says whether and how
//! the server cut it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncReadExt as _;

use crate::conn::{self, ClientConfig, Connection};
use crate::stats::Errors;
use crate::ws;

/// A stalled client with no byte for this long after the run is still open.
const QUIET: Duration = Duration::from_millis(500);
/// Longest time spent reading the stalled clients after the run.
const INSPECT_LIMIT: Duration = Duration::from_secs(10);

/// What became of the stalled clients.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct StalledReport {
    /// Stalled clients asked for.
    pub(crate) asked: usize,
    /// Stalled clients connected and subscribed.
    pub(crate) connected: usize,
    /// Connections the server ended (close frame, EOF or reset).
    pub(crate) cut: usize,
    /// Connections still open when read after the run.
    pub(crate) open: usize,
    /// How the cut ones ended, by close code and reason.
    pub(crate) endings: BTreeMap<String, u64>,
    /// Data frames they had received (buffered, read after the run).
    pub(crate) messages: u64,
}

/// The stalled connections, held unread until [`Stalled::inspect`].
#[derive(Debug, Default)]
pub(crate) struct Stalled {
    asked: usize,
    conns: Vec<Connection>,
    failures: Errors,
}

impl Stalled {
    /// Opens `count` connections subscribed to `channel`; their source
    /// addresses follow the readers' (`first` is the first index).
    pub(crate) async fn open(
        cfg: &ClientConfig,
        count: usize,
        first: usize,
        channel: &str,
    ) -> Self {
        let mut stalled = Stalled {
            asked: count,
            ..Default::default()
        };
        for i in first..first + count {
            match conn::open(cfg, i, channel).await {
                Ok(c) => stalled.conns.push(c),
                Err(e) => stalled.failures.add(format!("stalled client: {e}")),
            }
        }
        stalled
    }

    /// Connections that failed to open, by error.
    pub(crate) fn failures(&self) -> &Errors {
        &self.failures
    }

    /// Connections opened.
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Reads every stalled connection to its end (or until it goes quiet)
    /// and reports how each ended.
    pub(crate) async fn inspect(self) -> StalledReport {
        let mut report = StalledReport {
            asked: self.asked,
            connected: self.conns.len(),
            ..Default::default()
        };
        let deadline = Instant::now() + INSPECT_LIMIT;
        // All read at once: each may wait up to QUIET for its last bytes.
        let reads: Vec<_> = self
            .conns
            .into_iter()
            .map(|c| tokio::task::spawn_local(read_to_end(c, deadline)))
            .collect();
        for read in reads {
            let Ok((ending, messages)) = read.await else {
                continue;
            };
            report.messages += messages;
            match ending {
                Some(how) => {
                    report.cut += 1;
                    *report.endings.entry(how).or_default() += 1;
                }
                None => report.open += 1,
            }
        }
        report
    }
}

/// Reads one stalled connection until the server's close (its description),
/// or `None` if it stays open; counts the data frames on the way.
async fn read_to_end(mut c: Connection, deadline: Instant) -> (Option<String>, u64) {
    let mut buf = std::mem::take(&mut c.pending);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut messages = 0;
    loop {
        let mut at = 0;
        loop {
            match ws::parse_frame(&buf[at..]) {
                Ok(Some(frame)) => {
                    let payload = &buf[at + frame.header_len..at + frame.total_len()];
                    match frame.opcode {
                        ws::OP_TEXT | ws::OP_BINARY => messages += 1,
                        ws::OP_CLOSE => return (Some(ws::describe_close(payload)), messages),
                        _ => {}
                    }
                    at += frame.total_len();
                }
                Ok(None) => break,
                Err(e) => return (Some(format!("bad frame: {e}")), messages),
            }
        }
        buf.drain(..at);
        let wait = QUIET.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, c.stream.read(&mut chunk)).await {
            Err(_) => return (None, messages),
            Ok(Ok(0)) => return (Some("EOF without a close frame".into()), messages),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return (Some(format!("read: {}", e.kind())), messages),
        }
    }
}
