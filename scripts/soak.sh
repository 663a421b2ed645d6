#!/usr/bin/env bash
# Soak: one Duplex node on its own redis-server under client churn for
# DURATION, with a Redis restart (SIGKILL, a pause, start again on the same
# port) in the middle. Samples the node's RSS, open fds and /api/info every
# SAMPLE_EVERY seconds into a CSV; after the clients leave, waits for the
# counters to reach zero and samples again. Exits non-zero when:
#   - a continuously subscribed client missed a message the node accepted
#     outside the Redis outage (duplex-bench churn: check.lost > 0),
#   - /api/info does not return to 0 connections / subscriptions / channels,
#   - open fds are not back to the pre-load baseline (+ FD_SLACK),
#   - RSS grew after warm-up: mean of the last third of the load samples
#     vs the first third (after WARMUP), more than RSS_GROWTH_PCT percent,
#   - the workload itself failed.
#
#   DURATION=2m scripts/soak.sh          # quick check
#   nice -n 5 scripts/soak.sh            # 30 minutes
#
# Settings (environment): DURATION (30m), CLIENTS (2500), CHANNELS (100),
# RATE (200 publishes/s), REDIS_DOWN (5 s), SAMPLE_EVERY (10 s), WARMUP
# (seconds; default a quarter of DURATION, at most 300), RSS_GROWTH_PCT (15),
# FD_SLACK (5), EXTRA (more duplex-bench churn flags). Results in
# target/soak/<date>/: samples.csv, events.txt, churn.json, node.log,
# bench.log, summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30m}
CLIENTS=${CLIENTS:-2500}
CHANNELS=${CHANNELS:-100}
RATE=${RATE:-200}
REDIS_DOWN=${REDIS_DOWN:-5}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
RSS_GROWTH_PCT=${RSS_GROWTH_PCT:-15}
FD_SLACK=${FD_SLACK:-5}
EXTRA=${EXTRA:-}

# DURATION in seconds (s, m, h suffixes or plain seconds).
to_seconds() {
    case "$1" in
        *h) echo $(( ${1%h} * 3600 )) ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}
DUR_S=$(to_seconds "$DURATION")
WARMUP=${WARMUP:-$(( DUR_S / 4 < 300 ? DUR_S / 4 : 300 ))}

for tool in redis-server curl jq python3; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is required" >&2; exit 2; }
done

echo "== building release binaries"
cargo build --release --quiet -p duplex -p duplex-bench
DUPLEX=target/release/duplex
BENCH=target/release/duplex-bench

OUT=target/soak/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT/redis"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/samples.csv
EVENTS=$OUT/events.txt
: > "$EVENTS"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
RPORT=$(free_port)
NPORT=$(free_port)
API=http://127.0.0.1:$NPORT

