"""Traffic management end to end: VirtualService/DestinationRule documents in a static config,
with real sidecar processes, real apps (tools/upstream.py) and real clients (curl, h2load).
Each app counts the requests it served (/_hits), so splits, retries and ejections are checked
where the requests landed, not only in the proxy's own counters."""

import json
import re
import subprocess
import threading
import time

from conftest import curl, free_port, http_get, server_config, stats, wait_ready, wait_until


def hits(port):
    return json.loads(http_get(f"http://127.0.0.1:{port}/_hits")[1])["hits"]


def set_fail(port, status, delay_ms=0):
    http_get(f"http://127.0.0.1:{port}/_control?fail={status}&delay={delay_ms}")


def outbound_config(outbound, admin, endpoints, docs, extra_cluster="", tls_block="", cluster_tls="DISABLE"):
    """A caller's sidecar with one cluster `reviews`; `endpoints` is [(port, version)]; `docs`
    are the VirtualService/DestinationRule documents appended after the Bootstrap."""
    eps = "\n".join(f"        - address: 127.0.0.1:{p}\n          labels: {{version: {v}}}" for p, v in endpoints)
    return f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: front, namespace: default}}
spec:
  workload: {{service: productpage}}
  concurrency: 1
  admin: {{port: {admin}}}
{tls_block}
  outbound:
    port: {outbound}
    headerTimeout: 2s
  clusters:
    - name: reviews
      tls: {cluster_tls}
      endpoints:
{eps}
{extra_cluster}
---
{docs}
"""


def subsets_rule(policy=""):
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
{policy}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
"""


def split_service(w1, w2):
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - name: canary
    route:
    - destination: {{host: reviews, subset: v1}}
      weight: {w1}
    - destination: {{host: reviews, subset: v2}}
      weight: {w2}
"""


def proxy(procs, endpoints, docs, **kw):
    outbound, admin = free_port(), free_port()
    p = procs.sidecar(outbound_config(outbound, admin, endpoints, docs, **kw), "front")
    wait_ready(p, admin)
    return outbound, admin, p


def h2load(url, n, c, extra=()):
    r = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", str(c), *extra, url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", r.stdout)
    assert m, r.stdout
    return [int(x) for x in m.groups()]


def get(outbound, path, host="reviews", headers=()):
    args = ["-i", "-H", f"Host: {host}"]
    for h in headers:
        args += ["-H", h]
    r = curl(*args, f"http://127.0.0.1:{outbound}{path}")
    text = r.stdout.decode(errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
    hdrs = {}
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        hdrs.setdefault(k.strip().lower(), v.strip())
    return status, hdrs, body


def test_weighted_split_lands_within_1_5_points(procs):
    v1, v2 = procs.app("v1"), procs.app("v2")
    eps = [(v1, "v1"), (v2, "v2")]
    for w1, w2 in [(90, 10), (50, 50)]:
        before1, before2 = hits(v1), hits(v2)
        outbound, admin, p = proxy(procs, eps, split_service(w1, w2) + "---" + subsets_rule())
        codes = h2load(f"http://127.0.0.1:{outbound}/", 10_000, 8, ["-H", ":authority: reviews"])
        assert codes == [10_000, 0, 0, 0]
        n1, n2 = hits(v1) - before1, hits(v2) - before2
        assert n1 + n2 == 10_000
        share = 100.0 * n1 / 10_000
        assert abs(share - w1) <= 1.5, f"{w1}/{w2} split sent {share:.2f}% to v1"
        p.kill()
        p.wait()


MATCHING = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
    headers:
      request:
        set: {x-routed-by: jason}
        remove: [x-secret]
      response:
        add: {x-canary: "yes"}
        remove: [x-app-debug]
  - name: v2-api
    match:
    - uri: {prefix: /v2/}
    rewrite: {uri: /}
    route:
    - destination: {host: reviews, subset: v2}
  - name: delete
    match:
    - method: {exact: DELETE}
      uri: {regex: "/items/[0-9]+"}
    route:
    - destination: {host: reviews, subset: v2}
  - name: only-echo
    match:
    - uri: {exact: /echo}
    - uri: {prefix: /status/}
    route:
    - destination: {host: reviews, subset: v1}
  - name: ghost
    match:
    - uri: {prefix: /ghost}
    route:
    - destination: {host: reviews, subset: v3}
---
""" + subsets_rule().replace("""  - name: v2
    labels: {version: v2}""", """  - name: v2
    labels: {version: v2}
  - name: v3
    labels: {version: v3}""")


