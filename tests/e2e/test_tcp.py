"""Opaque TCP over the mTLS hop (issue 16, docs/tcp.md), mesh mode on 127.0.0.1: meshd, a
mesh-mode sidecar with `--app-protocol tcp` in front of a real `redis-server` (service `cache`,
service port 6379) or a raw Python server, and a caller sidecar reached with HTTP CONNECT on its
outbound listener (a Python client speaking RESP, and `redis-cli` through a socat PROXY bridge).
Shown: a 1 MB SET/GET round trip, half-close both ways, Istio's TCP metrics on both sidecars
with exact byte counts and the caller's principal, a weighted tcp route split between subsets,
AuthorizationPolicy by principal and by port (an ALLOW naming only HTTP fields never matching),
PERMISSIVE and STRICT on the TCP port, an upstream reset mid-stream resetting the caller
(counted UC), and connect retries past a dead endpoint."""

import hashlib
import math
import re
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import SIDECAR, Meshd, free_port, http_get, stats, wait_until

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("socat") is None,
                                reason="needs redis-server (Debian redis-server) and socat")

FQDN = "cache.default.svc.cluster.local"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
TCP_ARGS = ["--app-protocol", "tcp", "--service-port", "6379"]


# ---------- helpers ----------

def redis(procs, tag=""):
    """A real redis-server on a free port (no persistence); returns its port."""
    port = free_port()
    procs.start(["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", procs.tmp], f"redis-{tag}{port}")
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() or True,
               what=f"redis on {port}")
    return port


def cmd(*args) -> bytes:
    """A RESP request."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Reader:
    """Reads RESP replies from a socket; `raw` keeps every byte read (for byte counts)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.raw = b""

    def _more(self):
        b = self.sock.recv(1 << 16)
        if not b:
            raise EOFError("connection closed")
        self.buf += b
        self.raw += b

    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-", b":"):
            return line
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._more()
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v
        raise AssertionError(f"unexpected RESP reply {line[:80]!r}")


def connect(outbound, host=FQDN, port=6379, timeout=10):
    """CONNECT through the caller's outbound listener; returns the tunnel socket once the answer
    is 200, or raises AssertionError with the status line."""
    s = socket.create_connection(("127.0.0.1", outbound), timeout=timeout)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            s.close()
            raise AssertionError(f"CONNECT closed after {head!r}")
        head += b
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        s.close()
        raise AssertionError(f"CONNECT answered {head!r}")
    return s


def wait_connect(outbound, host=FQDN, port=6379, timeout=20):
    """Waits until the caller's pushed config carries the service (a CONNECT gets 200)."""
    def ok():
        connect(outbound, host, port, timeout=2).close()
        return True
    wait_until(ok, timeout, what=f"CONNECT {host}:{port} answered 200")


def scrape(admin):
    """[(name, labels, value)] from a sidecar's /stats/prometheus."""
    _, body = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    out = []
    for line in body.decode().splitlines():
        m = re.match(r'^([a-z_]+)\{(.*)\} (\S+)$', line)
        if m:
            labels = dict(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2)))
            out.append((m.group(1), labels, float(m.group(3))))
        else:
            m = re.match(r'^([a-z_]+) (\S+)$', line)
            if m:
                out.append((m.group(1), {}, float(m.group(2))))
    return out


def total(admin, name, **want):
    """The sum of a family's samples whose labels include `want`."""
    return sum(v for n, l, v in scrape(admin) if n == name and all(l.get(k) == w for k, w in want.items()))


def tcp_series(admin, name, **want):
    return [(l, v) for n, l, v in scrape(admin) if n == name and l.get("request_protocol") == "tcp"
            and all(l.get(k) == w for k, w in want.items())]


def settled(admin, **want):
    """Waits until every TCP connection counted opened is counted closed; returns the count."""
    def done():
        o = total(admin, "istio_tcp_connections_opened_total", request_protocol="tcp", **want)
        c = total(admin, "istio_tcp_connections_closed_total", request_protocol="tcp", **want)
        return (o,) if o == c else None
    return wait_until(done, 10, what=f"TCP connections closed on admin {admin}")[0]


def apply(m, tmp, name, text):
    f = tmp / f"{name}.yaml"
    f.write_text(text)
    r = m.ctl("apply", "-f", f, "--wait", check=False)
    assert r.returncode == 0, r.stderr + r.stdout
    return r


