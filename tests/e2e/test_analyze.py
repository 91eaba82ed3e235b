"""`meshctl analyze` (offline, like istioctl analyze: meshd's own refusals, then warnings) and
`meshctl proxy-config` (one sidecar's routes, clusters, listeners, certificates and security
state read from its admin port) against real meshd and sidecar processes."""

import json
import subprocess

from conftest import MESHCTL, Meshd, curl, wait_until

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: all
    route:
    - destination: {host: reviews, subset: v1}
  - name: hidden
    match: [{uri: {prefix: /x}}]
    route:
    - destination: {host: reviewz}
"""
DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
AP = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-only-get}
spec:
  selector: {matchLabels: {version: v1}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET]}}]
"""


def analyze(*args):
    return subprocess.run([str(MESHCTL), "analyze", *[str(a) for a in args]], capture_output=True, text=True, timeout=30)


def test_analyze_refuses_what_meshd_refuses_naming_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    # Line 13: a subset no DestinationRule defines (meshd refuses the set).
    f.write_text(VS.replace("host: reviewz}", "host: reviewz, subset: v9}") + "---\n" + DR)
    r = analyze("-f", f)
    assert r.returncode == 79, r
    assert r.stdout.splitlines() == [f"Error [MESH0001] ({f}:13) refused, as meshd would refuse it: document 1: VirtualService default/reviews: "
                                     "spec.http[1].route[0].destination.subset: no DestinationRule defines subset \"v9\" for host reviewz (apply them together)"]
    # A usage error is not a finding.
    r = analyze("-f", f, "--failure-threshold", "Sometimes")
    assert r.returncode == 2 and "--failure-threshold" in r.stderr


def test_analyze_warnings_and_threshold(tmp_path):
    d = tmp_path / "cfg"
    d.mkdir()
    (d / "a-vs.yaml").write_text(VS)
    (d / "b-dr.yaml").write_text(DR)
    (d / "c-ap.yaml").write_text(AP)
    r = analyze("-f", d)
    assert r.returncode == 0, r          # warnings only: below the default threshold (Error)
    lines = r.stdout.splitlines()
    vs, dr, ap = f"{d}/a-vs.yaml:1", f"{d}/b-dr.yaml:1", f"{d}/c-ap.yaml:1"
    assert any(l.startswith(f"Warning [IST0101] (VirtualService default/reviews {vs}) http[0]: destination host \"reviews\"") for l in lines), lines
    assert any(l.startswith(f"Warning [IST0101] (VirtualService default/reviews {vs}) http[1]: destination host \"reviewz\"") for l in lines), lines
    assert f"Warning [IST0131] (VirtualService default/reviews {vs}) http[1] (hidden) is never used: http[0] before it matches every request" in lines
    assert f"Warning [MESH0002] (DestinationRule default/reviews {dr}) subset \"v2\" is used by no VirtualService route in these files" in lines
    assert any(l.startswith(f"Warning [MESH0003] (AuthorizationPolicy default/reviews-only-get {ap}) spec.selector selects no workload") for l in lines), lines
    assert len(lines) == 6, lines
    assert analyze("-f", d, "--failure-threshold", "Warning").returncode == 79
    # Services the workloads register: only the misspelt host stays unknown.
    r = analyze("-f", d, "--service", "reviews.default", "-o", "json")
    found = json.loads(r.stdout)
    unknown = [f["message"] for f in found if f["code"] == "IST0101"]
    assert len(unknown) == 1 and "\"reviewz\"" in unknown[0], found
    assert {f["code"] for f in found} == {"IST0101", "IST0131", "MESH0002", "MESH0003"}
    # The same files, fixed: nothing to say.
    (d / "a-vs.yaml").write_text(VS.split("  - name: hidden")[0].replace("  - name: all\n", "  - name: all\n    match: [{headers: {x-canary: {exact: \"1\"}}}]\n")
                                 + "  - route:\n    - destination: {host: reviews, subset: v2}\n")
    r = analyze("-f", d, "--service", "reviews.default", "--failure-threshold", "Info")
    assert [l for l in r.stdout.splitlines() if "MESH0003" not in l] == [], r.stdout
    (d / "c-ap.yaml").unlink()
    r = analyze("-f", d, "--service", "reviews.default", "--failure-threshold", "Info")
    assert (r.returncode, r.stdout) == (0, "No validation issues found when analyzing 2 file(s).\n")


