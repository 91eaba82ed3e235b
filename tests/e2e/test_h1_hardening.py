"""HTTP/1.1 regressions found in review: Connection-listed framing headers, deep pipelines of
local replies, an end of stream that arrives under back-pressure, and timeouts after a retry."""

import socket
import threading
import time

from conftest import client_config, free_port, stats, wait_ready, wait_until
from rawserver import ThreadedServer
from test_traffic import proxy


class RawUpstream(ThreadedServer):
    """An HTTP/1.1 upstream run by `handler(server, conn)`; it records the request heads it read."""

    def __init__(self, handler):
        self.heads = []
        super().__init__(handler)

    def read_head(self, c):
        data = b""
        while b"\r\n\r\n" not in data:
            b = self.recv(c)
            if not b:
                return None, b""
            data += b
        head, _, rest = data.partition(b"\r\n\r\n")
        self.heads.append(head)
        return head, rest


def plain_sidecar(procs, pki, port, extra=""):
    outbound, admin = free_port(), free_port()
    cfg = client_config(pki, "c", outbound, admin, [port], tls="DISABLE", cluster_extra=extra).replace("concurrency: 2", "concurrency: 1")
    p = procs.sidecar(cfg, "client")
    wait_ready(p, admin)
    return p, outbound, admin


def exchange(port, data, timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except socket.timeout:
        out += b"<<timeout>>"
    s.close()
    return out


def test_connection_cannot_strip_framing_or_mesh_headers(procs, pki):
    def handler(u, c):
        while True:
            head, rest = u.read_head(c)
            if head is None:
                return
            n = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    n = int(v)
            while len(rest) < n:
                more = u.recv(c)
                if not more:
                    return
                rest += more
            body = head.split(b" ")[1]
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    u = RawUpstream(handler)
    try:
        p, outbound, _ = plain_sidecar(procs, pki, u.port)
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: server\r\n\r\n"
        out = exchange(outbound, b"POST /first HTTP/1.1\r\nHost: server\r\nConnection: content-length, close\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
        u.settle()          # the upstream read and handled everything the proxy sent it
        assert not any(b"/smuggled" in h.split(b"\r\n")[0] for h in u.heads), u.heads
        first = [h for h in u.heads if h.startswith(b"POST /first")][0]
        assert b"content-length" in first.lower()
    finally:
        u.close()


def test_deep_pipeline_of_local_replies_does_not_crash(procs, pki):
    u = RawUpstream(lambda u, c: None)
    try:
        p, outbound, admin = plain_sidecar(procs, pki, u.port)
        n = 5000                                   # ~140 KB of pipelined requests, each a 404
        data = b"GET / HTTP/1.1\r\nHost: nosuch\r\n\r\n" * n
        s = socket.create_connection(("127.0.0.1", outbound), timeout=10)
        s.sendall(data)
        got = 0
        buf = b""
        while got < n:
            b = s.recv(1 << 20)
            if not b:
                break
            buf += b
            got = buf.count(b"HTTP/1.1 404")
        s.close()
        assert got == n, got
        assert p.poll() is None                    # still alive
        assert stats(admin)["no_route"] == n
    finally:
        u.close()


def test_end_of_stream_is_seen_after_back_pressure(procs, pki):
    size = 8 * 1024 * 1024

    def handler(u, c):
        u.read_head(c)
        c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * size)

    u = RawUpstream(handler)
    try:
        p, outbound, admin = plain_sidecar(procs, pki, u.port)
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)    # a slow reader
        c.connect(("127.0.0.1", outbound))
        c.settimeout(6)
        c.sendall(b"GET /big HTTP/1.1\r\nHost: server\r\n\r\n")
        time.sleep(1.0)                                            # the proxy fills up and pauses
        # The app's body ends at its close; an HTTP/1.1 client gets it chunked, so the end is the
        # last chunk (the client's connection may stay open for its next request).
        total, end, tail = 0, False, b""
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                total += len(b)
                tail = (tail + b)[-16:]
                if tail.endswith(b"\r\n0\r\n\r\n"):
                    end = True
                    break
        except socket.timeout:
            pass
        c.close()
        assert end, f"no end of the body after {total} bytes"
        assert total > size
        wait_until(lambda: (s := stats(admin))["downstream_connections_active"] == 0 and s["upstream_connections_active"] == 0,
                   timeout=3, what=f"both connections closed ({stats(admin)})")
    finally:
        u.close()


def test_route_timeout_still_applies_after_a_connect_retry(procs, pki):
    """The first connect is refused (nothing listens yet); the test waits for the sidecar to count
    that failure, then starts an app that accepts and never answers. The connect retry reaches it,
    and the 2 s route timeout, counted from the start of the request, still ends the exchange:
    504 UT after about 2 s, with every refused connect retried and the silent app connected to
    (2 s leaves a loaded machine time to start the app before the deadline)."""
    port = free_port()
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: main
    timeout: 2s
    retries: {attempts: 50, retryOn: connect-failure}
    route:
    - destination: {host: reviews}
"""
    outbound, admin, p = proxy(procs, [(port, "v1")], vs)
    c = socket.create_connection(("127.0.0.1", outbound), timeout=8)
    t0 = time.monotonic()
    c.sendall(b"GET /x HTTP/1.1\r\nHost: reviews\r\n\r\n")
    # Back-off between connect attempts is 1-250 ms; 50 attempts leave ample time to start the app.
    wait_until(lambda: stats(admin)["upstream_connect_failures"] >= 1, timeout=3, what="the first connect refused")
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", port))
    silent.listen(8)
    held = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    d = exchange_response(c)
    elapsed = time.monotonic() - t0
    c.close()
    silent.close()
    for h in held:
        h.close()
    assert d.split(b"\r\n", 1)[0] == b"HTTP/1.1 504 Gateway Timeout", d[:200]
    assert b"\r\nx-mesh-response-flags: UT\r\n" in d, d[:300]
    assert d.endswith(b"\r\n\r\nupstream request timeout\n"), d[:300]
    assert 1.9 < elapsed < 4.0, elapsed
    assert len(held) == 1, "the retry never reached the app"
    s = stats(admin)
    assert s["upstream_connect_failures"] >= 1, s
    assert s["retries"] == s["upstream_connect_failures"], s   # every refused connect was retried
    assert s["request_timeouts"] == 1, s
    assert s["responses_5xx"] == 1, s


def exchange_response(c):
    """Reads from `c` until the sidecar closes it (the 504 says `connection: close`)."""
    d = b""
    while True:
        b = c.recv(65536)
        if not b:
            break
        d += b
    return d
