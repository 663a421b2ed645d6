#!/usr/bin/env bash
# Runs the JavaScript client tests against a real node. Builds nothing:
# DUPLEX_BIN names the binary (default target/debug/duplex from the repo root).
# Needs Node 20+ and npm: test/package.test.js installs the package into
# fresh projects as README.md says, and TypeScript from the npm registry
# (cached in target/npm-cache). The client itself has no dependencies.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v npm >/dev/null 2>&1; then
    echo "== installing npm (the package tests run npm init, pack and install)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi
export DUPLEX_BIN="${DUPLEX_BIN:-$root/target/debug/duplex}"
case "$DUPLEX_BIN" in /*) ;; *) DUPLEX_BIN="$root/$DUPLEX_BIN" ;; esac
if [ ! -x "$DUPLEX_BIN" ]; then
    echo "clients/js/test.sh: no duplex binary at $DUPLEX_BIN (cargo build -p duplex, or set DUPLEX_BIN)" >&2
    exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "clients/js/test.sh: Node 20+ needed, found $(node --version)" >&2
    exit 1
fi
# Node 22+ has a global WebSocket; Node 20 and 21 need the flag.
flags=()
if [ "$major" -lt 22 ]; then flags+=(--experimental-websocket); fi
exec node "${flags[@]}" --test test/*.test.js
