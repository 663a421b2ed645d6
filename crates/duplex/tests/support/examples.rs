//! Running the files under `examples/` as their users would: interpreters
//! found or skipped (never skipped under `scripts/test.sh`), long-running
//! examples (workers, web servers) whose stderr the test can wait on.

use std::process::Stdio;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::AsyncBufReadExt;

/// The path of `examples/<relative>`.
pub fn path(relative: &str) -> String {
    format!("{}/../../examples/{relative}", env!("CARGO_MANIFEST_DIR"))
}

/// The Python that has redis-py (`scripts/test.sh` makes a venv with the
/// newest one and names it in `EXAMPLE_PYTHON`).
pub fn python() -> String {
    std::env::var("EXAMPLE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The probe that exits 0 when php has php-redis.
pub const PHP_REDIS: [&str; 2] = ["-r", "exit(extension_loaded('redis') ? 0 : 1);"];
/// The probe that exits 0 when python has redis-py.
pub const PY_REDIS: [&str; 2] = ["-c", "import redis"];

/// Whether `interpreter` runs and `probe` exits 0 (its library is there).
/// Under `EXAMPLE_REQUIRE_ALL` (set by `scripts/test.sh`, which installs
/// them all) a missing one fails the test instead of skipping it.
pub async fn has_library(interpreter: &str, probe: &[&str]) -> bool {
    let ok = tokio::process::Command::new(interpreter)
        .args(probe)
        .output()
        .await
        .is_ok_and(|out| out.status.success());
    if !ok {
        assert!(
            std::env::var_os("EXAMPLE_REQUIRE_ALL").is_none(),
            "{interpreter} {probe:?} failed: not installed"
        );
        eprintln!("skipped: {interpreter} {probe:?} failed (scripts/test.sh installs it)");
    }
    ok
}

/// A long-running example, killed on drop; its stderr is kept.
pub struct Running {
    child: tokio::process::Child,
    stderr: Arc<Mutex<String>>,
    what: String,
}

impl Running {
    /// Starts `interpreter args...` with `env`, stderr collected.
    pub fn spawn(interpreter: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = tokio::process::Command::new(interpreter)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {interpreter}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let kept = stderr.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut kept = kept.lock();
                    kept.push_str(&line);
                    kept.push('\n');
                }
            });
        }
        Running {
            child,
            stderr,
            what: format!("{interpreter} {args:?}"),
        }
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().clone()
    }

    /// Waits until its stderr holds `needle` `times` times; panics with the
    /// log if it exits first or the wait runs out.
    pub async fn wait_for_log(&mut self, needle: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + super::WAIT;
        loop {
            if self.log().matches(needle).count() >= times {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader task take the last lines.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                panic!("{} exited ({status}):\n{}", self.what, self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no {needle:?} x{times} in its log:\n{}",
                self.what,
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// PHP's built-in web server, `php -S 127.0.0.1:<free port> <args>` (a
/// docroot with `-t`, or a router script), as a web page would be served;
/// its base URL once it listens.
pub async fn php_server(args: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let address = format!("127.0.0.1:{port}");
    let mut all = vec!["-S", address.as_str()];
    all.extend_from_slice(args);
    let mut server = Running::spawn("php", &all, env);
    server
        .wait_for_log(&format!("(http://{address}) started"), 1)
        .await;
    (server, format!("http://{address}"))
}
