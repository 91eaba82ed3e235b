"""The protocol matrix: one request exchange for every protocol path, through both sidecars.

    client app -> client sidecar (outbound) -> mTLS hop -> server sidecar (inbound) -> app

Cells: {HTTP/1.1 app, h2c app, gRPC app} x {HTTP/1.1 hop, HTTP/2 hop}. The client app is curl
(`--http1.1`, or `--http2-prior-knowledge` for h2c) or a `grpcio` channel; the server app is the
same protocol (matrix_apps.py; the server sidecar's `inbound.appProtocol` HTTP1, HTTP2 or GRPC).
The hop is the client sidecar's cluster `protocol` (HTTP1 or HTTP2).

Each cell asserts the same seven behaviours, each reported by number and name; a cell fails if
any of them fails, and its message lists all of them, ok or what went wrong. Before them, a hop
check: the exchange reached a server sidecar over the hop the cell names (on the HTTP/2 hop it
counted an HTTP/2 connection, on the HTTP/1.1 hop none).

1. route match and split: requests with `x-matrix-lane: canary` all land on subset v2; the
   default route splits 50/50 between v1 and v2 and both are seen;
2. a retry on a failure: the app fails the first attempt (HTTP 503; gRPC UNAVAILABLE,
   grpc-status 14, in a 200 response, since a gRPC server does not answer HTTP 503; the route
   retries on Istio's gRPC condition `unavailable`) and the client gets 200 (gRPC OK) after
   exactly 2 attempts reached the app;
3. a fault abort at 100%: the client gets the configured status 418 with the flag FI (gRPC: the
   proxy sends HTTP 418, which gRPC maps to UNKNOWN, naming the HTTP status) and the app saw
   nothing;
4. an AuthorizationPolicy DENY on the server sidecars: 403 (gRPC: the proxy sends HTTP 403,
   which gRPC maps to PERMISSION_DENIED), counted by the server sidecar, and the app saw nothing;
5. x-forwarded-client-cert at the app: one, with `URI=` the client sidecar's SPIFFE ID and
   `By=` the server sidecar's;
6. the access-log line of the exchange (matched by its x-request-id) on both sidecars: direction,
   response_code 200, route (the VirtualService route on the client, `inbound` on the server);
7. `istio_requests_total` incremented by one on both reporters: `reporter="source"` on the
   client sidecar, `reporter="destination"` on the server sidecar that served, with the same
   labels apart from `reporter` and the two labels that name the reporting side: `route` (the
   client's route label; `inbound`) and `connection_security_policy` (Istio: `unknown` from the
   source, `mutual_tls` at the destination).

One mesh per hop (module-scoped): a client sidecar with a cluster per app protocol, and per app
protocol two server sidecars (versions v1 and v2), each in front of its own app."""

import contextlib
import json
import re
import subprocess
import time
import uuid

import grpc
import pytest

from conftest import Procs, free_port, http_get, stats, wait_ready
from matrix_apps import APPS, GRPC_SERVICE, Recorder

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
KINDS = ("http1", "h2c", "grpc")
HOPS = {"HTTP1": "http1-hop", "HTTP2": "http2-hop"}
APP_PROTOCOL = {"http1": "HTTP1", "h2c": "HTTP2", "grpc": "GRPC"}
FAULT_STATUS = 418
LANE = ("x-matrix-lane", "canary")
SPLIT_REQUESTS = 20       # per half of behaviour 1; all on one side of a 50/50 split: 2 in a million


def service(kind):
    """The service (cluster, VirtualService host, server workload) of an app protocol."""
    return f"{kind}-app"


def prefixes(kind):
    """(retry prefix, fault prefix, denied path) of requests to this app protocol."""
    if kind == "grpc":
        return GRPC_SERVICE + "Retry", GRPC_SERVICE + "Fault", GRPC_SERVICE + "Denied"
    return "/retry/", "/fault/", "/denied/"


