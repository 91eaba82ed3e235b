"""`meshctl capture apply|remove|print` on the real kernel: every test runs in network namespaces
it makes with `ip netns add` and deletes at the end (fixtures with finalizers: namespaces,
processes and their rules go with them). Root only; skipped with the reason otherwise.

What it shows: apply twice equals once; remove leaves iptables-save / ip6tables-save exactly as
before, foreign rules untouched, with the nft and the legacy backend; NET_ADMIN and missing
binaries reported; and real traffic: an app uid's TCP (IPv4 and IPv6) lands on the outbound port
with its original destination, the proxy uid's does not; inbound lands on the inbound port except
the admin port; the app's DNS goes to the DNS port, the proxy's does not."""

import itertools
import os
import re
import subprocess
import time

import pytest

from conftest import MESHCTL

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and iptables need root")

_ids = itertools.count()


def run(*args, check=True, timeout=30):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r


class Netns:
    """One namespace made with `ip netns add`, lo up; `run` executes inside it."""

    def __init__(self, name):
        self.name = name
        run("ip", "netns", "add", name)
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *args, **kw):
        return run("ip", "netns", "exec", self.name, *args, **kw)

    def popen(self, args, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.name, *[str(a) for a in args]], **kw)

    def ctl(self, *args, check=True):
        return self.run(MESHCTL, "capture", *args, check=check)

    def save(self, family=4, backend=None):
        """iptables-save of every table without comments and counters."""
        tool = ("iptables" if family == 4 else "ip6tables") + (f"-{backend}" if backend else "") + "-save"
        out = self.run(tool).stdout
        return [re.sub(r" \[\d+:\d+\]$", "", l) for l in out.splitlines() if not l.startswith("#")]

    def saves(self, backend=None):
        return (self.save(4, backend), self.save(6, backend))

    def lo6(self):
        return sorted(re.findall(r"inet6 (\S+)", self.run("ip", "-6", "addr", "show", "dev", "lo").stdout))


@pytest.fixture
def netns(request):
    """A factory of namespaces; each deleted, with its processes, at the end of the test."""
    made, procs = [], []

    def make():
        ns = Netns(f"mcap{os.getpid()}-{next(_ids)}")
        made.append(ns)
        return ns

    def cleanup():
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        for ns in made:
            # The rules go with the namespace; remove also deletes the state file apply wrote.
            subprocess.run(["ip", "netns", "exec", ns.name, str(MESHCTL), "capture", "remove"], capture_output=True)
            from netns import _pids_in
            for pid in _pids_in(ns.name):
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)

    request.addfinalizer(cleanup)
    make.procs = procs
    return make


def test_apply_twice_equals_once_and_remove_restores(netns):
    ns = netns()
    before, lo_before = ns.saves(), ns.lo6()
    assert "::6/128" not in lo_before
    r = ns.ctl("apply")
    assert "capture applied" in r.stdout and "backend nft (auto:" in r.stderr, r
    once = ns.saves()
    assert "-A OUTPUT -j MESH_OUTPUT" in once[0] and "-A PREROUTING -p tcp -j MESH_INBOUND" in once[1]
    assert "-A MESH_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN" in once[0]
    assert "-A MESH_OUTPUT -s ::6/128 -o lo -j RETURN" in once[1]
    assert "::6/128" in ns.lo6()
    r = ns.ctl("apply")
    assert "capture unchanged" in r.stdout, r
    assert ns.saves() == once, "a second apply changed the rules"
    r = ns.ctl("remove")
    assert "capture removed" in r.stdout and "::6/128 from lo" in r.stdout, r
    assert ns.saves() == before
    assert ns.lo6() == lo_before
    r = ns.ctl("remove")
    assert "nothing to remove" in r.stdout and ns.saves() == before


