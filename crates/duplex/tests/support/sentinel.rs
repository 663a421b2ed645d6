//! A Redis Sentinel group owned by one test: a master, two replicas and
//! three sentinels (`redis-server <conf> --sentinel`, quorum 2, a server
//! down after 1 s), on ports held for them, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use socket2::Socket;

use super::redis_server::hold_free_port;

/// The name the sentinels monitor.
pub const SERVICE: &str = "mymaster";

/// One redis-server process (a data server or a sentinel).
struct Process {
    port: u16,
    _hold: Socket,
    child: Option<Child>,
}

impl Process {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three data servers (one master) watched by three sentinels.
pub struct SentinelGroup {
    servers: Vec<Process>,
    sentinels: Vec<Process>,
    dir: PathBuf,
}

fn spawn(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed")
}

/// A blocking connection to `127.0.0.1:<port>`, once it answers.
fn connection(port: u16) -> Option<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection_with_timeout(Duration::from_millis(200))
        .ok()
}

/// Polls `check` every 20 ms until true; panics with `what` after `limit`.
fn wait(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `field:value` from an `INFO` or `SENTINEL MASTER` answer.
fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    let mut conn = connection(port)?;
    let info: String = redis::cmd("INFO").arg(section).query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

impl SentinelGroup {
    /// Starts the group and waits until every sentinel knows both
    /// replicas and the two other sentinels (a failover needs them).
    pub fn start() -> SentinelGroup {
        let dir = std::env::temp_dir().join(format!(
            "duplex-sentinel-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the sentinels");
        let mut group = SentinelGroup {
            servers: Vec::new(),
            sentinels: Vec::new(),
            dir,
        };
        let master = group.start_server(None);
        for _ in 0..2 {
            group.start_server(Some(master));
        }
        for port in group.server_ports().into_iter().skip(1) {
            wait("replica in sync", Duration::from_secs(10), || {
                info_field(port, "replication", "master_link_status").as_deref() == Some("up")
            });
        }
        for _ in 0..3 {
            group.start_sentinel(master);
        }
        for port in group.sentinel_ports() {
            wait("sentinel sees the group", Duration::from_secs(20), || {
                let Some(mut conn) = connection(port) else {
                    return false;
                };
                let fields: Vec<String> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(SERVICE)
                    .query(&mut conn)
                    .unwrap_or_default();
                let get = |name: &str| {
                    fields
                        .iter()
                        .position(|f| f == name)
                        .and_then(|i| fields.get(i + 1))
                        .cloned()
                };
                get("num-slaves").as_deref() == Some("2")
                    && get("num-other-sentinels").as_deref() == Some("2")
            });
        }
        group
    }

    fn start_server(&mut self, master: Option<u16>) -> u16 {
        let (hold, port) = hold_free_port();
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A replica's full sync writes an RDB file: in the group's own directory.
        args.extend(["--dir".into(), self.dir.display().to_string()]);
        args.extend(["--dbfilename".into(), format!("dump-{port}.rdb")]);
        if let Some(master) = master {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        }
        let child = spawn(&args);
        wait("redis-server answers", Duration::from_secs(10), || {
            connection(port).is_some()
        });
        self.servers.push(Process {
            port,
            _hold: hold,
            child: Some(child),
        });
        port
    }

    fn start_sentinel(&mut self, master: u16) {
        let (hold, port) = hold_free_port();
        let conf = self.dir.join(format!("sentinel-{port}.conf"));
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 5000\n\
             sentinel parallel-syncs {SERVICE} 2\n",
            dir = self.dir.display()
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let child = spawn(&[conf.display().to_string(), "--sentinel".into()]);
        wait("sentinel answers", Duration::from_secs(10), || {
            connection(port).is_some()
        });
        self.sentinels.push(Process {
            port,
            _hold: hold,
            child: Some(child),
        });
    }

    fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// `redis+sentinel://` naming all three sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", hosts.join(","))
    }

    /// The master's port, as a data server itself says (`ROLE`), among
    /// the ones running.
    pub fn master(&self) -> Option<u16> {
        self.servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| s.port)
            .find(|&port| info_field(port, "replication", "role").as_deref() == Some("master"))
    }

    /// `SENTINEL FAILOVER` (a planned switch); returns once another
    /// server is master, the sentinels name it, and the old master is a
    /// replica (Sentinel closed its clients' connections then).
    pub fn failover(&self) -> u16 {
        let old = self.master().expect("a master");
        let mut conn = connection(self.sentinels[0].port).expect("sentinel");
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SERVICE)
            .query(&mut conn)
            .expect("SENTINEL FAILOVER");
        let new = self.wait_for_new_master(old);
        wait("the old master demoted", Duration::from_secs(30), || {
            info_field(old, "replication", "role").as_deref() == Some("slave")
        });
        new
    }

    /// Kills the master (SIGKILL); returns once the sentinels promoted
    /// another server.
    pub fn kill_master(&mut self) -> u16 {
        let old = self.master().expect("a master");
        if let Some(server) = self.servers.iter_mut().find(|s| s.port == old) {
            server.kill();
        }
        self.wait_for_new_master(old)
    }

    fn wait_for_new_master(&self, old: u16) -> u16 {
        let mut new = None;
        wait("a new master", Duration::from_secs(30), || {
            new = self
                .master()
                .filter(|&p| p != old && self.named_by_sentinels() == Some(p));
            new.is_some()
        });
        new.expect("checked")
    }

    /// The master port the first sentinel names.
    fn named_by_sentinels(&self) -> Option<u16> {
        let mut conn = connection(self.sentinels[0].port)?;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SERVICE)
            .query(&mut conn)
            .ok()?;
        Some(port)
    }

    /// An async connection to a data server, as a backend would use.
    pub async fn connection(&self, port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a data server")
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for process in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            process.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