def test_header_and_uri_match_routing(procs):
    v1, v2 = procs.app("v1"), procs.app("v2")
    outbound, admin, _ = proxy(procs, [(v1, "v1"), (v2, "v2")], MATCHING)

    # Header match: end-user=jason goes to v2, with the route's request and response header ops.
    st, hdrs, body = get(outbound, "/echo", headers=["end-user: jason", "x-secret: s3cret", "x-routed-by: forged"])
    assert st == 200
    echo = json.loads(body)
    assert echo["name"] == "v2"
    assert echo["headers"]["x-routed-by"] == ["jason"], "set replaces what the client sent"
    assert "x-secret" not in echo["headers"]
    assert hdrs.get("x-canary") == "yes"
    st, hdrs, body = get(outbound, "/echo", headers=["end-user: jasonx"])
    assert json.loads(body)["name"] == "v1", "exact means exact"
    assert "x-canary" not in hdrs

    # Prefix match with rewrite: /v2/echo reaches v2 as /echo.
    st, _, body = get(outbound, "/v2/echo?q=1")
    echo = json.loads(body)
    assert (echo["name"], echo["path"]) == ("v2", "/echo?q=1")

    # Method + regex (full match) together.
    v2_before = hits(v2)
    r = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/items/42")
    assert r.stdout == b"404"   # the app has no /items; what matters is where it went
    assert hits(v2) == v2_before + 1
    r = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/items/42x")
    assert r.stdout == b"404"
    assert hits(v2) == v2_before + 1

    # Exact or prefix entries of one route; anything else matches no route: 404 NR.
    st, _, body = get(outbound, "/status/201")
    assert st == 201
    st, hdrs, body = get(outbound, "/")
    assert st == 404 and hdrs.get("x-mesh-response-flags") == "NR", body
    # A subset that selects no endpoint: 503 UH.
    st, hdrs, _ = get(outbound, "/ghost")
    assert st == 503 and hdrs.get("x-mesh-response-flags") == "UH"


