#!/usr/bin/env bash
# Presence (issue 18), on one private Redis and one node:
#
# - query, steady, churn (crates/duplex/examples/presence_bench.rs):
#   MEMBERS native clients in one presence channel (join_leave off); the
#   latency and size of GET /api/presence_stats, GET /api/presence and the
#   native presence command; Redis commands/s and CPU over STEADY_SECS with
#   nothing else happening (only the node's lease renewals, every
#   presence_ttl / 3); CHURN more clients subscribing and unsubscribing as
#   fast as their replies come for CHURN_SECS: changes/s, subscribe reply
#   p50/p99, node and Redis CPU;
# - fanout: SUBS native subscribers, RATE publishes/s, the `bench*`
#   namespace with presence on vs off, ROUNDS rounds: node CPU per delivery
#   and latency must not move.
#
# - pushes (crates/duplex/examples/presence_pushes.rs): LISTENERS native
#   subscribers of a `join_leave` channel; CHURNERS clients subscribing and
#   unsubscribing at each of RATES changes/s for PUSH_SECS: pushes received
#   of those expected, how long after the churn the last one came
#   (drain_ms: fan-out keeps up while it stays small), node CPU;
#
#   bench/presence.sh
#   ROUNDS=2 MEMBERS=10000 STEADY_SECS=20 CHURN=100 CHURN_SECS=10 SUBS=2000 RATE=100 bench/presence.sh
#
# Raw JSON lines go to target/presence-bench/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

MEMBERS=${MEMBERS:-10000}
STEADY_SECS=${STEADY_SECS:-20}
CHURN=${CHURN:-100}
CHURN_SECS=${CHURN_SECS:-10}
SUBS=${SUBS:-2000}
RATE=${RATE:-100}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
LISTENERS=${LISTENERS:-1000}
RATES=${RATES:-100,200,400,800,1600}
PUSH_SECS=${PUSH_SECS:-5}
CHURNERS=${CHURNERS:-20}
OUT=target/presence-bench
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

cargo build --release --quiet -p duplex -p duplex-bench --bins --example presence_bench --example presence_pushes
DUPLEX=target/release/duplex
BENCH=target/release/duplex-bench
PRESENCE_BIN=target/release/examples/presence_bench
PUSHES_BIN=target/release/examples/presence_pushes
# shellcheck source=bench/lib.sh
. bench/lib.sh

start_redis

config() { # $1 = on|off|members|pushes
    case "$1" in
        on) printf '[[namespaces]]\npattern = "bench*"\npresence = true\npresence_ttl = "10s"\n' ;;
        off) printf '[[namespaces]]\npattern = "bench*"\n' ;;
        members) printf '[[namespaces]]\npattern = "room:*"\npresence = true\njoin_leave = false\npresence_ttl = "10s"\n' ;;
        pushes) printf '[[namespaces]]\npattern = "room:*"\npresence = true\njoin_leave = true\npresence_ttl = "10s"\n' ;;
    esac
}

echo "== presence: $MEMBERS members, steady ${STEADY_SECS}s, churn $CHURN clients ${CHURN_SECS}s" >&2
start_node members
"$PRESENCE_BIN" "ws://127.0.0.1:$PORT" "$REDIS" "$NODE_PID" "$REDIS_PID" room:bench \
    "$MEMBERS" "$STEADY_SECS" "$CHURN" "$CHURN_SECS" | tee -a "$OUT/results.jsonl"
stop_node

echo "== pushes: $LISTENERS listeners, $CHURNERS churners at $RATES changes/s, ${PUSH_SECS}s each" >&2
start_node pushes
"$PUSHES_BIN" "ws://127.0.0.1:$PORT" "$NODE_PID" room:pushes "$LISTENERS" "$RATES" "$PUSH_SECS" "$CHURNERS" \
    | tee -a "$OUT/results.jsonl"
stop_node

for round in $(seq "$ROUNDS"); do
    echo "== fanout round $round of $ROUNDS" >&2
    for presence in off on; do
        fanout_row fanout presence "$presence" "$SUBS" "$RATE"
    done
done

python3 - "$OUT/results.jsonl" <<'EOF'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(presence, key):
    vals = [r[key] for r in rows if r.get("workload") == "fanout" and r.get("presence") == presence and r.get(key) is not None]
    return statistics.median(vals) if vals else None
print(f"{'fanout metric':28} {'off':>10} {'on':>10} {'on/off':>7}")
for key in ("node_cpu_us_per_delivery", "redis_cpu_us_per_publish", "p50_us", "p99_us", "lost", "duplicates"):
    off, on = med("off", key), med("on", key)
    ratio = f"{on / off:.2f}" if off and on is not None else "-"
    print(f"{key:28} {off!s:>10} {on!s:>10} {ratio:>7}")
for r in rows:
    if r.get("workload") in ("query", "steady", "churn", "pushes"):
        print(r["workload"] + ":", json.dumps(r))
EOF
