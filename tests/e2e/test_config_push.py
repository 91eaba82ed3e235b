"""meshd's config store and push, with real processes: three sidecars in mesh mode (two
versions of reviews and a caller), `meshctl apply` moving a canary split under continuous
traffic, meshd restarted under traffic, refused input, and --config-dir. What sidecars would
refuse is refused by meshd at apply: see test_config_integrity.py."""

import threading
import time

from conftest import Meshd, curl, free_port, http_get, wait_until

SPLIT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: canary
    route:
    - destination: {host: reviews, subset: v1}
      weight: W1
    - destination: {host: reviews, subset: v2}
      weight: W2
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def mesh(procs, **kw):
    m = Meshd(procs, **kw)
    v1, v2 = procs.app("v1"), procs.app("v2")
    m.sidecar("reviews-v1", "reviews", app_port=v1, extra=["--label", "version=v1"])
    m.sidecar("reviews-v2", "reviews", app_port=v2, extra=["--label", "version=v2"])
    _, cadmin, _, outbound = m.sidecar("productpage", "productpage")
    wait_until(lambda: m.ctl("get", "services").stdout.count("reviews.default") == 2, what="both versions registered")
    wait_until(lambda: curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout.startswith(b"hello"), what="routing pushed")
    return m, outbound, cadmin


class Traffic:
    """Requests on fresh connections, back to back, recording (time, answer)."""

    def __init__(self, outbound):
        self.outbound, self.log, self.failures = outbound, [], []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run)
        self.t.start()

    def run(self):
        import urllib.request
        while not self.stop.is_set():
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{self.outbound}/", headers={"Host": "reviews"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    self.log.append((time.monotonic(), r.read().decode().strip().split()[-1]))
            except Exception as e:  # noqa: BLE001
                self.failures.append((time.monotonic(), repr(e)))
            time.sleep(0.005)

    def between(self, a, b):
        return [v for t, v in self.log if a <= t < b]

    def close(self):
        self.stop.set()
        self.t.join()


def apply(m, tmp, w1, w2, wait=False):
    f = tmp / f"split-{w1}-{w2}.yaml"
    f.write_text(SPLIT.replace("W1", str(w1)).replace("W2", str(w2)))
    t = time.monotonic()
    r = m.ctl("apply", "-f", f, *(["--wait"] if wait else []))
    return t, r


def test_split_follows_each_apply_within_a_second(procs, tmp_path):
    m, outbound, _ = mesh(procs)
    traffic = Traffic(outbound)
    try:
        marks = []
        for w1, w2 in [(100, 0), (90, 10), (0, 100)]:
            t, r = apply(m, tmp_path, w1, w2)
            assert r.stdout.startswith("applied: version"), r.stdout
            marks.append((t, w1))
            time.sleep(4)
        end = time.monotonic()
    finally:
        traffic.close()
    assert traffic.failures == [], traffic.failures[:5]
    for i, (t, w1) in enumerate(marks):
        until = marks[i + 1][0] if i + 1 < len(marks) else end
        seen = traffic.between(t + 1.0, until)
        assert len(seen) > 100, (w1, len(seen))
        share = 100.0 * seen.count("v1") / len(seen)
        if w1 in (0, 100):
            assert share == w1, (w1, share)
        else:
            assert abs(share - w1) <= 6, (w1, share)
    # meshd's view: every sidecar ACKed the last version.
    status = m.ctl("status").stdout
    version = status.splitlines()[0].split()[-1]
    assert status.count("\tACK") == 3 and f"acked {version}" in status, status


