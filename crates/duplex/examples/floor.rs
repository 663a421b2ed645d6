//! The physical floor for one-write-per-delivery fan-out on this machine:
//! the least a WebSocket broadcaster can do. It accepts WebSocket clients on
//! any path, subscribes to one Redis channel, and for every Redis message
//! writes one pre-encoded frame to every socket with one `write` syscall
//! each, from one task. No queues, no hub, no protocol: what Duplex is
//! compared against in BENCHMARKS.md (target: Duplex <= 1.2x its CPU per
//! delivery). A socket that is full is skipped and counted (the floor does
//! not buffer), so compare it only at rates where it reports no skips.
//!
//! Usage: `cargo run --release --example floor -- --listen 127.0.0.1:1235 --redis redis://127.0.0.1:6379 --channel bench`

use std::net::SocketAddr;
use std::sync::Arc;

use duplex_protocol::ws::{accept_key, encode_frame, OpCode};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Sockets = Arc<Mutex<Vec<Arc<TcpStream>>>>;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = arg("--listen", "127.0.0.1:1235").parse()?;
    let redis_url = arg("--redis", "redis://127.0.0.1:6379");
    let channel = arg("--channel", "bench");
    let sockets: Sockets = Arc::default();
    let listener = TcpListener::bind(listen).await?;
    let accepting = Arc::clone(&sockets);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let sockets = Arc::clone(&accepting);
            tokio::spawn(async move {
                if let Some(tcp) = handshake(tcp).await {
                    let tcp = Arc::new(tcp);
                    sockets.lock().push(Arc::clone(&tcp));
                    drain(&tcp).await;
                    sockets.lock().retain(|s| !Arc::ptr_eq(s, &tcp));
                }
            });
        }
    });
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    let mut messages = pubsub.into_on_message();
    let (mut delivered, mut skipped) = (0u64, 0u64);
    let mut report = tokio::time::interval(std::time::Duration::from_secs(5));
    eprintln!("floor listening on {listen}, channel {channel}");
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { break };
                let frame = encode_frame(OpCode::Text, msg.get_payload_bytes());
                let targets: Vec<Arc<TcpStream>> = sockets.lock().clone();
                for socket in targets {
                    match socket.try_write(&frame) {
                        Ok(n) if n == frame.len() => delivered += 1,
                        _ => skipped += 1,
                    }
                }
            }
            _ = report.tick() => eprintln!("delivered {delivered}, skipped {skipped}"),
        }
    }
    Ok(())
}

/// Minimal server handshake: read the request head, answer 101.
async fn handshake(mut tcp: TcpStream) -> Option<TcpStream> {
    let _ = tcp.set_nodelay(true);
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 8192 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Sec-WebSocket-Key:")
                .or_else(|| l.strip_prefix("sec-websocket-key:"))
        })?
        .trim()
        .to_string();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    );
    tcp.write_all(response.as_bytes()).await.ok()?;
    Some(tcp)
}

/// Reads and ignores whatever the client sends, until it goes away.
async fn drain(tcp: &TcpStream) {
    let mut buf = [0u8; 512];
    loop {
        if tcp.readable().await.is_err() {
            return;
        }
        match tcp.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
