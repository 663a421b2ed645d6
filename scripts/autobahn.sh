#!/usr/bin/env bash
# Autobahn WebSocket conformance run against duplex's plain endpoint.
#
#   scripts/autobahn.sh                 # sections 1-7 and 9 (the default)
#   scripts/autobahn.sh '6.4.*' 7.1.6   # only these case ids / globs
#
# What it does:
#   1. installs the runner if missing: kosoku (PyPI; Python 3, runs Autobahn's
#      own case files, same verdicts as the official tool, which is Python 2.7
#      code and cannot run here) in a venv at target/autobahn-venv;
#   2. builds duplex (`cargo build --release -p duplex`, a no-op when up to
#      date) unless DUPLEX_BIN names a binary, and starts it on a free
#      loopback port with the embedded memory broker. A plain client alone on
#      its channel gets its own frames back with their kind kept: that is the
#      echo server the suite expects. Every case connects to the same
#      dedicated channel; kosoku runs one case at a time, so they never meet;
#   3. runs the cases, writes the reports to target/autobahn-report/
#      (index.html, one JSON/HTML per case, summary.txt, duplex.log,
#      kosoku.log), prints per-section counts of OK / NON-STRICT /
#      INFORMATIONAL / FAILED, and exits non-zero if any case FAILED.
#
# Sections 12 and 13 (permessage-deflate) are not run: duplex does not offer
# the extension (its handshake never answers Sec-WebSocket-Extensions), so
# every one of those cases ends UNIMPLEMENTED. Run them once it does, e.g.
# `scripts/autobahn.sh '12.*' '13.*'`. Section 10 (10.1.1) is not part of the
# default set either; it can be named the same way.
#
# Environment:
#   DUPLEX_BIN        duplex binary to test (skips the cargo build)
#   KOSOKU_VERSION    kosoku version to install [0.1.0]
#   AUTOBAHN_TIMEOUT  seconds the whole run may take before it is killed [300]
#
# Exit status: 0 all passed, 1 a case FAILED (or the runner failed), 2 no or
# incomplete report / setup error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

KOSOKU_VERSION="${KOSOKU_VERSION:-0.1.0}"
AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-300}"
VENV="$ROOT/target/autobahn-venv"
REPORT="$ROOT/target/autobahn-report"
CHANNEL="autobahn"
DEFAULT_CASES=('1.*' '2.*' '3.*' '4.*' '5.*' '6.*' '7.*' '9.*')
if (($# > 0)); then CASES=("$@"); else CASES=("${DEFAULT_CASES[@]}"); fi

log() { printf 'autobahn: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else return 1
    fi
}

# --- 1. runner -------------------------------------------------------------

python_ok() {
    command -v python3 >/dev/null 2>&1 &&
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null
}

venv_ok() {
    [[ -x "$VENV/bin/kosoku" ]] &&
        "$VENV/bin/python" - "$KOSOKU_VERSION" 2>/dev/null <<'EOF'
import sys
from importlib.metadata import version
import kosoku  # noqa: F401  (the native module must load, not just be listed)
sys.exit(version("kosoku") != sys.argv[1])
EOF
}

make_venv() {
    rm -rf "$VENV"
    python_ok && python3 -m venv "$VENV" >/dev/null 2>&1
}

ensure_runner() {
    venv_ok && return 0
    log "installing kosoku $KOSOKU_VERSION into ${VENV#"$ROOT"/}"
    if ! make_venv; then
        # Debian ships venv/ensurepip separately (python3-venv).
        log "installing python3 and python3-venv (apt)"
        { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv; } >/dev/null ||
            die "cannot install python3/python3-venv: install them (Python >= 3.10) and rerun"
        make_venv || die "cannot create a venv with python3 (kosoku needs Python >= 3.10 and the venv module)"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check "kosoku==$KOSOKU_VERSION" ||
        die "pip could not install kosoku==$KOSOKU_VERSION"
    venv_ok || die "kosoku is installed but does not load in $VENV"
}

# --- 2. server ---------------------------------------------------------------

SERVER_PID=""
RUNNER_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$RUNNER_PID" ]]; then
        kill -TERM "$RUNNER_PID" 2>/dev/null || true
        wait "$RUNNER_PID" 2>/dev/null || true
    fi
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

build_server() {
    if [[ -n "${DUPLEX_BIN:-}" ]]; then
        [[ -x "$DUPLEX_BIN" ]] || die "DUPLEX_BIN=$DUPLEX_BIN is not an executable"
        BIN="$DUPLEX_BIN"
        return
    fi
    log "cargo build --release -p duplex"
    cargo build --release --quiet -p duplex
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/duplex"
    [[ -x "$BIN" ]] || die "no binary at $BIN after the build"
}

free_port() {
    "$VENV/bin/python" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Starts the server; retries on another port if the chosen one was taken meanwhile.
start_server() {
    local attempt
    for attempt in 1 2 3; do
        PORT="$(free_port)"
        "$BIN" serve --listen "127.0.0.1:$PORT" \
            --max-message-size 16777216 --max-fragments 1000000 \
            --max-queued-bytes 67108864 --max-queued-messages 1000000 --max-publish-rate 0 \
            >>"$REPORT/duplex.log" 2>&1 </dev/null &
        SERVER_PID=$!
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
                return 0
            fi
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
        log "server did not come up on port $PORT (attempt $attempt)"
    done
    tail -n 20 "$REPORT/duplex.log" >&2 || true
    die "could not start duplex; its log is $REPORT/duplex.log"
}

# --- 3. run ------------------------------------------------------------------

ensure_runner
build_server
rm -rf "$REPORT"
mkdir -p "$REPORT"
start_server

includes=()
sections=()
for c in "${CASES[@]}"; do
    includes+=(-i "$c")
    s="${c%%.*}"
    if [[ "$s" =~ ^[0-9]+$ && " ${sections[*]} " != *" $s "* ]]; then sections+=("$s"); fi
done

log "running ${CASES[*]} against $BIN on ws://127.0.0.1:$PORT/?channel=$CHANNEL"
started=$SECONDS
# In the background and waited for, so that INT/TERM reach the trap at once.
timeout "$AUTOBAHN_TIMEOUT" "$VENV/bin/kosoku" "ws://127.0.0.1:$PORT/?channel=$CHANNEL" \
    "${includes[@]}" -o "$REPORT" >"$REPORT/kosoku.log" 2>&1 </dev/null &
RUNNER_PID=$!
runner_rc=0
wait "$RUNNER_PID" || runner_rc=$?
RUNNER_PID=""
elapsed=$((SECONDS - started))

server_alive=1
kill -0 "$SERVER_PID" 2>/dev/null || server_alive=0

set +e
"$VENV/bin/python" "$ROOT/scripts/autobahn/summary.py" "$REPORT" "${sections[@]}"
summary_rc=$?
set -e

log "cases ran in ${elapsed}s; reports in ${REPORT#"$ROOT"/}/ (index.html, summary.txt)"
if ((server_alive == 0)); then
    log "duplex exited during the run; the end of its log:"
    tail -n 20 "$REPORT/duplex.log" >&2 || true
    exit 1
fi
if ((runner_rc == 124)); then
    log "kosoku did not finish within ${AUTOBAHN_TIMEOUT}s (AUTOBAHN_TIMEOUT)"
fi
if ((summary_rc != 0)) || ((runner_rc != 0)); then
    if ((summary_rc != 1)); then
        log "kosoku exited with $runner_rc; the end of its output:"
        tail -n 20 "$REPORT/kosoku.log" >&2 || true
    fi
    ((summary_rc == 2)) && exit 2
    exit 1
fi
log "all cases passed"
