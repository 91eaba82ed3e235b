"""DNS in the sidecar (DESIGN §10 "DNS"): meshd allocates VIPs, pushes them, and a mesh-mode
sidecar with --dns-port answers A/AAAA for every mesh name form with them (dig over UDP and
TCP, 127.0.0.1 and ::1); a ServiceEntry's own addresses win; VIPs survive an unrelated apply
and a meshd restart; other names are forwarded to the resolv.conf nameservers (a real dnsmasq
in a network namespace made by the test, on port 53 there), the next one after 2 s of
silence, SERVFAIL when all stay silent while mesh names keep being answered; hostile packets
get FORMERR or are dropped and the server keeps answering."""

import os
import re
import socket
import struct
import subprocess
import time

import pytest

from conftest import MESHD, SIDECAR, Meshd, free_port, wait_until

ENTRIES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  addresses: [192.0.2.50, "2001:db8::50"]
  ports: [{number: 5432, name: http, protocol: HTTP}]
  endpoints: [{address: 192.0.2.51}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 192.0.2.52}]
"""

UNRELATED = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details}
spec:
  host: details
"""


def dig(port, name, qtype="A", tcp=False, server="127.0.0.1", extra=(), timeout=3):
    """(status, [(ttl, type, data)], seconds) of one dig query."""
    args = ["dig", "-p", str(port), f"@{server}", name, qtype, "+tries=1", f"+time={timeout}", *extra]
    if tcp:
        args.append("+tcp")
    t0 = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 10).stdout
    took = time.monotonic() - t0
    m = re.search(r"status: (\w+)", out)
    answers, in_answer = [], False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            in_answer = True
            continue
        if in_answer:
            if not line.strip():
                break
            f = line.split()
            answers.append((int(f[1]), f[3], f[4]))
    return (m.group(1) if m else "NO ANSWER"), answers, took


def service_addresses(m):
    """host -> [addresses] from `meshctl get services` (last column)."""
    out = {}
    for line in m.ctl("get", "services").stdout.splitlines():
        f = line.split("\t")
        if len(f) >= 5 and f[4] != "-":
            out[f[0]] = f[4].split(",")
    return out


def dns_sidecar(m, procs, resolv, name="reviews", app=True):
    port = free_port()
    app_port = procs.app(name) if app else None
    m.sidecar(name, name, app_port=app_port, extra=["--dns-port", port, "--resolv-conf", resolv])
    return port


@pytest.fixture
def resolv_local(tmp_path):
    """A resolv.conf naming a nameserver nobody runs (for the tests that forward nothing)."""
    p = tmp_path / "resolv.conf"
    p.write_text("search default.svc.cluster.local svc.cluster.local\nnameserver 127.0.0.1\noptions ndots:5\n")
    return p


