"""The mesh enforced by transparent capture, across hosts (issue 16, DESIGN §10, docs/capture.md).

Six hosts (network namespaces on one bridge, tests/e2e/netns.py): meshd on M's bridge address;
A, a caller with no proxy setting at all, behind a sidecar under capture; B, an HTTP app
(reviews) under capture; R, a real redis-server (a TCP service, `cache`) under capture; G, a
gRPC (h2c) app behind a sidecar; C, a host with no sidecar. Each capturing host has the rules of
`meshctl capture apply` and its sidecar runs as uid/gid 1337 with `--capture`. The apps bind
every address (0.0.0.0), so only the capture rules keep host C away from them.

What it shows: the caller's plain calls by service name (HTTP/1.1 over IPv4 and IPv6, gRPC over
h2c, redis-cli over TCP) all arrive over mutual TLS (XFCC at the HTTP app, the caller's principal
in the destination's TCP metrics); host C's plaintext never reaches an app; a destination outside
the mesh passes through with ALLOW_ANY and is refused with REGISTRY_ONLY; a sidecar killed with
SIGKILL leaves the caller's connections refused at once (fail closed, never around the mesh)
until it is back."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from conftest import MESHCTL, MESHD, ROOT, SIDECAR, wait_until
from netns import Hosts

M, A, B, R, G, C = range(6)
API = 15012
TD = "spiffe://cluster.local/ns/default/sa"
# The apps' environment: nothing that could point them at a proxy.
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "grpc_proxy", "all_proxy")

GRPC_SERVER = textwrap.dedent("""
    import sys, time
    from concurrent import futures
    import grpc
    class H(grpc.GenericRpcHandler):
        def service(self, d):
            if d.method == "/test.Echo/Unary":
                def unary(req, ctx):
                    md = dict(ctx.invocation_metadata())
                    return req[::-1] + b"|" + md.get("x-forwarded-client-cert", "").encode()
                return grpc.unary_unary_rpc_method_handler(unary)
            return None
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    s.add_generic_rpc_handlers((H(),))
    s.add_insecure_port("0.0.0.0:50051")
    s.start()
    print("READY", flush=True)
    while True:
        time.sleep(3600)
""")

GRPC_CLIENT = textwrap.dedent("""
    import grpc, sys
    with grpc.insecure_channel("grpc-echo.default.svc.cluster.local:50051") as ch:
        print(ch.unary_unary("/test.Echo/Unary")(b"hello", timeout=10).decode())
