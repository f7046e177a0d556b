#!/usr/bin/python3
"""Interoperability test for switchboard-server, written from docs/PROTOCOL.md only.

Usage: /usr/bin/python3 zmq_client.py PATH/TO/switchboard-server [threadpool|blocking|eventloop]

Uses only the Debian system modules zmq (python3-zmq) and msgpack (python3-msgpack) plus the
standard library. Prints one line per check; exits 0 if every check passed, 1 otherwise.
"""

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import zmq

RCV_TIMEOUT_MS = 5000
SND_TIMEOUT_MS = 5000
STARTUP_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 10.0
IN_FLIGHT = 50

REQUEST, RESPONSE, NOTIFICATION, HEARTBEAT, CANCEL = 0, 1, 2, 3, 4

LISTEN_RE = re.compile(r"listening on (tcp://127\.0\.0\.1:(\d+))\s*$")


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print("PASS  %s" % name, flush=True)
        else:
            self.failed += 1
            print("FAIL  %s%s" % (name, (": " + detail) if detail else ""), flush=True)
        return ok


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


class MsgIds:
    def __init__(self, start=1):
        self.next = start

    def __call__(self):
        v = self.next
        self.next = (self.next + 1) & 0xFFFFFFFF
        return v


def make_socket(ctx, kind, endpoint):
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, RCV_TIMEOUT_MS)
    s.setsockopt(zmq.SNDTIMEO, SND_TIMEOUT_MS)
    s.connect(endpoint)
    return s


def recv_body(sock):
    """Receives one multipart message and returns (frames, decoded body of the last frame).

    Raises zmq.Again on timeout."""
    frames = sock.recv_multipart()
    return frames, unpack(frames[-1])


def check_error_object(c, name, err, code, message=None, need_type=False):
    if not c.check(name + ": error is a map", isinstance(err, dict), repr(err)):
        return
    c.check(name + ": code == %s" % code, err.get("code") == code, repr(err))
    if message is not None:
        c.check(name + ": message == %r" % message, err.get("message") == message, repr(err))
    else:
        c.check(name + ": message is a string", isinstance(err.get("message"), str), repr(err))
    if need_type:
        t = err.get("type")
        c.check(name + ": type is a non-empty string", isinstance(t, str) and len(t) > 0,
                repr(err))
    if "details" in err:
        c.check(name + ": details is a string", isinstance(err["details"], str), repr(err))


def start_server(binary, executor):
    errlog = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [binary, "--listen", "tcp://127.0.0.1:0", "--executor", executor],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errlog,
        start_new_session=True)  # own process group, so the finally block can kill it all
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    buf = b""
    endpoint = None
    fd = proc.stdout.fileno()
    while endpoint is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        r, _, _ = select.select([fd], [], [], remaining)
        if not r:
            break
        chunk = os.read(fd, 4096)
        if not chunk:  # EOF: the server exited or closed stdout
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            m = LISTEN_RE.search(line.decode("utf-8", "replace"))
            if m:
                endpoint = m.group(1)
                break
    # Keep draining stdout so the server can never block on a full pipe.
    def drain():
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
    threading.Thread(target=drain, daemon=True).start()
    return proc, endpoint, errlog


def test_req(c, ctx, endpoint):
    ids = MsgIds(1)
    s = make_socket(ctx, zmq.REQ, endpoint)
    try:
        # echo("hi")
        mid = ids()
        s.send(pack([REQUEST, mid, "echo", ["hi"]]))
        frames, body = recv_body(s)
        c.check("REQ echo: one frame received", len(frames) == 1, repr(frames))
        c.check("REQ echo: response == [1, %d, None, 'hi']" % mid,
                body == [RESPONSE, mid, None, "hi"], repr(body))

        # add(2, 3) -> 5
        mid = ids()
        s.send(pack([REQUEST, mid, "add", [2, 3]]))
        _, body = recv_body(s)
        c.check("REQ add(2, 3): response == [1, %d, None, 5]" % mid,
                body == [RESPONSE, mid, None, 5], repr(body))

        # fail("boom")
        mid = ids()
        s.send(pack([REQUEST, mid, "fail", ["boom"]]))
        _, body = recv_body(s)
        ok = c.check("REQ fail('boom'): response shape [1, %d, err, None]" % mid,
                     isinstance(body, list) and len(body) == 4 and body[0] == RESPONSE
                     and body[1] == mid and body[2] is not None and body[3] is None,
                     repr(body))
        if ok:
            check_error_object(c, "REQ fail('boom')", body[2], "RemoteError", "boom",
                               need_type=True)
    finally:
        s.close(0)


def dealer_call(c, s, name, msg, expect_mid):
    """Sends msg on the DEALER and returns the next body, or None on timeout."""
    s.send(pack(msg))
    try:
        frames, body = recv_body(s)
    except zmq.Again:
        c.check(name + ": response received", False, "timed out after %d ms" % RCV_TIMEOUT_MS)
        return None
    c.check(name + ": response is one frame (no delimiter)", len(frames) == 1, repr(frames))
    c.check(name + ": response msgid == %d" % expect_mid,
            isinstance(body, list) and len(body) == 4 and body[0] == RESPONSE
            and body[1] == expect_mid, repr(body))
    return body


