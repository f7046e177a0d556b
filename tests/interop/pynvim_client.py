#!/usr/bin/python3
"""Interoperability test: a stock MessagePack-RPC client (Debian's python3-pynvim) calls
switchboard-server over msgpack+tcp://.

Usage: /usr/bin/python3 pynvim_client.py PATH/TO/switchboard-server [threadpool|blocking|eventloop]

Starts the server on a loopback port it picks (port 0), calls echo, add and fail through
pynvim.msgpack_rpc.tcp_session, and checks the results and that fail comes back as an error
object with its code. Prints one line per check; exits 0 if every check passed, 1 otherwise.
A watchdog ends the script (and the server) if anything hangs.
"""

import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

from pynvim.msgpack_rpc import tcp_session

STARTUP_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 10.0
WATCHDOG_S = 60.0


class RemoteError(Exception):
    """The error object of a response, as pynvim's session hands it over."""

    def __init__(self, error):
        super().__init__(repr(error))
        self.error = error


def start_server(binary, executor):
    """The server, whether it started, its stderr, and the port it printed it listens on."""
    errlog = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [binary, "--listen", "msgpack+tcp://127.0.0.1:0", "--executor", executor],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errlog,
        start_new_session=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    fd = proc.stdout.fileno()
    buf = b""
    while b"listening on " not in buf or b"\n" not in buf.split(b"listening on ", 1)[1]:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return proc, False, errlog, None
        chunk = os.read(fd, 4096)
        if not chunk:
            return proc, False, errlog, None
        buf += chunk
    url = buf.split(b"listening on ", 1)[1].split(b"\n", 1)[0].decode()

    def drain():  # the server must never block on a full pipe
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
    threading.Thread(target=drain, daemon=True).start()
    return proc, True, errlog, int(url.rsplit(":", 1)[1])


def main(argv):
    if len(argv) < 2:
        print("usage: %s SWITCHBOARD_SERVER [executor]" % argv[0], file=sys.stderr)
        return 2
    binary, executor = argv[1], (argv[2] if len(argv) > 2 else "threadpool")
    failed = []

    def check(name, ok, detail=""):
        print("%s  %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if not ok else ""),
              flush=True)
        if not ok:
            failed.append(name)

    proc, started, errlog, port = start_server(binary, executor)

    def watchdog():
        print("FAIL  watchdog: no result within %.0f s" % WATCHDOG_S, flush=True)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            os._exit(1)
    timer = threading.Timer(WATCHDOG_S, watchdog)
    timer.daemon = True
    timer.start()
    try:
        if not started:
            check("server prints 'listening on' within %.0f s" % STARTUP_TIMEOUT_S, False,
                  "exit status %r" % proc.poll())
            return 1
        # tcp_session also sends a nvim_set_client_info notification: a cast the server drops.
        session = tcp_session("127.0.0.1", port)
        session.error_wrapper = RemoteError
        try:
            got = session.request("echo", "hi")
            check("echo('hi') == 'hi'", got == "hi", repr(got))
            got = session.request("add", 2, 3)
            check("add(2, 3) == 5", got == 5, repr(got))
            try:
                got = session.request("fail", "boom")
                check("fail('boom') raises an error", False, "returned %r" % (got,))
            except RemoteError as e:
                err = e.error
                check("fail('boom'): the error is a map", isinstance(err, dict), repr(err))
                if isinstance(err, dict):
                    check("fail('boom'): code RemoteError", err.get("code") == "RemoteError",
                          repr(err))
                    check("fail('boom'): message boom", err.get("message") == "boom", repr(err))
            got = session.request("add", 40, 2)
            check("the session still works after an error", got == 42, repr(got))
        finally:
            session.close()
        proc.send_signal(signal.SIGTERM)
        try:
            check("server exits 0 after SIGTERM", proc.wait(timeout=EXIT_TIMEOUT_S) == 0)
        except subprocess.TimeoutExpired:
            check("server exits within %.0f s of SIGTERM" % EXIT_TIMEOUT_S, False)
    except Exception as e:  # report, never hang
        check("no unexpected exception", False, "%s: %s" % (type(e).__name__, e))
    finally:
        timer.cancel()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(timeout=5)
        if failed:
            errlog.seek(0)
            print("info  server stderr (tail):\n" +
                  errlog.read()[-4000:].decode("utf-8", "replace"), flush=True)
    print("%d failed" % len(failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