""")


def app_env():
    return {k: v for k, v in os.environ.items() if k not in PROXY_VARS}


class CaptureMesh:
    """The six hosts with meshd, the apps and their sidecars, ready."""

    def __init__(self, h, tmp):
        self.h, self.tmp = h, tmp
        # Default routes, as every real host has: a VIP must be routable for connect() to reach
        # the OUTPUT chain where capture redirects it.
        for i in range(h.n):
            h.run(i, ["ip", "route", "add", "default", "dev", "eth0"], check=True)
            h.run(i, ["ip", "-6", "route", "add", "default", "dev", "eth0"], check=True)
        # The sidecar runs as uid 1337: its binary and the root certificate must be readable by
        # it, wherever the checkout lives.
        self.share = tempfile.mkdtemp(prefix="capture-share-")
        os.chmod(self.share, 0o755)
        self.sidecar_bin = os.path.join(self.share, "sidecar")
        shutil.copy2(SIDECAR, self.sidecar_bin)
        os.chmod(self.sidecar_bin, 0o755)
        self.state = tmp / "meshd-state"
        self.meshd = None
        self.start_meshd()
        self.root = os.path.join(self.share, "root-cert.pem")
        shutil.copy2(self.state / "root-cert.pem", self.root)
        os.chmod(self.root, 0o644)
        self.sidecars = {}
        # B: reviews (HTTP/1.1), R: cache (redis, TCP), G: grpc-echo (h2c, no capture), A: caller.
        h.popen(B, [sys.executable, ROOT / "tools" / "upstream.py", "--port", 9080, "--name", "reviews", "--bind", "0.0.0.0"], "app-reviews")
        h.popen(R, ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "",
                    "--appendonly", "no"], "app-redis")
        h.popen(G, [sys.executable, "-c", GRPC_SERVER], "app-grpc")
        for i in (A, B, R):
            r = h.run(i, [MESHCTL, "capture", "apply"])
            assert r.returncode == 0, r.stderr
        self.start_sidecar(B, "reviews", ["--app-port", 9080])
        self.start_sidecar(R, "cache", ["--app-port", 6379, "--app-protocol", "tcp"])
        self.start_sidecar(G, "grpc-echo", ["--app-port", 50051, "--app-protocol", "grpc"], capture=False)
        self.start_sidecar(A, "productpage", [])
        for svc in ("reviews", "cache", "grpc-echo"):
            wait_until(lambda: self.vips(svc), timeout=20, what=f"{svc} registered with its VIPs")

    def start_meshd(self, *extra):
        self.meshd = self.h.popen(M, [MESHD, "--state-dir", self.state, "--api-port", API, "--listen-address",
                                      self.h.addr4(M), *extra], "meshd")
        wait_until(lambda: self.meshd.poll() is None and self.ctl("status").returncode == 0, timeout=20,
                   what=f"meshd ready (log {self.meshd.log_path})")

    def stop_meshd(self):
        self.meshd.send_signal(signal.SIGTERM)
        self.meshd.wait(timeout=15)

    def ctl(self, *args):
        """meshctl in host M against meshd's admin port on loopback."""
        return self.h.run(M, [MESHCTL, "--meshd", "http://127.0.0.1:15014", "--admin-token-file",
                              self.state / "admin-token", *args])

    def vips(self, service):
        """The VIPs meshd gave `service` (from `meshctl get services`), [] before it registered."""
        for line in self.ctl("get", "services").stdout.splitlines():
            f = line.split("\t")
            if f[0] == f"{service}.default" and len(f) >= 5 and f[4] != "-":
                return f[4].split(",")
        return []

    def start_sidecar(self, i, service, extra, capture=True):
        token = self.ctl("token", "create", "--namespace", "default", "--service-account", service).stdout.strip()
        assert token, "no join token"
        argv = ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", self.sidecar_bin,
                "--meshd", f"{self.h.addr4(M)}:{API}", "--root-cert", self.root, "--token", token,
                "--service", service, "--advertise-address", self.h.addr4(i), "--concurrency", "1", *extra]
        if capture:
            argv.append("--capture")
        p = self.h.popen(i, argv, f"sidecar-{service}")
        wait_until(lambda: p.poll() is None and self.admin(i, "/ready")[0] == "200", timeout=30,
                   what=f"{service} sidecar ready (log {p.log_path})")
        self.sidecars[service] = (i, p, extra, capture)
        return p

    def admin(self, i, path):
        r = self.h.run(i, ["curl", "-s", "-w", "\n%{http_code}", "--max-time", "5", f"http://127.0.0.1:15000{path}"])
        body, _, code = r.stdout.rpartition("\n")
        return code, body

    def stats(self, i):
        _, body = self.admin(i, "/stats")
        return {k: int(v) for k, _, v in (l.partition(": ") for l in body.splitlines()) if v.isdigit()}

    def metric(self, i, name, **labels):
        """The sum of a Prometheus family's samples on host `i`'s sidecar whose labels include
        `labels`."""
        _, body = self.admin(i, "/stats/prometheus")
        total = 0
        for line in body.splitlines():
            if not line.startswith(name + "{"):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def app(self, i, args, timeout=30):
        """A command in host `i` as the app would run it: no proxy variable anywhere."""
        return subprocess.run(self.h.argv(i, args), capture_output=True, text=True, timeout=timeout, env=app_env())

    def curl(self, i, url, *extra):
        return self.app(i, ["curl", "-sS", "--max-time", "10", *extra, url])

    def close(self):
        for i in (A, B, R):
            self.h.run(i, [MESHCTL, "capture", "remove"])
        shutil.rmtree(self.share, ignore_errors=True)


