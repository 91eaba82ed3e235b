"""Egress (docs/egress.md): TLS origination with DestinationRule `trafficPolicy.tls`, and
ServiceEntries resolved by DNS.

TLS origination: a local nginx stands in for the internet, serving HTTPS on a free loopback
port with a certificate from its own CA, generated at run time (with a second, unrelated CA for
the refusals). The app calls `http://api.example.test/` through its sidecar, which originates TLS
to nginx; nginx's access log shows what arrived (SNI, TLS version, client certificate, connection
serial). DNS: a dnsmasq started by the test on a free port answers the ServiceEntry's name."""

import os
import pathlib
import re
import signal
import shutil
import subprocess
import time

import pytest

from conftest import Meshd, curl, free_port, http_get, wait_ready, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HOST = "api.example.test"


def stop_group(proc):
    """SIGTERM to the process group a server was started in (nginx's workers with it), SIGKILL
    after 10 s. Once only: a pid already reaped may belong to another process by now."""
    if proc.returncode is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: pathlib.Path, name: str):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)
    return d / f"{name}.pem"


def make_leaf(d: pathlib.Path, ca: str, name: str, sans: str, client=False):
    """A certificate for `name` signed by CA `ca` with the SAN list `sans` (openssl syntax)."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage={'clientAuth' if client else 'serverAuth'}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem", cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture(scope="module")
def egress_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("egress-pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_ca(d, "client-ca")
    make_leaf(d, "ca", "server", f"DNS:{HOST},URI:spiffe://example.test/api")
    make_leaf(d, "client-ca", "client", "URI:spiffe://example.test/caller", client=True)
    return d


class Nginx:
    """nginx on free loopback ports: `port` HTTPS (no client certificate), `mtls_port` HTTPS
    requiring a certificate from client-ca, `h2_port` HTTPS with h2 in ALPN. Its access log: one
    line per request, `port sni protocol connection client_dn uri session_reused http_version`."""

    def __init__(self, pki: pathlib.Path, d: pathlib.Path):
        self.dir = d
        self.port, self.mtls_port, self.h2_port = free_port(), free_port(), free_port()
        self.log = d / "access.log"
        self.log.write_text("")
        conf = d / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  log_format egress '$server_port $ssl_server_name $ssl_protocol $connection $ssl_client_s_dn $request_uri $ssl_session_reused $server_protocol';
  access_log {self.log} egress;
  client_body_temp_path {d}/tmp;
  proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp;
  scgi_temp_path {d}/tmp;
  keepalive_requests 1000;
  server {{
    listen 127.0.0.1:{self.port} ssl;
    ssl_certificate {pki}/server.pem;
    ssl_certificate_key {pki}/server.key;
    location / {{ return 200 "hello from nginx over $ssl_protocol\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{self.mtls_port} ssl;
    ssl_certificate {pki}/server.pem;
    ssl_certificate_key {pki}/server.key;
    ssl_client_certificate {pki}/client-ca.pem;
    ssl_verify_client on;
    location / {{ return 200 "hello from nginx to $ssl_client_s_dn\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{self.h2_port} ssl http2;
    ssl_certificate {pki}/server.pem;
    ssl_certificate_key {pki}/server.key;
    location / {{ return 200 "hello from nginx over $server_protocol\\n"; }}
  }}
}}
""")
        (d / "tmp").mkdir(exist_ok=True)
        self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(d)], stdout=subprocess.DEVNULL,
                                     stderr=open(d / "nginx.stderr", "wb"), start_new_session=True)
        try:
            wait_until(lambda: curl("-sk", f"https://127.0.0.1:{self.port}/__up", timeout=2).returncode == 0, what="nginx up")
        except BaseException:
            self.stop()
            raise

    def lines(self):
        """The access log's lines but the start-up probe's (nginx may log it after curl returned)."""
        return [l.split(" ") for l in self.log.read_text().splitlines() if l and l.split(" ")[5] != "/__up"]

    def stop(self):
        stop_group(self.proc)


@pytest.fixture
def nginx(egress_pki, tmp_path):
    d = tmp_path / "nginx"
    d.mkdir()
    n = Nginx(egress_pki, d)
    yield n
    n.stop()


