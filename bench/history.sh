#!/usr/bin/env bash
# History on vs off, side by side in one run, on one private Redis:
#
# - publish: PUB_SUBS native subscribers, PUB_RATE publishes/s through the
#   HTTP API: node CPU per delivery, Redis CPU per publish, latency;
# - fanout: SUBS native subscribers, RATE publishes/s: the fan-out figures
#   with history on must stay within 10% of off;
# - storm: STORM clients of one history channel leave at once, BEHIND
#   messages are published, all come back with `recover`
#   (crates/duplex/examples/recovery_storm.rs): time until all recovered,
#   p99, history reads and Redis commands it cost.
#
#   bench/history.sh
#   ROUNDS=3 SUBS=2000 RATE=100 PUB_SUBS=10 PUB_RATE=2000 STORM=2000 BEHIND=100 bench/history.sh
#
# Raw JSON lines go to target/history-bench/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-2000}
RATE=${RATE:-100}
PUB_SUBS=${PUB_SUBS:-10}
PUB_RATE=${PUB_RATE:-2000}
STORM=${STORM:-2000}
BEHIND=${BEHIND:-100}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
OUT=target/history-bench
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

cargo build --release --quiet -p duplex -p duplex-bench --bins --example recovery_storm
DUPLEX=target/release/duplex
BENCH=target/release/duplex-bench
STORM_BIN=target/release/examples/recovery_storm
# shellcheck source=bench/lib.sh
. bench/lib.sh

start_redis

config() { # $1 = on|off
    if [ "$1" = on ]; then
        printf '[[namespaces]]\npattern = "bench*"\nhistory_size = 1000\nhistory_ttl = "1h"\n'
    else
        printf '[[namespaces]]\npattern = "bench*"\n'
    fi
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS" >&2
    for history in off on; do
        fanout_row publish history "$history" "$PUB_SUBS" "$PUB_RATE"
        fanout_row fanout history "$history" "$SUBS" "$RATE"
    done
done

echo "== recovery storm: $STORM clients, $BEHIND behind" >&2
start_node on
"$STORM_BIN" "ws://127.0.0.1:$PORT" "$REDIS" "$STORM" "$BEHIND" bench-storm | tee -a "$OUT/results.jsonl"
stop_node

python3 - "$OUT/results.jsonl" <<'EOF'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(workload, history, key):
    vals = [r[key] for r in rows if r.get("workload") == workload and r.get("history") == history and r.get(key) is not None]
    return statistics.median(vals) if vals else None
print(f"{'workload':10} {'metric':28} {'off':>10} {'on':>10} {'on/off':>7}")
for w in ("publish", "fanout"):
    for key in ("node_cpu_us_per_delivery", "redis_cpu_us_per_publish", "p50_us", "p99_us", "lost", "duplicates"):
        off, on = med(w, "off", key), med(w, "on", key)
        ratio = f"{on / off:.2f}" if off and on is not None else "-"
        print(f"{w:10} {key:28} {off!s:>10} {on!s:>10} {ratio:>7}")
for r in rows:
    if r.get("workload") == "recovery_storm":
        print("storm:", json.dumps(r))
EOF
