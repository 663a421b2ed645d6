#!/usr/bin/env bash
# A backend floods a channel that a node subscribes to (issue 14, finding 2):
# `redis-benchmark -P 200 -c 2 PUBLISH flood <20 B>` against a private
# redis-server, with READERS WebSocket clients of the node subscribed to
# `flood`. Samples the node's RSS, Redis's memory and the node's broker
# counters; part-way through, a native client subscribes a fresh channel and
# the script reports how long the answer took, what it was, what Redis says
# (PUBSUB NUMSUB) and whether a message published right after arrives.
#
#   scripts/redis_flood.sh            # BUFFERS=off: client-output-buffer-limit pubsub 0 0 0
#   BUFFERS=default scripts/redis_flood.sh
#
# Env: BIN (target/release/duplex),
# READERS (1), MESSAGES (30000000), PIPELINE (200), SECONDS_MAX (60),
# SUBSCRIBE_AT (5, seconds into the flood), NODE_ARGS (see below).
# Build first: cargo build --release.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/duplex}

READERS=${READERS:-1}
MESSAGES=${MESSAGES:-30000000}
PIPELINE=${PIPELINE:-200}
SECONDS_MAX=${SECONDS_MAX:-60}
SUBSCRIBE_AT=${SUBSCRIBE_AT:-5}
BUFFERS=${BUFFERS:-off}
# Deep client queues, so that the readers stay subscribed (with the default
# 4096 messages a reader falls that far behind within a second and is cut
# as a slow consumer, which ends the flood for the node).
NODE_ARGS=${NODE_ARGS:---max-queued-messages 10000000 --max-queued-bytes 67108864}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(free_port); NP=$(free_port)
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null &
pids+=($!)
until redis-cli -p "$RP" ping >/dev/null 2>&1; do sleep 0.05; done
[ "$BUFFERS" = off ] && redis-cli -p "$RP" config set client-output-buffer-limit "pubsub 0 0 0" >/dev/null
# shellcheck disable=SC2086
"$BIN" serve --listen "127.0.0.1:$NP" --redis "redis://127.0.0.1:$RP" $NODE_ARGS 2>"$WORK/node.log" &
NODE=$!; pids+=("$NODE")
until curl -sf "127.0.0.1:$NP/health" >/dev/null; do sleep 0.05; done
# Readers that read everything and do nothing else (a plain WebSocket each).
python3 - "$NP" "$READERS" <<'PY' &
import selectors, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /?channel=flood HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    sel.register(s, selectors.EVENT_READ)
while sel.get_map():
    for key, _ in sel.select():
        if not key.fileobj.recv(1 << 20):
            sel.unregister(key.fileobj)
PY
BENCH_PID=$!
until [ "$(redis-cli -p "$RP" pubsub numsub flood | tail -1)" = 1 ]; do
  kill -0 "$BENCH_PID" 2>/dev/null || { echo "the readers did not start" >&2; exit 1; }
  sleep 0.05
done

redis-benchmark -p "$RP" -n "$MESSAGES" -P "$PIPELINE" -c 2 -q PUBLISH flood xxxxxxxxxxxxxxxxxxxx >/dev/null 2>&1 &
FLOOD=$!; pids+=("$FLOOD")
start=$(date +%s.%N)

# One native client subscribes a fresh channel mid-flood.
(
  sleep "$SUBSCRIBE_AT"
  python3 - "$NP" "$RP" <<'PY'
import json, os, socket, struct, subprocess, sys, time
np, rp = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", np))
s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{np}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
buf = b""
while b"\r\n\r\n" not in buf: buf += s.recv(4096)
buf = buf.split(b"\r\n\r\n", 1)[1]
def send(obj):
    b = json.dumps(obj).encode(); m = os.urandom(4)
    head = bytes([0x81, 0x80 | len(b)]) if len(b) < 126 else bytes([0x81, 0xFE]) + struct.pack(">H", len(b))
    s.sendall(head + m + bytes(c ^ m[i % 4] for i, c in enumerate(b)))
def frame():
    global buf
    while True:
        if len(buf) >= 2:
            n, h = buf[1] & 0x7F, 2
            if n == 126 and len(buf) >= 4: n, h = struct.unpack(">H", buf[2:4])[0], 4
            if len(buf) >= h + n:
                op, data, buf = buf[0] & 0x0F, buf[h:h + n], buf[h + n:]
                if op == 1: return json.loads(data)
                continue
        chunk = s.recv(65536)
        if not chunk: return None
        buf += chunk
s.settimeout(30)
t0 = time.time(); send({"id": 1, "method": "subscribe", "params": {"channel": "fresh"}})
reply = frame(); took = time.time() - t0
numsub = subprocess.run(["redis-cli", "-p", rp, "pubsub", "numsub", "fresh"], capture_output=True, text=True).stdout.split()[-1]
t1 = time.time(); subprocess.run(["redis-cli", "-p", rp, "publish", "fresh", '"after"'], capture_output=True)
got = None
try:
    while True:
        f = frame()
        if f is None or f.get("push") == "message": got = f; break
except socket.timeout: pass
arrived = f"{time.time() - t1:.3f} s" if got else "never (30 s)"
print(f"subscribe mid-flood: answered in {took:.3f} s with {json.dumps(reply)}; PUBSUB NUMSUB fresh = {numsub}; a message published right after arrived: {arrived}")
PY
) &
pids+=($!)

peak_rss=0; peak_redis=0
while kill -0 "$FLOOD" 2>/dev/null; do
  now=$(date +%s.%N)
  if (( $(echo "$now - $start > $SECONDS_MAX" | bc) )); then kill "$FLOOD" 2>/dev/null || true; break; fi
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$NODE/status")
  mem=$(redis-cli -p "$RP" info memory | awk -F: '/^used_memory:/ {print int($2/1024)}')
  (( rss > peak_rss )) && peak_rss=$rss
  (( mem > peak_redis )) && peak_redis=$mem
  sleep 0.5
done
wait "$FLOOD" 2>/dev/null || true
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
sleep 1
info=$(curl -s "127.0.0.1:$NP/api/info")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$NODE/status")
echo "flood: $MESSAGES x PUBLISH -P $PIPELINE -c 2, pubsub buffers $BUFFERS, $READERS reader(s), ${elapsed%.*} s; node: $BIN $NODE_ARGS"
echo "node: peak RSS $((hwm / 1024)) MiB (sampled $((peak_rss / 1024)) MiB); Redis used_memory peak $((peak_redis / 1024)) MiB"
echo "$info" | python3 -c '
import json, sys
d = json.load(sys.stdin); b = d["broker"]; s = d["stats"]
print("broker: received {}, dropped {}, reconnects {}, status {}; slow-consumer cuts {}".format(
    s["messages_received"], b.get("dropped"), b["reconnects"], b["status"], s["slow_consumer_disconnects"]))'
echo "drop warnings logged (throttled): $(grep -c "dropped a message from redis" "$WORK/node.log" || true)"
