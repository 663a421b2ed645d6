//! A TCP proxy that can black-hole traffic without closing anything: the
//! silent dead connection (no FIN, no RST) that only a health check catches.
//! It can also stall traffic: bytes wait (the reading side stops, so TCP
//! pushes back) and flow, late and whole, once the stall lifts, as over a
//! link that lost packets for a while. And it can silently kill only the
//! connections open now, new ones passing (a NAT or firewall that lost its
//! flow table).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Dropped: lost for good.
    Blackhole,
    /// Held until the mode changes.
    Stall,
    /// The server's bytes held until the mode changes, the client's
    /// passing: requests are carried out, their replies come late.
    StallReplies,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
    /// Per connection forwarded so far: set, its bytes are dropped for good.
    flows: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<port> to 127.0.0.1:<target>.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(watch::Sender::new(Mode::Forward));
        let modes = Arc::clone(&mode);
        let flows = Arc::new(Mutex::new(Vec::new()));
        let known = Arc::clone(&flows);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let dead = Arc::new(AtomicBool::new(false));
                known.lock().expect("not poisoned").push(Arc::clone(&dead));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, modes.subscribe(), Arc::clone(&dead), false));
                tokio::spawn(pump(sr, cw, modes.subscribe(), dead, true));
            }
        });
        Proxy {
            port,
            mode,
            flows,
            task,
        }
    }

    /// Black-holes, for good, every connection open now (no FIN, no RST);
    /// connections opened from now on pass.
    pub fn kill_open_connections(&self) {
        for dead in self.flows.lock().expect("not poisoned").drain(..) {
            dead.store(true, Ordering::SeqCst);
        }
    }

    /// Drops every byte from now on, keeping the sockets open.
    pub fn blackhole(&self, on: bool) {
        self.mode
            .send_replace(if on { Mode::Blackhole } else { Mode::Forward });
    }

    /// Holds every byte from now on until `stall(false)`, which lets them
    /// through, late but none lost.
    pub fn stall(&self, on: bool) {
        self.mode
            .send_replace(if on { Mode::Stall } else { Mode::Forward });
    }

    /// Holds what the server sends until `stall_replies(false)`, while
    /// what the client sends goes through: the server acts at once, the
    /// client hears of it late.
    pub fn stall_replies(&self, on: bool) {
        self.mode.send_replace(if on {
            Mode::StallReplies
        } else {
            Mode::Forward
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    dead: Arc<AtomicBool>,
    from_server: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let held = |m: &Mode| *m == Mode::Stall || (from_server && *m == Mode::StallReplies);
        let now = match mode.wait_for(|m| !held(m)).await {
            Ok(now) => *now,
            Err(_) => return,
        };
        if now == Mode::Blackhole || dead.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
