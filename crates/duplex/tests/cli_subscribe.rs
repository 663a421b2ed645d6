//! `duplex subscribe` as a user runs it against a node in its own process:
//! it stays subscribed across a graceful restart, and it presents a token.

mod support;

use std::process::Stdio;

use support::process::NodeProcess;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout};

/// A 32-byte secret: what a node accepts without a warning.
const SECRET: &str = "cli-subscribe-secret-of-32-bytes";

/// A running `duplex subscribe`, its stdout (messages) and stderr (status) read line by line.
struct Subscriber {
    _child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Subscriber {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Subscriber {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
            .arg("subscribe")
            .args(args)
            .env_remove("DUPLEX_TOKEN")
            .env_remove("DUPLEX_TOKEN_SECRET")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn duplex subscribe");
        Subscriber {
            stdout: BufReader::new(child.stdout.take().expect("stdout")).lines(),
            stderr: BufReader::new(child.stderr.take().expect("stderr")).lines(),
            _child: child,
        }
    }

    /// The next message line.
    async fn message(&mut self) -> String {
        next_line(&mut self.stdout, "a message on stdout").await
    }

    /// Reads status lines until one contains `needle`; returns it.
    async fn status(&mut self, needle: &str) -> String {
        loop {
            let line = next_line(&mut self.stderr, needle).await;
            if line.contains(needle) {
                return line;
            }
        }
    }
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut Lines<R>, what: &str) -> String {
    match tokio::time::timeout(support::WAIT, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        other => panic!("waiting for {what}: {other:?}"),
    }
}

async fn subscribed(node: &NodeProcess) {
    support::eventually("the subscriber is subscribed", || async {
        node.info().await["subscriptions"] == 1
    })
    .await;
}

async fn publish(node: &NodeProcess, channel: &str, data: &str) {
    let (status, body) = support::post_json(
        &node.http("/api/publish"),
        &serde_json::json!({"channel": channel, "data": data}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A node restarted with SIGTERM closes its clients with 1001: the
/// subscriber retries while the port is closed and picks up the new node.
/// (It used to exit 1 on the 1001: "server closed the connection: 1001".)
#[tokio::test]
async fn subscribe_stays_subscribed_across_a_graceful_restart() {
    let node = NodeProcess::start(&[]).await;
    let addr = node.addr;
    let mut sub = Subscriber::start(&["news", "--server", &node.ws("")], &[]);
    subscribed(&node).await;
    publish(&node, "news", "before").await;
    assert_eq!(sub.message().await, "before");

    node.terminate();
    sub.status("1001").await;
    sub.status("cannot connect").await;
    let mut node = node;
    support::eventually("the old node has exited", || {
        let exited = node.child.try_wait().ok().flatten().is_some();
        async move { exited }
    })
    .await;

    let node = NodeProcess::start_on(addr, &[]).await;
    subscribed(&node).await;
    publish(&node, "news", "after").await;
    assert_eq!(sub.message().await, "after");
}

/// With token auth on, `subscribe` mints a token for `--user` from the
/// secret (flag or DUPLEX_TOKEN_SECRET), or presents `--token` /
/// DUPLEX_TOKEN; a user may read its own `#user:` channel. (There was no
/// way to pass a token: every command got error 112.)
#[tokio::test]
async fn subscribe_presents_a_token() {
    let node = NodeProcess::start(&["--token-secret", SECRET]).await;
    let server = node.ws("");
    let mut minted = Subscriber::start(
        &["#user:42", "--server", &server, "--user", "42"],
        &[("DUPLEX_TOKEN_SECRET", SECRET)],
    );
    minted.status("subscribed to #user:42").await;

    let token = std::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["token", "--user", "7", "--token-secret", SECRET])
        .output()
        .expect("duplex token");
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).expect("token text");
    let mut given = Subscriber::start(
        &["news", "--server", &server],
        &[("DUPLEX_TOKEN", token.trim())],
    );
    given.status("subscribed to news").await;

    publish(&node, "#user:42", "for 42").await;
    publish(&node, "news", "for all").await;
    assert_eq!(minted.message().await, "for 42");
    assert_eq!(given.message().await, "for all");

    // Without a token the node's refusal is said, and the command ends.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["subscribe", "news", "--server", &server])
        .env_remove("DUPLEX_TOKEN")
        .env_remove("DUPLEX_TOKEN_SECRET")
        .output()
        .await
        .expect("duplex subscribe");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused connect") && err.contains("112"),
        "{err}"
    );
}
