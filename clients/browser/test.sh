#!/usr/bin/env bash
# Browser tests: the web console, the classic demo, the JavaScript client and
# the chat example in headless Chromium (playwright-core driving Debian's
# chromium). Installs chromium and the npm packages when they are missing;
# builds target/debug/duplex when DUPLEX_BIN names no binary.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ]; then
    echo "== installing chromium (Playwright drives Debian's; it cannot download its own here)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
for tool in redis-server redis-cli python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "clients/browser/test.sh: $tool is needed (scripts/test.sh installs it)" >&2
        exit 1
    fi
done
if ! command -v npm >/dev/null 2>&1; then
    echo "== installing npm (for playwright-core)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi
if [ ! -d node_modules/playwright-core ]; then
    echo "== npm ci (playwright-core)"
    npm ci --no-audit --no-fund --silent
fi

export DUPLEX_BIN="${DUPLEX_BIN:-$root/target/debug/duplex}"
case "$DUPLEX_BIN" in /*) ;; *) DUPLEX_BIN="$root/$DUPLEX_BIN" ;; esac
if [ ! -x "$DUPLEX_BIN" ]; then
    echo "== cargo build -p duplex (no binary at $DUPLEX_BIN)"
    (cd "$root" && cargo build -p duplex --quiet)
fi

major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "clients/browser/test.sh: Node 20+ needed, found $(node --version)" >&2
    exit 1
fi
# The tests use plain WebSockets from Node too: global on 22+, a flag on 20/21.
flags=()
if [ "$major" -lt 22 ]; then flags+=(--experimental-websocket); fi
# One file at a time: each starts Chromium and its own nodes; two cores are shared.
exec node "${flags[@]}" --test --test-concurrency=1 test/*.test.js
