#!/usr/bin/env bash
# Side-by-side benchmark: Duplex, the one-write-per-delivery floor, Sockudo
# (a Rust Pusher-protocol server) and Socket.IO 4 (Node.js, with and without
# its Redis adapter), measured one after the other on this machine by the
# same generator (crates/duplex-bench). Prints a table with ratios; raw JSON
# lines go to target/compare/results.jsonl.
#
#   bench/compare.sh                      # defaults below
#   SUBS=2000 RATE=100 DURATION=10s IDLE=19000 bench/compare.sh
#   CLIENTS=10000 CHRATE=10000 bench/compare.sh   # the personal-channels workload
#   SUBS=2000 RATE=500 PROCS=2 bench/compare.sh    # overload: two generator processes
#   WRITE_DELAY=5ms bench/compare.sh               # adds Duplex with --write-delay
#   BASELINE=/tmp/old/duplex bench/compare.sh      # adds an older Duplex build's fan-out rows
#   REDIS_ONLY=1 bench/compare.sh                  # only the Redis-fed fan-out rows (overload runs)
#   STALLED=100 bench/compare.sh                   # adds SUBS readers + 100 clients that never read,
#                                                  # STALLED_SIZE-byte payloads for STALLED_DURATION
#   STALLED=100 STALLED_ONLY=1 bench/compare.sh    # only those runs
#
# Workloads: fanout (SUBS subscribers on one channel, RATE msg/s), channels
# (CLIENTS clients each on its own channel, CHRATE publishes/s over them;
# CLIENTS=0 skips it), idle (IDLE connections). With PROCS=N the fanout
# subscribers are spread over N generator processes (one publishes, the
# others run --listen-only with the same --start-at), for rates where one
# generator process saturates before the server; their reports are merged
# (deliveries and loss summed, latency percentiles: the worst process's).
#
# Sockudo is built once (about 15 min on 2 cores) and cached outside the repo
# in $SOCKUDO_ROOT (default ~/.cache/duplex-bench/sockudo); set SKIP_SOCKUDO=1
# to leave it out. Socket.IO is installed from npm into bench/socketio/
# (node_modules, not committed); SKIP_SOCKETIO=1 leaves it out. None of the
# peers' code goes into this repository.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-1000}
RATE=${RATE:-100}
DURATION=${DURATION:-10s}
IDLE=${IDLE:-10000}
CLIENTS=${CLIENTS:-0}
PROCS=${PROCS:-1}
WRITE_DELAY=${WRITE_DELAY:-}
BASELINE=${BASELINE:-}
REDIS_ONLY=${REDIS_ONLY:-}
CHRATE=${CHRATE:-5000}
STALLED=${STALLED:-0}
STALLED_ONLY=${STALLED_ONLY:-}
STALLED_SIZE=${STALLED_SIZE:-1024}
STALLED_DURATION=${STALLED_DURATION:-20s}
ROUNDS=${ROUNDS:-2}
SOCKUDO_ROOT=${SOCKUDO_ROOT:-$HOME/.cache/duplex-bench/sockudo}
OUT=target/compare
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --quiet -p duplex -p duplex-bench --bins --example floor
BENCH=target/release/duplex-bench
DUPLEX=target/release/duplex
FLOOR=target/release/examples/floor

if [ -z "${SKIP_SOCKUDO:-}" ] && [ ! -x "$SOCKUDO_ROOT/bin/sockudo" ]; then
    command -v protoc >/dev/null || { apt-get install -y -qq protobuf-compiler >/dev/null; }
    echo "== building sockudo into $SOCKUDO_ROOT (once, ~15 min)" >&2
    cargo install sockudo --locked --features redis --root "$SOCKUDO_ROOT" >&2
fi

if [ -z "${SKIP_SOCKETIO:-}" ] && [ ! -d bench/socketio/node_modules ]; then
    command -v npm >/dev/null || { echo "npm is needed for the Socket.IO peer (or SKIP_SOCKETIO=1)" >&2; exit 1; }
    (cd bench/socketio && npm ci --no-audit --no-fund --silent)
