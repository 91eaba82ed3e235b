"""The ingress gateway (DESIGN §15, docs/gateways.md): meshd, an app with its sidecar, a caller
sidecar and `sidecar --gateway`, all real processes; Gateway and VirtualService documents applied
with meshctl. curl reaches the mesh service through the gateway's HTTP port by Host (mTLS inside:
the app sees the gateway's identity), VirtualServices bind by `gateways` (a mesh one is not used
by the gateway, a gateway-only one not by sidecars), httpsRedirect answers 301, a port held by
another process is reported and the others serve, ports close when their Gateway goes, and a
PASSTHROUGH server routes by SNI to a TLS backend while a TCP server carries bytes."""

import json
import socket
import subprocess
import sys
import time

from conftest import SIDECAR, Meshd, curl, free_port, http_get, wait_ready, wait_until

NS = "default"


def gateway_proxy(m, procs, name="ingressgateway", labels=("istio=ingressgateway",)):
    admin, outbound = free_port(), free_port()
    args = [SIDECAR, "--gateway", "--meshd", f"127.0.0.1:{m.api}", "--root-cert", m.root, "--token", m.token(name),
            "--service", name, "--admin-port", admin, "--outbound-port", outbound, "--concurrency", "2"]
    for l in labels:
        args += ["--label", l]
    p = procs.start(args, name)
    wait_ready(p, admin, timeout=20)
    return p, admin