def cache_mesh(procs, n=1, versions=("v1", "v2")):
    """meshd, `n` cache workloads (redis + TCP sidecar, labelled version=v1, v2, ...) and a caller
    sidecar that reaches them. Returns (meshd, [(redis port, sidecar proc, admin, inbound)], caller admin, outbound)."""
    m = Meshd(procs)
    workloads = []
    for i in range(n):
        rp = redis(procs, versions[i])
        p, admin, inbound, _ = m.sidecar(f"cache-{versions[i]}", "cache", app_port=rp,
                                          extra=[*TCP_ARGS, "--label", f"version={versions[i]}"])
        workloads.append((rp, p, admin, inbound))
    _, cadmin, _, out = m.sidecar("client", "client")
    wait_connect(out)
    # The probe's connection has reached redis and ended on every sidecar before a test counts.
    wait_until(lambda: sum(settled(w[2]) for w in workloads) >= 1 and settled(cadmin) >= 1, 10, what="the probe settled")
    return m, workloads, cadmin, out


def redis_direct(port, *args):
    """One command straight to a redis-server (not through the mesh)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(cmd(*args))
        return Reader(s).reply()


def redis_connections(port):
    """How many connections this redis-server accepted (INFO stats), this one included."""
    info = redis_direct(port, "INFO", "stats").decode()
    return int(re.search(r"total_connections_received:(\d+)", info).group(1))


def reached_redis(port, before):
    """Whether a connection reached redis since `before` (redis_connections), not counting the
    INFO connection that asks."""
    return redis_connections(port) - before > 1


class RawServer:
    """A TCP app written here: `serve(conn, server)` runs in a thread per connection."""

    def __init__(self, serve):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.serve = serve
        self.results = []
        self.errors = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self.serve(c, self)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)
        finally:
            c.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def raw_servers():
    made = []
    yield lambda serve: made.append(RawServer(serve)) or made[-1]
    for s in made:
        s.close()


def read_all(s):
    out = b""
    while True:
        b = s.recv(1 << 16)
        if not b:
            return out
        out += b


# ---------- tests ----------

def test_redis_set_get_1mb_both_clients_and_exact_tcp_metrics(procs):
    """SET/GET of a 1 MB value through both sidecars (a Python RESP client over CONNECT, and
    redis-cli through a socat PROXY bridge); the TCP families on both sidecars count the
    connection and its exact bytes, the destination's with the caller's principal."""
    m, [(rp, _, dadmin, _)], cadmin, out = cache_mesh(procs)
    settled(cadmin)
    settled(dadmin)
    before = {a: {n: total(a, n, request_protocol="tcp") for n in ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total",
                                                                  "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total")}
              for a in (cadmin, dadmin)}
    value = bytes((i * 7 + 3) % 251 for i in range(1_000_000))
    s = connect(out)
    r = Reader(s)
    sent = cmd("SET", "big", value) + cmd("GET", "big")
    s.sendall(sent)
    assert r.reply() == b"+OK"
    assert r.reply() == value
    s.close()
    assert redis_direct(rp, "STRLEN", "big") == b":1000000", "the value reached the real redis-server"
    expect_received = len(sent)
    expect_sent = len(r.raw)
    assert expect_sent == 5 + len(b"$1000000\r\n") + 1_000_000 + 2
    for a in (cadmin, dadmin):
        settled(a)
        d = {n: total(a, n, request_protocol="tcp") - before[a][n] for n in before[a]}
        assert d == {"istio_tcp_sent_bytes_total": expect_sent, "istio_tcp_received_bytes_total": expect_received,
                     "istio_tcp_connections_opened_total": 1, "istio_tcp_connections_closed_total": 1}, (a, d)
    # Labels: the source reporter names the destination service; the destination's series carry
    # the caller's SPIFFE ID and mutual_tls.
    src = tcp_series(cadmin, "istio_tcp_received_bytes_total", reporter="source")
    assert src and all(l["destination_service"] == FQDN and l["destination_service_name"] == "cache"
                       and l["source_principal"] == CLIENT_ID for l, _ in src), src
    dst = tcp_series(dadmin, "istio_tcp_received_bytes_total", reporter="destination")
    assert dst and all(l["source_principal"] == CLIENT_ID and l["connection_security_policy"] == "mutual_tls"
                       and l["destination_principal"] == "spiffe://cluster.local/ns/default/sa/cache" for l, _ in dst), dst
    assert sum(v for _, v in dst) >= expect_received

    # redis-cli, unaware of any proxy, through socat's PROXY address (HTTP CONNECT).
    bridge = free_port()
    procs.start(["socat", f"TCP-LISTEN:{bridge},bind=127.0.0.1,reuseaddr,fork",
                 f"PROXY:127.0.0.1:{FQDN}:6379,proxyport={out}"], "socat")
    wait_until(lambda: socket.create_connection(("127.0.0.1", bridge), timeout=0.2).close() or True, what="socat")
    f = procs.tmp / "value.bin"
    f.write_bytes(value[:999_999] + b"Z")
    r = subprocess.run(["redis-cli", "-p", str(bridge), "-x", "SET", "big2"], stdin=open(f, "rb"), capture_output=True, timeout=30)
    assert r.stdout.strip() == b"OK", r
    r = subprocess.run(["redis-cli", "-p", str(bridge), "--no-raw", "STRLEN", "big2"], capture_output=True, timeout=30)
    assert r.stdout.strip() == b"(integer) 1000000", r
    r = subprocess.run(["redis-cli", "-p", str(bridge), "GET", "big2"], capture_output=True, timeout=30)
    assert r.stdout == value[:999_999] + b"Z\n", (len(r.stdout), r.stderr)


def test_half_close_each_way(procs, raw_servers):
    """A FIN from the caller reaches the app as a half-close while the reply still flows back;
    a FIN from the app reaches the caller while the caller's bytes still flow to the app."""
    def digest_after_eof(c, srv):
        # Answers only once the caller has shut down its write side.
        got = read_all(c)
        c.sendall(hashlib.sha256(got).hexdigest().encode() + b"\n" + b"r" * (1 << 20))

    def greet_then_read(c, srv):
        c.sendall(b"g" * (1 << 20))
        c.shutdown(socket.SHUT_WR)
        srv.results.append(read_all(c))

    m = Meshd(procs)
    a = raw_servers(digest_after_eof)
    b = raw_servers(greet_then_read)
    m.sidecar("sink", "sink", app_port=a.port, extra=["--app-protocol", "tcp", "--service-port", "7000"])
    m.sidecar("talker", "talker", app_port=b.port, extra=["--app-protocol", "tcp", "--service-port", "7001"])
    _, cadmin, _, out = m.sidecar("client", "client")
    wait_connect(out, "sink", 7000)
    wait_connect(out, "talker", 7001)
    # The probes closed with the greeting unread (a reset): only what follows counts.
    time.sleep(0.5)
    del b.results[:], b.errors[:], a.errors[:]

    payload = bytes(range(256)) * 4096   # 1 MiB
    s = connect(out, "sink", 7000)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    reply = read_all(s)
    s.close()
    assert reply == hashlib.sha256(payload).hexdigest().encode() + b"\n" + b"r" * (1 << 20), len(reply)

    s = connect(out, "talker", 7001)
    greeting = b""
    while len(greeting) < (1 << 20):
        chunk = s.recv(1 << 16)
        assert chunk, f"EOF after {len(greeting)} bytes of the greeting"
        greeting += chunk
    assert s.recv(1) == b"", "the app's FIN reached the caller"
    s.sendall(payload)          # the other direction is still open
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b""
    s.close()
    wait_until(lambda: b.results, 10, what="the app read to EOF")
    assert b.results == [payload] and not a.errors and not b.errors
    assert greeting == b"g" * (1 << 20)