REDIS_PID=
NODE_PID=
BENCH_PID=
cleanup() {
    for pid in "$BENCH_PID" "$NODE_PID" "$REDIS_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT

T0=$(date +%s)
event() { echo "$(( $(date +%s) - T0 ))s $*" | tee -a "$EVENTS"; }

start_redis() {
    (cd "$OUT/redis" && exec redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
        >> "$OUT/redis.log" 2>&1) &
    REDIS_PID=$!
    for _ in $(seq 100); do
        redis-cli -p "$RPORT" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "soak: redis-server did not start on $RPORT" >&2
    exit 2
}

# The open-files limit is per process; the node gets the hard limit.
ulimit -n "$(ulimit -Hn)"

start_redis
event "redis-server started on $RPORT (pid $REDIS_PID)"
"$DUPLEX" serve --listen "127.0.0.1:$NPORT" --redis "redis://127.0.0.1:$RPORT" > "$OUT/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 100); do
    curl -sf "$API/health" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "$API/health" >/dev/null || { echo "soak: node did not become healthy" >&2; exit 2; }
event "node started on $NPORT (pid $NODE_PID)"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$NODE_PID/status"; }
fds() { ls "/proc/$NODE_PID/fd" | wc -l; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$NODE_PID/status"; }

echo "t_s,phase,rss_kib,fds,threads,connections,subscriptions,channels,broker,reconnects,connects_total,deliveries_total,messages_received,publish_failures" > "$CSV"
# One CSV row: elapsed seconds, phase, the node's /proc numbers and /api/info.
sample() {
    local phase=$1 info
    info=$(curl -sf --max-time 5 "$API/api/info" || echo '{}')
    echo "$(( $(date +%s) - T0 )),$phase,$(rss_kib),$(fds),$(threads),$(echo "$info" | jq -r '[.connections, .subscriptions, .channels, .broker.status, .broker.reconnects, .stats.connects, .stats.deliveries, .stats.messages_received, .stats.publish_failures] | map(. // "") | @csv' | tr -d '"')" >> "$CSV"
}

sleep 2
sample baseline
BASE_FDS=$(fds)
BASE_RSS=$(rss_kib)
event "baseline: rss ${BASE_RSS} KiB, ${BASE_FDS} fds"

# shellcheck disable=SC2086
"$BENCH" churn --server "ws://127.0.0.1:$NPORT" --clients "$CLIENTS" --channels "$CHANNELS" \
    --rate "$RATE" --duration "$DURATION" $EXTRA \
    > "$OUT/churn.json" 2> "$OUT/bench.log" &
BENCH_PID=$!
event "churn started: $CLIENTS clients, $CHANNELS channels, $RATE/s for $DURATION (pid $BENCH_PID)"

LOAD_START=$(date +%s)
RESTART_AT=$(( LOAD_START + DUR_S / 2 ))
restarted=no
next=$(( $(date +%s) + SAMPLE_EVERY ))
while kill -0 "$BENCH_PID" 2>/dev/null; do
    now=$(date +%s)
    if [ "$restarted" = no ] && [ "$now" -ge "$RESTART_AT" ]; then
        restarted=yes
        kill -9 "$REDIS_PID"
        wait "$REDIS_PID" 2>/dev/null || true
        event "redis-server killed (SIGKILL)"
        sleep "$REDIS_DOWN"
        start_redis
        event "redis-server started again on $RPORT (pid $REDIS_PID)"
    fi
    if [ "$now" -ge "$next" ]; then
        if [ $(( now - LOAD_START )) -lt "$WARMUP" ]; then phase=warmup; else phase=load; fi
        sample "$phase"
        next=$(( next + SAMPLE_EVERY ))
    fi
    sleep 1
done
BENCH_RC=0
wait "$BENCH_PID" || BENCH_RC=$?
BENCH_PID=
event "churn ended (exit $BENCH_RC)"
cat "$OUT/bench.log" | tail -12

# Every client is gone: the counters must reach zero.
zero=no
for _ in $(seq 60); do
    sample drain
    if [ "$(curl -sf "$API/api/info" | jq '.connections + .subscriptions + .channels')" = 0 ]; then
        zero=yes
        break
    fi
    sleep 1
done
sleep 5
sample after
AFTER_FDS=$(fds)
AFTER_RSS=$(rss_kib)
INFO=$(curl -sf "$API/api/info")
event "after: rss ${AFTER_RSS} KiB, ${AFTER_FDS} fds, counters zero: $zero"

# RSS growth: load samples after warm-up, first third vs last third.
read -r FIRST_RSS LAST_RSS GROWTH <<< "$(awk -F, '$2 == "load" {r[n++] = $3} END {
    if (n < 3) { print "0 0 0"; exit }
    t = int(n / 3); for (i = 0; i < t; i++) { a += r[i]; b += r[n - 1 - i] }
    a /= t; b /= t; printf "%d %d %.1f\n", a, b, (b - a) * 100 / a }' "$CSV")"
PEAK_RSS=$(awk -F, 'NR > 1 && $3 > m {m = $3} END {print m}' "$CSV")
PEAK_FDS=$(awk -F, 'NR > 1 && $4 > m {m = $4} END {print m}' "$CSV")

J=$OUT/churn.json
fails=()
[ "$BENCH_RC" = 0 ] && jq -e '.workload == "churn"' "$J" >/dev/null || fails+=("workload failed (exit $BENCH_RC): $(head -c 300 "$J")")
LOST=$(jq '.check.lost // -1' "$J")
[ "$LOST" = 0 ] || fails+=("delivery: $LOST expected messages lost")
[ "$zero" = yes ] || fails+=("counters not back to zero: $(echo "$INFO" | jq -c '{connections, subscriptions, channels}')")
[ "$AFTER_FDS" -le $(( BASE_FDS + FD_SLACK )) ] || fails+=("fds: $AFTER_FDS after vs $BASE_FDS baseline")
awk -v g="$GROWTH" -v m="$RSS_GROWTH_PCT" 'BEGIN {exit !(g > m)}' && fails+=("rss grew ${GROWTH}% after warm-up (limit ${RSS_GROWTH_PCT}%)")
[ "$restarted" = yes ] || fails+=("redis was not restarted (run shorter than half its duration?)")

{
    echo "soak $(date -u +%Y-%m-%d) duration $DURATION, $CLIENTS clients, $CHANNELS channels, $RATE/s, redis down ${REDIS_DOWN}s"
    echo "results: $OUT"
    echo "rss KiB: baseline $BASE_RSS, peak $PEAK_RSS, after $AFTER_RSS; load mean first third $FIRST_RSS, last third $LAST_RSS (${GROWTH}%)"
    echo "fds: baseline $BASE_FDS, peak $PEAK_FDS, after $AFTER_FDS"
    echo "counters after: $(echo "$INFO" | jq -c '{connections, subscriptions, channels, broker: .broker.status, reconnects: .broker.reconnects, stats}')"
    jq -r '"clients: \(.connects) connects (\(.connect_failures) failed), peak \(.peak_live); closed \(.closes_graceful) graceful, \(.closes_abrupt) reset, \(.closed_at_stop) at stop, \(.dropped_by_server) dropped by the server",
           "subscriptions: \(.subscribes) confirmed (\(.subscribe_refused) refused), \(.unsubscribes) unsubscribes",
           "publishes: \(.published) accepted, \(.publish_refused) refused, \(.publish_late) late",
           "delivery: \(.deliveries) pushes; \(.check.subscriptions) subscriptions checked, \(.check.expected) expected, \(.check.lost) lost; strays \(.strays), duplicates \(.duplicates), reordered \(.reordered)",
           "outage windows: \([.outage_windows[] | "\(.from_s)-\(.to_s)s"] | join(", ")): \(.check.outage_expected) accepted messages expected inside, \(.check.outage_lost) not delivered"' "$J" 2>/dev/null || true
    echo
    echo "| t (min) | phase | RSS (MiB) | fds | connections | subscriptions | channels | broker |"
    echo "|---|---|---|---|---|---|---|---|"
    step=$(( DUR_S / 12 / SAMPLE_EVERY )); [ "$step" -ge 1 ] || step=1
    awk -F, -v s="$step" 'NR > 1 && ((NR - 2) % s == 0 || $2 != "load" && $2 != "warmup") && $2 != "drain" {
        printf "| %.1f | %s | %.1f | %d | %s | %s | %s | %s |\n", $1 / 60, $2, $3 / 1024, $4, $6, $7, $8, $9 }' "$CSV"
    echo
    if [ ${#fails[@]} -eq 0 ]; then echo "PASS"; else printf 'FAIL: %s\n' "${fails[@]}"; fi
} | tee "$OUT/summary.txt"

kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null || true
NODE_PID=
[ ${#fails[@]} -eq 0 ]