def test_meshd_restart_under_traffic(procs, tmp_path):
    m, outbound, _ = mesh(procs)
    apply(m, tmp_path, 100, 0, wait=True)
    traffic = Traffic(outbound)
    try:
        time.sleep(1)
        m.proc.kill()
        m.proc.wait()
        time.sleep(3)
        m.start()
        wait_until(lambda: m.ctl("status").stdout.count("\tconnected\t") == 3, timeout=30, what="proxies reconnected")
        assert m.ctl("get", "services").stdout.count("reviews.default") == 2
        t, r = apply(m, tmp_path, 0, 100, wait=True)
        time.sleep(1.5)
        seen = traffic.between(t + 1.0, time.monotonic())
    finally:
        traffic.close()
    assert traffic.failures == [], traffic.failures[:5]
    assert seen and set(seen) == {"v2"}, seen[:10]
    # What was applied survives the restart.
    assert ("VirtualService", "default/reviews") in m.routes()


def test_refused_input_names_file_document_and_field(procs, tmp_path):
    m = Meshd(procs)
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPLIT.replace("W1", "90").replace("W2", "20"))
    r = m.ctl("apply", "-f", bad, check=False)
    assert r.returncode != 0
    assert "bad.yaml" in r.stderr and "document 1" in r.stderr and "weights must sum to 100" in r.stderr
    bad.write_text(SPLIT.replace("W1", "100").replace("W2", "0").replace("subsets:", "subsetz:"))
    r = m.ctl("apply", "-f", bad, check=False)
    assert r.returncode != 0 and "subsetz" in r.stderr and "unknown field" in r.stderr
    assert m.routes() == []


def test_config_dir_is_applied_and_watched(procs, tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "reviews.yaml").write_text(SPLIT.replace("W1", "100").replace("W2", "0"))
    m = Meshd(procs, extra=["--config-dir", str(cfg)])
    wait_until(lambda: ("VirtualService", "default/reviews") in m.routes(), what="config dir applied")
    (cfg / "reviews.yaml").write_text(SPLIT.replace("W1", "100").replace("W2", "0").replace("name: reviews}", "name: reviews-b}", 1))
    wait_until(lambda: ("VirtualService", "default/reviews-b") in m.routes(), timeout=10, what="change picked up")
    # The directory owns what it applied: a document or file removed there is removed from the
    # config in force (found in review).
    assert ("VirtualService", "default/reviews") not in m.routes(), "replaced by reviews-b"
    (cfg / "reviews.yaml").unlink()
    wait_until(lambda: not any(k == "VirtualService" for k, _ in m.routes()), timeout=10, what="removal picked up")
    # Applied by meshctl, not by the directory: stays.
    f = tmp_path / "mine.yaml"
    f.write_text(SPLIT.replace("W1", "100").replace("W2", "0").replace("name: reviews}", "name: mine}", 1))
    m.ctl("apply", "-f", f)
    (cfg / "other.yaml").write_text("")
    time.sleep(2.5)
    assert ("VirtualService", "default/mine") in m.routes()


POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-callers}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
    to: [{operation: {methods: [GET], paths: ["/", "/echo", "/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"""


def test_authorization_policy_pushed_by_meshd(procs, tmp_path):
    m = Meshd(procs)
    app = procs.app("reviews")
    _, radmin, _, _ = m.sidecar("reviews", "reviews", app_port=app)
    _, _, _, pp = m.sidecar("productpage", "productpage")
    _, _, _, rt = m.sidecar("ratings", "ratings")
    for port in (pp, rt):
        wait_until(lambda port=port: curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{port}/").stdout == b"hello from reviews\n",
                   what="routing pushed")
    f = tmp_path / "authz.yaml"
    f.write_text(POLICIES)
    m.ctl("apply", "-f", f, "--wait")

    def code(port, path, method="GET"):
        return curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "-H", "Host: reviews", f"http://127.0.0.1:{port}{path}").stdout

    assert code(pp, "/") == b"200"
    assert code(pp, "/echo") == b"200"
    assert code(pp, "/admin/users") == b"403", "DENY wins over ALLOW"
    assert code(pp, "/echo", "POST") == b"403", "method not allowed"
    assert code(rt, "/") == b"403", "identity not allowed"
    r = curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{rt}/")
    assert r.stdout == b"RBAC: access denied\n"
    _, metrics = http_get(f"http://127.0.0.1:{radmin}/stats/prometheus")
    assert b"mesh_authz_denied_total 4" in metrics
    # Removing the policies opens the door again.
    m.ctl("delete", "-f", f, "--wait")
    assert code(rt, "/") == b"200"


def test_service_entries_reach_workloads_without_sidecars(procs, tmp_path):
    """A ServiceEntry (MESH_EXTERNAL, plaintext) with an inline endpoint and one from a
    WorkloadEntry: sidecars route to them by host; a VirtualService can split across them."""
    m = Meshd(procs)
    legacy1, legacy2 = procs.app("legacy-1"), procs.app("legacy-2")
    _, _, _, pp = m.sidecar("productpage", "productpage")
    f = tmp_path / "entries.yaml"
    f.write_text(f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy}}
spec:
  hosts: [legacy.example.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {legacy1}, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    labels: {{version: one}}
  workloadSelector:
    labels: {{app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: legacy-2}}
spec:
  address: 127.0.0.1
  ports: {{http: {legacy2}}}
  labels: {{app: legacy, version: two}}
""")
    m.ctl("apply", "-f", f, "--wait")
    seen = set()
    for _ in range(20):
        seen.add(curl("-s", "-H", "Host: legacy.example.internal", f"http://127.0.0.1:{pp}/").stdout)
    assert seen == {b"hello from legacy-1\n", b"hello from legacy-2\n"}, seen
    # Refused: a workloadSelector with DNS resolution (test_egress.py covers DNS).
    bad = tmp_path / "dns.yaml"
    bad.write_text(f.read_text().replace("resolution: STATIC", "resolution: DNS"))
    r = m.ctl("apply", "-f", bad, check=False)
    assert r.returncode != 0 and "spec.workloadSelector: with resolution DNS: not supported yet" in r.stderr


def test_a_departed_workload_leaves_the_registry_after_its_grace(procs):
    m = Meshd(procs, extra=["--registry-grace", "3s"])
    a, b = procs.app("v1"), procs.app("v2")
    p1, _, _, _ = m.sidecar("reviews-v1", "reviews", app_port=a, extra=["--label", "version=v1"])
    m.sidecar("reviews-v2", "reviews", app_port=b, extra=["--label", "version=v2"])
    _, _, _, pp = m.sidecar("productpage", "productpage")
    wait_until(lambda: m.ctl("get", "services").stdout.count("reviews.default") == 2, what="both registered")
    p1.kill()
    p1.wait()
    # Within the grace period it stays; then it goes, and callers stop being sent there.
    time.sleep(1)
    assert m.ctl("get", "services").stdout.count("reviews.default") == 2
    wait_until(lambda: m.ctl("get", "services").stdout.count("reviews.default") == 1, timeout=30, what="removal after grace")
    time.sleep(1)
    for _ in range(10):
        assert curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{pp}/").stdout == b"hello from v2\n"


def test_meshctl_top_reports_each_version(procs, tmp_path):
    import subprocess
    m, outbound, _ = mesh(procs)
    apply(m, tmp_path, 50, 50, wait=True)
    load = subprocess.Popen(["h2load", "--h1", "-n", "200000", "-c", "4", "-H", ":authority: reviews", f"http://127.0.0.1:{outbound}/"],
                            stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = m.ctl("top", "--once", "--interval", "1s").stdout
    finally:
        load.kill()
        load.wait()
    rows = [l.split() for l in out.splitlines()[1:]]
    by_version = {r[2]: r for r in rows if r[0] == "reviews.canary"}
    assert set(by_version) == {"v1", "v2"}, out
    for r in by_version.values():
        assert float(r[3]) > 10 and r[4] == "100%", out
        assert r[5] != "-" and r[7] != "-", out   # p50 and p99 known
    total = sum(float(r[3]) for r in by_version.values())
    assert 0.35 < float(by_version["v1"][3]) / total < 0.65, out