def apply(m, tmp, name, text):
    f = tmp / f"{name}.yaml"
    f.write_text(text)
    r = m.ctl("apply", "-f", f, "--wait", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return f


def refused_connection(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def http(port, path, host, *extra):
    r = curl("-s", "-o", "-", "-w", "\n%{http_code}", "-D", "-", "-H", f"Host: {host}", *extra, f"http://127.0.0.1:{port}{path}", timeout=20)
    out = r.stdout.decode()
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


def test_http_by_host_through_the_gateway_with_istio_binding(procs, tmp_path):
    m = Meshd(procs)
    app = procs.app("reviews")
    _, app_admin, _, _ = m.sidecar("reviews", "reviews", app_port=app)
    _, _, _, caller_out = m.sidecar("productpage", "productpage")
    gw, gw_admin = gateway_proxy(m, procs)
    http_port, redirect_port, busy_port, other_port = free_port(), free_port(), free_port(), free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", busy_port))
    holder.listen(1)
    gateway = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web-gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    hosts: [bookinfo.example, "*.shop.example"]
  - port: {{number: {redirect_port}, name: http-redirect, protocol: HTTP}}
    hosts: ["*"]
    tls: {{httpsRedirect: true}}
  - port: {{number: {busy_port}, name: http-busy, protocol: HTTP}}
    hosts: [bookinfo.example]
  - port: {{number: {other_port}, name: http-other, protocol: HTTP}}
    hosts: [other.example]
"""
    routes = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front}
spec:
  hosts: [bookinfo.example]
  gateways: [web-gw]
  http:
  - route: [{destination: {host: reviews}}]
    headers: {request: {set: {x-via: gateway-vs}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: ["*.shop.example"]
  gateways: [web-gw]
  http:
  - route: [{destination: {host: reviews}}]
    headers: {request: {set: {x-via: wildcard-vs}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    headers: {request: {set: {x-via: mesh-vs}}}
"""
    try:
        gw_file = apply(m, tmp_path, "gateway", gateway)
        apply(m, tmp_path, "routes", routes)
        # The Gateway's HTTP port routes by Host through the gateway-bound VirtualService, over
        # mTLS to the app's sidecar: the app sees the gateway's identity.
        wait_until(lambda: http(http_port, "/echo", "bookinfo.example")[0] == 200, timeout=15, what="gateway HTTP port serving")
        code, body = http(http_port, "/echo", "bookinfo.example")
        echo = json.loads(body.split("\r\n\r\n", 1)[1])
        assert echo["name"] == "reviews"
        assert echo["headers"]["x-via"] == ["gateway-vs"]
        xfcc = echo["headers"]["x-forwarded-client-cert"][0]
        assert "URI=spiffe://cluster.local/ns/default/sa/ingressgateway" in xfcc, xfcc
        # Recorded like a sidecar's outbound (Istio's gateways report as source), and by the
        # destination with the gateway's identity.
        prom = http_get(f"http://127.0.0.1:{gw_admin}/stats/prometheus")[1].decode()
        assert any('reporter="source"' in l and 'route="front.0"' in l and 'response_code="200"' in l
                   for l in prom.splitlines() if l.startswith("istio_requests_total")), prom
        prom = http_get(f"http://127.0.0.1:{app_admin}/stats/prometheus")[1].decode()
        assert any('reporter="destination"' in l and 'source_principal="spiffe://cluster.local/ns/default/sa/ingressgateway"' in l
                   for l in prom.splitlines() if l.startswith("istio_requests_total")), prom
        # A wildcard host of a gateway VirtualService takes the names under it.
        code, body = http(http_port, "/echo", "eu.shop.example")
        assert code == 200 and json.loads(body.split("\r\n\r\n", 1)[1])["headers"]["x-via"] == ["wildcard-vs"], body
        assert http(http_port, "/echo", "shop.example")[0] == 404
        # Routes are per port (Istio): another HTTP port whose server does not admit the host.
        code, body = http(other_port, "/echo", "bookinfo.example")
        assert code == 404 and "x-mesh-response-flags: NR" in body, body
        # h2c (prior knowledge) on the same port, routed the same way.
        r = curl("--http2-prior-knowledge", "-H", "Host: bookinfo.example", f"http://127.0.0.1:{http_port}/echo", timeout=20)
        assert r.returncode == 0 and json.loads(r.stdout)["headers"]["x-via"] == ["gateway-vs"], r
        # meshctl shows the Gateway and the binding.
        table = m.ctl("get", "routes").stdout
        assert f"selector istio=ingressgateway; servers: {http_port}/HTTP, {redirect_port}/HTTP httpsRedirect, {busy_port}/HTTP, {other_port}/HTTP" in table, table
        assert "hosts: bookinfo.example; gateways: web-gw" in table, table
        # A VirtualService without gateways (mesh) is not used by the gateway.
        code, body = http(http_port, "/echo", "reviews")
        assert code == 404 and "x-mesh-response-flags: NR" in body, body
        # ... and the gateway-only one is not used by sidecars, which use the mesh one.
        code, body = http(caller_out, "/echo", "bookinfo.example")
        assert code == 404, body
        code, body = http(caller_out, "/echo", "reviews")
        assert code == 200 and json.loads(body.split("\r\n\r\n", 1)[1])["headers"]["x-via"] == ["mesh-vs"], body
        # httpsRedirect: 301 to the same host and path over https (port dropped), nothing proxied.
        hits = json.loads(http_get(f"http://127.0.0.1:{app}/_hits")[1])["hits"]
        code, body = http(redirect_port, "/reviews/1?x=y", f"bookinfo.example:{redirect_port}")
        assert code == 301, body
        assert "location: https://bookinfo.example/reviews/1?x=y\r\n" in body.lower(), body
        assert json.loads(http_get(f"http://127.0.0.1:{app}/_hits")[1])["hits"] == hits
        # A port another process holds is reported, and the other ports serve on.
        log = gw.log_path.read_text()
        assert f"cannot listen on 127.0.0.1:{busy_port}: port {busy_port} is already in use by another process" in log, log
        assert gw.poll() is None
        # Ports close when their Gateway goes.
        assert m.ctl("delete", "-f", gw_file).returncode == 0
        wait_until(lambda: refused_connection(http_port) and refused_connection(redirect_port), timeout=15, what="gateway ports closed")
        assert gw.poll() is None
    finally:
        holder.close()


TLS_SERVER = r'''
import http.server, ssl, sys
port, cert, key, name = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"tls backend {name}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("READY", flush=True)
srv.serve_forever()
'''

ECHO_SERVER = r'''
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
def serve(c):
    with c:
        while True:
            b = c.recv(65536)
            if not b:
                return
            c.sendall(b"echo:" + b)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


def test_passthrough_by_sni_and_a_tcp_server(procs, tmp_path):
    m = Meshd(procs)
    # A TLS backend outside the mesh with its own CA-less certificate for secure.example.
    cert, key = tmp_path / "secure.pem", tmp_path / "secure.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                    "-subj", "/CN=secure.example", "-addext", "subjectAltName=DNS:secure.example",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    tls_port, echo_port = free_port(), free_port()
    (tmp_path / "tls_server.py").write_text(TLS_SERVER)
    (tmp_path / "echo_server.py").write_text(ECHO_SERVER)
    procs.start([sys.executable, tmp_path / "tls_server.py", tls_port, cert, key, "one"], "tls-backend")
    procs.start([sys.executable, tmp_path / "echo_server.py", echo_port], "echo-backend")
    wait_until(lambda: socket.create_connection(("127.0.0.1", tls_port), timeout=0.2).close() or True, what="tls backend")
    wait_until(lambda: socket.create_connection(("127.0.0.1", echo_port), timeout=0.2).close() or True, what="echo backend")
    gw, gw_admin = gateway_proxy(m, procs)
    pass_port, tcp_port = free_port(), free_port()
    docs = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure-backend}}
spec:
  hosts: [secure.backend.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tcp-tls, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-tls: {tls_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo-backend}}
spec:
  hosts: [echo.backend.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 7000, name: tcp-echo, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-echo: {echo_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {pass_port}, name: tls, protocol: TLS}}
    hosts: ["*"]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure}}
spec:
  hosts: [secure.example]
  gateways: [edge]
  tls:
  - match: [{{sniHosts: [secure.example], port: {pass_port}}}]
    route: [{{destination: {{host: secure.backend.internal}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo.backend.internal]
  gateways: [edge]
  tcp:
  - match: [{{port: {tcp_port}}}]
    route: [{{destination: {{host: echo.backend.internal}}}}]
"""
    apply(m, tmp_path, "edge", docs)
    url = f"https://secure.example:{pass_port}/"
    resolve = f"secure.example:{pass_port}:127.0.0.1"

    def through():
        r = curl("--cacert", cert, "--resolve", resolve, url, timeout=20)
        return r.returncode == 0 and r.stdout == b"tls backend one\n"
    # The backend's own certificate reaches curl (verified against it): TLS was not terminated.
    wait_until(through, timeout=15, what="PASSTHROUGH by SNI")
    # Another name has no tls route: the connection is closed, nothing reaches the backend.
    r = curl("-k", "--resolve", f"other.example:{pass_port}:127.0.0.1", f"https://other.example:{pass_port}/", timeout=20)
    assert r.returncode != 0
    # No SNI at all (an IP address), and bytes that are not TLS: closed.
    r = curl("-k", f"https://127.0.0.1:{pass_port}/", timeout=20)
    assert r.returncode != 0
    with socket.create_connection(("127.0.0.1", pass_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: secure.example\r\n\r\n")
        s.settimeout(5)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass   # closed with the unread bytes: a reset
    def logged():
        log = gw.log_path.read_text()
        return "no tls route takes its server name (SNI)" in log and "not a usable TLS ClientHello (not a TLS handshake record)" in log
    wait_until(logged, timeout=5, what="both refusals in the gateway's log")
    # The TCP server carries bytes both ways to its tcp route's destination.
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as s:
        s.sendall(b"ping")
        s.settimeout(5)
        got = b""
        while len(got) < 9:
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
        assert got == b"echo:ping"
    assert gw.poll() is None


def test_istio_mutual_server_takes_mesh_callers_only(procs, tmp_path):
    """An ISTIO_MUTUAL server (Istio's egress-gateway pattern): a sidecar reaches the gateway over
    mTLS through a MESH_INTERNAL ServiceEntry; a client without a mesh certificate is refused."""
    m = Meshd(procs)
    app = procs.app("reviews")
    m.sidecar("reviews", "reviews", app_port=app)
    _, _, _, caller_out = m.sidecar("productpage", "productpage")
    gw, gw_admin = gateway_proxy(m, procs)
    port = free_port()
    docs = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mesh-gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https-mesh, protocol: HTTPS}}
    hosts: [gw.mesh.internal]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: through-gateway}}
spec:
  hosts: [gw.mesh.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}, serviceAccount: ingressgateway}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: via-gateway}}
spec:
  hosts: [gw.mesh.internal]
  gateways: [mesh-gw]
  http:
  - match: [{{scheme: {{exact: https}}}}]
    route: [{{destination: {{host: reviews}}}}]
    headers: {{request: {{set: {{x-scheme: https}}}}}}
  - route: [{{destination: {{host: reviews}}}}]
"""
    apply(m, tmp_path, "mesh-gw", docs)

    def through():
        code, body = http(caller_out, "/echo", "gw.mesh.internal")
        return code == 200 and body
    body = wait_until(through, timeout=15, what="caller -> gateway (mTLS) -> reviews")
    echo = json.loads(body.split("\r\n\r\n", 1)[1])
    assert echo["name"] == "reviews"
    assert "URI=spiffe://cluster.local/ns/default/sa/ingressgateway" in echo["headers"]["x-forwarded-client-cert"][0]
    # The request came over the gateway's TLS: `scheme` matches https there.
    assert echo["headers"].get("x-scheme") == ["https"], echo["headers"]
    # Without a mesh client certificate the handshake is refused.
    r = curl("-k", "--resolve", f"gw.mesh.internal:{port}:127.0.0.1", f"https://gw.mesh.internal:{port}/echo", timeout=20)
    assert r.returncode != 0
    wait_until(lambda: "TLS handshake refused: error:0A0000C7:SSL routines::peer did not return a certificate" in gw.log_path.read_text(),
               timeout=5, what="the refused handshake logged")
    assert gw.poll() is None


def test_static_file_gateway_with_access_log(procs, tmp_path):
    """`spec.gateway` in a static file: the same gateway without meshd (its Gateway and
    VirtualService documents in the file); requests logged like a sidecar's outbound ones."""
    app = procs.app("web")
    admin, outbound, port, redirect = free_port(), free_port(), free_port(), free_port()
    log = tmp_path / "access.log"
    cfg = f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: edge, namespace: default}}
spec:
  workload: {{service: edge, labels: {{istio: ingressgateway}}}}
  concurrency: 2
  admin: {{port: {admin}}}
  outbound: {{port: {outbound}}}
  gateway: {{listenAddress: 127.0.0.1}}
  accessLog: {{path: {log}}}
  clusters:
    - name: web
      tls: DISABLE
      endpoints: ["127.0.0.1:{app}"]
  routes: []
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [static.example]
  - port: {{number: {redirect}, name: http-redirect, protocol: HTTP}}
    hosts: ["*"]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: front}}
spec:
  hosts: [static.example]
  gateways: [edge]
  http:
  - name: to-web
    route: [{{destination: {{host: web}}}}]
"""
    p = procs.sidecar(cfg, "static-gateway")
    wait_ready(p, admin)
    wait_until(lambda: http(port, "/", "static.example")[0] == 200, timeout=10, what="static gateway serving")
    code, body = http(port, "/", "static.example")
    assert body.endswith("hello from web\n"), body
    assert http(redirect, "/x", "static.example")[0] == 301
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, what="access-log lines")
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    ok = [l for l in lines if l["response_code"] == 200]
    assert ok and ok[0]["authority"] == "static.example" and ok[0]["route"] == "front.to-web" and ok[0]["response_flags"] == "-", lines
    assert any(l["response_code"] == 301 and l["path"] == "/x" for l in lines), lines
    # A static file with a Gateway but no spec.gateway is a sidecar: refused by name.
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.replace("  gateway: {listenAddress: 127.0.0.1}\n", ""))
    r = subprocess.run([str(SIDECAR), "--config", str(bad), "--check"], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "Gateway default/edge: a Gateway configures gateway proxies (sidecar --gateway)" in r.stdout + r.stderr, r.stdout + r.stderr


def test_gateway_rate_limit_and_policies_refused(procs, tmp_path):
    """A LocalRateLimit on a gateway-bound VirtualService limits at the gateway (429 RL, the app
    not reached); an AuthorizationPolicy or RequestAuthentication selecting the gateway is
    refused at apply by name (policies are not enforced on gateways), the rest stays served."""
    m = Meshd(procs)
    app = procs.app("reviews")
    m.sidecar("reviews", "reviews", app_port=app)
    gw, gw_admin = gateway_proxy(m, procs)
    port = free_port()
    apply(m, tmp_path, "gw", f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web-gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [bookinfo.example]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: front}}
spec:
  hosts: [bookinfo.example]
  gateways: [web-gw]
  http:
  - route: [{{destination: {{host: reviews}}}}]
""")
    wait_until(lambda: http(port, "/echo", "bookinfo.example")[0] == 200, timeout=15, what="gateway HTTP port serving")
    apply(m, tmp_path, "limit", """
apiVersion: mesh.io/v1alpha1
kind: LocalRateLimit
metadata: {name: front-limit}
spec:
  virtualService: front
  tokenBucket: {maxTokens: 1, tokensPerFill: 1, fillInterval: 1h}
""")

    def limited():
        code, body = http(port, "/echo", "bookinfo.example")
        return code == 429 and body
    body = wait_until(limited, timeout=15, what="the gateway answering 429 by its LocalRateLimit")
    assert "x-mesh-response-flags: RL" in body, body
    hits = json.loads(http_get(f"http://127.0.0.1:{app}/_hits")[1])["hits"]
    assert http(port, "/echo", "bookinfo.example")[0] == 429
    assert json.loads(http_get(f"http://127.0.0.1:{app}/_hits")[1])["hits"] == hits
    # Policies selecting the gateway: refused by name, file and line.
    for kind, spec in [("AuthorizationPolicy", "action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]"),
                       ("RequestAuthentication", "jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/jwks}]")]:
        f = tmp_path / f"{kind}.yaml"
        f.write_text(f"apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: gw-policy}}\nspec:\n"
                     f"  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  {spec}\n")
        r = m.ctl("apply", "-f", f, check=False)
        assert r.returncode != 0, r.stdout
        assert f"{f}:5: document 1: {kind} default/gw-policy: spec.selector: selects the gateway proxies Gateway default/web-gw selects: policies on gateways are not supported yet" in r.stderr, r.stderr
    assert gw.poll() is None