fi

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
PIDS+=($!)
wait_port "$RPORT"
REDIS=redis://127.0.0.1:$RPORT

start_duplex() { # extra args...
    local port; port=$(free_port)
    "${DUPLEX_BIN:-$DUPLEX}" serve --listen 127.0.0.1:"$port" --log-level warn "$@" & PIDS+=($!)
    SERVER_PID=$!; SERVER_URL=ws://127.0.0.1:$port; wait_port "$port"
}
start_floor() {
    local port; port=$(free_port)
    "$FLOOR" --listen 127.0.0.1:"$port" --redis "$REDIS" --channel bench 2>/dev/null & PIDS+=($!)
    SERVER_PID=$!; SERVER_URL=ws://127.0.0.1:$port; wait_port "$port"
}
start_sockudo() {
    local port; port=$(free_port)
    HOST=127.0.0.1 PORT=$port METRICS_ENABLED=false SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=0 RATE_LIMITER_ENABLED=false \
    SOCKUDO_DEFAULT_APP_ID=app-id SOCKUDO_DEFAULT_APP_KEY=app-key SOCKUDO_DEFAULT_APP_SECRET=app-secret \
    ADAPTER_DRIVER=local CACHE_DRIVER=memory "$SOCKUDO_ROOT/bin/sockudo" >"$OUT/sockudo.log" 2>&1 & PIDS+=($!)
    SERVER_PID=$!; SERVER_URL=ws://127.0.0.1:$port; wait_port "$port"
}
start_socketio() { # extra env (REDIS_URL=...)
    local port; port=$(free_port)
    env PORT="$port" "$@" node bench/socketio/server.mjs >"$OUT/socketio.log" 2>&1 & PIDS+=($!)
    SERVER_PID=$!; SERVER_URL=ws://127.0.0.1:$port; wait_port "$port"
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }

run() { # label, then bench args
    local label=$1; shift
    local json
    json=$("$BENCH" "$@" --server "$SERVER_URL" --server-pid "$SERVER_PID" --json 2>/dev/null) || { echo "{\"label\":\"$label\",\"error\":true}" >> "$OUT/results.jsonl"; return; }
    python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; print(json.dumps(d))' "$label" "$json" >> "$OUT/results.jsonl"
}

# A fanout run spread over $PROCS generator processes, merged into one row.
run_fanout() { # label, then bench args (fanout args without --subscribers)
    local label=$1; shift
    if [ "$PROCS" -le 1 ]; then run "$label" fanout --subscribers "$SUBS" "$@"; return; fi
    local start each k; each=$((SUBS / PROCS))
    start=$(python3 -c 'import time; print(f"{time.time() + 4 + '"$SUBS"' / 2000:.3f}")')
    local files=() listeners=()
    for k in $(seq 2 "$PROCS"); do
        "$BENCH" fanout --subscribers "$each" "$@" --listen-only --start-at "$start" --source-offset $((k * 40)) \
            --server "$SERVER_URL" --server-pid "$SERVER_PID" --json > "$OUT/split-$k.json" 2>/dev/null &
        files+=("$OUT/split-$k.json"); listeners+=($!)
    done
    "$BENCH" fanout --subscribers $((SUBS - each * (PROCS - 1))) "$@" --start-at "$start" \
        --server "$SERVER_URL" --server-pid "$SERVER_PID" --json > "$OUT/split-1.json" 2>/dev/null || true
    wait "${listeners[@]}" || true
    python3 - "$label" "$OUT/split-1.json" "${files[@]}" >> "$OUT/results.jsonl" <<'PY'
import json, sys
label, parts = sys.argv[1], []
for f in sys.argv[2:]:
    try: parts.append(json.load(open(f)))
    except Exception: print(json.dumps({"label": label, "error": True})); sys.exit()
m = dict(parts[0]); m["label"] = label; m["processes"] = len(parts)
for k in ("subscribers", "connected", "expected", "received", "lost", "duplicates", "reordered", "subscribers_with_loss", "generator_cpu_s"):
    m[k] = sum(p.get(k) or 0 for p in parts)
m["latency_us"] = {q: max(p["latency_us"][q] for p in parts) for q in parts[0]["latency_us"]}
unique = m["received"] - m["duplicates"]
if m.get("server_cpu_s") and unique: m["server_cpu_us_per_delivery"] = round(m["server_cpu_s"] * 1e6 / unique, 3)
m["deliveries_per_s"] = round(m["received"] / m["duration_s"])
print(json.dumps(m))
PY
}

