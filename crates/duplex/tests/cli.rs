//! The `duplex` binary: --version, --help, error messages, logs, publish,
//! subscribe, token, genconfig.

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
        // Either scheme names the node, for subscribe as for publish.
        .args(["subscribe", "news", "--server", &node.http("")])
        .stderr(Stdio::null())
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
        &node.ws(""),
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

    // Binary data is shown as base64 behind a marker, never as if it were text.
    let (status, _) = support::post_json(
        &node.http("/api/publish"),
        &serde_json::json!({"channel": "news", "data": "AP8=", "encoding": "base64"}),
    )
    .await;
    assert_eq!(status, 200);

    for expected in ["via api", "via redis", r#"{"a":1}"#, "base64:AP8="] {
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
    // The flag has serve's name (`--secret` is its old, hidden alias).
    for flag in ["--token-secret", "--secret"] {
        let out = duplex()
            .args(["token", "--user", "42", flag, "cli-secret"])
            .env_remove("DUPLEX_TOKEN_SECRET")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{flag}: {err}");
    }
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

fn stderr_of(command: &mut Command) -> String {
    let out = command.output().expect("run duplex");
    assert!(!out.status.success(), "{command:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each cause said once, a hint for a Redis address without its scheme,
/// a bad environment value blamed on its variable, a missing value said
/// as such. (Before: "(os error 2): ... (os error 2)", "Redis URL did not
/// parse - InvalidClientConfig", "invalid value 'lots' for
/// '--max-connections'" with no such flag given, "invalid value 'true' for
/// '--listen'".)
#[test]
fn error_messages_say_what_is_wrong_once() {
    let err = stderr_of(duplex().args(["serve", "--config", "/nonexistent/duplex.toml"]));
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    let err = stderr_of(duplex().args(["serve", "--redis", "localhost:6379"]));
    assert!(err.contains("redis://localhost:6379"), "{err}");
    let err = stderr_of(duplex().args(["publish", "news", "hi", "--redis", "localhost:6379"]));
    assert!(err.contains("redis://localhost:6379"), "{err}");
    let err = stderr_of(duplex().arg("serve").env("DUPLEX_MAX_CONNECTIONS", "lots"));
    assert!(
        err.contains("environment variable DUPLEX_MAX_CONNECTIONS") && err.contains("lots"),
        "{err}"
    );
    let err = stderr_of(duplex().arg("serve").env("DUPLEX_LOG_FORMAT", "xml"));
    assert!(
        err.contains("DUPLEX_LOG_FORMAT") && err.contains("text, json"),
        "{err}"
    );
    // Typed on the command line, the flag is to blame.
    let err = stderr_of(duplex().args(["serve", "--max-connections", "lots"]));
    assert!(
        err.contains("'--max-connections <MAX_CONNECTIONS>'"),
        "{err}"
    );
    let err = stderr_of(duplex().args(["serve", "--listen"]));
    assert!(
        err.contains("a value is required for '--listen <LISTEN>'"),
        "{err}"
    );
}

/// `serve --help` groups its ~55 settings under headings, only bool flags
/// show their value as optional (`--insecure [<INSECURE>]`: the bool
/// settings are those genconfig writes as `true` or `false`), and secrets
/// from the environment are not shown.
#[test]
fn serve_help_is_grouped_and_only_bools_stand_bare() {
    let help = duplex()
        .args(["serve", "--help"])
        .env("DUPLEX_TOKEN_SECRET", "secret-in-env")
        .env("DUPLEX_API_KEY", "key-in-env")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for heading in [
        "\nNetwork:\n",
        "\nBroker (Redis or NATS):\n",
        "\nUpstream (send, rpc, plain frames to the backends):\n",
        "\nPlain clients (/):\n",
        "\nAuthentication:\n",
        "\nLimits:\n",
        "\nTimeouts, heartbeats and batching:\n",
        "\nLogging:\n",
    ] {
        assert!(help.contains(heading), "serve --help has {heading:?}");
    }
    let genconfig = duplex().arg("genconfig").output().unwrap();
    let genconfig = String::from_utf8(genconfig.stdout).unwrap();
    let mut bools: Vec<String> = genconfig
        .lines()
        .filter(|l| l.ends_with(" = true") || l.ends_with(" = false"))
        .map(|l| format!("--{}", l.split(' ').next().unwrap().replace('_', "-")))
        .collect();
    let mut bare: Vec<String> = help
        .lines()
        .filter(|l| l.contains(" [<"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    bools.sort();
    bare.sort();
    assert!(bools.contains(&"--insecure".to_string()), "{bools:?}");
    assert_eq!(bare, bools);
    // Secrets set in the environment are not shown (they were: `[env: DUPLEX_API_KEY=key-in-env]`).
    assert!(help.contains("[env: DUPLEX_TOKEN_SECRET]"), "{help}");
    assert!(!help.contains("secret-in-env") && !help.contains("key-in-env"));
    // genconfig has the same groups.
    assert!(genconfig.contains("# ---- Network ----") && genconfig.contains("# ---- Logging ----"));
}

/// A token secret short enough to guess offline is refused on a public
/// address and warned about on loopback; the warning, like every text log
/// line written to a file, carries no colour codes.
#[tokio::test]
async fn a_short_token_secret_is_refused_in_public_and_warned_about_at_home() {
    let err = stderr_of(duplex().args([
        "serve",
        "--check-config",
        "--listen",
        "0.0.0.0:0",
        "--api-key",
        "k",
        "--token-secret",
        "short",
    ]));
    assert!(
        err.contains("token_secret") && err.contains("at least 32") && err.contains("--insecure"),
        "{err}"
    );
    let node = support::process::NodeProcess::start_logged(&["--token-secret", "short"]).await;
    support::eventually("the warning is logged", || async {
        node.log().contains("token_secret is 5 bytes")
    })
    .await;
    let log = node.log();
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
}

/// JSON log lines keep `target` for the module that logged; a field once
/// named `target` replaced it with `User("42")`.
#[tokio::test]
async fn json_logs_keep_the_event_target() {
    let node = support::process::NodeProcess::start_logged(&["--log-format", "json"]).await;
    let mut client = support::client::Client::connect(&node.ws("/ws")).await;
    let reply = client.command("connect", serde_json::json!({})).await;
    let id = reply["result"]["client"]
        .as_str()
        .expect("client id")
        .to_string();
    let (status, _) = support::post_json(
        &node.http("/api/disconnect"),
        &serde_json::json!({"connection": id}),
    )
    .await;
    assert_eq!(status, 200);
    support::eventually("the order is logged", || async {
        node.log().contains("disconnected by order")
    })
    .await;
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("disconnected by order"))
        .expect("the line");
    let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(event["target"], "duplex::node::backends", "{line}");
    assert!(event["fields"].get("target").is_none(), "{line}");
    assert_eq!(event["fields"]["to"], format!("connection {id}"), "{line}");
}