def retry_service(retries, path_prefix="/"):
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - name: main
    route:
    - destination: {{host: reviews}}
{retries}
"""


def test_retries_hide_an_upstream_failing_every_other_request(procs):
    app = procs.app("v1")
    outbound, admin, _ = proxy(procs, [(app, "v1")], retry_service("    retries: {attempts: 2, retryOn: 5xx}"))
    # One client: the app's failures strictly alternate, so each failed try's retry succeeds.
    codes = h2load(f"http://127.0.0.1:{outbound}/flaky?every=2", 300, 1, ["-H", ":authority: reviews"])
    assert codes == [300, 0, 0, 0]
    s = stats(admin)
    assert s["retries_on_status"] >= 140, s
    # Control: without retries on 5xx the same upstream fails half the requests.
    out2, admin2, _ = proxy(procs, [(app, "v1")], retry_service(""))
    codes = h2load(f"http://127.0.0.1:{out2}/flaky?every=2", 300, 1, ["-H", ":authority: reviews"])
    assert 140 <= codes[3] <= 160, codes


def test_retries_over_the_mtls_http2_hop(procs, pki):
    """The default sidecar-to-sidecar path (HTTP/2 over mTLS): 503s from the far side are retried."""
    app = procs.app("server")
    inbound, sadmin = free_port(), free_port()
    srv = procs.sidecar(server_config(pki, "server-sidecar", inbound, sadmin, app), "server")
    wait_ready(srv, sadmin)
    tls = f"""  tls:
    certChain: {pki}/client/cert-chain.pem
    privateKey: {pki}/client/key.pem
    trustBundle: {pki}/root-cert.pem"""
    outbound, admin, _ = proxy(procs, [(inbound, "v1")], retry_service("    retries: {attempts: 3, retryOn: gateway-error}"),
                               tls_block=tls, cluster_tls="ISTIO_MUTUAL")
    before = hits(app)
    codes = h2load(f"http://127.0.0.1:{outbound}/flaky?every=2", 200, 1, ["-H", ":authority: reviews"])
    assert codes == [200, 0, 0, 0]
    assert hits(app) - before >= 290, "each failed attempt reached the app"
    assert stats(admin)["http2_upstream_connections_total"] >= 1
    # A POST body is replayed on the retry (it was buffered).
    r = curl("-s", "-H", "Host: reviews", "--data-binary", "x" * 5000, f"http://127.0.0.1:{outbound}/flaky?every=2")
    r2 = curl("-s", "-H", "Host: reviews", "--data-binary", "x" * 5000, f"http://127.0.0.1:{outbound}/flaky?every=2")
    assert r.stdout.startswith(b"ok from") and r2.stdout.startswith(b"ok from")


def test_per_try_timeout_against_a_slow_upstream(procs):
    slow, fast = procs.app("slow"), procs.app("fast")
    docs = retry_service("    timeout: 5s\n    retries: {attempts: 2, perTryTimeout: 300ms, retryOn: reset}")
    # One endpoint, always slow: three attempts of 300 ms, then 504 UT.
    outbound, admin, _ = proxy(procs, [(slow, "v1")], docs)
    t0 = time.monotonic()
    st, hdrs, _ = get(outbound, "/slow?ms=3000")
    took = time.monotonic() - t0
    assert st == 504 and hdrs.get("x-mesh-response-flags") == "UT"
    assert 0.85 <= took < 2.0, took
    assert stats(admin)["retries_on_per_try_timeout"] == 2
    # Two endpoints, one slow: a try that times out there is retried on the other one.
    set_fail(slow, 0, delay_ms=3000)
    out2, admin2, _ = proxy(procs, [(slow, "v1"), (fast, "v1")],
                            retry_service("    retries: {attempts: 2, perTryTimeout: 300ms, retryOn: reset}"))
    fast_before = hits(fast)
    for _ in range(6):
        t0 = time.monotonic()
        st, _, body = get(out2, "/")
        assert st == 200 and body == "hello from fast\n"
        assert time.monotonic() - t0 < 1.0
    assert hits(fast) - fast_before == 6
    assert stats(admin2)["retries_on_per_try_timeout"] >= 2


def test_ejected_endpoint_stops_receiving_traffic_and_comes_back(procs):
    bad, good = procs.app("bad"), procs.app("good")
    policy = """  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}"""
    docs = retry_service("    retries: {attempts: 0}") + "---" + subsets_rule(policy)
    outbound, admin, _ = proxy(procs, [(bad, "v1"), (good, "v1")], docs)
    set_fail(bad, 503)
    codes = [get(outbound, "/")[0] for _ in range(12)]
    assert codes.count(503) == 3, codes   # round robin: the 3rd consecutive 503 ejects it
    assert stats(admin)["outlier_ejections"] == 1
    bad_hits = hits(bad)
    eps = json.loads(http_get(f"http://127.0.0.1:{admin}/clusters")[1])["clusters"][0]["endpoints"]
    assert [e["health_status"] for e in eps] == ["EJECTED", "HEALTHY"], eps
    assert 0 < eps[0]["ejected_for_ms"] <= 2000 and eps[0]["ejections_total"] == 1
    dump = json.loads(http_get(f"http://127.0.0.1:{admin}/config_dump")[1])
    pol = [c for c in dump["bootstrap"]["cluster_policies"] if c["cluster"] == "reviews"][0]
    assert pol["outlier_detection"]["consecutive_5xx"] == 3
    assert dump["bootstrap"]["virtual_service_routes"][0]["retries"]["attempts"] == 0
    codes = [get(outbound, "/")[0] for _ in range(20)]
    assert codes == [200] * 20
    assert hits(bad) == bad_hits, "an ejected endpoint gets no traffic"
    # Healthy again and past its ejection time: it gets its share back.
    set_fail(bad, 0)
    time.sleep(2.3)
    for _ in range(20):
        assert get(outbound, "/")[0] == 200
    assert hits(bad) - bad_hits >= 8
    _, body = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    assert re.search(rb"mesh_outlier_ejections_total 1\b", body)
    # Healthy for two intervals: the ejection multiplier went back down, so a new ejection lasts
    # the base time again (2 s), not twice it, as Envoy does.
    time.sleep(2.2)
    set_fail(bad, 503)
    codes = [get(outbound, "/")[0] for _ in range(8)]
    assert codes.count(503) == 3, codes
    eps = json.loads(http_get(f"http://127.0.0.1:{admin}/clusters")[1])["clusters"][0]["endpoints"]
    assert eps[0]["health_status"] == "EJECTED" and eps[0]["ejections_total"] == 2, eps
    assert 0 < eps[0]["ejected_for_ms"] <= 2000, eps


def test_retry_budget_caps_retries_when_every_upstream_fails(procs):
    a, b = procs.app("a"), procs.app("b")
    docs = retry_service("    retries: {attempts: 5, retryOn: 5xx}")
    outbound, admin, _ = proxy(procs, [(a, "v1"), (b, "v1")], docs)
    set_fail(a, 503)
    set_fail(b, 503)
    # A lone request is still retried: 1 + 5 attempts.
    before = hits(a) + hits(b)
    st, hdrs, _ = get(outbound, "/")
    assert st == 503 and hdrs.get("x-mesh-response-flags") == "URX"
    assert hits(a) + hits(b) - before == 6
    # Under concurrent load the budget (20% of active requests, at least 3) caps retries.
    before = hits(a) + hits(b)
    codes = h2load(f"http://127.0.0.1:{outbound}/", 600, 60, ["-H", ":authority: reviews"])
    assert codes[3] == 600
    attempts = hits(a) + hits(b) - before
    s = stats(admin)
    assert s["retries_refused_by_budget"] > 0, s
    assert attempts < 600 * 6 * 0.6, f"{attempts} upstream attempts for 600 requests: a retry storm"
    _, body = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    assert b'response_flags="URX"' in body


def test_burst_of_resets_from_a_dying_endpoint_is_retried_on_the_other(procs):
    """An endpoint that dies with many requests in flight resets them all at once. The concurrent
    budget alone (20% of requests in flight, at least 3) would fail most of them; the rate part
    of the budget lets each go to the healthy endpoint, so no request fails."""
    import socket
    import struct
    from rawserver import ThreadedServer
    pending, lock, reset_now = [], threading.Lock(), threading.Event()

    def dying(_, c):
        data = b""
        while b"\r\n\r\n" not in data:
            b = c.recv(65536)
            if not b:
                return
            data += b
        with lock:
            pending.append(c)
            if len(pending) >= 8:
                reset_now.set()
        reset_now.wait(5)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # RST

    dead = ThreadedServer(dying)
    good = procs.app("good")
    docs = retry_service("    retries: {attempts: 2, retryOn: reset}")
    outbound, admin, _ = proxy(procs, [(dead.port, "v1"), (good, "v1")], docs)
    # Warm up on the good endpoint only would skew round robin; go straight to the burst.
    results = []

    def one():
        results.append(get(outbound, "/")[0])
    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    dead.close()
    assert reset_now.is_set(), f"only {len(pending)} requests reached the dying endpoint"
    assert results == [200] * 16, results
    s = stats(admin)
    assert s["retries_on_reset"] >= 8 and s["retries_refused_by_budget"] == 0, s


def test_fault_injection_percentages(procs):
    app = procs.app("v1")
    docs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: delayed
    match:
    - uri: {prefix: /slow}
    fault:
      delay: {fixedDelay: 300ms, percentage: {value: 100}}
    route:
    - destination: {host: reviews}
  - name: aborted
    fault:
      abort: {httpStatus: 418, percentage: {value: 30}}
    route:
    - destination: {host: reviews}
"""
    outbound, admin, _ = proxy(procs, [(app, "v1")], docs)
    before = hits(app)
    codes = h2load(f"http://127.0.0.1:{outbound}/", 4000, 8, ["-H", ":authority: reviews"])
    aborted = codes[2]
    assert codes[0] + aborted == 4000
    assert abs(100.0 * aborted / 4000 - 30) <= 3, codes
    assert hits(app) - before == 4000 - aborted, "aborted requests never reach the app"
    st, hdrs, body = get(outbound, "/")
    while st != 418:
        st, hdrs, body = get(outbound, "/")
    assert hdrs.get("x-mesh-response-flags") == "FI" and "fault filter abort" in body
    t0 = time.monotonic()
    st, _, _ = get(outbound, "/slow?ms=0")
    assert st == 200 and time.monotonic() - t0 >= 0.3
    assert stats(admin)["fault_delays"] == 1


