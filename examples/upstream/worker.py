#!/usr/bin/env python3
"""A Duplex upstream worker in Python (redis-py): reads client `send` and
`rpc` entries from the stream with a consumer group, answers each rpc on
the entry's `reply_to` channel, acknowledges (XACK). At start it claims the
entries a crashed worker read and never acknowledged (XAUTOCLAIM).

    pip install redis
    REDIS_URL=redis://localhost:6379 python3 worker.py [consumer-name]

Run several with different names: they share the load (docs/UPSTREAM.md).
"""
import json
import os
import sys

import redis

STREAM = os.environ.get("DUPLEX_UPSTREAM_STREAM", "duplex:upstream")
GROUP = "workers"
CLAIM_IDLE_MS = int(os.environ.get("CLAIM_IDLE_MS", "30000"))  # "crashed" = unacked this long
r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379"))
me = sys.argv[1] if len(sys.argv) > 1 else "worker-1"


def answer(method, data):
    if method == "add":
        return {"sum": data["a"] + data["b"]}
    raise LookupError(f"no method {method!r}")


def process(entry_id, f):
    if f[b"kind"] == b"rpc":
        reply = {"op": "reply", "connection": f[b"connection"].decode(), "request": f[b"request"].decode()}
        try:
            reply["data"] = answer(f[b"method"].decode(), json.loads(f[b"data"]))
        except Exception as e:  # the client gets the code and message
            reply["error"] = {"code": 4000, "message": str(e)}
        r.publish(f[b"reply_to"], json.dumps(reply))
    else:
        print("send from", f[b"connection"].decode(), f[b"data"].decode(errors="replace"), flush=True)
    r.xack(STREAM, GROUP, entry_id)


try:  # "0": also take what was appended before the group existed
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
except redis.ResponseError:
    pass  # BUSYGROUP: another worker made it
for entry_id, f in r.xautoclaim(STREAM, GROUP, me, CLAIM_IDLE_MS, "0-0")[1]:
    process(entry_id, f)
while True:
    for _, entries in r.xreadgroup(GROUP, me, {STREAM: ">"}, count=100, block=5000) or []:
        for entry_id, f in entries:
            process(entry_id, f)
