"""A real etcd cluster for tests (Debian's etcd-server 3.4): members on free 127.0.0.1 ports with
temp data dirs, started through the test's `Procs` (killed at teardown on every path), and a
relay that stands between one meshd and etcd so a test can hold back what etcd sends it."""

import json
import shutil
import socket
import subprocess
import threading
import time

from conftest import free_port, wait_until

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


class EtcdCluster:
    """`n` members; `endpoints` are HOST:PORT of their client ports."""

    def __init__(self, procs, n=3, name="etcd"):
        self.procs = procs
        self.members = []
        for i in range(n):
            self.members.append({"name": f"{name}{i}", "client": free_port(), "peer": free_port(), "proc": None})
        token = f"mesh-test-{self.members[0]['client']}"   # one cluster: one token for every member
        initial = ",".join(f"{m['name']}=http://127.0.0.1:{m['peer']}" for m in self.members)
        for m in self.members:
            data = procs.tmp / f"{m['name']}-data"
            m["proc"] = procs.start([ETCD, "--name", m["name"], "--data-dir", data,
                                     "--listen-client-urls", f"http://127.0.0.1:{m['client']}",
                                     "--advertise-client-urls", f"http://127.0.0.1:{m['client']}",
                                     "--listen-peer-urls", f"http://127.0.0.1:{m['peer']}",
                                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{m['peer']}",
                                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                                     "--initial-cluster-token", token,
                                     "--heartbeat-interval", "50", "--election-timeout", "500"], m["name"])
        wait_until(self.healthy, timeout=30, what="etcd cluster healthy")

    @property
    def endpoints(self):
        return [f"127.0.0.1:{m['client']}" for m in self.members]

    def store_flag(self, endpoints=None):
        return "etcd://" + ",".join(endpoints or self.endpoints)

    def ctl(self, *args, endpoints=None, check=True):
        r = subprocess.run([ETCDCTL, "--endpoints", ",".join(endpoints or self.live_endpoints()), *[str(a) for a in args]],
                           capture_output=True, text=True, timeout=20, env={"ETCDCTL_API": "3"})
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def live_endpoints(self):
        return [f"127.0.0.1:{m['client']}" for m in self.members if m["proc"].poll() is None]

    def healthy(self):
        r = self.ctl("endpoint", "health", check=False)
        return r.returncode == 0

    def kill(self, i):
        m = self.members[i]
        m["proc"].kill()
        m["proc"].wait()

    def get(self, key):
        """The value under `key` now (None: absent)."""
        r = self.ctl("get", key, "--print-value-only")
        out = r.stdout.rstrip("\n")
        return out if out else None

    def revision(self):
        r = self.ctl("endpoint", "status", "-w", "json")
        return max(int(s["Status"]["header"]["revision"]) for s in json.loads(r.stdout))


class Relay:
    """A TCP relay from a local port to one etcd member. `hold()` stops passing what etcd sends
    (it is kept, not delivered); `cut()` closes every relayed connection, dropping what was
    held, so the client sees a clean close with nothing pending and must reconnect."""

    def __init__(self, target_port):
        self.target = target_port
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.held = threading.Event()
        self.pairs = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.pairs.append((c, u))
            threading.Thread(target=self._pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, True), daemon=True).start()

    def _pump(self, src, dst, from_etcd):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                while from_etcd and self.held.is_set():
                    time.sleep(0.02)
                    if src.fileno() < 0 or dst.fileno() < 0:
                        return
                dst.sendall(b)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold(self):
        self.held.set()

    def cut(self):
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for c, u in pairs:
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
        self.held.clear()

    def close(self):
        self.closed = True
        self.cut()
        self.srv.close()
