"""The sidecar's command line as `meshctl kube-inject` writes it (DESIGN §11), each part real:
`--meshd` by host name, `--token-file` re-read when a token is needed, `--labels-file` (the
downward API's format), `--status-port` for the kubelet and Prometheus, `--app-probe` (Istio's
probe rewrite) and `--check` in mesh mode. Real meshd, real sockets, real HTTP clients."""

import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import MESHCTL, MESHD, SIDECAR, Meshd, free_port, http_get, wait_ready, wait_until
from netns import Hosts


def status_get(host, port, path, method="GET", timeout=15.0, source=None):
    """(status, body, seconds) of one request on a fresh connection (from `source` if given)."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection(host, port, timeout=timeout, source_address=(source, 0) if source else None)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace"), time.monotonic() - t0
    finally:
        c.close()


def kube_args(m, tmp, status_port, token_file, labels_file, extra=()):
    """The sidecar's command line as kube-inject writes it, the downward-API values expanded."""
    return [SIDECAR, "--meshd", f"localhost:{m.api}", "--root-cert", m.root, "--token-file", token_file,
            "--service", "reviews", "--namespace", "default", "--service-account", "reviews",
            "--labels-file", labels_file, "--advertise-address", "127.0.0.1", "--listen-address", "0.0.0.0",
            "--status-port", status_port, "--concurrency", "1", *extra]


class HungApp:
    """A server that accepts connections and never answers (the kernel completes the handshake)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


@pytest.fixture
def hung_app():
    h = HungApp()
    yield h
    h.close()


def closed_port():
    """A port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_check_in_mesh_mode(procs, tmp_path, pki):
    """`--check`: 0 and `flags ok` for kube-inject's command line (no meshd there, the status
    port held by another socket: nothing is contacted or bound); 2 naming the flag or the file
    for a bad one."""
    token = tmp_path / "token"
    token.write_text("a-token\n")
    labels = tmp_path / "labels"
    labels.write_text('app="reviews"\npod-template-hash="7d4b9c"\nversion="v1"')
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    status_port = held.getsockname()[1]
    base = [SIDECAR, "--meshd", "meshd.mesh-system.svc:15012", "--root-cert", pki / "root-cert.pem", "--token-file", token,
            "--service", "reviews", "--namespace", "default", "--service-account", "reviews", "--labels-file", labels,
            "--advertise-address", "10.1.2.3", "--listen-address", "0.0.0.0", "--app-port", "9080", "--app-protocol", "http",
            "--capture", "--status-port", str(status_port), "--app-probe", "/app-health/reviews/readyz=9080/health",
            "--app-probe", "/app-health/reviews/livez=9080/live", "--check"]
    try:
        r = subprocess.run([str(a) for a in base], capture_output=True, text=True, timeout=10)
        assert (r.returncode, r.stdout) == (0, "flags ok\n"), r.stderr

        def refused(change, *needles):
            args = [str(a) for a in base]
            for k, v in change.items():
                i = args.index(k)
                if v is None:
                    del args[i:i + 2]
                else:
                    args[i + 1] = str(v)
            r = subprocess.run(args, capture_output=True, text=True, timeout=10)
            assert r.returncode == 2 and r.stdout == "", (change, r.returncode, r.stdout, r.stderr)
            for n in needles:
                assert n in r.stderr, (change, r.stderr)
        refused({"--meshd": "meshd_.svc:15012"}, "--meshd:", "meshd_.svc")
        refused({"--meshd": "meshd.mesh-system.svc:0"}, "--meshd:", "port")
        refused({"--status-port": "70000"}, "--status-port:")
        refused({"--status-port": None}, "--app-probe:", "--status-port")
        refused({"--app-port": str(status_port)}, "--status-port:", "--app-port")
        bad = base.index("/app-health/reviews/livez=9080/live")
        for probe, needle in [("/healthz=9080", "/app-health/CONTAINER"), ("/app-health/Reviews/readyz=9080", "container name"),
                              ("/app-health/reviews/ready=9080", "readyz, livez or startupz"),
                              ("/app-health/reviews/readyz=65536", "from 1 to 65535"),
                              ("/app-health/reviews/readyz=9080health", "from 1 to 65535"),
                              ("/app-health/reviews/readyz=9080/a b", "visible ASCII"),
                              ("/app-health/reviews/readyz=9080/x", "given twice")]:
            args = [str(a) for a in base]
            args[bad] = probe
            r = subprocess.run(args, capture_output=True, text=True, timeout=10)
            assert r.returncode == 2 and "--app-probe:" in r.stderr and needle in r.stderr, (probe, r.stderr)
        refused({"--token-file": tmp_path / "missing"}, f"--token-file {tmp_path / 'missing'}: cannot read it")
        empty = tmp_path / "empty-token"
        empty.write_text("\n\n")
        refused({"--token-file": empty}, f"--token-file {empty}: the file is empty")
        refused({"--root-cert": tmp_path / "nope.pem"}, f"--root-cert {tmp_path / 'nope.pem'}: cannot read it")
        refused({"--root-cert": token}, f"--root-cert {token}: no PEM certificate there")
        bad_labels = tmp_path / "bad-labels"
        bad_labels.write_text('app="reviews"\nversion=v1\n')
        refused({"--labels-file": bad_labels}, f"--labels-file {bad_labels}:2:", "double quotes")
        refused({"--labels-file": tmp_path / "no-labels"}, f"--labels-file {tmp_path / 'no-labels'}: cannot read it")
        refused({"--advertise-address": "$(INSTANCE_IP)"}, "--advertise-address")
    finally:
        held.close()


