"""Fixtures for the end-to-end tests: they start the built `sidecar` executable, the test app
(tools/upstream.py) and small raw-socket servers as real processes on 127.0.0.1, with free ports
and a PKI generated at run time by certs/make-pki.sh, and always stop every child they started."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SIDECAR = pathlib.Path(os.environ.get("SIDECAR_BIN", ROOT / ".build" / "debug" / "sidecar"))
# MESHD_BIN / MESHCTL_BIN override the siblings of the sidecar (e.g. sanitizer builds elsewhere).
MESHD = pathlib.Path(os.environ.get("MESHD_BIN", SIDECAR.parent / "meshd"))
MESHCTL = pathlib.Path(os.environ.get("MESHCTL_BIN", SIDECAR.parent / "meshctl"))


_handed_out = set()


def free_port() -> int:
    """A free port on 127.0.0.1, never one handed out before in this session: a port released at
    once can come back for the next call, and a sidecar refuses to share one between listeners."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - polling
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def http_get(url, timeout=5.0):
    """(status, body) without raising on HTTP errors."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stats(admin_port) -> dict:
    _, body = http_get(f"http://127.0.0.1:{admin_port}/stats")
    out = {}
    for line in body.decode().splitlines():
        k, _, v = line.partition(": ")
        out[k] = int(v) if v.isdigit() else v
    return out


class Procs:
    """Children of one test; all are killed at teardown."""

    def __init__(self, tmp: pathlib.Path):
        self.tmp = tmp
        self.procs = []

    def start(self, args, name, env=None):
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        p.log_path = self.tmp / f"{name}.log"
        self.procs.append(p)
        return p

    def app(self, name="reviews"):
        port = free_port()
        self.start([sys.executable, ROOT / "tools" / "upstream.py", "--port", port, "--name", name], f"app-{name}-{port}")
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() or True,
                   what=f"app on {port}")
        return port

    def sidecar(self, config_text, name):
        path = self.tmp / f"{name}.yaml"
        path.write_text(config_text)
        p = self.start([SIDECAR, "--config", path], name)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)


def wait_ready(proc, admin_port, timeout=10.0):
    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"sidecar exited with {proc.returncode}: {proc.log_path.read_text()}")
        return http_get(f"http://127.0.0.1:{admin_port}/ready", timeout=1)[0] == 200
    wait_until(ready, timeout, what=f"sidecar ready on admin {admin_port}")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    script = ROOT / "certs" / "make-pki.sh"
    subprocess.run(["bash", script, d, "client", "server"], check=True, capture_output=True)
    subprocess.run(["bash", script, "--expired", d, "client"], check=True, capture_output=True)
    subprocess.run(["bash", script, "--foreign", d, "client"], check=True, capture_output=True)
    subprocess.run(["bash", script, "--foreign", d, "server"], check=True, capture_output=True)
    return d


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.stop_all()


def server_config(pki, name, inbound_port, admin_port, app_port, extra=""):
    return f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: {name}, namespace: default}}
spec:
  workload: {{service: server}}
  concurrency: 2
  admin: {{port: {admin_port}}}
  tls:
    certChain: {pki}/server/cert-chain.pem
    privateKey: {pki}/server/key.pem
    trustBundle: {pki}/root-cert.pem
  inbound:
    port: {inbound_port}
    appAddress: 127.0.0.1:{app_port}
    headerTimeout: 2s
{extra}
"""


def client_config(pki, name, outbound_port, admin_port, endpoints, cert="client", sans=None,
                  cluster_extra="", spec_extra="", tls="ISTIO_MUTUAL"):
    eps = "\n".join(f"        - 127.0.0.1:{p}" for p in endpoints)
    san_block = ""
    if sans:
        san_block = "      subjectAltNames:\n" + "\n".join(f"        - {s}" for s in sans) + "\n"
    return f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: {name}, namespace: default}}
