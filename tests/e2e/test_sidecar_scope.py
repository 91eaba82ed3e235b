"""Istio's Sidecar resource with real processes: meshd and mesh-mode sidecars in two namespaces.
A Sidecar limiting namespace a's egress to its own namespace takes b's hosts out of a's config
(a caller in a gets for them what an unknown host gets: 404 with Envoy's NR flag), and a change
to a VirtualService of b is pushed to b's sidecar only: meshd's sent version for a's sidecars
stays, and their logs have no new "applied" line."""

import re
import time

from conftest import Meshd, curl, free_port, wait_ready, wait_until, SIDECAR

A_LOCAL = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: a}
spec:
  egress:
  - hosts: ["./*"]
"""

B_ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: b}
spec:
  hosts: [ratings]
  http:
  - name: main
    timeout: TIMEOUT
    route:
    - destination: {host: ratings}
"""


def sidecar(m, name, ns, sa, app_port=None):
    """A mesh-mode sidecar in namespace `ns` (conftest's Meshd.sidecar is for `default`)."""
    admin, inbound, outbound = free_port(), free_port(), free_port()
    args = [SIDECAR, "--meshd", f"127.0.0.1:{m.api}", "--root-cert", m.root, "--token", m.token(sa, ns=ns),
            "--service", sa, "--namespace", ns, "--admin-port", admin, "--inbound-port", inbound,
            "--outbound-port", outbound, "--concurrency", "1"]
    if app_port:
        args += ["--app-port", app_port]
    p = m.procs.start(args, name)
    wait_ready(p, admin, timeout=20)
    return p, outbound


def call(outbound, host):
    """(status line, headers) of GET / with this Host through a sidecar's outbound listener."""
    r = curl("-s", "-i", "-H", f"Host: {host}", f"http://127.0.0.1:{outbound}/")
    head = r.stdout.split(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")
    return lines[0], {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}, r.stdout


def proxies(m):
    """identity -> sent version, from meshd's /v1/proxies (meshctl get proxies)."""
    out = {}
    for line in m.ctl("get", "proxies").stdout.splitlines()[2:]:   # after the version and replica lines
        cols = line.split("\t")
        sent = next(c for c in cols if c.startswith("sent "))
        out[cols[0]] = (int(sent.split()[1]), cols)
    return out


def applied(p):
    return re.findall(r"config version (\d+) from meshd applied", p.log_path.read_text())


def test_egress_scope_hides_other_namespaces_and_pushes_only_to_dependents(procs, tmp_path):
    m = Meshd(procs)
    ratings_app, reviews_app = procs.app("ratings"), procs.app("reviews")
    b_ratings, _ = sidecar(m, "ratings-b", "b", "ratings", app_port=ratings_app)
    a_reviews, _ = sidecar(m, "reviews-a", "a", "reviews", app_port=reviews_app)
    a_web, outbound = sidecar(m, "web-a", "a", "web")
    wait_until(lambda: "ratings.b" in m.ctl("get", "services").stdout and "reviews.a" in m.ctl("get", "services").stdout,
               what="both services registered")
    # Without a Sidecar resource, a's caller reaches b's service.
    wait_until(lambda: call(outbound, "ratings.b")[0].startswith("HTTP/1.1 200"), what="ratings.b routed for a's caller")
    assert b"ratings" in call(outbound, "ratings.b")[2]
    unknown_status, unknown_headers, _ = call(outbound, "nosuch.b")
    assert unknown_status.startswith("HTTP/1.1 404"), unknown_status
    assert unknown_headers.get("x-mesh-response-flags") == "NR", unknown_headers

    f = tmp_path / "a-local.yaml"
    f.write_text(A_LOCAL)
    r = m.ctl("apply", "-f", f, "--wait")
    assert "Sidecar a/default: created" in r.stdout and "acknowledged by" in r.stdout, r.stdout
    # a's caller: b's host answers as an unknown host does; its own namespace still works.
    status, headers, _ = call(outbound, "ratings.b")
    assert status.split()[:2] == unknown_status.split()[:2], status
    assert headers.get("x-mesh-response-flags") == "NR", headers
    assert call(outbound, "ratings.b.svc.cluster.local")[0].startswith("HTTP/1.1 404")
    status, _, body = call(outbound, "reviews.a")
    assert status.startswith("HTTP/1.1 200") and b"reviews" in body, (status, body)

    # A change to b's VirtualService: pushed to b's sidecar, not to a's.
    before = proxies(m)
    a_ids = ["spiffe://cluster.local/ns/a/sa/web", "spiffe://cluster.local/ns/a/sa/reviews"]
    b_id = "spiffe://cluster.local/ns/b/sa/ratings"
    a_applied = {p.log_path: applied(p) for p in (a_web, a_reviews)}
    b_applied = applied(b_ratings)
    for timeout in ("3s", "4s"):
        f = tmp_path / f"b-route-{timeout}.yaml"
        f.write_text(B_ROUTE.replace("TIMEOUT", timeout))
        r = m.ctl("apply", "-f", f, "--wait")
        assert "acknowledged by 3 sidecar(s)" in r.stdout, r.stdout
        version = int(re.search(r"version (\d+)", r.stdout).group(1))
        wait_until(lambda: proxies(m)[b_id][0] == version, what="b's sidecar sent the new version")
    time.sleep(1.5)   # room for a wrong push to land
    after = proxies(m)
    for ident in a_ids:
        assert after[ident][0] == before[ident][0], (ident, before[ident], after[ident])
        assert "ACK" in after[ident][1], after[ident]   # current for its scope, though not sent the version
    assert after[b_id][0] == version
    for p in (a_web, a_reviews):
        assert applied(p) == a_applied[p.log_path], p.log_path.read_text()[-2000:]
    assert applied(b_ratings)[-2:] == [str(version - 1), str(version)], applied(b_ratings)
    assert len(applied(b_ratings)) == len(b_applied) + 2
    # a's caller is unaffected and still cannot reach b.
    assert call(outbound, "ratings.b")[1].get("x-mesh-response-flags") == "NR"
    assert call(outbound, "reviews.a")[0].startswith("HTTP/1.1 200")
