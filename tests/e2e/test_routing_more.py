"""VirtualService routing gaps and local rate limiting end to end, through real sidecars over
mutual TLS (HTTP/2 hop), with curl (HTTP/1.1 and h2c) and nghttp: queryParams, authority, port,
sourceLabels, withoutHeaders and ignoreUriCase send each request to the right subset (the app
that answered says which) and a request that does not match goes elsewhere; redirects and
direct responses answered by the caller's sidecar; CORS preflights and actual requests;
a LocalRateLimit at 20 requests a second holding within 10 % over 3 s, the rest 429 RL and
counted, none of them reaching the app; and meshd storing and pushing LocalRateLimit."""

import json
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import Meshd, curl, free_port, http_get, server_config, wait_ready, wait_until

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: query
    match: [{queryParams: {v: {exact: "2"}}}, {queryParams: {beta: {exact: ""}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: authority
    match: [{authority: {prefix: "reviews.default"}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: port
    match: [{port: 9080}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: source
    match: [{sourceLabels: {app: productpage}, headers: {x-src: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: other-callers
    match: [{sourceLabels: {app: ratings}}, {sourceNamespace: other}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: without
    match: [{queryParams: {w: {exact: "1"}}, withoutHeaders: {x-skip: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: nocase
    match: [{uri: {exact: /ECHO}, ignoreUriCase: true, queryParams: {c: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: case
    match: [{uri: {exact: /ECHO}, queryParams: {c: {exact: "2"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - name: secure
    match: [{uri: {prefix: /secure}}]
    redirect: {scheme: https, authority: secure.example, derivePort: FROM_PROTOCOL_DEFAULT}
  - name: maintenance
    match: [{uri: {prefix: /down}}]
    directResponse: {status: 503, body: {string: "down for maintenance"}}
  - name: cors
    match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: "https://app.example"}, {regex: "https://.*\\\\.trusted\\\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-exposed]
      maxAge: 600s
      allowCredentials: true
    rewrite: {uri: /echo}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: cors-ignore
    match: [{uri: {prefix: /strict}}]
    corsPolicy: {allowOrigins: [{exact: "https://app.example"}], unmatchedPreflights: IGNORE}
    rewrite: {uri: /echo}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: limited
    match: [{uri: {prefix: /limited}}]
    rewrite: {uri: /}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: default
    route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: mesh.io/v1alpha1
kind: LocalRateLimit
metadata: {name: reviews-limited}
spec:
  virtualService: reviews
  routes: [limited]
  workloadSelector: {labels: {app: productpage}}
  tokenBucket: {maxTokens: 2, tokensPerFill: 2, fillInterval: 100ms}
"""


def caller_config(pki, outbound, admin, v1_inbound, v2_inbound, cluster_extra=""):
    return f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: productpage, namespace: default}}
spec:
  workload: {{service: productpage, labels: {{app: productpage}}}}
  concurrency: 2
  admin: {{port: {admin}}}
  tls:
    certChain: {pki}/client/cert-chain.pem
    privateKey: {pki}/client/key.pem
    trustBundle: {pki}/root-cert.pem
  outbound: {{port: {outbound}, headerTimeout: 2s}}
  clusters:
    - name: reviews
      tls: ISTIO_MUTUAL
      endpoints:
        - {{address: 127.0.0.1:{v1_inbound}, labels: {{version: v1}}}}
        - {{address: 127.0.0.1:{v2_inbound}, labels: {{version: v2}}}}
{cluster_extra}
---
{VS}
"""


class RoutingMesh:
    """The test client -> the caller's sidecar (productpage) -> mTLS (HTTP/2) -> the sidecars
    of reviews v1 and v2 -> their apps (named reviews-v1 and reviews-v2)."""

    def __init__(self, procs, pki, cluster_extra=""):
        self.apps = {}
        inbound = {}
        for v in ("v1", "v2"):
            self.apps[v] = procs.app(f"reviews-{v}")
            inbound[v], admin = free_port(), free_port()
            p = procs.sidecar(server_config(pki, f"reviews-{v}", inbound[v], admin, self.apps[v]), f"reviews-{v}")
            wait_ready(p, admin)
        self.outbound, self.admin = free_port(), free_port()
        self.caller = procs.sidecar(caller_config(pki, self.outbound, self.admin, inbound["v1"], inbound["v2"], cluster_extra), "caller")
        wait_ready(self.caller, self.admin)

    def hits(self, v):
        return json.loads(http_get(f"http://127.0.0.1:{self.apps[v]}/_hits")[1])["hits"]

    def get(self, path, host="reviews", headers=(), h2=False, method=None):
        """(status, headers dict (lowercase, last value), body) through the caller's sidecar."""
        args = ["-i", "-H", f"Host: {host}", f"http://127.0.0.1:{self.outbound}{path}"]
        if h2:
            args.insert(0, "--http2-prior-knowledge")
        if method:
            args[0:0] = ["-X", method]
        for h in headers:
            args[0:0] = ["-H", h]
        r = curl(*args)
        assert r.returncode == 0, r.stderr
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        hs = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            hs[k.strip().lower()] = v.strip()
        return status, hs, body

    def who(self, path, **kw):
        """Which app answered (reviews-v1 / reviews-v2), through /echo."""
        st, hs, body = self.get(path, **kw)
        assert st == 200, (st, hs, body)
        return json.loads(body)["name"]


@pytest.fixture
def rmesh(procs, pki):
    return RoutingMesh(procs, pki)


def scrape(admin):
    return http_get(f"http://127.0.0.1:{admin}/stats/prometheus")[1].decode()


SAMPLE = re.compile(r'^([a-z_]+)\{(.*)\} (\S+)$')


def series(text, name):
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2))), float(m.group(3))))
    return out


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "h2c"])
def test_each_match_kind_routes_to_its_subset_and_a_miss_does_not(rmesh, h2):
    who = lambda path, **kw: rmesh.who(path, h2=h2, **kw)  # noqa: E731
    # queryParams: the raw first value; exact "" is presence.
    assert who("/echo?v=2") == "reviews-v2"
    assert who("/echo?a=1&v=2") == "reviews-v2"
    assert who("/echo?v=3&v=2") == "reviews-v1"
    assert who("/echo?v=22") == "reviews-v1"
    assert who("/echo?beta") == "reviews-v2"
    assert who("/echo?betas=1") == "reviews-v1"
    # authority: the Host as sent.
    assert who("/echo", host="reviews.default.svc.cluster.local") == "reviews-v2"
    assert who("/echo", host="reviews") == "reviews-v1"
    # port: the port the caller named in Host.
    assert who("/echo", host="reviews:9080") == "reviews-v2"
    assert who("/echo", host="reviews:9081") == "reviews-v1"
    if not h2:
        # Through http_proxy: the port of the absolute URL.
        for url, want in [("http://reviews:9080/echo", "reviews-v2"), ("http://reviews/echo", "reviews-v1")]:
            r = curl("-x", f"http://127.0.0.1:{rmesh.outbound}", url)
            assert json.loads(r.stdout)["name"] == want, (url, r.stdout)
    # sourceLabels: this caller is app=productpage; the entries for other callers were dropped
    # (else "other-callers" would take every request from here on).
    assert who("/echo", headers=["x-src: 1"]) == "reviews-v2"
    assert who("/echo", headers=["x-src: 2"]) == "reviews-v1"
    # withoutHeaders: present and not matching.
    assert who("/echo?w=1", headers=["x-skip: 0"]) == "reviews-v2"
    assert who("/echo?w=1", headers=["x-skip: 1"]) == "reviews-v1"
    # ignoreUriCase: /echo matches /ECHO only where it is set.
    assert who("/echo?c=1") == "reviews-v2"
    assert who("/echo?c=2") == "reviews-v1"


def test_matches_with_nghttp_h2c(rmesh):
    if not shutil.which("nghttp"):
        pytest.skip("nghttp not installed")
    def body(path, *hdrs):
        args = ["nghttp", "-H", ":authority: reviews", *sum((["-H", h] for h in hdrs), []), f"http://127.0.0.1:{rmesh.outbound}{path}"]
        r = subprocess.run(args, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout
    assert json.loads(body("/echo?v=2"))["name"] == "reviews-v2"
    assert json.loads(body("/echo?v=1"))["name"] == "reviews-v1"
    assert json.loads(body("/echo?c=1"))["name"] == "reviews-v2"
    assert body("/down") == b"down for maintenance"


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "h2c"])
def test_redirect_and_direct_response_are_answered_by_the_sidecar(rmesh, h2):
    before = rmesh.hits("v1") + rmesh.hits("v2")
    st, hs, body = rmesh.get("/old/page?q=1", host="reviews:9081", h2=h2)
    assert st == 302 and hs["location"] == "http://reviews:9081/new?q=1", (st, hs)
    assert body == b"" and hs.get("content-length") == "0"
    assert "x-mesh-response-flags" not in hs
    st, hs, _ = rmesh.get("/secure/x", host="reviews:8080", h2=h2)
    assert st == 301 and hs["location"] == "https://secure.example/secure/x", (st, hs)
    st, hs, body = rmesh.get("/down/now", h2=h2)
    assert st == 503 and body == b"down for maintenance" and hs["content-type"] == "text/plain", (st, hs, body)
    assert "x-mesh-response-flags" not in hs
    # HEAD gets the head only.
    r = curl("-sI", "-H", "Host: reviews", f"http://127.0.0.1:{rmesh.outbound}/down")
    assert r.stdout.startswith(b"HTTP/1.1 503") and b"content-length: 20" in r.stdout.lower()
    assert rmesh.hits("v1") + rmesh.hits("v2") == before, "no upstream was asked"
    text = scrape(rmesh.admin)
    got = {(l["route"], l["response_code"]): v for l, v in series(text, "istio_requests_total") if l["reporter"] == "source"}
    assert got[("reviews.maintenance", "503")] >= 1 and got[("reviews.moved", "302")] == 1 and got[("reviews.secure", "301")] == 1, got
    kinds = {l["kind"]: v for l, v in series(text, "mesh_direct_replies_total")}
    assert kinds["redirect"] == 2 and kinds["direct_response"] == 2, kinds


@pytest.mark.parametrize("hop", ["h2-hop", "http1-hop"])
@pytest.mark.parametrize("h2", [False, True], ids=["http1", "h2c"])
def test_cors_preflight_actual_request_and_disallowed_origin(procs, pki, h2, hop):
    # The response headers are added whichever protocol the mTLS hop speaks.
    rmesh = RoutingMesh(procs, pki, "      protocol: HTTP1" if hop == "http1-hop" else "")
    before = rmesh.hits("v1")
    pre = ["Origin: https://app.example", "Access-Control-Request-Method: POST", "Access-Control-Request-Headers: x-custom"]
    st, hs, body = rmesh.get("/cors", headers=pre, h2=h2, method="OPTIONS")
    assert st == 200 and body == b"", (st, hs, body)
    assert hs["access-control-allow-origin"] == "https://app.example"
    assert hs["access-control-allow-methods"] == "GET,POST"
    assert hs["access-control-allow-headers"] == "x-custom"
    assert hs["access-control-max-age"] == "600"
    assert hs["access-control-allow-credentials"] == "true"
    assert "access-control-expose-headers" not in hs
    assert rmesh.hits("v1") == before, "an allowed preflight is answered by the sidecar"
    # A regex origin, on an actual request: the app answers, the sidecar adds the headers.
    st, hs, body = rmesh.get("/cors", headers=["Origin: https://a.trusted.example"], h2=h2)
    assert st == 200 and json.loads(body)["name"] == "reviews-v1"
    assert hs["access-control-allow-origin"] == "https://a.trusted.example"
    assert hs["access-control-allow-credentials"] == "true" and hs["access-control-expose-headers"] == "x-exposed"
    assert "access-control-allow-methods" not in hs
    # A disallowed origin: no CORS header at all; its preflight goes to the app (FORWARD).
    st, hs, body = rmesh.get("/cors", headers=["Origin: https://evil.example"], h2=h2)
    assert st == 200 and not [k for k in hs if k.startswith("access-control-")], hs
    n = rmesh.hits("v1")
    st, hs, body = rmesh.get("/cors", headers=["Origin: https://trusted.example.evil", "Access-Control-Request-Method: GET"], h2=h2, method="OPTIONS")
    assert not [k for k in hs if k.startswith("access-control-")], hs
    assert rmesh.hits("v1") == n + 1, "an unmatched preflight is forwarded"
    # unmatchedPreflights: IGNORE answers it here, 200 without CORS headers.
    st, hs, body = rmesh.get("/strict", headers=["Origin: https://evil.example", "Access-Control-Request-Method: GET"], h2=h2, method="OPTIONS")
    assert st == 200 and body == b"" and not [k for k in hs if k.startswith("access-control-")], hs
    assert rmesh.hits("v1") == n + 1
    # No Origin: not CORS.
    st, hs, body = rmesh.get("/cors", h2=h2)
    assert st == 200 and not [k for k in hs if k.startswith("access-control-")], hs


def test_local_rate_limit_holds_20_per_second_across_workers(rmesh):
    before = rmesh.hits("v1")
    codes = []
    flags = []
    lock = threading.Lock()
    end = time.monotonic() + 3.0

    def client():
        # Each thread its own keep-alive connection (spread over both workers by SO_REUSEPORT).
        s = socket.create_connection(("127.0.0.1", rmesh.outbound), timeout=5)
        f = s.makefile("rb")
        mine, fl = [], []
        while time.monotonic() < end:
            s.sendall(b"GET /limited HTTP/1.1\r\nHost: reviews\r\n\r\n")
            status = int(f.readline().split()[1])
            length, flag = 0, None
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.decode().partition(":")
                if k.lower() == "content-length":
                    length = int(v)
                if k.lower() == "x-mesh-response-flags":
                    flag = v.strip()
            f.read(length)
            mine.append(status)
            fl.append(flag)
        s.close()
        with lock:
            codes.extend(mine)
            flags.extend(fl)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = codes.count(200)
    limited = codes.count(429)
    # 20/s over 3 s is 60, plus the bucket's 2 at the start: within 10 % of 60.
    assert 54 <= ok <= 66, (ok, limited)
    assert ok + limited == len(codes) and limited > 3 * ok, (ok, limited)
    assert all(f == "RL" for c, f in zip(codes, flags) if c == 429)
    assert all(f is None for c, f in zip(codes, flags) if c == 200)
    assert rmesh.hits("v1") - before == ok, "a limited request never reaches the app"
    dump = json.loads(http_get(f"http://127.0.0.1:{rmesh.admin}/config_dump")[1])
    routes = {r["route"]: r for r in dump["bootstrap"]["virtual_service_routes"]}
    assert routes["reviews.limited"]["local_rate_limits"][0]["max_tokens"] == 2
    assert "local_rate_limits" not in routes["reviews.default"]
    assert routes["reviews.moved"]["redirect"] == {"status": 302, "uri": "/new"}
    assert routes["reviews.cors"]["cors"]["allow_methods"] == "GET,POST"
    assert "reviews.other-callers" not in routes, "the entries for other callers were dropped, and the route"
    text = scrape(rmesh.admin)
    rl = sum(v for l, v in series(text, "istio_requests_total")
             if l["route"] == "reviews.limited" and l["response_code"] == "429" and l["response_flags"] == "RL")
    assert rl == limited
    m = re.search(r"^mesh_local_rate_limited_total (\d+)", text, re.M)
    assert m and int(m.group(1)) == limited
    # The other routes are not limited.
    assert all(rmesh.get("/echo")[0] == 200 for _ in range(10))
    # h2c: the same bucket (refilled by now: 2 tokens, then 429 RL).
    time.sleep(0.3)
    if not shutil.which("nghttp"):
        return
    url = f"http://127.0.0.1:{rmesh.outbound}/limited"
    r = subprocess.run(["nghttp", "-nv", "-H", ":authority: reviews", *[f"{url}?i={i}" for i in range(8)]], capture_output=True, timeout=30)
    out = r.stdout.decode()
    statuses = re.findall(r"recv \(stream_id=\d+\) :status: (\d+)", out)
    assert len(statuses) == 8, out[-2000:]
    assert statuses.count("429") >= 4, statuses
    assert len(re.findall(r"recv \(stream_id=\d+\) x-mesh-response-flags: RL", out)) == statuses.count("429"), out[-2000:]


def test_meshd_stores_and_pushes_local_rate_limit(procs):
    m = Meshd(procs)
    p, admin, _, outbound = m.sidecar("caller", "productpage", extra=["--label", "app=productpage"])
    d = procs.tmp
    bad = d / "bad.yaml"
    bad.write_text("""apiVersion: mesh.io/v1alpha1
kind: LocalRateLimit
metadata: {name: lim}
spec:
  virtualService: shop
  tokenBucket: {maxTokens: 2, fillInterval: 10ms}
""")
    r = m.ctl("apply", "-f", bad, check=False)
    assert r.returncode != 0 and "bad.yaml:6" in r.stderr and "spec.tokenBucket.fillInterval" in r.stderr, r.stderr
    good = d / "good.yaml"
    good.write_text("""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop]
  http:
  - name: closed
    directResponse: {status: 200, body: {string: "open"}}
---
apiVersion: mesh.io/v1alpha1
kind: LocalRateLimit
metadata: {name: lim}
spec:
  virtualService: shop
  routes: [closed]
  tokenBucket: {maxTokens: 3, tokensPerFill: 1, fillInterval: 1h}
""")
    # Alone, the limit names a VirtualService meshd does not have: refused by name.
    alone = d / "alone.yaml"
    alone.write_text(good.read_text().split("---\n", 1)[1])
    r = m.ctl("apply", "-f", alone, check=False)
    assert r.returncode != 0 and "no VirtualService default/shop" in r.stderr, r.stderr
    m.ctl("apply", "-f", good, "--wait")
    vs_only = d / "vs-only.yaml"
    vs_only.write_text(good.read_text().split("---\n", 1)[0])
    def codes():
        return [int(curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: shop", f"http://127.0.0.1:{outbound}/").stdout)
                for _ in range(5)]
    got = wait_until(lambda: (lambda c: c if c[0] in (200, 429) else None)(codes()), what="the pushed routes")
    assert got.count(200) <= 3 and got[-2:] == [429, 429], got
    # The VirtualService cannot go before the limit that names it; both at once can.
    r = m.ctl("delete", "-f", vs_only, check=False)
    assert r.returncode != 0 and "no VirtualService default/shop" in r.stderr, r.stderr
    m.ctl("delete", "-f", good)
