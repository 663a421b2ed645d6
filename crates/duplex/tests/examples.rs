//! The examples run against a real node: `examples/auth/` (Python and PHP,
//! standard libraries only) mint tokens a node accepts and publish to one
//! user; `examples/publish/` publishes from a shell (curl, redis-cli),
//! Node.js (fetch), PHP (php-redis) and Python (redis-py, HTTP).
//! `scripts/test.sh` installs php-cli and nodejs when they are missing. The
//! upstream workers are tested in `examples_workers.rs`.

mod support;

use duplex::config::Settings;
use serde_json::json;
use support::client::Client;
use support::examples::{has_library, python, PHP_REDIS, PY_REDIS};
use support::node::{settings, TestNode};

const SECRET: &str = "examples-secret";
const API_KEY: &str = "examples-api-key";

/// Runs the example without blocking the runtime: the node under test is
/// served by the same (single) test thread.
async fn run(interpreter: &str, script: &str, node: &TestNode, args: &[&str]) -> String {
    let path = support::examples::path(script);
    let out = tokio::process::Command::new(interpreter)
        .arg(&path)
        .args(args)
        .env("DUPLEX_TOKEN_SECRET", SECRET)
        .env("DUPLEX_API_KEY", API_KEY)
        .env("DUPLEX_NODE", node.http(""))
        .env(
            "REDIS_URL",
            std::env::var("EXAMPLE_REDIS_URL").unwrap_or_default(),
        )
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {interpreter} (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{interpreter} {script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn python_and_php_backends_mint_tokens_and_reach_their_user() {
    let node = TestNode::start(Settings {
        token_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        namespaces: Some(vec![duplex::permissions::Namespace {
            pattern: "private:*".into(),
            subscribe: duplex::permissions::SubscribeRule::Token,
            publish: duplex::permissions::PublishRule::Nobody,
            ..Default::default()
        }]),
        ..settings()
    })
    .await;
    for (interpreter, script) in [("python3", "auth/backend.py"), ("php", "auth/backend.php")] {
        let user = format!("user-{interpreter}");
        let token = run(interpreter, script, &node, &["token", &user]).await;
        let mut client = Client::connect(&node.ws("/ws")).await;
        let reply = client.command("connect", json!({"token": token})).await;
        assert_eq!(reply["result"]["user"], user.as_str(), "{script}: {reply}");
        let own = format!("#user:{user}");
        client.subscribe(&[&own]).await;
        let private = format!("private:{user}");
        let sub_token = run(
            interpreter,
            script,
            &node,
            &["subscription-token", &user, &private],
        )
        .await;
        let reply = client
            .command("subscribe", json!({"channel": private, "token": sub_token}))
            .await;
        assert!(reply.get("result").is_some(), "{script}: {reply}");

        let answer = run(interpreter, script, &node, &["publish", &own, "hello"]).await;
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
        assert_eq!(answer, json!({"ok": true}), "{script}");
        assert_eq!(client.next_push().await, (own, json!("hello")), "{script}");
        run(interpreter, script, &node, &["publish", &private, "secret"]).await;
        assert_eq!(
            client.next_push().await,
            (private, json!("secret")),
            "{script}"
        );
    }
}

#[tokio::test]
async fn shell_and_node_publish_examples_reach_subscribers() {
    let redis = support::redis_server::RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    let mut plain = Client::connect(&node.ws("/?channel=news")).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.subscribe(&["news"]).await;

    let path = support::examples::path("publish/publish.sh");
    let out = tokio::process::Command::new("sh")
        .arg(&path)
        .args(["news", "hello"])
        .env("DUPLEX_NODE", node.http(""))
        .env("REDIS_URL", redis.url())
        .output()
        .await
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(plain.next_text().await, "hello (via HTTP)");
    assert_eq!(plain.next_text().await, "hello (via Redis)");
    assert_eq!(native.next_push().await.1, json!("hello (via HTTP)"));
    assert_eq!(native.next_push().await.1, json!("hello (via Redis)"));

    let answer = run(
        "node",
        "publish/publish.mjs",
        &node,
        &["news", r#"{"from":"node"}"#],
    )
    .await;
    assert!(answer.starts_with("200"), "{answer}");
    assert_eq!(plain.next_text().await, r#"{"from":"node"}"#);
    assert_eq!(native.next_push().await.1, json!({"from": "node"}));
}

/// `examples/publish/publish.{php,py}`: php-redis's two-liner, redis-py and
/// the HTTP API from Python reach plain and native subscribers.
#[tokio::test]
async fn php_and_python_publish_examples_reach_subscribers() {
    let redis = support::redis_server::RedisServer::start();
    let node = TestNode::redis(&redis.url()).await;
    let mut plain = Client::connect(&node.ws("/?channel=news")).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.subscribe(&["news"]).await;
    let python = python();
    let examples = [
        ("php", "publish.php", PHP_REDIS, vec!["from php"]),
        (
            python.as_str(),
            "publish.py",
            PY_REDIS,
            vec!["from python (via Redis)", "from python (via HTTP)"],
        ),
    ];
    for (interpreter, script, probe, expected) in examples {
        if !has_library(interpreter, &probe).await {
            continue;
        }
        let message = expected[0].split(" (").next().unwrap_or_default();
        let path = support::examples::path(&format!("publish/{script}"));
        let out = tokio::process::Command::new(interpreter)
            .arg(&path)
            .args(["news", message])
            .env("DUPLEX_NODE", node.http(""))
            .env("REDIS_URL", redis.url())
            .output()
            .await
            .expect("run the example");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for text in expected {
            assert_eq!(plain.next_text().await, text, "{script}");
            assert_eq!(native.next_push().await.1, json!(text), "{script}");
        }
    }
}

/// `examples/auth/backend.php` required from a web page served by `php -S`
/// (it used to run its command line there too: "Undefined constant
/// STDERR", HTTP 500): the page's token is one the node accepts.
#[tokio::test]
async fn php_backend_serves_tokens_from_a_web_page() {
    if !has_library("php", &["-r", "exit(0);"]).await {
        return;
    }
    let node = TestNode::start(Settings {
        token_secret: Some(SECRET.into()),
        ..settings()
    })
    .await;
    let docroot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("php-token-page");
    std::fs::create_dir_all(&docroot).expect("docroot");
    let page = format!(
        "<?php\nrequire '{}';\nheader('Content-Type: text/plain');\necho connection_token(getenv('DUPLEX_TOKEN_SECRET'), 'web-user');\n",
        support::examples::path("auth/backend.php")
    );
    std::fs::write(docroot.join("token.php"), page).expect("page");
    let docroot = docroot.to_string_lossy();
    let (server, url) =
        support::examples::php_server(&["-t", &docroot], &[("DUPLEX_TOKEN_SECRET", SECRET)]).await;

    let response = reqwest::get(format!("{url}/token.php"))
        .await
        .expect("GET the page");
    let status = response.status().as_u16();
    let token = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{token}\n{}", server.log());
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("connect", json!({"token": token})).await;
    assert_eq!(reply["result"]["user"], "web-user", "{reply}");
}
