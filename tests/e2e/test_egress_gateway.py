"""The egress gateway (docs/gateways.md "Egress gateway"), as in Istio's "Egress Gateways" task:
meshd, the caller's sidecar (`--service sleep`, curl through it as `http_proxy` stands in for the
app), `sidecar --gateway --service istio-egressgateway --label istio=egressgateway`, and an
"external" server on loopback. A ServiceEntry declares the external host, a MESH_INTERNAL
ServiceEntry names the gateway for the sidecars (its Kubernetes Service), a Gateway opens the
gateway's port, and one VirtualService bound to `mesh` and the Gateway sends the app's request
to the gateway (the `mesh` route) and from there to the external host (the gateway's route).

Which process the external server saw: its peer's port is looked up with `ss -tnp` (the pooled
connection is still open), and it must belong to the gateway, never to the caller's sidecar."""

import json
import re
import subprocess

from conftest import SIDECAR, Meshd, curl, free_port, http_get, wait_ready, wait_until
from test_egress import HOST, Dnsmasq, egress_pki, nginx  # noqa: F401 - fixtures: nginx with its own CA

GW_HOST = "istio-egressgateway.istio-system.svc.cluster.local"


def egress_gateway(m, procs, *extra):
    """`sidecar --gateway --service istio-egressgateway --label istio=egressgateway`: (process, admin port)."""
    admin, outbound = free_port(), free_port()
    p = procs.start([SIDECAR, "--gateway", "--meshd", f"127.0.0.1:{m.api}", "--root-cert", m.root, "--token", m.token("istio-egressgateway"),
                     "--service", "istio-egressgateway", "--label", "istio=egressgateway", "--admin-port", admin,
                     "--outbound-port", outbound, "--concurrency", "2", *extra], "istio-egressgateway")
    wait_ready(p, admin, timeout=20)
    return p, admin


def apply(m, tmp, name, text):
    f = tmp / f"{name}.yaml"
    f.write_text(text)
    r = m.ctl("apply", "-f", f, "--wait", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return f


def call(outbound, url):
    """GET `url` through the caller's sidecar as a forward proxy: (status, body)."""
    r = curl("-s", "-o", "-", "-w", "\n%{http_code}", "--proxy", f"http://127.0.0.1:{outbound}", url, timeout=20)
    body, _, code = r.stdout.decode(errors="replace").rpartition("\n")
    return int(code or 0), body


def owners(port):
    """Pids of the processes holding an established TCP connection to `port` (the connections
    the external server accepted, seen from their client side)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"dport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def requests_total(admin, *labels):
    _, body = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("istio_requests_total{") and all(l in line for l in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_http_through_the_egress_gateway(procs, tmp_path):
    """Istio's "Egress gateway for HTTP traffic": plain HTTP from the sidecar to the gateway's
    port 80 server, and from the gateway to the external host, which the gateway resolves by
    DNS (`resolution: DNS`, a dnsmasq the test starts answers it)."""
    d = tmp_path / "dns"
    d.mkdir()
    dns = Dnsmasq(d, ["127.0.0.1"], ttl=30, name="edition.cnn.example")
    try:
        http_through(procs, tmp_path, dns)
    finally:
        dns.stop()


def http_through(procs, tmp_path, dns):
    m = Meshd(procs)
    external = procs.app("external")
    caller, caller_admin, _, caller_out = m.sidecar("sleep", "sleep")
    gw, gw_admin = egress_gateway(m, procs, "--dns-resolver", f"127.0.0.1:{dns.port}")
    gw_port, other_port = free_port(), free_port()
    docs = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cnn}}
spec:
  hosts: [edition.cnn.example]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 80, name: http-port, protocol: HTTP, targetPort: {external}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway}}
spec:
  hosts: [{GW_HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {gw_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: [edition.cnn.example]
  - port: {{number: {other_port}, name: http-other, protocol: HTTP}}
    hosts: [edition.cnn.example]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-cnn}}
spec:
  host: {GW_HOST}
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-cnn-through-egress-gateway}}
spec:
  hosts: [edition.cnn.example]
  gateways: [istio-egressgateway, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination: {{host: {GW_HOST}, subset: cnn, port: {{number: 80}}}}
      weight: 100
  - match:
    - gateways: [istio-egressgateway]
      port: {gw_port}
    route:
    - destination: {{host: edition.cnn.example, port: {{number: 80}}}}
      weight: 100
"""
    apply(m, tmp_path, "egress-gateway", docs)
    wait_until(lambda: call(caller_out, "http://edition.cnn.example/echo")[0] == 200, timeout=15, what="sleep -> egress gateway -> external")
    code, body = call(caller_out, "http://edition.cnn.example/echo?x=1")
    assert code == 200, body
    echo = json.loads(body)
    assert echo["name"] == "external" and echo["path"] == "/echo?x=1"
    assert echo["headers"]["host"] == ["edition.cnn.example"], echo
    # The external server's peer is the gateway's pooled connection, not the caller's sidecar.
    assert owners(external) == {gw.pid}, (gw.pid, caller.pid)
    assert dns.queries() >= 1
    # Both hops are counted: the caller's sidecar to the gateway's service (its `mesh` route),
    # the gateway to the external host (its own route).
    assert requests_total(caller_admin, 'reporter="source"', f'destination_service="{GW_HOST}"',
                          'route="direct-cnn-through-egress-gateway.0"', 'response_code="200"') >= 2
    assert requests_total(gw_admin, 'reporter="source"',
                          'route="direct-cnn-through-egress-gateway.1"', 'response_code="200"') >= 2
    # On the gateway `match[].port` is the server port the request came in on: the host is
    # served on the Gateway's other port too, but no route's match takes that port (and the
    # `mesh` match, port 80, is not the gateway's); another host is not served at all.
    hits = json.loads(http_get(f"http://127.0.0.1:{external}/_hits")[1])["hits"]
    for port, host in ((other_port, "edition.cnn.example"), (gw_port, "other.example")):
        r = curl("-s", "-D", "-", "-o", "/dev/null", "-H", f"Host: {host}", f"http://127.0.0.1:{port}/", timeout=20)
        assert r.stdout.startswith(b"HTTP/1.1 404") and b"x-mesh-response-flags: NR" in r.stdout, (port, host, r.stdout)
    assert json.loads(http_get(f"http://127.0.0.1:{external}/_hits")[1])["hits"] == hits
    assert gw.poll() is None and caller.poll() is None


def test_istio_mutual_to_the_gateway_and_tls_origination_from_it(procs, nginx, egress_pki, tmp_path):  # noqa: F811
    """Istio's "Perform TLS origination with an egress gateway" with the ISTIO_MUTUAL variant of
    the sidecar-to-gateway hop: the app calls http://api.example.test/, its sidecar carries the
    request over the mesh's mTLS to the gateway's ISTIO_MUTUAL server (443 in the task), and the
    gateway originates TLS to the external nginx (its own CA) with a DestinationRule SIMPLE."""
    m = Meshd(procs)
    caller, caller_admin, _, caller_out = m.sidecar("sleep", "sleep")
    gw, gw_admin = egress_gateway(m, procs)
    gw_port = free_port()
    docs = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http-port, protocol: HTTP, targetPort: {nginx.port}}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway}}
