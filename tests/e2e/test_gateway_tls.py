"""TLS secrets in meshd served by gateways (DESIGN §15, docs/gateways.md "Certificates"): real
meshd, app, sidecars and `sidecar --gateway`; certificates made at run time
(certs/make-tls-secret.py). `meshctl create secret tls` refuses bad input naming the flag and
file (and meshd refuses it again when meshctl is bypassed); a SIMPLE server serves the secret
to curl through the gateway to a mesh service; replacing the secret reaches new handshakes (the
serial) while a kept-alive connection keeps working; a MUTUAL server refuses a client without a
certificate (or from another CA) and takes one with; the key is never in a /config_dump, in any
file under the test's directories but the operator's own, or in the memory of a sidecar that is
not a gateway; meshd restarted still has the secret (0600 on disk). Only a gateway whose service
account meshd grants (`--gateway-service-account NS/SA`) is sent a secret: another workload of the
namespace claiming the same labels gets nothing (its port refuses, the key is not in its memory),
meshd says why once and `meshctl status` shows it; a malformed grant stops meshd at start."""

import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time

import pytest

from conftest import MESHCTL, MESHD, ROOT, SIDECAR, Meshd, curl, free_port, http_get, wait_ready, wait_until
from test_gateway import apply, gateway_proxy
from cryptography import x509

NS = "default"
# The grant for gateway_proxy's service account (default/ingressgateway): without it meshd sends
# no gateway any secret.
GRANT = ["--gateway-service-account", "default/ingressgateway"]


def make_certs(tmp_path):
    d = tmp_path / "operator-certs"
    r = subprocess.run([sys.executable, ROOT / "certs" / "make-tls-secret.py", d], check=True, capture_output=True, text=True)
    serials = r.stdout.split()
    return d, serials[0], serials[1]


def key_body(path):
    """40 characters of a PEM key's base64 that hold its private part (the first ones are the
    same for every P-256 PKCS#8 key): what would betray the key in any text."""
    lines = path.read_text().strip().splitlines()
    return "".join(l for l in lines if not l.startswith("-----"))[48:88]


def key_der(path):
    from cryptography.hazmat.primitives import serialization
    k = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return k.private_numbers().private_value.to_bytes(32, "big")


def peer_serial(port, host="bookinfo.example", cafile=None, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=str(cafile))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=host) as t:
            return "%x" % x509.load_der_x509_certificate(t.getpeercert(binary_form=True)).serial_number


def https(port, certs, path="/echo", *extra):
    r = curl("-s", "-o", "-", "-w", "\n%{http_code}", "--cacert", certs / "ca.pem", "--resolve", f"bookinfo.example:{port}:127.0.0.1",
             *extra, f"https://bookinfo.example:{port}{path}", timeout=20)
    out = r.stdout.decode()
    body, _, code = out.rpartition("\n")
    return r.returncode, int(code or 0), body, r.stderr.decode()


def gateway_docs(port, mode, credential="bookinfo-cert"):
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: [bookinfo.example]
    tls: {{mode: {mode}, credentialName: {credential}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo}}
spec:
  hosts: [bookinfo.example]
  gateways: [bookinfo-gw]
  http:
  - route: [{{destination: {{host: reviews}}}}]
"""


def create(m, name, cert, key, ca=None, check=True):
    args = ["create", "secret", "tls", name, "--cert", cert, "--key", key] + (["--ca", ca] if ca else [])
    r = m.ctl(*args, check=False)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def files_under(root, skip):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                yield p


def memory_holds(pid, needle):
    """Whether the process's writable memory holds `needle` (read through /proc; the test
    started the process, so it may)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            parts = line.split()
            if "w" not in parts[1]:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            try:
                mem.seek(lo)
                if needle in mem.read(hi - lo):
                    return True
            except (OSError, ValueError, OverflowError):
                continue
    return False


