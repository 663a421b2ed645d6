//! A private nats-server on a port held for it, killed on drop: the same
//! port-holding scheme as [`super::redis_server`] (nats-server, written in
//! Go, listens with SO_REUSEADDR too). A start only counts once the
//! server's INFO line carries the unique name this harness gave that
//! child: no test ever talks to another test's NATS.
//!
//! JetStream is on (`-js`), its store (`-sd`) in a directory of the
//! server's own that outlives kills and restarts (so streams come back
//! with what they acknowledged) and is removed on drop.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// Where Debian's `nats-server` package puts the binary.
const BINARY: &str = "/usr/sbin/nats-server";

static STARTS: AtomicU64 = AtomicU64::new(0);

/// A nats-server child process owned by one test.
pub struct NatsServer {
    pub port: u16,
    _hold: Socket,
    child: Option<Child>,
    /// JetStream's store.
    store: PathBuf,
}

fn hold_free_port() -> (Socket, u16) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    socket.bind(&any.into()).expect("bind a free port");
    let port = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .expect("bound port");
    (socket, port)
}

impl NatsServer {
    /// Starts nats-server on a port held for it and waits until it answers.
    pub fn start() -> Self {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let (hold, port) = hold_free_port();
            let store =
                std::env::temp_dir().join(format!("duplex-nats-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&store);
            std::fs::create_dir_all(&store).expect("a directory for JetStream's store");
            let mut server = NatsServer {
                port,
                _hold: hold,
                child: None,
                store,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        panic!("nats-server did not start: {failures:?}");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let name = format!(
            "duplex-test-{}-{}-{}",
            std::process::id(),
            self.port,
            STARTS.fetch_add(1, Ordering::Relaxed)
        );
        let mut child = Command::new(BINARY)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-n", &name])
            .arg("-js")
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "nats-server must be installed (scripts/test.sh installs Debian's nats-server)",
            );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited: {status}"));
            }
            if self.answering_name().is_some_and(|n| n == name) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("did not answer in time".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `server_name` in the INFO line of whatever listens on our port.
    fn answering_name(&self) -> Option<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?).ok()?;
        info["server_name"].as_str().map(str::to_string)
    }

    /// Kills the server at once (SIGKILL), as an outage would. The port
    /// stays held: connects are refused until [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port: core NATS keeps nothing, JetStream
    /// streams come back from the store.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("nats-server did not restart on port {}: {e}", self.port);
        }
    }

    /// Starts it again on the same port with an empty JetStream store, as
    /// a server whose disk was lost.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
        std::fs::create_dir_all(&self.store).expect("a directory for JetStream's store");
        if let Err(e) = self.spawn() {
            panic!("nats-server did not restart on port {}: {e}", self.port);
        }
    }

    /// A plain NATS client, as a backend would use.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats")
    }

    /// `nats pub <subject> <payload>` from a plain client, flushed.
    pub async fn publish(&self, subject: &str, payload: &[u8]) {
        let client = self.client().await;
        client
            .publish(subject.to_string(), bytes::Bytes::copy_from_slice(payload))
            .await
            .expect("publish");
        client.flush().await.expect("flush");
    }
}

/// One upstream entry as a worker reads it: its fields in order.
pub type Entry = Vec<(String, Vec<u8>)>;

impl NatsServer {
    /// Every entry of upstream stream `stream` (under `prefix`), oldest
    /// first, read back by sequence from its JetStream stream.
    pub async fn upstream_entries(&self, prefix: &str, stream: &str) -> Vec<Entry> {
        let context = async_nats::jetstream::new(self.client().await);
        let name = duplex::broker::nats::upstream::stream_name(prefix, stream);
        let mut stream = context.get_stream(&name).await.expect("the stream exists");
        let state = stream.info().await.expect("stream info").state.clone();
        let mut entries = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(seq).await.expect("an entry");
            entries.push(decode_entry(&message.headers, &message.payload));
        }
        entries
    }
}

/// An entry's fields from a JetStream message, by the rule of
/// docs/UPSTREAM.md ("On NATS"): `Duplex-Fields` gives the names in
/// order; `data` is the payload; any other field is the header
/// `Duplex-<field>`, or `Duplex-<field>-Base64` in base64.
pub fn decode_entry(headers: &async_nats::HeaderMap, payload: &[u8]) -> Entry {
    use base64::Engine as _;
    let names = headers
        .get("Duplex-Fields")
        .expect("Duplex-Fields")
        .as_str();
    let mut taken: std::collections::HashMap<String, usize> = Default::default();
    names
        .split(',')
        .map(|name| {
            if name == "data" {
                return (name.to_string(), payload.to_vec());
            }
            let nth = taken.entry(name.to_string()).or_default();
            let plain = format!("Duplex-{name}");
            let value = match headers.get_all(plain.as_str()).nth(*nth) {
                Some(value) => value.as_str().as_bytes().to_vec(),
                None => {
                    let encoded = format!("{plain}-Base64");
                    let value = headers.get_all(encoded.as_str()).next().expect("a header");
                    base64::engine::general_purpose::STANDARD
                        .decode(value.as_str())
                        .expect("base64")
                }
            };
            *nth += 1;
            (name.to_string(), value)
        })
        .collect()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