def static_sidecar(procs, endpoint_port, tls_yaml, name="caller", extra_flags=(), check=False):
    """A static caller sidecar: cluster api.example.test (port 80, plaintext by its own setting)
    to 127.0.0.1:`endpoint_port`, a route for the host, and a DestinationRule with `tls_yaml`
    under trafficPolicy. Returns (process, outbound, admin), or the --check result."""
    outbound, admin = free_port(), free_port()
    text = f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: {name}, namespace: default}}
spec:
  workload: {{service: {name}}}
  concurrency: 1
  admin: {{port: {admin}}}
  outbound: {{port: {outbound}}}
  clusters:
    - name: {HOST}
      tls: DISABLE
      port: 80
      endpoints: [127.0.0.1:{endpoint_port}]
  routes:
    - hosts: [{HOST}]
      cluster: {HOST}
      name: api
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: {HOST}
  trafficPolicy:
{tls_yaml}
"""
    path = procs.tmp / f"{name}.yaml"
    path.write_text(text)
    from conftest import SIDECAR
    if check:
        return subprocess.run([str(SIDECAR), "--config", str(path), "--check", *extra_flags], capture_output=True, text=True, timeout=30)
    p = procs.start([SIDECAR, "--config", path, *extra_flags], name)
    wait_ready(p, admin)
    return p, outbound, admin


def call(outbound, path="/", headers=()):
    """GET http://api.example.test/PATH through the sidecar as a forward proxy (http_proxy):
    (status, headers text, body)."""
    args = ["-s", "-D", "-", "--proxy", f"http://127.0.0.1:{outbound}", f"http://{HOST}{path}"]
    for h in headers:
        args += ["-H", h]
    r = curl(*args, timeout=20)
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    return status, head.decode(errors="replace").lower(), body


def prom(admin, name, labels=""):
    _, body = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
    total = 0
    for line in body.decode().splitlines():
        if line.startswith(name + "{" + labels) or (not labels and line.startswith(name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_simple_origination_to_a_private_ca_with_sni_and_pooled_connections(procs, nginx, egress_pki):
    p, outbound, admin = static_sidecar(procs, nginx.port, f"""
    connectionPool: {{http: {{idleTimeout: 1s}}}}
    tls:
      mode: SIMPLE
      caCertificates: {egress_pki}/ca.pem""")
    for i in range(5):
        status, head, body = call(outbound, f"/r{i}")
        assert status == 200, (head, body)
        assert body.startswith(b"hello from nginx over TLSv1."), body
    lines = nginx.lines()
    assert [l[5] for l in lines] == [f"/r{i}" for i in range(5)], lines
    # SNI is the ServiceEntry's/DestinationRule's host (auto SNI), on nginx's plain TLS port.
    assert all(l[0] == str(nginx.port) and l[1] == HOST and l[2].startswith("TLSv1.") for l in lines), lines
    # Pooled: the five requests arrived on one TLS connection (nginx's connection serial).
    assert len({l[3] for l in lines}) == 1, lines
    assert all(l[7] == "HTTP/1.1" for l in lines), lines
    assert prom(admin, "mesh_tls_handshakes_total", 'result="failed"') == 0
    # The pooled connection closes when idle (1 s); the next one resumes the TLS session.
    time.sleep(2.5)
    assert call(outbound, "/after-idle")[0] == 200
    last = nginx.lines()[-1]
    assert last[5] == "/after-idle" and last[3] != lines[0][3] and last[6] == "r", (last, lines[0])


def test_h2_over_the_originated_tls_when_the_cluster_speaks_http2(procs, nginx, egress_pki):
    """A cluster with `protocol: HTTP2` offers h2 in ALPN over the originated TLS."""
    outbound, admin = free_port(), free_port()
    cfg = procs.tmp / "h2.yaml"
    cfg.write_text(f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: h2, namespace: default}}
spec:
  workload: {{service: h2}}
  concurrency: 1
  admin: {{port: {admin}}}
  outbound: {{port: {outbound}}}
  clusters:
    - name: {HOST}
      tls: DISABLE
      protocol: HTTP2
      endpoints: [127.0.0.1:{nginx.h2_port}]
  routes:
    - hosts: [{HOST}]
      cluster: {HOST}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {egress_pki}/ca.pem}}
""")
    from conftest import SIDECAR
    p = procs.start([SIDECAR, "--config", cfg], "h2")
    wait_ready(p, admin)
    for i in range(3):
        status, head, body = call(outbound, f"/h2-{i}")
        assert status == 200 and body == b"hello from nginx over HTTP/2.0\n", (status, head, body)
    lines = nginx.lines()
    assert [l[7] for l in lines] == ["HTTP/2.0"] * 3 and len({l[3] for l in lines}) == 1, lines