def test_create_secret_refuses_bad_input_naming_flag_and_file(procs, tmp_path):
    m = Meshd(procs)
    certs, _, _ = make_certs(tmp_path)
    big = tmp_path / "big.pem"
    big.write_text((certs / "server.pem").read_text() + "#" * 70000)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    cases = [
        (certs / "server.pem", certs / "other.key", None, f"--key {certs / 'other.key'}: the private key does not match the certificate in {certs / 'server.pem'}"),
        (garbage, certs / "server.key", None, f"--cert {garbage}: no PEM certificate (BEGIN CERTIFICATE) in it"),
        (certs / "expired.pem", certs / "expired.key", None, f"--cert {certs / 'expired.pem'}: certificate 1 (CN=bookinfo.example) expired at "),
        (big, certs / "server.key", None, f"--cert {big}: "),
        (certs / "server.pem", certs / "encrypted.key", None, f"--key {certs / 'encrypted.key'}: the private key is encrypted"),
        (certs / "server.pem", certs / "server.key", garbage, f"--ca {garbage}: no PEM certificate (BEGIN CERTIFICATE) in it"),
    ]
    for cert, key, ca, want in cases:
        r = create(m, "bookinfo-cert", cert, key, ca, check=False)
        assert r.returncode != 0 and want in r.stderr, (want, r.stderr)
    assert "at most 65536 are taken" in create(m, "x", big, certs / "server.key", check=False).stderr
    # meshctl bypassed: meshd runs the same check and refuses, naming the files it was told.
    rec = subprocess.run([sys.executable, "-c", """
import sys
c, k = open(sys.argv[1], 'rb').read(), open(sys.argv[2], 'rb').read()
sys.stdout.buffer.write(b'tls-secret default bookinfo-cert %d %d 0\\n' % (len(c), len(k)) + c + k)
""", certs / "server.pem", certs / "other.key"], capture_output=True, check=True).stdout
    token = (m.state / "admin-token").read_text().strip()
    r = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", "-H", f"authorization: Bearer {token}",
                        "-H", "content-type: application/x-mesh-tls-secret", "--data-binary", "@-",
                        f"http://127.0.0.1:{m.admin}/v1/secrets?cert=c.pem&key=k.pem&ca=-"], input=rec, capture_output=True, timeout=20)
    out = r.stdout.decode()
    assert out.endswith("\n400") and "--key k.pem: the private key does not match the certificate in c.pem" in out, out
    # Without the admin token: 401, nothing stored.
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{m.admin}/v1/secrets"], capture_output=True, timeout=20)
    assert r.stdout == b"401"
    assert m.ctl("get", "secrets").stdout.splitlines()[1:] == []
    r = m.ctl("delete", "secret", "tls", "bookinfo-cert", check=False)
    assert r.returncode == 1 and "secret default/bookinfo-cert not found" in r.stderr, r.stderr
    assert not (m.state / "secrets.dat").exists()