def test_weighted_tcp_route_splits_between_subsets(procs, tmp_path):
    """A VirtualService tcp route 50/50 between subsets v1 and v2 (two redis-servers): N
    connections land on both within a binomial bound; 100/0 sends every one to v1."""
    m, wl, cadmin, out = cache_mesh(procs, n=2)
    for (rp, *_), v in zip(wl, ("v1", "v2")):
        redis_direct(rp, "SET", "whoami", v)
    dr = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cache}
spec:
  host: cache
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

    def vs(w1, w2):
        return dr + f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cache}}
spec:
  hosts: [cache]
  tcp:
  - match: [{{port: 6379}}]
    route:
    - destination: {{host: cache, subset: v1}}
      weight: {w1}
    - destination: {{host: cache, subset: v2}}
      weight: {w2}
"""

    def landings(n):
        counts = {"v1": 0, "v2": 0}
        for _ in range(n):
            s = connect(out)
            s.sendall(cmd("GET", "whoami"))
            counts[Reader(s).reply().decode()] += 1
            s.close()
        return counts

    apply(m, tmp_path, "split", vs(100, 0))
    assert landings(40) == {"v1": 40, "v2": 0}
    apply(m, tmp_path, "split", vs(50, 50))
    n = 200
    c = landings(n)
    bound = 4 * math.sqrt(n * 0.25)      # four standard deviations of Binomial(200, 0.5)
    assert abs(c["v1"] - n / 2) <= bound and c["v1"] + c["v2"] == n, c
    # The route's label is on the source reporter's series.
    routes = {l.get("route") for l, _ in tcp_series(cadmin, "istio_tcp_connections_opened_total", reporter="source")}
    assert any(r and "cache" in r for r in routes), routes


def test_authorization_policy_by_principal_and_port(procs, tmp_path):
    """DENY by the caller's principal and DENY by port refuse the connection before it reaches
    redis (counted RBAC); a DENY on another port or principal does not; an ALLOW naming only
    HTTP fields never matches a TCP connection (Istio), so it refuses every one."""
    m, [(rp, _, dadmin, _)], cadmin, out = cache_mesh(procs, n=1)
    _, _, _, out2 = m.sidecar("other", "other")
    wait_connect(out2)

    def reaches(outbound):
        before = redis_connections(rp)
        try:
            s = connect(outbound)
        except AssertionError:
            return False
        try:
            s.sendall(cmd("PING"))
            ok = Reader(s).reply() == b"+PONG"
        except (EOFError, ConnectionResetError):
            ok = False
        s.close()
        assert reached_redis(rp, before) == ok, "a refused connection never reaches the app"
        return ok

    policy = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: cache-policy}}
spec:
  selector: {{matchLabels: {{app: cache}}}}
  action: {action}
  rules:
  - {rule}
"""

    def use(action, rule):
        apply(m, tmp_path, "authz", policy.format(action=action, rule=rule))

    assert reaches(out) and reaches(out2)
    denied0 = total(dadmin, "istio_tcp_connections_closed_total", response_flags="RBAC")
    use("DENY", "from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]")
    assert not reaches(out) and reaches(out2)
    assert total(dadmin, "istio_tcp_connections_closed_total", response_flags="RBAC", source_principal=CLIENT_ID) == denied0 + 1
    # Ports are the workload's (target) port, redis's own (as in Istio), not the service port 6379.
    use("DENY", f"to: [{{operation: {{ports: ['{rp}']}}}}]")
    assert not reaches(out) and not reaches(out2)
    use("DENY", "to: [{operation: {ports: ['6379']}}]")
    assert reaches(out) and reaches(out2), "the service port is not the workload's port"
    use("DENY", f"to: [{{operation: {{notPorts: ['{rp}']}}}}]")
    assert reaches(out)
    use("ALLOW", f"to: [{{operation: {{methods: [GET], ports: ['{rp}']}}}}]")
    assert not reaches(out) and not reaches(out2), "an ALLOW with HTTP-only fields never matches TCP"
    use("ALLOW", f"from: [{{source: {{principals: [cluster.local/ns/default/sa/other]}}}}]\n    to: [{{operation: {{ports: ['{rp}']}}}}]")
    assert not reaches(out) and reaches(out2)
    assert stats(dadmin)["authz_denied"] >= 5


