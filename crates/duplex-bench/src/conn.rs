//! Client connections: open (bind a source address, connect, handshake,
//! subscribe) with bounded concurrency, then the receive loop.
//!
//! The receive loop is the hot path. All connections live on one
//! current-thread runtime and share one scratch read buffer: each read
//! borrows it only for the duration of a synchronous poll, frames are
//! parsed in place, and only a partial frame left at the end of a read is
//! copied into the connection's own (normally empty) buffer.
//!
//! Reads use `recvmsg` with `SO_TIMESTAMPNS`: the kernel stamps each
//! segment when it reaches the client socket, so the latency of the last
//! of 2000 subscribers does not include the time this single thread takes
//! to get round to reading it (that one is reported too, from one clock
//! read per socket read). A read shorter than the buffer drained the
//! socket, so its readiness is cleared without a second, empty read (as
//! tokio does for its own streams).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd as _;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncWriteExt as _, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::protocol::{Inbound, Protocol};
use crate::stats::Stats;
use crate::target::{Server, Sources};
use crate::ws;

/// Size of the shared read buffer.
const SCRATCH: usize = 64 * 1024;

/// Unix time in µs.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// How clients connect.
#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    /// Wire protocol.
    pub(crate) protocol: Protocol,
    /// Server under test.
    pub(crate) server: Server,
    /// Pusher app key (path of Pusher connections).
    pub(crate) app_key: String,
    /// Source address spreading.
    pub(crate) sources: Sources,
    /// Handshakes in flight at once.
    pub(crate) concurrency: usize,
    /// Bound on connect + handshake + subscribe of one connection.
    pub(crate) setup_timeout: Duration,
    /// Print progress on stderr.
    pub(crate) verbose: bool,
    /// Keep TCP_QUICKACK off (delayed ACKs) on client sockets.
    pub(crate) delayed_ack: bool,
}

/// State shared by every connection task (single thread: `Rc`/`RefCell`).
#[derive(Debug)]
pub(crate) struct Ctx {
    /// How to connect.
    pub(crate) cfg: ClientConfig,
    /// Accounting.
    pub(crate) stats: RefCell<Stats>,
    /// Connections whose receive loop is running.
    pub(crate) live: Cell<usize>,
    /// Set when the run is over: connection ends are no longer errors.
    pub(crate) finished: Cell<bool>,
    scratch: RefCell<Vec<u8>>,
    cmsg: RefCell<Vec<u8>>,
}

impl Ctx {
    /// Context for `subscribers` tracked subscribers (0 for idle connections).
    pub(crate) fn new(cfg: ClientConfig, subscribers: usize) -> Rc<Ctx> {
        Rc::new(Ctx {
            cfg,
            stats: RefCell::new(Stats::new(subscribers)),
            live: Cell::new(0),
            finished: Cell::new(false),
            scratch: RefCell::new(vec![0; SCRATCH]),
            cmsg: RefCell::new(nix::cmsg_space!(TimeSpec)),
        })
    }
}

/// An established, subscribed connection.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The socket.
    pub(crate) stream: TcpStream,
    /// Bytes received but not yet parsed (a partial frame).
    pub(crate) pending: Vec<u8>,
    /// Masking key of this connection's frames.
    pub(crate) mask: [u8; 4],
}

/// Connects client `i` and subscribes it to `channel`.
pub(crate) async fn open(
    cfg: &ClientConfig,
    i: usize,
    channel: &str,
) -> Result<Connection, String> {
    let work = async {
        let local = cfg.sources.for_index(i)?;
        let socket = match cfg.server.addr {
            std::net::SocketAddr::V4(_) => TcpSocket::new_v4(),
            std::net::SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(local) = local {
            // Without this, bind() to port 0 reserves a port by scanning
            // the whole range: quadratic over thousands of connections.
            // With it the port is chosen at connect() time, per 4-tuple.
            let _ = setsockopt(&socket, sockopt::IpBindAddressNoPort, &true);
            socket
                .bind(local)
                .map_err(|e| format!("bind {}: {e}", local.ip()))?;
        }
        let mut stream = socket
            .connect(cfg.server.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", cfg.server.addr))?;
        let _ = stream.set_nodelay(true);
        let mut pending = Vec::new();
        let path = cfg
            .protocol
            .path(&cfg.server.base_path, channel, &cfg.app_key);
        ws::handshake(&mut stream, &cfg.server.host, &path, &mut pending).await?;
        let mask = rand::random::<[u8; 4]>();
        cfg.protocol
            .subscribe(&mut stream, &mut pending, mask, channel)
            .await?;
        pending.shrink_to_fit();
        let _ = setsockopt(&stream, sockopt::ReceiveTimestampns, &true);
        Ok(Connection {
            stream,
            pending,
            mask,
        })
    };
    match tokio::time::timeout(cfg.setup_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "setup (connect, handshake, subscribe) timed out after {:?}",
            cfg.setup_timeout
        )),
    }
}

