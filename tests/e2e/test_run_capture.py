"""`meshctl run --capture` (DESIGN §10), as root in network namespaces (tests/e2e/netns.py): meshd on
host A's bridge address (admin over TLS), `meshctl run --capture` on host B. While it runs, B's nat
table holds the MESH_ chains; they are gone after the app exits, after SIGTERM to meshctl and after
the sidecar fails to start. The sidecar runs as uid/gid 1337 with no supplementary group, the app
as the invoking user (SUDO_UID/SUDO_GID, else meshctl's uid) with no proxy variable even when
meshctl's environment had them. A sidecar killed with SIGKILL is restarted (fresh join token, the
app untouched, the restart logged) with the rules in place. Refusals: no NET_ADMIN (exit 1), a bad
capture flag (exit 2, named), a capture flag without --capture, an app that would run as the proxy
uid; none of them applies a rule or starts the app.

The sidecar's own `--capture` mode (listeners reading SO_ORIGINAL_DST, DNS) is not exercised here:
these tests check what meshctl does around it."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import MESHCTL, MESHD, wait_until
from netns import Hosts

A, B = 0, 1
# The app runs as other uids too: the system interpreter (a user's pyenv under /root is not theirs).
SYSTEM_PYTHON = "/usr/bin/python3"
API, ADMIN = 15012, 15014

# The app: writes its uid, gid, groups and environment to REPORT, then waits for STOP (exit 5)
# or SIGTERM (exit 7).
APP = r"""
import json, os, signal, sys, time
report, stop = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
info = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
        "groups": os.getgroups(), "env": dict(os.environ)}
for line in open("/proc/self/status"):
    if line.startswith(("CapEff:", "CapBnd:")):
        info[line.split(":")[0]] = int(line.split()[1], 16)
try:
    os.setgid(1337)          # what would take a root app out of capture (the gid-owner rules)
    info["setgid_1337"] = "allowed"
except PermissionError:
    info["setgid_1337"] = "refused"
tmp = report + ".tmp"
with open(tmp, "w") as f:
    json.dump(info, f)
os.rename(tmp, report)
while not os.path.exists(stop):
    time.sleep(0.05)