def test_permissive_accepts_plaintext_and_strict_refuses_it(procs, tmp_path):
    """PERMISSIVE on the TCP port: a plaintext client straight to the inbound listener and an
    mTLS caller both reach redis (a DENY of notPrincipals ["*"] refuses the plaintext one);
    STRICT: the plaintext one never reaches it, mTLS still does."""
    m, [(rp, _, dadmin, inbound)], cadmin, out = cache_mesh(procs, n=1)

    def plaintext():
        before = redis_connections(rp)
        s = socket.create_connection(("127.0.0.1", inbound), timeout=5)
        try:
            s.sendall(cmd("PING"))
            ok = Reader(s).reply() == b"+PONG"
        except (EOFError, ConnectionResetError):
            ok = False
        s.close()
        assert reached_redis(rp, before) == ok, "a refused plaintext connection never reaches the app"
        return ok

    def mtls():
        s = connect(out)
        s.sendall(cmd("PING"))
        ok = Reader(s).reply() == b"+PONG"
        s.close()
        return ok

    pa = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default}}
spec:
  mtls: {{mode: {mode}}}
"""
    assert not plaintext() and mtls(), "STRICT by default"
    apply(m, tmp_path, "pa", pa.format(mode="PERMISSIVE"))
    assert plaintext() and mtls()
    plain = tcp_series(dadmin, "istio_tcp_connections_opened_total", reporter="destination", connection_security_policy="none")
    assert plain and sum(v for _, v in plain) == 1, plain
    # Istio's "deny what is not mTLS" under PERMISSIVE: a plaintext caller has no principal, so
    # it is none of notPrincipals ["*"].
    apply(m, tmp_path, "require-mtls", """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls}