def test_pool_overflow_answers_503_at_once(procs):
    app = procs.app("v1")
    policy = """  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}"""
    docs = retry_service("") + "---" + subsets_rule(policy)
    outbound, admin, _ = proxy(procs, [(app, "v1")], docs, extra_cluster="      protocol: HTTP1")
    results = []

    def one():
        t0 = time.monotonic()
        st, hdrs, body = get(outbound, "/slow?ms=800")
        results.append((st, hdrs.get("x-mesh-response-flags"), time.monotonic() - t0, body))

    ts = [threading.Thread(target=one) for _ in range(4)]
    for t in ts:
        t.start()
        time.sleep(0.05)
    for t in ts:
        t.join()
    ok = [r for r in results if r[0] == 200]
    over = [r for r in results if r[0] == 503]
    assert len(ok) == 2, results        # one on the connection, one waiting in the queue
    assert len(over) == 2, results
    for st, flag, took, body in over:
        assert flag == "UO" and took < 0.5 and "overflow" in body
    assert max(r[2] for r in ok) >= 1.5, "the queued request waited for the connection"


def h2c_load(url, n, c):
    r = subprocess.run(["h2load", "-n", str(n), "-c", str(c), "-H", ":authority: reviews", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "h2c" in r.stdout, r.stdout
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", r.stdout)
    return [int(x) for x in m.groups()]


def test_routing_split_and_retries_for_h2c_apps_over_mtls(procs, pki):
    """An app speaking h2c (prior knowledge) to its sidecar: the same routes, splits and retries,
    carried over the HTTP/2 mTLS hop to two destination sidecars (v1 and v2)."""
    apps, inbounds = {}, {}
    for v in ("v1", "v2"):
        apps[v] = procs.app(v)
        inbounds[v], admin = free_port(), free_port()
        srv = procs.sidecar(server_config(pki, f"server-{v}", inbounds[v], admin, apps[v]), f"server-{v}")
        wait_ready(srv, admin)
    tls = f"""  tls:
    certChain: {pki}/client/cert-chain.pem
    privateKey: {pki}/client/key.pem
    trustBundle: {pki}/root-cert.pem"""
    docs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
    headers:
      response: {set: {x-route: jason}}
  - name: v2-api
    match:
    - uri: {prefix: /v2/}
    rewrite: {uri: /}
    route:
    - destination: {host: reviews, subset: v2}
  - name: flaky
    match:
    - uri: {prefix: /flaky}
    retries: {attempts: 2, retryOn: 5xx}
    route:
    - destination: {host: reviews, subset: v1}
  - name: split
    route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
---
""" + subsets_rule()
    outbound, admin, _ = proxy(procs, [(inbounds["v1"], "v1"), (inbounds["v2"], "v2")], docs,
                               tls_block=tls, cluster_tls="ISTIO_MUTUAL")
    b1, b2 = hits(apps["v1"]), hits(apps["v2"])
    assert h2c_load(f"http://127.0.0.1:{outbound}/", 2000, 4) == [2000, 0, 0, 0]
    n1, n2 = hits(apps["v1"]) - b1, hits(apps["v2"]) - b2
    assert n1 + n2 == 2000 and abs(100.0 * n1 / 2000 - 80) <= 3, (n1, n2)

    r = subprocess.run(["nghttp", "-v", "-H", ":authority: reviews", "-H", "end-user: jason", f"http://127.0.0.1:{outbound}/echo"],
                       capture_output=True, text=True, timeout=30)
    assert '"name": "v2"' in r.stdout, r.stdout
    assert "x-route: jason" in r.stdout
    r = subprocess.run(["nghttp", "-H", ":authority: reviews", f"http://127.0.0.1:{outbound}/v2/echo?q=1"],
                       capture_output=True, text=True, timeout=30)
    echo = json.loads(r.stdout)
    assert (echo["name"], echo["path"]) == ("v2", "/echo?q=1"), "rewrite on the HTTP/2 path"

    assert h2c_load(f"http://127.0.0.1:{outbound}/flaky?every=2", 100, 1) == [100, 0, 0, 0]
    assert stats(admin)["retries_on_status"] >= 45


def test_mirror_copies_requests_without_slowing_them(procs):
    main, shadow = procs.app("v1"), procs.app("v2")
    docs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: mirrored
    match:
    - uri: {prefix: /echo}
    route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100}
  - name: sampled
    route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 25}
---
""" + subsets_rule()
    outbound, admin, _ = proxy(procs, [(main, "v1"), (shadow, "v2")], docs)
    m0, s0 = hits(main), hits(shadow)
    for i in range(20):
        r = curl("-s", "-H", "Host: reviews", "--data-binary", f"body-{i}", f"http://127.0.0.1:{outbound}/echo")
        assert json.loads(r.stdout)["name"] == "v1"
    wait_until(lambda: hits(shadow) - s0 == 20, what="20 mirrored requests")
    assert hits(main) - m0 == 20
    h = json.loads(http_get(f"http://127.0.0.1:{shadow}/_hits")[1])
    assert h["last_host"] == "reviews-shadow"
    # h2c from the app is mirrored the same way (one exchange for every protocol path).
    s_h2 = hits(shadow)
    for i in range(10):
        r = curl("-s", "--http2-prior-knowledge", "-H", "Host: reviews", "--data-binary", f"h2-{i}", f"http://127.0.0.1:{outbound}/echo")
        assert json.loads(r.stdout)["name"] == "v1", r.stdout
    wait_until(lambda: hits(shadow) - s_h2 == 10, what="10 mirrored h2c requests")
    assert json.loads(http_get(f"http://127.0.0.1:{shadow}/_hits")[1])["last_host"] == "reviews-shadow"
    # 25% of 2000 requests are mirrored.
    s1 = hits(shadow)
    assert h2load(f"http://127.0.0.1:{outbound}/", 2000, 4, ["-H", ":authority: reviews"]) == [2000, 0, 0, 0]
    wait_until(lambda: stats(admin)["mirror_requests"] >= 30 + 400, timeout=10, what="mirrors sent")
    wait_until(lambda: hits(shadow) - s1 == stats(admin)["mirror_requests"] - 30, what="mirrors served")
    assert abs(100.0 * (hits(shadow) - s1) / 2000 - 25) <= 3.5
    # A slow mirror target never slows the main request.
    set_fail(shadow, 0, delay_ms=2000)
    t0 = time.monotonic()
    for _ in range(5):
        st, _, body = get(outbound, "/echo")
        assert st == 200 and json.loads(body)["name"] == "v1"
    assert time.monotonic() - t0 < 1.0


def test_queued_request_takes_the_connection_freed_on_another_endpoint(procs):
    """maxConnections 1 over three endpoints: a queued request is served as soon as the one
    connection is back in its pool, whichever endpoint the balancer would pick next."""
    apps = [procs.app("v1"), procs.app("v1"), procs.app("v1")]
    policy = """  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 10}"""
    docs = retry_service("") + "---" + subsets_rule(policy)
    outbound, admin, _ = proxy(procs, [(a, "v1") for a in apps], docs, extra_cluster="      protocol: HTTP1")
    res = {}

    def one(k, ms):
        t0 = time.monotonic()
        st, _, _ = get(outbound, f"/slow?ms={ms}")
        res[k] = (st, time.monotonic() - t0)

    a = threading.Thread(target=one, args=("first", 500))
    a.start()
    time.sleep(0.1)
    b = threading.Thread(target=one, args=("queued", 0))
    b.start()
    a.join()
    b.join()
    assert res["first"][0] == 200 and res["queued"][0] == 200, res
    assert res["queued"][1] < 1.0, res   # not the pooled connection's 4 s idle timeout


def test_h2c_stream_timers_work_on_reused_streams(procs):
    """HTTP/2 stream objects are reused; a timer armed and dropped by an earlier stream must not
    silence the next one's (fault delay, back-off, timeouts)."""
    docs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: delayed
    match:
    - uri: {prefix: /slow}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 100}}
      abort: {httpStatus: 418, percentage: {value: 100}}
    route:
    - destination: {host: reviews}
  - name: timed
    timeout: 1s
    route:
    - destination: {host: reviews}
