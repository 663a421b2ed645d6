#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/ws_decode and fuzz/corpus/command.

The session target's seeds are `arbitrary` encodings: make_session_seeds.py
writes those. Run from fuzz/.
"""
import json
import os
import struct

KEY = bytes([0x37, 0xFA, 0x21, 0x3D])
ZERO = bytes(4)


def frame(opcode, payload, fin=True, key=KEY, rsv=0, masked=True, length=None):
    """A client frame; `length` overrides the header's payload length."""
    n = len(payload) if length is None else length
    out = bytearray([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        out.append(bit | n)
    elif n < 65536:
        out.append(bit | 126)
        out += struct.pack(">H", n)
    else:
        out.append(bit | 127)
        out += struct.pack(">Q", n)
    if masked:
        out += key
        out += bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return bytes(out)


def ws(name, wire, max_size=256, fragments=4, chunking=0x35):
    """Prefix: max_message_size (u16 LE), max_fragments, chunking seed."""
    data = struct.pack("<HBB", max_size, fragments, chunking) + wire
    with open(f"corpus/ws_decode/seed-{name}", "wb") as f:
        f.write(data)


ws("text", frame(1, b"Hello"))
ws("text-zero-key", frame(1, "héllo ✓".encode(), key=ZERO))
ws("binary", frame(2, bytes(range(40))))
ws("fragmented-text", frame(1, "frag".encode(), fin=False) + frame(0, "mé".encode()[:2], fin=False)
   + frame(0, "mé".encode()[2:] + b"nt"))
ws("fragments-with-ping", frame(2, b"ab", fin=False) + frame(9, b"p") + frame(0, b"cd"))
ws("ping-pong", frame(9, b"are you there") + frame(10, b""))
ws("close", frame(8, struct.pack(">H", 1000) + b"bye"))
ws("close-empty", frame(8, b""))
ws("len16", frame(2, bytes(200)), max_size=300)
ws("len64-too-big", frame(2, b"", length=1 << 40))
ws("too-large", frame(1, b"x" * 20), max_size=10)
ws("too-many-fragments", frame(2, b"a", fin=False) + frame(0, b"b", fin=False) + frame(0, b"c"),
   fragments=2)
ws("unmasked", frame(1, b"hi", masked=False))
ws("bad-utf8", frame(1, b"\xff\xfe", key=ZERO))
ws("reserved-bits", frame(1, b"x", rsv=0x40))
ws("reserved-opcode", frame(3, b""))
ws("control-fragmented", frame(9, b"", fin=False))
ws("close-bad-code", frame(8, struct.pack(">H", 1005)))
ws("continuation-alone", frame(0, b"x"))

COMMANDS = {
    "connect": {"id": 1, "method": "connect", "params": {"name": "seed", "version": "1", "protocol": 1}},
    "subscribe": {"id": 2, "method": "subscribe", "params": {"channels": ["news", "chat"]}},
    "subscribe-one": {"id": 3, "method": "subscribe", "params": {"channel": "news"}},
    "unsubscribe": {"id": 4, "method": "unsubscribe", "params": {"channel": "news", "channels": ["chat"]}},
    "publish-json": {"id": 5, "method": "publish", "params": {"channel": "news", "data": {"a": [1, 2]}}},
    "publish-string": {"id": 6, "method": "publish", "params": {"channel": "news", "data": "hi \"x\" é"}},
    "publish-base64": {"id": 7, "method": "publish",
                       "params": {"channel": "bin", "data": "AP8=", "encoding": "base64"}},
    "ping": {"id": 9007199254740991, "method": "ping"},
    "unknown-method": {"id": 8, "method": "fly"},
    "missing-method": {"id": 9},
    "bad-id": {"id": -1, "method": "ping"},
    "reserved-channel": {"id": 10, "method": "subscribe", "params": {"channel": "#server"}},
}
for name, cmd in COMMANDS.items():
    with open(f"corpus/command/seed-{name}", "w") as f:
        json.dump(cmd, f, ensure_ascii=False)
RAW = {
    "malformed": b'{"id":1,"method":',
    "array": b'[1,"ping"]',
    "lone-surrogate": b'{"id":11,"method":"publish","params":{"channel":"a","data":"\\ud800"}}',
    "bad-base64": b'{"id":12,"method":"publish","params":{"channel":"a","data":"!!","encoding":"base64"}}',
    "publish-null": b'{"id":14,"method":"publish","params":{"channel":"a","data":null}}',
    "invalid-utf8": b'{"id":13,"method":"ping","x":"\xff"}',
}
for name, raw in RAW.items():
    with open(f"corpus/command/seed-{name}", "wb") as f:
        f.write(raw)
print(len(os.listdir("corpus/ws_decode")), "ws_decode seeds,", len(os.listdir("corpus/command")), "command seeds")