spec:
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ["*"]}}]
""")
    assert not plaintext() and mtls()
    m.ctl("delete", "-f", tmp_path / "require-mtls.yaml", "--wait")
    assert plaintext()
    apply(m, tmp_path, "pa", pa.format(mode="STRICT"))
    assert not plaintext() and mtls()


def test_upstream_reset_mid_stream_resets_the_caller_and_is_counted(procs, raw_servers):
    """An app that sends some bytes then resets (SO_LINGER 0): the caller gets those bytes, then
    a reset (not a clean end); both sidecars count the connection closed with flag UC."""
    def reset_after_bytes(c, srv):
        c.recv(100)
        c.sendall(b"partial-reply")
        time.sleep(0.3)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    m = Meshd(procs)
    srv = raw_servers(reset_after_bytes)
    _, dadmin, _, _ = m.sidecar("flaky", "flaky", app_port=srv.port, extra=["--app-protocol", "tcp", "--service-port", "7002"])
    _, cadmin, _, out = m.sidecar("client", "client")
    wait_connect(out, "flaky", 7002)
    settled(cadmin)
    settled(dadmin)
    uc = {a: total(a, "istio_tcp_connections_closed_total", request_protocol="tcp", response_flags="UC") for a in (cadmin, dadmin)}
    s = connect(out, "flaky", 7002)
    s.sendall(b"hello")
    got = b""
    with pytest.raises(ConnectionResetError):
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            got += b
    s.close()
    assert got == b"partial-reply"
    for a in (cadmin, dadmin):
        try:
            wait_until(lambda: total(a, "istio_tcp_connections_closed_total", request_protocol="tcp", response_flags="UC") == uc[a] + 1,
                       10, what=f"one UC close on admin {a}")
        except AssertionError:
            print([(n, l.get("reporter"), l.get("response_flags"), v) for n, l, v in scrape(a) if n.startswith("istio_tcp_conn")])
            raise


def test_connect_retry_reaches_the_second_endpoint(procs):
    """Two registered cache workloads; one is gone (sidecar and redis killed, still registered
    within meshd's grace): every connection still lands on the live one, the caller having
    retried the connect, and the failed attempts are counted."""
    m, wl, cadmin, out = cache_mesh(procs, n=2)
    (rp1, p1, _, inbound1), (rp2, *_ ) = wl
    redis_direct(rp2, "SET", "whoami", "v2")
    p1.kill()
    p1.wait(timeout=5)
    wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", inbound1)) != 0, what="dead endpoint refusing")
    assert len(m.ctl("get", "services").stdout.split(str(inbound1))) == 2, "the dead workload is still registered"
    for _ in range(20):
        s = connect(out)
        s.sendall(cmd("GET", "whoami"))
        assert Reader(s).reply() == b"v2"
        s.close()
    assert stats(cadmin)["upstream_connect_failures"] >= 1


def test_tcp_route_before_any_workload_then_registrations_and_a_meshd_restart(procs, tmp_path):
    """A tcp route applied before its service registered is accepted (meshd renders the
    cluster TCP); TCP workloads then register and are reached by it; an HTTP workload for the
    same service is refused naming the VirtualService; meshd's registry keeps the workloads'
    protocol and port, so a restarted meshd keeps the service TCP with the route in force."""
    m = Meshd(procs)
    r = apply(m, tmp_path, "route", """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cache}