spec:
  hosts: [{GW_HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: http-mtls, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http-mtls: {gw_port}}}, serviceAccount: istio-egressgateway}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {gw_port}, name: https, protocol: HTTPS}}
    hosts: [{HOST}]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-api}}
spec:
  host: {GW_HOST}
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
  subsets:
  - name: api
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls-for-api}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls:
        mode: SIMPLE
        caCertificates: {egress_pki}/ca.pem
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-api-through-egress-gateway}}
spec:
  hosts: [{HOST}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination: {{host: {GW_HOST}, subset: api, port: {{number: 443}}}}
  - match:
    - gateways: [istio-egressgateway]
      port: {gw_port}
    route:
    - destination: {{host: {HOST}, port: {{number: 80}}}}
"""
    apply(m, tmp_path, "egress-gateway-tls", docs)
    wait_until(lambda: call(caller_out, f"http://{HOST}/probe")[0] == 200, timeout=15, what="sleep -> (mTLS) egress gateway -> (TLS) nginx")
    code, body = call(caller_out, f"http://{HOST}/r1")
    assert code == 200 and body.startswith("hello from nginx over TLSv1."), body
    # nginx got both requests over TLS with the auto SNI, from the gateway only.
    lines = nginx.lines()
    assert [l[5] for l in lines][-1] == "/r1" and {l[5] for l in lines} == {"/probe", "/r1"}, lines
    assert all(l[0] == str(nginx.port) and l[1] == HOST and l[2].startswith("TLSv1.") for l in lines), lines
    assert owners(nginx.port) == {gw.pid}, (gw.pid, caller.pid)
    # The caller's hop to the gateway was the mesh's mTLS: the gateway's ISTIO_MUTUAL port refuses
    # a client without a mesh certificate.
    r = curl("-k", "--resolve", f"{HOST}:{gw_port}:127.0.0.1", f"https://{HOST}:{gw_port}/", timeout=20)
    assert r.returncode != 0
    assert requests_total(caller_admin, 'reporter="source"', f'destination_service="{GW_HOST}"',
                          'route="direct-api-through-egress-gateway.0"', 'response_code="200"') >= 2
    assert requests_total(gw_admin, 'reporter="source"', 'route="direct-api-through-egress-gateway.1"', 'response_code="200"') >= 2
    assert gw.poll() is None and caller.poll() is None