def test_meshd_by_name_labels_file_status_port_and_probes(procs, tmp_path, hung_app):
    """`--meshd localhost:PORT` joins; the labels file's labels (a `--label` winning) are in
    meshd's registry; the status port on a non-loopback address (0.0.0.0, reached at 127.0.0.2)
    answers /ready, /healthz and /stats/prometheus and 404 for the admin-only endpoints; app
    probes pass for a healthy app, carry a failing app's status, answer 503 for a closed port,
    and a hung app delays neither /ready nor another probe."""
    m = Meshd(procs)
    app = procs.app("reviews")
    token = tmp_path / "token"
    token.write_text(m.token("reviews") + "\n")
    labels = tmp_path / "labels"
    # As the kubelet writes it: sorted, Go-quoted, no newline after the last line.
    labels.write_text('app="reviews"\napp.kubernetes.io/name="reviews"\nteam="bl\\x75e"\nversion="v2"')
    admin, status_port, inbound, outbound = free_port(), free_port(), free_port(), free_port()
    closed = closed_port()
    probes = ["--app-probe", f"/app-health/reviews/readyz={app}/status/204",
              "--app-probe", f"/app-health/reviews/livez={app}/status/500",
              "--app-probe", f"/app-health/moved/readyz={app}/status/302",
              "--app-probe", f"/app-health/reviews/startupz={app}/echo?probe=1",
              "--app-probe", f"/app-health/closed/readyz={closed}",
              "--app-probe", f"/app-health/hung/livez={hung_app.port}/"]
    p = procs.start(kube_args(m, tmp_path, status_port, token, labels,
                              ["--app-port", app, "--admin-port", admin, "--inbound-port", inbound, "--outbound-port", outbound,
                               "--label", "version=v3", *probes]), "reviews-sidecar")
    wait_ready(p, admin, timeout=20)
    log = p.log_path.read_text()
    assert f"--meshd: localhost:{m.api} is 127.0.0.1:{m.api}" in log, log

    # Labels: the file's, with --label's version, registered with meshd.
    def registered():
        out = m.ctl("get", "services").stdout
        return [l for l in out.splitlines() if "reviews" in l]
    rows = wait_until(registered, what="reviews registered")
    assert len(rows) == 1, rows
    for want in ("app=reviews", "app.kubernetes.io/name=reviews", "team=blue", "version=v3"):
        assert want in rows[0], rows
    assert "version=v2" not in rows[0], rows

    host = "127.0.0.2"   # not loopback's 127.0.0.1: the status port is bound to 0.0.0.0
    assert status_get(host, status_port, "/ready")[:2] == (200, "LIVE\n")
    assert status_get(host, status_port, "/healthz")[:2] == (200, "OK\n")
    st, body, _ = status_get(host, status_port, "/stats/prometheus")
    assert st == 200 and "# TYPE istio_requests_total counter" in body, body[:500]
    assert status_get(host, status_port, "/ready", method="HEAD")[:2] == (200, "")
    for path in ("/config_dump", "/certs", "/clusters", "/stats", "/", "/app-health/reviews/readyz/x", "/app-health/other/readyz"):
        assert status_get(host, status_port, path)[0] == 404, path
    assert status_get(host, status_port, "/drain", method="POST")[0] == 404
    assert status_get(host, status_port, "/ready", method="POST")[0] == 404
    assert p.poll() is None
    # The admin port still has them (loopback only).
    assert http_get(f"http://127.0.0.1:{admin}/config_dump")[0] == 200

    # App probes.
    assert status_get(host, status_port, "/app-health/reviews/readyz")[:2] == (200, "app answered 204\n")
    assert status_get(host, status_port, "/app-health/reviews/livez")[:2] == (500, "app answered 500\n")
    assert status_get(host, status_port, "/app-health/moved/readyz")[:2] == (200, "app answered 302\n")
    before = json.loads(http_get(f"http://127.0.0.1:{app}/_hits")[1])["hits"]
    assert status_get(host, status_port, "/app-health/reviews/startupz")[:2] == (200, "app answered 200\n")
    after = json.loads(http_get(f"http://127.0.0.1:{app}/_hits")[1])
    assert (after["hits"], after["last_host"]) == (before + 1, f"127.0.0.1:{app}"), after
    st, body, _ = status_get(host, status_port, "/app-health/closed/readyz")
    assert st == 503 and f"127.0.0.1:{closed} cannot be reached: Connection refused" in body, body
    assert body.count("\n") == 1

    # A hung app: /ready and another probe answer at once while its probes wait, up to 8 in
    # flight for its path (the 9th gets 503 at once), each 503 after 10 s. The 8 come from
    # 127.0.0.3: they are all the status-port connections one address may hold.
    results = []

    def hung():
        results.append(status_get(host, status_port, "/app-health/hung/livez", timeout=30, source="127.0.0.3"))
    threads = [threading.Thread(target=hung) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    wait_until(lambda: len([c for c in open("/proc/net/tcp").read().splitlines()
                            if c.split()[2].endswith(f":{hung_app.port:04X}") and c.split()[3] == "01"]) >= 8,
               timeout=5, what="8 probe connections to the hung app")
    for _ in range(5):
        st, _, secs = status_get(host, status_port, "/ready")
        assert st == 200 and secs < 0.1, secs
    st, _, secs = status_get(host, status_port, "/app-health/reviews/readyz")
    assert st == 200 and secs < 0.5, secs
    st, body, secs = status_get(host, status_port, "/app-health/hung/livez")
    assert st == 503 and "too many requests in flight for this probe (8)" in body and secs < 0.5, (st, body, secs)
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    assert len(results) == 8
    for st, body, secs in results:
        assert st == 503 and "did not answer within 10 s" in body, body
        assert 9.5 < secs < 13, secs
    assert took < 14
    # The slots are free again.
    assert status_get(host, status_port, "/app-health/reviews/readyz")[0] == 200


def test_status_port_before_meshd_answers_and_port_in_use(procs, tmp_path):
    """The status port is bound before meshd is contacted: with meshd unreachable it answers
    /ready 503 and /healthz 200 at once; a status port held by another process stops the
    sidecar, naming it."""
    token = tmp_path / "token"
    token.write_text("t\n")
    root = tmp_path / "root.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    tmp_path / "k.pem", "-out", root, "-days", "1", "-subj", "/CN=test"], check=True, capture_output=True)
    status_port, admin = free_port(), free_port()
    args = [SIDECAR, "--meshd", f"127.0.0.1:{closed_port()}", "--root-cert", root, "--token-file", token, "--service", "reviews",
            "--status-port", status_port, "--admin-port", admin, "--inbound-port", free_port(), "--outbound-port", free_port(),
            "--concurrency", "1"]
    p = procs.start(args, "waiting-sidecar")
    wait_until(lambda: status_get("127.0.0.1", status_port, "/healthz", timeout=1)[0] == 200, what="status port up")
    assert status_get("127.0.0.1", status_port, "/ready")[:2] == (503, "PRE_INITIALIZING\n")
    assert status_get("127.0.0.1", status_port, "/stats/prometheus")[0] == 503
    assert status_get("127.0.0.1", status_port, "/config_dump")[0] == 404
    assert p.poll() is None
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    try:
        port = held.getsockname()[1]
        args2 = [str(a) for a in args]
        args2[args2.index("--status-port") + 1] = str(port)
        args2[args2.index("--admin-port") + 1] = str(free_port())
        args2[args2.index("--inbound-port") + 1] = str(free_port())
        args2[args2.index("--outbound-port") + 1] = str(free_port())
        r = subprocess.run(args2, capture_output=True, text=True, timeout=10)
        assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port} (status): port {port} is already in use" in r.stderr, r.stderr
    finally:
        held.close()


