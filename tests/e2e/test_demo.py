"""`meshctl demo` run non-interactively to completion: meshd's canary controller promotes a good
v2 and rolls back v3 (30% 500s), the split the caller reports follows, it exits 0, and no
process is left behind.

`meshctl demo --capture` (root): the same story with meshd and each workload in its own network
namespace (`mdemo-<pid>-*`) under `meshctl run --capture`, the caller calling reviews by name with
no proxy variable. It runs to the end and exits 0; with `--keep-running` the mesh stays up
(captured: the caller's namespace holds the rules, a plain `curl` there by name reaches reviews,
a direct plaintext connection from another namespace to an app port never reaches the app) and
SIGINT removes everything; a run killed with SIGKILL leaves its namespaces, which the next run
removes. After each: no namespace with the run's prefix, no process of it, no temporary
directory. Without root: exit 2 and one line."""

import os
import re
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import MESHCTL, wait_until


def canary_split(out):
    """{v1 weight: % of v1 requests the caller's sidecar reported} for each canary phase printed,
    asserting every row's success is 100%."""
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
    return seen


def assert_canary_walked(out):
    seen = canary_split(out)
    assert set(seen) == {100, 90, 50, 0}, seen
    assert seen[100] == 100 and seen[0] == 0, seen
    assert 75 <= seen[90] <= 99 and 30 <= seen[50] <= 70, seen


def assert_canaries_decided(out):
    """`meshctl demo`'s story: meshd walks v2 through 10 -> 20 -> 50% and promotes it, then rolls
    v3 (30% 500s) back after its threshold, and the caller then sees only v2, all successes."""
    weights = [int(w) for w in re.findall(r"demo: canary v2: Progressing (\d+)%", out)]
    assert weights and sorted(set(weights)) == [10, 20, 50] and weights == sorted(weights), weights
    assert "demo: canary v2: Succeeded 100%: promoted: canary v2 at 100%" in out, out[-3000:]
    m = re.search(r"demo: canary v3: Failed 0%: rolled back to 100% v2 after 2 failed check\(s\): request-success-rate ([\d.]+)% is below 99%", out)
    assert m and float(m.group(1)) < 99, out[-3000:]
    for who in ("v2 promoted", "v3 rolled back"):
        after = out.split(f"demo: canary {who}: what the caller sees now")[1].split("demo: canary v3: applied")[0].split("demo: done")[0]
        rows = re.findall(r"demo:\s+reviews\.canary\s+reviews\s+(v\d)\s+([\d.]+)\s+(\d+)%", after)
        assert rows and all(v == "v2" and ok == "100" for v, _, ok in rows), (who, after)
    assert "demo: done: v2 promoted, v3 rolled back by meshd's canary controller" in out


def pgrep(pattern):
    left = subprocess.run(["pgrep", "-fa", pattern], capture_output=True, text=True).stdout
    return "\n".join(l for l in left.splitlines() if "pgrep" not in l)


def test_demo_runs_to_completion_and_cleans_up():
    r = subprocess.run([str(MESHCTL), "demo", "--phase", "3s"], capture_output=True, text=True, timeout=180)
    out = r.stdout
    assert r.returncode == 0, (r.returncode, out[-2000:], r.stderr[-2000:])
    assert "spiffe://cluster.local/ns/default/sa/productpage" in out and "spiffe://cluster.local/ns/default/sa/reviews" in out
    assert_canaries_decided(out)
    d = re.search(r"state in (/tmp/meshctl-demo-\w+)/meshd", out).group(1)
    for pattern in (d, "demo-app", "demo-caller", "--service-account reviews --outbound-port", "--service-account productpage --outbound-port"):
        left = pgrep(pattern)
        assert left == "", (pattern, left)