def test_analyze_with_meshds_registry_and_proxy_config(procs, tmp_path):
    m = Meshd(procs)
    app = procs.app("reviews")
    proc, radmin, _, _ = m.sidecar("reviews-v1", "reviews", app_port=app, extra=["--label", "version=v1"])
    _, cadmin, _, outbound = m.sidecar("productpage", "productpage")
    d = tmp_path / "cfg"
    d.mkdir()
    (d / "all.yaml").write_text(VS.split("  - name: hidden")[0] + "---\n" + DR.replace("  - {name: v2, labels: {version: v2}}\n", "") + "---\n" + AP)
    # Offline the registered workload is unknown; with meshd's registry it is known.
    assert "MESH0003" in analyze("-f", d, "--service", "reviews.default").stdout
    r = m.ctl("analyze", "-f", d, "--use-meshd", "--failure-threshold", "Warning", check=False)
    assert (r.returncode, r.stdout) == (0, "No validation issues found when analyzing 1 file(s).\n"), r
    m.ctl("apply", "-f", d, "--wait")
    wait_until(lambda: curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout == b"200",
               what="route in force")
    assert curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout == b"403"

    def pc(*args):
        r = subprocess.run([str(MESHCTL), "proxy-config", *[str(a) for a in args]], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    # The caller's routes and clusters.
    routes = pc("routes", f"127.0.0.1:{cadmin}")
    assert routes.splitlines()[0].split() == ["ROUTE", "SERVICE", "DESTINATIONS", "TIMEOUT", "RETRIES"]
    assert ["reviews.all", "reviews.default.svc.cluster.local", "reviews.default/v1", "100%", "-", "2"] in [l.split() for l in routes.splitlines()], routes
    clusters = pc("clusters", f"127.0.0.1:{cadmin}")
    assert any(l.split()[1:2] == ["ISTIO_MUTUAL"] and "HEALTHY" in l for l in clusters.splitlines() if l.startswith("reviews")), clusters
    # The server's security state: mTLS mode and the policy that selects it, also by identity.
    authz = pc("authz", f"127.0.0.1:{radmin}")
    assert authz.splitlines()[0] == "mTLS (PeerAuthentication): STRICT (the mesh's default)"
    assert any(l.split()[:3] == ["default/reviews-only-get", "ALLOW", "1"] for l in authz.splitlines()), authz
    by_id = m.ctl("proxy-config", "authz", "spiffe://cluster.local/ns/default/sa/reviews").stdout
    assert by_id == authz
    assert "no AuthorizationPolicy selects this workload" in pc("authz", f"127.0.0.1:{cadmin}")
    secrets = pc("secrets", f"127.0.0.1:{radmin}")
    assert any(l.split()[:2] == ["default", "spiffe://cluster.local/ns/default/sa/reviews"] for l in secrets.splitlines()), secrets
    assert any(l.startswith("ROOTCA") for l in secrets.splitlines()), secrets
    listeners = pc("listeners", f"127.0.0.1:{radmin}")
    assert any(l.startswith("inbound") and l.endswith("mTLS STRICT") for l in listeners.splitlines()), listeners
    j = json.loads(pc("authz", f"127.0.0.1:{radmin}", "-o", "json"))
    pol = j["authorization_policies"][0]
    assert pol["name"] == "default/reviews-only-get" and pol["action"] == "ALLOW" and pol["rules"][0]["to"][0]["methods"] == ["GET"]
    assert j["peer_authentication"]["mode"] == "STRICT" and j["peer_authentication"]["workload_mode"] == "STRICT"
    full = json.loads(pc("all", f"127.0.0.1:{radmin}", "-o", "json"))
    assert full["authorization_policies"] == j["authorization_policies"]
    r = subprocess.run([str(MESHCTL), "proxy-config", "routez", f"127.0.0.1:{radmin}"], capture_output=True, text=True)
    assert r.returncode == 2 and "expected one of routes, clusters" in r.stderr


def test_analyze_reads_gateway_bindings_and_new_match_fields(tmp_path):
    d = tmp_path / "cfg"
    d.mkdir()
    (d / "vs.yaml").write_text("""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front}
spec:
  hosts: [shop.example]
  gateways: [front-gw, mesh]
  http:
  - name: beta
    match: [{queryParams: {beta: {exact: "1"}}}]
    route:
    - destination: {host: web}
  - name: rest
    route:
    - destination: {host: web}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other}
spec:
  hosts: [other.example]
  gateways: [missing-gw]
  http:
  - route:
    - destination: {host: web}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: front-gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*/shop.example"]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  selector: {matchLabels: {app: nothere}}
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks
""")
    r = analyze("-f", d, "--service", "web.default", "-o", "json")
    found = [(f["code"], f["resource"], f["message"]) for f in json.loads(r.stdout)]
    # A route whose only condition is a query parameter does not hide the next one; the
    # Gateway named and defined here is found, the one not defined is named; the
    # RequestAuthentication's selector selects nothing known.
    assert found == [
        ("IST0101", "VirtualService default/other", "gateway \"missing-gw\" is not a Gateway in these files"),
        ("MESH0003", "RequestAuthentication default/jwt", "spec.selector selects no workload known: the policy applies nowhere"),
    ], found
