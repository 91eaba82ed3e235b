"""A mesh over three hosts (network namespaces on one bridge, tests/e2e/netns.py), DESIGN §10:
meshd on host A's bridge address with its admin port over TLS; on host B apps behind mesh-mode
sidecars that bind and register B's IPv4 or IPv6 address; on host C callers (`meshctl run`, and a
sidecar advertising C's IPv6 address) reaching B's apps over mutual TLS; meshctl from host C
over TLS with the admin token. Then the flags that must be refused, which need no root."""

import json
import subprocess
import sys

import pytest

from conftest import MESHCTL, MESHD, ROOT, SIDECAR, wait_until
from netns import Hosts

A, B, C = 0, 1, 2
API, ADMIN = 15012, 15014
TD = "spiffe://cluster.local/ns/default/sa"


def sh(h, i, *args, timeout=60):
    return h.run(i, [str(a) for a in args], timeout=timeout)


def tcp_open(h, i, host, port):
    """Whether a TCP connect from host `i` to host:port is accepted (not refused)."""
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=2).close()"
    return sh(h, i, sys.executable, "-c", code).returncode == 0


def http_code(h, i, url, *extra):
    r = sh(h, i, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", *extra, url)
    return r.stdout.strip()


class HostMesh:
    """The three hosts with meshd, the apps and their sidecars, up and ready."""

    def __init__(self, h, tmp):
        self.h, self.tmp = h, tmp
        self.state = tmp / "meshd-state"
        self.root = self.state / "root-cert.pem"
        self.token_file = self.state / "admin-token"
        a4, a6 = h.addr4(A), h.addr6(A)
        # The API on every address (IPv4 and IPv6 sidecars dial it), admin on A's IPv4 address.
        self.meshd = h.popen(A, [MESHD, "--state-dir", self.state, "--api-port", API, "--admin-port", ADMIN,
                                 "--listen-address", "::", "--admin-address", a4], "meshd")
        self.admin_url = f"https://{a4}:{ADMIN}"
        wait_until(lambda: self.meshd.poll() is None and http_code(h, C, f"{self.admin_url}/ready", "--cacert", self.root) == "200",
                   timeout=20, what=f"meshd ready on {self.admin_url} (log {self.meshd.log_path})")
        # Host B: reviews (IPv4), ratings (IPv6), details (listening on 0.0.0.0, advertising IPv4).
        for name, port in (("reviews", 9080), ("ratings", 9081), ("details", 9082)):
            h.popen(B, [sys.executable, ROOT / "tools" / "upstream.py", "--port", port, "--name", name], f"app-{name}")
        self.b_sidecars = {
            "reviews": self.sidecar(B, "reviews", 15000, ["--app-port", 9080, "--advertise-address", h.addr4(B)], meshd=f"{a4}:{API}"),
            "ratings": self.sidecar(B, "ratings", 15100, ["--app-port", 9081, "--advertise-address", h.addr6(B)], meshd=f"[{a6}]:{API}"),
            "details": self.sidecar(B, "details", 15200, ["--app-port", 9082, "--listen-address", "0.0.0.0",
                                                          "--advertise-address", h.addr4(B)], meshd=f"{a4}:{API}"),
        }
        # Host C: a caller-only sidecar advertising C's IPv6 address (its node name at meshd).
        self.c_caller = self.sidecar(C, "productpage", 15000, ["--advertise-address", h.addr6(C)], meshd=f"[{a6}]:{API}")
        for name, _ in self.b_sidecars.items():
            wait_until(lambda: f"{name}.default" in self.ctl("get", "services").stdout, timeout=20, what=f"{name} registered")

    def ctl(self, *args, root=None, token=None, url=None, timeout=60):
        """meshctl in host C against meshd's TLS admin port."""
        argv = [MESHCTL, "--meshd", url or self.admin_url, "--root-cert", root or self.root,
                "--admin-token-file", token or self.token_file, *args]
        return sh(self.h, C, *argv, timeout=timeout)

    def sidecar(self, i, service, base, extra, meshd):
        """A mesh-mode sidecar in host `i`: admin `base`, outbound base+1, inbound base+6."""
        token = self.ctl("token", "create", "--namespace", "default", "--service-account", service).stdout.strip()
        assert token, "no join token"
        p = self.h.popen(i, [SIDECAR, "--meshd", meshd, "--root-cert", self.root, "--token", token, "--service", service,
                             "--admin-port", base, "--outbound-port", base + 1, "--inbound-port", base + 6,
                             "--concurrency", "1", *extra], f"sidecar-{service}-{i}")
        wait_until(lambda: p.poll() is None and http_code(self.h, i, f"http://127.0.0.1:{base}/ready") == "200",
                   timeout=30, what=f"{service} sidecar ready (log {p.log_path})")
        return p


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory):
    why = Hosts.unavailable()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("hosts")
    with Hosts(3, tmp) as h:
        yield HostMesh(h, tmp)


