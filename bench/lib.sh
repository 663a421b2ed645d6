# Shared by bench/history.sh, bench/presence.sh and bench/scaling.sh (source
# it after setting OUT, DUPLEX, BENCH and DURATION): a private redis-server, a
# node started from a TOML config, CPU readings, and one fan-out row.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 0.1; done; echo "node on $1 never healthy" >&2; return 1; }
# CPU seconds a process has used (user + system), from /proc.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

# On exit, the redis-server (REDIS_PID), the node (NODE_PID) and every pid a
# script added to PIDS (its other servers and generators) are killed.
PIDS=()
cleanup() {
    local pid
    for pid in ${NODE_PID:-} ${REDIS_PID:-} ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Starts a throwaway redis-server: REDIS_PID, REDIS (its URL).
start_redis() {
    local port
    port=$(free_port)
    redis-server --port "$port" --save "" --appendonly no --loglevel warning >/dev/null &
    REDIS_PID=$!
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    REDIS=redis://127.0.0.1:$port
}

# Starts a node with `config $1` (the sourcing script's function) as its
# TOML: NODE_PID, PORT. Its broker is REDIS, or the array BROKER_FLAGS when
# set (e.g. `--nats URL`; empty: the embedded memory broker).
start_node() {
    config "$1" > "$OUT/$1.toml"
    PORT=$(free_port)
    local flags=(--redis "${REDIS:-}")
    if declare -p BROKER_FLAGS >/dev/null 2>&1; then flags=(${BROKER_FLAGS[@]+"${BROKER_FLAGS[@]}"}); fi
    "$DUPLEX" serve --listen "127.0.0.1:$PORT" ${flags[@]+"${flags[@]}"} --config "$OUT/$1.toml" --log-level warn &
    NODE_PID=$!
    wait_http "$PORT"
}

stop_node() { kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true; NODE_PID=; }

# One fan-out run on a fresh node: fanout_row WORKLOAD FEATURE ON|OFF
# SUBSCRIBERS RATE appends a JSON row {workload, FEATURE: on|off, ...} to
# $OUT/results.jsonl (node CPU per delivery, Redis CPU per publish, latency).
# The broker server whose CPU is read is BROKER_PID if set (empty: none),
# else REDIS_PID.
fanout_row() {
    start_node "$3"
    local broker_pid=${BROKER_PID-${REDIS_PID:-}} redis_before=0 line redis_after=0
    if [ -n "$broker_pid" ]; then redis_before=$(cpu_s "$broker_pid"); fi
    line=$("$BENCH" fanout --server "ws://127.0.0.1:$PORT" --protocol native --subscribers "$4" \
        --rate "$5" --duration "$DURATION" --server-pid "$NODE_PID" --json --channel bench 2>/dev/null)
    if [ -n "$broker_pid" ]; then redis_after=$(cpu_s "$broker_pid"); fi
    stop_node
    python3 - "$1" "$2" "$3" "$redis_before" "$redis_after" "$line" "$broker_pid" >> "$OUT/results.jsonl" <<'EOF'
import json, sys
name, feature, state, before, after, line, has_broker = sys.argv[1:]
r = json.loads(line)
published = max(r["published_total"], 1)
broker_us = round((float(after) - float(before)) * 1e6 / published, 2) if has_broker else None
print(json.dumps({
    "workload": name, feature: state,
    "published": r["published_total"], "received": r["received"], "lost": r["lost"],
    "duplicates": r.get("duplicates", 0),
    "node_cpu_us_per_delivery": r["server_cpu_us_per_delivery"],
    "redis_cpu_us_per_publish": broker_us, "broker_cpu_us_per_publish": broker_us,
    "p50_us": r["latency_us"]["p50"], "p99_us": r["latency_us"]["p99"],
}))
EOF
}