def test_foreign_rules_survive_and_new_options_replace(netns):
    ns = netns()
    ns.run("ip", "-6", "addr", "add", "::6/128", "dev", "lo")  # present before: remove must keep it
    ns.run("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1/32", "-p", "tcp", "-j", "RETURN")
    ns.run("iptables", "-t", "nat", "-N", "FOREIGN")
    ns.run("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "FOREIGN")
    ns.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    ns.run("ip6tables", "-t", "nat", "-A", "OUTPUT", "-d", "2001:db8::1/128", "-j", "RETURN")
    before, lo_before = ns.saves(), ns.lo6()
    ns.ctl("apply")
    applied = ns.saves()
    for rule in ("-A OUTPUT -d 192.0.2.1/32 -p tcp -j RETURN", "-A PREROUTING -p udp -j FOREIGN", "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"):
        assert rule in applied[0]
    # Other options while applied: replaced in place, one jump each, the foreign rules as they were.
    r = ns.ctl("apply", "--no-dns", "--include-inbound-ports", "9080", "--exclude-outbound-cidrs", "10.0.0.0/8,fd00::/8")
    assert "capture applied" in r.stdout
    v4, v6 = ns.saves()
    assert v4.count("-A OUTPUT -j MESH_OUTPUT") == 1 and v4.count("-A PREROUTING -p tcp -j MESH_INBOUND") == 1
    assert not [l for l in v4 if "--dport 53" in l], "the DNS rules stayed"
    assert "-A MESH_INBOUND -p tcp -m tcp --dport 9080 -j MESH_IN_REDIRECT" in v4
    assert "-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT" not in v4
    assert "-A MESH_OUTPUT -d 10.0.0.0/8 -j RETURN" in v4 and "-A MESH_OUTPUT -d fd00::/8 -j RETURN" in v6
    assert [l for l in v4 if "MESH" not in l] == [l for l in before[0]], "a foreign rule changed"
    assert [l for l in v6 if "MESH" not in l] == [l for l in before[1]]
    ns.ctl("remove")
    assert ns.saves() == before
    assert ns.lo6() == lo_before, "::6 was there before apply and must stay"


def test_legacy_backend(netns):
    ns = netns()
    # Legacy holds a nat rule and nft none: auto picks legacy, and says why.
    ns.run("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN")
    ns.run("ip6tables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN")
    before, nft_before = ns.saves("legacy"), ns.saves("nft")
    r = ns.ctl("apply")
    assert "backend legacy (auto: the legacy backend holds nat rules and nft holds none)" in r.stderr, r
    legacy = ns.saves("legacy")
    assert "-A OUTPUT -j MESH_OUTPUT" in legacy[0] and "-A OUTPUT -j MESH_OUTPUT" in legacy[1]
    assert ns.saves("nft") == nft_before, "rules went to nft too"
    r = ns.ctl("apply", "--backend", "nft", check=False)
    assert r.returncode == 1 and "applied with the legacy backend" in r.stderr, r
    ns.ctl("apply", "--backend", "legacy")
    assert ns.saves("legacy") == legacy
    ns.ctl("remove")
    assert ns.saves("legacy") == before and ns.saves("nft") == nft_before


def test_explicit_nft_backend_and_print_matches_applied(netns):
    ns = netns()
    printed = run(MESHCTL, "capture", "print", "--exclude-outbound-ports", "22").stdout
    ns.ctl("apply", "--backend", "nft", "--exclude-outbound-ports", "22")
    v4 = ns.save(4, "nft")
    own = [l for l in printed.split("# meshctl capture: IPv6")[0].splitlines() if l.startswith("-A ")]
    assert len([l for l in v4 if l.startswith("-A ")]) == len(own) == 23
    assert ns.run("iptables-legacy-save").stdout == "", "legacy was touched"
    ns.ctl("remove", "--backend", "nft")
    assert ns.save(4) == []


def test_no_net_admin_and_missing_binary(netns):
    ns = netns()
    for prefix in (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"],
                   ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]):
        for action in ("apply", "remove"):
            r = ns.run(*prefix, MESHCTL, "capture", action, check=False)
            assert r.returncode == 1 and "needs the NET_ADMIN capability" in r.stderr, r
    r = ns.run(*prefix, MESHCTL, "capture", "print")  # print needs no privilege
    assert "*nat" in r.stdout
    assert ns.save(4) == []
    # The iptables-nft tools (links to xtables-nft-multi) hidden in a private mount namespace:
    # the first one needed is named with the package to install.
    multi = os.path.realpath("/usr/sbin/iptables-nft-restore")
    r = ns.run("unshare", "-m", "sh", "-c", f"mount --bind /dev/null {multi} && exec {MESHCTL} capture apply --backend nft", check=False)
    assert r.returncode == 1 and r.stderr == (
        "meshctl: error: iptables-nft-save not found: install the Debian package iptables (apt-get install iptables)\n"), r
    assert ns.save(4) == []
    r = ns.ctl("apply", "--inbound-port", "70000", check=False)
    assert r.returncode == 2 and r.stderr.strip() == 'meshctl: error: --inbound-port: expected a port from 1 to 65535, got "70000"'