def echo_via(h, i, outbound, url):
    """GET url through the sidecar's outbound listener (http_proxy style) from host `i`: the
    upstream's /echo JSON."""
    r = sh(h, i, "curl", "-sS", "--max-time", "10", "-x", f"http://127.0.0.1:{outbound}", url)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_ipv4_call_from_meshctl_run_on_another_host(mesh3):
    """`meshctl run` on host C (meshd's admin over TLS) starts a caller whose http_proxy call
    reaches reviews on host B over mTLS: the app sees C's workload identity in XFCC."""
    h = mesh3.h
    r = mesh3.ctl("run", "--service", "productpage", "--sidecar-log", mesh3.tmp / "run-sidecar.log", "--",
                  "curl", "-sS", "--max-time", "10", "http://reviews.default.svc.cluster.local:9080/echo")
    assert r.returncode == 0, f"{r.stderr}\n{(mesh3.tmp / 'run-sidecar.log').read_text()}"
    echo = json.loads(r.stdout)
    assert echo["name"] == "reviews"
    xfcc = echo["headers"]["x-forwarded-client-cert"][0]
    assert f"By={TD}/reviews;" in xfcc and xfcc.endswith(f"URI={TD}/productpage"), xfcc
    services = mesh3.ctl("get", "services").stdout
    assert f"reviews.default\t{h.addr4(B)}:15006\t" in services, services


def test_ipv6_call_between_hosts(mesh3):
    """ratings registers [B6]:15106 and binds only there; C's caller reaches it over IPv6 mTLS."""
    h = mesh3.h
    services = mesh3.ctl("get", "services").stdout
    assert f"ratings.default\t[{h.addr6(B)}]:15106\t" in services, services
    echo = echo_via(h, C, 15001, "http://ratings.default.svc.cluster.local:9081/echo")
    assert echo["name"] == "ratings"
    xfcc = echo["headers"]["x-forwarded-client-cert"][0]
    assert f"By={TD}/ratings;" in xfcc and xfcc.endswith(f"URI={TD}/productpage"), xfcc
    # The IPv4 path works from the same long-running caller too.
    assert echo_via(h, C, 15001, "http://reviews.default.svc.cluster.local:9080/echo")["name"] == "reviews"
    # C's caller-only sidecar is known to meshd by its IPv6 node name.
    proxies = mesh3.ctl("get", "proxies").stdout
    assert f"{TD}/productpage\t[{h.addr6(C)}]:15000\tconnected" in proxies, proxies


def test_inbound_binds_the_given_address(mesh3):
    """Each inbound listener is on the address its flags say, nowhere else; the outbound
    listener and admin stay on loopback."""
    h = mesh3.h
    b4, b6 = h.addr4(B), h.addr6(B)
    # reviews: B's IPv4 address only.
    assert tcp_open(h, B, b4, 15006) and tcp_open(h, C, b4, 15006)
    assert not tcp_open(h, B, "127.0.0.1", 15006)
    assert not tcp_open(h, B, b6, 15006)
    # ratings: B's IPv6 address only.
    assert tcp_open(h, C, b6, 15106)
    assert not tcp_open(h, B, "127.0.0.1", 15106) and not tcp_open(h, B, "::1", 15106) and not tcp_open(h, B, b4, 15106)
    # details: 0.0.0.0 says every IPv4 address, loopback included; it registered B's address.
    assert tcp_open(h, B, "127.0.0.1", 15206) and tcp_open(h, C, b4, 15206)
    assert f"details.default\t{b4}:15206\t" in mesh3.ctl("get", "services").stdout
    assert echo_via(h, C, 15001, "http://details.default.svc.cluster.local:9082/echo")["name"] == "details"
    # Outbound and admin: loopback only, on every sidecar.
    for port in (15000, 15001):
        assert tcp_open(h, B, "127.0.0.1", port)
        assert not tcp_open(h, C, b4, port) and not tcp_open(h, B, b4, port)


