//! The `duplex` binary: --version, publish, subscribe, token.

mod support;

use std::process::{Command, Stdio};

use support::node::TestNode;
use support::redis_server::RedisServer;
use tokio::io::{AsyncBufReadExt, BufReader};

fn duplex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_duplex"))
}

#[test]
fn version_and_help() {
    let out = duplex().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("duplex {}", env!("CARGO_PKG_VERSION"))
    );
    let help = duplex().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--redis",
        "--redis-prefix",
        "--default-channel",
        "--api-key",
        "--max-queued-bytes",
        "--ping-interval",
        "--log-format",
        "--config",
        "DUPLEX_LISTEN",
    ] {
        assert!(help.contains(flag), "serve --help documents {flag}");
    }
}

#[test]
fn bad_config_fails_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("duplex-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("duplex.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let out = duplex()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn public_address_without_auth_is_refused_unless_insecure() {
    let out = duplex()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure"), "{err}");
    // A bare `--insecure` parses (the run then stops at the missing config file).
    let out = duplex()
        .args([
            "serve",
            "--insecure",
            "--config",
            "/nonexistent/duplex.toml",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[tokio::test]
async fn subscribe_prints_what_publish_sends() {
    let redis = RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    let mut sub = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["subscribe", "news", "--server", &node.ws("")])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    support::eventually("subscriber is subscribed", || async {
        node.info().await["subscriptions"] == 1
    })
    .await;

    // The node runs on this test's runtime: run the CLI without blocking it.
    let publish = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    publish(args(&[
        "publish",
        "news",
        "via api",
        "--server",
        &node.http(""),
    ]))
    .await;
    publish(args(&[
        "publish",
        "news",
        "via redis",
        "--redis",
        &redis.url(),
    ]))
    .await;
    publish(args(&[
        "publish",
        "news",
        r#"{"a":1}"#,
        "--json",
        "--server",
        &node.http(""),
    ]))
    .await;

    for expected in ["via api", "via redis", r#"{"a":1}"#] {
        let line = tokio::time::timeout(support::WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line.as_deref(), Some(expected));
    }
}

/// `duplex token` mints what a node with the same secret accepts, and
/// `serve --token-secret` turns token auth on.
#[tokio::test]
async fn minted_tokens_open_the_door() {
    let out = duplex()
        .args([
            "token",
            "--user",
            "42",
            "--ttl",
            "10m",
            "--channels",
            "news",
        ])
        .env("DUPLEX_TOKEN_SECRET", "cli-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let node = support::process::NodeProcess::start(&["--token-secret", "cli-secret"]).await;
    let mut client = support::client::Client::connect(&node.ws("/ws")).await;
    let reply = client
        .command("connect", serde_json::json!({"token": token}))
        .await;
    assert_eq!(reply["result"]["user"], "42", "{reply}");
    assert_eq!(
        reply["result"]["channels"],
        serde_json::json!(["news", "#user:42"])
    );
    // Without a secret there is nothing to sign with.
    let out = duplex()
        .args(["token", "--user", "1"])
        .env_remove("DUPLEX_TOKEN_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token_secret"));
}

#[test]
fn check_config_prints_the_effective_rules_without_secrets() {
    let dir = std::env::temp_dir().join(format!("duplex-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("duplex.toml");
    std::fs::write(
        &file,
        "token_secret = \"super-secret-value\"\napi_key = \"key-one,key-two\"\nredis = \"redis://:hunter2@127.0.0.1:6379\"\n\n[[namespaces]]\npattern = \"chat:*\"\nsubscribe = \"authenticated\"\npublish = \"subscribers\"\nupstream_stream = \"chat-up\"\nupstream_url = \"http://u:url-secret@backend/chat\"\n",
    )
    .unwrap();
    let out = duplex()
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("config OK"), "{text}");
    assert!(
        text.contains("chat:*") && text.contains("authenticated") && text.contains("subscribers"),
        "{text}"
    );
    assert!(text.contains("2 API key(s)"), "{text}");
    assert!(
        text.contains("stream duplex:upstream, url none")
            && text.contains("stream chat-up, url http://u:***@backend/chat"),
        "{text}"
    );
    for secret in ["super-secret-value", "key-one", "hunter2", "url-secret"] {
        assert!(!text.contains(secret), "{secret} printed: {text}");
    }
    std::fs::write(&file, "[[namespaces]]\npattern = \"a*b\"\n").unwrap();
    let out = duplex()
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'*' may only end a pattern"), "{err}");
}

#[test]
fn genconfig_prints_a_file_that_check_config_accepts() {
    let out = duplex().arg("genconfig").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for key in [
        "listen = ",
        "redis = ",
        "max_message_size = 65536",
        "ping_interval = \"25s\"",
        "token_secret = \"\"",
    ] {
        assert!(text.contains(key), "{key} in genconfig");
    }
    let dir = std::env::temp_dir().join(format!("duplex-genconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("duplex.toml");
    std::fs::write(&file, &text).unwrap();
    let check = duplex()
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("config OK"));
}