def test_sni_and_subject_alt_names_dns_and_uri(procs, nginx, egress_pki):
    """`sni` is what nginx sees; a listed DNS SAN or URI SAN of the server certificate passes."""
    _, o1, _ = static_sidecar(procs, nginx.port, f"""
    tls:
      mode: SIMPLE
      sni: other-name.example.test
      caCertificates: {egress_pki}/ca.pem
      subjectAltNames: [{HOST}]""", name="dns-san")
    _, o2, _ = static_sidecar(procs, nginx.port, f"""
    tls:
      mode: SIMPLE
      caCertificates: {egress_pki}/ca.pem
      subjectAltNames: [spiffe://example.test/api]""", name="uri-san")
    assert call(o1, "/dns")[0] == 200
    assert call(o2, "/uri")[0] == 200
    by_uri = {l[5]: l for l in nginx.lines()}
    assert by_uri["/dns"][1] == "other-name.example.test"
    assert by_uri["/uri"][1] == HOST


def test_wrong_san_wrong_ca_and_the_system_store_are_refused_503_uf_and_counted(procs, nginx, egress_pki):
    cases = {
        "wrong-san": f"""
    tls:
      mode: SIMPLE
      caCertificates: {egress_pki}/ca.pem
      subjectAltNames: [other.example.test, spiffe://example.test/other]""",
        "wrong-ca": f"""
    tls:
      mode: SIMPLE
      caCertificates: {egress_pki}/other-ca.pem""",
        # No caCertificates: the system trust store, which does not know nginx's private CA.
        "system-store": """
    tls:
      mode: SIMPLE""",
        # The SNI names a host the certificate is not for (no subjectAltNames: checked against the SNI).
        "wrong-sni": f"""
    tls:
      mode: SIMPLE
      sni: not-api.example.test
      caCertificates: {egress_pki}/ca.pem""",
    }
    for name, tls in cases.items():
        _, outbound, admin = static_sidecar(procs, nginx.port, tls, name=name)
        status, head, body = call(outbound, f"/{name}")
        assert status == 503, (name, head, body)
        assert "x-mesh-response-flags: uf" in head, (name, head)
        assert prom(admin, "mesh_tls_handshakes_total", 'result="failed"') >= 1, name
        assert prom(admin, "mesh_upstream_connect_failures_total") >= 1, name
        log = (procs.tmp / f"{name}.log").read_text()
        assert "TLS with 127.0.0.1" in log, log
    # None of them got a request through.
    assert nginx.lines() == []


def test_mutual_presents_the_client_certificate_nginx_requires(procs, nginx, egress_pki):
    _, o_simple, _ = static_sidecar(procs, nginx.mtls_port, f"""
    tls:
      mode: SIMPLE
      caCertificates: {egress_pki}/ca.pem""", name="no-client-cert")
    status, _, body = call(o_simple, "/simple")
    assert status == 400 and b"No required SSL certificate" in body, (status, body)
    _, o_mutual, _ = static_sidecar(procs, nginx.mtls_port, f"""
    tls:
      mode: MUTUAL
      caCertificates: {egress_pki}/ca.pem
      clientCertificate: {egress_pki}/client.pem
      privateKey: {egress_pki}/client.key""", name="mutual")
    status, _, body = call(o_mutual, "/mutual")
    assert status == 200 and body == b"hello from nginx to CN=client\n", (status, body)
    line = [l for l in nginx.lines() if l[5] == "/mutual"][0]
    assert line[4] == "CN=client" and line[0] == str(nginx.mtls_port)