def test_demo_refuses_flags_it_does_not_take():
    for args in (["--proxy-uid", "1400"], ["--service", "web"], ["--meshd", "http://127.0.0.1:1"]):
        r = subprocess.run([str(MESHCTL), "demo", "--capture", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and f"{args[0]} is not a flag of demo" in r.stderr, (args, r.stderr)


def test_demo_capture_without_root_exits_2_with_one_line():
    # As uid 65534 when we are root (setpriv), as ourselves otherwise.
    prefix = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] if os.geteuid() == 0 else []
    r = subprocess.run([*prefix, str(MESHCTL), "demo", "--capture", "--phase", "1s"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "demo --capture needs root" in r.stderr, r.stderr
    assert r.stdout == ""


def test_demo_caller_url_refuses_what_it_cannot_call():
    for url in ("ftp://reviews/", "https://reviews/", "http://", "http:///x", "http://reviews:0/", "http://reviews:70000/",
                "http://reviews:x/", "http://reviews:/", "http://[::1/", "http://[::1]x/", "http://a b/", "http://u@reviews/", "reviews:9080"):
        r = subprocess.run([str(MESHCTL), "demo-caller", "--url", url], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and "--url: expected http://HOST[:PORT][/PATH]" in r.stderr and url in r.stderr, (url, r.stderr)
    r = subprocess.run([str(MESHCTL), "demo-caller", "--url", "http://reviews/", "--host", "reviews"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "not both" in r.stderr, r.stderr


def test_demo_caller_by_name_resolves_itself_and_sends_host_and_path():
    """Without root: `demo-caller --url` resolves `localhost` with the system resolver (no proxy,
    no MESH_OUTBOUND), tries its addresses in turn (the server listens on IPv4 only) and sends
    the URL's path and `host`."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers["host"]))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("MESH_")}
    p = subprocess.Popen([str(MESHCTL), "demo-caller", "--url", f"http://localhost:{port}/reviews?x=1", "--rate", "20"],
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: len(seen) >= 5, timeout=20, what="five requests")
    finally:
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=10)[1]
        srv.shutdown()
    assert p.returncode == 0, err
    assert set(seen) == {("/reviews?x=1", f"localhost:{port}")}, seen
    assert re.search(rf"demo-caller: localhost -> (.*, )?127\.0\.0\.1:{port}(, .*)?: status 200", err), err


# --- as root, in network namespaces ---------------------------------------------------------

PREFIX = "mdemo-"


def namespaces(pid):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(l.split()[0] for l in out.splitlines() if l.startswith(f"{PREFIX}{pid}-"))


def tmp_dirs(pid):
    return sorted(n for n in os.listdir("/tmp") if n.startswith(f"meshctl-demo-capture-{pid}-"))


def assert_nothing_left(pid):
    assert namespaces(pid) == [], namespaces(pid)
    assert tmp_dirs(pid) == [], tmp_dirs(pid)
    left = pgrep(f"meshctl-demo-capture-{pid}-")
    assert left == "", left


class Demo:
    """`meshctl demo --capture ...` in the background, its output in a file; killed, with its
    namespaces removed, at tear-down if a test left it running."""

    def __init__(self, tmp_path, *args):
        self.log = tmp_path / f"demo-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as f:
            self.p = subprocess.Popen([str(MESHCTL), "demo", "--capture", *args], stdout=f, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.pid = self.p.pid

    def out(self):
        return self.log.read_text()

    def wait_for(self, text, timeout):
        wait_until(lambda: text in self.out() or self.p.poll() is not None, timeout=timeout, what=f"'{text}' from the demo")
        assert text in self.out(), (self.p.returncode, self.out()[-3000:])

    def cleanup(self):
        """What a test that failed halfway leaves: the demo, its namespaces and directory."""
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=10)
        for ns in namespaces(self.pid):
            from netns import _pids_in
            for pid in _pids_in(ns):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for d in tmp_dirs(self.pid):
            subprocess.run(["rm", "-rf", "--", f"/tmp/{d}"])


@pytest.fixture
def demos(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("meshctl demo --capture needs root (network namespaces, capture rules)")
    started = []

    def start(*args):
        d = Demo(tmp_path, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.cleanup()


def ns_run(ns, args, **kw):
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=30, **kw)


def test_demo_capture_keep_running_is_enforced_and_sigint_removes_everything(demos):
    d = demos("--keep-running", "--phase", "2s")
    d.wait_for("Ctrl-C stops everything", timeout=150)
    out = d.out()
    assert_canary_walked(out)
    assert re.search(r"productpage calls http://reviews\.default\.svc\.cluster\.local:9080/ with no proxy variable: "
                     r"the name resolves to 240\.240\.\d+\.\d+:9080", out), out
    assert "spiffe://cluster.local/ns/default/sa/productpage" in out and "spiffe://cluster.local/ns/default/sa/reviews" in out
    base = f"{PREFIX}{d.pid}"
    assert namespaces(d.pid) == sorted(f"{base}-{h}" for h in ("br", "meshd", "reviews-v1", "reviews-v2", "productpage"))
    # The workloads' namespaces hold the capture rules; their sidecars run as uid 1337.
    nat = ns_run(f"{base}-productpage", ["iptables-save", "-t", "nat"]).stdout
    assert "-A OUTPUT -j MESH_OUTPUT" in nat and "--to-ports 15001" in nat and "--to-ports 15053" in nat, nat
    sidecars = [l.split()[0] for l in pgrep(f"meshctl-demo-capture-{d.pid}-.*/bin/sidecar").splitlines()]
    assert len(sidecars) == 3, sidecars
    for pid in sidecars:
        status = open(f"/proc/{pid}/status").read()
        assert re.search(r"^Uid:\s+1337\s+1337\s+1337\s+1337$", status, re.M), status
    # A plain client in the caller's namespace, by name and without any proxy: captured, routed
    # by the canary in force (0/100: v2).
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    r = ns_run(f"{base}-productpage", ["curl", "-sS", "--max-time", "10", "http://reviews.default.svc.cluster.local:9080/"], env=env)
    assert r.stdout == "hello from reviews-v2\n", (r.returncode, r.stdout, r.stderr)
    # meshd's host has no sidecar: its plaintext connection to reviews-v1's app port is accepted
    # by that sidecar's inbound listener (capture; the app itself listens on loopback only, a
    # connection reaching it directly would be refused, curl's 7), which wants mTLS and closes
    # it: curl gets an empty reply (52) or a receive error (56), never the app's answer.
    r = ns_run(f"{base}-meshd", ["curl", "-sS", "--max-time", "5", "http://10.78.0.2:9080/"], env=env)
    assert r.returncode in (52, 56) and "hello from" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    d.p.send_signal(signal.SIGINT)
    assert d.p.wait(timeout=90) == 130, d.out()[-2000:]
    assert "stopping every process and removing the network namespaces" in d.out()
    assert_nothing_left(d.pid)


def test_demo_capture_runs_to_completion_and_removes_what_a_killed_run_left(demos):
    # A run killed outright (SIGKILL) in the middle of its story leaves namespaces, processes and
    # its directory behind...
    killed = demos("--keep-running", "--phase", "2s")
    killed.wait_for("canary 100/0: applied", timeout=150)
    os.kill(killed.pid, signal.SIGKILL)
    killed.p.wait(timeout=10)
    assert len(namespaces(killed.pid)) == 5 and tmp_dirs(killed.pid), namespaces(killed.pid)
    assert pgrep(f"meshctl-demo-capture-{killed.pid}-") != ""
    # ...which the next run removes before it tells its whole story and exits 0.
    d = demos("--phase", "3s")
    assert d.p.wait(timeout=180) == 0, d.out()[-3000:]
    out = d.out()
    m = re.search(r"demo: removed what an earlier demo that was killed left behind: (.*)", out)
    assert m and f"{PREFIX}{killed.pid}-productpage" in m.group(1) and f"{PREFIX}{killed.pid}-br" in m.group(1), out[:2000]
    assert_nothing_left(killed.pid)
    assert_canary_walked(out)
    assert "spiffe://cluster.local/ns/default/sa/productpage" in out and "spiffe://cluster.local/ns/default/sa/reviews" in out
    assert "done: the canary went from 100/0 to 0/100" in out
    assert_nothing_left(d.pid)


def test_demo_capture_failure_halfway_removes_everything(demos):
    # A workload dies under the demo (its meshctl run killed outright, leaving its sidecar and app
    # running in the namespace): the demo says which, exits 1, and still removes everything.
    d = demos("--keep-running", "--phase", "2s")
    d.wait_for("canary 100/0: applied", timeout=150)
    runs = [l.split()[0] for l in pgrep(f"meshctl-demo-capture-{d.pid}-.*/bin/meshctl .* run --capture --service reviews --label version=v1").splitlines()]
    assert len(runs) == 1, runs
    os.kill(int(runs[0]), signal.SIGKILL)
    assert d.p.wait(timeout=90) == 1, d.out()[-2000:]
    out = d.out()
    assert "demo: reviews-v1 exited unexpectedly (killed by signal 9 (SIGKILL))" in out, out[-2000:]
    assert "stopping every process and removing the network namespaces" in out
    assert_nothing_left(d.pid)