sys.exit(5)
"""

PROXY_ENV = {"http_proxy": "http://192.0.2.9:3128", "HTTP_PROXY": "http://192.0.2.9:3128",
             "https_proxy": "http://192.0.2.9:3128", "HTTPS_PROXY": "http://192.0.2.9:3128",
             "no_proxy": "example.org", "NO_PROXY": "example.org", "grpc_proxy": "http://192.0.2.9:3128",
             "ALL_PROXY": "socks5://192.0.2.9:1080"}


class Site:
    """Two hosts: meshd on A (API and TLS admin on A's address), a shared scratch directory."""

    def __init__(self, h, tmp):
        self.h = h
        self.tmp = tmp
        self.state = tmp / "meshd-state"
        a4 = h.addr4(A)
        self.meshd = h.popen(A, [MESHD, "--state-dir", self.state, "--api-port", API, "--admin-port", ADMIN,
                                 "--listen-address", a4, "--admin-address", a4], "meshd")
        self.url = f"https://{a4}:{ADMIN}"
        wait_until(lambda: h.run(B, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                                     "--cacert", self.state / "root-cert.pem", f"{self.url}/ready"]).stdout == "200",
                   timeout=20, what=f"meshd ready (log {self.meshd.log_path})")
        # Readable and writable by every uid the app may run as.
        self.scratch = tempfile.mkdtemp(prefix="run-capture-")
        os.chmod(self.scratch, 0o777)
        self.app = os.path.join(self.scratch, "app.py")
        with open(self.app, "w") as f:
            f.write(APP)
        os.chmod(self.app, 0o644)
        self.n = 0

    def paths(self):
        """A fresh (report, stop) pair for one app."""
        self.n += 1
        return os.path.join(self.scratch, f"report-{self.n}.json"), os.path.join(self.scratch, f"stop-{self.n}")

    def argv(self, *run_args, report, stop, meshd=None):
        meshd = meshd or ["--meshd", self.url, "--root-cert", self.state / "root-cert.pem",
                          "--admin-token-file", self.state / "admin-token"]
        return [MESHCTL, *meshd, "run", *run_args, "--",
                SYSTEM_PYTHON, self.app, report, stop]

    def start(self, *run_args, env=None, name="run"):
        report, stop = self.paths()
        p = self.h.popen(B, self.argv(*run_args, report=report, stop=stop), f"{name}-{self.n}", env=env)
        p.report, p.stop = report, stop
        return p

    def run(self, *run_args, env=None, prefix=(), meshd=None, timeout=90):
        report, stop = self.paths()
        r = subprocess.run([*self.h.argv(B, [*prefix, *self.argv(*run_args, report=report, stop=stop, meshd=meshd)])],
                           capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
        r.report = report
        return r

    def nat(self):
        """B's nat tables, IPv4 and IPv6 (nft backend, the default here), without iptables-save's
        comment lines (they carry the time of the dump, which differs when a second ticks over)."""
        return "".join(line for tool in ("iptables-save", "ip6tables-save")
                       for line in self.h.run(B, [tool, "-t", "nat"]).stdout.splitlines(keepends=True) if not line.startswith("#"))

    def close(self):
        shutil.rmtree(self.scratch, ignore_errors=True)


@pytest.fixture
def site(tmp_path):
    why = Hosts.unavailable()
    if why:
        pytest.skip(why)
    with Hosts(2, tmp_path) as h:
        s = Site(h, tmp_path)
        try:
            yield s
        finally:
            s.close()


MESH_CHAINS = ("MESH_INBOUND", "MESH_IN_REDIRECT", "MESH_OUTPUT", "MESH_REDIRECT")


def has_rules(nat):
    return all(f":{c} " in nat for c in MESH_CHAINS) and "-A OUTPUT -j MESH_OUTPUT" in nat


def no_rules(nat):
    return "MESH_" not in nat


def report(p):
    try:
        wait_until(lambda: os.path.exists(p.report), timeout=40, what="the app's report")
    except AssertionError as e:
        raise AssertionError(f"{e}; meshctl's log:\n{p.log_path.read_text()}") from None
    with open(p.report) as f:
        return json.load(f)


def proc_ids(pid):
    """(Uid line, Gid line, Groups line) of /proc/PID/status, as lists of ints."""
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    get = lambda k: [int(x) for x in re.search(rf"^{k}:[ \t]*(.*)$", text, re.M).group(1).split()]
    return get("Uid"), get("Gid"), get("Groups")


def sidecar_pids(log):
    """The pids of the sidecars meshctl started, in order (from its log lines)."""
    return [int(a or b) for a, b in re.findall(r"sidecar \(pid (\d+)\)|restart \d+, pid (\d+)", log)]


def test_rules_while_running_sidecar_as_1337_app_without_proxy_variables_rules_gone_when_app_exits(site):
    assert no_rules(site.nat())
    p = site.start("--capture", "--service", "web", "--app-port", "8000", env=PROXY_ENV)
    info = report(p)
    log = p.log_path.read_text()
    # Rules in force while the app runs, on the backend said.
    nat = site.nat()
    assert has_rules(nat), nat
    assert "capture applied" in log and "backend nft" in log, log
    assert "--to-ports 15001" in nat and "--to-ports 15006" in nat and "--to-ports 15053" in nat
    # The sidecar: uid and gid 1337 (real, effective, saved, fs), no supplementary group.
    pid = sidecar_pids(log)[0]
    uids, gids, groups = proc_ids(pid)
    assert uids == [1337] * 4 and gids == [1337] * 4 and groups == [], (uids, gids, groups)
    cmdline = open(f"/proc/{pid}/cmdline").read().split("\0")
    assert "--capture" in cmdline and cmdline[cmdline.index("--outbound-port") + 1] == "15001"
    assert cmdline[cmdline.index("--dns-port") + 1] == "15053"
    # The app: meshctl's own uid (root, no sudo), not a single proxy variable, no MESH_OUTBOUND.
    assert info["uid"] == 0 and info["gid"] == 0
    # ...but none of root's capabilities except binding low ports (CAP_NET_BIND_SERVICE, bit
    # 10): it cannot change the rules or take the proxy's gid to leave them.
    assert info["CapEff"] == 1 << 10 and info["CapBnd"] == 1 << 10, info
    assert info["setgid_1337"] == "refused", info
    leaked = [k for k in info["env"] if k.lower() in ("http_proxy", "https_proxy", "no_proxy", "grpc_proxy", "all_proxy")]
    assert leaked == [], leaked
    assert "MESH_OUTBOUND" not in info["env"] and info["env"]["MESH_SERVICE"] == "web"
    # The app ends: meshctl exits with its status, the sidecar stops, the rules are gone.
    open(p.stop, "w").close()
    assert p.wait(timeout=40) == 5, p.log_path.read_text()
    assert no_rules(site.nat()), site.nat()
    assert "capture removed" in p.log_path.read_text()
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()


def test_app_runs_as_the_sudo_user_and_sigterm_removes_the_rules(site):
    p = site.start("--capture", "--service", "worker", env={"SUDO_UID": "65534", "SUDO_GID": "65534", **PROXY_ENV})
    info = report(p)
    assert (info["uid"], info["euid"], info["gid"]) == (65534, 65534, 65534), info
    assert 0 not in info["groups"] and 1337 not in info["groups"], info
    assert not [k for k in info["env"] if k.lower().endswith("_proxy")], info["env"]
    assert has_rules(site.nat())
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=40) == 7    # the app's status after the forwarded SIGTERM
    assert no_rules(site.nat()), site.nat()
    assert not os.path.exists(f"/proc/{info['pid']}")


