"""`meshctl demo` run non-interactively to completion: the split it reports follows the canary,
it exits 0, and no process is left behind."""

import re
import subprocess

from conftest import MESHCTL


def test_demo_runs_to_completion_and_cleans_up():
    r = subprocess.run([str(MESHCTL), "demo", "--phase", "3s"], capture_output=True, text=True, timeout=180)
    out = r.stdout
    assert r.returncode == 0, (r.returncode, out[-2000:], r.stderr[-2000:])
    assert "spiffe://cluster.local/ns/default/sa/productpage" in out and "spiffe://cluster.local/ns/default/sa/reviews" in out
    phases = re.split(r"demo: canary (\d+)/(\d+): applied", out)
    seen = {}
    for i in range(1, len(phases), 3):
        w1 = int(phases[i])
        rates = {"v1": 0.0, "v2": 0.0}
        for line in phases[i + 2].splitlines():
            m = re.match(r"demo:\s+reviews\.canary\s+reviews\s+(v\d)\s+([\d.]+)\s+(\d+)%", line)
            if m:
                rates[m.group(1)] += float(m.group(2))
                assert m.group(3) == "100", line
        total = rates["v1"] + rates["v2"]
        assert total > 0, phases[i + 2]
        seen[w1] = 100 * rates["v1"] / total
    assert set(seen) == {100, 90, 50, 0}, seen
    assert seen[100] == 100 and seen[0] == 0, seen
    assert 75 <= seen[90] <= 99 and 30 <= seen[50] <= 70, seen
    d = re.search(r"state in (/tmp/meshctl-demo-\w+)/meshd", out).group(1)
    for pattern in (d, "demo-app", "demo-caller", "--service-account reviews --outbound-port", "--service-account productpage --outbound-port"):
        left = subprocess.run(["pgrep", "-fa", pattern], capture_output=True, text=True).stdout
        left = "\n".join(l for l in left.splitlines() if "pgrep" not in l)
        assert left == "", (pattern, left)
