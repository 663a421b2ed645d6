#!/usr/bin/env bash
# Scaling out (issue 19), side by side in one run, ROUNDS interleaved rounds:
#
# - brokers: one node, SUBS native subscribers of one channel, RATE
#   publishes/s through the node's HTTP API, on the memory broker, a
#   private redis-server and a private nats-server: node CPU per delivery,
#   broker-server CPU per publish, latency, lost;
# - shards: three nodes on a plain Redis, a Redis Cluster of 1 master and
#   one of 3 masters (no replicas), the `channels` workload: CLIENTS
#   clients, each on its own channel, spread over the three nodes (one
#   generator process per node with CLIENTS/3 clients, publishing
#   CH_RATE/3 messages/s through its own node's HTTP API, all starting at
#   the same --start-at): per shard Redis CPU per message and its share of
#   the messages (INFO commandstats), node CPU per delivery, latency, lost.
#
#   bench/scaling.sh
#   ROUNDS=3 DURATION=10s SUBS=2000 RATE=100 CLIENTS=1000 CH_RATE=3000 bench/scaling.sh
#
# Raw JSON lines go to target/scaling-bench/results.jsonl. Every server
# listens on a free port and is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-2000}
RATE=${RATE:-100}
CLIENTS=${CLIENTS:-1000}
CH_RATE=${CH_RATE:-3000}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
NATS_SERVER=${NATS_SERVER:-/usr/sbin/nats-server}
OUT=target/scaling-bench
rm -rf "$OUT"
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

cargo build --release --quiet -p duplex -p duplex-bench --bins
DUPLEX=target/release/duplex
BENCH=target/release/duplex-bench
# shellcheck source=bench/lib.sh
. bench/lib.sh

config() { # $1 = broker name; the same namespaces everywhere
    printf '[[namespaces]]\npattern = "*"\n'
}

wait_ping() { for _ in $(seq 50); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "redis on $1 never answered" >&2; return 1; }
# A redis-server with cluster mode on, its own dir and free bus port:
# CS_PORT, CS_PID.
start_cluster_server() {
    local port bus dir
    port=$(free_port)
    bus=$(free_port)
    dir="$OUT/redis-$port"
    mkdir -p "$dir"
    redis-server --port "$port" --cluster-enabled yes --cluster-port "$bus" --dir "$dir" \
        --cluster-config-file nodes.conf --save "" --appendonly no --loglevel warning >/dev/null &
    CS_PID=$!
    CS_PORT=$port
    PIDS+=("$CS_PID")
    wait_ping "$port"
}

wait_cluster_ok() {
    local port
    for port in "$@"; do
        for _ in $(seq 100); do
            redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok' && continue 2
            sleep 0.1
        done
        echo "cluster node $port never reached cluster_state:ok" >&2
        return 1
    done
}

# Servers, started once and shared by every round.
start_redis
REDIS_PORT=${REDIS##*:}

NATS_PORT=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.1; done

declare -A SHARD_PORTS SHARD_PIDS
start_cluster_server
SHARD_PORTS[cluster1]=$CS_PORT
SHARD_PIDS[cluster1]=$CS_PID
redis-cli -p "$CS_PORT" cluster addslotsrange 0 16383 >/dev/null
wait_cluster_ok "$CS_PORT"

ports=() pids=()
for _ in 1 2 3; do
    start_cluster_server
    ports+=("$CS_PORT") pids+=("$CS_PID")
done
redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$OUT/cluster-create.log"
wait_cluster_ok "${ports[@]}"
SHARD_PORTS[cluster3]="${ports[*]}"
SHARD_PIDS[cluster3]="${pids[*]}"
SHARD_PORTS[redis]=$REDIS_PORT
SHARD_PIDS[redis]=$REDIS_PID

# Broker flags and server pids of a broker name.
use_broker() {
    case "$1" in
        memory) BROKER_FLAGS=() BROKER_PID= ;;
        redis) BROKER_FLAGS=(--redis "$REDIS") BROKER_PID=$REDIS_PID ;;
        nats) BROKER_FLAGS=(--nats "nats://127.0.0.1:$NATS_PORT") BROKER_PID=$NATS_PID ;;
        cluster1 | cluster3)
            local p urls=()
            for p in ${SHARD_PORTS[$1]}; do urls+=("127.0.0.1:$p"); done
            BROKER_FLAGS=(--redis "redis+cluster://$(IFS=,; echo "${urls[*]}")") ;;
    esac
}

# Messages a Redis server has published (PUBLISH + SPUBLISH calls).
published_calls() {
    redis-cli -p "$1" info commandstats |
        awk -F'[:=,]' '/^cmdstat_(s?publish):/ {n += $3} END {print n + 0}'
}

# Per shard "port cpu_s publishes" lines.
shard_readings() {
    local p pids=(${SHARD_PIDS[$1]}) i=0
    for p in ${SHARD_PORTS[$1]}; do
        echo "$p $(cpu_s "${pids[$i]}") $(published_calls "$p")"
        i=$((i + 1))
    done
}