SERVER = r"""
import select, socket, struct, sys
SO_ORIGINAL_DST = 80
def orig(c, v6):
    try:
        if v6:
            raw = c.getsockopt(41, SO_ORIGINAL_DST, 28)  # SOL_IPV6, IP6T_SO_ORIGINAL_DST, sockaddr_in6
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
        raw = c.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]
    except OSError:
        return "none", 0
tcp, udp = {}, {}
for spec in sys.argv[1:]:
    kind, name, addr = spec.split(":", 2)
    host, port = addr.rsplit(":", 1)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host.strip("[]"), int(port)))
    if kind == "tcp":
        s.listen(16); tcp[s] = (name, fam == socket.AF_INET6)
    else:
        udp[s] = name
print("ready", flush=True)
while True:
    for s in select.select(list(tcp) + list(udp), [], [])[0]:
        if s in tcp:
            c, peer = s.accept()
            name, v6 = tcp[s]
            ip, port = orig(c, v6)
            c.sendall(f"{name} {ip} {port} {peer[0]}\n".encode()); c.close()
        else:
            data, peer = s.recvfrom(512)
            s.sendto(f"{udp[s]} {data.decode()}".encode(), peer)
"""

CLIENT = r"""
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
s.settimeout(3)
if kind == "tcp":
    s.connect((host, port)); print(s.makefile().readline().strip())
else:
    s.sendto(b"query", (host, port)); print(s.recvfrom(512)[0].decode())
"""