def test_bad_files_and_insecure_skip_verify_are_config_errors(procs, nginx, egress_pki, tmp_path):
    missing = tmp_path / "nope.pem"
    r = static_sidecar(procs, nginx.port, f"""
    tls:
      mode: SIMPLE
      caCertificates: {missing}""", name="missing-ca", check=True)
    assert r.returncode != 0
    assert re.search(r"caller|missing-ca", r.stderr) and "spec.trafficPolicy.tls.caCertificates" in r.stderr, r.stderr
    assert f"cannot read {missing}" in r.stderr and re.search(r"missing-ca\.yaml:\d+", r.stderr), r.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    r = static_sidecar(procs, nginx.port, f"""
    tls:
      mode: MUTUAL
      caCertificates: {egress_pki}/ca.pem
      clientCertificate: {junk}
      privateKey: {egress_pki}/client.key""", name="junk-cert", check=True)
    assert r.returncode != 0 and "spec.trafficPolicy.tls.clientCertificate" in r.stderr and "no PEM certificate" in r.stderr, r.stderr
    r = static_sidecar(procs, nginx.port, f"""
    tls:
      mode: MUTUAL
      caCertificates: {egress_pki}/ca.pem
      clientCertificate: {egress_pki}/client.pem
      privateKey: {egress_pki}/server.key""", name="key-mismatch", check=True)
    assert r.returncode != 0 and "spec.trafficPolicy.tls.privateKey" in r.stderr and "mismatch" in r.stderr, r.stderr
    insecure = """
    tls:
      mode: SIMPLE
      insecureSkipVerify: true"""
    r = static_sidecar(procs, nginx.port, insecure, name="insecure-refused", check=True)
    assert r.returncode != 0 and "spec.trafficPolicy.tls.insecureSkipVerify" in r.stderr and "--allow-insecure-skip-verify" in r.stderr, r.stderr
    # Allowed by the flag: nothing is verified, so the private CA's server is reached.
    _, outbound, _ = static_sidecar(procs, nginx.port, insecure, name="insecure-allowed", extra_flags=["--allow-insecure-skip-verify"])
    assert call(outbound, "/insecure")[0] == 200


def test_meshd_service_entry_with_target_port_and_port_level_tls(procs, nginx, egress_pki, tmp_path):
    """Istio's "Egress TLS Origination" task, one port: the ServiceEntry's port 80 (HTTP) has
    targetPort 443 (here nginx's port), and the DestinationRule's portLevelSettings for port 80
    originate TLS. meshd refuses insecureSkipVerify unless its flag allows it."""
    m = Meshd(procs)
    _, _, _, outbound = m.sidecar("caller", "caller")
    f = tmp_path / "egress.yaml"
    f.write_text(f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: {nginx.port}}}
  endpoints:
  - address: 127.0.0.1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls:
        mode: SIMPLE
        caCertificates: {egress_pki}/ca.pem
