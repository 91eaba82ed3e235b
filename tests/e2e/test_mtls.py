"""Mutual TLS on the inbound listener and on the sidecar-to-sidecar hop, with real handshakes
(curl, openssl s_client) and certificates generated at run time."""

import re
import subprocess

from conftest import Mesh, client_config, curl, free_port, server_config, stats, wait_ready


def inbound_curl(mesh, pki, *args):
    return curl("--cacert", f"{pki}/root-cert.pem", "--resolve", f"server:{mesh.inbound}:127.0.0.1",
                *args, f"https://server:{mesh.inbound}/echo", "--max-time", "5")


def test_good_client_certificate_is_accepted(mesh, pki):
    r = inbound_curl(mesh, pki, "--cert", f"{pki}/client/cert-chain.pem", "--key", f"{pki}/client/key.pem")
    assert r.returncode == 0, r.stderr
    assert b"spiffe://cluster.local/ns/default/sa/client" in r.stdout


def test_missing_foreign_and_expired_client_certificates_are_refused(mesh, pki):
    before = stats(mesh.server_admin)["tls_handshakes_failed"]
    bad = [
        [],                                                                         # no certificate
        ["--cert", f"{pki}/foreign/client/cert-chain.pem", "--key", f"{pki}/foreign/client/key.pem"],  # other CA
        ["--cert", f"{pki}/expired/client/cert-chain.pem", "--key", f"{pki}/expired/client/key.pem"],  # expired
    ]
    for args in bad:
        r = inbound_curl(mesh, pki, *args)
        assert r.returncode != 0, (args, r.stdout)
        assert b"spiffe://" not in r.stdout
    after = stats(mesh.server_admin)["tls_handshakes_failed"]
    assert after - before == 3
    log = mesh.server.log_path.read_text()
    assert "certificate has expired" in log
    assert "unable to get local issuer certificate" in log or "self-signed certificate" in log or "self signed" in log
    # It keeps serving good callers.
    r = inbound_curl(mesh, pki, "--cert", f"{pki}/client/cert-chain.pem", "--key", f"{pki}/client/key.pem")
    assert r.returncode == 0


def test_tls_policy_and_presented_chain(mesh, pki):
    def s_client(*args):
        return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{mesh.inbound}", "-CAfile", f"{pki}/root-cert.pem",
                               "-cert", f"{pki}/client/cert.pem", "-cert_chain", f"{pki}/client/cert-chain.pem",
                               "-key", f"{pki}/client/key.pem", *args],
                              input=b"GET /echo HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n", capture_output=True, timeout=10)
    r = s_client("-showcerts", "-alpn", "http/1.1", "-ign_eof")
    out = r.stdout.decode()
    assert "Protocol  : TLSv1.3" in out or "TLSv1.3" in out
    assert "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: http/1.1" in out
    assert "HTTP/1.1 200 OK" in out                            # the mutual handshake completed
    assert len(re.findall("BEGIN CERTIFICATE", out)) == 2      # leaf + intermediate
    # TLS 1.2 only with ECDHE + AEAD.
    r = s_client("-tls1_2", "-cipher", "AES128-SHA256")
    assert "Cipher is (NONE)" in r.stdout.decode() or r.returncode != 0
    r = s_client("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in r.stdout.decode()


def test_outbound_refuses_server_with_wrong_identity_or_ca(procs, pki):
    app = procs.app("server")
    # An inbound sidecar whose certificate comes from another CA.
    inbound, sadmin = free_port(), free_port()
    # Its bundle holds its own root (a sidecar refuses to start with a certificate that does not
    # chain to its own bundle) and the mesh's root (so it accepts the genuine client).
    bundle = pki / "foreign-and-mesh-roots.pem"
    bundle.write_text((pki / "foreign" / "root-cert.pem").read_text() + (pki / "root-cert.pem").read_text())
    cfg = server_config(pki, "foreign-server", inbound, sadmin, app).replace(f"{pki}/server/", f"{pki}/foreign/server/")
    cfg = cfg.replace(f"trustBundle: {pki}/root-cert.pem", f"trustBundle: {bundle}")
    srv = procs.sidecar(cfg, "foreign-server")
    wait_ready(srv, sadmin)
    outbound, cadmin = free_port(), free_port()
    cl = procs.sidecar(client_config(pki, "c", outbound, cadmin, [inbound]), "client")
    wait_ready(cl, cadmin)
    r = curl("-i", f"http://127.0.0.1:{outbound}/", "-H", "Host: server")
    assert b" 503 " in r.stdout.split(b"\r\n")[0]
    assert stats(cadmin)["tls_handshakes_failed"] >= 1
    # A genuine server, but not the identity the cluster expects.
    inbound2, sadmin2 = free_port(), free_port()
    srv2 = procs.sidecar(server_config(pki, "server2", inbound2, sadmin2, app), "server2")
    wait_ready(srv2, sadmin2)
    outbound2, cadmin2 = free_port(), free_port()
    cl2 = procs.sidecar(client_config(pki, "c2", outbound2, cadmin2, [inbound2],
                                      sans=["spiffe://cluster.local/ns/default/sa/somebody-else"]), "client2")
    wait_ready(cl2, cadmin2)
    r = curl("-i", f"http://127.0.0.1:{outbound2}/", "-H", "Host: server")
    assert b" 503 " in r.stdout.split(b"\r\n")[0]
    assert "is not one of" in cl2.log_path.read_text()


def test_sessions_are_resumed_between_sidecars(procs, pki):
    m = Mesh(procs, pki, client_cluster_extra="      idleTimeout: 200ms")
    import time
    for _ in range(4):
        r = curl("-o", "/dev/null", "-w", "%{http_code}", m.url("/"), "-H", "Host: server")
        assert r.stdout == b"200"
        time.sleep(0.4)   # the pooled connection expires; the next request opens a new one
    s = stats(m.client_admin)
    assert s["upstream_connections_total"] >= 4
    assert s["tls_sessions_resumed"] >= 2, s
