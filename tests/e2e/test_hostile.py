"""Hostile input (issue 9): request smuggling, HTTP/2 abuse, slowloris, slow readers and TLS abuse.

Every case is sent to a real sidecar in front of a recording upstream. Each asserts the exact
answer (status line, RST_STREAM or GOAWAY code, or a close), that the upstream never saw the
request (or, for a body that turns bad after its head went out, never saw it complete), that the
rejection is counted in `mesh_downstream_rejected_total`, and that the proxy keeps serving a
well-behaved client afterwards (DESIGN §8)."""

import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

from conftest import (client_config, curl, free_port, http_get, server_config, stats, wait_ready,
                      wait_until)
from rawserver import H2_PREFACE, ThreadedServer, h2_frame, hpack_literal

# HTTP/2 frame types and flags.
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x2, 0x3, 0x9, 0xB


class RecordingUpstream(ThreadedServer):
    """An HTTP/1.1 upstream that keeps every byte it received, per connection, and answers each
    complete request (Content-Length or chunked body) with 200 and `upstream-ok`. Bytes are
    recorded as they are read (`on_bytes`), so after `settle()` the record is complete."""

    def __init__(self):
        self.received = []       # one bytearray per connection
        self.requests = []       # request heads answered
        self.conns = {}          # connection -> [bytes received, bytes not yet parsed, answers due]
        super().__init__(lambda _, c: self._handle(c))
        self.lock = self.cond

    def on_accept(self, c):
        buf = bytearray()
        self.received.append(buf)
        self.conns[c] = [buf, b"", 0]

    def on_bytes(self, c, b):
        st = self.conns[c]
        st[0] += b
        pending = st[1] + b
        while b"\r\n\r\n" in pending:
            head, _, rest = pending.partition(b"\r\n\r\n")
            lower = head.lower()
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
            if b"transfer-encoding: chunked" in lower:
                end = chunked_end(rest)
                if end < 0:
                    break
                pending = rest[end:]
            elif m:
                n = int(m.group(1))
                if len(rest) < n:
                    break
                pending = rest[n:]
            else:
                pending = rest
            self.requests.append(head)
            st[2] += 1
        st[1] = pending

    def _handle(self, c):
        while self.recv(c):
            with self.lock:
                due, self.conns[c][2] = self.conns[c][2], 0
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nupstream-ok" * due)

    def saw(self, marker: bytes) -> bool:
        with self.lock:
            return any(marker in bytes(b) for b in self.received)

    def complete_requests_with(self, marker: bytes) -> int:
        with self.lock:
            return sum(1 for h in self.requests if marker in h)


def chunked_end(body: bytes) -> int:
    """The length of a complete chunked body (with trailers) at the start of `body`, or -1."""
    i = 0
    while True:
        eol = body.find(b"\r\n", i)
        if eol < 0:
            return -1
        size = int(body[i:eol].split(b";")[0], 16)
        i = eol + 2
        if size == 0:
            end = body.find(b"\r\n\r\n", i - 2)
            return -1 if end < 0 else end + 4
        if len(body) < i + size + 2:
            return -1
        i += size + 2


def rejected(admin) -> dict:
    """mesh_downstream_rejected_total by reason, from the Prometheus endpoint."""
    _, body = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    out = {}
    for m in re.finditer(r'^mesh_downstream_rejected_total\{reason="([a-z0-9_]+)"\} (\d+)$', body.decode(), re.M):
        out[m.group(1)] = int(m.group(2))
    return out


class Front:
    """A plaintext outbound sidecar (HTTP/1.1 and h2c by prior knowledge) in front of a
    RecordingUpstream, with short header and idle timeouts so that stalls end quickly."""

    def __init__(self, procs, pki, upstream=None, cluster_extra=""):
        self.up = upstream or RecordingUpstream()
        self.port, self.admin = free_port(), free_port()
        cfg = client_config(pki, "front", self.port, self.admin, [self.up.port], tls="DISABLE",
                            cluster_extra=cluster_extra)
        cfg = cfg.replace("concurrency: 2", "concurrency: 1").replace(
            "    headerTimeout: 2s", "    headerTimeout: 2s\n    idleTimeout: 3s\n    streamIdleTimeout: 3s")
        self.proc = procs.sidecar(cfg, "front")
        wait_ready(self.proc, self.admin)

    def served(self):
        """A well-behaved client still gets through."""
        r = curl("-s", "-o", "-", "-w", " %{http_code}", "-H", "Host: server", f"http://127.0.0.1:{self.port}/ok", timeout=10)
        return r.stdout == b"upstream-ok 200"

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def log(self):
        return self.proc.log_path.read_text(errors="replace")


@pytest.fixture
def front(procs, pki):
    f = Front(procs, pki)
    yield f
    f.up.close()