spec:
  hosts: [cache]
  tcp:
  - match: [{port: 6379}]
    route:
    - destination: {host: cache, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cache}
spec:
  host: cache
  subsets:
  - {name: v1, labels: {version: v1}}
""")
    assert "created" in r.stdout, r.stdout
    # The caller already has the route; with no endpoint yet, a CONNECT gets 503 UH.
    _, cadmin, _, out = m.sidecar("client", "client")

    def no_endpoint():
        try:
            connect(out, timeout=2).close()
        except AssertionError as e:
            return "503" in str(e) and "x-mesh-response-flags: UH" in str(e)
        return False
    wait_until(no_endpoint, 10, what="503 UH before any cache workload")
    # An HTTP workload for cache is refused by name (the sidecar logs why and keeps retrying).
    http_app = procs.app("cache-http")
    p = procs.start([SIDECAR, "--meshd", f"127.0.0.1:{m.api}", "--root-cert", m.root, "--token", m.token("cache"),
                     "--service", "cache", "--app-port", http_app, "--admin-port", free_port(),
                     "--inbound-port", free_port(), "--outbound-port", free_port(), "--label", "version=v1"], "cache-http")
    wait_until(lambda: "protocol HTTP conflicts with VirtualService default/cache" in p.log_path.read_text(), 20, what="the refusal")
    assert "registration refused (409)" in p.log_path.read_text()
    p.kill()
    p.wait(timeout=5)
    services = m.ctl("get", "services").stdout.strip().splitlines()
    assert services and all("\tno workload\t" in l for l in services), f"nothing registered (only VIPs): {services}"

    rp = redis(procs, "v1")
    redis_direct(rp, "SET", "whoami", "v1")
    _, dadmin, inbound, _ = m.sidecar("cache-v1", "cache", app_port=rp, extra=[*TCP_ARGS, "--label", "version=v1"])
    wait_connect(out)
    s = connect(out)
    s.sendall(cmd("GET", "whoami"))
    assert Reader(s).reply() == b"v1"
    s.close()

    lines = (m.state / "registry.txt").read_text().splitlines()
    assert [l.split("\t")[4:] for l in lines] == [[f"127.0.0.1:{inbound}", "TCP", "6379"]], lines

    m.stop()
    m.start()
    assert "dropped" not in m.proc.log_path.read_text()
    assert (m.state / "registry.txt").read_text().splitlines() == lines
    # The route still in force and the service still TCP: a new connection is carried.
    time.sleep(0.5)
    s = connect(out)
    s.sendall(cmd("GET", "whoami"))
    assert Reader(s).reply() == b"v1"
    s.close()
    assert "cache" in m.ctl("get", "routes").stdout


def test_meshctl_run_with_app_protocol_tcp(procs):
    """`meshctl run --app-protocol tcp -- redis-server ...`: the TCP service registered by meshctl
    run's sidecar is reached over mTLS with CONNECT on the service (app) port."""
    from conftest import MESHCTL
    m = Meshd(procs)
    env = {"MESHD": f"http://127.0.0.1:{m.admin}", "MESH_ADMIN_TOKEN_FILE": str(m.state / "admin-token")}
    port = free_port()
    procs.start([MESHCTL, "run", "--service", "cache", "--app-port", port, "--app-protocol", "tcp", "--",
                 "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", procs.tmp],
                "cache-run", env=env)
    wait_until(lambda: "cache.default" in m.ctl("get", "services").stdout, timeout=30, what="cache registered")
    assert "\tTCP\t%d" % port in (m.state / "registry.txt").read_text()
    _, _, _, out = m.sidecar("client", "client")
    wait_connect(out, FQDN, port)
    s = connect(out, FQDN, port)
    s.sendall(cmd("SET", "k", "v") + cmd("GET", "k"))
    r = Reader(s)
    assert r.reply() == b"+OK" and r.reply() == b"v"
    s.close()
    # An HTTP request to it is not carried (404 NR): it is a TCP service.
    s = socket.create_connection(("127.0.0.1", out), timeout=5)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {FQDN}:{port}\r\n\r\n".encode())
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 404") and b"NR" in head, head