"""
    outbound, admin, _ = proxy(procs, [(free_port(), "v1")], docs, extra_cluster="      protocol: HTTP1")

    def nghttp(path):
        t0 = time.monotonic()
        r = subprocess.run(["nghttp", "-v", "-t", "5", "-H", ":authority: reviews", f"http://127.0.0.1:{outbound}{path}"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout, time.monotonic() - t0

    out, _ = nghttp("/slow")
    assert ":status: 418" in out
    out, _ = nghttp("/")          # arms the 1 s route timer, then ends early (nothing listens there: 503 UF)
    assert ":status: 503" in out and "x-mesh-response-flags: UF" in out
    time.sleep(1.3)
    out, took = nghttp("/slow")
    assert ":status: 418" in out and took < 1.5, (took, out[-400:])


def test_sighup_reload_under_traffic(procs, tmp_path):
    """Static mode re-reads its file on SIGHUP: the split moves for new requests, requests in
    flight finish on the config they started with, a refused file changes nothing, and a new
    endpoint set (new pools) applies while a slow request on the old one completes."""
    import signal as sig
    v1, v2, v3 = procs.app("v1"), procs.app("v2"), procs.app("v3")
    outbound, admin = free_port(), free_port()
    eps = [(v1, "v1"), (v2, "v2")]
    cfg = outbound_config(outbound, admin, eps, split_service(100, 0) + "---" + subsets_rule())
    p = procs.sidecar(cfg, "reloading")
    wait_ready(p, admin)
    path = procs.tmp / "reloading.yaml"
    failures, served = [], {"v1": 0, "v2": 0, "v3": 0}
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            st, _, body = get(outbound, "/")
            if st != 200:
                failures.append((st, body))
            else:
                served[body.strip().split()[-1]] += 1

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        path.write_text(outbound_config(outbound, admin, eps, split_service(0, 100) + "---" + subsets_rule()))
        p.send_signal(sig.SIGHUP)
        wait_until(lambda: "applied as config version static-2" in p.log_path.read_text(), what="reload applied")
        before = dict(served)
        time.sleep(0.5)
        assert served["v1"] == before["v1"] or served["v1"] - before["v1"] <= 2, served   # new requests go to v2
        assert served["v2"] > before["v2"]

        # A refused file: the config in force stays.
        path.write_text(cfg.replace("weight: 100", "weight: 90"))
        p.send_signal(sig.SIGHUP)
        wait_until(lambda: "the config in force stays" in p.log_path.read_text(), what="refusal logged")
        mid = dict(served)
        time.sleep(0.5)
        assert served["v2"] > mid["v2"] and served["v1"] == mid["v1"]

        # New endpoints (new pools) while a slow request is in flight on the old ones.
        slow = {}
        s_thread = threading.Thread(target=lambda: slow.update(r=get(outbound, "/slow?ms=1500")))
        s_thread.start()
        time.sleep(0.3)
        eps3 = [(v1, "v1"), (v2, "v2"), (v3, "v3")]
        rule3 = subsets_rule().replace("  - name: v2\n    labels: {version: v2}", "  - name: v2\n    labels: {version: v2}\n  - name: v3\n    labels: {version: v3}")
        vs3 = split_service(0, 100).replace("subset: v2}", "subset: v3}")
        path.write_text(outbound_config(outbound, admin, eps3, vs3 + "---" + rule3))
        p.send_signal(sig.SIGHUP)
        wait_until(lambda: "config version static-4" in p.log_path.read_text(), what="third config applied")
        s_thread.join()
        assert slow["r"][0] == 200, slow
        time.sleep(0.5)
        assert served["v3"] > 0
    finally:
        stop.set()
        t.join()
    assert failures == [], failures[:5]
    _, body = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    assert b'mesh_config_version_info{version="static-4"} 1' in body
    assert body.count(b'istio_requests_total{') >= 1 and b'route="reviews.canary"' in body
