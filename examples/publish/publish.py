"""Publishing from Python, both ways:
    REDIS_URL=redis://127.0.0.1:6379 DUPLEX_NODE=http://127.0.0.1:1234 python3 publish.py CHANNEL MESSAGE

1. redis-py: a plain PUBLISH, when the node runs with --redis.
2. The node's HTTP API, with the standard library only (any broker).
"""
import json
import os
import sys
import urllib.request

channel, message = sys.argv[1], sys.argv[2]

if os.environ.get("REDIS_URL"):
    import redis

    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    print("redis:", r.publish(channel, f"{message} (via Redis)"))

node = os.environ.get("DUPLEX_NODE", "http://127.0.0.1:1234")
headers = {"content-type": "application/json"}
if os.environ.get("DUPLEX_API_KEY"):
    headers["authorization"] = "apikey " + os.environ["DUPLEX_API_KEY"]
body = json.dumps({"channel": channel, "data": f"{message} (via HTTP)"}).encode()
request = urllib.request.Request(f"{node}/api/publish", data=body, headers=headers)
with urllib.request.urlopen(request) as response:
    print("http:", response.status, response.read().decode())
