#!/usr/bin/env python3
"""Slow-body attack on a Duplex node (issue 14, finding 4), and what it costs.

Starts `duplex serve` (optionally under an open-file limit, via util-linux
prlimit), opens CONNECTIONS TCP connections from one address (127.0.0.2
by default), each sending `POST /api/publish` with `Content-Length: 1000000`
and 1 byte of body, then never the rest. While they are held it samples the
node's open fds and RSS (/proc/PID) and checks that `GET /health` and a
plain WebSocket client from 127.0.0.1 (upgrade, then a message published
through the HTTP API and received) still get through. It does that right
after the flood and again after HOLD seconds, and prints one JSON object
(a summary on stderr).

    python3 scripts/slow_bodies.py --bin target/release/duplex
    python3 scripts/slow_bodies.py --bin target/release/duplex --fd-limit 600

Standard library only; Linux only (/proc, 127.0.0.0/8 on lo).
"""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ISSUE_FLAGS = ["--max-connections", "100", "--max-connections-per-ip", "10"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def http(port, method, path, body=None, timeout=5.0):
    """(status or None, seconds) of one request from 127.0.0.1."""
    started = time.monotonic()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
            status = answer.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = None
    return status, round(time.monotonic() - started, 3)


def websocket_probe(port, timeout=5.0):
    """Whether a plain client at / gets a 101 and then a published message."""
    started = time.monotonic()
    deadline = started + timeout
    try:
        ws = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        ws.sendall(
            (
                f"GET /?channel=probe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = ws.recv(4096)
            if not chunk:
                return {"ok": False, "why": "closed before 101"}
            got += chunk
        if not got.startswith(b"HTTP/1.1 101"):
            return {"ok": False, "why": got.split(b"\r\n")[0].decode(errors="replace")}
        rest = got.split(b"\r\n\r\n", 1)[1]
        status, _ = http(port, "POST", "/api/publish", {"channel": "probe", "data": "probe"},
                         timeout=max(0.1, deadline - time.monotonic()))
        while b"probe" not in rest:
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = ws.recv(4096)
            if not chunk:
                return {"ok": False, "why": f"closed (publish answered {status})"}
            rest += chunk
        ws.close()
        return {"ok": True, "seconds": round(time.monotonic() - started, 3)}
    except OSError as e:
        return {"ok": False, "why": str(e), "seconds": round(time.monotonic() - started, 3)}


def attack_outcomes(sockets):
    """How the node has ended the attack's connections so far: answered
    408 (the request timeout) or 503 (refused at accept), or closed without
    an answer (evicted)."""
    outcomes = {"answered_408": 0, "answered_503": 0, "closed_unanswered": 0}
    for s in sockets:
        try:
            got = s.recv(65536, socket.MSG_DONTWAIT | socket.MSG_PEEK)
            if got.startswith(b"HTTP/1.1 408"):
                outcomes["answered_408"] += 1
            elif got.startswith(b"HTTP/1.1 503"):
                outcomes["answered_503"] += 1
            elif got == b"":
                outcomes["closed_unanswered"] += 1
        except BlockingIOError:
            pass
        except OSError:
            outcomes["closed_unanswered"] += 1
    return outcomes


def sample(pid, port, sockets, baseline_rss, since):
    """The node's state now, then the probes from 127.0.0.1."""
    state = {
        "at_seconds": round(time.monotonic() - since, 2),
        "node_fds": open_fds(pid),
        "rss_kib": proc_status(pid, "VmRSS"),
        "rss_growth_kib": proc_status(pid, "VmRSS") - baseline_rss,
        "peak_rss_kib": proc_status(pid, "VmHWM"),
        "attack_connections": attack_outcomes(sockets),
    }
    state["health"] = dict(zip(("status", "seconds"), http(port, "GET", "/health")))
    state["websocket"] = websocket_probe(port)
    return state


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default="target/release/duplex")
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--source", default="127.0.0.2", help="address the attack comes from")
    parser.add_argument("--fd-limit", type=int, help="the node's open-file limit (prlimit)")
    parser.add_argument("--hold", type=float, default=12.0, help="seconds to hold after the flood")
    parser.add_argument("extra", nargs="*", help="more `duplex serve` flags (after --)")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    command = [args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--log-format", "json"]
    command += ISSUE_FLAGS + args.extra
    if args.fd_limit:
        command = ["prlimit", f"--nofile={args.fd_limit}:{args.fd_limit}"] + command
    log = tempfile.NamedTemporaryFile(prefix="duplex-slow-bodies-", suffix=".log", delete=False)
    node = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    sockets = []
    try:
        for _ in range(200):
            if http(port, "GET", "/health", timeout=1)[0] == 200:
                break
            time.sleep(0.05)
        else:
            sys.exit("node did not answer /health")
        before = {"node_fds": open_fds(node.pid), "rss_kib": proc_status(node.pid, "VmRSS")}

        head = (
            f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
        ).encode()
        failed = 0
        started = time.monotonic()
        for _ in range(args.connections):
            s = socket.socket()
            s.bind((args.source, 0))
            s.settimeout(3)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(head)
                s.setblocking(False)  # sampled below without waiting
                sockets.append(s)
            except OSError:
                failed += 1
                s.close()
        flood_seconds = round(time.monotonic() - started, 2)
        time.sleep(0.5)
        during = sample(node.pid, port, sockets, before["rss_kib"], started)
        time.sleep(args.hold)
        later = sample(node.pid, port, sockets, before["rss_kib"], started)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as answer:
            stats = json.load(answer)["stats"]
        log_text = open(log.name).read()
        result = {
            "command": command,
            "connections": args.connections,
            "connect_failures": failed,
            "flood_seconds": flood_seconds,
            "before": before,
            "after_flood": during,
            f"after_{args.hold:g}s": later,
            "stats": {k: stats.get(k) for k in (
                "request_timeouts", "http_evictions", "sockets_refused",
                "http_connections", "handshake_timeouts", "messages_published")},
            "accept_failures_logged": log_text.count("accept failed"),
        }
        print(json.dumps(result, indent=2))
        for name, s in (("after the flood", during), (f"after {args.hold:g} s", later)):
            print(
                f"{name} (t={s['at_seconds']} s): fds {s['node_fds']}, RSS {s['rss_kib']} KiB (peak {s['peak_rss_kib']}), "
                f"attack connections ended: {s['attack_connections']} of {len(sockets)}, "
                f"/health {s['health']['status']} in {s['health']['seconds']} s, "
                f"WebSocket {'ok' if s['websocket']['ok'] else s['websocket']}",
                file=sys.stderr,
            )
    finally:
        for s in sockets:
            s.close()
        node.terminate()
        node.wait(timeout=10)
        os.unlink(log.name)


if __name__ == "__main__":
    main()
