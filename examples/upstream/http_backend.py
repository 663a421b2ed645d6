#!/usr/bin/env python3
"""A Duplex HTTP upstream in Python, standard library only: the node POSTs
client `send`s and `rpc`s here (`upstream_url`), signed with
`upstream_secret`; this checks the signature and answers the rpcs.

    DUPLEX_UPSTREAM_SECRET=... python3 http_backend.py [port]      # default 8000
    duplex serve --upstream-url http://127.0.0.1:8000/duplex --upstream-secret ...

A request without a valid `Duplex-Signature` (HMAC-SHA256 of "<t>.<body>"
with the secret, t within 5 minutes of now) gets 401: it is not from a
node. Several secrets, comma-separated, are all accepted (for rotation).
"""
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRETS = [s.strip().encode() for s in os.environ.get("DUPLEX_UPSTREAM_SECRET", "").split(",") if s.strip()]
TOLERANCE = 300  # seconds: older (or later) signatures are refused, against replays
MAX_BODY = 1 << 20


def signed_by_a_node(header, body):
    """Whether `header` (t=<secs>,v1=<hex>[,v1=...]) signs `body` with one of SECRETS, recently."""
    fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [v for k, v in fields if k.strip() == "t"]
    signatures = [v.strip() for k, v in fields if k.strip() == "v1"]
    if len(timestamps) != 1 or not timestamps[0].strip().isdigit():
        return False
    t = timestamps[0].strip()
    if abs(time.time() - int(t)) > TOLERANCE:
        return False
    for secret in SECRETS:
        expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, s) for s in signatures):  # constant time
            return True
    return False


def answer(method, data):
    if method == "add":
        return {"sum": data["a"] + data["b"]}
    raise LookupError(f"no method {method!r}")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.reply(413, {"error": {"code": 4013, "message": "too large"}})
        body = self.rfile.read(length)
        if not signed_by_a_node(self.headers.get("Duplex-Signature", ""), body):
            return self.reply(401, {"error": {"code": 4001, "message": "bad signature"}})
        call = json.loads(body)
        if call["kind"] != "rpc":
            print("send from", call["connection"], call.get("data"), file=sys.stderr, flush=True)
            return self.reply(204, None)
        try:
            return self.reply(200, answer(call["method"], call.get("data")))
        except Exception as e:  # the client gets the code and message
            return self.reply(400, {"error": {"code": 4000, "message": str(e)}})

    def reply(self, status, value):
        body = b"" if value is None else json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # one line per request, to stderr
        print("http_backend:", fmt % args, file=sys.stderr, flush=True)


if __name__ == "__main__":
    if not SECRETS:
        sys.exit("set DUPLEX_UPSTREAM_SECRET (the node's --upstream-secret)")
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"http_backend: listening on http://127.0.0.1:{server.server_port}", file=sys.stderr, flush=True)
    server.serve_forever()
