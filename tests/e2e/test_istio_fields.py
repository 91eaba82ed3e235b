"""Istio fields that used to be parsed and dropped, now acting in the data path (docs/istio-fields.md):
rewrite.authority, connectionPool.tcp.connectTimeout, connectionPool.http.idleTimeout,
connectionPool.http.maxRequestsPerConnection and retryOn: retriable-headers.

Topology: test client -> caller sidecar (outbound, static config with the VirtualService and
DestinationRule) -> mTLS hop -> server sidecar (inbound) -> a recording app in this process that
remembers the Host and path of every request. The mTLS hop is run as HTTP/1.1 (cluster protocol
HTTP1) and as HTTP/2 (the default), and the client speaks HTTP/1.1 or h2c, so each of the three
request paths (HTTP/1.1 -> HTTP/1.1, HTTP/1.1 -> HTTP/2, HTTP/2 -> HTTP/2) is exercised. The pool
settings act on the caller's connections to the server sidecar, so those are counted where they
arrive: the server sidecar's downstream connection counters."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import curl, free_port, http_get, stats, wait_ready, wait_until


class RecordingApp:
    """An HTTP/1.1 keep-alive app on 127.0.0.1 recording (host, path) per request. `/again/KEY`
    answers with `x-try-again: yes` to its first request per KEY and without it afterwards."""

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                with app.lock:
                    app.seen.append((self.headers.get("Host", ""), self.path))
                    first = sum(1 for _, p in app.seen if p == self.path) == 1
                body = b"ok\n"
                self.send_response(200)
                if self.path.startswith("/again/") and first:
                    self.send_header("x-try-again", "yes")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self, path):
        with self.lock:
            return [h for h, p in self.seen if p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app():
    a = RecordingApp()
    yield a
    a.close()


def server_sidecar(procs, pki, app_port):
    inbound, admin = free_port(), free_port()
    p = procs.sidecar(f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: server, namespace: default}}
spec:
  workload: {{service: server}}
  concurrency: 1
  admin: {{port: {admin}}}
  tls:
    certChain: {pki}/server/cert-chain.pem
    privateKey: {pki}/server/key.pem
    trustBundle: {pki}/root-cert.pem
  inbound:
    port: {inbound}
    appAddress: 127.0.0.1:{app_port}
    headerTimeout: 2s
""", f"server-{inbound}")
    wait_ready(p, admin)
    return inbound, admin


def caller_sidecar(procs, pki, endpoint, protocol, route_extra="", policy="", more_routes=""):
    """The caller: cluster `server` to `endpoint` over mTLS with `protocol` (HTTP1 or HTTP2), a
    VirtualService for host `server` (`route_extra` added to its first http route, `more_routes`
    after it) and a DestinationRule whose trafficPolicy adds `policy`."""
    outbound, admin = free_port(), free_port()
    p = procs.sidecar(f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: caller, namespace: default}}
spec:
  workload: {{service: client}}
  concurrency: 1
  admin: {{port: {admin}}}
  tls:
    certChain: {pki}/client/cert-chain.pem
    privateKey: {pki}/client/key.pem
    trustBundle: {pki}/root-cert.pem
  outbound:
    port: {outbound}
    headerTimeout: 2s
  clusters:
    - name: server
      tls: ISTIO_MUTUAL
      protocol: {protocol}
      subjectAltNames: [spiffe://cluster.local/ns/default/sa/server]
      endpoints: [127.0.0.1:{endpoint}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: server}}
spec:
  hosts: [server]
  http:
  - name: main
{route_extra}
    route:
    - destination: {{host: server}}
{more_routes}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: server}}
spec:
  host: server
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
{policy}
""", f"caller-{outbound}")
    wait_ready(p, admin)
    return outbound, admin


def get(outbound, path, client, headers=()):
    """One request through the caller (a new curl, so a new downstream connection each time);
    returns (status, lowercased response headers, seconds)."""
    args = ["-i", "-H", "Host: server", "-w", "\n%{time_total}"]
    if client == "h2c":
        args.append("--http2-prior-knowledge")
    for h in headers:
        args += ["-H", h]
    r = curl(*args, f"http://127.0.0.1:{outbound}{path}")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    head, _, rest = text.partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1])
    hdrs = {}
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, float(rest.rsplit("\n", 1)[1])


# (client protocol, mTLS hop protocol): the three request paths.
PATHS = [("h1", "HTTP1"), ("h1", "HTTP2"), ("h2c", "HTTP2")]
PATH_IDS = ["h1-to-h1", "h1-to-h2", "h2-to-h2"]


@pytest.mark.parametrize("client,hop", PATHS, ids=PATH_IDS)
def test_rewrite_authority_is_the_host_the_app_sees(procs, pki, app, client, hop):
    inbound, _ = server_sidecar(procs, pki, app.port)
    outbound, admin = caller_sidecar(procs, pki, inbound, hop, route_extra="""    match:
    - uri: {prefix: /moved}
    rewrite: {authority: reviews.internal:9080}""", more_routes="""  - name: kept
    route:
    - destination: {host: server}""")
    status, _, _ = get(outbound, "/moved/a", client)
    assert status == 200
    assert app.requests("/moved/a") == ["reviews.internal:9080"]
    # A route without the rewrite keeps the caller's Host.
    status, _, _ = get(outbound, "/other", client)
    assert status == 200
    assert app.requests("/other") == ["server"]
    # /config_dump shows the rewrite in force.
    routes = json.loads(http_get(f"http://127.0.0.1:{admin}/config_dump")[1])["bootstrap"]["virtual_service_routes"]
    assert [r.get("rewrite_authority") for r in routes] == ["reviews.internal:9080", None]


def blackhole():
    """A loopback listener that never accepts, its accept queue filled: connects to it hang in
    SYN_SENT (the kernel drops their SYNs) until the caller gives up."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(socket.timeout):
        probe.connect(("127.0.0.1", port))
    probe.close()
    return port, [lsock, *fillers]