@pytest.fixture(scope="module")
def cm(tmp_path_factory):
    why = Hosts.unavailable()
    if why:
        pytest.skip(why)
    if shutil.which("redis-server") is None or shutil.which("iptables") is None:
        pytest.skip("needs redis-server and iptables (installed by .ci/run)")
    tmp = tmp_path_factory.mktemp("capture")
    with Hosts(6, tmp) as h:
        mesh = None
        try:
            mesh = CaptureMesh(h, tmp)
            yield mesh
        finally:
            if mesh:
                mesh.close()


def echo(cm, i, url, *extra):
    """GET url from host `i` as a plain app: the upstream's /echo JSON (retried while the
    caller's sidecar has not yet got the service from meshd)."""
    out = {}

    def call():
        r = cm.curl(i, url, *extra)
        if r.returncode != 0:
            raise AssertionError(r.stderr)
        out.update(json.loads(r.stdout))
        return True
    wait_until(call, timeout=20, what=f"GET {url} from host {i}")
    return out


def test_http_by_service_name_arrives_over_mtls(cm):
    """An app with no proxy variable calls reviews by its FQDN: DNS (captured to the sidecar)
    gives the VIP, the connection is captured, routed to reviews and carried over mTLS; the app
    sees the caller's identity in XFCC, and the call from 127.0.0.6."""
    before = cm.stats(A).get("captured_connections_total", 0)
    e = echo(cm, A, "http://reviews.default.svc.cluster.local:9080/echo", "-4")
    assert e["name"] == "reviews"
    xfcc = e["headers"]["x-forwarded-client-cert"][0]
    assert f"By={TD}/reviews;" in xfcc and xfcc.endswith(f"URI={TD}/productpage"), xfcc
    assert e["peer"] == "127.0.0.6", e
    assert cm.stats(A)["captured_connections_total"] > before
    # The short name works too (the sidecar's own namespace), and so does the VIP itself.
    assert echo(cm, A, "http://reviews:9080/echo", "-4")["name"] == "reviews"
    vip4 = cm.vips("reviews")[0]
    assert echo(cm, A, f"http://{vip4}:9080/echo")["name"] == "reviews"


def test_http_over_ipv6(cm):
    """The same call over IPv6: the AAAA answer, ip6tables' redirect to the sidecar's [::1]
    listener (IP6T_SO_ORIGINAL_DST), mTLS to reviews."""
    e = echo(cm, A, "http://reviews.default.svc.cluster.local:9080/echo", "-6")
    assert e["name"] == "reviews"
    assert e["headers"]["x-forwarded-client-cert"][0].endswith(f"URI={TD}/productpage")
    vip6 = cm.vips("reviews")[1]
    assert ":" in vip6
    assert echo(cm, A, f"http://[{vip6}]:9080/echo")["name"] == "reviews"


def test_grpc_h2c_by_service_name(cm):
    """A grpcio client (its own DNS resolver, h2c) reaches the gRPC app by name over mTLS."""
    def call():
        r = cm.app(A, [sys.executable, "-c", GRPC_CLIENT])
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()
    out = wait_until(call, timeout=20, what="gRPC call by name")
    reply, _, xfcc = out.partition("|")
    assert reply == "olleh"
    assert xfcc.endswith(f"URI={TD}/productpage"), xfcc


def redis(cm, i, *args, host="cache.default.svc.cluster.local"):
    return cm.app(i, ["redis-cli", "-h", host, "-p", "6379", *args])


def test_redis_over_tcp_by_service_name(cm):
    """redis-cli by service name: opaque TCP captured, carried over mTLS to redis-server; the
    destination sidecar's TCP metrics name the caller's principal."""
    wait_until(lambda: redis(cm, A, "SET", "k", "captured").stdout.strip() == "OK", timeout=20, what="redis SET by name")
    assert redis(cm, A, "GET", "k").stdout.strip() == "captured"
    big = "x" * 100_000
    assert redis(cm, A, "SET", "big", big).stdout.strip() == "OK"
    assert redis(cm, A, "STRLEN", "big").stdout.strip() == "100000"
    opened = cm.metric(R, "istio_tcp_connections_opened_total", reporter="destination",
                       source_principal=f"{TD}/productpage")
    assert opened >= 4, opened
    received = cm.metric(R, "istio_tcp_received_bytes_total", reporter="destination", source_principal=f"{TD}/productpage")
    assert received > 100_000, received
    assert cm.metric(A, "istio_tcp_connections_opened_total", reporter="source", destination_service_name="cache") >= 4


