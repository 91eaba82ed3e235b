"""Sidecar start-up that cannot lie: a sidecar never shares its proxy ports with another process,
never serves with a certificate its peers would refuse, and in mesh mode answers /ready 200 only
once the first config from meshd is applied (DESIGN §2)."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

from conftest import SIDECAR, Meshd, client_config, free_port, http_get, server_config, wait_ready, wait_until


def in_use(port, listener):
    return f"cannot listen on 127.0.0.1:{port} ({listener}): port {port} is already in use by another process"


# ---------------------------------------------------------------- ports


def test_a_second_static_sidecar_on_the_same_outbound_port_is_refused(procs, pki):
    outbound, admin = free_port(), free_port()
    first = procs.sidecar(client_config(pki, "first", outbound, admin, [free_port()]), "first")
    wait_ready(first, admin)
    # Same outbound port, its own admin port: only the outbound listener is in conflict. Before,
    # both bound it with SO_REUSEPORT and the kernel split the app's connections between them.
    admin2 = free_port()
    second = procs.sidecar(client_config(pki, "second", outbound, admin2, [free_port()]), "second")
    assert second.wait(10) == 1
    log = second.log_path.read_text()
    assert f"sidecar: error: {in_use(outbound, 'outbound')}\n" == log, log
    # The first one still holds the port and is still ready.
    assert http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200
    assert first.poll() is None


def holder(port, reuseport):
    """A plain listening socket on 127.0.0.1:port, as another program would hold it."""
    s = socket.socket()
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(8)
    return s


def test_a_port_held_by_another_program_is_refused_naming_the_listener(procs, pki):
    app = procs.app("server")
    # With SO_REUSEPORT first: a sidecar used to join such a holder's port and share it.
    cases = [("inbound", True), ("admin", True), ("inbound", False), ("admin", False)]
    for i, (listener, reuseport) in enumerate(cases):
        inbound, admin = free_port(), free_port()
        held = holder(inbound if listener == "inbound" else admin, reuseport)
        try:
            p = procs.sidecar(server_config(pki, f"s{i}", inbound, admin, app), f"held-{listener}-{reuseport}")
            assert p.wait(10) == 1, (listener, reuseport)
            port = inbound if listener == "inbound" else admin
            assert in_use(port, listener) in p.log_path.read_text(), (listener, reuseport, p.log_path.read_text())
        finally:
            held.close()


def test_a_second_mesh_mode_sidecar_on_the_same_outbound_port_is_refused_before_asking_meshd(procs):
    m = Meshd(procs)
    first, admin, _, outbound = m.sidecar("productpage", "productpage")
    admin2 = free_port()
    second = procs.start([SIDECAR, "--meshd", f"127.0.0.1:{m.api}", "--root-cert", m.root, "--token", m.token("productpage"),
                          "--service", "productpage", "--admin-port", admin2, "--inbound-port", free_port(),
                          "--outbound-port", outbound, "--concurrency", "2"], "second")
    assert second.wait(10) == 1
    log = second.log_path.read_text()
    assert in_use(outbound, "outbound") in log, log
    assert "certificate" not in log, log     # it stopped before asking meshd for one
    assert http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200
    assert first.poll() is None


# ---------------------------------------------------------------- own certificate


def static_with_cert(pki, tmp, cert_dir, name):
    outbound, admin = free_port(), free_port()
    cfg = client_config(pki, name, outbound, admin, [free_port()]).replace(f"{pki}/client/", f"{cert_dir}/")
    path = tmp / f"{name}.yaml"
    path.write_text(cfg)
    return path, admin


def test_an_expired_or_foreign_certificate_is_refused_at_check_and_at_start(procs, pki, tmp_path):
    expired_end = subprocess.run(["openssl", "x509", "-in", f"{pki}/expired/client/cert.pem", "-noout", "-enddate"],
                                 capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.strptime(expired_end, "%b %d %H:%M:%S %Y GMT"))
    cases = [
        ("expired", f"{pki}/expired/client",
         f"certificate {pki}/expired/client/cert-chain.pem expired at {when}"),
        ("foreign", f"{pki}/foreign/client",
         f"certificate {pki}/foreign/client/cert-chain.pem does not chain to the trust bundle {pki}/root-cert.pem: "
         "unable to get local issuer certificate"),
    ]
    for name, cert_dir, reason in cases:
        path, admin = static_with_cert(pki, tmp_path, cert_dir, name)
        want = f"sidecar: error: {path}: {reason}\n"
        r = subprocess.run([str(SIDECAR), "--check", "--config", str(path)], capture_output=True, text=True, timeout=20)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", want), name
        p = procs.start([SIDECAR, "--config", path], f"start-{name}")
        assert p.wait(10) == 2, name
        assert p.log_path.read_text() == want, name
    # The genuine certificate passes both.
    path, admin = static_with_cert(pki, tmp_path, f"{pki}/client", "genuine")
    r = subprocess.run([str(SIDECAR), "--check", "--config", str(path)], capture_output=True, text=True, timeout=20)
    assert (r.returncode, r.stdout) == (0, f"config ok: {path}\n"), r.stderr


def test_sighup_to_an_expired_certificate_keeps_the_config_in_force(procs, pki, tmp_path):
    path, admin = static_with_cert(pki, tmp_path, f"{pki}/client", "reloaded")
    p = procs.start([SIDECAR, "--config", path], "reloaded")
    wait_ready(p, admin)
    good = path.read_text()
    path.write_text(good.replace(f"{pki}/client/", f"{pki}/expired/client/"))
    os.kill(p.pid, signal.SIGHUP)
    wait_until(lambda: "SIGHUP" in p.log_path.read_text(), what="the SIGHUP outcome logged")
    log = p.log_path.read_text()
    assert f"SIGHUP: {path}: certificate {pki}/expired/client/cert-chain.pem expired at " in log, log
    assert "applied as config version" not in log, log
    assert json.loads(http_get(f"http://127.0.0.1:{admin}/config_dump")[1])["version"] == "static-1"
    assert http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200


# ---------------------------------------------------------------- mesh-mode readiness


class Relay:
    """A TCP relay to meshd's API port: the first `passing` connections go straight through; later
    ones are accepted but held, unrelayed, until `release()`. TLS passes through untouched (the
    sidecar still checks meshd's identity end to end)."""

    def __init__(self, target_port, passing):
        self.target, self.passing = target_port, passing
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.accepted = 0
        self.held = threading.Event()
        self.released = threading.Event()
        self.closing = threading.Event()
        self.socks = []
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.closing.is_set():
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.socks.append(c)
            self.accepted += 1
            if self.accepted > self.passing:
                self.held.set()
            threading.Thread(target=self.serve, args=(c, self.accepted <= self.passing), daemon=True).start()

    def serve(self, c, passing):
        if not passing:
            self.released.wait()
            if self.closing.is_set():
                return
        try:
            u = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            c.close()
            return
        self.socks.append(u)

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(u, c), daemon=True).start()
        pump(c, u)

    def release(self):
        self.released.set()

    def close(self):
        self.closing.set()
        self.released.set()
        self.lsock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def test_mesh_mode_is_not_ready_until_the_first_config_from_meshd_is_applied(procs):
    m = Meshd(procs)
    relay = Relay(m.api, passing=1)      # the certificate request goes through; the config stream waits
    try:
        admin = free_port()
        p = procs.start([SIDECAR, "--meshd", f"127.0.0.1:{relay.port}", "--root-cert", m.root, "--token", m.token("productpage"),
                         "--service", "productpage", "--admin-port", admin, "--inbound-port", free_port(),
                         "--outbound-port", free_port(), "--concurrency", "2"], "sidecar")

        def certs():
            code, body = http_get(f"http://127.0.0.1:{admin}/certs", timeout=1)
            return code == 200 and json.loads(body)["identity"] == "spiffe://cluster.local/ns/default/sa/productpage"
        # Certificate in place, listeners bound, the proxy serving its admin endpoints...
        wait_until(certs, timeout=20, what="the certificate in place")
        wait_until(relay.held.is_set, timeout=10, what="the sidecar asking meshd for its config")
        # ...but no config from meshd yet: not ready, for as long as meshd does not answer.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            code, body = http_get(f"http://127.0.0.1:{admin}/ready", timeout=1)
            assert (code, body) == (503, b"PRE_INITIALIZING\n")
            time.sleep(0.05)
        assert "from meshd applied" not in p.log_path.read_text()
        relay.release()
        wait_ready(p, admin, timeout=20)
        # The first 200 comes with meshd's config in force (version 1 from meshd, the sidecar's
        # second snapshot), logged before the sidecar says it is ready.
        assert json.loads(http_get(f"http://127.0.0.1:{admin}/config_dump")[1])["version"] == "mesh-2"
        log = p.log_path.read_text()
        applied = log.index("config version 1 from meshd applied (mesh-2)")
        assert log.index("ready: the first config from meshd (version 1) is applied") > applied, log
    finally:
        relay.close()