def exchange(port, data, timeout=5.0, linger=0.0):
    """Sends `data` on a fresh connection and reads until the server closes (or `timeout`)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    if linger:
        time.sleep(linger)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return out, True
            out += b
    except socket.timeout:
        return out, False
    except ConnectionResetError:
        return out, True
    finally:
        s.close()


def head(method=b"POST", target=b"/smuggle", fields=()):
    return method + b" " + target + b" HTTP/1.1\r\nHost: server\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: server\r\n\r\n"

# (id, request bytes, expected status line). Every one is ambiguous or invalid framing: never
# forwarded, answered and closed.
H1_HEAD_CASES = [
    ("cl-te", head(fields=[b"Content-Length: 4", b"Transfer-Encoding: chunked"]) + b"0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("te-cl", head(fields=[b"Transfer-Encoding: chunked", b"Content-Length: 45"]) + b"0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("te-te-repeated", head(fields=[b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"]) + b"0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("te-list", head(fields=[b"Transfer-Encoding: gzip, chunked"]) + b"0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 501 Not Implemented"),
    ("te-xchunked", head(fields=[b"Transfer-Encoding: xchunked", b"Content-Length: 4"]) + b"0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 501 Not Implemented"),
    ("te-space-before-colon", head(fields=[b"Transfer-Encoding : chunked"]) + b"0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("te-vertical-tab", head(fields=[b"Transfer-Encoding:\x0bchunked"]) + b"0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("te-obs-fold", head(fields=[b"X-Pad: a", b" Transfer-Encoding: chunked"]) + b"0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("te-quoted", head(fields=[b'Transfer-Encoding: "chunked"']) + b"0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 501 Not Implemented"),
    ("te-http10", b"POST /smuggle HTTP/1.0\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("cl-duplicate-different", head(fields=[b"Content-Length: 4", b"Content-Length: 45"]) + b"abcd" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("cl-duplicate-same", head(fields=[b"Content-Length: 4", b"Content-Length: 4"]) + b"abcd" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("cl-list", head(fields=[b"Content-Length: 4, 4"]) + b"abcd" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("cl-negative", head(fields=[b"Content-Length: -1"]) + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("cl-plus-sign", head(fields=[b"Content-Length: +4"]) + b"abcd" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("cl-hex", head(fields=[b"Content-Length: 0x4"]) + b"abcd" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("cl-overflow", head(fields=[b"Content-Length: 18446744073709551620"]) + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("obs-fold", head(fields=[b"X-Folded: a", b"\tb"]) + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("bare-cr-in-field", head(fields=[b"X-A: a\rX-B: b"]) + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("bare-lf-line-end", b"GET /smuggle HTTP/1.1\nHost: server\n\n" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("bare-lf-in-head", b"GET /smuggle HTTP/1.1\r\nHost: server\nX-A: b\r\n\r\n" + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("nul-in-value", head(method=b"GET", fields=[b"X-A: a\x00b"]) + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("control-in-value", head(method=b"GET", fields=[b"X-A: a\x01b"]) + SMUGGLED, b"HTTP/1.1 400 Bad Request"),
    ("nul-in-target", b"GET /smu\x00ggle HTTP/1.1\r\nHost: server\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
    ("space-in-target", b"GET /smu ggle HTTP/1.1\r\nHost: server\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
    ("space-in-name", head(method=b"GET", fields=[b"X A: b"]), b"HTTP/1.1 400 Bad Request"),
    ("empty-name", head(method=b"GET", fields=[b": b"]), b"HTTP/1.1 400 Bad Request"),
    ("repeated-host", head(method=b"GET", fields=[b"Host: evil"]), b"HTTP/1.1 400 Bad Request"),
    ("missing-host", b"GET /smuggle HTTP/1.1\r\nX-A: b\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
    ("http-version-2", b"GET /smuggle HTTP/2.0\r\nHost: server\r\n\r\n", b"HTTP/1.1 505 HTTP Version Not Supported"),
    ("http-version-junk", b"GET /smuggle HTTP/1.x\r\nHost: server\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
    ("long-request-line", b"GET /smuggle" + b"a" * 9000 + b" HTTP/1.1\r\nHost: server\r\n\r\n", b"HTTP/1.1 414 URI Too Long"),
    ("too-many-fields", head(method=b"GET", fields=[b"X-F%d: v" % i for i in range(120)]), b"HTTP/1.1 431 Request Header Fields Too Large"),
    ("header-section-too-large", head(method=b"GET", fields=[b"X-Big%d: " % i + b"v" * 8000 for i in range(9)]), b"HTTP/1.1 431 Request Header Fields Too Large"),
]


@pytest.mark.parametrize("name,data,status", H1_HEAD_CASES, ids=[c[0] for c in H1_HEAD_CASES])
def test_ambiguous_or_invalid_http1_head_is_answered_closed_and_never_forwarded(front, name, data, status):
    before = rejected(front.admin)
    out, closed = exchange(front.port, data)
    assert out.split(b"\r\n", 1)[0] == status, (name, out[:300])
    assert b"connection: close" in out.lower()
    assert out.count(b"HTTP/1.1 ") == 1, "only one answer: the smuggled request was not served"
    assert closed, "the connection must be closed after a framing error"
    wait_until(lambda: sum(rejected(front.admin).values()) == sum(before.values()) + 1, timeout=3,
               what=f"the rejection counted ({before})")
    front.up.settle()
    assert front.up.received == [], f"upstream saw bytes: {front.up.received[:1]}"
    after = rejected(front.admin)
    assert sum(after.values()) == sum(before.values()) + 1, (before, after)
    assert front.served()


# Framing that turns bad in the body, after a valid head went out (the proxy streams bodies): the
# client gets 400 and a close, and the upstream never receives a complete request nor the smuggled one.
H1_BODY_CASES = [
    ("chunk-size-overflow", head(fields=[b"Transfer-Encoding: chunked"]) + b"fffffffffffffffff1\r\nabcd\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-size-not-hex", head(fields=[b"Transfer-Encoding: chunked"]) + b"4g\r\nabcd\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-size-negative", head(fields=[b"Transfer-Encoding: chunked"]) + b"-4\r\nabcd\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-size-bare-lf", head(fields=[b"Transfer-Encoding: chunked"]) + b"4\nabcd\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-data-too-long", head(fields=[b"Transfer-Encoding: chunked"]) + b"2\r\nabcd\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-extension-bare-lf", head(fields=[b"Transfer-Encoding: chunked"]) + b"4;a=b\nabcd\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-extension-too-long", head(fields=[b"Transfer-Encoding: chunked"]) + b"4;" + b"e" * 20000 + b"\r\nabcd\r\n0\r\n\r\n" + SMUGGLED),
    ("trailer-obs-fold", head(fields=[b"Transfer-Encoding: chunked"]) + b"4\r\nabcd\r\n0\r\nX-T: a\r\n b\r\n\r\n" + SMUGGLED),
]


@pytest.mark.parametrize("name,data", H1_BODY_CASES, ids=[c[0] for c in H1_BODY_CASES])
def test_bad_chunked_body_is_answered_and_never_completes_upstream(front, name, data):
    before = rejected(front.admin)
    out, closed = exchange(front.port, data)
    assert out.split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request", (name, out[:300])
    assert closed
    wait_until(lambda: rejected(front.admin).get("bad_request", 0) == before.get("bad_request", 0) + 1, timeout=3,
               what="the bad body counted as bad_request")
    front.up.settle()
    assert front.up.complete_requests_with(b"/smuggle") == 0, "upstream got a complete request"
    assert not front.up.saw(b"/smuggled"), "upstream saw the smuggled request"
    assert rejected(front.admin).get("bad_request", 0) == before.get("bad_request", 0) + 1
    assert front.served()


def test_valid_chunk_extensions_and_trailers_pass(front):
    """The strictness above refuses nothing legitimate: extensions and trailers are fine."""
    body = b"4;name=value;x\r\nabcd\r\n0\r\nX-Trailer: t\r\n\r\n"
    out, _ = exchange(front.port, head(fields=[b"Transfer-Encoding: chunked", b"Connection: close"]) + body)
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"upstream-ok"), out[:300]
    assert front.up.complete_requests_with(b"/smuggle") == 1


def test_slowloris_head_a_byte_at_a_time_gets_408_while_others_are_served(front):
    """Headers trickled a byte every 200 ms: the header timeout (2 s) counts from the first byte,
    not from the last, so the connection ends with 408 after about 2 s; meanwhile 20 slow
    connections do not keep anyone else out."""
    before = rejected(front.admin)
    request = head(method=b"GET", fields=[b"X-Slow: " + b"s" * 100])
    conns = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", front.port), timeout=5)
        conns.append(s)
    t0 = time.monotonic()
    out = [b""] * len(conns)
    closed_at = [None] * len(conns)
    for s in conns:
        s.setblocking(False)
    i = 0
    while time.monotonic() - t0 < 6 and any(c is None for c in closed_at):
        for k, s in enumerate(conns):
            if closed_at[k] is not None:
                continue
            try:
                if i < len(request):
                    s.send(request[i:i + 1])
            except OSError:
                pass
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        closed_at[k] = time.monotonic() - t0
                        break
                    out[k] += b
            except (BlockingIOError, ConnectionResetError):
                pass
        if i == 3:
            assert front.served(), "a normal client must get through while slow ones trickle"
        i += 1
        time.sleep(0.2)
    for s in conns:
        s.close()
    for k in range(len(conns)):
        assert out[k].startswith(b"HTTP/1.1 408 Request Timeout"), out[k][:200]
        assert closed_at[k] is not None and 1.5 < closed_at[k] < 4.0, closed_at[k]
    assert not front.up.saw(b"X-Slow")
    assert rejected(front.admin).get("header_timeout", 0) == before.get("header_timeout", 0) + len(conns)


def test_idle_connection_without_a_byte_is_closed(front):
    """A connection that never sends anything is closed at the idle timeout, not held forever."""
    s = socket.create_connection(("127.0.0.1", front.port), timeout=10)
    t0 = time.monotonic()
    assert s.recv(100) == b""
    assert time.monotonic() - t0 < 6
    s.close()


def test_slow_reader_is_back_pressured_with_bounded_memory(procs, pki):
    """A client that asks for 64 MiB and does not read: the proxy stops reading the upstream
    (memory stays bounded) and keeps serving others; once the client reads, the body is complete."""
    app = procs.app("big")
    port, admin = free_port(), free_port()
    cfg = client_config(pki, "front", port, admin, [app], tls="DISABLE").replace("concurrency: 2", "concurrency: 1")
    p = procs.sidecar(cfg, "front")
    wait_ready(p, admin)

    def rss():
        with open(f"/proc/{p.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    base = rss()
    size = 64 << 20
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: server\r\n\r\n" % size)
    time.sleep(2.0)
    grown = rss() - base
    assert grown < 16 * 1024, f"proxy RSS grew {grown} KiB for one slow reader"
    r = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: server", f"http://127.0.0.1:{port}/", timeout=10)
    assert r.stdout == b"200"
    got = 0
    head_done = b""
    while b"\r\n\r\n" not in head_done:
        head_done += s.recv(65536)
    h, _, rest = head_done.partition(b"\r\n\r\n")
    got = len(rest)
    while got < size:
        b = s.recv(1 << 20)
        assert b, f"closed after {got} of {size} bytes"
        got += len(b)
    assert got == size
    s.close()


# ----- HTTP/2 abuse, on the inbound mTLS listener (HTTP/2 by ALPN, the app speaks HTTP/1.1) -----

class Inbound:
    """An inbound sidecar (mTLS, HTTP/2 by ALPN) in front of a RecordingUpstream (or an app port),
    with a 2 s header timeout and a 3 s idle timeout."""

    def __init__(self, procs, pki, app_port=None):
        self.up = RecordingUpstream() if app_port is None else None
        self.port, self.admin = free_port(), free_port()
        cfg = server_config(pki, "inbound", self.port, self.admin, app_port or self.up.port)
        cfg = cfg.replace("concurrency: 2", "concurrency: 1").replace(
            "    headerTimeout: 2s", "    headerTimeout: 2s\n    idleTimeout: 3s\n    streamIdleTimeout: 3s")
        self.proc = procs.sidecar(cfg, "inbound")
        self.pki = pki
        wait_ready(self.proc, self.admin)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

    def log(self):
        return self.proc.log_path.read_text(errors="replace")

    def served(self, http2=True, path="/ok"):
        """A well-behaved mTLS client still gets 200 (and the recording upstream's body)."""
        r = curl("-s", "--http2" if http2 else "--http1.1", "-o", "-", "-w", " %{http_code}",
                 "--cacert", f"{self.pki}/root-cert.pem", "--cert", f"{self.pki}/client/cert-chain.pem",
                 "--key", f"{self.pki}/client/key.pem", "--resolve", f"server:{self.port}:127.0.0.1",
                 f"https://server:{self.port}{path}", timeout=10)
        return r.stdout.endswith(b" 200") and (self.up is None or r.stdout == b"upstream-ok 200")


@pytest.fixture
def inbound(procs, pki):
    i = Inbound(procs, pki)
    yield i
    i.up.close()


def h2_headers_block(path=b"/h2", extra=(), method=b"\x82"):
    block = method + b"\x87"     # :method GET (or as given), :scheme https (static table)
    block += hpack_literal(b":path", path) + hpack_literal(b":authority", b"server")
    for n, v in extra:
        block += hpack_literal(n, v)
    return block


class H2Conn:
    """A raw HTTP/2 client over mTLS (ALPN h2): frames out, frames in, and the server's GOAWAY and
    RST_STREAM codes, for abuse a well-behaved client library refuses to send."""

    def __init__(self, ib, settings=b"", timeout=5.0, rcvbuf=0):
        raw = socket.create_connection(("127.0.0.1", ib.port), timeout=timeout)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(f"{ib.pki}/root-cert.pem")
        ctx.load_cert_chain(f"{ib.pki}/client/cert-chain.pem", f"{ib.pki}/client/key.pem")
        ctx.set_alpn_protocols(["h2"])
        ctx.check_hostname = False
        self.s = ctx.wrap_socket(raw)
        assert self.s.selected_alpn_protocol() == "h2"
        self.buf = b""
        self.frames = []
        self.closed = False
        self.send_failed = False
        self.send(H2_PREFACE + h2_frame(SETTINGS, 0, 0, settings))

    def send(self, data):
        """False once the server stopped taking bytes (what it sent before is still read)."""
        try:
            self.s.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            self.send_failed = True
            return False

    def pump(self, until=None, timeout=3.0):
        """Reads frames until `until(frames)` is true, the peer closes, or `timeout`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.closed:
            if until and until(self.frames):
                return True
            self.s.settimeout(max(0.05, end - time.monotonic()))
            try:
                b = self.s.recv(65536)
            except socket.timeout:
                break
            except (OSError, ssl.SSLError):
                self.closed = True
                break
            if not b:
                self.closed = True
                break
            self.buf += b
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + n:
                    break
                t, fl, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                self.frames.append((t, fl, sid, self.buf[9:9 + n]))
                self.buf = self.buf[9 + n:]
        return bool(until and until(self.frames))

    def goaway_code(self):
        for t, _, _, p in self.frames:
            if t == GOAWAY:
                return struct.unpack(">I", p[4:8])[0]
        return None

    def goaway_last_stream(self):
        for t, _, _, p in self.frames:
            if t == GOAWAY:
                return struct.unpack(">I", p[:4])[0] & 0x7FFFFFFF
        return None

    def rst_code(self, sid):
        for t, _, s, p in self.frames:
            if t == RST_STREAM and s == sid:
                return struct.unpack(">I", p)[0]
        return None

    def status(self, sid):
        """The first byte of the response HEADERS block (0x88 is :status 200), or None."""
        for t, _, s, p in self.frames:
            if t == HEADERS and s == sid:
                return p[:1]
        return None

    def completed(self, sid):
        return any(t in (DATA, HEADERS) and fl & END_STREAM and s == sid for t, fl, s, _ in self.frames)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def goaway(frames):
    return any(t == GOAWAY for t, *_ in frames)


def test_h2_baseline_request_reaches_upstream(inbound):
    """The raw client works: what the cases below refuse is the abuse, not the client."""
    c = H2Conn(inbound)
    c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 1, h2_headers_block(b"/baseline")))
    assert c.pump(lambda f: c.completed(1))
    assert c.status(1) == b"\x88"
    assert inbound.up.complete_requests_with(b"/baseline") == 1
    c.close()


def test_h2_rapid_reset_gets_enhance_your_calm(inbound):
    """Streams opened and reset at once (CVE-2023-44487): past 200 premature resets in a second the
    proxy sends GOAWAY(ENHANCE_YOUR_CALM) and ends the connection cleanly (TLS close_notify, FIN).
    A client still writing after the GOAWAY (it has not read it yet) is not answered with a TCP
    reset, which could discard the GOAWAY before the client reads it: the proxy drops what it
    still sends until it closes. Counted once as `h2_rapid_reset` and as nothing else."""
    before = rejected(inbound.admin)
    c = H2Conn(inbound)

    def open_and_reset(first, count):
        for sid in range(first, first + 2 * count, 2):
            if not c.send(h2_frame(HEADERS, END_HEADERS, sid, h2_headers_block(b"/reset")) + h2_frame(RST_STREAM, 0, sid, struct.pack(">I", 8))):
                return
    open_and_reset(1, 300)
    c.pump(goaway, timeout=5)
    assert c.goaway_code() == ENHANCE_YOUR_CALM, c.frames[-3:]
    open_and_reset(601, 50)   # a client still writing: enough to show it, little enough for a loaded machine
    assert not c.send_failed, "the proxy reset the connection while the client was still writing"
    c.pump(timeout=3)
    assert c.closed, "the connection ends after the GOAWAY"
    assert [t for t, *_ in c.frames].count(GOAWAY) == 1, c.frames[-3:]
    c.close()
    after = rejected(inbound.admin)
    assert after.get("h2_rapid_reset", 0) == before.get("h2_rapid_reset", 0) + 1, (before, after)
    assert sum(after.values()) == sum(before.values()) + 1, (before, after)
    assert "rapid reset" in inbound.log()
    assert inbound.served()


@pytest.mark.parametrize("kind", ["settings", "ping"])
def test_h2_control_frame_flood_without_reading_is_cut_off(inbound, kind):
    """SETTINGS or PING frames sent as fast as possible while the ACKs are never read: the proxy
    queues a bounded number of ACKs, then ends the connection; its memory stays flat."""
    before_rss = inbound.rss_kb()
    before = rejected(inbound.admin)
    c = H2Conn(inbound, rcvbuf=4096)
    frame = h2_frame(SETTINGS, 0, 0, struct.pack(">HI", 3, 100)) if kind == "settings" else h2_frame(PING, 0, 0, b"12345678")
    burst = frame * 1000
    c.s.settimeout(0.5)
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < 10 and sent < 500_000:
        try:
            c.s.sendall(burst)
            sent += 1000
        except (socket.timeout, OSError, ssl.SSLError):
            break
    grown = inbound.rss_kb() - before_rss
    c.close()
    assert grown < 16 * 1024, f"RSS grew {grown} KiB under a {kind} flood"
    wait_until(lambda: rejected(inbound.admin).get("h2_flood", 0) == before.get("h2_flood", 0) + 1, timeout=5,
               what=f"the {kind} flood counted (sent {sent} frames; {rejected(inbound.admin)}; {inbound.log()[-600:]})")
    assert "flooded" in inbound.log()
    assert inbound.served()


def test_h2_continuation_flood_is_cut_off_and_never_forwarded(inbound):
    """HEADERS without END_HEADERS, then endless CONTINUATION frames (CVE-2024-27316): past
    nghttp2's limit of 8 CONTINUATION frames the proxy sends GOAWAY(ENHANCE_YOUR_CALM) (last stream
    1, the one whose header block never ended, which gets no answer) and ends the connection
    cleanly; counted once as `h2_flood`; the upstream never receives a byte."""
    before = rejected(inbound.admin)
    c = H2Conn(inbound)
    c.send(h2_frame(HEADERS, 0, 1, h2_headers_block(b"/continuation")))
    piece = hpack_literal(b"x-c", b"v" * 100)
    for _ in range(50):   # past the limit of 8; few enough to be written within the drop window
        if not c.send(h2_frame(CONTINUATION, 0, 1, piece)):
            break
    assert not c.send_failed, "the proxy reset the connection while the client was still sending"
    c.pump(goaway, timeout=5)
    assert c.goaway_code() == ENHANCE_YOUR_CALM, c.frames
    assert c.goaway_last_stream() == 1, c.frames
    assert c.rst_code(1) is None and c.status(1) is None, c.frames
    c.pump(timeout=3)
    assert c.closed, "the connection ends after the GOAWAY"
    c.close()
    after = rejected(inbound.admin)
    assert after.get("h2_flood", 0) == before.get("h2_flood", 0) + 1, (before, after)
    assert sum(after.values()) == sum(before.values()) + 1, (before, after)
    assert "flooded the connection (Too many CONTINUATION frames" in inbound.log(), inbound.log()[-600:]
    inbound.up.settle()
    assert inbound.up.received == [], inbound.up.received[:1]
    assert inbound.served()


def test_h2_oversized_header_list_is_refused_and_never_forwarded(inbound):
    """A 100 KiB header list (beyond the advertised 64 KiB) in a few CONTINUATIONs: that stream is
    reset with RST_STREAM(INTERNAL_ERROR) (the header callback refuses the field that crosses the
    limit; nghttp2 resets with that code), counted once as `headers_too_large`, the upstream never
    sees it, and the connection serves the next stream."""
    before = rejected(inbound.admin)
    c = H2Conn(inbound)
    big = [(b"x-big-%d" % i, b"v" * 120) for i in range(800)]
    block = h2_headers_block(b"/oversized", big)
    chunks = [block[i:i + 16000] for i in range(0, len(block), 16000)]
    assert 1 < len(chunks) <= 8, len(chunks)     # within nghttp2's CONTINUATION limit: not a flood
    c.send(h2_frame(HEADERS, END_STREAM, 1, chunks[0]))
    for k, ch in enumerate(chunks[1:]):
        c.send(h2_frame(CONTINUATION, END_HEADERS if k == len(chunks) - 2 else 0, 1, ch))
    c.pump(lambda f: c.rst_code(1) is not None or c.status(1) is not None or goaway(f))
    assert c.rst_code(1) == INTERNAL_ERROR, c.frames
    assert c.status(1) is None and c.goaway_code() is None, c.frames
    c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 3, h2_headers_block(b"/after")))
    assert c.pump(lambda f: c.completed(3)), c.frames
    assert c.status(3) == b"\x88"
    c.close()
    inbound.up.settle()
    assert inbound.up.complete_requests_with(b"/after") == 1
    assert not inbound.up.saw(b"/oversized")
    after = rejected(inbound.admin)
    assert after.get("headers_too_large", 0) == before.get("headers_too_large", 0) + 1, (before, after)
    assert sum(after.values()) == sum(before.values()) + 1, (before, after)


@pytest.mark.parametrize("name,block", [
    ("string-length-overflow", b"\x82\x87\x00\x7f\xff\xff\xff\xff\x0fname"),
    ("table-size-update-too-big", b"\x3f\xe1\xff\x03\x82\x87"),
    ("index-out-of-range", b"\xff\xff\x7f"),
    ("bad-huffman-padding", b"\x82\x87\x00\x84\xff\xff\xff\xff\x01v"),
])
def test_h2_hpack_garbage_is_a_compression_error(inbound, name, block):
    before = rejected(inbound.admin)
    c = H2Conn(inbound)
    c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 1, block + hpack_literal(b":path", b"/hpack") + hpack_literal(b":authority", b"server")))
    c.pump(goaway)
    assert c.goaway_code() == COMPRESSION_ERROR, (name, c.frames)
    assert c.rst_code(1) is None, (name, c.frames)
    c.close()
    inbound.up.settle()
    assert not inbound.up.saw(b"/hpack")
    assert rejected(inbound.admin).get("h2_protocol_error", 0) == before.get("h2_protocol_error", 0) + 1
    assert inbound.served()


@pytest.mark.parametrize("name,fields", [
    ("te-chunked", [(b"transfer-encoding", b"chunked")]),
    ("connection", [(b"connection", b"keep-alive")]),
    ("crlf-in-value", [(b"x-inject", b"a\r\nTransfer-Encoding: chunked")]),
    ("lf-in-value", [(b"x-inject", b"a\nHost: evil")]),
    ("nul-in-value", [(b"x-inject", b"a\x00b")]),
    ("uppercase-name", [(b"X-Upper", b"v")]),
    ("colon-in-name", [(b"x:y", b"v")]),
    ("space-in-name", [(b"x y", b"v")]),
    ("pseudo-after-regular", [(b"x-a", b"v"), (b":foo", b"bar")]),
    ("unknown-pseudo", [(b":foo", b"bar")]),
])
def test_h2_malformed_request_is_reset_and_never_forwarded(inbound, name, fields):
    """Requests RFC 9113 §8.2 calls malformed, the classic HTTP/2-to-HTTP/1.1 downgrade smuggling
    vectors among them, are refused on their stream with RST_STREAM(PROTOCOL_ERROR) and counted as
    `h2_malformed`; the connection serves the next stream."""
    before = rejected(inbound.admin)
    c = H2Conn(inbound)
    block = b"\x82\x87" + hpack_literal(b":path", b"/malformed") + hpack_literal(b":authority", b"server")
    if name == "pseudo-after-regular" or name == "unknown-pseudo":
        block = b"\x82\x87" + hpack_literal(b":path", b"/malformed") + hpack_literal(b":authority", b"server")
    for n, v in fields:
        block += hpack_literal(n, v)
    c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    c.pump(lambda f: c.rst_code(1) is not None or c.status(1) is not None or goaway(f))
    assert c.rst_code(1) == PROTOCOL_ERROR, (name, c.frames)
    assert c.status(1) is None and c.goaway_code() is None, (name, c.frames)
    c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 3, h2_headers_block(b"/after")))
    assert c.pump(lambda f: c.completed(3)), c.frames
    assert c.status(3) == b"\x88"
    c.close()
    # The proxy answered a later stream through the upstream: had it forwarded the malformed one,
    # those bytes were sent first; once the upstream read all it was sent, it must not hold them.
    inbound.up.settle()
    assert inbound.up.complete_requests_with(b"/after") == 1
    assert not inbound.up.saw(b"/malformed")
    after = rejected(inbound.admin)
    assert after.get("h2_malformed", 0) == before.get("h2_malformed", 0) + 1, (before, after)
    assert sum(after.values()) == sum(before.values()) + 1, (before, after)


def test_h2_content_length_mismatch_never_completes_upstream(inbound):
    """H2.CL: content-length 0 with a body carrying a smuggled HTTP/1.1 request. The stream is
    reset with PROTOCOL_ERROR (the connection stays up), counted as `h2_malformed`, and the upstream
    sees neither a complete request nor the smuggled one."""
    before = rejected(inbound.admin)
    c = H2Conn(inbound)
    block = b"\x83\x87" + hpack_literal(b":path", b"/h2cl") + hpack_literal(b":authority", b"server") + hpack_literal(b"content-length", b"0")
    c.send(h2_frame(HEADERS, END_HEADERS, 1, block) + h2_frame(DATA, END_STREAM, 1, SMUGGLED))
    c.pump(lambda f: c.rst_code(1) is not None or goaway(f))
    assert c.rst_code(1) == PROTOCOL_ERROR, c.frames
    assert c.goaway_code() is None and c.status(1) is None, c.frames
    c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 3, h2_headers_block(b"/after")))
    assert c.pump(lambda f: c.completed(3)), c.frames
    c.close()
    inbound.up.settle()
    assert not inbound.up.saw(b"/smuggled")
    assert inbound.up.complete_requests_with(b"/h2cl") == 0
    after = rejected(inbound.admin)
    assert after.get("h2_malformed", 0) == before.get("h2_malformed", 0) + 1, (before, after)
    assert sum(after.values()) == sum(before.values()) + 1, (before, after)
    assert inbound.served()


def test_h2_frame_on_stream_zero_is_a_protocol_error(inbound):
    before = rejected(inbound.admin)
    c = H2Conn(inbound)
    c.send(h2_frame(DATA, 0, 0, b"x"))
    c.pump(goaway)
    assert c.goaway_code() == PROTOCOL_ERROR
    c.close()
    assert rejected(inbound.admin).get("h2_protocol_error", 0) == before.get("h2_protocol_error", 0) + 1
    assert inbound.up.received == []


def test_h2_zero_window_stall_is_bounded_and_ends_at_the_idle_timeout(procs, pki):
    """A client that opens no flow-control window and asks for 64 MiB: the proxy holds a bounded
    amount, keeps serving others, and after the stream idle timeout (3 s) ends the connection with
    GOAWAY(NO_ERROR) naming stream 1 as the last processed, counted as `stream_idle_timeout`."""
    app = procs.app("big")
    ib = Inbound(procs, pki, app_port=app)
    before = rejected(ib.admin)
    base = ib.rss_kb()
    c = H2Conn(ib, settings=struct.pack(">HI", 4, 0))   # SETTINGS_INITIAL_WINDOW_SIZE = 0
    c.send(h2_frame(HEADERS, END_STREAM | END_HEADERS, 1, h2_headers_block(b"/bytes/%d" % (64 << 20))))
    t0 = time.monotonic()
    c.pump(lambda f: c.status(1) is not None)
    assert c.status(1) == b"\x88"
    time.sleep(1.0)
    assert ib.rss_kb() - base < 16 * 1024
    assert ib.served(path="/")
    c.pump(goaway, timeout=10)
    took = time.monotonic() - t0
    assert c.goaway_code() == NO_ERROR, ("a stalled stream is held forever", c.frames[-3:])
    assert c.goaway_last_stream() == 1
    assert c.rst_code(1) is None
    assert 2.5 < took < 8, took
    c.pump(timeout=3)
    assert c.closed, "the connection ends after the GOAWAY"
    c.close()
    after = rejected(ib.admin)
    assert after.get("stream_idle_timeout", 0) == before.get("stream_idle_timeout", 0) + 1, (before, after)
    assert sum(after.values()) == sum(before.values()) + 1, (before, after)
    assert "no progress within the stream idle timeout" in ib.log()


# ----- TLS abuse on the inbound mTLS listener -----

def tls_failed(admin):
    _, body = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    m = re.search(r'^mesh_tls_handshakes_total\{result="failed"\} (\d+)$', body.decode(), re.M)
    return int(m.group(1))


def mtls_ok(pki, port):
    r = curl("-s", "-o", "-", "-w", " %{http_code}", "--cacert", f"{pki}/root-cert.pem", "--cert", f"{pki}/client/cert-chain.pem",
             "--key", f"{pki}/client/key.pem", "--resolve", f"server:{port}:127.0.0.1", f"https://server:{port}/ok", timeout=10)
    return r.stdout == b"upstream-ok 200"


@pytest.mark.parametrize("name,data", [
    ("garbage", os.urandom(512)),
    ("plaintext-http", b"GET / HTTP/1.1\r\nHost: server\r\n\r\n"),
    ("sslv2-hello", b"\x80\x2e\x01\x00\x02\x00\x15" + b"\x00" * 0x2c),
    ("record-too-long", b"\x16\x03\x01\xff\xff" + b"\x01" * 64),
])
def test_tls_garbage_instead_of_client_hello_is_dropped_and_counted(inbound, pki, name, data):
    before = tls_failed(inbound.admin)
    out, closed = exchange(inbound.port, data)
    assert closed, name
    assert b"HTTP/" not in out
    wait_until(lambda: tls_failed(inbound.admin) == before + 1, timeout=3, what="failed handshake counted")
    assert inbound.up.received == []
    assert mtls_ok(pki, inbound.port)


def test_tls_handshake_that_never_completes_is_closed(inbound, pki):
    """Half a ClientHello, then silence: the connection is closed at the header timeout (2 s)."""
    before = tls_failed(inbound.admin)
    s = socket.create_connection(("127.0.0.1", inbound.port), timeout=10)
    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    t0 = time.monotonic()
    assert s.recv(100) == b""
    took = time.monotonic() - t0
    s.close()
    assert 1.5 < took < 5, took
    wait_until(lambda: tls_failed(inbound.admin) == before + 1, timeout=3, what="stalled handshake counted")
    assert inbound.up.received == []


def test_tls_renegotiation_is_refused(inbound, pki):
    """TLS 1.2 client-initiated renegotiation (openssl s_client's `R` command) after a served
    request: the proxy answers with a no_renegotiation alert and the connection ends; the request
    sent after it never reaches the app. OpenSSL reports the refused renegotiation as a failed
    handshake, so it is counted in `mesh_tls_handshakes_total{result="failed"}`."""
    before = tls_failed(inbound.admin)
    script = (f"(sleep 0.7; printf 'GET /before HTTP/1.1\\r\\nHost: server\\r\\n\\r\\n'; sleep 0.7; printf 'R\\n'; sleep 1; "
              f"printf 'GET /after HTTP/1.1\\r\\nHost: server\\r\\n\\r\\n'; sleep 0.7) | "
              f"openssl s_client -connect 127.0.0.1:{inbound.port} -tls1_2 -cert {pki}/client/cert-chain.pem "
              f"-cert_chain {pki}/client/cert-chain.pem -key {pki}/client/key.pem -CAfile {pki}/root-cert.pem")
    r = subprocess.run(script, shell=True, capture_output=True, timeout=20)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert "upstream-ok" in out, out[-1500:]                # the connection worked before
    assert "RENEGOTIATING" in out and "no renegotiation" in out, out[-1500:]
    wait_until(lambda: tls_failed(inbound.admin) == before + 1, timeout=3, what="the refused renegotiation counted")
    assert "TLS handshake refused" in inbound.log()
    inbound.up.settle()
    assert inbound.up.complete_requests_with(b"/before") == 1
    assert not inbound.up.saw(b"/after")
    assert inbound.served()


def test_many_stalled_handshakes_do_not_keep_others_out(inbound, pki):
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", inbound.port), timeout=5)
        s.sendall(b"\x16\x03\x01")
        socks.append(s)
    assert mtls_ok(pki, inbound.port)
    for s in socks:
        s.close()


def test_connection_limit_closes_new_connections_and_keeps_serving(procs, pki):
    """`maxConnections` on a listener: with 20 connections held, the 21st is closed at once and
    counted (connection_limit); once some close, new ones are served again."""
    up = RecordingUpstream()
    port, admin = free_port(), free_port()
    cfg = client_config(pki, "front", port, admin, [up.port], tls="DISABLE").replace("concurrency: 2", "concurrency: 1")
    cfg = cfg.replace("    headerTimeout: 2s", "    headerTimeout: 2s\n    maxConnections: 20")
    p = procs.sidecar(cfg, "front")
    wait_ready(p, admin)
    held = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /held HTTP/1.1\r\nHost: server\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
        held.append(s)
    before = rejected(admin).get("connection_limit", 0)
    out, closed = exchange(port, b"GET /over HTTP/1.1\r\nHost: server\r\n\r\n")
    assert closed and out == b"", out[:200]
    assert rejected(admin).get("connection_limit", 0) == before + 1
    assert not up.saw(b"/over")
    assert "maxConnections" in p.log_path.read_text()
    for s in held[:5]:
        s.close()
    wait_until(lambda: stats(admin).get("downstream_connections_active", 99) <= 15, timeout=5, what="closed")
    r = curl("-s", "-o", "-", "-w", " %{http_code}", "-H", "Host: server", f"http://127.0.0.1:{port}/again", timeout=10)
    assert r.stdout == b"upstream-ok 200"
    for s in held[5:]:
        s.close()
    up.close()
