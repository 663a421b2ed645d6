//! One churn client's life on the native protocol: connect, subscribe to a
//! few channels of the pool, now and then leave one and join another, and
//! after a random lifetime close (a WebSocket close, or an abrupt reset).
//! Every subscription's confirmed span and received sequence numbers go to
//! the context's records for the final check.
//!
//! Hot path (a pushed message): find `"data":"`, parse
//! `<seq>:<ts>:<channel>:`, extend the subscription's last run. Replies
//! (a few per life) are matched by id with a byte scan too.

use std::io;
use std::time::Duration;

use memchr::memmem;
use rand::Rng as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::runs::{Order, Runs};
use super::Ctx;
use crate::conn::now_us;
use crate::ws;

/// How long a closing client waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Reads per wake-up before yielding to other clients.
const READS_PER_WAKE: usize = 8;

/// Where a subscription is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Subscribe sent with this id, no reply yet.
    Pending(u64),
    /// Confirmed.
    Active,
    /// Unsubscribe sent with this id, no reply yet.
    Leaving(u64),
}

#[derive(Debug)]
struct Sub {
    ch: u32,
    state: State,
    on: u64,
    off: u64,
    runs: Runs,
}

/// How a life ended.
#[derive(Debug)]
enum End {
    /// Closed by the client with a WebSocket close (or at the end of the run).
    Graceful,
    /// Dropped by the client with a TCP reset.
    Abrupt,
    /// The run ended.
    Stopped,
    /// The server closed or the connection failed.
    Lost(String),
}

/// What the server sent, frame by frame.
enum Flow {
    Open,
    Closed(String),
}

struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
    out: Vec<u8>,
    mask: [u8; 4],
    subs: Vec<Sub>,
    next_id: u64,
}

/// Runs client `i` from connect to close.
pub(super) async fn run(ctx: std::rc::Rc<Ctx>, i: u64) {
    let opened = {
        let Ok(_permit) = ctx.gate.acquire().await else {
            return;
        };
        if *ctx.stop.borrow() {
            return;
        }
        tokio::time::timeout(ctx.setup_timeout, connect(&ctx, i)).await
    };
    let (stream, pending) = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return ctx.connect_failed(e),
        Err(_) => {
            return ctx.connect_failed(format!("setup timed out after {:?}", ctx.setup_timeout))
        }
    };
    ctx.connected();
    let mut client = Client {
        stream,
        pending,
        out: Vec::new(),
        mask: rand::random(),
        subs: Vec::new(),
        next_id: 1,
    };
    let end = client.life(&ctx).await;
    let mut c = ctx.counters.borrow_mut();
    c.live -= 1;
    match end {
        End::Graceful => c.closes_graceful += 1,
        End::Abrupt => c.closes_abrupt += 1,
        End::Stopped => c.closed_at_stop += 1,
        End::Lost(e) => {
            c.dropped_by_server += 1;
            drop(c);
            ctx.errors.borrow_mut().add(e);
        }
    }
}

/// Connects from a rotating source address and does the handshake at `/ws`.
async fn connect(ctx: &Ctx, i: u64) -> Result<(TcpStream, Vec<u8>), String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(local) = ctx.sources.for_slot((i % ctx.source_slots) as u32)? {
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        socket
            .bind(local)
            .map_err(|e| format!("bind {}: {e}", local.ip()))?;
    }
    let mut stream = socket
        .connect(ctx.server.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut pending = Vec::new();
    let path = format!("{}/ws", ctx.server.base_path);
    ws::handshake(&mut stream, &ctx.server.host, &path, &mut pending).await?;
    Ok((stream, pending))
}

/// A random duration in `[lo, hi]`.
fn between(lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    Duration::from_secs_f64(rand::rng().random_range(lo.as_secs_f64()..=hi.as_secs_f64()))
}

impl Client {
    async fn life(&mut self, ctx: &Ctx) -> End {
        let mut stop = ctx.stop.clone();
        let die_at = Instant::now() + between(ctx.life.0, ctx.life.1);
        let k = rand::rng().random_range(ctx.subs.0..=ctx.subs.1);
        for _ in 0..k {
            self.subscribe_new(ctx);
        }
        let flip = || Instant::now() + between(ctx.flip_every / 2, ctx.flip_every * 3 / 2);
        let mut flip_at = flip();
        // What the handshake read past the response head.
        if !self.pending.is_empty() {
            let buf = std::mem::take(&mut self.pending);
            match self.frames(ctx, &buf) {
                Ok((used, Flow::Open)) => self.pending = buf[used..].to_vec(),
                Ok((_, Flow::Closed(e))) | Err(e) => return self.lost(ctx, e),
            }
        }
        loop {
            if !self.out.is_empty() {
                if let Err(e) = self.stream.write_all(&self.out).await {
                    return self.lost(ctx, format!("write: {e}"));
                }
                self.out.clear();
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return self.close(ctx, true, End::Stopped).await,
                _ = tokio::time::sleep_until(die_at) => {
                    let abrupt = rand::rng().random_bool(ctx.abrupt_share);
                    return if abrupt {
                        self.close(ctx, false, End::Abrupt).await
                    } else {
                        self.close(ctx, true, End::Graceful).await
                    };
                }
                _ = tokio::time::sleep_until(flip_at) => {
                    self.flip(ctx);
                    flip_at = flip();
                }
                ready = self.stream.readable() => {
                    if let Err(e) = ready {
                        return self.lost(ctx, format!("read: {e}"));
                    }
                    match self.read(ctx) {
                        Ok(Flow::Open) => {}
                        Ok(Flow::Closed(e)) | Err(e) => return self.lost(ctx, e),
                    }
                }
            }
        }
    }

