"""The sidecar's status port (`--status-port`) against hostile clients: every pod in the cluster
may reach it in plaintext, so no client may grow the sidecar's memory, hold its connections for
ever or starve the kubelet's `/ready`. Real meshd, a real sidecar bound on 0.0.0.0, real sockets
(clients from several loopback addresses, 127.0.0.X, by binding before connect); the sidecar's
memory read from /proc/PID/status."""

import http.client
import select
import socket
import threading
import time

from conftest import Meshd, free_port, wait_until

PROM = b"GET /stats/prometheus HTTP/1.1\r\nhost: status\r\n\r\n"


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def status_get(port, path, method="GET", headers=None, timeout=5.0, source="127.0.0.1"):
    """(status, body, seconds) of one request on a fresh connection to 127.0.0.1:port from
    `source`."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace"), time.monotonic() - t0
    finally:
        c.close()


def server_side_established(status_port, client_port):
    """Whether the sidecar's end of the connection from `client_port` is still ESTABLISHED
    (after the sidecar closes it, it is FIN_WAIT1 behind unread data, or gone after a reset)."""
    want_local, want_remote = f":{status_port:04X}", f":{client_port:04X}"
    for row in open("/proc/net/tcp").read().splitlines()[1:]:
        f = row.split()
        if f[1].endswith(want_local) and f[2].endswith(want_remote) and f[3] == "01":
            return True
    return False


def read_answers(sock, count, timeout=30.0):
    """Reads `count` complete HTTP/1.1 answers (content-length bodies); returns their statuses."""
    sock.settimeout(timeout)
    buf, statuses = b"", []
    while len(statuses) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode()
            length = int(next(l.split(":", 1)[1] for l in head.split("\r\n") if l.lower().startswith("content-length:")))
            if len(buf) >= end + 4 + length:
                statuses.append(int(head.split(" ", 2)[1]))
                buf = buf[end + 4 + length:]
                continue
        chunk = sock.recv(1 << 20)
        assert chunk, f"end of stream after {len(statuses)} of {count} answers"
        buf += chunk
    assert buf == b"", buf[:200]
    return statuses


def connect_from(source, port):
    """A connection to 127.0.0.1:port from the address `source` (bound before connect)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def ended_at_once(conns, want, seconds=3.0):
    """Indexes of `conns` the sidecar ended (end of stream or reset, no byte) within `seconds`,
    waiting no longer once `want` have ended."""
    ended = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(ended) < want:
        r, _, _ = select.select([c for i, c in enumerate(conns) if i not in ended], [], [], 0.2)
        for c in r:
            try:
                data = c.recv(1)
            except ConnectionResetError:
                data = b""
            assert data == b"", data
            ended.add(conns.index(c))
    return ended


def served(conns):
    """Each of `conns` answers a kept-alive `GET /healthz` with 200."""
    for c in conns:
        c.sendall(b"GET /healthz HTTP/1.1\r\nhost: status\r\n\r\n")
    for c in conns:
        assert read_answers(c, 1, timeout=5) == [200]


def refused(port, source):
    """Whether a fresh request from `source` ends without an answer."""
    try:
        status_get(port, "/ready", source=source)
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        return True
    return False


def start_sidecar(procs):
    m = Meshd(procs)
    status_port = free_port()
    p, admin, _, _ = m.sidecar("reviews-sidecar", "reviews", extra=["--status-port", status_port, "--listen-address", "0.0.0.0",
                                                                    "--advertise-address", "127.0.0.1"])
    wait_until(lambda: status_get(status_port, "/ready")[0] == 200, what="status port ready")
    return p, status_port


