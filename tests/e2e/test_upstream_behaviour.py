"""Upstream behaviours: the keep-alive race retried on a fresh connection, protocol upgrades
passed through as a tunnel, and config errors refused with a clear message."""

import socket
import subprocess

from conftest import SIDECAR, client_config, curl, free_port, server_config, stats, wait_ready
from rawserver import RawServer


def test_keepalive_race_is_retried_on_a_fresh_connection(procs, pki):
    srv = RawServer("race")
    try:
        outbound, admin = free_port(), free_port()
        cfg = client_config(pki, "c", outbound, admin, [srv.port], tls="DISABLE").replace("concurrency: 2", "concurrency: 1")
        p = procs.sidecar(cfg, "client")
        wait_ready(p, admin)
        url = f"http://127.0.0.1:{outbound}/"
        for body in ["", "x" * 1000, "y" * 20000]:
            args = ["-d", body] if body else []
            r = curl("-s", "-w", "%{http_code}", url, "-H", "Host: server", *args)
            assert r.stdout.endswith(b"200"), r.stdout
            assert f"got {len(body)}".encode() in r.stdout
        s = stats(admin)
        assert srv.closed_on_race == 2, (srv.connections, s)
        assert s["upstream_keepalive_race_retries"] == 2
        assert s["responses_2xx"] == 3 and s["responses_5xx"] == 0
    finally:
        srv.close()


def test_websocket_upgrade_is_tunnelled_through_both_sidecars(procs, pki):
    srv = RawServer("upgrade")
    try:
        inbound, sadmin = free_port(), free_port()
        s = procs.sidecar(server_config(pki, "s", inbound, sadmin, srv.port), "server")
        outbound, cadmin = free_port(), free_port()
        c = procs.sidecar(client_config(pki, "c", outbound, cadmin, [inbound]), "client")
        wait_ready(s, sadmin)
        wait_ready(c, cadmin)
        sock = socket.create_connection(("127.0.0.1", outbound), timeout=5)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: server\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"upgrade: websocket" in head.lower()
        for msg in [b"hello", b"more bytes " * 1000]:
            sock.sendall(msg)
            got = rest
            rest = b""
            while len(got) < len(msg):
                got += sock.recv(65536)
            assert got == msg.upper()
        sock.close()
        assert stats(cadmin)["upgrades"] == 1
        assert stats(sadmin)["upgrades"] == 1
    finally:
        srv.close()


def test_bad_config_is_refused_with_a_clear_message(tmp_path, pki):
    good = client_config(pki, "c", free_port(), free_port(), [free_port()])
    cases = {
        "unknown field": (good.replace("  outbound:", "  outbnd: 1\n  outbound:"), "spec.outbnd: unknown field"),
        "bad duration": (good.replace("headerTimeout: 2s", "headerTimeout: 2 seconds"), "spec.outbound.headerTimeout: expected a duration"),
        "bad endpoint": (good.replace("127.0.0.1:", "localhost-ish:", 1), "spec.clusters[0].endpoints[0]: expected IP:PORT"),
        "missing cluster": (good.replace("cluster: server", "cluster: nope"), "spec.routes[0].cluster: no cluster named \"nope\""),
        "bad yaml": (good + "\n  - : [\n", "YAML"),
        "missing key file": (good.replace(f"{pki}/client/key.pem", f"{pki}/nope.pem"), "cannot load private key"),
        "huge duration": (good.replace("headerTimeout: 2s", "headerTimeout: 5124095h"), "spec.outbound.headerTimeout: must be at most 8760h"),
        "admin port 0": (good.replace("admin: {port: ", "admin: {port: 0, x: ").replace(", x: ", "} #"), "spec.admin.port: must be between 1 and 65535"),
        "overlapping hosts": (good.replace("    - hosts: [server]\n      cluster: server\n",
                                           "    - hosts: [server]\n      cluster: server\n    - hosts: [server.default]\n      cluster: server\n"),
                              "host \"server.default\" is already routed by spec.routes[0]"),
        "bad route name": (good.replace("      cluster: server\n", "      cluster: server\n      name: 'a\"b'\n", 1), "spec.routes[0].name: expected letters"),
    }
    for name, (text, want) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        path.write_text(text)
        r = subprocess.run([str(SIDECAR), "--config", str(path)], capture_output=True, timeout=10)
        assert r.returncode != 0, name
        err = r.stderr.decode()
        assert want in err, (name, err)
        assert err.count("\n") == 1, (name, err)            # one line
        assert str(path) in err, (name, err)                # names the file
    r = subprocess.run([str(SIDECAR), "--bogus"], capture_output=True, timeout=10)
    assert r.returncode != 0 and b"unknown flag --bogus" in r.stderr
    r = subprocess.run([str(SIDECAR), "--help"], capture_output=True, timeout=10)
    assert r.returncode == 0 and b"--config" in r.stdout


def test_ready_and_port_conflict(procs, pki):
    outbound, admin = free_port(), free_port()
    cfg = client_config(pki, "c", outbound, admin, [free_port()])
    p = procs.sidecar(cfg, "first")
    wait_ready(p, admin)
    # A second sidecar on the same ports fails fast with one clear line (admin is not SO_REUSEPORT).
    q = procs.sidecar(cfg, "second")
    assert q.wait(10) != 0
    assert "cannot listen on 127.0.0.1:" in q.log_path.read_text()