FANOUT=(--rate "$RATE" --duration "$DURATION" --warmup 2s --concurrency 128)
STALL=(fanout --subscribers "$SUBS" --stalled "$STALLED" --size "$STALLED_SIZE" --rate "$RATE" --duration "$STALLED_DURATION" --warmup 2s --concurrency 128)
for round in $(seq "$ROUNDS"); do
    echo "== round $round" >&2
    if [ "$STALLED" -gt 0 ]; then
        start_duplex; run "stalled: duplex plain, http publish" "${STALL[@]}" --protocol plain --via http; stop_server
        start_duplex --redis "$REDIS"; run "stalled: duplex plain, redis publish" "${STALL[@]}" --protocol plain --via redis --redis "$REDIS"; stop_server
        if [ -n "$BASELINE" ]; then
            DUPLEX_BIN=$BASELINE start_duplex; run "stalled: baseline plain, http publish" "${STALL[@]}" --protocol plain --via http; stop_server
        fi
        if [ -z "${SKIP_SOCKUDO:-}" ]; then
            start_sockudo; run "stalled: sockudo pusher, http publish" "${STALL[@]}" --protocol pusher --via http; stop_server
        fi
        if [ -z "${SKIP_SOCKETIO:-}" ]; then
            start_socketio; run "stalled: socket.io, http publish" "${STALL[@]}" --protocol socketio --via http; stop_server
        fi
    fi
    [ -n "$STALLED_ONLY" ] && continue
    if [ -z "$REDIS_ONLY" ]; then
    start_duplex; run_fanout "duplex plain, http publish" "${FANOUT[@]}" --protocol plain --via http; stop_server
    fi
    if [ -n "$WRITE_DELAY" ] && [ -z "$REDIS_ONLY" ]; then
        start_duplex --write-delay "$WRITE_DELAY"; run_fanout "duplex plain, http publish, write_delay $WRITE_DELAY" "${FANOUT[@]}" --protocol plain --via http; stop_server
    fi
    if [ -z "${SKIP_SOCKUDO:-}" ] && [ -z "$REDIS_ONLY" ]; then
        start_sockudo; run_fanout "sockudo pusher, http publish" "${FANOUT[@]}" --protocol pusher --via http; stop_server
    fi
    start_duplex --redis "$REDIS"; run_fanout "duplex plain, redis publish" "${FANOUT[@]}" --protocol plain --via redis --redis "$REDIS"; stop_server
    if [ -n "$BASELINE" ]; then
        if [ -z "$REDIS_ONLY" ]; then
            DUPLEX_BIN=$BASELINE start_duplex; run_fanout "baseline plain, http publish" "${FANOUT[@]}" --protocol plain --via http; stop_server
        fi
        DUPLEX_BIN=$BASELINE start_duplex --redis "$REDIS"; run_fanout "baseline plain, redis publish" "${FANOUT[@]}" --protocol plain --via redis --redis "$REDIS"; stop_server
    fi
    if [ -n "$WRITE_DELAY" ]; then
        start_duplex --redis "$REDIS" --write-delay "$WRITE_DELAY"; run_fanout "duplex plain, redis publish, write_delay $WRITE_DELAY" "${FANOUT[@]}" --protocol plain --via redis --redis "$REDIS"; stop_server
    fi
    start_floor; run_fanout "floor (1 write/delivery), redis publish" "${FANOUT[@]}" --protocol plain --via redis --redis "$REDIS"; stop_server
    if [ -z "${SKIP_SOCKETIO:-}" ] && [ -z "$REDIS_ONLY" ]; then
        start_socketio; run_fanout "socket.io, http publish" "${FANOUT[@]}" --protocol socketio --via http; stop_server
        start_socketio REDIS_URL="$REDIS"; run_fanout "socket.io redis adapter, http publish" "${FANOUT[@]}" --protocol socketio --via http; stop_server
    fi
    if [ "$CLIENTS" -gt 0 ] && [ -z "$REDIS_ONLY" ]; then
        CHANNELS=(channels --clients "$CLIENTS" --rate "$CHRATE" --duration "$DURATION" --warmup 2s --concurrency 128)
        start_duplex; run "channels: duplex plain, http publish" "${CHANNELS[@]}" --protocol plain --via http; stop_server
        start_duplex --redis "$REDIS"; run "channels: duplex plain, redis publish" "${CHANNELS[@]}" --protocol plain --via redis --redis "$REDIS"; stop_server
        if [ -n "$BASELINE" ]; then
            DUPLEX_BIN=$BASELINE start_duplex --redis "$REDIS"; run "channels: baseline plain, redis publish" "${CHANNELS[@]}" --protocol plain --via redis --redis "$REDIS"; stop_server
        fi
        if [ -z "${SKIP_SOCKUDO:-}" ]; then
            start_sockudo; run "channels: sockudo pusher, http publish" "${CHANNELS[@]}" --protocol pusher --via http; stop_server
        fi
        if [ -z "${SKIP_SOCKETIO:-}" ]; then
            start_socketio; run "channels: socket.io, http publish" "${CHANNELS[@]}" --protocol socketio --via http; stop_server
        fi
    fi
    [ -n "$REDIS_ONLY" ] && continue
    start_duplex; run "duplex idle" idle --connections "$IDLE" --concurrency 256 --hold 3s; stop_server
    if [ -z "${SKIP_SOCKUDO:-}" ]; then
        start_sockudo; run "sockudo idle" idle --protocol pusher --connections "$IDLE" --concurrency 256 --hold 3s; stop_server
    fi
    if [ -z "${SKIP_SOCKETIO:-}" ]; then
        start_socketio; run "socket.io idle" idle --protocol socketio --connections "$IDLE" --concurrency 256 --hold 3s; stop_server
    fi