def test_host_without_sidecar_never_reaches_the_apps(cm):
    """From host C (no sidecar) a plaintext connection to R's redis port or B's HTTP port is
    captured into their sidecars, which take only mTLS (STRICT): the apps never see it."""
    h = cm.h

    def connections():
        r = h.run(R, ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "INFO", "stats"])
        return int(next(l.split(":")[1] for l in r.stdout.splitlines() if l.startswith("total_connections_received")))
    before = connections()
    probe = textwrap.dedent(f"""
        import socket
        s = socket.create_connection(("{h.addr4(R)}", 6379), timeout=3)
        s.sendall(b"PING\\r\\n")
        try:
            print(repr(s.recv(100)))
        except OSError as e:
            print("error", e)
    """)
    r = h.run(C, [sys.executable, "-c", probe])
    assert "PONG" not in r.stdout, r.stdout
    probe_out = r.stdout + r.stderr
    r = h.run(C, ["curl", "-sS", "--max-time", "5", f"http://{h.addr4(B)}:9080/echo"])
    assert r.returncode != 0 and "reviews" not in r.stdout, r.stdout
    after = connections() - 1   # the INFO connection itself
    assert after == before, (before, after)
    # The refusals are the sidecars' TLS handshakes failing.
    assert cm.stats(R)["tls_handshakes_failed"] >= 1, (probe_out, cm.stats(R))
    assert cm.stats(B)["tls_handshakes_failed"] >= 1


def test_outside_the_mesh_passes_through_with_allow_any(cm):
    """A destination no service owns (an HTTP server on host C) is reached as it was addressed:
    passed through as TCP, counted as PassthroughCluster."""
    h = cm.h
    srv = h.popen(C, [sys.executable, ROOT / "tools" / "upstream.py", "--port", 8080, "--name", "outside", "--bind", "0.0.0.0"], "outside")
    wait_until(lambda: h.run(C, ["curl", "-s", "http://127.0.0.1:8080/"]).returncode == 0, what="outside server")
    e = echo(cm, A, f"http://{h.addr4(C)}:8080/echo")
    assert e["name"] == "outside" and "x-forwarded-client-cert" not in e["headers"]
    assert e["peer"] == h.addr4(A)
    assert cm.stats(A)["outbound_passthrough_connections_total"] >= 1
    assert cm.metric(A, "istio_tcp_connections_opened_total", destination_service="PassthroughCluster") >= 1, [l for l in cm.admin(A, "/stats/prometheus")[1].splitlines() if l.startswith("istio_tcp_connections_opened")]
    srv.kill()


def test_registry_only_refuses_outside_the_mesh(cm):
    """meshd with --outbound-traffic-policy REGISTRY_ONLY: the same call is refused and counted
    (BlackHoleCluster) while mesh calls go on; back to ALLOW_ANY afterwards."""
    h = cm.h
    srv = h.popen(C, [sys.executable, ROOT / "tools" / "upstream.py", "--port", 8081, "--name", "outside", "--bind", "0.0.0.0"], "outside2")
    wait_until(lambda: cm.curl(A, f"http://{h.addr4(C)}:8081/echo").returncode == 0, timeout=20, what="passthrough before")
    cm.stop_meshd()
    cm.start_meshd("--outbound-traffic-policy", "REGISTRY_ONLY")
    try:
        wait_until(lambda: cm.curl(A, f"http://{h.addr4(C)}:8081/echo").returncode != 0, timeout=30,
                   what="REGISTRY_ONLY pushed to the caller")
        assert cm.stats(A)["outbound_blackhole_connections_total"] >= 1
        assert cm.metric(A, "istio_tcp_connections_opened_total", destination_service="BlackHoleCluster") >= 1
        assert echo(cm, A, "http://reviews.default.svc.cluster.local:9080/echo", "-4")["name"] == "reviews"
    finally:
        cm.stop_meshd()
        cm.start_meshd()
        srv.kill()


