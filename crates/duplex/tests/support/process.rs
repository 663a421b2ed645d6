//! A node in its own process (the real binary): for tests that kill it, signal
//! it, or read its memory from /proc without the test's own allocations mixed in.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A running `duplex serve`; SIGKILLed on drop.
pub struct NodeProcess {
    pub addr: SocketAddr,
    pub child: Child,
    /// Where its stderr (the log) goes, when captured.
    log: Option<std::path::PathBuf>,
}

impl NodeProcess {
    /// Starts `duplex serve --listen <free port> <args>` and waits until it answers HTTP.
    pub async fn start(args: &[&str]) -> NodeProcess {
        Self::spawn(args, None, None).await
    }

    /// `duplex serve --redis <url>`, once it is connected to Redis.
    pub async fn on_redis(url: &str) -> NodeProcess {
        let node = Self::start(&["--redis", url]).await;
        super::eventually("node connected to redis", || async {
            reqwest::get(node.http("/health"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        node
    }

    /// Like [`NodeProcess::start`], with its log kept for [`NodeProcess::log`].
    pub async fn start_logged(args: &[&str]) -> NodeProcess {
        let path = std::env::temp_dir().join(format!(
            "duplex-test-{}-{}.log",
            std::process::id(),
            rand_suffix()
        ));
        Self::spawn(args, Some(path), None).await
    }

    /// Like [`NodeProcess::start_logged`], under an open-file limit of
    /// `nofile` (soft and hard, set by util-linux `prlimit`, which then execs
    /// the node: the pid is the node's).
    pub async fn start_with_fd_limit(nofile: u64, args: &[&str]) -> NodeProcess {
        let path = std::env::temp_dir().join(format!(
            "duplex-test-{}-{}.log",
            std::process::id(),
            rand_suffix()
        ));
        Self::spawn(args, Some(path), Some(nofile)).await
    }

    /// How many file descriptors the node has open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Like [`NodeProcess::start`], on `addr`: the same address as a node
    /// that is gone, for clients that must find it again.
    pub async fn start_on(addr: SocketAddr, args: &[&str]) -> NodeProcess {
        Self::spawn_on(addr, args, None, None).await
    }

    async fn spawn(
        args: &[&str],
        log: Option<std::path::PathBuf>,
        nofile: Option<u64>,
    ) -> NodeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::spawn_on(([127, 0, 0, 1], port).into(), args, log, nofile).await
    }

    async fn spawn_on(
        addr: SocketAddr,
        args: &[&str],
        log: Option<std::path::PathBuf>,
        nofile: Option<u64>,
    ) -> NodeProcess {
        let mut command = match nofile {
            None => Command::new(env!("CARGO_BIN_EXE_duplex")),
            Some(n) => {
                let mut prlimit = Command::new("prlimit");
                prlimit.arg(format!("--nofile={n}:{n}"));
                prlimit.arg(env!("CARGO_BIN_EXE_duplex"));
                prlimit
            }
        };
        let child = command
            .args(["serve", "--listen", &addr.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(match &log {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
                None => Stdio::null(),
            })
            .spawn()
            .expect("spawn duplex");
        let node = NodeProcess { addr, child, log };
        super::eventually("node process answers HTTP", || async {
            reqwest::get(node.http("/health")).await.is_ok()
        })
        .await;
        node
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn info(&self) -> Value {
        reqwest::get(self.http("/api/info"))
            .await
            .expect("GET /api/info")
            .json()
            .await
            .expect("info JSON")
    }

    /// A counter from `/api/info`'s `stats`.
    pub async fn stat(&self, name: &str) -> u64 {
        self.info().await["stats"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Current resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// Highest resident memory since start, KiB: catches a spike that is gone
    /// by the time the test looks.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends a signal (`-HUP`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal}");
    }

    /// Whether the process has exited (reaped if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Kills with SIGKILL and reaps.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        if let Some(path) = &self.log {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
