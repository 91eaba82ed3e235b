"""Idle connections cost little (issue 9): a keep-alive connection idle for 2 s gives its buffers
back (and OpenSSL's record buffers), works again on its next byte, and after bursts of closed or
idle connections the freed memory is handed back to the system (malloc_trim). An idle mesh-mode
sidecar unmaps its code pages once quiet and stays under 10 MiB (issue 22)."""

import importlib.util
import os
import socket
import ssl
import time
import urllib.request

import pytest

from conftest import ROOT, Meshd, client_config, free_port, server_config, stats, wait_ready, wait_until
from test_hostile import END_HEADERS, END_STREAM, HEADERS, H2Conn, Inbound, h2_frame, h2_headers_block

SANITIZED = any(k in os.environ for k in ("ASAN_OPTIONS", "TSAN_OPTIONS", "LSAN_OPTIONS"))


def read_response(s):
    """One HTTP/1.1 response with a Content-Length body, from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        b = s.recv(65536)
        assert b, f"closed after {data!r}"
        data += b
    head, _, body = data.partition(b"\r\n\r\n")
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0])
    while len(body) < n:
        b = s.recv(65536)
        assert b
        body += b
    return head.split(b"\r\n")[0], body


def mtls_socket(pki, port, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{pki}/root-cert.pem")
    ctx.load_cert_chain(f"{pki}/client/cert-chain.pem", f"{pki}/client/key.pem")
    ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))


def test_keepalive_connections_work_after_their_buffers_were_released(procs, pki):
    """HTTP/1.1 (plaintext outbound and mTLS inbound) and HTTP/2 (mTLS): a request, 2.5 s idle
    (the buffers are released), then more requests on the same connection, bodies intact."""
    app = procs.app("idle")
    ib = Inbound(procs, pki, app_port=app)
    out, admin = free_port(), free_port()
    cfg = client_config(pki, "front", out, admin, [app], tls="DISABLE").replace("concurrency: 2", "concurrency: 1")
    front = procs.sidecar(cfg, "front")
    wait_ready(front, admin)

    plain = socket.create_connection(("127.0.0.1", out), timeout=10)
    tls = mtls_socket(pki, ib.port, ["http/1.1"])
    h2 = H2Conn(ib)
    req = b"GET /bytes/70000 HTTP/1.1\r\nHost: server\r\n\r\n"
    for s in (plain, tls):
        s.sendall(req)
        status, body = read_response(s)
        assert status == b"HTTP/1.1 200 OK" and len(body) == 70000
    h2.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 1, h2_headers_block(b"/")))
    assert h2.pump(lambda f: h2.completed(1))

    wait_until(lambda: stats(admin).get("downstream_idle_buffer_releases", 0) >= 1, timeout=6, what="outbound release")
    wait_until(lambda: stats(ib.admin).get("downstream_idle_buffer_releases", 0) >= 2, timeout=6, what="inbound releases")

    for _ in range(3):
        for s in (plain, tls):
            s.sendall(req)
            status, body = read_response(s)
            assert status == b"HTTP/1.1 200 OK" and len(body) == 70000
    h2.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 3, h2_headers_block(b"/bytes/60000")))
    assert h2.pump(lambda f: h2.completed(3), timeout=5)
    got = sum(len(p) for t, _, s, p in h2.frames if t == 0 and s == 3)
    assert got == 60000   # within the default 64 KiB window this raw client never reopens
    for s in (plain, tls):
        s.close()
    h2.close()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


@pytest.mark.skipif(SANITIZED, reason="sanitizer allocators ignore malloc_trim")
def test_idle_and_closed_connections_give_memory_back(procs, pki):
    """600 mTLS connections, one request each, then idle: their buffers are released and trimmed
    (RSS falls while they are still open); closed, RSS returns near where it started."""
    app = procs.app("idle")
    ib = Inbound(procs, pki, app_port=app)
    ib.served(path="/")
    base = rss_kb(ib.proc.pid)
    socks = []
    req = b"GET /bytes/20000 HTTP/1.1\r\nHost: server\r\n\r\n"
    for _ in range(600):
        s = mtls_socket(pki, ib.port, ["http/1.1"])
        s.sendall(req)
        status, body = read_response(s)
        assert status == b"HTTP/1.1 200 OK"
        socks.append(s)
    busy = rss_kb(ib.proc.pid)
    # 2 s until every connection is idle long enough, then the trim 3 s after the 256th release.
    wait_until(lambda: stats(ib.admin).get("downstream_idle_buffer_releases", 0) >= 600, timeout=15, what="all released")
    time.sleep(4)
    idle = rss_kb(ib.proc.pid)
    assert idle < busy - (busy - base) // 4, (base, busy, idle)
    for s in socks:
        s.close()
    wait_until(lambda: stats(ib.admin).get("downstream_connections_active", 1) == 0, timeout=10, what="all closed")
    time.sleep(4)
    after = rss_kb(ib.proc.pid)
    assert after < base + (busy - base) // 3, (base, busy, idle, after)


def test_idle_http2_connection_ends_with_goaway(procs, pki):
    """At the idle timeout (3 s) an HTTP/2 connection gets GOAWAY (NO_ERROR) before the close, so
    a client never loses a request to a connection that vanished silently."""
    ib = Inbound(procs, pki)
    c = H2Conn(ib)
    c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 1, h2_headers_block(b"/ok")))
    assert c.pump(lambda f: c.completed(1))
    t0 = time.monotonic()
    c.pump(lambda f: c.goaway_code() is not None, timeout=8)
    assert c.goaway_code() == 0, c.frames
    assert 2.5 < time.monotonic() - t0 < 6
    c.pump(timeout=3)
    assert c.closed
    c.close()
    ib.up.close()


def _idle_rss_tools():
    """bench/tools/idle_rss.py: the smaps breakdown bench/idle-rss.sh reports."""
    spec = importlib.util.spec_from_file_location("idle_rss", ROOT / "bench" / "tools" / "idle_rss.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Issue 22's bound on an idle mesh-mode sidecar's VmRSS. The release build (SIDECAR_BIN=
# .build/release/sidecar) measured 4.1 MiB idle, the debug build CI runs 5.5 MiB (its Swift
# runtime in shared libraries); both were 17-25 MiB before the idle release.
IDLE_RSS_BOUND_KB = 10 * 1024


@pytest.mark.skipif(SANITIZED, reason="sanitizer shadow memory dominates RSS")
def test_idle_mesh_mode_sidecar_gives_its_code_pages_back_and_serves_after(procs):
    """Two mesh-mode sidecars from meshd (one worker each), requests through both, then quiet:
    within a few seconds the sidecar unmaps the clean file pages of its binary and libraries
    (start-up code, OpenSSL's initialisation) and trims its heap, so its idle RSS is under the
    bound; then it serves again, the same bodies, on the pages it faults back in."""
    tools = _idle_rss_tools()
    m = Meshd(procs)
    app = procs.app("reviews")
    rp, _, inbound, _ = m.sidecar("reviews-sidecar", "reviews", app_port=app)
    pp, _, _, outbound = m.sidecar("productpage-sidecar", "productpage", routes=[f"reviews=127.0.0.1:{inbound}"])

    def requests(n):
        for i in range(n):
            req = urllib.request.Request(f"http://127.0.0.1:{outbound}/bytes/{1000 + i}", headers={"Host": "reviews"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200 and len(r.read()) == 1000 + i

    requests(20)
    busy = {p.pid: tools.smaps_breakdown(p.pid) for p in (rp, pp)}
    # Quiet for two 2 s samples, then the release: at most ~6 s after the last request.
    seen = {}

    def released(ref):
        """Both gave back at least 1.5 MiB of their binary's pages and half of libcrypto's
        since `ref` (release build: 7 -> 1.2 MiB and 3.6 -> 0; debug: 4.9 -> 0.6 and 3.6 -> 0)."""
        for p in (rp, pp):
            seen[p.pid] = tools.smaps_breakdown(p.pid)
        return all(seen[p.pid]["binary"] < ref[p.pid]["binary"] - 1536
                   and seen[p.pid]["libs"].get("libcrypto.so", 0) < ref[p.pid]["libs"].get("libcrypto.so", 0) // 2
                   for p in (rp, pp))

    wait_until(lambda: released(busy), timeout=15, what=f"code pages released: busy {busy}, now {seen}")
    time.sleep(1)
    for p in (rp, pp):
        idle = tools.smaps_breakdown(p.pid)
        assert idle["VmRSS"] < IDLE_RSS_BOUND_KB, (p.args[0], busy[p.pid], idle)
    # Serving again works (the code comes back on demand), and the next quiet period releases again.
    requests(20)
    back = {p.pid: tools.smaps_breakdown(p.pid) for p in (rp, pp)}
    for p in (rp, pp):
        assert back[p.pid]["binary"] > seen[p.pid]["binary"] + 1024, (seen[p.pid], back[p.pid])
    wait_until(lambda: released(back), timeout=15, what=f"second release: after requests {back}, now {seen}")
    requests(5)


@pytest.mark.skipif(SANITIZED, reason="sanitizer shadow memory dominates RSS")
def test_idle_tracing_sidecar_stays_quiet_and_releases(procs):
    """Tracing on (100% sampled spans sent to a collector): once the requests stop, the span
    exporter sleeps its flush interval and the drained queue pages are given back, so the
    sidecar is quiet by the idle release's measure (CPU and page faults per 2 s) and releases
    its code pages as one without tracing does (issue 20 review: memory with tracing on)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    posts = []

    class Sink(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            posts.append(len(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

    col = ThreadingHTTPServer(("127.0.0.1", free_port()), Sink)
    threading.Thread(target=col.serve_forever, daemon=True).start()
    try:
        tools = _idle_rss_tools()
        m = Meshd(procs)
        app = procs.app("reviews")
        flags = ["--otlp-endpoint", f"http://127.0.0.1:{col.server_address[1]}/v1/traces", "--trace-flush-interval", "200ms"]
        rp, _, inbound, _ = m.sidecar("reviews-sidecar", "reviews", app_port=app, extra=flags)
        pp, _, _, outbound = m.sidecar("productpage-sidecar", "productpage", routes=[f"reviews=127.0.0.1:{inbound}"], extra=flags)
        tel = procs.tmp / "sample-all.yaml"
        tel.write_text("""
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: mesh-system}
spec:
  tracing: [{randomSamplingPercentage: 100, providers: [{name: otel}]}]
""")
        m.ctl("apply", "-f", tel, "--wait")
        for i in range(50):
            req = urllib.request.Request(f"http://127.0.0.1:{outbound}/bytes/{100 + i}", headers={"Host": "reviews"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200 and len(r.read()) == 100 + i
        wait_until(lambda: len(posts) >= 2, 5, what="spans exported")
        busy = {p.pid: tools.smaps_breakdown(p.pid) for p in (rp, pp)}
        seen = {}

        def released():
            for p in (rp, pp):
                seen[p.pid] = tools.smaps_breakdown(p.pid)
            return all(seen[p.pid]["binary"] < busy[p.pid]["binary"] - 1536 for p in (rp, pp))

        wait_until(released, timeout=15, what=f"code pages released with tracing on: busy {busy}, now {seen}")
    finally:
        col.shutdown()
        col.server_close()