@pytest.fixture
def upstreams(procs, tmp_path):
    """A network namespace with a real dnsmasq on LIVE:53 (example.test -> 192.0.2.7) and a
    nameserver on SILENT:53 that reads and never answers, reached over a veth pair. Removed on
    every exit path."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the nameservers run in a network namespace made by the test")
    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"dnst{tag}", f"vdn{tag}a", f"vdn{tag}b"
    net = f"10.253.{os.getpid() % 250}"
    live, silent = f"{net}.2", f"{net}.3"

    def sh(*a):
        subprocess.run(a, check=True, capture_output=True)
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{net}.1/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{live}/24", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{silent}/24", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        procs.start(["ip", "netns", "exec", ns, "dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                     "--bind-interfaces", f"--listen-address={live}", "--port=53", "--address=/example.test/192.0.2.7",
                     f"--pid-file={tmp_path}/dnsmasq.pid", "--user=root"], "dnsmasq")
        procs.start(["ip", "netns", "exec", ns, "python3", "-c",
                     "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                     f"s.bind(('{silent}', 53))\nwhile True: s.recv(65535)\n"], "silent-ns")
        wait_until(lambda: dig(53, "example.test", server=live, timeout=1)[1] == [(0, "A", "192.0.2.7")], what="dnsmasq answering")
        yield live, silent
    finally:
        procs.stop_all()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_mesh_names_get_the_vips_meshd_allocated_over_udp_and_tcp(procs, resolv_local):
    m = Meshd(procs)
    (procs.tmp / "entries.yaml").write_text(ENTRIES)
    m.ctl("apply", "-f", procs.tmp / "entries.yaml")
    port = dns_sidecar(m, procs, resolv_local)
    vips = service_addresses(m)
    assert set(vips) == {"reviews.default", "ratings.default", "db.example.com", "api.example.com"}, vips
    for h in ("reviews.default", "ratings.default", "api.example.com"):
        v4, v6 = vips[h]
        assert re.fullmatch(r"240\.240\.\d+\.\d+", v4) and v4 not in ("240.240.0.0", "240.240.255.255"), vips
        a, b = (int(x) for x in v4.split(".")[2:])
        assert v6 == f"2001:2::f0f0:{a:02x}{b:02x}", vips
    assert vips["db.example.com"] == ["192.0.2.50", "2001:db8::50"]
    assert len({v[0] for v in vips.values()}) == 4
    wait_until(lambda: dig(port, "reviews")[1] == [(30, "A", vips["reviews.default"][0])], what="VIPs pushed to the sidecar")
    forms = {"reviews.default": ["reviews", "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local",
                                 "REVIEWS.Default.svc.CLUSTER.local."],
             "ratings.default": ["ratings", "ratings.default.svc.cluster.local"],
             "db.example.com": ["db.example.com", "DB.example.com."],
             "api.example.com": ["api.example.com"]}
    for host, names in forms.items():
        for n in names:
            for tcp in (False, True):
                for server in ("127.0.0.1", "::1"):
                    st, ans, _ = dig(port, n, "A", tcp=tcp, server=server)
                    assert (st, ans) == ("NOERROR", [(30, "A", vips[host][0])]), (n, tcp, server)
                    st, ans, _ = dig(port, n, "AAAA", tcp=tcp, server=server)
                    assert (st, ans) == ("NOERROR", [(30, "AAAA", vips[host][1])]), (n, tcp, server)
    # Other types for a mesh name: NODATA (NOERROR, no answer), never NXDOMAIN.
    for qtype in ("MX", "TXT", "SRV"):
        assert dig(port, "reviews.default", qtype)[:2] == ("NOERROR", [])
    # Several queries on one TCP connection (dig keeps it open with +keepopen).
    out = subprocess.run(["dig", "-p", str(port), "@127.0.0.1", "+tcp", "+keepopen", "+tries=1", "+time=3", "+short",
                          "reviews", "A", "ratings", "A", "api.example.com", "AAAA"], capture_output=True, text=True, timeout=20).stdout
    assert out.split() == [vips["reviews.default"][0], vips["ratings.default"][0], vips["api.example.com"][1]], out


def test_vips_survive_an_unrelated_apply_and_a_meshd_restart(procs, resolv_local):
    m = Meshd(procs)
    (procs.tmp / "entries.yaml").write_text(ENTRIES)
    m.ctl("apply", "-f", procs.tmp / "entries.yaml")
    port = dns_sidecar(m, procs, resolv_local)
    before = service_addresses(m)
    (procs.tmp / "unrelated.yaml").write_text(UNRELATED)
    m.ctl("apply", "-f", procs.tmp / "unrelated.yaml")
    after = service_addresses(m)
    assert {h: after[h] for h in before} == before
    assert "details.default" in after and after["details.default"][0] not in [v[0] for v in before.values()]
    m.stop()
    # A damaged vips.txt stops meshd naming it and its line; it is never reset.
    vips = m.state / "vips.txt"
    good = vips.read_text()
    assert good.startswith(f"# meshd: virtual IPs, hosts: {len(after) - 1}\n"), good   # db.example.com has its own
    for text, want in ((good.replace("240.240.", "10.240.", 1), "vips.txt:2: expected an address in 240.240.0.0/16"),
                       ("\n".join(good.splitlines()[:-1]) + "\n", "vips.txt: the header counts"),
                       ("", "vips.txt:1: expected the header line")):
        vips.write_text(text)
        r = subprocess.run([str(MESHD), "--state-dir", m.state, "--api-port", str(free_port()), "--admin-port", str(free_port())],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 1 and f"{m.state}/{want}" in r.stderr, r.stderr
    vips.write_text(good)
    m.start()
    wait_until(lambda: "reviews.default" in service_addresses(m), timeout=30, what="registry back after restart")
    assert service_addresses(m) == after
    # The sidecar answers the same addresses from meshd's next push.
    wait_until(lambda: dig(port, "details")[1] == [(30, "A", after["details.default"][0])], timeout=30, what="details answered")
    assert dig(port, "reviews.default.svc.cluster.local")[1] == [(30, "A", before["reviews.default"][0])]


def test_other_names_are_forwarded_with_a_timeout_per_nameserver(procs, tmp_path, upstreams):
    live, silent = upstreams
    m = Meshd(procs)
    good = tmp_path / "resolv-good.conf"
    good.write_text(f"nameserver {silent}\nnameserver {live}\n")
    dead = tmp_path / "resolv-dead.conf"
    dead.write_text(f"search example.test\nnameserver {silent}\n")
    port = dns_sidecar(m, procs, good)
    dead_port = dns_sidecar(m, procs, dead, name="productpage", app=False)
    # The silent nameserver first: 2 s, then dnsmasq answers; EDNS or not, UDP or TCP; the
    # client's ID comes back (dig refuses a mismatched one).
    for extra, tcp in (((), False), (("+noedns",), False), ((), True)):
        st, ans, took = dig(port, "www.example.test", extra=extra, tcp=tcp, timeout=6)
        assert (st, ans) == ("NOERROR", [(0, "A", "192.0.2.7")]), (extra, tcp)
        assert 1.8 <= took < 4.0, took
    # Only silence upstream: SERVFAIL within the timeout, and meanwhile mesh names are answered
    # at once (the DNS loop never waits for an upstream).
    slow = [subprocess.Popen(["dig", "-p", str(dead_port), "@127.0.0.1", f"n{i}.example.test", "+tries=1", "+time=6"],
                             stdout=subprocess.PIPE, text=True) for i in range(5)]
    time.sleep(0.3)
    wait_until(lambda: dig(dead_port, "reviews")[1] != [], what="dead sidecar has VIPs")
    for _ in range(5):
        st, ans, took = dig(dead_port, "reviews.default")
        assert st == "NOERROR" and len(ans) == 1 and took < 0.5, took
    t0 = time.monotonic()
    for p in slow:
        out, _ = p.communicate(timeout=10)
        assert "status: SERVFAIL" in out, out
    assert time.monotonic() - t0 < 2.5


def hostile_cases():
    hdr = lambda qd=1, an=0, ar=0, flags=0x0100: struct.pack(">HHHHHH", 0x4242, flags, qd, an, 0, ar)
    name = lambda n: b"".join(bytes([len(l)]) + l.encode() for l in n.split(".")) + b"\0"
    q = lambda n: name(n) + struct.pack(">HH", 1, 1)
    opt = b"\0" + struct.pack(">HHIH", 41, 4096, 0, 0)
    formerr = {
        "two questions": hdr(qd=2) + q("a.b") + q("c.d"),
        "no question": hdr(qd=0),
        "answer in a query": hdr(an=1) + q("a.b"),
        "label of 64": hdr() + bytes([64]) + b"a" * 64 + b"\0\0\1\0\1",
        "name over 255": hdr() + q(".".join(["a" * 63] * 4)),
        "pointer in the question": hdr() + b"\xc0\x0c\0\1\0\1",
        "pointer loop in OPT": hdr(ar=1) + q("a.b") + b"\xc0\x15" + opt[1:],
        "trailing garbage": hdr() + q("reviews") + b"\xde\xad",
        "two OPT records": hdr(ar=2) + q("a.b") + opt + opt,
        "truncated question": hdr() + q("reviews")[:-2],
    }
    dropped = {"empty": b"", "short header": hdr()[:11], "a response": hdr(flags=0x8180) + q("reviews")}
    return formerr, dropped


def test_hostile_packets_get_formerr_or_are_dropped_and_the_server_keeps_answering(procs, resolv_local):
    m = Meshd(procs)
    port = dns_sidecar(m, procs, resolv_local)
    vip = service_addresses(m)["reviews.default"][0]
    wait_until(lambda: dig(port, "reviews")[1] == [(30, "A", vip)], what="VIP pushed")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    formerr, dropped = hostile_cases()
    for what, pkt in formerr.items():
        s.sendto(pkt, ("127.0.0.1", port))
        r, _ = s.recvfrom(65535)
        assert r[:2] == b"\x42\x42" and r[2] & 0x80 and (r[3] & 0x0F) == 1, what
        assert r[4:6] == b"\0\0", what
    for what, pkt in dropped.items():
        s.sendto(pkt, ("127.0.0.1", port))
        with pytest.raises(socket.timeout):
            s.recvfrom(65535)
    # Over TCP too, on one connection, then a good query on it.
    with socket.create_connection(("127.0.0.1", port), timeout=3) as c:
        pkt = formerr["pointer in the question"]
        c.sendall(struct.pack(">H", len(pkt)) + pkt)
        good = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x07reviews\0\0\1\0\1"
        c.sendall(struct.pack(">H", len(good)) + good)
        frames, data = [], b""
        while len(frames) < 2:
            chunk = c.recv(4096)
            assert chunk, frames
            data += chunk
            while len(data) >= 2 and len(data) >= 2 + struct.unpack(">H", data[:2])[0]:
                n = struct.unpack(">H", data[:2])[0]
                frames.append(data[2:2 + n])
                data = data[2 + n:]
        assert frames[0][:2] == b"\x42\x42" and frames[0][3] & 0x0F == 1
        assert frames[1][:2] == b"\0\7" and frames[1][-4:] == socket.inet_aton(vip)
    assert dig(port, "reviews")[1] == [(30, "A", vip)]


def test_dns_flags_refused_by_name(procs, tmp_path):
    m = Meshd(procs)
    base = [str(SIDECAR), "--meshd", f"127.0.0.1:{m.api}", "--root-cert", str(m.root),
            "--token", m.token("web"), "--service", "web", "--admin-port", str(free_port()),
            "--inbound-port", str(free_port()), "--outbound-port", str(free_port())]

    def run(*extra):
        return subprocess.run(base + [str(e) for e in extra], capture_output=True, text=True, timeout=20)
    r = run("--dns-port", "70000")
    assert r.returncode == 2 and "--dns-port" in r.stderr, r.stderr
    r = run("--resolv-conf", tmp_path / "resolv.conf")
    assert r.returncode == 2 and "--resolv-conf: the DNS port is off" in r.stderr, r.stderr
    r = run("--dns-port", free_port(), "--resolv-conf", tmp_path / "missing.conf")
    assert r.returncode == 1 and f"--resolv-conf {tmp_path / 'missing.conf'}: cannot read it" in r.stderr, r.stderr
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    r = run("--dns-port", port)
    held.close()
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port} (dns): the port is already in use" in r.stderr, r.stderr
    static = subprocess.run([str(SIDECAR), "--config", tmp_path / "x.yaml", "--dns-port", "53"],
                            capture_output=True, text=True, timeout=20)
    assert static.returncode == 2 and "--dns-port and --resolv-conf are mesh-mode flags" in static.stderr, static.stderr
