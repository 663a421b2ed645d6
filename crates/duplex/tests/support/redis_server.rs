//! A private redis-server on a port held for it, killed on drop.
//!
//! The port is never free for anyone else from the moment it is picked:
//! the harness binds it (SO_REUSEADDR, not listening) and keeps that
//! socket for the server's whole life, outages included. The kernel then
//! hands the port to no other `bind(…:0)` and to no outgoing connection,
//! while redis-server (which also sets SO_REUSEADDR) may still listen on
//! it, and a connect while it is down is refused, as with nothing there.
//! On top, a start only counts once `INFO server` answers with the pid of
//! the child this harness spawned: no test ever talks to another test's
//! Redis.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// A redis-server child process owned by one test.
pub struct RedisServer {
    pub port: u16,
    /// Keeps the port ours while the server is down or starting.
    _hold: Socket,
    child: Option<Child>,
    /// Where a persistent server keeps its append-only file across
    /// restarts ([`RedisServer::start_persistent`]); `None`: nothing kept.
    dir: Option<PathBuf>,
}

/// Binds a free loopback port without listening on it.
pub fn hold_free_port() -> (Socket, u16) {
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

/// Why a spawn did not give a server of ours.
#[derive(Debug)]
enum SpawnError {
    /// The child exited (e.g. it could not bind): worth another port.
    Exited(String),
    /// It never answered in time.
    Silent,
}

impl RedisServer {
    /// Starts redis-server on a port held for it and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Like [`Self::start`], but every write is kept (`appendonly yes`,
    /// `appendfsync always`: a write is on disk before Redis answers it),
    /// in a directory of its own that outlives kills and restarts, so a
    /// restarted server comes back with everything it acknowledged.
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Self {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let (hold, port) = hold_free_port();
            let dir = persistent.then(|| {
                let dir = std::env::temp_dir()
                    .join(format!("duplex-redis-{}-{port}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("a directory for redis's data");
                dir
            });
            let mut server = RedisServer {
                port,
                _hold: hold,
                child: None,
                dir,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => failures.push(format!("port {port}: {e:?}")),
            }
        }
        panic!("redis-server did not start: {failures:?}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs redis-server on `self.port` until `INFO server` answers with
    /// this child's pid.
    fn spawn(&mut self) -> Result<(), SpawnError> {
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string()]).args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        match &self.dir {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                // DEBUG POPULATE: a dataset that takes a while to load.
                .args(["--enable-debug-command", "local", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the README's test command installs it)");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(SpawnError::Exited(status.to_string()));
            }
            if self.answering_pid() == Some(pid) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Silent);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the redis-server answering on our port, if one does.
    fn answering_pid(&self) -> Option<u32> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// Kills the server at once (SIGKILL), as an outage would. The port
    /// stays held: connects are refused until [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts it again on the same port: empty, or with everything it
    /// acknowledged when started with [`Self::start_persistent`].
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not restart on port {}: {e:?}", self.port);
        }
    }

    /// A plain Redis connection, as a backend would use.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// `PUBLISH channel payload` from a plain Redis client; returns receivers.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> i64 {
        let mut conn = self.connection().await;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .expect("PUBLISH")
    }

    /// Number of Redis subscribers of a channel (one per node that wants it).
    pub async fn numsub(&self, channel: &str) -> i64 {
        let mut conn = self.connection().await;
        let reply: (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .expect("PUBSUB NUMSUB");
        reply.1
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