done

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r)
def med(label, key, sub=None):
    vals = []
    for r in by.get(label, []):
        v = r.get(key) if sub is None else (r.get(key) or {}).get(sub)
        if isinstance(v, (int, float)): vals.append(v)
    return statistics.median(vals) if vals else None
print(f"{'run':52} {'srv us/deliv':>12} {'p50 ms':>8} {'p99 ms':>8} {'lost':>6} {'deliv/s':>9}   {'RSS KiB/conn':>12} {'conn/s':>8}")
for label in by:
    us = med(label, "server_cpu_us_per_delivery"); p50 = med(label, "latency_us", "p50"); p99 = med(label, "latency_us", "p99")
    lost = med(label, "lost"); dps = med(label, "deliveries_per_s"); rss = med(label, "server_rss_per_connection_kib"); rate = med(label, "connect_rate")
    f = lambda v, d=2, s=1: "-" if v is None else f"{v/s:.{d}f}"
    print(f"{label:52} {f(us):>12} {f(p50,1,1000):>8} {f(p99,1,1000):>8} {f(lost,0):>6} {f(dps,0):>9}   {f(rss):>12} {f(rate,0):>8}")
stalled = [l for l in by if l.startswith("stalled: ")]
if stalled:
    print()
    print(f"{'stalled clients (median of rounds)':52} {'readers lost':>12} {'p99 ms':>8} {'cut':>9} {'peak RSS MiB':>12} {'TCP mem MiB':>11}   how they ended")
    for label in stalled:
        r = by[label][-1]
        st = r.get("stalled") or {}
        cut = med(label, "stalled", "cut"); conn = med(label, "stalled", "connected")
        rss = med(label, "server_peak_rss_kib"); tcp = med(label, "kernel_tcp_peak_kib")
        p99 = med(label, "latency_us", "p99"); lost = med(label, "lost")
        f = lambda v, d=1, s=1: "-" if v is None else f"{v/s:.{d}f}"
        ends = ", ".join(f"{n} x {k}" for k, n in (st.get("endings") or {}).items()) or "none cut"
        print(f"{label:52} {f(lost,0):>12} {f(p99,1,1000):>8} {f(cut,0)+'/'+f(conn,0):>9} {f(rss,1,1024):>12} {f(tcp,1,1024):>11}   {ends}")
