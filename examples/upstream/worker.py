#!/usr/bin/env python3
"""A Duplex upstream worker in Python (redis-py): reads client `send` and
`rpc` entries from the stream with a consumer group, answers each rpc on
the entry's `reply_to` channel, acknowledges (XACK).

It keeps running through quiet periods and Redis restarts: on a lost
connection it reconnects with jittered backoff under the same consumer
name, creates the group again if Redis lost it, answers the entries it
had read but not acknowledged, then claims (XAUTOCLAIM) those a crashed
worker left, at every (re)connect and every CLAIM_IDLE_MS. What happens
is logged to stderr.

    pip install redis
    REDIS_URL=redis://localhost:6379 python3 worker.py [consumer-name]

Run several with different names: they share the load (docs/UPSTREAM.md).
"""
import json
import os
import random
import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

STREAM = os.environ.get("DUPLEX_UPSTREAM_STREAM", "duplex:upstream")
GROUP = "workers"
CLAIM_IDLE_MS = int(os.environ.get("CLAIM_IDLE_MS", "30000"))  # "crashed" = unacked this long
BLOCK_MS = 2000  # one XREADGROUP waits this long for new entries
URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
me = sys.argv[1] if len(sys.argv) > 1 else "worker-1"


def log(message):
    print(f"worker {me}: {message}", file=sys.stderr, flush=True)


def connect():
    # The socket timeout must outlast a blocked XREADGROUP (redis-py 8's
    # default of 5 s does not), yet stay finite so that a Redis gone without
    # closing the socket is noticed. Retries are the loop in main(), not
    # redis-py's, so that each is logged.
    r = redis.Redis.from_url(
        URL,
        socket_timeout=BLOCK_MS / 1000 + 5,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )
    r.ping()
    return r


def answer(method, data):
    if method == "add":
        return {"sum": data["a"] + data["b"]}
    raise LookupError(f"no method {method!r}")


def process(r, entry_id, f):
    if not f:  # trimmed (MAXLEN) while pending: nothing left to answer
        r.xack(STREAM, GROUP, entry_id)
        return
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


def ensure_group(r):
    try:  # "0": also take what was appended before the group existed
        r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        log(f"created group {GROUP} on {STREAM}")
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):  # BUSYGROUP: it exists already
            raise


def answer_own_pending(r):
    """Entries this consumer read before a lost connection and never acked."""
    while True:
        streams = r.xreadgroup(GROUP, me, {STREAM: "0"}, count=100)
        entries = streams[0][1] if streams else []
        if not entries:
            return
        log(f"answering {len(entries)} entries read before the connection was lost")
        for entry_id, f in entries:
            process(r, entry_id, f)


def claim_abandoned(r):
    """Entries other consumers read and left unacked for CLAIM_IDLE_MS."""
    cursor = "0-0"
    while True:
        cursor, entries = r.xautoclaim(STREAM, GROUP, me, CLAIM_IDLE_MS, cursor)[:2]
        if entries:
            log(f"claimed {len(entries)} entries left by another worker")
        for entry_id, f in entries:
            process(r, entry_id, f)
        if cursor in (b"0-0", "0-0"):
            return


def catch_up(r):
    ensure_group(r)
    answer_own_pending(r)
    claim_abandoned(r)


def serve(r):
    next_claim = time.monotonic() + CLAIM_IDLE_MS / 1000
    log(f"reading {STREAM} as {me} in group {GROUP}")
    while True:
        for _, entries in r.xreadgroup(GROUP, me, {STREAM: ">"}, count=100, block=BLOCK_MS) or []:
            for entry_id, f in entries:
                process(r, entry_id, f)
        if time.monotonic() >= next_claim:
            claim_abandoned(r)
            next_claim = time.monotonic() + CLAIM_IDLE_MS / 1000


def main():
    failures = 0
    while True:
        try:
            r = connect()
            catch_up(r)
            if failures:
                log(f"back after {failures} failed attempts")
            failures = 0
            serve(r)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            failures += 1
            # Full jitter: workers that lost Redis together do not all return at once.
            delay = random.uniform(0, min(5.0, 0.1 * 2**failures))
            log(f"Redis unavailable ({e}); retrying in {delay:.2f} s")
            time.sleep(delay)
        except redis.ResponseError as e:
            if not str(e).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            log(f"the stream or its group is gone ({e}): creating it again")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