spec:
  workload: {{service: client}}
  concurrency: 2
  admin: {{port: {admin_port}}}
  tls:
    certChain: {pki}/{cert}/cert-chain.pem
    privateKey: {pki}/{cert}/key.pem
    trustBundle: {pki}/root-cert.pem
  outbound:
    port: {outbound_port}
    headerTimeout: 2s
  clusters:
    - name: server
      tls: {tls}
{san_block}      endpoints:
{eps}
{cluster_extra}
  routes:
    - hosts: [server]
      cluster: server
{spec_extra}
"""


class Mesh:
    """app <- server sidecar (inbound mTLS) <- client sidecar (outbound) <- test client."""

    def __init__(self, procs, pki, client_cluster_extra="", server_extra=""):
        self.app_port = procs.app("server")
        self.inbound = free_port()
        self.server_admin = free_port()
        self.outbound = free_port()
        self.client_admin = free_port()
        self.server = procs.sidecar(server_config(pki, "server-sidecar", self.inbound, self.server_admin, self.app_port, server_extra), "server-sidecar")
        self.client = procs.sidecar(client_config(pki, "client-sidecar", self.outbound, self.client_admin, [self.inbound],
                                                  sans=["spiffe://cluster.local/ns/default/sa/server"],
                                                  cluster_extra=client_cluster_extra), "client-sidecar")
        wait_ready(self.server, self.server_admin)
        wait_ready(self.client, self.client_admin)

    def url(self, path):
        return f"http://127.0.0.1:{self.outbound}{path}"


@pytest.fixture
def mesh(procs, pki):
    return Mesh(procs, pki)


def curl(*args, timeout=60):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)


class Meshd:
    """A meshd process with its own state directory and free ports; meshctl bound to it."""

    def __init__(self, procs, name="meshd", cert_ttl="1h", extra=(), state=None):
        self.procs = procs
        self.state = state or procs.tmp / f"{name}-state"
        self.api = free_port()
        self.admin = free_port()
        self.name = name
        self.cert_ttl = cert_ttl
        self.extra = list(extra)
        self.start()

    def start(self):
        self.proc = self.procs.start([MESHD, "--state-dir", self.state, "--api-port", self.api, "--admin-port", self.admin,
                                      "--cert-ttl", self.cert_ttl, *self.extra], self.name)
        wait_until(lambda: http_get(f"http://127.0.0.1:{self.admin}/ready", timeout=1)[0] == 200, what="meshd ready")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    @property
    def root(self):
        return self.state / "root-cert.pem"

    def ctl(self, *args, check=True):
        r = subprocess.run([str(MESHCTL), "--meshd", f"http://127.0.0.1:{self.admin}", "--admin-token-file",
                            str(self.state / "admin-token"), *[str(a) for a in args]], capture_output=True, text=True, timeout=30)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def routes(self):
        """(kind, namespace/name) of each document in force, from `meshctl get routes` (its table:
        a header line, a line per document, indented lines per route or subset)."""
        out = self.ctl("get", "routes").stdout.splitlines()[1:]
        return [tuple(l.split()[:2]) for l in out if l and not l.startswith(" ")]

    def token(self, sa, ns="default", ttl="1h"):
        return self.ctl("token", "create", "--namespace", ns, "--service-account", sa, "--ttl", ttl).stdout.strip()

    def sidecar(self, name, sa, app_port=None, routes=(), admin=None, extra=(), meshd=None):
        """A sidecar in mesh mode; returns (process, admin port, inbound port, outbound port).
        `meshd`: the --meshd value (default this meshd's API)."""
        admin = admin or free_port()
        inbound, outbound = free_port(), free_port()
        args = [SIDECAR, "--meshd", meshd or f"127.0.0.1:{self.api}", "--root-cert", self.root, "--token", self.token(sa),
                "--service", sa, "--admin-port", admin, "--inbound-port", inbound, "--outbound-port", outbound,
                "--concurrency", "1", *extra]
        if app_port:
            args += ["--app-port", app_port]
        for r in routes:
            args += ["--route", r]
        p = self.procs.start(args, name)
        wait_ready(p, admin, timeout=20)
        return p, admin, inbound, outbound