def serial(admin):
    return json.loads(http_get(f"http://127.0.0.1:{admin}/certs")[1])["serial"]


def test_token_file_reread_for_each_join(procs, tmp_path):
    """The token file is read when a token is needed: empty at start, the sidecar waits (naming
    the file) and joins once a token is written; later, its certificate lapsed while meshd was
    stopped and the first token expired, the rewritten file's fresh token is what joins again
    (the first token is refused by then: a sidecar given it exits 1)."""
    m = Meshd(procs, cert_ttl="2s")
    token = tmp_path / "token"
    token.write_text("")
    admin = free_port()
    args = [SIDECAR, "--meshd", f"127.0.0.1:{m.api}", "--root-cert", m.root, "--token-file", token, "--service", "reviews",
            "--admin-port", admin, "--inbound-port", free_port(), "--outbound-port", free_port(), "--concurrency", "1",
            "--log-level", "debug"]
    p = procs.start(args, "reviews-sidecar")
    wait_until(lambda: f"--token-file {token}: the file is empty" in p.log_path.read_text(), what="the empty file named")
    assert http_get(f"http://127.0.0.1:{admin}/ready")[0] == 503
    minted = time.monotonic()
    first = m.token("reviews", ttl="8s")
    token.write_text(first + "\n")
    wait_ready(p, admin, timeout=min(7, 8 - (time.monotonic() - minted)))
    s1 = serial(admin)
    second = m.token("reviews", ttl="1h")
    token.write_text(second + "\n")
    # meshd away until the certificate (2 s) and the first token (8 s) have both expired.
    os.kill(m.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(max(3.0, 9.5 - (time.monotonic() - minted)))
    finally:
        os.kill(m.proc.pid, signal.SIGCONT)
    wait_until(lambda: serial(admin) != s1, timeout=30, what="a certificate obtained with the rewritten token")
    assert p.poll() is None
    # The first token is refused now: a join with it fails.
    r = subprocess.run([str(a) for a in args[:args.index("--token-file")]] + ["--token", first, "--service", "reviews",
                       "--admin-port", str(free_port()), "--inbound-port", str(free_port()), "--outbound-port", str(free_port())],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "refused" in r.stderr, r.stderr


@pytest.mark.skipif(Hosts.unavailable() is not None, reason=str(Hosts.unavailable()))
def test_meshd_name_that_resolves_later(tmp_path):
    """A `--meshd` name that does not resolve yet: the sidecar stays up (/ready 503 on the
    status port, the failure logged once per 10 s), and joins once the name resolves (here:
    the namespace's /etc/hosts, bind-mounted by `ip netns exec`, gets the entry)."""
    with Hosts(1, tmp_path) as h:
        etc = pathlib.Path("/etc/netns") / h.ns(0)
        etc.mkdir(parents=True, exist_ok=True)
        try:
            (etc / "hosts").write_text("127.0.0.1 localhost\n")
            # No nameserver answers in the namespace: a name not in hosts fails at once.
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
            state = tmp_path / "meshd-state"
            api, madmin = free_port(), free_port()
            h.popen(0, [str(MESHD), "--state-dir", str(state), "--api-port", str(api), "--admin-port", str(madmin)], "meshd")

            def meshd_ready():
                return h.run(0, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{madmin}/ready"]).stdout == "200"
            wait_until(meshd_ready, timeout=20, what="meshd ready")
            tok = h.run(0, [str(MESHCTL), "--meshd", f"http://127.0.0.1:{madmin}", "--admin-token-file", str(state / "admin-token"),
                            "token", "create", "--namespace", "default", "--service-account", "reviews"], check=True).stdout.strip()
            token = tmp_path / "token"
            token.write_text(tok)
            status_port, admin = free_port(), free_port()
            h.popen(0, [str(SIDECAR), "--meshd", f"meshd.mesh-system.svc:{api}", "--root-cert", str(state / "root-cert.pem"),
                        "--token-file", str(token), "--service", "reviews", "--status-port", str(status_port),
                        "--admin-port", str(admin), "--inbound-port", str(free_port()), "--outbound-port", str(free_port()),
                        "--concurrency", "1"], "sidecar")
            log = tmp_path / "sidecar.log"

            def code(port, path):
                return h.run(0, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}{path}"]).stdout
            wait_until(lambda: "--meshd: cannot resolve meshd.mesh-system.svc" in log.read_text(), what="resolution failure logged")
            time.sleep(3)
            assert code(status_port, "/ready") == "503"
            assert code(status_port, "/healthz") == "200"
            assert log.read_text().count("cannot resolve") == 1, log.read_text()
            with open(etc / "hosts", "a") as f:   # in place: the bind mount shows the same file
                f.write("127.0.0.1 meshd.mesh-system.svc\n")
            wait_until(lambda: code(status_port, "/ready") == "200", timeout=20, what="ready once the name resolves")
            assert f"--meshd: meshd.mesh-system.svc:{api} is 127.0.0.1:{api}" in log.read_text()
        finally:
            shutil.rmtree(etc, ignore_errors=True)
