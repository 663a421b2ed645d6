#!/bin/sh
# Publishing from a shell: the classic demo's two ways.
#   DUPLEX_NODE=http://127.0.0.1:1234 REDIS_URL=redis://127.0.0.1:6379 ./publish.sh CHANNEL MESSAGE
# With --redis on the node, a plain redis-cli PUBLISH reaches every subscriber
# on every node; the HTTP API works on any node (add -H "Authorization: apikey $KEY"
# when the node has an API key).
set -eu
channel=${1:?channel}
message=${2:?message}
node=${DUPLEX_NODE:-http://127.0.0.1:1234}

# 1. Through the node's HTTP API (JSON-escape the message with python3 if it may hold quotes).
curl -fsS -H 'content-type: application/json' \
    -d "{\"channel\":\"$channel\",\"data\":\"$message (via HTTP)\"}" "$node/api/publish"
echo

# 2. Straight into Redis, when the node runs with --redis.
if [ -n "${REDIS_URL:-}" ]; then
    redis-cli -u "$REDIS_URL" PUBLISH "$channel" "$message (via Redis)"
fi