def tls_block(pki, name):
    return f"""  tls:
    certChain: {pki}/{name}/cert-chain.pem
    privateKey: {pki}/{name}/key.pem
    trustBundle: {pki}/root-cert.pem"""


DENY_POLICY = f"""---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-denied}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/denied/*", "{GRPC_SERVICE}Denied"]}}}}]
"""


def server_sidecar_config(pki, kind, version, inbound, admin, app_port, log):
    return f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: {service(kind)}-{version}, namespace: default}}
spec:
  workload: {{service: {service(kind)}, serviceAccount: server, labels: {{version: {version}}}}}
  concurrency: 1
  admin: {{port: {admin}}}
  accessLog: {{path: {log}}}
{tls_block(pki, "server")}
  inbound:
    port: {inbound}
    appAddress: 127.0.0.1:{app_port}
    appProtocol: {APP_PROTOCOL[kind]}
    headerTimeout: 2s
{DENY_POLICY}"""


def traffic_documents(kind):
    svc = service(kind)
    retry, fault, _ = prefixes(kind)
    retry_on = "unavailable" if kind == "grpc" else "5xx"
    return f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {svc}}}
spec:
  hosts: [{svc}]
  http:
  - name: lane
    match:
    - headers:
        {LANE[0]}: {{exact: {LANE[1]}}}
    route:
    - destination: {{host: {svc}, subset: v2}}
  - name: retry
    match:
    - uri: {{prefix: {retry}}}
    retries: {{attempts: 2, retryOn: {retry_on}}}
    route:
    - destination: {{host: {svc}}}
  - name: fault
    match:
    - uri: {{prefix: {fault}}}
    fault:
      abort: {{httpStatus: {FAULT_STATUS}, percentage: {{value: 100}}}}
    route:
    - destination: {{host: {svc}}}
  - name: split
    route:
    - destination: {{host: {svc}, subset: v1}}
      weight: 50
    - destination: {{host: {svc}, subset: v2}}
      weight: 50
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {svc}}}
spec:
  host: {svc}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
"""


def client_sidecar_config(pki, hop, outbound, admin, inbounds, log):
    """`inbounds`: {kind: {version: inbound port}}."""
    clusters = ""
    for kind in KINDS:
        eps = "".join(f"        - address: 127.0.0.1:{inbounds[kind][v]}\n          labels: {{version: {v}}}\n"
                      for v in ("v1", "v2"))
        clusters += f"""    - name: {service(kind)}
      tls: ISTIO_MUTUAL
      protocol: {hop}
      subjectAltNames: [{SERVER_ID}]
      endpoints:
{eps}"""
    return f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: client-sidecar, namespace: default}}
