#!/usr/bin/env python3
# Writes the hand-made seed inputs of each fuzz target (tests/fuzz/targets.h) into
# <out>/<target>/, one file per seed named by its content hash; the fuzzers grow them from there.
import hashlib
import os
import struct
import sys


class Bin(bytes):
    """A MessagePack bin (bytes are written as str otherwise)."""


class F32(float):
    """A MessagePack float32."""


def pack(v):
    """The MessagePack encoding of None, bool, int, float, str, bytes, Bin, list, tuple, dict."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if v >= 0:
            for fmt, tag in (("B", 0xCC), (">H", 0xCD), (">I", 0xCE), (">Q", 0xCF)):
                try:
                    return bytes([tag]) + struct.pack(fmt, v)
                except struct.error:
                    pass
        for fmt, tag in (("b", 0xD0), (">h", 0xD1), (">i", 0xD2), (">q", 0xD3)):
            try:
                return bytes([tag]) + struct.pack(fmt, v)
            except struct.error:
                pass
        raise ValueError(v)
    if isinstance(v, F32):
        return b"\xca" + struct.pack(">f", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, Bin):
        return b"\xc4" + bytes([len(v)]) + bytes(v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b
    if isinstance(v, (list, tuple)):
        assert len(v) < 16
        return bytes([0x90 | len(v)]) + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        assert len(v) < 16
        return bytes([0x80 | len(v)]) + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(v)


EXT = {"ns": "admin", "v": "2.3", "ctx": {"user": "u", "trace": [1, 2]}, "dl": 500, "cm": 100,
       "pv": 1}

MESSAGES = [
    [0, 1, "add", [1, 2]],
    [0, 7, "echo", ["hi", None, True, -5, 2.5, F32(0.5), Bin(b"\x00\x01")], EXT],
    [0, 4294967295, "m", [], {"unknown": 1, "pv": 2}],
    [1, 1, None, 3],
    [1, 2, {"code": "Timeout", "message": "late"}, None],
    [1, 3, {"code": "RemoteError", "message": "boom", "type": "std::runtime_error",
            "details": "at x"}, None],
    [1, 4, "oops", None],
    [1, 5, {"code": "NoSuchCode", "message": "m"}, [1]],
    [1, 6, [1, 2], None],
    [2, "log", ["x", {"k": [1, {"n": None}]}]],
    [2, "log", [], {"ns": "n"}],
    [3, 5],
    [4, 5],
    # Rejected: msgid readable (a typed error reply), and not.
    [0, 9, 42, []],
    [0, 9, "m", "not an array"],
    [0, 9, "m", [], {"dl": "soon"}],
    [0, -1, "m", []],
    [1, 1, None],
    [7],
    [],
    {"not": "an array"},
    [2.5, 1],
]

# Network ids: the handshakes of A and B are 0 and 1; the calls made at the start 2, 3 (the
# idempotent one), 4 (monitored); A's first ping, 2 s on, 5; later ids go to pings, further
# calls and handshakes of new connections.
def record(control, payload=b""):
    return bytes([control]) + struct.pack(">H", len(payload)) + payload


def reply(server, msgid, result="r", error=None):
    control = 0 if server == "A" else 3
    return record(control, pack([1, msgid, error, result]))


def advance(tenths):
    return record(5 | (tenths << 3))


NETWORK = [
    reply("A", 2) + reply("A", 3) + reply("A", 4),
    reply("A", 2, error={"code": "Overloaded", "message": "busy"}) + reply("A", 2),
    reply("B", 1, "serving") + reply("A", 3) + reply("B", 4),
    record(0, pack([3, 4])) + advance(20) + reply("A", 4),
    reply("B", 1, "serving") + record(6 | (1 << 4)) + reply("B", 3) + reply("B", 2),
    record(6 | (1 << 4)) + advance(10) + record(7) + reply("A", 3),
    record(7 | 0x10) + record(7 | 0x30) + reply("A", 5) + reply("A", 6),
    advance(21) + reply("A", 5, "serving") + advance(31) + advance(31),
    advance(21) + advance(21) + reply("A", 3),
    reply("B", 1, "draining") + record(0, b"\xc1") + reply("A", 99),
    record(0, pack([0, 1, "x", []])) + record(1, pack([4, 2])) + record(2, b""),
    reply("A", 2, None, {"code": "RemoteError", "message": "m", "type": "T"}),
    record(6 | (2 << 4) | 8) + advance(12) + record(7 | 8) + reply("B", 2),
    reply("B", 1, "serving") + record(6 | (1 << 4)) + advance(1) + reply("B", 3),
    # A refusal (resent elsewhere), a draining ping answer (closed once drained).
    reply("B", 1, "serving") + reply("A", 2, None,
                                     {"code": "ShuttingDown", "message": "m", "refused": True}),
    reply("B", 1, "serving") + advance(21) + reply("A", 5, "draining") + reply("A", 3),
]

# Dispatch: byte 0 the method (index in dispatch.cc's kMethods), byte 1 namespace + 3 * version
# (+ 0x80: every method callable), then the params.
METHODS = ["add", "concat", "sum", "lookup", "maybe", "echo", "scale", "flags", "nested",
           "context", "defer", "fail", "nothing", "_hidden", "who", "strings", "missing", "",
           "_health"]


def call(method, params, selector=0):
    return bytes([METHODS.index(method), selector]) + pack(params)


DISPATCH = [
    call("add", [1, 2]), call("add", ["x", 1]), call("add", [1]), call("add", [2**40, 1]),
    call("concat", ["a", "b"]), call("sum", [[1, 2, 3]]), call("sum", [[1, "x"]]),
    call("lookup", [{"k": ["v", "w"]}, "k"]), call("lookup", [{"k": [1]}, "k"]),
    call("lookup", [{1: ["v"]}, "k"]), call("maybe", [None]), call("maybe", [70000]),
    call("echo", [{"a": [1, 2.5, None, Bin(b"b")]}]), call("scale", [1.5, 3]),
    call("scale", [1, 256]), call("flags", [True, Bin(b"xyz")]), call("flags", [True, "xyz"]),
    call("nested", [[{"a": 1, "b": None}, {}]]), call("nested", [[{"a": "x"}]]),
    call("context", ["x"]), call("context", [None]), call("defer", [5]),
    call("fail", ["throw"]), call("fail", ["int"]), call("fail", [""]), call("fail", ["ok"]),
    call("nothing", []), call("nothing", [1]), call("_hidden", []), call("_hidden", [], 129),
    call("who", []), call("who", [], 3 * 2), call("missing", []),
    call("add", [2**63, 2**63], 1 + 3 * 4), call("add", [1, 2], 1 + 3 * 3),
    call("strings", [["a", None], True], 1 + 3 * 4), call("add", [1, 2], 2),
    bytes([METHODS.index("echo"), 0]) + pack("not an array"),
]

# Router frames: byte 0 maxFrames, then frames separated by 0xff.
BODY = pack([0, 1, "add", [1, 2]])
FRAMES = [
    b"\x03id\xff" + BODY,
    b"\x03id\xff\xff" + BODY,
    b"\x03id\xffx\xff" + BODY,
    b"\x03id\xff\xff" + BODY + b"\xffextra",
    b"\x04id\xffa\xffb\xff" + BODY,
    b"\x03" + BODY,
    b"\x01id\xff" + BODY,
    b"\x03\xff",
]


# Stream framing: byte 0 the piece size (0: all at once), then a stream of messages.
STREAMS = [
    b"\x00" + pack([0, 1, "echo", ["hi"]]),
    b"\x01" + pack([0, 1, "add", [1, 2]]) + pack([2, "log", ["x"]]) + pack([4, 1]),
    b"\x03" + pack([0, 2, "echo", [{"k": [1, 2.5, None, Bin(b"b")]}]]) + b"\x94\x00",
    b"\x05" + b"\xd4\x01\x02" + pack([1, 1, None, 3]),
    b"\x02" + b"\xdc\x00\x02\x01\x02" + b"\xc1",
    b"\x00" + b"\xdd\xff\xff\xff\xff",
    b"\x07" + b"\x91" * 9 + b"\x00",
    b"\x10" + b"\xd9\x05hello" + b"\xc4\x02ab" + b"\xcb" + b"\x00" * 8,
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..",
                                                             "corpus")
    seeds = {
        "decode_message": [pack(m) for m in MESSAGES],
        "router_frames": FRAMES,
        "dispatch": DISPATCH,
        "network_replies": NETWORK,
        "msgpack_stream": STREAMS,
    }
    for target, inputs in seeds.items():
        d = os.path.join(out, target)
        os.makedirs(d, exist_ok=True)
        for data in inputs:
            with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
                f.write(data)
        print(f"{target}: {len(inputs)} seeds in {d}")


if __name__ == "__main__":
    main()