def test_simple_gateway_serves_the_secret_rotates_and_survives_a_restart(procs, tmp_path):
    m = Meshd(procs, extra=GRANT)
    certs, serial1, serial2 = make_certs(tmp_path)
    app = procs.app("reviews")
    plain, plain_admin, _, _ = m.sidecar("reviews", "reviews", app_port=app)
    gw, gw_admin = gateway_proxy(m, procs)
    port = free_port()

    r = create(m, "bookinfo-cert", certs / "server.pem", certs / "server.key")
    assert "secret/bookinfo-cert created" in r.stdout, r.stdout
    assert "secret/bookinfo-cert unchanged" in create(m, "bookinfo-cert", certs / "server.pem", certs / "server.key").stdout
    listing = m.ctl("get", "secrets").stdout
    assert re.search(r"default\s+bookinfo-cert\s+CN=bookinfo.example\s+bookinfo.example\s+\d{4}-", listing), listing
    apply(m, tmp_path, "bookinfo", gateway_docs(port, "SIMPLE"))

    def served():
        rc, code, body, _ = https(port, certs)
        return rc == 0 and code == 200 and body
    body = wait_until(served, timeout=20, what="SIMPLE gateway serving bookinfo.example")
    assert json.loads(body)["name"] == "reviews"
    assert peer_serial(port, cafile=certs / "ca.pem") == serial1
    # meshctl proxy-config: the gateway's server (serving, with its credential) and the secret's
    # name and subject, never its key.
    def pc(section):
        r = subprocess.run([str(MESHCTL), "proxy-config", section, f"127.0.0.1:{gw_admin}"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout
    listeners = pc("listeners").splitlines()
    assert any(l.split()[:3] == ["gateway", "default/bookinfo-gw", f":{port}"] and l.endswith("HTTPS */bookinfo.example, tls SIMPLE (bookinfo-cert), serving")
               for l in listeners), listeners
    secrets = pc("secrets")
    assert any(l.split()[:2] == ["kubernetes://default/bookinfo-cert", "CN=bookinfo.example"] for l in secrets.splitlines()), secrets
    assert key_body(certs / "server.key") not in secrets + pc("all")
    # HTTP/2 by ALPN, and HTTP/1.1 when the client offers only that.
    for flag, want in (("--http2", "2"), ("--http1.1", "1.1")):
        r = curl("-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", flag, "--cacert", certs / "ca.pem",
                 "--resolve", f"bookinfo.example:{port}:127.0.0.1", f"https://bookinfo.example:{port}/echo", timeout=20)
        assert r.stdout.decode() == f"200 {want}", (flag, r.stdout, r.stderr)
    # Not the CA curl trusts: the handshake fails (the gateway's own certificate is what is served).
    rc, _, _, err = https(port, certs, "/echo", "--cacert", certs / "client-ca.pem")
    assert rc != 0

    # A kept-alive connection made with the first certificate.
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    kept = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    kept.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="bookinfo.example")
    kept.request("GET", "/echo", headers={"host": "bookinfo.example"})
    resp = kept.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["name"] == "reviews"
    kept_serial = "%x" % x509.load_der_x509_certificate(kept.sock.getpeercert(binary_form=True)).serial_number
    assert kept_serial == serial1

    # Rotation: the same name, a new certificate and key.
    r = create(m, "bookinfo-cert", certs / "server2.pem", certs / "server2.key")
    assert "secret/bookinfo-cert configured" in r.stdout, r.stdout
    wait_until(lambda: peer_serial(port, cafile=certs / "ca.pem") == serial2, timeout=20, what="new handshakes see the new certificate")
    kept.request("GET", "/echo", headers={"host": "bookinfo.example"})
    resp = kept.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["name"] == "reviews"
    kept.close()
    rc, code, _, _ = https(port, certs)
    assert rc == 0 and code == 200

    # /config_dump: the gateway shows names and fingerprints, never the key; the sidecar that
    # is not a gateway shows no secret at all.
    dump = http_get(f"http://127.0.0.1:{gw_admin}/config_dump")[1].decode()
    secrets = json.loads(dump)["secrets"]
    assert [(s["namespace"], s["name"], int(s["serial"], 16)) for s in secrets] == [("default", "bookinfo-cert", int(serial2, 16))], secrets
    for k in ("server.key", "server2.key"):
        body64 = key_body(certs / k)
        assert body64[:40] not in dump and "PRIVATE KEY" not in dump
    plain_dump = http_get(f"http://127.0.0.1:{plain_admin}/config_dump")[1].decode()
    assert "secrets" not in json.loads(plain_dump) and "PRIVATE KEY" not in plain_dump
    # No file under the test's directories holds either key, but the operator's own files and
    # meshd's state (secrets.dat, 0600): nothing written by the gateway or the sidecars.
    state = str(m.state)
    for p in files_under(tmp_path, skip={str(certs), state}):
        text = open(p, "rb").read()
        for k in ("server.key", "server2.key"):
            assert key_body(certs / k).encode() not in text, p
            assert key_der(certs / k) not in text, p
    assert oct(os.stat(m.state / "secrets.dat").st_mode & 0o777) == "0o600"
    # The memory of the sidecar that is not a gateway never held the key; the gateway's did
    # (the check can tell).
    # (the private scalar in either byte order: OpenSSL keeps numbers as little-endian words).
    needles = [key_der(certs / "server2.key"), key_der(certs / "server2.key")[::-1], key_body(certs / "server2.key").encode()]
    assert not any(memory_holds(plain.pid, n) for n in needles)
    assert any(memory_holds(gw.pid, n) for n in needles[:2])

    # meshd restarted: the secret is still there, and still served.
    m.stop()
    m.start()
    listing = m.ctl("get", "secrets").stdout
    assert "bookinfo-cert" in listing and "CN=bookinfo.example" in listing, listing
    assert "secret/bookinfo-cert unchanged" in create(m, "bookinfo-cert", certs / "server2.pem", certs / "server2.key").stdout
    wait_until(lambda: https(port, certs)[1] == 200, timeout=20, what="served after meshd restarted")
    assert peer_serial(port, cafile=certs / "ca.pem") == serial2

    # Deleted: the gateway drops it, and its port refuses connections naming the secret.
    r = m.ctl("delete", "secret", "tls", "bookinfo-cert")
    assert "secret/bookinfo-cert deleted" in r.stdout
    wait_until(lambda: https(port, certs)[0] != 0, timeout=20, what="the port refuses without its secret")
    wait_until(lambda: "secret default/bookinfo-cert (tls.credentialName) was not delivered by meshd" in gw.log_path.read_text(),
               timeout=10, what="the refusal logged")
    assert "secrets" not in json.loads(http_get(f"http://127.0.0.1:{gw_admin}/config_dump")[1])
    assert gw.poll() is None and plain.poll() is None


def test_mutual_gateway_requires_a_client_certificate_from_the_ca(procs, tmp_path):
    m = Meshd(procs, extra=GRANT)
    certs, _, _ = make_certs(tmp_path)
    app = procs.app("reviews")
    m.sidecar("reviews", "reviews", app_port=app)
    gw, gw_admin = gateway_proxy(m, procs)
    port = free_port()
    r = create(m, "bookinfo-mtls", certs / "server.pem", certs / "server.key", ca=certs / "client-ca.pem")
    assert "secret/bookinfo-mtls created" in r.stdout
    apply(m, tmp_path, "bookinfo", gateway_docs(port, "MUTUAL", "bookinfo-mtls"))
    client = ("--cert", certs / "client.pem", "--key", certs / "client.key")

    def served():
        rc, code, body, _ = https(port, certs, "/echo", *client)
        return rc == 0 and code == 200 and body
    body = wait_until(served, timeout=20, what="MUTUAL gateway serving a client with a certificate")
    assert json.loads(body)["name"] == "reviews"
    # Without a client certificate, or with one from another CA: refused at the handshake.
    rc, code, _, err = https(port, certs)
    assert rc != 0 and code == 0, err
    rc, code, _, err = https(port, certs, "/echo", "--cert", certs / "rogue-client.pem", "--key", certs / "rogue-client.key")
    assert rc != 0 and code == 0, err
    wait_until(lambda: "peer did not return a certificate" in gw.log_path.read_text(), timeout=10, what="the refusal logged")
    assert json.loads(http_get(f"http://127.0.0.1:{gw_admin}/config_dump")[1])["secrets"][0]["ca"] is True
    # A MUTUAL server naming a secret without a CA: its connections are refused, saying so.
    create(m, "bookinfo-plain", certs / "server.pem", certs / "server.key")
    apply(m, tmp_path, "bookinfo", gateway_docs(port, "MUTUAL", "bookinfo-plain"))
    wait_until(lambda: https(port, certs, "/echo", *client)[0] != 0, timeout=20, what="the port refuses without a CA")
    wait_until(lambda: "secret default/bookinfo-plain (tls.credentialName) has no ca.crt for this MUTUAL server" in gw.log_path.read_text(),
               timeout=10, what="the refusal logged")
    assert gw.poll() is None


def test_secrets_on_the_etcd_store_are_shared_by_replicas(procs, pki, tmp_path):
    """`meshd --store etcd://`: a secret stored through one replica is one etcd key under
    /mesh/config/secrets/ (kept unencrypted by etcd, docs/security.md), listed by the other
    replica, replaced and deleted through it; a replica started afterwards reads it."""
    import pathlib
    import pytest
    from etcd_cluster import ETCD, EtcdCluster
    if not pathlib.Path(ETCD).exists():
        pytest.skip("etcd-server is not installed (.ci/run installs it)")
    cluster = EtcdCluster(procs, n=1)
    certs, _, serial2 = make_certs(tmp_path)

    def replica(name):
        return Meshd(procs, name=name, extra=["--store", cluster.store_flag(), "--ca-dir", str(pki), "--replica-id", name])
    r0, r1 = replica("r0"), replica("r1")
    assert "created" in create(r0, "bookinfo-cert", certs / "server.pem", certs / "server.key").stdout
    wait_until(lambda: "bookinfo-cert" in r1.ctl("get", "secrets").stdout, timeout=10, what="the other replica lists it")
    value = cluster.get("/mesh/config/secrets/default/bookinfo-cert")
    assert value.startswith("tls-secret default bookinfo-cert ")
    assert "configured" in create(r1, "bookinfo-cert", certs / "server2.pem", certs / "server2.key").stdout
    wait_until(lambda: "unchanged" in create(r0, "bookinfo-cert", certs / "server2.pem", certs / "server2.key").stdout,
               timeout=10, what="r0 sees the replaced secret")
    r2 = replica("r2")
    assert "bookinfo-cert" in r2.ctl("get", "secrets").stdout
    assert "secret/bookinfo-cert deleted" in r2.ctl("delete", "secret", "tls", "bookinfo-cert").stdout
    assert cluster.get("/mesh/config/secrets/default/bookinfo-cert") is None
    wait_until(lambda: r0.ctl("get", "secrets").stdout.splitlines()[1:] == [], timeout=10, what="r0 sees it gone")


def test_a_gateway_whose_service_account_is_not_granted_gets_no_secret(procs, tmp_path):
    """Labels are a claim: a second `sidecar --gateway` of namespace default, with a valid
    identity (service account rogue) but no grant, claims istio=ingressgateway. meshd sends it no
    secret: its HTTPS port (on 127.0.0.2) refuses the handshake naming the undelivered secret,
    the key is not in its memory, meshd logs why once (naming the identity and the flag) and
    `meshctl status` shows it; the granted gateway serves meanwhile, and after a rotation."""
    m = Meshd(procs, extra=GRANT)
    certs, serial1, serial2 = make_certs(tmp_path)
    app = procs.app("reviews")
    m.sidecar("reviews", "reviews", app_port=app)
    gw, _ = gateway_proxy(m, procs)
    admin, outbound = free_port(), free_port()
    rogue = procs.start([SIDECAR, "--gateway", "--meshd", f"127.0.0.1:{m.api}", "--root-cert", m.root, "--token", m.token("rogue"),
                         "--service", "rogue", "--label", "istio=ingressgateway", "--listen-address", "127.0.0.2",
                         "--admin-port", admin, "--outbound-port", outbound, "--concurrency", "2"], "rogue")
    wait_ready(rogue, admin, timeout=20)
    port = free_port()
    create(m, "bookinfo-cert", certs / "server.pem", certs / "server.key")
    apply(m, tmp_path, "bookinfo", gateway_docs(port, "SIMPLE"))

    wait_until(lambda: https(port, certs)[1] == 200, timeout=20, what="the granted gateway serving")
    assert peer_serial(port, cafile=certs / "ca.pem") == serial1

    refusal = f"connection on port {port} refused: no server certificate: secret default/bookinfo-cert (tls.credentialName) was not delivered by meshd"

    def rogue_refuses():
        """A handshake with the ungranted gateway fails, and it logged one more refusal."""
        before = rogue.log_path.read_text().count(refusal)
        r = curl("-s", "-o", "/dev/null", "--cacert", certs / "ca.pem", "--resolve", f"bookinfo.example:{port}:127.0.0.2",
                 f"https://bookinfo.example:{port}/echo", timeout=20)
        return r.returncode != 0 and wait_until(lambda: rogue.log_path.read_text().count(refusal) > before, timeout=2,
                                                what="the refusal logged")
    wait_until(rogue_refuses, timeout=20, what="the ungranted gateway's port refusing, naming the secret")
    # A handshake of our own (not curl's): refused too (ssl.SSLError and resets are OSErrors).
    with pytest.raises(OSError):
        with socket.create_connection(("127.0.0.2", port), timeout=5) as s:
            ssl.create_default_context(cafile=str(certs / "ca.pem")).wrap_socket(s, server_hostname="bookinfo.example").close()

    # A rotation reaches the granted gateway, still not the other.
    create(m, "bookinfo-cert", certs / "server2.pem", certs / "server2.key")
    wait_until(lambda: peer_serial(port, cafile=certs / "ca.pem") == serial2, timeout=20, what="the rotation served")
    wait_until(rogue_refuses, timeout=10, what="the ungranted gateway still refusing after the rotation")

    needles = [key_der(certs / k) for k in ("server.key", "server2.key")]
    needles += [n[::-1] for n in needles] + [key_body(certs / k).encode() for k in ("server.key", "server2.key")]
    assert not any(memory_holds(rogue.pid, n) for n in needles)
    assert any(memory_holds(gw.pid, n) for n in needles[:4])  # the check can tell
    assert "secrets" not in json.loads(http_get(f"http://127.0.0.1:{admin}/config_dump")[1])

    # meshd said why, once for that proxy (two versions were pushed since), naming identity and flag.
    log = m.proc.log_path.read_text()
    said = [l for l in log.splitlines() if "the gateway spiffe://cluster.local/ns/default/sa/rogue at " in l]
    assert len(said) == 1 and "start meshd with --gateway-service-account default/rogue" in said[0], said
    assert "sa/ingressgateway at " not in log
    status = m.ctl("status").stdout
    line = next(l for l in status.splitlines() if l.startswith("spiffe://cluster.local/ns/default/sa/rogue\t"))
    assert line.endswith("\tTLS secrets withheld: default/rogue is not granted (--gateway-service-account default/rogue)"), line
    granted = next(l for l in status.splitlines() if l.startswith("spiffe://cluster.local/ns/default/sa/ingressgateway\t"))
    assert "withheld" not in granted
    assert rogue.poll() is None and gw.poll() is None


def test_meshd_refuses_a_malformed_grant_at_start(procs, tmp_path):
    for value, want in (("ingressgateway", 'meshd: error: --gateway-service-account "ingressgateway": expected NAMESPACE/SERVICE-ACCOUNT'),
                        ("default/ok,Prod/gw", 'meshd: error: --gateway-service-account "default/ok,Prod/gw": "Prod" is not a namespace name')):
        p = procs.start([MESHD, "--state-dir", tmp_path / "st", "--api-port", free_port(), "--admin-port", free_port(),
                         "--gateway-service-account", "default/ingressgateway", "--gateway-service-account", value], "meshd-bad")
        assert p.wait(timeout=20) == 2
        assert want in p.log_path.read_text(), p.log_path.read_text()
