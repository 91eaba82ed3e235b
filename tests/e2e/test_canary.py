"""The Canary resource and meshd's canary controller (docs/canary.md) with real processes: meshd,
a sidecar per app version (`meshctl demo-app`, which can answer a share of 500s or answer slowly)
and a caller's sidecar under steady traffic. Scenarios on distinct hosts run concurrently in one
mesh: a healthy canary walks 10 -> 50 and is promoted; 30% 500s and a slow p99 are rolled back
after `threshold` checks; no traffic holds the step. A second mesh shows a restarted meshd
resuming at the same step, a manual apply pausing the canary, resume and abort. Bad input is
refused at apply naming the field."""

import http.client
import json
import os
import pathlib
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import MESHCTL, MESHD, Meshd, free_port, http_get, wait_until
from etcd_cluster import ETCD, EtcdCluster
from test_meshd_ha import TTL, Replica, api_list


def rule(host):
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def split(host, w1=100, w2=0):
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
  - name: main
    route:
    - destination: {{host: {host}, subset: v1}}
      weight: {w1}
    - destination: {{host: {host}, subset: v2}}
      weight: {w2}
"""


def canary(host, interval="1s", threshold=2, steps="stepWeight: 10\n    maxWeight: 50", min_requests=3, window="2s", p99_max=150):
    return f"""
apiVersion: mesh.io/v1alpha1
kind: Canary
metadata: {{name: {host}}}
spec:
  host: {host}
  stable: v1
  canary: v2
  analysis:
    interval: {interval}
    threshold: {threshold}
    {steps}
    minRequests: {min_requests}
    metrics:
    - name: request-success-rate
      interval: {window}
      thresholdRange: {{min: 95}}
    - name: request-duration
      interval: {window}
      thresholdRange: {{max: {p99_max}}}
"""


def apply(m, tmp, name, text):
    f = tmp / f"{name}.yaml"
    f.write_text(text)
    return m.ctl("apply", "-f", f, check=False)


def app(procs, name, error_percent=0, delay_ms=0):
    port = free_port()
    procs.start([MESHCTL, "demo-app", "--name", name, "--port", port, "--error-percent", error_percent, "--delay-ms", delay_ms], f"app-{name}")
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/")[0] in (200, 500), what=f"{name} app")
    return port


def service(m, procs, host, v2_errors=0, v2_delay=0, meshd=None):
    """Two versions of `host`, each an app behind its own sidecar."""
    for v, e, d in (("v1", 0, 0), ("v2", v2_errors, v2_delay)):
        m.sidecar(f"{host}-{v}", host, app_port=app(procs, f"{host}-{v}", e, d), extra=["--label", f"version={v}"], meshd=meshd)


class Load:
    """Steady calls through the caller's sidecar, per host; counts answers by app version."""

    def __init__(self, outbound, hosts, rate=40):
        self.outbound, self.hosts, self.rate = outbound, hosts, rate
        self.stop = threading.Event()
        self.seen = {h: [] for h in hosts}   # (time, body prefix, status)
        self.threads = [threading.Thread(target=self.run, args=(h,), daemon=True) for h in hosts]
        for t in self.threads:
            t.start()

    def run(self, host):
        conn = None
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.outbound, timeout=5)
                conn.request("GET", "/", headers={"Host": host})
                r = conn.getresponse()
                body = r.read().decode(errors="replace")
                self.seen[host].append((time.monotonic(), body.split(" from ")[-1].strip(), r.status))
            except Exception:  # noqa: BLE001 - a reset connection is retried
                conn = None
            time.sleep(max(0, 1 / self.rate - (time.monotonic() - t0)))

    def since(self, host, t):
        return [x for x in self.seen[host] if x[0] >= t]

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def status(m, name=None):
    arr = json.loads(http_get_auth(m, "/v1/canaries?o=json"))
    return arr if name is None else next((c for c in arr if c["name"] == name), None)