def start_server(ns, netns, tmp_path, name, specs):
    path = tmp_path / f"server-{name}.py"
    path.write_text(SERVER)
    p = ns.popen(["/usr/bin/python3", path, *specs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    netns.procs.append(p)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise AssertionError(f"server {name}: {line}{p.stdout.read()}")
    return p


def client(ns, kind, host, port, uid=None, gid=None):
    """The first line a client gets, as `uid` and `gid` (default: the uid) (the app: 65534; the proxy: 1337)."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", "--clear-groups"] if uid is not None else []
    r = ns.run(*prefix, "/usr/bin/python3", "-c", CLIENT, kind, host, port, check=False)
    assert r.returncode == 0, f"{kind} {host}:{port} as {uid}: {r.stderr}"
    return r.stdout.strip()


def landed(line):
    """(the listener that answered, the peer it saw)."""
    f = line.split()
    return f[0], f[-1]


def test_real_redirects(netns, tmp_path):
    a, b = netns(), netns()
    va, vb = f"va{a.name[-8:]}", f"vb{b.name[-8:]}"
    run("ip", "link", "add", va, "netns", a.name, "type", "veth", "peer", "name", vb, "netns", b.name)
    for ns, dev, v4, v6 in ((a, va, "10.77.0.1/24", "fd77::1/64"), (b, vb, "10.77.0.2/24", "fd77::2/64")):
        ns.run("ip", "addr", "add", v4, "dev", dev)
        ns.run("ip", "-6", "addr", "add", v6, "dev", dev, "nodad")
        ns.run("ip", "link", "set", dev, "up")
    # Host A: the sidecar's ports, each reporting the original destination; host B: the real service.
    start_server(a, netns, tmp_path, "a", ["tcp:outbound:0.0.0.0:15001", "tcp:outbound6:[::]:15001", "tcp:inbound:0.0.0.0:15006",
                                           "tcp:admin:0.0.0.0:15000", "tcp:app:0.0.0.0:9090", "udp:dns:0.0.0.0:15053"])
    start_server(b, netns, tmp_path, "b", ["tcp:service-b:0.0.0.0:8080", "tcp:service-b6:[::]:8080", "udp:resolver-b:0.0.0.0:53"])
    time.sleep(0.2)

    # Before apply nothing is captured.
    assert landed(client(a, "tcp", "10.77.0.2", 8080, uid=65534)) == ("service-b", "10.77.0.1")
    assert landed(client(b, "tcp", "10.77.0.1", 9090)) == ("app", "10.77.0.2")

    a.ctl("apply")
    # Outbound: the app's connection lands on the outbound port, original destination intact.
    assert client(a, "tcp", "10.77.0.2", 8080, uid=65534) == "outbound 10.77.0.2 8080 10.77.0.1"
    assert client(a, "tcp", "fd77::2", 8080, uid=65534) == "outbound6 fd77::2 8080 fd77::1"
    # The proxy's own connections (uid 1337, gid 1337) are not captured.
    assert landed(client(a, "tcp", "10.77.0.2", 8080, uid=1337)) == ("service-b", "10.77.0.1")
    assert landed(client(a, "tcp", "fd77::2", 8080, uid=1337)) == ("service-b6", "fd77::1")
    # The uid alone and the gid alone each keep it out.
    assert landed(client(a, "tcp", "10.77.0.2", 8080, uid=1337, gid=65534)) == ("service-b", "10.77.0.1")
    assert landed(client(a, "tcp", "10.77.0.2", 8080, uid=65534, gid=1337)) == ("service-b", "10.77.0.1")
    # Inbound: a connection from host B to the app's port lands on the inbound port; the admin port is not captured.
    assert client(b, "tcp", "10.77.0.1", 9090) == "inbound 10.77.0.1 9090 10.77.0.2"
    assert landed(client(b, "tcp", "10.77.0.1", 15000)) == ("admin", "10.77.0.2")
    # DNS: the app's queries go to the DNS port (to a remote resolver and to a loopback stub alike),
    # the proxy's reach the resolver.
    assert client(a, "udp", "10.77.0.2", 53, uid=65534) == "dns query"
    assert client(a, "udp", "127.0.0.53", 53, uid=65534) == "dns query"
    assert client(a, "udp", "10.77.0.2", 53, uid=1337) == "resolver-b query"
    assert client(a, "udp", "10.77.0.2", 53, uid=1337, gid=65534) == "resolver-b query"
    assert client(a, "udp", "10.77.0.2", 53, uid=65534, gid=1337) == "resolver-b query"

    a.ctl("remove")
    assert landed(client(a, "tcp", "10.77.0.2", 8080, uid=65534)) == ("service-b", "10.77.0.1")
    assert landed(client(b, "tcp", "10.77.0.1", 9090)) == ("app", "10.77.0.2")
    assert client(a, "udp", "10.77.0.2", 53, uid=65534) == "resolver-b query"


def test_failed_apply_leaves_nothing_half_applied(netns, tmp_path):
    """ip6tables-nft-restore that passes --test but fails the real commit (a stand-in earlier in
    PATH): the IPv4 rules already committed are put back as they were, and a first apply also
    takes back ::6 on lo and the nat tables it created."""
    ns = netns()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ip6tables-nft-restore").write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = --test ] && exec /usr/sbin/ip6tables-nft-restore "$@"; done\n'
        'echo "ip6tables-nft-restore: simulated failure" >&2; exit 4\n')
    (fake / "ip6tables-nft-restore").chmod(0o755)
    env_path = f"PATH={fake}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"

    def failing_apply(*flags):
        return ns.run("env", env_path, MESHCTL, "capture", "apply", *flags, check=False)

    before, lo_before = ns.saves(), ns.lo6()
    r = failing_apply()
    assert r.returncode == 1 and "ip6tables-nft-restore refused the IPv6 rules (exit 4)" in r.stderr, r
    assert ns.saves() == before and ns.lo6() == lo_before
    # With rules in place, a failed replacement keeps the IPv4 rules that were there.
    ns.ctl("apply")
    applied = ns.saves()
    r = failing_apply("--no-dns")
    assert r.returncode == 1, r
    assert ns.saves() == applied
    ns.ctl("remove")
    assert ns.saves() == before and ns.lo6() == lo_before


def test_rules_deleted_by_hand_then_apply_and_remove(netns):
    """The state file outlives rules flushed by hand: a new apply keeps what the first one added
    (::6 on lo, the nat tables), and remove still takes it all back."""
    ns = netns()
    before, lo_before = ns.saves(), ns.lo6()
    ns.ctl("apply")
    for tool in ("iptables", "ip6tables"):
        ns.run(tool, "-t", "nat", "-F")
        ns.run(tool, "-t", "nat", "-X")
    ns.ctl("apply")
    r = ns.ctl("remove")
    assert "::6/128 from lo" in r.stdout and "the empty ip nat table apply created" in r.stdout, r
    assert ns.saves() == before and ns.lo6() == lo_before