def test_sidecar_that_fails_to_start_takes_the_rules_back(site):
    bad = os.path.join(site.scratch, "forged-token")
    with open(bad, "w") as f:
        f.write("mesh1.forged.token\n")
    r = site.run("--capture", "--service", "web", "--token-file", bad)
    assert r.returncode == 1, r.stderr
    assert "capture applied" in r.stderr and "exited before it was ready" in r.stderr, r.stderr
    assert "capture removed" in r.stderr, r.stderr
    assert no_rules(site.nat()), site.nat()
    assert not os.path.exists(r.report)   # the app never started


def test_sigkilled_sidecar_is_restarted_under_capture(site):
    p = site.start("--capture", "--service", "web", "--app-port", "8000")
    info = report(p)
    first = sidecar_pids(p.log_path.read_text())[0]
    os.kill(first, signal.SIGKILL)
    # Back within seconds: a new pid, as 1337, ready on the admin port; the app untouched. Its join
    # token was minted through meshd's admin API on host A while the rules were in force (meshctl's
    # own calls are not captured).
    wait_until(lambda: "the restarted sidecar is ready" in p.log_path.read_text(), timeout=20,
               what=f"the restart ({p.log_path.read_text()})")
    log = p.log_path.read_text()
    assert "killed by signal 9 (SIGKILL)" in log and "capture fails closed" in log, log
    second = sidecar_pids(log)[-1]
    assert second != first and proc_ids(second)[0] == [1337] * 4
    assert site.h.run(B, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15000/ready"]).stdout == "200"
    assert os.path.exists(f"/proc/{info['pid']}") and p.poll() is None
    assert has_rules(site.nat())
    open(p.stop, "w").close()
    assert p.wait(timeout=40) == 5
    assert no_rules(site.nat())


def test_refusals_apply_nothing_and_start_nothing(site):
    # A bad capture flag: exit 2, the library's message naming it.
    r = site.run("--capture", "--exclude-inbound-ports", "70000", "--service", "web")
    assert r.returncode == 2 and "--exclude-inbound-ports" in r.stderr and "70000" in r.stderr, r.stderr
    r = site.run("--capture", "--exclude-outbound-cidrs", "10.0.0.0/33", "--service", "web")
    assert r.returncode == 2 and "--exclude-outbound-cidrs" in r.stderr, r.stderr
    # A capture flag without --capture is refused by name, not ignored.
    r = site.run("--proxy-uid", "1400", "--service", "web")
    assert r.returncode == 2 and "--proxy-uid" in r.stderr and "--capture" in r.stderr, r.stderr
    # The app would run as the proxy uid: its traffic would never be captured.
    r = site.run("--capture", "--service", "web", env={"SUDO_UID": "1337", "SUDO_GID": "1337"})
    assert r.returncode == 2 and "proxy" in r.stderr, r.stderr
    # Without NET_ADMIN (uid 65534, who cannot read meshd's files: plain meshd URL and a token file
    # it may read; the check comes before meshd is asked anything): exit 1 saying so.
    token = os.path.join(site.scratch, "admin-token")
    shutil.copy(site.state / "admin-token", token)
    os.chmod(token, 0o644)
    r = site.run("--capture", "--service", "web", meshd=["--meshd", f"http://{site.h.addr4(A)}:{ADMIN}", "--admin-token-file", token],
                 prefix=["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"])
    assert r.returncode == 1 and "NET_ADMIN" in r.stderr, r.stderr
    # Root without CAP_NET_ADMIN alone: still refused, naming it.
    r = site.run("--capture", "--service", "web",
                 prefix=["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"])
    assert r.returncode == 1 and "CAP_NET_ADMIN" in r.stderr and "SETUID" not in r.stderr, r.stderr
    for i in range(1, site.n + 1):
        assert not os.path.exists(os.path.join(site.scratch, f"report-{i}.json")), i
    assert no_rules(site.nat())
    # Nothing left running in B.
    assert site.h.run(B, ["ss", "-ltnH"]).stdout.strip() == ""


def test_rules_already_in_force_are_not_taken_over(site):
    """Rules a run did not apply are not its to remove: with another captured app running in the
    namespace, a second `run --capture` refuses to start (its sidecar could not have the proxy
    ports anyway) and leaves the first one's rules exactly as they were, so that app stays
    captured; they go when the first run ends."""
    first = site.start("--capture", "--service", "web", "--app-port", "8000")
    report(first)
    before = site.nat()
    assert has_rules(before)
    r = site.run("--capture", "--service", "web2", "--app-port", "8001")
    assert r.returncode == 1 and "capture rules are already in force" in r.stderr, r.stderr
    assert not os.path.exists(r.report)   # its app never started
    assert site.nat() == before
    open(first.stop, "w").close()
    assert first.wait(timeout=40) == 5
    assert no_rules(site.nat())
