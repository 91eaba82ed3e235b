"""bench/push-load (the simulated sidecars of bench/push.sh), smoke-tested against a real meshd:
50 config streams over mTLS, 2 applies timed to every ACK, a short CSR-signing run. What the
tool claims is checked against meshd's own view (`/v1/proxies`), and a bad flag is refused by name."""

import os
import pathlib
import subprocess
import urllib.request

import pytest

from conftest import ROOT, SIDECAR, Meshd

PUSH_LOAD = pathlib.Path(os.environ.get("PUSH_LOAD_BIN", SIDECAR.parent / "push-load"))


@pytest.fixture(scope="session")
def push_load():
    """The debug product, built here unless PUSH_LOAD_BIN names one (a no-op when up to date)."""
    if "PUSH_LOAD_BIN" not in os.environ:
        subprocess.run(["swift", "build", "--product", "push-load"], cwd=ROOT, check=True, capture_output=True, timeout=600)
    assert PUSH_LOAD.exists(), f"{PUSH_LOAD} missing"
    return PUSH_LOAD


def run_load(push_load, meshd, *args, timeout=60):
    return subprocess.run([str(push_load), "--api", f"127.0.0.1:{meshd.api}", "--admin", f"http://127.0.0.1:{meshd.admin}",
                           "--admin-token-file", str(meshd.state / "admin-token"), "--root-cert", str(meshd.root),
                           *[str(a) for a in args]], capture_output=True, text=True, timeout=timeout)


def parse_summary(text):
    """key=value lines, each key once; every line must have that shape."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        assert sep and k and all(c.isalnum() or c == "_" for c in k), f"not a key=value line: {line!r}"
        assert k not in out, f"key {k} twice"
        out[k] = v
    return out


def test_bad_flags_refused_by_name(push_load, procs):
    m = Meshd(procs)
    r = run_load(push_load, m, "--streams", "many")
    assert r.returncode == 2 and "--streams" in r.stderr and r.stdout == "", r.stderr
    r = run_load(push_load, m, "--streamz", "5")
    assert r.returncode == 2 and "--streamz" in r.stderr, r.stderr
    r = run_load(push_load, m, "--streams", "3", "--namespaces", "5")
    assert r.returncode == 2 and "--namespaces" in r.stderr, r.stderr


def test_fifty_streams_two_applies_and_signing(push_load, procs):
    m = Meshd(procs)
    r = run_load(push_load, m, "--streams", 50, "--namespaces", 5, "--register", 1, "--applies", 2, "--idle", "1s",
                 "--settle", "200ms", "--watch-pid", m.proc.pid, "--csr-clients", 2, "--csr-seconds", 1)
    assert r.returncode == 0, r.stdout + r.stderr
    s = parse_summary(r.stdout)
    assert s["result"] == "ok"
    assert s["streams"] == "50" and s["streams_with_config"] == "50" and s["streams_connected"] == "50"
    v1, v2 = int(s["apply_1_version"]), int(s["apply_2_version"])
    assert v2 > v1 > 0
    for k in (1, 2):
        assert s[f"apply_{k}_expected"] == "50" and s[f"apply_{k}_acked"] == "50", s
        p50, full = float(s[f"apply_{k}_p50_ms"]), float(s[f"apply_{k}_all_ms"])
        assert 0 < p50 <= full < 30_000
        assert s[f"apply_{k}_unexpected_pushes"] == "0"
    assert s["applies_completed"] == "2" and s["unexpected_pushes"] == "0"
    assert float(s["apply_all_acked_p50_ms"]) <= float(s["apply_all_acked_p99_ms"])
    # Pushes by form: the streams name their base, so the applies reach them as deltas (each
    # of the 100 ACKs above); the tool's counts are meshd's own.
    assert int(s["pushes_full"]) + int(s["pushes_delta"]) == int(s["pushes_total"])
    assert int(s["pushes_full"]) >= 50 and int(s["pushes_delta"]) >= 100, s
    with urllib.request.urlopen(f"http://127.0.0.1:{m.admin}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    for form in ("full", "delta"):
        assert f'meshd_config_pushes_total{{form="{form}"}} {s["pushes_" + form]}\n' in metrics, metrics
        assert f'meshd_config_push_bytes_total{{form="{form}"}} {s["push_bytes_" + form]}\n' in metrics, metrics
    # meshd's own view agrees: every simulated node ACKed the second version, and, the tool
    # having exited, none is still shown connected.
    req = urllib.request.Request(f"http://127.0.0.1:{m.admin}/v1/proxies",
                                 headers={"authorization": f"Bearer {(m.state / 'admin-token').read_text().strip()}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        lines = resp.read().decode().splitlines()[2:]   # after the version and replica lines
    sims = {row[1]: row for row in (l.split("\t") for l in lines) if row[0].startswith("spiffe://cluster.local/ns/load-")}
    assert len(sims) == 50, lines
    for row in sims.values():
        assert row[2] == "disconnected" and row[4] == f"acked {v2}", row
    # Meters: meshd's process was sampled, and the tool reported itself.
    assert float(s["meshd_idle_rss_mb"]) > 1 and int(s["meshd_idle_threads"]) >= 1
    assert float(s["load_rss_mb"]) > 1 and int(s["load_threads"]) >= 2
    # Signing: full certificates, none refused.
    assert int(s["csr_signed"]) > 0 and s["csr_refused"] == "0" and s["csr_connections_broken"] == "0"
    assert float(s["csr_per_second"]) == pytest.approx(int(s["csr_signed"]) / 1, rel=0.01)