def test_sidecar_killed_fails_closed_then_recovers(cm):
    """SIGKILL on the caller's sidecar: the rules stay, so the app's connections are refused at
    once (curl exit 7, well within a second: nothing hangs, nothing leaks around the mesh in
    plaintext); a sidecar started again takes over and calls work again."""
    i, p, extra, capture = cm.sidecars["productpage"]
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    t0 = time.monotonic()
    r = cm.curl(A, f"http://{cm.vips('reviews')[0]}:9080/echo")
    assert r.returncode == 7, (r.returncode, r.stderr)   # connection refused
    assert time.monotonic() - t0 < 3
    cm.start_sidecar(A, "productpage", extra, capture)
    assert echo(cm, A, "http://reviews.default.svc.cluster.local:9080/echo", "-4")["name"] == "reviews"


def test_inbound_capture_other_ports_follow_peer_authentication(cm):
    """A plaintext connection from host C to another port of B (a second server on 9090) is
    captured into B's sidecar too: refused in STRICT; with PeerAuthentication PERMISSIVE it is
    passed through to 127.0.0.1:9090 from 127.0.0.6 (Istio's inbound passthrough), and plaintext
    to the app's own port reaches the app the same way."""
    h = cm.h
    other = h.popen(B, [sys.executable, ROOT / "tools" / "upstream.py", "--port", 9090, "--name", "other", "--bind", "0.0.0.0"], "app-other")
    wait_until(lambda: h.run(B, ["curl", "-s", "http://127.0.0.1:9090/"]).returncode == 0, what="second server on B")
    url = f"http://{h.addr4(B)}:9090/echo"
    assert h.run(C, ["curl", "-sS", "--max-time", "5", url]).returncode != 0
    policy = cm.tmp / "permissive.yaml"
    policy.write_text(textwrap.dedent("""
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: reviews-permissive, namespace: default}
        spec:
          selector: {matchLabels: {app: reviews}}
          mtls: {mode: PERMISSIVE}
    """))
    assert cm.ctl("apply", "-f", policy).returncode == 0
    try:
        out = {}

        def plain_call(u):
            r = h.run(C, ["curl", "-sS", "--max-time", "5", u])
            if r.returncode != 0:
                raise AssertionError(r.stderr)
            out.update(json.loads(r.stdout))
            return True
        wait_until(lambda: plain_call(url), timeout=20, what="PERMISSIVE pushed to reviews")
        assert out["name"] == "other" and out["peer"] == "127.0.0.6", out
        plain_call(f"http://{h.addr4(B)}:9080/echo")
        assert out["name"] == "reviews" and out["peer"] == "127.0.0.6", out
        assert "x-forwarded-client-cert" not in out["headers"]
    finally:
        assert cm.ctl("delete", "-f", policy).returncode == 0
        other.kill()
    wait_until(lambda: h.run(C, ["curl", "-sS", "--max-time", "3", url]).returncode != 0, timeout=20, what="STRICT again")


