//! `examples/upstream/worker.{py,php}` as people run them in production,
//! with the newest redis-py (`scripts/test.sh` installs it) and php-redis:
//! they answer rpcs, answer what they and a crashed worker left pending,
//! keep answering after a quiet spell longer than any client library's
//! default timeout (redis-py 8's is 5 s), and after Redis restarts on the
//! same port.
//!
//! Each worker reads a stream of its own (a namespace per language routes
//! rpcs naming `<lang>:...` there), so one node and one Redis test both.

mod support;

use std::time::Duration;

use duplex::config::Settings;
use duplex::permissions::Namespace;
use serde_json::json;
use support::client::Client;
use support::examples::{has_library, python, Running, PHP_REDIS, PY_REDIS};
use support::node::TestNode;
use support::redis_server::RedisServer;

/// One example worker.
struct Example {
    lang: &'static str,
    interpreter: String,
    script: &'static str,
}

impl Example {
    fn stream(&self) -> String {
        format!("{}:upstream", self.lang)
    }

    fn consumer(&self) -> String {
        format!("{}-worker", self.lang)
    }

    fn channel(&self) -> String {
        format!("{}:calls", self.lang)
    }

    /// What it logs once it reads its stream.
    fn ready(&self) -> String {
        format!("reading {} as {}", self.stream(), self.consumer())
    }

    /// Starts it on its stream; `claim_idle_ms` is its CLAIM_IDLE_MS.
    fn start(&self, redis: &RedisServer, claim_idle_ms: &str) -> Running {
        let path = support::examples::path(&format!("upstream/{}", self.script));
        let consumer = self.consumer();
        Running::spawn(
            &self.interpreter,
            &[&path, &consumer],
            &[
                ("REDIS_URL", &redis.url()),
                ("DUPLEX_UPSTREAM_STREAM", &self.stream()),
                ("CLAIM_IDLE_MS", claim_idle_ms),
            ],
        )
    }

    /// An rpc call naming this worker's channel.
    fn call(&self, id: u64, method: &str, a: i64, b: i64) -> String {
        json!({"id": id, "method": "rpc", "params": {
            "method": method, "channel": self.channel(), "data": {"a": a, "b": b}}})
        .to_string()
    }
}

/// The workers whose interpreter and Redis library are installed.
async fn examples() -> Vec<Example> {
    let mut found = Vec::new();
    for (lang, interpreter, script, probe) in [
        ("python", python(), "worker.py", PY_REDIS),
        ("php", "php".to_string(), "worker.php", PHP_REDIS),
    ] {
        if has_library(&interpreter, &probe).await {
            found.push(Example {
                lang,
                interpreter,
                script,
            });
        }
    }
    found
}

/// A node on `redis` routing each example's channel to its stream; a call
/// nobody answers gets 113 well within the test's wait.
async fn node(redis: &RedisServer, examples: &[Example]) -> TestNode {
    let namespaces = examples
        .iter()
        .map(|e| Namespace {
            pattern: format!("{}:*", e.lang),
            upstream_stream: Some(e.stream()),
            ..Default::default()
        })
        .collect();
    TestNode::on_redis(
        &redis.url(),
        Settings {
            namespaces: Some(namespaces),
            rpc_timeout: Some(Duration::from_secs(3)),
            ..Default::default()
        },
    )
    .await
}

/// Asks `example` to add `a` and `b`; the reply, with the worker's log
/// when it is not the sum.
async fn assert_adds(client: &mut Client, example: &Example, worker: &Running, a: i64, b: i64) {
    let reply = client
        .command(
            "rpc",
            json!({"method": "add", "channel": example.channel(), "data": {"a": a, "b": b}}),
        )
        .await;
    assert_eq!(
        reply["result"]["data"],
        json!({"sum": a + b}),
        "{}: {reply}\n{}",
        example.script,
        worker.log()
    );
}

/// Starts every example worker and checks each answers a first call.
async fn start_workers(
    examples: &[Example],
    redis: &RedisServer,
    client: &mut Client,
) -> Vec<Running> {
    let mut workers = Vec::new();
    for example in examples {
        let mut worker = example.start(redis, "30000");
        worker.wait_for_log(&example.ready(), 1).await;
        assert_adds(client, example, &worker, 1, 2).await;
        workers.push(worker);
    }
    workers
}