def http_get_auth(m, path):
    import urllib.request
    token = (m.state / "admin-token").read_text().split()[0]
    req = urllib.request.Request(f"http://127.0.0.1:{m.admin}{path}", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def vs_weights(m, host):
    text = m.ctl("get", "routes", "-o", "yaml").stdout
    doc = next(d for d in text.split("\n---") if "kind: VirtualService" in d and re.search(rf"name: \"?{host}\"?\b", d))
    return [int(w) for w in re.findall(r"weight: (\d+)", doc)]


def metric(m, series):
    _, body = http_get(f"http://127.0.0.1:{m.admin}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_canary_refused_at_apply_naming_the_field(procs, tmp_path):
    m = Meshd(procs)
    assert apply(m, tmp_path, "base", rule("reviews") + "---" + split("reviews")).returncode == 0
    cases = [
        (canary("reviews", steps="stepWeight: 10\n    maxWeight: 150"), "spec.analysis.maxWeight", "between 1 and 100"),
        (canary("reviews", steps="stepWeights: [10, 30, 20]"), "spec.analysis.stepWeights[2]", "must increase"),
        (canary("reviews", steps="stepWeights: [10, 20]\n    maxWeight: 50"), "spec.analysis.stepWeights", "never reach maxWeight 50"),
        (canary("reviews", steps="stepWeight: 20\n    maxWeight: 50"), "spec.analysis.maxWeight", "never reach maxWeight 50"),
        (canary("reviews").replace("name: request-duration", "name: error-rate"), "spec.analysis.metrics[1].name", "unknown metric \"error-rate\""),
        (canary("reviews").replace("canary: v2", "canary: v9"), "spec.canary", "no subset \"v9\""),
        (canary("ratings"), "spec.host", "no DestinationRule for host ratings"),
        (canary("reviews").replace("  analysis:", "  virtualService: {name: nope}\n  analysis:"), "spec.virtualService.name", "no VirtualService default/nope"),
        (canary("reviews").replace("    threshold: 2", "    threshold: 2\n    webhooks: []"), "spec.analysis.webhooks", "not supported yet"),
    ]
    for text, field, words in cases:
        r = apply(m, tmp_path, "bad", text)
        assert r.returncode != 0, text
        assert "bad.yaml:" in r.stderr and field in r.stderr and words in r.stderr, r.stderr
    # meshctl analyze checks the files as meshd's apply does.
    (tmp_path / "alone.yaml").write_text(canary("reviews"))
    r = m.ctl("analyze", "-f", tmp_path / "alone.yaml", check=False)
    assert r.returncode == 79 and "alone.yaml:6" in r.stdout and "spec.host: no DestinationRule for host reviews" in r.stdout, r.stdout
    # Nothing was stored, and nothing is walked.
    assert status(m) == []
    assert vs_weights(m, "reviews") == [100, 0]


def test_canary_refused_on_a_config_dir_virtual_service(procs, tmp_path):
    # meshd applies a --config-dir file again at start and on every change: its weights would
    # undo the canary's, so a Canary on such a VirtualService is refused naming the file.
    d = tmp_path / "cd"
    d.mkdir()
    (d / "reviews.yaml").write_text(rule("reviews") + "---" + split("reviews"))
    m = Meshd(procs, extra=("--config-dir", str(d)))
    wait_until(lambda: vs_weights(m, "reviews") == [100, 0], timeout=10, what="the directory applied")
    r = apply(m, tmp_path, "c", canary("reviews"))
    assert r.returncode != 0 and "c.yaml:" in r.stderr and "spec.virtualService" in r.stderr, r.stderr
    assert "--config-dir file" in r.stderr and "reviews.yaml" in r.stderr, r.stderr
    assert status(m) == []


def test_canary_walks_promotes_rolls_back_and_holds(procs, tmp_path):
    m = Meshd(procs)
    service(m, procs, "good")
    service(m, procs, "bad", v2_errors=30)
    service(m, procs, "slow", v2_delay=400)
    service(m, procs, "quiet")
    _, _, _, outbound = m.sidecar("caller", "caller")
    hosts = ["good", "bad", "slow", "quiet"]
    assert apply(m, tmp_path, "routes", "---".join(rule(h) + "---" + split(h) for h in hosts)).returncode == 0
    load = Load(outbound, ["good", "bad", "slow"])
    try:
        wait_until(lambda: all(load.seen[h] for h in load.hosts), timeout=20, what="traffic through the mesh")
        r = apply(m, tmp_path, "canaries", "---".join(canary(h) for h in hosts))
        assert r.returncode == 0, r.stderr
        weights = []

        def watch():
            c = status(m, "good")
            if not weights or weights[-1] != c["canaryWeight"]:
                weights.append(c["canaryWeight"])
            return c["phase"] == "Succeeded"
        wait_until(watch, timeout=40, what="the good canary promoted")
        assert weights[:1] == [10] and weights[-1] == 100, weights
        assert [w for w in weights if w not in (100,)] == [10, 20, 30, 40, 50], weights
        assert vs_weights(m, "good") == [0, 100]

        bad = wait_until(lambda: (lambda c: c if c["phase"] == "Failed" else None)(status(m, "bad")), timeout=20, what="bad rolled back")
        assert bad["canaryWeight"] == 0 and bad["failedChecks"] == 2, bad
        assert "request-success-rate" in bad["message"] and "below 95%" in bad["message"], bad
        assert vs_weights(m, "bad") == [100, 0]
        # Within one interval (1 s) of the rollback every request reaches the stable version.
        t = time.monotonic() + 1.0
        time.sleep(3)
        after = load.since("bad", t)
        assert after and all(v == "bad-v1" and s == 200 for _, v, s in after), after[:5]

        slow = wait_until(lambda: (lambda c: c if c["phase"] == "Failed" else None)(status(m, "slow")), timeout=20, what="slow rolled back")
        assert "request-duration p99" in slow["message"] and "above 150 ms" in slow["message"], slow
        assert vs_weights(m, "slow") == [100, 0]

        # No traffic: neither passes nor fails; the step holds with a visible reason.
        quiet = status(m, "quiet")
        assert quiet["phase"] == "Progressing" and quiet["canaryWeight"] == 10 and quiet["failedChecks"] == 0, quiet
        assert "held" in quiet["message"] and "fewer than minRequests 3" in quiet["message"], quiet
        # Every sidecar is counted apart and the check says how many were scraped (all here).
        assert re.search(r"sidecars scraped (\d+) of \1(?!\d)", quiet["message"]), quiet
        assert metric(m, 'mesh_canary_checks_total{namespace="default",name="quiet",result="held"}') >= 2
        assert metric(m, 'mesh_canary_checks_total{namespace="default",name="quiet",result="pass"}') == 0
        assert metric(m, 'mesh_canary_weight{namespace="default",name="good"}') == 100
        assert metric(m, 'mesh_canary_phase{namespace="default",name="bad",phase="Failed"}') == 1
        assert metric(m, 'mesh_canary_phase{namespace="default",name="bad",phase="Progressing"}') == 0
        # The web page's data endpoint carries the same canaries (WebUI.swift reads /v1/canaries).
        ui = {c["name"]: c for c in json.loads(http_get_auth(m, "/ui/api/canaries"))}
        assert sorted(ui) == sorted(hosts), ui
        assert ui["good"]["phase"] == "Succeeded" and ui["bad"]["phase"] == "Failed" and ui["quiet"]["canaryWeight"] == 10, ui
        text = m.ctl("canary", "status", "good").stdout
        assert "phase Succeeded" in text and "promoted" in text and "success 100%" in text, text
        # A finished canary is not aborted: its promotion stays.
        r = m.ctl("canary", "abort", "good", check=False)
        assert "not running (phase Succeeded)" in (r.stdout + r.stderr), (r.stdout, r.stderr)
        assert vs_weights(m, "good") == [0, 100]
        log = m.proc.log_path.read_text()
        assert "advanced canary v2 to 20%" in log and "rolled back to 100% v1" in log, log[-2000:]
    finally:
        load.close()


def test_canary_resumes_after_restart_pauses_on_manual_apply(procs, tmp_path):
    m = Meshd(procs)
    service(m, procs, "reviews")
    _, _, _, outbound = m.sidecar("caller", "caller")
    assert apply(m, tmp_path, "routes", rule("reviews") + "---" + split("reviews")).returncode == 0
    load = Load(outbound, ["reviews"])
    try:
        wait_until(lambda: load.seen["reviews"], timeout=20, what="traffic")
        slow_walk = canary("reviews", interval="2s", steps="stepWeights: [10, 20, 30, 40, 50, 60, 70, 80]", window="2s")
        assert apply(m, tmp_path, "canary", slow_walk).returncode == 0
        wait_until(lambda: status(m, "reviews")["canaryWeight"] >= 20, timeout=20, what="a step")
        m.stop()
        at = re.search(r"weight: (\d+)", (m.state / "canaries.yaml").read_text()).group(1)
        assert vs_weights_file(m) == [100 - int(at), int(at)]
        m.start()
        # The restarted meshd resumes at the recorded step (not from the first).
        c = status(m, "reviews")
        assert c["phase"] == "Progressing" and c["canaryWeight"] == int(at), (c, at)
        wait_until(lambda: status(m, "reviews")["canaryWeight"] > int(at), timeout=20, what="a step after the restart")

        # A person applies the VirtualService: the controller stops and says so.
        assert apply(m, tmp_path, "manual", split("reviews", 75, 25)).returncode == 0
        p = wait_until(lambda: (lambda c: c if c["phase"] == "Paused" else None)(status(m, "reviews")), timeout=10, what="paused")
        assert "VirtualService default/reviews was changed by someone else" in p["message"], p
        time.sleep(3)
        assert vs_weights(m, "reviews") == [75, 25]
        assert status(m, "reviews")["phase"] == "Paused"
        r = m.ctl("canary", "resume", "reviews")
        assert "resumed" in r.stdout, r.stdout
        wait_until(lambda: status(m, "reviews")["phase"] == "Progressing", timeout=5, what="progressing again")
        r = m.ctl("canary", "abort", "reviews")
        assert "aborted" in r.stdout, r.stdout
        c = status(m, "reviews")
        assert c["phase"] == "Aborted" and c["canaryWeight"] == 0, c
        assert vs_weights(m, "reviews") == [100, 0]
    finally:
        load.close()
    # A recorded state that cannot be read stops meshd naming the file (never a silent restart).
    m.stop()
    (m.state / "canaries.yaml").write_text("phase: [\n")
    r = subprocess.run([str(MESHD), "--state-dir", str(m.state), "--api-port", str(free_port()), "--admin-port", str(free_port())],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "canaries.yaml: status 1 cannot be read" in r.stderr, (r.returncode, r.stderr)


def vs_weights_file(m):
    text = (m.state / "applied.yaml").read_text()
    doc = next(d for d in text.split("\n---") if "kind: VirtualService" in d)
    return [int(w) for w in re.findall(r"weight: (\d+)", doc)]


@pytest.mark.skipif(not pathlib.Path(ETCD).exists(), reason="etcd-server is not installed (.ci/run installs it)")
def test_canary_on_replicas_runs_on_the_leader_and_moves_with_it(procs, pki, tmp_path):
    cluster = EtcdCluster(procs, n=1)
    rs = [Replica(procs, pki, cluster, f"r{i}") for i in range(2)]
    wait_until(lambda: sum(r.leader() == 1 for r in rs) == 1, timeout=TTL + 5, what="one leader")
    leader = next(r for r in rs if r.leader() == 1)
    standby = next(r for r in rs if r is not leader)
    # The sidecars hold their streams on the standby: the leader reads them through what the
    # standby publishes in etcd (/mesh/canary-admins/).
    service(leader, procs, "reviews", meshd=f"127.0.0.1:{standby.api},127.0.0.1:{leader.api}")
    _, _, _, outbound = leader.sidecar("caller", "caller", meshd=f"127.0.0.1:{standby.api},127.0.0.1:{leader.api}")
    assert apply(leader, tmp_path, "routes", rule("reviews") + "---" + split("reviews")).returncode == 0
    load = Load(outbound, ["reviews"])
    try:
        wait_until(lambda: load.seen["reviews"], timeout=20, what="traffic")
        walk = canary("reviews", interval="2s", steps="stepWeights: [10, 20, 30, 40, 50, 60, 70, 80]", window="2s")
        assert apply(leader, tmp_path, "canary", walk).returncode == 0
        wait_until(lambda: status(leader, "reviews")["canaryWeight"] >= 20, timeout=20, what="a step on the leader")
        # The state is in etcd; the standby shows it from there and does not act.
        assert "phase: Progressing" in cluster.ctl("get", "/mesh/canaries/default/reviews").stdout
        # One line per sidecar: ADMIN<TAB>NODE IDENTITY (never collapsed by address).
        published = cluster.ctl("get", f"/mesh/canary-admins/{standby.name}").stdout.splitlines()[1:]
        assert len(published) == 3 and all(l.startswith("127.0.0.1:") and "\tspiffe://" not in l and " spiffe://" in l for l in published), published
        assert "held" not in status(leader, "reviews")["message"]
        assert status(standby, "reviews")["phase"] == "Progressing"
        r = standby.ctl("canary", "abort", "reviews", check=False)
        assert r.returncode != 0 and "does not lead" in r.stderr, r.stderr
        os.killpg(leader.proc.pid, signal.SIGKILL)
        leader.proc.wait(timeout=10)
        at = int(re.search(r"weight: (\d+)", cluster.ctl("get", "/mesh/canaries/default/reviews").stdout).group(1))
        wait_until(lambda: standby.leader() == 1, timeout=TTL + 5, what="the standby leads")
        # The new leader resumes at the recorded step, then walks on.
        c = status(standby, "reviews")
        assert c["phase"] == "Progressing" and c["canaryWeight"] == at, (c, at)
        wait_until(lambda: status(standby, "reviews")["canaryWeight"] > at, timeout=25, what="a step on the new leader")
        log = standby.proc.log_path.read_text()
        before = log.split("is the leader now")[0]
        assert "canary: default/reviews" not in before, before[-2000:]
        assert "canary: default/reviews: advanced canary v2" in log.split("is the leader now")[1]
    finally:
        load.close()
