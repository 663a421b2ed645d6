//! A private Redis Cluster: six redis-servers (three masters, a replica
//! each) in a temp dir, made into one cluster with `redis-cli --cluster
//! create`, killed on drop.
//!
//! Each node holds its port and its cluster bus port (port + 10000) from
//! the moment they are picked, as `redis_server` does for one server. A
//! watchdog shell kills every node once the test process is gone, so a
//! cluster shared by a whole test binary (held in a static) never outlives
//! it. `cluster-node-timeout` is 1 s so a killed master's replica takes
//! over within a few seconds.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// Masters, each with one replica.
const MASTERS: usize = 3;

/// One node of the cluster.
struct ClusterNode {
    port: u16,
    _hold: [Socket; 2],
    child: Option<Child>,
}

/// A running Redis Cluster owned by one test (or one test binary).
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: PathBuf,
    watchdog: Option<Child>,
}

fn hold(port: u16) -> Option<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    socket.set_reuse_address(true).ok()?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    socket.bind(&addr.into()).ok()?;
    Some(socket)
}

/// A free port below 55535 whose bus port (+10000) is free too, both held.
fn hold_pair() -> (u16, [Socket; 2]) {
    for _ in 0..200 {
        let Some(any) = hold(0) else { continue };
        let port = any
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .unwrap_or(0);
        if port == 0 || port >= 55535 {
            continue;
        }
        if let Some(bus) = hold(port + 10000) {
            return (port, [any, bus]);
        }
    }
    panic!("no free port pair for a cluster node");
}

fn run(program: &str, args: &[String]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    /// Starts six nodes and makes them one cluster; returns once every
    /// node says `cluster_state:ok` and agrees on the masters.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "duplex-cluster-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
            watchdog: None,
        };
        for _ in 0..MASTERS * 2 {
            let (port, hold) = hold_pair();
            cluster.nodes.push(ClusterNode {
                port,
                _hold: hold,
                child: None,
            });
        }
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        cluster.watch();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        run("redis-cli", &args);
        cluster.wait_ok();
        cluster
    }

    /// One shared cluster for every caller that holds it; started again
    /// once all of them dropped it.
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cluster) = slot.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(Self::start());
        *slot = Arc::downgrade(&cluster);
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let port = self.nodes[i].port.to_string();
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--cluster-enabled", "yes"])
            .args([
                "--cluster-node-timeout",
                "1000",
                "--cluster-replica-validity-factor",
                "0",
            ])
            .arg("--cluster-config-file")
            .arg(&conf)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ask(self.nodes[i].port, "").is_none() {
            assert!(
                Instant::now() < deadline,
                "cluster node {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A shell that kills every node once this process is gone.
    fn watch(&mut self) {
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {} 2>/dev/null",
            std::process::id(),
            pids.join(" ")
        );
        self.watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
    }

    /// `CLUSTER <sub>` (or `PING` when `sub` is empty) on the node at `port`.
    fn ask(&self, port: u16, sub: &str) -> Option<String> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(300))
            .ok()?;
        let cmd = if sub.is_empty() {
            redis::cmd("PING")
        } else {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg(sub);
            cmd
        };
        cmd.query::<String>(&mut conn).ok()
    }

    /// Waits until every live node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                self.ask(n.port, "INFO")
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+cluster://` URL naming every node, as an operator writes it.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `redis://` URLs of every node (for a cluster-aware client).
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// A cluster-aware client's connection (redis-rs cluster), as a backend uses.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.node_urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// A plain connection to one node by port.
    pub async fn node_connection(&self, port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a cluster node")
    }

    /// The port of the master serving `slot` now, as that node's `CLUSTER
    /// SLOTS` says (asked of any live node).
    pub async fn master_of(&self, slot: u16) -> u16 {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let mut conn = self.node_connection(node.port).await;
            let Ok(ranges) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Vec<redis::Value>>(&mut conn)
                .await
            else {
                continue;
            };
            for range in ranges {
                let redis::Value::Array(items) = range else {
                    continue;
                };
                let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) =
                    (items.first(), items.get(1))
                else {
                    continue;
                };
                if (*lo..=*hi).contains(&i64::from(slot)) {
                    if let Some(redis::Value::Array(master)) = items.get(2) {
                        if let Some(redis::Value::Int(port)) = master.get(1) {
                            return u16::try_from(*port).expect("a port");
                        }
                    }
                }
            }
        }
        panic!("no node knows who serves slot {slot}");
    }

    /// The ports of the live masters (by `ROLE`).
    pub async fn masters(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let mut conn = self.node_connection(node.port).await;
            if let Ok(redis::Value::Array(role)) = redis::cmd("ROLE")
                .query_async::<redis::Value>(&mut conn)
                .await
            {
                if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                    out.push(node.port);
                }
            }
        }
        out
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The node id (`CLUSTER MYID`) of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        self.ask(port, "MYID").expect("CLUSTER MYID")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