#[tokio::test]
async fn workers_answer_after_a_quiet_spell_longer_than_client_timeouts() {
    let examples = examples().await;
    let redis = RedisServer::start();
    let node = node(&redis, &examples).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let mut workers = start_workers(&examples, &redis, &mut client).await;
    // The quiet spell is what is tested: longer than redis-py's 5 s default
    // socket timeout, during which the old Python worker died.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    for (example, worker) in examples.iter().zip(&mut workers) {
        assert_eq!(
            worker.exited(),
            None,
            "{}:\n{}",
            example.script,
            worker.log()
        );
        assert_adds(&mut client, example, worker, 40, 2).await;
    }
}

#[tokio::test]
async fn workers_answer_after_redis_restarts_on_the_same_port() {
    let examples = examples().await;
    let mut redis = RedisServer::start();
    let node = node(&redis, &examples).await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let mut workers = start_workers(&examples, &redis, &mut client).await;

    // Killed, started again empty (no persistence): streams and groups are
    // gone, the workers must notice, reconnect and create their group again.
    redis.restart();
    support::eventually("the node is back on Redis", || async {
        node.health().await == 200
    })
    .await;
    for (example, worker) in examples.iter().zip(&mut workers) {
        worker.wait_for_log(&example.ready(), 2).await;
        // The node's first append after the restart succeeds (issue 15 #8).
        let reply = client
            .command(
                "rpc",
                json!({"method": "add", "channel": example.channel(), "data": {"a": 2, "b": 3}}),
            )
            .await;
        assert_eq!(
            reply["result"]["data"],
            json!({"sum": 5}),
            "{}: {reply}\n{}",
            example.script,
            worker.log()
        );
        let log = worker.log();
        assert!(
            log.contains("Redis unavailable") && log.matches("created group").count() == 2,
            "{}: the lost connection and the group made again are logged:\n{log}",
            example.script
        );
    }
}

/// A worker that read entries and lost its connection (or was restarted)
/// answers them first (it keeps its consumer name and reads id 0), then
/// claims what a crashed worker left (XAUTOCLAIM, here older than 10 min):
/// both rpcs are answered, without waiting CLAIM_IDLE_MS for its own.
#[tokio::test]
async fn workers_answer_what_they_and_a_crashed_worker_left_pending() {
    let examples = examples().await;
    let redis = RedisServer::start();
    let node = node(&redis, &examples).await;
    let mut conn = redis.connection().await;
    for example in &examples {
        let stream = example.stream();
        let _: () = redis::cmd("XGROUP")
            .arg(&["CREATE", &stream, "workers", "0", "MKSTREAM"][..])
            .query_async(&mut conn)
            .await
            .expect("XGROUP CREATE");
        let mut client = Client::connect(&node.ws("/ws")).await;
        // Read by a worker that crashed an hour ago, never acknowledged.
        client.send_text(&example.call(1, "add", 1, 1)).await;
        let crashed = read_pending(&mut conn, &stream, "crashed").await;
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(
                &[
                    &stream, "workers", "crashed", "0", &crashed, "IDLE", "3600000",
                ][..],
            )
            .query_async(&mut conn)
            .await
            .expect("XCLAIM");
        // Read by this worker before it lost its connection.
        client.send_text(&example.call(2, "add", 2, 2)).await;
        read_pending(&mut conn, &stream, &example.consumer()).await;

        let worker = example.start(&redis, "600000");
        let mut replies = [client.next_json().await, client.next_json().await];
        replies.sort_by_key(|r| r["id"].as_u64());
        assert_eq!(
            replies,
            [
                json!({"id": 1, "result": {"data": {"sum": 2}}}),
                json!({"id": 2, "result": {"data": {"sum": 4}}}),
            ],
            "{}:\n{}",
            example.script,
            worker.log()
        );
        client.send_text(&example.call(3, "nope", 0, 0)).await;
        let reply = client.next_json().await;
        assert_eq!(reply["error"]["code"], 4000, "{}: {reply}", example.script);
        let reply = client
            .command("send", json!({"data": "hi", "channel": example.channel()}))
            .await;
        assert_eq!(reply["result"], json!({}), "{}", example.script);
    }
}

/// `XREADGROUP` as `consumer` until the call just sent is there; its id.
async fn read_pending(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    consumer: &str,
) -> String {
    let reply: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "workers", consumer, "COUNT", "1", "BLOCK"][..])
        .arg(support::WAIT.as_millis() as u64)
        .arg(&["STREAMS", stream, ">"][..])
        .query_async(conn)
        .await
        .expect("XREADGROUP");
    let entries = support::stream::read_reply_entries(&reply);
    entries
        .into_iter()
        .next()
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("no call in {stream} within the wait"))
}