spec:
  workload: {{service: client}}
  concurrency: 1
  admin: {{port: {admin}}}
  accessLog: {{path: {log}}}
{tls_block(pki, "client")}
  outbound:
    port: {outbound}
    headerTimeout: 2s
  clusters:
{clusters}""" + "".join(traffic_documents(k) for k in KINDS)


class Sidecar:
    """A started sidecar: its process, admin port and access-log file."""

    def __init__(self, proc, admin, log):
        self.proc, self.admin, self.log = proc, admin, log


class MatrixMesh:
    """One hop kind's mesh: the client sidecar, and per app protocol a Recorder shared by the
    apps of versions v1 and v2 and their two server sidecars."""

    def __init__(self, procs, pki, hop, apps):
        self.hop = hop
        self.recorders = {k: Recorder() for k in KINDS}
        self.servers = {k: {} for k in KINDS}
        inbounds = {k: {} for k in KINDS}
        for kind in KINDS:
            for version in ("v1", "v2"):
                app = APPS[kind](self.recorders[kind], version)
                apps.append(app)
                inbound, admin = free_port(), free_port()
                log = procs.tmp / f"access-{kind}-{version}.log"
                name = f"server-{kind}-{version}"
                p = procs.sidecar(server_sidecar_config(pki, kind, version, inbound, admin, app.port, log), name)
                self.servers[kind][version] = Sidecar(p, admin, log)
                inbounds[kind][version] = inbound
        self.outbound, admin = free_port(), free_port()
        log = procs.tmp / "access-client.log"
        p = procs.sidecar(client_sidecar_config(pki, hop, self.outbound, admin, inbounds, log), "client-sidecar")
        self.client = Sidecar(p, admin, log)
        for s in [self.client] + [s for k in KINDS for s in self.servers[k].values()]:
            wait_ready(s.proc, s.admin)


@pytest.fixture(scope="module")
def matrix_mesh(request, pki, tmp_path_factory):
    """The mesh of the hop named by the test's `matrix_mesh` parameter; every process and app is
    stopped on every exit path."""
    procs = Procs(tmp_path_factory.mktemp(f"matrix-{HOPS[request.param]}"))
    apps = []
    try:
        yield MatrixMesh(procs, pki, request.param, apps)
    finally:
        procs.stop_all()
        for a in apps:
            a.close()


# ---------------------------------------------------------------------------------- clients

class HttpResult:
    """What the HTTP client got: status, lowercased response headers, body."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return f"HTTP {self.status} flags={self.headers.get('x-mesh-response-flags')} body={self.body[:120]!r}"


class HttpClient:
    """curl to the client sidecar's outbound listener, HTTP/1.1 or h2c (prior knowledge)."""

    def __init__(self, kind, outbound):
        self.base = f"http://127.0.0.1:{outbound}"
        self.proto = "--http2-prior-knowledge" if kind == "h2c" else "--http1.1"
        self.host = service(kind)

    def _args(self, headers):
        args = ["curl", "-sS", "--max-time", "10", self.proto, "-H", f"Host: {self.host}"]
        for k, v in headers:
            args += ["-H", f"{k}: {v}"]
        return args

    def one(self, path, headers=()):
        r = subprocess.run(self._args(headers) + ["-i", self.base + path], capture_output=True, timeout=30)
        text = r.stdout.decode(errors="replace")
        if not text.startswith("HTTP/"):
            return HttpResult(0, {}, f"curl exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
        head, _, body = text.partition("\r\n\r\n")
        hdrs = {}
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return HttpResult(int(head.split(" ", 2)[1]), hdrs, body)

    def statuses(self, paths, headers=()):
        """The status of each path, one curl (one connection) each: curl 7.88 cannot reuse an
        h2c prior-knowledge connection for a second URL (error 16, whatever the server)."""
        return [self.one(p, headers).status for p in paths]


class GrpcResult:
    """What the gRPC client got: status code, details, the response message (None on error)."""

    def __init__(self, code, details, message):
        self.code, self.details, self.message = code, details, message

    def __repr__(self):
        return f"gRPC {self.code.name} details={self.details!r}"


class GrpcClient:
    """A grpcio channel to the client sidecar's outbound listener (h2c), the authority naming
    the service; the library's own retries off, so every attempt the app sees is the proxy's."""

    def __init__(self, outbound):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{outbound}", options=[
            ("grpc.default_authority", service("grpc")), ("grpc.enable_retries", 0)])

    def one(self, method, key, headers=()):
        md = [("x-matrix-key", key)] + list(headers)
        try:
            resp, call = self.channel.unary_unary(method).with_call(b"", metadata=md, timeout=10)
            return GrpcResult(call.code(), call.details(), resp)
        except grpc.RpcError as e:
            return GrpcResult(e.code(), e.details(), None)

    def close(self):
        self.channel.close()


# --------------------------------------------------------------------------- observations

SAMPLE = re.compile(r'^([a-z_]+)\{(.*)\} (\S+)$')


def requests_total(admin):
    """{labels as a sorted tuple: value} of istio_requests_total on a sidecar."""
    text = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")[1].decode()
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == "istio_requests_total":
            labels = tuple(sorted(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2))))
            out[labels] = float(m.group(3))
    return out


