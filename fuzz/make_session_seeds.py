#!/usr/bin/env python3
"""Writes fuzz/corpus/session/seed-*: `arbitrary` 1.x encodings of session scripts.

The target reads an `Input` with `arbitrary`; this is the inverse for the few
types it uses (enum tags are little-endian u32 scaled to the variant count,
collections are "continue?" bytes before each element, string lengths are
single bytes taken from the end while the input is at most 256 bytes).
seed-publish-null is not written here: it is the input (found by the
fuzzer) that caught the harness reading `"data":null` as absent. Run from
fuzz/; check a seed with `cargo +nightly fuzz fmt session FILE`.
"""


class Enc:
    def __init__(self):
        self.front = bytearray()
        self.sizes = []

    def u8(self, v):
        self.front.append(v)
        return self

    def bool(self, v):
        return self.u8(1 if v else 0)

    def tag(self, k, n):
        t = ((2 * k + 1) << 32) // (2 * n)
        self.front += t.to_bytes(4, "little")
        return self

    def string(self, s):
        b = s.encode()
        self.sizes.append(len(b))
        self.front += b
        return self

    def option(self, v, f):
        self.bool(v is not None)
        if v is not None:
            f(v)
        return self

    def vec(self, items, f):
        for item in items:
            self.bool(True)
            f(item)
        return self.bool(False)

    def finish(self):
        data = bytes(self.front) + bytes(reversed(self.sizes))
        assert len(data) <= 256, "string lengths take one byte only up to 256 bytes"
        return data


# Variant indexes, in declaration order in fuzz_targets/session.rs.
STEP = ["Send", "Leave"]
MESSAGE = ["Connect", "Subscribe", "Unsubscribe", "Publish", "Ping", "Other", "Text", "Binary"]
ID = ["Small", "Max", "TooBig", "Negative", "Fraction", "Quoted", "Missing"]
CHAN = ["Known", "Any"]
DATA = ["Json", "Text", "Base64", "NotBase64", "Raw"]
KNOWN = ["a", "b", "news", "chat:1", "#server", "two words", "", "a-long-channel-name"]


def idx(names, name):
    return names.index(name), len(names)


def enc_id(e, id_):
    kind, *rest = id_ if isinstance(id_, tuple) else ("Small", id_)
    e.tag(*idx(ID, kind))
    if kind == "Small":
        e.u8(rest[0])


def enc_chan(e, c):
    if c in KNOWN:
        e.tag(*idx(CHAN, "Known")).u8(KNOWN.index(c))
    else:
        e.tag(*idx(CHAN, "Any")).string(c)


def enc_data(e, d):
    kind, v = d
    e.tag(*idx(DATA, kind))
    if kind == "Json":
        e.u8(v)
    elif kind == "Base64":
        e.vec(v, e.u8)
    else:
        e.string(v)


def enc_message(e, m):
    kind = m[0]
    e.tag(*idx(MESSAGE, kind))
    if kind == "Connect":
        _, id_, protocol, name = m
        enc_id(e, id_)
        e.option(protocol, e.u8)
        e.option(name, e.string)
    elif kind in ("Subscribe", "Unsubscribe"):
        _, id_, channel, channels = m
        enc_id(e, id_)
        e.option(channel, lambda c: enc_chan(e, c))
        e.vec(channels, lambda c: enc_chan(e, c))
    elif kind == "Publish":
        _, id_, channel, data = m
        enc_id(e, id_)
        enc_chan(e, channel)
        enc_data(e, data)
    elif kind == "Ping":
        enc_id(e, m[1])
    elif kind == "Other":
        _, id_, method, params = m
        enc_id(e, id_)
        e.string(method)
        e.string(params)
    elif kind == "Text":
        e.string(m[1])
    elif kind == "Binary":
        e.vec(m[1], e.u8)


def seed(name, rate, max_subs, max_len, steps):
    e = Enc().u8(rate).u8(max_subs).u8(max_len - 1)
    for step in steps:
        e.bool(True)
        if step[0] == "Leave":
            e.tag(*idx(STEP, "Leave")).tag(idx(["A", "B"], step[1])[0], 2)
        else:
            who, message = step
            e.tag(*idx(STEP, "Send")).tag(idx(["A", "B"], who)[0], 2)
            enc_message(e, message)
    e.bool(False)
    with open(f"corpus/session/seed-{name}", "wb") as f:
        f.write(e.finish())


seed("pubsub", 0, 6, 24, [
    ("A", ("Connect", 1, 1, "seed")),
    ("A", ("Subscribe", 2, "a", ["news"])),
    ("B", ("Subscribe", 3, None, ["a", "chat:1"])),
    ("A", ("Publish", 4, "a", ("Json", 0))),
    ("B", ("Publish", 5, "news", ("Base64", [0, 255, 7]))),
    ("B", ("Publish", 6, "a", ("Text", "hi é"))),
])
seed("unsubscribe-leave", 0, 6, 24, [
    ("A", ("Subscribe", 1, "a", ["news"])),
    ("B", ("Subscribe", 2, "a", [])),
    ("A", ("Unsubscribe", 3, "news", ["b"])),
    ("B", ("Ping", 4)),
    ("Leave", "B"),
    ("A", ("Publish", 5, "a", ("Json", 6))),
])
seed("flood", 1, 6, 24, [
    ("A", ("Subscribe", 1, "b", [])),
    ("A", ("Publish", 2, "b", ("Json", 2))),
    ("A", ("Publish", 3, "b", ("Json", 2))),
    ("A", ("Publish", 4, "b", ("Json", 2))),
    ("A", ("Publish", 5, "b", ("Json", 2))),
    ("A", ("Publish", 6, "b", ("Json", 2))),
])
seed("limits", 0, 2, 6, [
    ("A", ("Subscribe", 1, None, ["a", "b", "news"])),
    ("A", ("Subscribe", 2, None, ["a", "b"])),
    ("A", ("Subscribe", 3, "a-long-channel-name", [])),
    ("A", ("Subscribe", 4, "#server", [])),
    ("A", ("Subscribe", 5, "two words", [])),
    ("A", ("Subscribe", 6, None, [])),
    ("B", ("Subscribe", 7, "b", ["b"])),
    ("Leave", "A"),
])
seed("invalid", 0, 6, 24, [
    ("A", ("Ping", ("Missing",))),
    ("A", ("Ping", ("TooBig",))),
    ("A", ("Ping", ("Quoted",))),
    ("A", ("Other", 1, "fly", "{}")),
    ("A", ("Other", 2, "subscribe", "[]")),
    ("A", ("Text", "{not json")),
    ("A", ("Publish", 3, "a", ("NotBase64", "!!"))),
    ("A", ("Publish", 4, "a", ("Json", 5))),
    ("A", ("Publish", 5, "a", ("Raw", "{"))),
    ("B", ("Binary", [1, 2])),
])
seed("connect", 0, 6, 24, [
    ("A", ("Connect", 1, 2, None)),
    ("A", ("Connect", 2, None, "x")),
    ("A", ("Connect", 3, 1, None)),
    ("B", ("Ping", ("Max",))),
    ("B", ("Connect", 4, None, None)),
])
