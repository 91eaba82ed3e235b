"""Config pushes as deltas with real processes: meshd, two versions of reviews and a caller, in a
mesh of about 100 services (DestinationRules applied in one file). One VirtualService change
reaches every sidecar as a delta against the text it holds (meshd's /metrics: the delta counter
moves by one per sidecar, the full counter not at all, each delta far below the full text) and
the caller then routes as the new config says; a caller restarted (it holds no text) gets the
whole text, and the config in force is the same as the one the delta gave."""

import json
import re

from conftest import Meshd, curl, http_get, wait_until

SERVICES = 100

ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: main
    route:
    - destination: {host: reviews, subset: SUBSET}
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


def many_services():
    return "---\n".join(
        f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc{i}}}\nspec:\n"
        f"  host: svc{i}\n  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n" for i in range(SERVICES))


def push_counters(m):
    """{(series, form): value} of meshd's push counters."""
    _, body = http_get(f"http://127.0.0.1:{m.admin}/metrics")
    out = {}
    for name, form, value in re.findall(r'^(meshd_config_push(?:es|_bytes)_total)\{form="(\w+)"\} (\d+)$', body.decode(), re.M):
        out[(name, form)] = int(value)
    assert len(out) == 4, body.decode()
    return out


def all_current(m, n):
    """Every one of the n sidecars ACKed the config in force for it (meshctl get proxies)."""
    lines = m.ctl("get", "proxies").stdout.splitlines()[2:]
    return len(lines) == n and all(l.split("\t")[5] == "ACK" and l.split("\t")[2] == "connected" for l in lines)


def answers(outbound, n=20):
    return [curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout for _ in range(n)]


def test_one_route_change_goes_as_a_delta_and_a_restarted_sidecar_gets_the_whole_text(procs, tmp_path):
    m = Meshd(procs)
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(many_services() + "---\n" + ROUTE.replace("SUBSET", "v1"))
    r = m.ctl("apply", "-f", mesh)
    assert r.stdout.count("created") == SERVICES + 2, r.stdout
    v1, v2 = procs.app("reviews-v1"), procs.app("reviews-v2")
    m.sidecar("reviews-v1", "reviews", app_port=v1, extra=["--label", "version=v1"])
    m.sidecar("reviews-v2", "reviews", app_port=v2, extra=["--label", "version=v2"])
    caller, cadmin, _, outbound = m.sidecar("productpage", "productpage")
    wait_until(lambda: m.ctl("get", "services").stdout.count("reviews.default") == 2, what="both versions registered")
    wait_until(lambda: all_current(m, 3), what="three sidecars with the config in force")
    assert set(answers(outbound)) == {b"hello from reviews-v1\n"}

    before = push_counters(m)
    full_pushes = before[("meshd_config_pushes_total", "full")]
    assert full_pushes >= 3, before   # each sidecar's first config is the whole text
    change = tmp_path / "route.yaml"
    change.write_text(ROUTE.replace("SUBSET", "v2"))
    r = m.ctl("apply", "-f", change, "--wait")
    assert "acknowledged by 3 sidecar(s)" in r.stdout, r.stdout
    version = int(re.search(r"version (\d+)", r.stdout).group(1))
    after = push_counters(m)
    # One delta per sidecar, no full text.
    assert after[("meshd_config_pushes_total", "delta")] - before[("meshd_config_pushes_total", "delta")] == 3, (before, after)
    assert after[("meshd_config_pushes_total", "full")] == full_pushes, (before, after)
    delta_bytes = (after[("meshd_config_push_bytes_total", "delta")] - before[("meshd_config_push_bytes_total", "delta")]) / 3
    # The config in force routes as the new config says, on the caller that took the delta.
    assert set(answers(outbound)) == {b"hello from reviews-v2\n"}
    assert f"config version {version} from meshd applied" in caller.log_path.read_text()
    assert "asking for the whole config" not in caller.log_path.read_text()
    _, dump_after_delta = http_get(f"http://127.0.0.1:{cadmin}/config_dump")

    # The caller restarted holds no text: meshd sends it the whole text, once.
    caller.kill()
    caller.wait(timeout=5)
    caller2, cadmin2, _, outbound2 = m.sidecar("productpage-again", "productpage", admin=cadmin)
    wait_until(lambda: all_current(m, 3), what="the restarted caller with the config in force")
    again = push_counters(m)
    assert again[("meshd_config_pushes_total", "full")] == full_pushes + 1, (after, again)
    assert again[("meshd_config_pushes_total", "delta")] == after[("meshd_config_pushes_total", "delta")], (after, again)
    full_bytes = again[("meshd_config_push_bytes_total", "full")] - after[("meshd_config_push_bytes_total", "full")]
    assert full_bytes > 20_000, full_bytes   # about 100 clusters and their documents
    assert delta_bytes * 20 < full_bytes, (delta_bytes, full_bytes)
    assert f"config version {version} from meshd applied" in caller2.log_path.read_text()
    _, dump_after_full = http_get(f"http://127.0.0.1:{cadmin2}/config_dump")
    # What the delta gave is what the whole text gives (all but the new outbound port).
    full_cfg, delta_cfg = json.loads(dump_after_full)["bootstrap"], json.loads(dump_after_delta)["bootstrap"]
    assert len(full_cfg["clusters"]) > SERVICES and full_cfg["virtual_service_routes"], full_cfg
    assert full_cfg.pop("outbound") != delta_cfg.pop("outbound")
    assert full_cfg == delta_cfg
    assert set(answers(outbound2)) == {b"hello from reviews-v2\n"}