def test_clients_that_never_read_are_bounded_and_closed(procs):
    """One client pipelines thousands of `GET /stats/prometheus` and reads nothing: the sidecar
    stops answering (and reading) once its answers wait unwritten, so its RSS stays within
    20 MB of where it was, and `/ready` from another client still answers at once. Another
    client sends one such request every 0.2 s and reads nothing either: its answers do not
    extend the 30 s idle deadline once they wait unread. Both are closed by the sidecar within
    the deadline and the time the kernel's small buffers take to fill."""
    p, status_port = start_sidecar(procs)
    size = len(status_get(status_port, "/stats/prometheus")[1])
    assert size > 2000, size
    for _ in range(20):
        assert status_get(status_port, "/stats/prometheus")[0] == 200
    time.sleep(0.5)
    before = rss_kib(p.pid)

    t0 = time.monotonic()
    flood = socket.create_connection(("127.0.0.1", status_port))
    flood.setblocking(False)
    slow = socket.create_connection(("127.0.0.1", status_port))
    slow.setblocking(False)
    stop = threading.Event()
    slow_sent = [0]

    def slow_sender():
        # One request every 0.2 s, nothing read; a send the kernel refuses is simply not made.
        while not stop.is_set():
            try:
                slow_sent[0] += slow.send(PROM) // len(PROM)
            except BlockingIOError:
                pass
            except OSError:
                return
            stop.wait(0.2)
    sender = threading.Thread(target=slow_sender)
    sender.start()
    try:
        # The flood: up to 20,000 pipelined requests, until the sidecar stops taking them for 2 s.
        batch = PROM * 200
        sent, pending = 0, b""
        while sent < 20000 * len(PROM):
            if not pending:
                pending = batch
            _, w, _ = select.select([], [flood], [], 2.0)
            if not w:
                break
            n = flood.send(pending)
            sent += n
            pending = pending[n:]
        requests = sent // len(PROM)
        assert requests >= 1000, requests
        # While the sidecar is flooded: its memory stays put, /ready answers at once.
        peak, readies = before, []
        for _ in range(15):
            peak = max(peak, rss_kib(p.pid))
            readies.append(status_get(status_port, "/ready"))
            time.sleep(0.2)
        assert peak - before < 20 * 1024, f"RSS grew from {before} to {peak} KiB after {requests} pipelined requests"
        for st, body, secs in readies:
            assert (st, body) == (200, "LIVE\n") and secs < 0.5, (st, body, secs)
        assert p.poll() is None

        # A client that pipelines 2,000 and reads only after a pause gets every answer (answering
        # resumed as it read), and its connection goes on.
        late = socket.create_connection(("127.0.0.1", status_port))
        writer = threading.Thread(target=late.sendall, args=(PROM * 2000,))
        writer.start()
        time.sleep(1)
        assert read_answers(late, 2000) == [200] * 2000
        writer.join()
        late.sendall(b"GET /ready HTTP/1.1\r\nhost: status\r\n\r\n")
        assert read_answers(late, 1) == [200]
        late.close()
        assert rss_kib(p.pid) - before < 20 * 1024

        # Both are closed by the sidecar, the slow one although it keeps sending.
        flood_port, slow_port = flood.getsockname()[1], slow.getsockname()[1]
        wait_until(lambda: not server_side_established(status_port, flood_port), timeout=40,
                   what="the flooding client closed by the sidecar")
        flood_closed = time.monotonic() - t0
        assert 28 < flood_closed < 36, flood_closed
        wait_until(lambda: not server_side_established(status_port, slow_port), timeout=max(1, 50 - (time.monotonic() - t0)),
                   what="the slow client closed by the sidecar")
        assert slow_sent[0] >= 100, slow_sent[0]
        assert rss_kib(p.pid) - before < 20 * 1024
        assert status_get(status_port, "/ready")[:2] == (200, "LIVE\n")
    finally:
        stop.set()
        sender.join()
        flood.close()
        slow.close()


