#!/usr/bin/env python3
"""An HTTP/1.1 app that misbehaves on purpose (used by bench/faults.sh). Binds 127.0.0.1 only.

    fault_upstream.py --port P

Pre-fork style: the parent accepts, and each connection is served by a forked child process
that dies with the parent (PR_SET_PDEATHSIG). Paths:
  GET /ok?len=L          200 with Content-Length L (keep-alive; a control)
  GET /cl?len=L&send=S[&wait=MS]   200 with Content-Length L, sends S < L body bytes, waits MS
                         (default 50) ms, then the serving process SIGKILLs itself (the kernel
                         closes the socket)
  GET /chunked?send=K[&wait=MS]    200 Transfer-Encoding: chunked, K chunks of 1000 bytes and no
                         last chunk, waits MS (default 50) ms, then SIGKILLs itself
  GET /hang              reads the request and never answers; the child exits when the peer
                         closes the connection (or after 60 s at most)
Prints "READY <port>" once listening.
"""
import argparse
import ctypes
import os
import signal
import socket
import sys
import time
from urllib.parse import parse_qs, urlsplit


def die_with_parent():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def read_head(c, buf):
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            return None, b""
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def serve(c):
    c.settimeout(60)
    buf = b""
    while True:
        head, buf = read_head(c, buf)
        if head is None:
            return
        target = head.split("\r\n", 1)[0].split(" ")[1]
        u = urlsplit(target)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path == "/ok":
            n = int(q.get("len", "100"))
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % n + b"o" * n)
            continue
        if u.path == "/cl":
            n, s = int(q.get("len", "100000")), int(q.get("send", "30000"))
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % n + b"c" * s)
            time.sleep(int(q.get("wait", "50")) / 1000.0)
            os.kill(os.getpid(), signal.SIGKILL)
        if u.path == "/chunked":
            k = int(q.get("send", "5"))
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                      + b"3e8\r\n" + b"k" * 1000 + b"\r\n")
            for _ in range(k - 1):
                c.sendall(b"3e8\r\n" + b"k" * 1000 + b"\r\n")
            time.sleep(int(q.get("wait", "50")) / 1000.0)
            os.kill(os.getpid(), signal.SIGKILL)
        if u.path == "/hang":
            try:
                while c.recv(65536):
                    pass
            except OSError:
                pass
            return
        c.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # children are reaped automatically
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", a.port))
    s.listen(1024)
    print("READY %d" % s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        pid = os.fork()
        if pid == 0:
            s.close()
            die_with_parent()
            try:
                serve(c)
            except Exception:  # noqa: BLE001
                pass
            os._exit(0)
        c.close()


if __name__ == "__main__":
    sys.exit(main())