/// Result of opening many connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ramp {
    /// Connections established and subscribed.
    pub(crate) established: usize,
    /// Connections that failed (errors are in the stats).
    pub(crate) failed: usize,
    /// Time from the first connect to the last result.
    pub(crate) elapsed: Duration,
}

/// Opens `n` connections with bounded concurrency; each one then runs the
/// receive loop as subscriber `i` (when `track` is set) until the process
/// ends. Returns once every connection is established or has failed.
pub(crate) async fn open_all(
    ctx: &Rc<Ctx>,
    n: usize,
    track: bool,
    channel_of: impl Fn(usize) -> String,
) -> Ramp {
    let started = Instant::now();
    let gate = Rc::new(Semaphore::new(ctx.cfg.concurrency.max(1)));
    let done = Rc::new(Cell::new((0usize, 0usize)));
    let all_done = Rc::new(tokio::sync::Notify::new());
    for i in 0..n {
        let ctx = ctx.clone();
        let gate = gate.clone();
        let done = done.clone();
        let all_done = all_done.clone();
        let channel = channel_of(i);
        tokio::task::spawn_local(async move {
            let opened = {
                let Ok(_permit) = gate.acquire().await else {
                    return;
                };
                // Boxed: the setup future is large and short-lived; the task
                // that stays alive holds only the receive loop's state.
                Box::pin(open(&ctx.cfg, i, &channel)).await
            };
            drop(channel);
            let (mut ok, mut failed) = done.get();
            match opened {
                Ok(conn) => {
                    if track {
                        if let Some(s) = ctx.stats.borrow_mut().subs.get_mut(i) {
                            s.connected = true;
                        }
                    }
                    ok += 1;
                    done.set((ok, failed));
                    if ok + failed == n {
                        all_done.notify_one();
                    }
                    receive(ctx, conn, if track { i } else { usize::MAX }).await;
                }
                Err(e) => {
                    failed += 1;
                    done.set((ok, failed));
                    ctx.stats.borrow_mut().errors.add(e);
                    if ok + failed == n {
                        all_done.notify_one();
                    }
                }
            }
        });
    }
    if n > 0 {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = all_done.notified() => break,
                _ = tick.tick() => {
                    let (ok, failed) = done.get();
                    if ok + failed == n {
                        break;
                    }
                    if ctx.cfg.verbose {
                        eprintln!("  connecting: {ok}/{n} established, {failed} failed");
                    }
                }
            }
        }
    }
    let (established, failed) = done.get();
    Ramp {
        established,
        failed,
        elapsed: started.elapsed(),
    }
}

/// The receive loop of one connection: reads, parses frames in place,
/// records payloads for subscriber `sub`, answers pings.
pub(crate) async fn receive(ctx: Rc<Ctx>, mut conn: Connection, sub: usize) {
    ctx.live.set(ctx.live.get() + 1);
    let mut out: Vec<u8> = Vec::new();
    let mut result = Ok(());
    if !conn.pending.is_empty() {
        let pending = std::mem::take(&mut conn.pending);
        let now = now_us();
        result = process(&ctx, &pending, sub, conn.mask, &mut out, now, now).map(|used| {
            conn.pending = pending[used..].to_vec();
        });
    }
    while result.is_ok() {
        if !out.is_empty() {
            if let Err(e) = conn.stream.write_all(&out).await {
                result = Err(format!("write: {e}"));
                break;
            }
            out.clear();
        }
        result = poll_fn(|cx| poll_step(&ctx, cx, &mut conn, sub, &mut out)).await;
    }
    ctx.live.set(ctx.live.get() - 1);
    if let Err(e) = result {
        if !ctx.finished.get() {
            ctx.stats.borrow_mut().errors.add(e);
        }
    }
}