def grown(before, after):
    """[(labels dict, increase)] of the series that grew."""
    return [(dict(k), v - before.get(k, 0.0)) for k, v in after.items() if v != before.get(k, 0.0)]


def log_lines(path, request_id):
    if not path.exists():
        return []
    return [l for l in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if l.get("request_id") == request_id]


class Behaviours:
    """Runs each behaviour's checks, records a failure (assertion or error) with its number and
    name instead of stopping, and fails the cell at the end listing every behaviour."""

    def __init__(self, cell):
        self.cell = cell
        self.results = {}

    @contextlib.contextmanager
    def check(self, number, name):
        try:
            yield
        except AssertionError as e:
            self.results[number] = (name, str(e).strip())
        except Exception as e:  # noqa: BLE001 - reported as that behaviour's failure
            self.results[number] = (name, f"{type(e).__name__}: {e}")
        else:
            self.results[number] = (name, None)

    def verdict(self):
        lines = [f"  {'hop check' if n == 0 else f'behaviour {n}'} ({name}): "
                 + ("ok" if err is None else "FAILED: " + err.replace("\n", "\n      "))
                 for n, (name, err) in sorted(self.results.items())]
        failed = sorted(n for n, (_, err) in self.results.items() if err is not None)
        if failed:
            names = ", ".join("hop check" if n == 0 else str(n) for n in failed)
            pytest.fail(f"{self.cell}: failed: {names}\n" + "\n".join(lines), pytrace=False)


# ------------------------------------------------------------------------------------ cells