""")
    m.ctl("apply", "-f", f, "--wait")
    status, head, body = call(outbound, "/through-meshd")
    assert status == 200 and body.startswith(b"hello from nginx over TLS"), (status, head, body)
    assert [l[1] for l in nginx.lines()] == [HOST]
    bad = tmp_path / "insecure.yaml"
    bad.write_text(f.read_text().replace(f"caCertificates: {egress_pki}/ca.pem", "insecureSkipVerify: true"))
    r = m.ctl("apply", "-f", bad, check=False)
    assert r.returncode != 0 and "insecureSkipVerify" in r.stderr and "--allow-insecure-skip-verify" in r.stderr, r.stderr
    sub = tmp_path / "subset.yaml"
    sub.write_text(f.read_text().replace("  trafficPolicy:\n", "  subsets:\n  - name: a\n    labels: {x: y}\n    trafficPolicy:\n      tls: {mode: SIMPLE}\n  trafficPolicy:\n"))
    r = m.ctl("apply", "-f", sub, check=False)
    assert r.returncode != 0 and "spec.subsets[0].trafficPolicy.tls: not supported yet" in r.stderr, r.stderr
    tcp = tmp_path / "tcp.yaml"
    tcp.write_text(f.read_text().replace("protocol: HTTP,", "protocol: TCP,"))
    r = m.ctl("apply", "-f", tcp, check=False)
    assert r.returncode != 0 and "spec.trafficPolicy.portLevelSettings[0].tls.mode: TLS origination to api.example.test (a TCP service) is not supported yet" in r.stderr, r.stderr
    # A file meshd cannot see: meshd stores it; the sidecar refuses it (NACK) and keeps serving.
    gone = tmp_path / "egress-gone.yaml"
    gone.write_text(f.read_text().replace(f"{egress_pki}/ca.pem", f"{tmp_path}/absent.pem"))
    m.ctl("apply", "-f", gone)
    wait_until(lambda: "absent.pem" in m.ctl("status").stdout, timeout=20, what="the sidecar's refusal in meshctl status")
    assert call(outbound, "/still")[0] == 200


# ---------------------------------------------------------------------------------------------
# ServiceEntry resolution: DNS and DNS_ROUND_ROBIN

DNS_NAME = "api.dns.test"


class Dnsmasq:
    """dnsmasq on a free 127.0.0.1 port answering only from a hosts file (TTL `ttl`), logging
    every query. `answer(ips)` rewrites the file and makes it re-read (SIGHUP)."""

    def __init__(self, d: pathlib.Path, ips, ttl=1, name=None):
        self.name = name or DNS_NAME
        self.dir = d
        self.port = free_port()
        self.hosts = d / "hosts"
        self.log = d / "dnsmasq.log"
        self.write(ips)
        self.proc = subprocess.Popen(["dnsmasq", "-k", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}",
                                      f"--local-ttl={ttl}", f"--port={self.port}", "--listen-address=127.0.0.1",
                                      "--bind-interfaces", "--user=root", "--pid-file=", "--log-queries",
                                      f"--log-facility={self.log}"],
                                     stdout=subprocess.DEVNULL, stderr=open(d / "dnsmasq.stderr", "wb"), start_new_session=True)
        qtype = "AAAA" if ":" in ips[0] else "A"
        try:
            wait_until(lambda: f"{ips[0]}" in subprocess.run(["dig", "+short", qtype, "-p", str(self.port), "@127.0.0.1", self.name],
                                                             capture_output=True, text=True, timeout=5).stdout, what="dnsmasq answering")
        except BaseException:
            self.stop()
            raise

    def write(self, ips):
        self.hosts.write_text("".join(f"{ip} {self.name}\n" for ip in ips))

    def answer(self, ips):
        self.write(ips)
        self.proc.send_signal(1)

    def queries(self):
        return self.log.read_text().count(f"query[A] {self.name}") if self.log.exists() else 0

    def stop(self):
        stop_group(self.proc)


@pytest.fixture
def dnsmasq_two(tmp_path):
    d = tmp_path / "dns"
    d.mkdir()
    s = Dnsmasq(d, ["127.0.0.2", "127.0.0.3"])
    yield s
    s.stop()


def two_apps(procs):
    """Apps named `two` and `three` on 127.0.0.2 and 127.0.0.3, one port."""
    import sys
    from conftest import ROOT
    port = free_port()
    for ip, name in (("127.0.0.2", "two"), ("127.0.0.3", "three")):
        procs.start([sys.executable, ROOT / "tools" / "upstream.py", "--port", port, "--bind", ip, "--name", name], f"app-{name}")
    for ip in ("127.0.0.2", "127.0.0.3"):
        wait_until(lambda: curl("-s", f"http://{ip}:{port}/", timeout=2).returncode == 0, what=f"app on {ip}")
    return port


def who(outbound, n):
    out = []
    for _ in range(n):
        r = curl("-s", "--proxy", f"http://127.0.0.1:{outbound}", f"http://{DNS_NAME}/", timeout=20)
        out.append(r.stdout.decode().strip())
    return out


def test_dns_service_entry_uses_every_address_and_follows_the_ttl(procs, dnsmasq_two, tmp_path):
    """resolution: DNS, no endpoints: the host itself is resolved (A and AAAA) by the sidecar
    on its resolver thread; both addresses are endpoints, used in turn. The answer changes to one
    address: after the TTL only that one is used. dnsmasq stopped: the last good address stays."""
    port = two_apps(procs)
    m = Meshd(procs)
    _, admin, _, outbound = m.sidecar("caller", "caller", extra=["--dns-resolver", f"127.0.0.1:{dnsmasq_two.port}"])
    f = tmp_path / "dns-se.yaml"
    f.write_text(f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-dns}}
spec:
  hosts: [{DNS_NAME}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
""")
    m.ctl("apply", "-f", f, "--wait")
    seen = who(outbound, 10)
    assert seen.count("hello from two") == 5 and seen.count("hello from three") == 5, seen
    # Round robin: in turn.
    assert all(seen[i] != seen[i + 1] for i in range(9)), seen
    asked = dnsmasq_two.queries()
    dnsmasq_two.answer(["127.0.0.3"])
    wait_until(lambda: set(who(outbound, 4)) == {"hello from three"}, timeout=10, what="only the new address in use")
    assert dnsmasq_two.queries() > asked
    # The resolver goes away: the last good answer stays in use.
    dnsmasq_two.stop()
    time.sleep(3)
    assert set(who(outbound, 4)) == {"hello from three"}
    # A name that is not a DNS name, NONE and a workloadSelector with DNS are refused at apply.
    for old, new, why in (("resolution: DNS", "resolution: NONE", "NONE is not supported yet"),
                          ("resolution: DNS", "resolution: DNS\n  workloadSelector: {labels: {app: x}}", "workloadSelector: with resolution DNS: not supported yet"),
                          ("resolution: DNS", "resolution: STATIC\n  endpoints: [{address: api.example.test}]", "DNS names need resolution: DNS")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(f.read_text().replace(old, new))
        r = m.ctl("apply", "-f", bad, check=False)
        assert r.returncode != 0 and why in r.stderr, (why, r.stderr)


def test_dns_round_robin_uses_one_address_at_a_time(procs, tmp_path):
    """resolution DNS_ROUND_ROBIN (Envoy's LOGICAL_DNS), in a static file's cluster: only the
    first address of the latest answer takes new connections (dnsmasq rotates its answers, so
    which one changes from one answer to the next)."""
    port = two_apps(procs)
    d = tmp_path / "dns"
    d.mkdir()
    dnsmasq_two = Dnsmasq(d, ["127.0.0.2", "127.0.0.3"], ttl=4)
    outbound, admin = free_port(), free_port()
    cfg = procs.tmp / "rr.yaml"
    cfg.write_text(f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: rr, namespace: default}}