/// One `recvmsg` into the shared buffer, then parse what it completed.
fn poll_step(
    ctx: &Ctx,
    cx: &mut Context<'_>,
    conn: &mut Connection,
    sub: usize,
    out: &mut Vec<u8>,
) -> Poll<Result<(), String>> {
    let mut scratch = ctx.scratch.borrow_mut();
    let (n, stamped) = loop {
        match conn.stream.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("read: {e}"))),
            Poll::Ready(Ok(())) => {}
        }
        let mut got = None;
        let fd = conn.stream.as_raw_fd();
        let result = conn.stream.try_io(Interest::READABLE, || {
            let mut cmsg = ctx.cmsg.borrow_mut();
            let mut iov = [IoSliceMut::new(&mut scratch[..])];
            let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg[..]), MsgFlags::empty())
                .map_err(io::Error::from)?;
            let stamped = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmTimestampns(t) => Some(
                        (t.tv_sec() as u64)
                            .saturating_mul(1_000_000)
                            .saturating_add(t.tv_nsec() as u64 / 1000),
                    ),
                    _ => None,
                })
            });
            got = Some((msg.bytes, stamped));
            if msg.bytes < SCRATCH {
                // A short read drained the socket: report WouldBlock so the
                // runtime clears readiness (no second, empty read).
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        if let Some(read) = got {
            break read;
        }
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Poll::Ready(Err(format!("read: {e}"))),
            Ok(()) => {}
        }
    };
    if n == 0 {
        return Poll::Ready(Err("connection closed by server (EOF)".to_string()));
    }
    let read_at = now_us();
    let arrived = stamped.filter(|&t| t > 0).unwrap_or(read_at);
    if ctx.cfg.delayed_ack {
        // The kernel leaves delayed-ACK ("pingpong") mode whenever its
        // delayed-ACK timer fires; renewing it is one cheap syscall, an
        // ACK is a full trip through both sockets' TCP stacks.
        let _ = socket2::SockRef::from(&conn.stream).set_tcp_quickack(false);
    }
    let result = if conn.pending.is_empty() {
        process(ctx, &scratch[..n], sub, conn.mask, out, arrived, read_at).map(|used| {
            conn.pending.extend_from_slice(&scratch[used..n]);
        })
    } else {
        conn.pending.extend_from_slice(&scratch[..n]);
        process(ctx, &conn.pending, sub, conn.mask, out, arrived, read_at).map(|used| {
            conn.pending.drain(..used);
            if conn.pending.is_empty() && conn.pending.capacity() > SCRATCH {
                conn.pending = Vec::new();
            }
        })
    };
    Poll::Ready(result)
}

/// Handles every complete frame at the start of `data`; returns the bytes
/// used. `arrived`: when the bytes reached the socket; `read_at`: when this
/// thread read them (unix µs).
fn process(
    ctx: &Ctx,
    data: &[u8],
    sub: usize,
    mask: [u8; 4],
    out: &mut Vec<u8>,
    arrived: u64,
    read_at: u64,
) -> Result<usize, String> {
    let mut stats = ctx.stats.borrow_mut();
    let protocol = ctx.cfg.protocol;
    let mut at = 0;
    while let Some(frame) = ws::parse_frame(&data[at..]).map_err(|e| e.to_string())? {
        let payload = &data[at + frame.header_len..at + frame.total_len()];
        at += frame.total_len();
        match frame.opcode {
            ws::OP_TEXT | ws::OP_BINARY => match protocol.classify(payload) {
                Inbound::Payload { seq, ts } => stats.on_payload(sub, seq, ts, arrived, read_at),
                Inbound::AppPing => {
                    stats.pings += 1;
                    ws::encode_frame(out, ws::OP_TEXT, protocol.pong(), mask);
                }
                Inbound::Other => stats.other_messages += 1,
            },
            ws::OP_PING => {
                stats.pings += 1;
                ws::encode_frame(out, ws::OP_PONG, payload, mask);
            }
            ws::OP_CLOSE => return Err(ws::describe_close(payload)),
            // Pongs, and continuation frames: the payload prefix is in the
            // first frame of a message.
            _ => {}
        }
    }
    Ok(at)
}