# Two parametrizations, not one list of cells: the module-scoped mesh is then set up once per
# hop (pytest caches it by the hop's index) and the tests are grouped by hop.
@pytest.mark.parametrize("matrix_mesh", list(HOPS), indirect=True, ids=list(HOPS.values()))
@pytest.mark.parametrize("kind", KINDS, ids=[f"{k}-app" for k in KINDS])
def test_matrix(kind, matrix_mesh):
    mesh = matrix_mesh
    svc = service(kind)
    rec = mesh.recorders[kind]
    servers = mesh.servers[kind]
    grpc_app = kind == "grpc"
    client = GrpcClient(mesh.outbound) if grpc_app else HttpClient(kind, mesh.outbound)
    b = Behaviours(f"{kind} app over the {HOPS[mesh.hop]}")
    retry_prefix, fault_prefix, denied_path = prefixes(kind)

    def request(path_or_method, key, headers=()):
        if grpc_app:
            return client.one(path_or_method, key, headers)
        return client.one(path_or_method.rstrip("/") + "/" + key, headers)

    def succeeded(r):
        return r.code == grpc.StatusCode.OK if grpc_app else r.status == 200

    try:
        # The exchange (behaviours 5, 6, 7): one request on the default (split) route, with its
        # own x-request-id, between two scrapes of every sidecar's metrics.
        request_id = str(uuid.uuid4())
        key = uuid.uuid4().hex
        before = {"client": requests_total(mesh.client.admin), **{v: requests_total(s.admin) for v, s in servers.items()}}
        t_exchange = time.monotonic()
        res = request(GRPC_SERVICE + "Echo" if grpc_app else "/echo", key, [("x-request-id", request_id)])
        seen = rec.for_key(key)
        served = seen[0].version if len(seen) == 1 else None

        with b.check(5, "x-forwarded-client-cert at the app names the client sidecar"):
            assert succeeded(res), f"the exchange failed: {res}"
            assert len(seen) == 1, f"the app saw the exchange {len(seen)} times: {seen}"
            xfcc = seen[0].headers.get("x-forwarded-client-cert", [])
            assert len(xfcc) == 1, f"x-forwarded-client-cert at the app: {xfcc}"
            fields = xfcc[0].split(";")
            assert f"URI={CLIENT_ID}" in fields, f"no URI={CLIENT_ID} in {xfcc[0]!r}"
            assert f"By={SERVER_ID}" in fields, f"no By={SERVER_ID} in {xfcc[0]!r}"

        with b.check(0, f"the exchange crossed the {HOPS[mesh.hop]}"):
            assert served, f"no server app saw the exchange ({res})"
            s = stats(servers[served].admin)
            assert s["downstream_connections_total"] >= 1, f"the {served} server sidecar has no downstream connection"
            h2 = s["http2_downstream_connections_total"]
            if mesh.hop == "HTTP2":
                assert h2 >= 1, f"no HTTP/2 connection reached the {served} server sidecar: {s}"
            else:
                assert h2 == 0, f"{h2} HTTP/2 connections reached the {served} server sidecar on the HTTP/1.1 hop"

        with b.check(7, "istio_requests_total on both reporters with the same labels"):
            deadline = time.monotonic() + 3

            def growth():
                c = [(l, d) for l, d in grown(before["client"], requests_total(mesh.client.admin)) if l.get("reporter") == "source"]
                s = {v: grown(before[v], requests_total(srv.admin)) for v, srv in servers.items()}
                return c, s
            c, s = growth()
            while (not c or not any(s.values())) and time.monotonic() < deadline:
                time.sleep(0.05)
                c, s = growth()
            assert len(c) == 1 and c[0][1] == 1, f"client sidecar: source series that grew (want one, by 1): {c}"
            src = c[0][0]
            want_src = {"response_code": "200", "response_flags": "-", "route": f"{svc}.split",
                        "request_protocol": "grpc" if grpc_app else "http", "grpc_response_status": "0" if grpc_app else "",
                        "destination_service": f"{svc}.default.svc.cluster.local",
                        "source_principal": CLIENT_ID, "destination_principal": SERVER_ID,
                        "connection_security_policy": "unknown"}
            wrong = {k: (src.get(k), v) for k, v in want_src.items() if src.get(k) != v}
            assert not wrong, f"source series labels (got, want): {wrong}; all: {src}"
            assert served and src.get("destination_version") == served, \
                f"source series destination_version {src.get('destination_version')!r}, but {served} served"
            grew = {v: g for v, g in s.items() if g}
            assert list(grew) == [served] and len(grew[served]) == 1 and grew[served][0][1] == 1, \
                f"server sidecars: series that grew (want one, by 1, on {served}): {s}"
            dst = grew[served][0][0]
            assert (dst.get("reporter"), dst.get("route"), dst.get("connection_security_policy")) == ("destination", "inbound", "mutual_tls"), \
                f"destination series: reporter, route, connection_security_policy = {dst}"
            side = {"reporter", "route", "connection_security_policy"}
            diff = {k: (src.get(k), dst.get(k)) for k in set(src) | set(dst) if k not in side and src.get(k) != dst.get(k)}
            assert not diff, f"labels differing between reporters (source, destination): {diff}"

        with b.check(1, "route match to v2 and a 50/50 split seeing v1 and v2"):
            lane_keys = [uuid.uuid4().hex for _ in range(SPLIT_REQUESTS)]
            split_keys = [uuid.uuid4().hex for _ in range(SPLIT_REQUESTS)]
            if grpc_app:
                lane = [client.one(GRPC_SERVICE + "Echo", k, [LANE]).code for k in lane_keys]
                split = [client.one(GRPC_SERVICE + "Echo", k).code for k in split_keys]
                ok = grpc.StatusCode.OK
            else:
                lane = client.statuses([f"/echo/{k}" for k in lane_keys], [LANE])
                split = client.statuses([f"/echo/{k}" for k in split_keys])
                ok = 200
            assert lane == [ok] * SPLIT_REQUESTS, f"with {LANE[0]}: {LANE[1]}: {lane}"
            lane_versions = [[s.version for s in rec.for_key(k)] for k in lane_keys]
            assert lane_versions == [["v2"]] * SPLIT_REQUESTS, f"matched requests landed on {lane_versions}"
            assert split == [ok] * SPLIT_REQUESTS, f"split route: {split}"
            split_versions = [[s.version for s in rec.for_key(k)] for k in split_keys]
            assert all(len(v) == 1 for v in split_versions), f"split requests seen by the apps: {split_versions}"
            got = sorted({v[0] for v in split_versions})
            assert got == ["v1", "v2"], f"the 50/50 split sent all {SPLIT_REQUESTS} requests to {got}"

        with b.check(2, "a failed first attempt retried: 2 attempts, then success"):
            k = uuid.uuid4().hex
            r = request(retry_prefix, k)
            attempts = rec.for_key(k)
            assert succeeded(r), f"the client got {r} ({len(attempts)} attempts reached the app: {attempts})"
            assert len(attempts) == 2, f"the app saw {len(attempts)} attempts: {attempts}"

        with b.check(3, f"fault abort {FAULT_STATUS} at 100%, the app sees nothing"):
            k = uuid.uuid4().hex
            r = request(fault_prefix, k)
            if grpc_app:
                # The proxy answers HTTP 418 (text/plain, no grpc-status); gRPC maps that HTTP
                # status to UNKNOWN and names it in the details.
                assert r.code == grpc.StatusCode.UNKNOWN and str(FAULT_STATUS) in (r.details or ""), f"the client got {r}"
            else:
                assert r.status == FAULT_STATUS and r.headers.get("x-mesh-response-flags") == "FI", f"the client got {r}"
            assert rec.for_key(k) == [], f"the app saw the aborted request: {rec.for_key(k)}"

        with b.check(4, "AuthorizationPolicy DENY on the server sidecar: 403"):
            k = uuid.uuid4().hex
            denied_before = sum(stats(s.admin)["authz_denied"] for s in servers.values())
            r = request(denied_path, k)
            if grpc_app:
                # The proxy answers HTTP 403; gRPC maps it to PERMISSION_DENIED (7).
                assert r.code == grpc.StatusCode.PERMISSION_DENIED, f"the client got {r}"
            else:
                assert r.status == 403, f"the client got {r}"
            assert rec.for_key(k) == [], f"the app saw the denied request: {rec.for_key(k)}"
            denied = sum(stats(s.admin)["authz_denied"] for s in servers.values()) - denied_before
            assert denied == 1, f"the server sidecars counted {denied} denials"

        with b.check(6, "the exchange's access-log line on both sidecars"):
            deadline = t_exchange + 3

            def lines():
                return (log_lines(mesh.client.log, request_id), log_lines(servers[served].log, request_id) if served else [])
            cl, sl = lines()
            while (len(cl) != 1 or len(sl) != 1) and time.monotonic() < deadline:
                time.sleep(0.05)
                cl, sl = lines()
            problems = []
            want_client = {"direction": "outbound", "response_code": 200, "route": f"{svc}.split"}
            if len(cl) != 1:
                problems.append(f"client sidecar: {len(cl)} lines with request_id {request_id}: {cl}")
            elif any(cl[0].get(f) != v for f, v in want_client.items()):
                problems.append(f"client sidecar line {cl[0]} (want {want_client})")
            want_server = {"direction": "inbound", "response_code": 200, "route": "inbound"}
            if not served:
                problems.append("server sidecar: no app saw the exchange, so no server line to look for")
            elif len(sl) != 1:
                problems.append(f"server sidecar ({served}): {len(sl)} lines with request_id {request_id}: {sl}")
            elif any(sl[0].get(f) != v for f, v in want_server.items()):
                problems.append(f"server sidecar ({served}) line {sl[0]} (want {want_server})")
            assert not problems, "; ".join(problems)
    finally:
        if grpc_app:
            client.close()
    b.verdict()