def ratio(a, b, key, sub=None):
    x, y = med(a, key, sub), med(b, key, sub)
    return f"{x/y:.2f}x" if x and y else "-"
print()
print("ratios (median of rounds):")
print("  duplex / sockudo, CPU per delivery (http publish):", ratio("duplex plain, http publish", "sockudo pusher, http publish", "server_cpu_us_per_delivery"))
print("  duplex / floor,   CPU per delivery (redis publish):", ratio("duplex plain, redis publish", "floor (1 write/delivery), redis publish", "server_cpu_us_per_delivery"))
print("  duplex redis / duplex memory, CPU per delivery:    ", ratio("duplex plain, redis publish", "duplex plain, http publish", "server_cpu_us_per_delivery"))
print("  duplex / sockudo, RSS per idle connection:        ", ratio("duplex idle", "sockudo idle", "server_rss_per_connection_kib"))
if WRITE_DELAY := __import__("os").environ.get("WRITE_DELAY"):
    print(f"  duplex write_delay {WRITE_DELAY} / sockudo, CPU per delivery:", ratio(f"duplex plain, http publish, write_delay {WRITE_DELAY}", "sockudo pusher, http publish", "server_cpu_us_per_delivery"))
    print(f"  duplex redis write_delay {WRITE_DELAY} / floor, CPU per delivery:", ratio(f"duplex plain, redis publish, write_delay {WRITE_DELAY}", "floor (1 write/delivery), redis publish", "server_cpu_us_per_delivery"))
    print(f"  duplex write_delay {WRITE_DELAY} / duplex, CPU per delivery:  ", ratio(f"duplex plain, http publish, write_delay {WRITE_DELAY}", "duplex plain, http publish", "server_cpu_us_per_delivery"))
if __import__("os").environ.get("BASELINE"):
    print("  duplex / baseline, CPU per delivery (http publish):", ratio("duplex plain, http publish", "baseline plain, http publish", "server_cpu_us_per_delivery"))
    print("  duplex / baseline, CPU per delivery (redis publish):", ratio("duplex plain, redis publish", "baseline plain, redis publish", "server_cpu_us_per_delivery"))
    print("  duplex / baseline, p99 latency (redis publish):    ", ratio("duplex plain, redis publish", "baseline plain, redis publish", "latency_us", "p99"))
    print("  channels: duplex / baseline, CPU per delivery (redis):", ratio("channels: duplex plain, redis publish", "channels: baseline plain, redis publish", "server_cpu_us_per_delivery"))
print("  duplex / socket.io, CPU per delivery (http publish):", ratio("duplex plain, http publish", "socket.io, http publish", "server_cpu_us_per_delivery"))
print("  duplex redis / socket.io redis adapter, CPU per delivery:", ratio("duplex plain, redis publish", "socket.io redis adapter, http publish", "server_cpu_us_per_delivery"))
print("  duplex / socket.io, RSS per idle connection:      ", ratio("duplex idle", "socket.io idle", "server_rss_per_connection_kib"))
print("  channels: duplex / sockudo, CPU per delivery:     ", ratio("channels: duplex plain, http publish", "channels: sockudo pusher, http publish", "server_cpu_us_per_delivery"))
print("  channels: duplex / socket.io, CPU per delivery:   ", ratio("channels: duplex plain, http publish", "channels: socket.io, http publish", "server_cpu_us_per_delivery"))
PY