spec:
  workload: {{service: rr}}
  concurrency: 1
  admin: {{port: {admin}}}
  outbound: {{port: {outbound}}}
  clusters:
    - name: {DNS_NAME}
      tls: DISABLE
      resolution: DNS_ROUND_ROBIN
      dnsEndpoints: [{{host: {DNS_NAME}, port: {port}}}]
  routes:
    - hosts: [{DNS_NAME}]
      cluster: {DNS_NAME}
""")
    from conftest import SIDECAR
    p = procs.start([SIDECAR, "--config", cfg, "--dns-resolver", f"127.0.0.1:{dnsmasq_two.port}"], "rr")
    wait_ready(p, admin)
    try:
        # One address per answer: a burst of requests within one TTL all go to it (a burst
        # that crosses a refresh may see two, so up to three bursts are tried).
        bursts = [set(who(outbound, 6)) for _ in range(3)]
        assert any(len(b) == 1 for b in bursts), bursts
        dnsmasq_two.answer(["127.0.0.3"])
        wait_until(lambda: set(who(outbound, 4)) == {"hello from three"}, timeout=10, what="the new address in use")
    finally:
        dnsmasq_two.stop()


def test_istio_egress_task_dns_resolution_with_tls_origination(procs, nginx, egress_pki, tmp_path):
    """Istio's egress TLS origination task as written for one port: `resolution: DNS` without
    endpoints (the host itself resolved, by a dnsmasq the test starts), port 80 with `targetPort`
    (nginx's port), the DestinationRule's port-level SIMPLE. Then `insecureSkipVerify`, which
    this meshd allows (`--allow-insecure-skip-verify`), reaching the private-CA server without
    a CA."""
    d = tmp_path / "dns"
    d.mkdir()
    dns = Dnsmasq(d, ["127.0.0.1"], ttl=30, name=HOST)
    try:
        m = Meshd(procs, extra=["--allow-insecure-skip-verify"])
        _, admin, _, outbound = m.sidecar("caller", "caller", extra=["--dns-resolver", f"127.0.0.1:{dns.port}"])
        f = tmp_path / "task.yaml"
        f.write_text(f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: {nginx.port}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls:
        mode: SIMPLE
        caCertificates: {egress_pki}/ca.pem
""")
        m.ctl("apply", "-f", f, "--wait")
        status, head, body = call(outbound, "/task")
        assert status == 200 and body.startswith(b"hello from nginx over TLS"), (status, head, body)
        assert dns.queries() >= 1
        _, clusters = http_get(f"http://127.0.0.1:{admin}/clusters")
        assert b'"tls":"SIMPLE"' in clusters.replace(b" ", b"") and f'"sni":"{HOST}"'.encode() in clusters.replace(b" ", b""), clusters
        f.write_text(f.read_text().replace(f"caCertificates: {egress_pki}/ca.pem", "insecureSkipVerify: true"))
        m.ctl("apply", "-f", f, "--wait")
        assert call(outbound, "/insecure")[0] == 200
        assert [l[5] for l in nginx.lines()] == ["/task", "/insecure"]
    finally:
        dns.stop()