def test_inbound_capture_port_level_mtls_on_a_passthrough_port(cm):
    """PeerAuthentication portLevelMtls on a port a captured connection is passed through to:
    the workload PERMISSIVE, port 9090 STRICT: plaintext from host C reaches the app's port 9080
    and is refused on 9090."""
    h = cm.h
    other = h.popen(B, [sys.executable, ROOT / "tools" / "upstream.py", "--port", 9090, "--name", "other", "--bind", "0.0.0.0"], "app-other")
    wait_until(lambda: h.run(B, ["curl", "-s", "http://127.0.0.1:9090/"]).returncode == 0, what="second server on B")
    policy = cm.tmp / "port-level.yaml"
    policy.write_text(textwrap.dedent("""
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: reviews-ports, namespace: default}
        spec:
          selector: {matchLabels: {app: reviews}}
          mtls: {mode: PERMISSIVE}
          portLevelMtls:
            9090: {mode: STRICT}
    """))
    assert cm.ctl("apply", "-f", policy).returncode == 0
    try:
        app_url, other_url = f"http://{h.addr4(B)}:9080/echo", f"http://{h.addr4(B)}:9090/echo"
        wait_until(lambda: h.run(C, ["curl", "-sS", "--max-time", "5", app_url]).returncode == 0, timeout=20,
                   what="PERMISSIVE pushed to reviews")
        assert h.run(C, ["curl", "-sS", "--max-time", "5", other_url]).returncode != 0, "9090 is STRICT"
    finally:
        assert cm.ctl("delete", "-f", policy).returncode == 0
        other.kill()


def test_inbound_capture_app_port_override_does_not_open_other_ports(cm):
    """Review fix 1: the workload STRICT with portLevelMtls {9080: DISABLE} (the app's port):
    plaintext from host C reaches the app's port 9080, and is still refused on port 9090, which
    has no entry of its own (the workload's STRICT, never the app port's DISABLE)."""
    h = cm.h
    other = h.popen(B, [sys.executable, ROOT / "tools" / "upstream.py", "--port", 9090, "--name", "other", "--bind", "0.0.0.0"], "app-other")
    wait_until(lambda: h.run(B, ["curl", "-s", "http://127.0.0.1:9090/"]).returncode == 0, what="second server on B")
    policy = cm.tmp / "app-port-disable.yaml"
    policy.write_text(textwrap.dedent("""
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: reviews-app-port, namespace: default}
        spec:
          selector: {matchLabels: {app: reviews}}
          mtls: {mode: STRICT}
          portLevelMtls:
            9080: {mode: DISABLE}
    """))
    assert cm.ctl("apply", "-f", policy).returncode == 0
    try:
        app_url, other_url = f"http://{h.addr4(B)}:9080/echo", f"http://{h.addr4(B)}:9090/echo"
        wait_until(lambda: h.run(C, ["curl", "-sS", "--max-time", "5", app_url]).returncode == 0, timeout=20,
                   what="DISABLE on the app port pushed to reviews")
        assert h.run(C, ["curl", "-sS", "--max-time", "5", other_url]).returncode != 0, "9090 stays STRICT"
    finally:
        assert cm.ctl("delete", "-f", policy).returncode == 0
        other.kill()


def test_authorization_judges_a_passthrough_connection_by_its_own_port(cm):
    """Review fix: a captured connection passed through to another port of the workload (9090)
    is judged by that port, not the app's: with PERMISSIVE and an ALLOW for port 9080 only, a
    plaintext caller on host C reaches the app on 9080 and is refused on 9090."""
    h = cm.h
    other = h.popen(B, [sys.executable, ROOT / "tools" / "upstream.py", "--port", 9090, "--name", "other", "--bind", "0.0.0.0"], "app-other")
    wait_until(lambda: h.run(B, ["curl", "-s", "http://127.0.0.1:9090/"]).returncode == 0, what="second server on B")
    policy = cm.tmp / "allow-app-port.yaml"
    policy.write_text(textwrap.dedent("""
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: reviews-permissive, namespace: default}
        spec:
          selector: {matchLabels: {app: reviews}}
          mtls: {mode: PERMISSIVE}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: reviews-app-port-only, namespace: default}
        spec:
          selector: {matchLabels: {app: reviews}}
          action: ALLOW
          rules:
          - to: [{operation: {ports: ["9080"]}}]
    """))
    assert cm.ctl("apply", "-f", policy).returncode == 0
    try:
        app_url, other_url = f"http://{h.addr4(B)}:9080/echo", f"http://{h.addr4(B)}:9090/echo"
        wait_until(lambda: h.run(C, ["curl", "-sS", "--max-time", "5", app_url]).returncode == 0, timeout=20,
                   what="PERMISSIVE and the policy pushed to reviews")
        assert h.run(C, ["curl", "-sS", "--max-time", "5", other_url]).returncode != 0, "9090 is not an allowed port"
    finally:
        assert cm.ctl("delete", "-f", policy).returncode == 0
        other.kill()