@pytest.mark.parametrize("client,hop", PATHS, ids=PATH_IDS)
def test_connect_timeout_fires_at_the_configured_time(procs, pki, client, hop):
    port, socks = blackhole()
    try:
        outbound, admin = caller_sidecar(procs, pki, port, hop, route_extra="    retries: {attempts: 0}",
                                         policy="    connectionPool:\n      tcp: {connectTimeout: 400ms}")
        status, hdrs, took = get(outbound, "/", client)
        assert status == 503
        assert hdrs["x-mesh-response-flags"] == "UF"
        assert 0.35 <= took < 1.5, took        # the default is 5 s
        assert stats(admin)["upstream_connect_timeouts"] == 1
    finally:
        for s in socks:
            s.close()


def connections(admin):
    s = stats(admin)
    return s["downstream_connections_total"], s["downstream_connections_active"]


@pytest.mark.parametrize("client,hop", PATHS, ids=PATH_IDS)
def test_idle_timeout_closes_the_pooled_connection(procs, pki, app, client, hop):
    inbound, sadmin = server_sidecar(procs, pki, app.port)
    outbound, admin = caller_sidecar(procs, pki, inbound, hop,
                                     policy="    connectionPool:\n      http: {idleTimeout: 1500ms}")
    assert get(outbound, "/one", client)[0] == 200
    assert connections(sadmin) == (1, 1)
    t0 = time.monotonic()
    time.sleep(0.7)
    assert connections(sadmin) == (1, 1), "closed before the idle timeout"
    wait_until(lambda: connections(sadmin)[1] == 0, timeout=3, what="idle pooled connection closed")
    assert 1.0 <= time.monotonic() - t0 < 3.0, "not the configured 1.5 s (the default is 4 s)"
    assert stats(admin)["upstream_connections_active"] == 0
    # The next request needs a new connection.
    assert get(outbound, "/two", client)[0] == 200
    assert connections(sadmin) == (2, 1)


@pytest.mark.parametrize("client,hop", PATHS, ids=PATH_IDS)
def test_without_idle_timeout_the_connection_stays(procs, pki, app, client, hop):
    inbound, sadmin = server_sidecar(procs, pki, app.port)
    outbound, _ = caller_sidecar(procs, pki, inbound, hop)
    assert get(outbound, "/one", client)[0] == 200
    time.sleep(2.5)
    assert get(outbound, "/two", client)[0] == 200
    assert connections(sadmin) == (1, 1)


@pytest.mark.parametrize("client,hop", PATHS, ids=PATH_IDS)
def test_max_requests_per_connection_opens_a_new_connection_every_two(procs, pki, app, client, hop):
    inbound, sadmin = server_sidecar(procs, pki, app.port)
    outbound, admin = caller_sidecar(procs, pki, inbound, hop,
                                     policy="    connectionPool:\n      http: {maxRequestsPerConnection: 2}")
    totals = []
    for i in range(6):
        assert get(outbound, f"/r{i}", client)[0] == 200
        totals.append(connections(sadmin)[0])
    assert totals == [1, 1, 2, 2, 3, 3]
    assert stats(admin)["upstream_connections_total"] == 3


@pytest.mark.parametrize("client,hop", PATHS, ids=PATH_IDS)
def test_retriable_headers_retries_on_a_listed_response_header(procs, pki, app, client, hop):
    inbound, _ = server_sidecar(procs, pki, app.port)
    outbound, admin = caller_sidecar(procs, pki, inbound, hop,
                                     route_extra="    retries: {attempts: 2, retryOn: retriable-headers}")
    # Listed: the first answer (with x-try-again) is dropped and the request sent again.
    status, hdrs, _ = get(outbound, "/again/listed", client,
                          ["x-envoy-retriable-header-names: x-other, X-Try-Again"])
    assert status == 200
    assert "x-try-again" not in hdrs
    assert len(app.requests("/again/listed")) == 2
    assert stats(admin)["retries_on_status"] == 1
    # Not listed: the first answer goes to the client as it is.
    status, hdrs, _ = get(outbound, "/again/unlisted", client, ["x-envoy-retriable-header-names: x-other"])
    assert status == 200
    assert hdrs["x-try-again"] == "yes"
    assert len(app.requests("/again/unlisted")) == 1
    status, hdrs, _ = get(outbound, "/again/none", client)
    assert hdrs["x-try-again"] == "yes"
    assert len(app.requests("/again/none")) == 1
    assert stats(admin)["retries_on_status"] == 1
