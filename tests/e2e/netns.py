"""Hosts for end-to-end tests: Linux network namespaces joined by veth pairs to one bridge, each
with an IPv4 and an IPv6 address, standing in for separate machines (DESIGN §10).

    with Hosts(3, tmp_path) as h:                 # or the `hosts3` fixture in test_hosts.py
        h.addr4(0), h.addr6(0)                    # '10.77.0.1', 'fd00:77::1'
        h.run(1, ["ss", "-ltn"])                  # CompletedProcess (text, captured)
        p = h.popen(1, ["python3", "app.py"], "app")   # a long-running child, log in tmp/app.log

Layout: namespaces `mh-<pid>-<n>-h<i>` (the hosts, their link `eth0`) and `mh-<pid>-<n>-br`
holding the bridge `br0` with the other ends of the veth pairs. The root namespace is never
changed, so several test runs (and other builders) never see each other. Addresses:
10.77.0.(i+1)/24 and fd00:77::(i+1)/64 (no duplicate-address detection wait); every host's
loopback is up.

Tear-down (`close`, the context manager's exit, and an atexit hook) kills every process started
with `popen` (its whole process group) and deletes the namespaces, which removes the veth pairs
and the bridge with them. Namespaces left by a run that was killed outright (its pid is gone) are
removed when the next `Hosts` starts. Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN): check with
`Hosts.unavailable()`, which returns the reason to skip, or None.
"""

import atexit
import itertools
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

_PREFIX = "mh-"
_counter = itertools.count()


def _ip(*args, check=True):
    # Generous: creating a namespace waits for the kernel to finish tearing down earlier ones.
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=120)


def _pids_in(name):
    """The processes in namespace `name`. `ip netns pids` reads every process's /proc entry and
    can hang on one that is being torn down: it gets 10 s, then our own scan gets 10 s on a
    thread of its own; a cleanup never hangs or raises on it (the namespace is deleted anyway)."""
    try:
        return subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10).stdout.split()
    except subprocess.TimeoutExpired:
        pass
    found = []

    def scan():
        try:
            want = os.stat(f"/run/netns/{name}").st_ino
        except OSError:
            return
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.stat(f"/proc/{pid}/ns/net").st_ino == want:
                        found.append(pid)
                except OSError:
                    pass
    t = threading.Thread(target=scan, daemon=True)
    t.start()
    t.join(10)
    return list(found)


def _reap_stale():
    """Deletes namespaces of earlier Hosts whose process no longer exists (killed runs)."""
    out = _ip("netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{_PREFIX}(\d+)-\d+-", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            try:
                _ip("netns", "del", name, check=False)
            except subprocess.TimeoutExpired:   # left to the kernel; another run reaps it
                pass


class Hosts:
    """`n` hosts (network namespaces) on one bridge; a context manager that always cleans up."""

    SUBNET4 = "10.77.0"
    SUBNET6 = "fd00:77:"

    @staticmethod
    def unavailable():
        """Why these hosts cannot be built here (a reason to skip), or None."""
        if os.geteuid() != 0:
            return "network-namespace hosts need root (ip netns, veth, bridge)"
        if shutil.which("ip") is None:
            return "iproute2's `ip` is not installed"
        return None

    def __init__(self, n, tmp=None):
        why = Hosts.unavailable()
        if why:
            raise RuntimeError(why)
        self.n = n
        self.tmp = pathlib.Path(tmp) if tmp else pathlib.Path(tempfile.mkdtemp(prefix="hosts-"))
        self.base = f"{_PREFIX}{os.getpid()}-{next(_counter)}"
        self.bridge_ns = f"{self.base}-br"
        self._namespaces = []
        self._procs = []
        self._closed = False
        _reap_stale()
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _add_ns(self, name):
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self):
        self._add_ns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i in range(self.n):
            ns = self.ns(i)
            self._add_ns(ns)
            # Both ends are created in the bridge's namespace; one moves to the host as eth0.
            _ip("-n", self.bridge_ns, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.bridge_ns, "link", "set", f"h{i}", "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", f"h{i}", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr4(i)}/24", "dev", "eth0")
            _ip("-n", ns, "-6", "addr", "add", f"{self.addr6(i)}/64", "dev", "eth0", "nodad")
            _ip("-n", ns, "link", "set", "eth0", "up")
        # Each host reaches every other over both families before a test starts.
        for i in range(self.n):
            self._wait_reachable(i, [a for j in range(self.n) if j != i for a in (self.addr4(j), self.addr6(j))])

    _PROBE = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[1])
for a in sys.argv[2:]:
    while True:
        try:
            socket.create_connection((a, 9), timeout=0.5).close()
            break
        except ConnectionRefusedError:
            break  # the host answered (RST): reachable
        except OSError as e:
            if time.monotonic() > deadline:
                sys.exit(f"{a}: {e}")
            time.sleep(0.05)
"""

    def _wait_reachable(self, i, addrs, timeout=10.0):
        """Waits until host `i` gets an answer (a refused TCP connect) from every address."""
        r = self.run(i, ["python3", "-c", self._PROBE, str(timeout), *addrs], timeout=timeout + 30)
        if r.returncode != 0:
            raise RuntimeError(f"host {i} cannot reach {r.stderr.strip()}")

    def ns(self, i):
        """The network namespace name of host `i` (for `ip netns exec`, `ip -n`)."""
        return f"{self.base}-h{i}"

    def addr4(self, i):
        """Host `i`'s IPv4 address on the bridge, e.g. 10.77.0.1 for host 0."""
        return f"{self.SUBNET4}.{i + 1}"

    def addr6(self, i):
        """Host `i`'s IPv6 address on the bridge, e.g. fd00:77::1 for host 0 (no brackets)."""
        return f"{self.SUBNET6}:{i + 1}"

    def argv(self, i, args):
        """`args` prefixed to run inside host `i` (`ip netns exec NS ...`)."""
        return ["ip", "netns", "exec", self.ns(i), *[str(a) for a in args]]

    def run(self, i, args, check=False, timeout=60, env=None, **kw):
        """Runs `args` in host `i` to completion: a CompletedProcess with text stdout/stderr."""
        return subprocess.run(self.argv(i, args), capture_output=True, text=True, check=check, timeout=timeout,
                              env={**os.environ, **(env or {})}, **kw)

    def popen(self, i, args, log, env=None):
        """Starts `args` in host `i` in its own process group, output (both streams) to
        TMP/LOG.log; the process (`.log_path` set) is killed at tear-down if still running."""
        log_path = self.tmp / f"{log}.log"
        f = open(log_path, "wb")
        p = subprocess.Popen(self.argv(i, args), stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **(env or {})})
        f.close()
        p.log_path = log_path
        self._procs.append(p)
        return p

    def close(self):
        """Kills every process started here, then deletes the namespaces (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(self._namespaces):
            # A namespace still used by a process outside our list would linger; kill those too.
            for pid in _pids_in(name):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            # The kernel can take minutes to tear namespaces down after many tests: a delete
            # that does not finish in 30 s goes on in the background, and the test's result
            # stands (its processes are gone; an empty namespace harms nothing).
            try:
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            except subprocess.TimeoutExpired:
                subprocess.Popen(["ip", "netns", "del", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        self._namespaces = []
        try:
            atexit.unregister(self.close)
        except Exception:  # noqa: BLE001 - interpreter shutting down
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