def test_egress_flags_refused_by_name(tmp_path):
    """--allow-insecure-skip-verify is static mode's (meshd's flag decides in mesh mode);
    --dns-resolver takes IP:PORT. Both exit 2 naming the flag, before anything starts."""
    from conftest import SIDECAR
    r = subprocess.run([str(SIDECAR), "--meshd", "127.0.0.1:1", "--root-cert", str(tmp_path / "none.pem"), "--token", "x",
                        "--service", "a", "--allow-insecure-skip-verify"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--allow-insecure-skip-verify is a static-mode flag" in r.stderr, r.stderr
    r = subprocess.run([str(SIDECAR), "--config", str(tmp_path / "none.yaml"), "--dns-resolver", "resolver.example"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and '--dns-resolver: expected IP:PORT' in r.stderr, r.stderr


def test_dns_aaaa_answers_are_endpoints_too(procs, tmp_path):
    """A name with only an AAAA record: the sidecar asks A and AAAA and reaches the IPv6
    address (an HTTP server on [::1] in this process)."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class V6(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = b"hello from six\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = free_port()
    srv = V6(("::1", port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    d = tmp_path / "dns"
    d.mkdir()
    dns = None
    try:
        dns = Dnsmasq(d, ["::1"], ttl=30)
        outbound, admin = free_port(), free_port()
        cfg = procs.tmp / "v6.yaml"
        cfg.write_text(f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: v6, namespace: default}}
spec:
  workload: {{service: v6}}
  concurrency: 1
  admin: {{port: {admin}}}
  outbound: {{port: {outbound}}}
  clusters:
    - name: {DNS_NAME}
      tls: DISABLE
      resolution: DNS
      dnsEndpoints: [{{host: {DNS_NAME}, port: {port}}}]
  routes:
    - hosts: [{DNS_NAME}]
      cluster: {DNS_NAME}
""")
        from conftest import SIDECAR
        p = procs.start([SIDECAR, "--config", cfg, "--dns-resolver", f"127.0.0.1:{dns.port}"], "v6")
        wait_ready(p, admin)
        assert who(outbound, 3) == ["hello from six"] * 3
        log = dns.log.read_text()
        assert f"query[AAAA] {DNS_NAME}" in log and f"query[A] {DNS_NAME}" in log, log
    finally:
        if dns is not None:
            dns.stop()
        srv.shutdown()
        srv.server_close()