def test_dealer(c, ctx, endpoint):
    ids = MsgIds(1000)
    s = make_socket(ctx, zmq.DEALER, endpoint)
    try:
        # 50 requests in flight at once.
        expected = {}
        for i in range(IN_FLIGHT):
            mid = ids()
            payload = "payload-%d-%s" % (i, "x" * i)
            expected[mid] = payload
            s.send(pack([REQUEST, mid, "echo", [payload]]))
        got = {}
        bad = []
        order = []
        for _ in range(IN_FLIGHT):  # bounded: exactly as many receives as requests
            try:
                frames, body = recv_body(s)
            except zmq.Again:
                bad.append("timeout after %d responses" % len(got))
                break
            if len(frames) != 1:
                bad.append("frames %r" % (frames,))
            if not (isinstance(body, list) and len(body) == 4 and body[0] == RESPONSE):
                bad.append("unexpected %r" % (body,))
                continue
            if body[1] in got:
                bad.append("duplicate msgid %r" % body[1])
            got[body[1]] = body
            order.append(body[1])
        c.check("DEALER pipelined: %d responses received" % IN_FLIGHT,
                len(got) == IN_FLIGHT and not bad, "; ".join(bad[:5]) + " got=%d" % len(got))
        mismatches = [mid for mid, p in expected.items()
                      if got.get(mid) != [RESPONSE, mid, None, p]]
        c.check("DEALER pipelined: every response matches its request by msgid",
                not mismatches, "mismatched msgids %r" % mismatches[:5])
        unknown = [mid for mid in got if mid not in expected]
        c.check("DEALER pipelined: no response for an unknown msgid", not unknown, repr(unknown))
        print("info  DEALER pipelined: responses %s" %
              ("in request order" if order == sorted(order) else "out of request order"),
              flush=True)

        # add(2, 3)
        mid = ids()
        body = dealer_call(c, s, "DEALER add(2, 3)", [REQUEST, mid, "add", [2, 3]], mid)
        if body is not None:
            c.check("DEALER add(2, 3): result 5, no error", body[2] is None and body[3] == 5,
                    repr(body))

        # fail("boom")
        mid = ids()
        body = dealer_call(c, s, "DEALER fail('boom')", [REQUEST, mid, "fail", ["boom"]], mid)
        if body is not None and len(body) == 4:
            c.check("DEALER fail('boom'): result is nil", body[3] is None, repr(body))
            check_error_object(c, "DEALER fail('boom')", body[2], "RemoteError", "boom",
                               need_type=True)

        # Unknown method -> NoSuchMethod
        mid = ids()
        body = dealer_call(c, s, "DEALER unknown method",
                           [REQUEST, mid, "no_such_method_xyz", []], mid)
        if body is not None and len(body) == 4:
            c.check("DEALER unknown method: result is nil", body[3] is None, repr(body))
            check_error_object(c, "DEALER unknown method", body[2], "NoSuchMethod")

        # Request with an extension map.
        mid = ids()
        body = dealer_call(c, s, "DEALER echo with ext {dl:5000, pv:1}",
                           [REQUEST, mid, "echo", ["with-ext"], {"dl": 5000, "pv": 1}], mid)
        if body is not None:
            c.check("DEALER echo with ext: response == [1, %d, None, 'with-ext']" % mid,
                    body == [RESPONSE, mid, None, "with-ext"], repr(body))

        # Cast: nothing comes back; the next message is the following call's response.
        s.send(pack([NOTIFICATION, "echo", ["x"]]))
        mid = ids()
        s.send(pack([REQUEST, mid, "echo", ["after-cast"]]))
        try:
            frames, body = recv_body(s)
            c.check("DEALER cast: next message is the following echo's response",
                    body == [RESPONSE, mid, None, "after-cast"], repr(body))
        except zmq.Again:
            c.check("DEALER cast: next message is the following echo's response", False,
                    "timed out")
        # Nothing further may arrive (short, bounded poll).
        extra = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and len(extra) < 10:
            if s.poll(int(max(1, (deadline - time.monotonic()) * 1000)), zmq.POLLIN):
                extra.append(unpack(s.recv_multipart()[-1]))
            else:
                break
        c.check("DEALER cast: no response ever arrives for it", not extra, repr(extra))
    finally:
        s.close(0)


def stop_server(c, proc):
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        c.check("server exits within %.0f s of SIGTERM" % EXIT_TIMEOUT_S, False, "still running")
        return
    c.check("server exits with status 0 after SIGTERM", rc == 0, "status %r" % rc)


def main(argv):
    if len(argv) < 2:
        print("usage: %s SWITCHBOARD_SERVER [threadpool|blocking|eventloop]" % argv[0],
              file=sys.stderr)
        return 2
    binary = argv[1]
    executor = argv[2] if len(argv) > 2 else "threadpool"
    c = Checks()
    print("info  server %s, executor %s" % (binary, executor), flush=True)
    proc = None
    errlog = None
    ctx = zmq.Context()
    try:
        proc, endpoint, errlog = start_server(binary, executor)
        if not c.check("server prints 'listening on tcp://127.0.0.1:PORT' within %.0f s"
                       % STARTUP_TIMEOUT_S, endpoint is not None,
                       "exit status %r" % proc.poll()):
            return 1
        print("info  endpoint %s" % endpoint, flush=True)
        try:
            test_req(c, ctx, endpoint)
        except zmq.Again:
            c.check("REQ checks completed", False, "receive timed out")
        try:
            test_dealer(c, ctx, endpoint)
        except zmq.Again:
            c.check("DEALER checks completed", False, "receive timed out")
        stop_server(c, proc)
    except Exception as e:  # report, never hang
        c.check("no unexpected exception", False, "%s: %s" % (type(e).__name__, e))
    finally:
        ctx.destroy(linger=0)
        if proc is not None:
            # Kill the process group this script created (start_new_session), so nothing
            # the server may have started outlives the test, then the child itself.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if c.failed and errlog is not None:
            try:
                errlog.seek(0)
                tail = errlog.read()[-4000:].decode("utf-8", "replace")
                if tail:
                    print("info  server stderr (tail):\n" + tail, flush=True)
            except Exception:
                pass
    print("%d passed, %d failed" % (c.passed, c.failed), flush=True)
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
