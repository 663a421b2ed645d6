#!/usr/bin/env bash
# The one test command (README, CI): installs what the tests need on a fresh
# Debian machine, then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing redis-server (tests start their own on free ports)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

if [ ! -x /usr/sbin/nats-server ]; then
    echo "== installing nats-server (the NATS broker's tests start their own on free ports)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
fi

if ! command -v php >/dev/null 2>&1; then
    echo "== installing php-cli (the PHP backend example is tested)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq php-cli >/dev/null
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "== installing python3 (the Python backend example is tested)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
fi

if ! php -r 'exit(extension_loaded("redis") ? 0 : 1);' 2>/dev/null; then
    echo "== installing php-redis (the PHP upstream worker example is tested)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq php-redis >/dev/null
fi
# redis-py for the Python upstream worker example, in a venv of its own.
if [ ! -x target/py-redis/bin/python ]; then
    echo "== making target/py-redis (the Python upstream worker example is tested with redis-py)"
    python3 -m venv target/py-redis || { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && python3 -m venv target/py-redis; }
fi
# Always the newest redis-py, as `pip install redis` gives a new user: its
# defaults change (8.x's 5 s socket timeout killed the old worker when idle).
target/py-redis/bin/pip install -q -U redis || target/py-redis/bin/python -c 'import redis'
echo "== redis-py $(target/py-redis/bin/python -c 'import redis; print(redis.__version__)')"
export EXAMPLE_PYTHON="$PWD/target/py-redis/bin/python"
# deploy/duplex.service is checked with systemd-analyze (crates/duplex/tests/deploy.rs).
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "== installing systemd (systemd-analyze checks deploy/duplex.service)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
# promtool, from Debian's prometheus package, checks and unit-tests
# deploy/alerts.yml. Unpacked under target/ rather than installed: installing
# the package would also start a Prometheus server on this machine.
if ! command -v promtool >/dev/null 2>&1 && [ ! -x target/tools/prometheus/usr/bin/promtool ]; then
    echo "== unpacking promtool from Debian's prometheus package into target/tools (deploy/alerts.yml is tested)"
    as_root apt-get update -qq
    mkdir -p target/tools
    (cd target/tools && apt-get download -qq prometheus 2>/dev/null && dpkg-deb -x prometheus_*.deb prometheus && rm prometheus_*.deb)
fi
export PATH="$PATH:$PWD/target/tools/prometheus/usr/bin"

if ! command -v node >/dev/null 2>&1; then
    echo "== installing nodejs (the JavaScript client is tested; it needs Node 20+)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
fi

# Everything above is installed: the example and deploy tests must not skip for want of it.
export EXAMPLE_REQUIRE_ALL=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
LOG=target/test-output.log
mkdir -p target
echo "== cargo test"
cargo test --workspace 2>&1 | tee "$LOG"
echo "== JavaScript client (node --test against real nodes)"
JS_LOG=target/js-test-output.log
clients/js/test.sh 2>&1 | tee "$JS_LOG" | grep -E "^# (tests|pass|fail)|^not ok" || true
if ! grep -q "^# fail 0" "$JS_LOG"; then
    echo "JavaScript client tests failed (full output in $JS_LOG)"
    exit 1
fi
echo "== Browser tests (headless Chromium: console, classic demo, JS client, chat example)"
BROWSER_LOG=target/browser-test-output.log
clients/browser/test.sh 2>&1 | tee "$BROWSER_LOG" | grep -E "^# (tests|pass|fail)|^not ok|^== " || true
if ! grep -q "^# fail 0" "$BROWSER_LOG"; then
    echo "Browser tests failed (full output in $BROWSER_LOG, screenshots in target/browser/)"
    exit 1
fi
echo "== WebSocket conformance (Autobahn sections 1-7, 9)"
./scripts/autobahn.sh

# One closing line for people and CI: every cargo test plus the Autobahn cases.
passed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) n += $i} END {print n + 0}' "$LOG")
failed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) n += $i} END {print n + 0}' "$LOG")
cases=$(awk '$1 == "all" {print $2 + $3 + $4}' target/autobahn-report/summary.txt 2>/dev/null || echo 0)
js=$(awk '$1 == "#" && $2 == "pass" {print $3}' "$JS_LOG")
browser=$(awk '$1 == "#" && $2 == "pass" {print $3}' "$BROWSER_LOG")
echo "total: $((passed + cases + js + browser)) passed, $failed failed"