    /// Leaves one confirmed channel and joins one it does not hold.
    fn flip(&mut self, ctx: &Ctx) {
        let active: Vec<usize> = (0..self.subs.len())
            .filter(|&i| self.subs[i].state == State::Active)
            .collect();
        if !active.is_empty() {
            let i = active[rand::rng().random_range(0..active.len())];
            let id = self.id();
            let ch = self.subs[i].ch as usize;
            self.command(id, "unsubscribe", &ctx.channels_json[ch]);
            let sub = &mut self.subs[i];
            sub.state = State::Leaving(id);
            sub.off = now_us();
        }
        self.subscribe_new(ctx);
    }

    /// Subscribes to a random pool channel it does not hold (in any state).
    fn subscribe_new(&mut self, ctx: &Ctx) {
        let n = ctx.channels_json.len() as u32;
        for _ in 0..8 {
            let ch = rand::rng().random_range(0..n);
            if self.subs.iter().any(|s| s.ch == ch) {
                continue;
            }
            let id = self.id();
            self.command(id, "subscribe", &ctx.channels_json[ch as usize]);
            self.subs.push(Sub {
                ch,
                state: State::Pending(id),
                on: 0,
                off: 0,
                runs: Runs::default(),
            });
            return;
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn command(&mut self, id: u64, method: &str, channel_json: &str) {
        let text =
            format!(r#"{{"id":{id},"method":"{method}","params":{{"channel":{channel_json}}}}}"#);
        ws::encode_frame(&mut self.out, ws::OP_TEXT, text.as_bytes(), self.mask);
    }

    /// Reads what is there (a few reads at most) and handles complete frames.
    fn read(&mut self, ctx: &Ctx) -> Result<Flow, String> {
        let mut scratch = ctx.scratch.borrow_mut();
        for _ in 0..READS_PER_WAKE {
            let n = match self.stream.try_read(&mut scratch[..]) {
                Ok(0) => return Ok(Flow::Closed("connection closed by server (EOF)".into())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flow::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let flow = if self.pending.is_empty() {
                let (used, flow) = self.frames(ctx, &scratch[..n])?;
                self.pending.extend_from_slice(&scratch[used..n]);
                flow
            } else {
                let mut buf = std::mem::take(&mut self.pending);
                buf.extend_from_slice(&scratch[..n]);
                let (used, flow) = self.frames(ctx, &buf)?;
                buf.drain(..used);
                self.pending = buf;
                flow
            };
            if let Flow::Closed(_) = flow {
                return Ok(flow);
            }
        }
        Ok(Flow::Open)
    }

    /// Handles the complete frames at the start of `data`; returns the bytes used.
    fn frames(&mut self, ctx: &Ctx, data: &[u8]) -> Result<(usize, Flow), String> {
        let mut at = 0;
        while let Some(frame) = ws::parse_frame(&data[at..]).map_err(|e| e.to_string())? {
            let payload = &data[at + frame.header_len..at + frame.total_len()];
            at += frame.total_len();
            match frame.opcode {
                ws::OP_TEXT => self.on_text(ctx, payload),
                ws::OP_PING => {
                    ctx.counters.borrow_mut().pings += 1;
                    ws::encode_frame(&mut self.out, ws::OP_PONG, payload, self.mask);
                }
                ws::OP_CLOSE => return Ok((at, Flow::Closed(ws::describe_close(payload)))),
                _ => ctx.counters.borrow_mut().other_messages += 1,
            }
        }
        Ok((at, Flow::Open))
    }

    fn on_text(&mut self, ctx: &Ctx, msg: &[u8]) {
        if msg.starts_with(br#"{"push":"message""#) {
            match parse_push(msg) {
                Some((seq, ch)) => self.on_message(ctx, ch, seq),
                None => ctx.counters.borrow_mut().other_messages += 1,
            }
        } else if let Some(id) = reply_id(msg) {
            self.on_reply(ctx, id, msg);
        } else {
            ctx.counters.borrow_mut().other_messages += 1;
        }
    }

    fn on_message(&mut self, ctx: &Ctx, ch: u32, seq: u64) {
        let mut c = ctx.counters.borrow_mut();
        c.deliveries += 1;
        let Some(sub) = self.subs.iter_mut().find(|s| s.ch == ch) else {
            c.strays += 1;
            return;
        };
        match sub.runs.observe(seq) {
            Order::Next => {}
            Order::Gap => c.gaps += 1,
            Order::Reordered => c.reordered += 1,
            Order::Duplicate => c.duplicates += 1,
        }
    }

    fn on_reply(&mut self, ctx: &Ctx, id: u64, msg: &[u8]) {
        let error = memmem::find(msg, b"\"error\"").is_some();
        let Some(i) = self
            .subs
            .iter()
            .position(|s| matches!(s.state, State::Pending(x) | State::Leaving(x) if x == id))
        else {
            ctx.counters.borrow_mut().other_messages += 1;
            return;
        };
        let mut c = ctx.counters.borrow_mut();
        match self.subs[i].state {
            State::Pending(_) if error => {
                c.subscribe_refused += 1;
                drop(c);
                self.subs.swap_remove(i);
                let shown: String = String::from_utf8_lossy(msg).chars().take(160).collect();
                ctx.errors
                    .borrow_mut()
                    .add(format!("subscribe refused: {shown}"));
            }
            State::Pending(_) => {
                c.subscribes += 1;
                let sub = &mut self.subs[i];
                sub.state = State::Active;
                sub.on = now_us();
            }
            _ => {
                c.unsubscribes += 1;
                if error {
                    c.unsubscribe_refused += 1;
                }
                drop(c);
                let sub = self.subs.swap_remove(i);
                ctx.record(sub.ch, sub.on, sub.off, sub.runs);
            }
        }
    }

    /// Ends every subscription at `at` (those leaving keep their end).
    fn end_subscriptions(&mut self, ctx: &Ctx, at: u64) {
        for sub in self.subs.drain(..) {
            match sub.state {
                State::Pending(_) => {}
                State::Active => ctx.record(sub.ch, sub.on, at, sub.runs),
                State::Leaving(_) => ctx.record(sub.ch, sub.on, sub.off, sub.runs),
            }
        }
    }

    fn lost(&mut self, ctx: &Ctx, reason: String) -> End {
        self.end_subscriptions(ctx, now_us());
        End::Lost(reason)
    }

    /// Closes: a close frame and a bounded wait for the server's (reading
    /// what still arrives), or a reset (`SO_LINGER` 0).
    async fn close(&mut self, ctx: &Ctx, graceful: bool, end: End) -> End {
        let at = now_us();
        for sub in &mut self.subs {
            if sub.state == State::Active {
                sub.off = at;
                sub.state = State::Leaving(0);
            }
        }
        if !graceful {
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
            self.end_subscriptions(ctx, at);
            return end;
        }
        ws::encode_frame(
            &mut self.out,
            ws::OP_CLOSE,
            &1000u16.to_be_bytes(),
            self.mask,
        );
        let wait = async {
            if self.stream.write_all(&self.out).await.is_err() {
                return;
            }
            self.out.clear();
            loop {
                if self.stream.readable().await.is_err() {
                    return;
                }
                match self.read(ctx) {
                    Ok(Flow::Open) => {}
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, wait).await;
        self.end_subscriptions(ctx, at);
        end
    }
}

/// `(seq, channel)` from a message push carrying `"data":"<seq>:<ts>:<ch>:..."`.
fn parse_push(msg: &[u8]) -> Option<(u64, u32)> {
    let at = memmem::find(msg, b"\"data\":\"")? + 8;
    let rest = &msg[at..];
    let (seq, a) = number(rest)?;
    let (_ts, b) = number(&rest[a..])?;
    let (ch, _) = number(&rest[a + b..])?;
    Some((seq, u32::try_from(ch).ok()?))
}

/// The id of a reply `{"id":<n>,...}`.
fn reply_id(msg: &[u8]) -> Option<u64> {
    let rest = msg.strip_prefix(b"{\"id\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Decimal digits then `:`; the value and the bytes used.
fn number(b: &[u8]) -> Option<(u64, usize)> {
    let end = b.iter().take(21).position(|&c| c == b':')?;
    if end == 0 {
        return None;
    }
    let value = std::str::from_utf8(&b[..end]).ok()?.parse().ok()?;
    Some((value, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pushes_and_replies() {
        let push = br#"{"push":"message","channel":"soak-3","data":"17:1700000000000000:3:xxxx"}"#;
        assert_eq!(parse_push(push), Some((17, 3)));
        assert_eq!(
            parse_push(br#"{"push":"message","channel":"c","data":"1:2"}"#),
            None
        );
        assert_eq!(
            parse_push(br#"{"push":"message","channel":"c","data":{"a":1}}"#),
            None
        );
        assert_eq!(parse_push(br#"{"push":"message","data":"a:2:3:"}"#), None);
        assert_eq!(reply_id(br#"{"id":42,"result":{}}"#), Some(42));
        assert_eq!(reply_id(br#"{"id":7,"error":{"code":107}}"#), Some(7));
        assert_eq!(reply_id(br#"{"id":null,"error":{}}"#), None);
        assert_eq!(reply_id(br#"{"push":"disconnect"}"#), None);
    }
}