# One `channels` row on three fresh nodes on broker $1.
channels_row() {
    use_broker "$1"
    local nodes=() node_ports=() i gens=() start_at per=$((CLIENTS / 3))
    for i in 0 1 2; do
        start_node "$1"
        nodes+=("$NODE_PID") node_ports+=("$PORT")
        PIDS+=("$NODE_PID")
        NODE_PID=
    done
    shard_readings "$1" >"$OUT/shards-before"
    start_at=$(python3 -c 'import time; print(int(time.time()) + 4)')
    for i in 0 1 2; do
        "$BENCH" channels --server "ws://127.0.0.1:${node_ports[$i]}" --protocol native \
            --clients "$per" --prefix "n$i-ch-" --rate "$(python3 -c "print($CH_RATE / 3)")" \
            --duration "$DURATION" --start-at "$start_at" --source-offset "$((i * 10))" \
            --server-pid "${nodes[$i]}" --json >"$OUT/gen-$i.json" 2>"$OUT/gen-$i.err" &
        gens+=($!)
        PIDS+=($!)
    done
    for i in 0 1 2; do wait "${gens[$i]}" || { echo "generator $i failed:" >&2; cat "$OUT/gen-$i.json" "$OUT/gen-$i.err" >&2; exit 1; }; done
    shard_readings "$1" >"$OUT/shards-after"
    for i in 0 1 2; do kill "${nodes[$i]}"; wait "${nodes[$i]}" 2>/dev/null || true; done
    python3 - "$1" "$OUT" >>"$OUT/results.jsonl" <<'EOF'
import json, sys
broker, out = sys.argv[1:]
gens = [json.loads(open(f"{out}/gen-{i}.json").read()) for i in range(3)]
def readings(name):
    return [l.split() for l in open(f"{out}/{name}") if l.strip()]
shards = []
for (port, c0, m0), (_, c1, m1) in zip(readings("shards-before"), readings("shards-after")):
    msgs = int(m1) - int(m0)
    cpu_us = (float(c1) - float(c0)) * 1e6
    shards.append({"port": int(port), "messages": msgs, "cpu_ms": round(cpu_us / 1e3, 1),
                   "cpu_us_per_message": round(cpu_us / max(msgs, 1), 2)})
total_msgs = max(sum(s["messages"] for s in shards), 1)
for s in shards:
    s["share"] = round(s["messages"] / total_msgs, 3)
received = sum(g["received"] for g in gens)
node_cpu = sum(g["server_cpu_s"] or 0 for g in gens)
print(json.dumps({
    "workload": "channels", "broker": broker,
    "published": sum(g["published_total"] for g in gens), "received": received,
    "lost": sum(g["lost"] for g in gens), "duplicates": sum(g.get("duplicates", 0) for g in gens),
    "node_cpu_us_per_delivery": round(node_cpu * 1e6 / max(received, 1), 2),
    "p50_us": sorted(g["latency_us"]["p50"] for g in gens)[1],
    "p99_us": max(g["latency_us"]["p99"] for g in gens),
    "shards": shards,
}))
EOF
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS" >&2
    for broker in memory redis nats; do
        use_broker "$broker"
        fanout_row fanout broker "$broker" "$SUBS" "$RATE"
    done
    for broker in redis cluster1 cluster3; do
        channels_row "$broker"
    done
done

python3 - "$OUT/results.jsonl" "$SUBS" "$RATE" "$CLIENTS" "$CH_RATE" <<'EOF'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
subs, rate, clients, ch_rate = sys.argv[2:]
def med(workload, broker, key):
    vals = [r[key] for r in rows if r["workload"] == workload and r["broker"] == broker and r.get(key) is not None]
    return round(statistics.median(vals), 2) if vals else None
def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"
print(f"\nfan-out: {subs} subscribers x {rate} msg/s, one node, medians of {len([r for r in rows if r.get('broker') == 'memory'])} rounds")
print(f"{'metric':28} {'memory':>9} {'redis':>9} {'nats':>9} {'nats/redis':>10} {'redis/mem':>9}")
for key in ("node_cpu_us_per_delivery", "broker_cpu_us_per_publish", "p50_us", "p99_us", "lost", "duplicates"):
    m, r, n = (med("fanout", b, key) for b in ("memory", "redis", "nats"))
    print(f"{key:28} {m!s:>9} {r!s:>9} {n!s:>9} {ratio(n, r):>10} {ratio(r, m):>9}")

print(f"\nchannels: {clients} clients on their own channels over 3 nodes, {ch_rate} msg/s in total")
print(f"{'metric':28} {'redis':>9} {'cluster1':>9} {'cluster3':>9} {'c3/c1':>9}")
for key in ("node_cpu_us_per_delivery", "p50_us", "p99_us", "lost", "duplicates", "published", "received"):
    r, c1, c3 = (med("channels", b, key) for b in ("redis", "cluster1", "cluster3"))
    print(f"{key:28} {r!s:>9} {c1!s:>9} {c3!s:>9} {ratio(c3, c1):>9}")
print("\nper shard (medians over rounds; shard i = i-th port of the cluster):")
print(f"{'broker':9} {'shard':>5} {'share':>6} {'messages':>9} {'cpu ms':>8} {'us/msg':>7} {'msg/s per core':>15}")
for broker in ("redis", "cluster1", "cluster3"):
    rs = [r for r in rows if r["workload"] == "channels" and r["broker"] == broker]
    if not rs:
        continue
    per_core = []
    for i in range(len(rs[0]["shards"])):
        def m(k):
            return statistics.median(r["shards"][i][k] for r in rs)
        us = m("cpu_us_per_message")
        per_core.append(1e6 / us if us else 0)
        print(f"{broker:9} {i:>5} {m('share'):>6.3f} {m('messages'):>9.0f} {m('cpu_ms'):>8.1f} {us:>7.2f} {1e6 / us if us else 0:>15,.0f}")
    # A cluster is as fast as its busiest shard allows: every shard at the
    # slowest shard's per-message cost, taking its share of the load.
    shares = [statistics.median(r["shards"][i]["share"] for r in rs) for i in range(len(per_core))]
    cap = min(pc / max(sh, 1e-9) for pc, sh in zip(per_core, shares)) if per_core else 0
    print(f"{broker:9} extrapolation: one core per shard carries ~{cap:,.0f} msg/s in all (busiest shard saturates first)")
EOF