BANNER_SERVER = textwrap.dedent("""
    import socket, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 2525)); s.listen(16)
    def serve(c):
        c.sendall(b"220 banner ready\\r\\n")       # the server speaks first (SMTP-like)
        while True:
            b = c.recv(4096)
            if not b:
                break
            c.sendall(b"echo:" + b)
        c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
""")

BANNER_CLIENT = textwrap.dedent("""
    import socket, sys, time
    t0 = time.monotonic()
    c = socket.create_connection(("banner.example.com", 2525), timeout=5)
    if sys.argv[1] == "server-first":
        first = c.recv(100)                      # nothing sent: the banner must still arrive
        c.sendall(b"PING\\r\\n")
    else:
        c.sendall(b"HELO mesh\\r\\n")           # client first, not HTTP: TCP at once
        first = c.recv(100)
    rest = b""
    while b"echo:" not in first + rest:          # the echo may come in the same read as the banner
        rest += c.recv(100)
    print(repr(first), repr(rest), round(time.monotonic() - t0, 3), sep="\t")
""")


def test_undeclared_protocol_is_detected_from_the_first_bytes(cm):
    """ServiceEntry ports whose protocol is not declared (names `web`, `smtp`): a captured HTTP
    request is told from its request line and goes through the HTTP router (it gains an
    x-request-id); a server-first protocol sends nothing, so after the detection timeout it is
    carried as TCP and its banner arrives; a client-first non-HTTP protocol is TCP at once."""
    h = cm.h
    web = h.popen(C, [sys.executable, ROOT / "tools" / "upstream.py", "--port", 8090, "--name", "web", "--bind", "0.0.0.0"], "web")
    banner = h.popen(C, [sys.executable, "-c", BANNER_SERVER], "banner")
    entries = cm.tmp / "entries.yaml"
    entries.write_text(textwrap.dedent(f"""
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: web}}
        spec:
          hosts: [web.example.com]
          ports: [{{number: 8090, name: web}}]
          location: MESH_EXTERNAL
          endpoints: [{{address: {h.addr4(C)}}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: banner}}
        spec:
          hosts: [banner.example.com]
          ports: [{{number: 2525, name: smtp}}]
          location: MESH_EXTERNAL
          endpoints: [{{address: {h.addr4(C)}}}]
    """))
    r = cm.ctl("apply", "-f", entries)
    assert r.returncode == 0, r.stderr
    try:
        before = cm.stats(A)
        e = echo(cm, A, "http://web.example.com:8090/echo", "-4")
        assert e["name"] == "web" and e["peer"] == h.addr4(A)
        assert "x-request-id" in e["headers"], e["headers"]          # routed as HTTP, not passed as bytes
        assert cm.stats(A)["captured_connections_detected_http"] > before.get("captured_connections_detected_http", 0)
        for mode in ("server-first", "client-first"):
            def banner_call():
                p = cm.app(A, [sys.executable, "-c", BANNER_CLIENT, mode])
                if p.returncode != 0:
                    raise AssertionError(p.stderr.strip().splitlines()[-1:])
                return p.stdout.strip()
            r = wait_until(banner_call, timeout=20, what=f"{mode} TCP to banner.example.com")
            first, rest, took = r.split("\t")
            assert "220 banner ready" in first + rest, r
            if mode == "server-first":
                # Nothing from the client: TCP once the detection timeout (100 ms) passed.
                assert "220 banner ready" in first and "echo:PING" in rest and float(took) >= 0.09, r
            else:
                assert "echo:HELO mesh" in first + rest, r
        assert cm.stats(A)["captured_connections_detected_tcp"] >= before.get("captured_connections_detected_tcp", 0) + 2
    finally:
        cm.ctl("delete", "-f", entries)
        web.kill()
        banner.kill()