def test_connection_limit(procs):
    """200 concurrent connections, 8 from each of 25 addresses (127.0.0.10 to 127.0.0.34, the
    per-address limit never passed): the first 64 are kept, the other 136 closed at accept (end of
    stream at once), counted in one log line; a fresh connection from another address is refused
    while the 64 stay, and answered once they are gone."""
    p, status_port = start_sidecar(procs)
    conns = []
    try:
        for i in range(200):
            conns.append(connect_from(f"127.0.0.{10 + i // 8}", status_port))
        ended = ended_at_once(conns, 136)
        assert len(ended) == 136, len(ended)
        assert ended == set(range(64, 200)), sorted(set(range(64, 200)) - ended)[:10]
        # The 64 kept ones are served.
        served(conns[:64])
        # A fresh one is refused while they stay.
        assert refused(status_port, "127.0.0.1")
    finally:
        for c in conns:
            c.close()
    wait_until(lambda: status_get(status_port, "/ready")[:2] == (200, "LIVE\n"), timeout=5, what="/ready after the 64 left")
    log = p.log_path.read_text()
    lines = [l for l in log.splitlines() if "status: connection refused: 64 status-port connections are open, the limit" in l]
    assert len(lines) == 1 and "(1 refused since start" in lines[0], lines
    assert "the limit per address" not in log, log
    assert p.poll() is None


def test_connection_limit_per_address(procs):
    """One address (127.0.0.2) opens 20 connections: exactly 8 are kept (and served), the other
    12 closed at accept, counted in one log line naming the address; meanwhile 127.0.0.3 (the
    kubelet, say) and 127.0.0.1 are answered at once, and a 21st from 127.0.0.2 is refused. Once
    the 8 close, 127.0.0.2 may open 8 again."""
    p, status_port = start_sidecar(procs)
    hog = []
    try:
        for _ in range(20):
            hog.append(connect_from("127.0.0.2", status_port))
        ended = ended_at_once(hog, 12)
        assert ended == set(range(8, 20)), sorted(ended)
        served(hog[:8])
        # Nothing more ends: the 8 are held.
        assert ended_at_once(hog[:8], 1, seconds=1.0) == set()
        for source in ("127.0.0.3", "127.0.0.1"):
            st, body, secs = status_get(status_port, "/ready", source=source)
            assert (st, body) == (200, "LIVE\n") and secs < 0.5, (source, st, body, secs)
        assert refused(status_port, "127.0.0.2")
        served(hog[:8])
    finally:
        for c in hog:
            c.close()

    # The 8 closed: 127.0.0.2 gets its slots back (8 at once, each served).
    def reopened():
        conns = [connect_from("127.0.0.2", status_port) for _ in range(8)]
        try:
            served(conns)
            return True
        finally:
            for c in conns:
                c.close()
    wait_until(reopened, timeout=5, what="8 connections from 127.0.0.2 after the first 8 closed")
    log = p.log_path.read_text()
    lines = [l for l in log.splitlines() if "status: connection refused: 8 status-port connections are open from 127.0.0.2, "
             "the limit per address" in l]
    assert len(lines) == 1 and "(1 refused since start" in lines[0], lines
    assert "status-port connections are open, the limit" not in log, log
    assert p.poll() is None


def test_request_head_limit(procs):
    """A request head over 8 KiB gets 431 and the connection ends (a 9 KiB one and one of 60 KiB,
    under the proxy's 64 KiB); a 7 KiB one is answered."""
    p, status_port = start_sidecar(procs)
    st, body, _ = status_get(status_port, "/ready", headers={"x-pad": "a" * 7 * 1024})
    assert (st, body) == (200, "LIVE\n")
    for size in (9 * 1024, 60 * 1024):
        s = socket.create_connection(("127.0.0.1", status_port), timeout=5)
        try:
            s.sendall(b"GET /ready HTTP/1.1\r\nhost: status\r\nx-pad: " + b"a" * size + b"\r\n\r\n")
            got = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                got += chunk
        finally:
            s.close()
        assert got.startswith(b"HTTP/1.1 431 "), (size, got[:200])
        assert b"header section too large" in got and got.count(b"HTTP/1.1") == 1, (size, got)
    assert status_get(status_port, "/ready")[:2] == (200, "LIVE\n")
    assert p.poll() is None