def test_meshctl_over_tls_admin_from_another_host(mesh3):
    """get proxies / status from host C: the token opens them, no token or a wrong one is
    refused (401), /ready and /metrics stay open, a foreign root or an address meshd's
    certificate does not name fails the TLS check."""
    h = mesh3.h
    for cmd in (["get", "proxies"], ["status"]):
        r = mesh3.ctl(*cmd)
        assert r.returncode == 0, r.stderr
        for sa in ("reviews", "ratings", "details", "productpage"):
            assert f"{TD}/{sa}\t" in r.stdout, r.stdout
        assert "\tACK\t" in r.stdout, r.stdout
    url = f"{mesh3.admin_url}/v1/proxies"
    assert http_code(h, C, url, "--cacert", mesh3.root) == "401"
    assert http_code(h, C, url, "--cacert", mesh3.root, "-H", "authorization: Bearer wrong") == "401"
    token = mesh3.token_file.read_text().strip()
    assert http_code(h, C, url, "--cacert", mesh3.root, "-H", f"authorization: Bearer {token}") == "200"
    assert http_code(h, C, f"{mesh3.admin_url}/ready", "--cacert", mesh3.root) == "200"
    assert http_code(h, C, f"{mesh3.admin_url}/metrics", "--cacert", mesh3.root) == "200"
    # meshctl with a wrong token file: meshd's 401, exit 1.
    wrong = mesh3.tmp / "wrong-token"
    wrong.write_text("not-the-token\n")
    r = mesh3.ctl("status", token=wrong)
    assert r.returncode == 1 and "meshd answered 401" in r.stderr, r.stderr
    # A root that did not issue meshd's certificate: the handshake fails, nothing is sent.
    foreign = foreign_root(mesh3.tmp)
    r = mesh3.ctl("status", root=foreign)
    assert r.returncode == 1 and "TLS with" in r.stderr and "self-signed certificate in certificate chain" in r.stderr, r.stderr
    # The right root, but dialing an address the certificate does not name (the API port
    # listens on ::, its certificate names 127.0.0.1 and the admin address only).
    r = mesh3.ctl("status", url=f"https://[{h.addr6(A)}]:{API}")
    assert r.returncode == 1 and "IP address mismatch" in r.stderr, r.stderr
    # Plain HTTP to the TLS admin port gets no answer.
    r = sh(h, C, MESHCTL, "--meshd", f"http://{h.addr4(A)}:{ADMIN}", "--admin-token-file", mesh3.token_file, "status")
    assert r.returncode == 1, r.stdout
    # The certificate names A's address as an IP SAN.
    s = h.run(C, ["openssl", "s_client", "-connect", f"{h.addr4(A)}:{ADMIN}", "-CAfile", mesh3.root,
                  "-verify_ip", h.addr4(A), "-verify_return_error"], input="")
    assert "Verify return code: 0 (ok)" in s.stdout, s.stdout + s.stderr


def foreign_root(tmp):
    d = tmp / "foreign"
    d.mkdir(exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", d / "key.pem", "-out", d / "root.pem", "-days", "1", "-subj", "/CN=foreign root"],
                   check=True, capture_output=True)
    return d / "root.pem"


# Bad flags: no root needed, nothing reaches meshd.

def run_bin(args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("flags,words", [
    (["--listen-address", "nonsense"], "--listen-address: expected an IP address"),
    (["--listen-address", "0.0.0.0"], "--listen-address: 0.0.0.0 needs an explicit --advertise-address"),
    (["--listen-address", "::"], "--listen-address: :: needs an explicit --advertise-address"),
    (["--listen-address", "10.0.0.2", "--advertise-address", "10.0.0.3"], "--listen-address: 10.0.0.2 differs from --advertise-address 10.0.0.3"),
    (["--listen-address", "0.0.0.0", "--advertise-address", "fd00::2"], "0.0.0.0 accepts IPv4 only"),
    (["--advertise-address", "0.0.0.0"], "--advertise-address: 0.0.0.0 is a wildcard"),
])
def test_sidecar_refuses_bad_addresses(tmp_path, flags, words):
    root = foreign_root(tmp_path)
    r = run_bin([SIDECAR, "--meshd", "127.0.0.1:1", "--root-cert", root, "--token", "t", "--service", "reviews",
                 "--app-port", "9080", *flags])
    assert r.returncode == 2 and words in r.stderr, r.stderr


@pytest.mark.parametrize("flags,words", [
    (["--admin-address", "nonsense"], "--admin-address: expected an IP address"),
    (["--admin-address", "0.0.0.0"], "--admin-address: 0.0.0.0 is a wildcard"),
    (["--admin-address", "::"], "--admin-address: :: is a wildcard"),
    (["--listen-address", "api.local"], "--listen-address: expected an IP address"),
])
def test_meshd_refuses_bad_addresses(tmp_path, flags, words):
    r = run_bin([MESHD, "--state-dir", tmp_path / "state", *flags])
    assert r.returncode == 2 and words in r.stderr, r.stderr


def test_meshctl_tls_flags(tmp_path):
    r = run_bin([MESHCTL, "--meshd", "https://10.0.0.1:15014", "status"])
    assert r.returncode == 2 and "--root-cert" in r.stderr, r.stderr
    r = run_bin([MESHCTL, "--meshd", "http://127.0.0.1:15014", "--root-cert", foreign_root(tmp_path), "status"])
    assert r.returncode == 2 and "--root-cert is for an https:// --meshd URL" in r.stderr, r.stderr
    r = run_bin([MESHCTL, "--meshd", "https://10.0.0.1:15014", "--root-cert", tmp_path / "missing.pem", "status"])
    assert r.returncode == 2 and "--root-cert" in r.stderr and "missing.pem" in r.stderr, r.stderr
