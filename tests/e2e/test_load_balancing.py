"""DestinationRule load balancing end to end: consistentHash (cookie, header, query parameter;
ring hash and Maglev), minimal disruption when an endpoint is added, locality failover under
outlier detection. A real sidecar (static config, two workers, SIGHUP reloads) in front of real
apps (tools/upstream.py: "/" answers "hello from NAME", so every response names its endpoint)."""

import collections
import http.client
import json
import re
import signal
import socket
import threading
import time

from conftest import Meshd, free_port, http_get, wait_ready, wait_until


def bootstrap(outbound, admin, endpoints, docs, labels="", workers=2):
    """A caller's sidecar with one cluster `reviews`; `endpoints` is [(port, {label: value})]."""
    eps = "\n".join(f"        - address: 127.0.0.1:{p}\n          labels: {json.dumps(l)}" for p, l in endpoints)
    own = f", labels: {labels}" if labels else ""
    return f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: front, namespace: default}}
spec:
  workload: {{service: productpage{own}}}
  concurrency: {workers}
  admin: {{port: {admin}}}
  outbound:
    port: {outbound}
  clusters:
    - name: reviews
      tls: DISABLE
      endpoints:
{eps}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - name: main
    route:
    - destination: {{host: reviews}}
    retries: {{attempts: 0}}
---
{docs}
"""


def rule(policy):
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
{policy}
"""


class Front:
    """The sidecar under test: its config file can be rewritten and reloaded (SIGHUP)."""

    def __init__(self, procs, endpoints, docs, labels="", workers=2):
        # Outlier detection is per worker: the locality tests use one, so one 5xx ejects.
        self.procs, self.docs, self.labels, self.workers = procs, docs, labels, workers
        self.outbound, self.admin = free_port(), free_port()
        self.reloads = 1
        self.name = f"front-{self.outbound}"
        self.proc = procs.sidecar(bootstrap(self.outbound, self.admin, endpoints, docs, labels, workers), self.name)
        wait_ready(self.proc, self.admin)

    def reload(self, endpoints):
        (self.procs.tmp / f"{self.name}.yaml").write_text(bootstrap(self.outbound, self.admin, endpoints, self.docs, self.labels, self.workers))
        self.reloads += 1
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: f"static-{self.reloads}" in self.proc.log_path.read_text(), what="reload")

    def ask(self, path="/", headers=None, source="127.0.0.1"):
        """(status, the app that answered or "", response headers)."""
        c = http.client.HTTPConnection("127.0.0.1", self.outbound, timeout=10, source_address=(source, 0))
        try:
            c.request("GET", path, headers={"Host": "reviews", **(headers or {})})
            r = c.getresponse()
            body = r.read().decode(errors="replace")
            m = re.match(r"(?:hello|failing on purpose:?) (?:from )?(\S+)", body)
            return r.status, (m.group(1) if m and r.status == 200 else ""), {k.lower(): v for k, v in r.getheaders()}
        finally:
            c.close()


def apps(procs, names):
    return {n: procs.app(n) for n in names}


def set_fail(port, status):
    http_get(f"http://127.0.0.1:{port}/_control?fail={status}&delay=0")


def test_a_cookie_keeps_its_requests_on_one_endpoint_and_one_is_set_when_missing(procs):
    a = apps(procs, ["e0", "e1", "e2", "e3"])
    front = Front(procs, [(p, {}) for p in a.values()],
                  rule("    loadBalancer:\n      consistentHash: {httpCookie: {name: user, path: /, ttl: 60s}}"))
    dump = json.loads(http_get(f"http://127.0.0.1:{front.admin}/config_dump")[1])["bootstrap"]["target_balancing"]
    assert dump[0]["consistent_hash"] == {"http_cookie": "user", "set_cookie_attributes": "; Max-Age=60; Path=/; HttpOnly",
                                          "table": "RING_HASH", "table_size": 4 * 1024}, dump
    owner = {}
    for k in range(40):
        seen = {front.ask(headers={"Cookie": f"theme=dark; user=u{k}"})[1] for _ in range(5)}
        assert len(seen) == 1 and "" not in seen, (k, seen)
        owner[k] = seen.pop()
    spread = collections.Counter(owner.values())
    assert len(spread) == 4 and min(spread.values()) >= 2, spread
    # No cookie: the sidecar makes one (Envoy's form), and the client that keeps it sticks.
    clients = []
    for _ in range(12):
        st, app, h = front.ask()
        assert st == 200 and app
        m = re.fullmatch(r'user="([0-9a-f]{16})"; Max-Age=60; Path=/; HttpOnly', h.get("set-cookie", ""))
        assert m, h
        clients.append((m.group(1), app))
    assert len({c for c, _ in clients}) == 12, "each client gets its own value"
    for value, first in clients:
        for _ in range(4):
            st, app, h = front.ask(headers={"Cookie": f"user=\"{value}\""})
            assert (st, app) == (200, first)
            assert "set-cookie" not in h, "a request with the cookie gets none"
    assert len({app for _, app in clients}) >= 2, clients


def test_header_and_query_hashes_keep_keys_on_one_endpoint_with_maglev_and_ring(procs):
    a = apps(procs, ["e0", "e1", "e2"])
    eps = [(p, {}) for p in a.values()]
    front = Front(procs, eps, rule("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}"))
    owner = {}
    for k in range(30):
        seen = {front.ask(headers={"x-user": f"user-{k}"})[1] for _ in range(4)}
        assert len(seen) == 1, (k, seen)
        owner[k] = seen.pop()
    assert len(set(owner.values())) == 3, owner
    # Without the header the table is entered at random: requests spread.
    assert len({front.ask()[1] for _ in range(30)}) >= 2
    # A sidecar sharing nothing with this one maps every key to the same endpoint.
    again = Front(procs, eps, rule("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}"))
    assert all(again.ask(headers={"x-user": f"user-{k}"})[1] == owner[k] for k in range(30))
    # The query parameter, on a ring (the deprecated minimumRingSize spelling).
    q = Front(procs, eps, rule("    loadBalancer:\n      consistentHash: {httpQueryParameterName: user, minimumRingSize: 512}"))
    qowner = {}
    for k in range(30):
        seen = {q.ask(f"/?a=1&user=u{k}&b=2")[1] for _ in range(4)}
        assert len(seen) == 1, (k, seen)
        qowner[k] = seen.pop()
    assert len(set(qowner.values())) == 3, qowner


def test_adding_an_endpoint_moves_about_one_nth_of_the_keys(procs):
    a = apps(procs, ["e0", "e1", "e2", "e3", "e4"])
    four = [(a[n], {}) for n in ["e0", "e1", "e2", "e3"]]
    front = Front(procs, four, rule("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}"))
    keys = [f"key-{k}" for k in range(300)]
    before = {k: front.ask(headers={"x-user": k})[1] for k in keys}
    assert set(before.values()) == {"e0", "e1", "e2", "e3"}
    front.reload(four + [(a["e4"], {})])
    after = {k: front.ask(headers={"x-user": k})[1] for k in keys}
    moved = [k for k in keys if after[k] != before[k]]
    # 1/(N+1) = 20 % of the keys move, all of them to the new endpoint.
    assert 0.10 * len(keys) <= len(moved) <= 0.30 * len(keys), len(moved)
    assert {after[k] for k in moved} == {"e4"}
    # And back: removing it returns every key to where it was.
    front.reload(four)
    assert {k: front.ask(headers={"x-user": k})[1] for k in keys} == before


ZONE_A = {"topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": "r1-a"}
ZONE_B = {"topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": "r1-b"}
OWN = "{topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: r1-a}"
OUTLIER = "    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}"


def test_locality_prefers_the_own_zone_fails_over_when_it_is_ejected_and_comes_back(procs):
    a = apps(procs, ["a1", "a2", "b1", "b2"])
    eps = [(a["a1"], ZONE_A), (a["a2"], ZONE_A), (a["b1"], ZONE_B), (a["b2"], ZONE_B)]
    front = Front(procs, eps, rule(OUTLIER), labels=OWN, workers=1)
    dump = json.loads(http_get(f"http://127.0.0.1:{front.admin}/config_dump")[1])["bootstrap"]["target_balancing"]
    addr = {n: f"127.0.0.1:{p}" for n, p in a.items()}
    assert dump == [{"target": "reviews", "load_balancer": "ROUND_ROBIN",
                     "priorities": [[addr["a1"], addr["a2"]], [addr["b1"], addr["b2"]]]}], dump
    served = collections.Counter(front.ask()[1] for _ in range(60))
    assert set(served) == {"a1", "a2"}, served
    # Zone a fails: each of its endpoints is ejected after one 5xx, then zone b takes it all.
    set_fail(a["a1"], 503)
    set_fail(a["a2"], 503)
    statuses = [front.ask()[0] for _ in range(20)]
    assert statuses.count(503) == 2, (statuses, http_get(f"http://127.0.0.1:{front.admin}/clusters")[1].decode())
    served = collections.Counter(front.ask()[1] for _ in range(40))
    assert set(served) == {"b1", "b2"}, served
    clusters = json.loads(http_get(f"http://127.0.0.1:{front.admin}/clusters")[1])["clusters"][0]["endpoints"]
    assert [e["health_status"] for e in clusters] == ["EJECTED", "EJECTED", "HEALTHY", "HEALTHY"], clusters
    # Zone a recovers: once its ejections end (2 s), traffic comes back to it.
    set_fail(a["a1"], 0)
    set_fail(a["a2"], 0)
    wait_until(lambda: all(e["health_status"] == "HEALTHY" for e in
                           json.loads(http_get(f"http://127.0.0.1:{front.admin}/clusters")[1])["clusters"][0]["endpoints"]),
               timeout=6, what="ejections to end")
    served = collections.Counter(front.ask()[1] for _ in range(60))
    assert set(served) == {"a1", "a2"}, served


def test_one_of_two_local_endpoints_ejected_spills_a_share_and_disabled_locality_spreads(procs):
    a = apps(procs, ["a1", "a2", "b1"])
    eps = [(a["a1"], ZONE_A), (a["a2"], ZONE_A), (a["b1"], ZONE_B)]
    front = Front(procs, eps, rule(OUTLIER), labels=OWN, workers=1)
    set_fail(a["a1"], 503)
    wait_until(lambda: front.ask()[0] == 503, what="a1 to fail once")
    # Zone a is 50 % healthy: with Envoy's overprovisioning factor 1.4 it keeps 70 %, 30 % go to b.
    served = collections.Counter(front.ask()[1] for _ in range(400))
    assert set(served) == {"a2", "b1"}, served
    assert 0.20 <= served["b1"] / 400 <= 0.40, served
    # localityLbSetting.enabled: false: no preference, round robin over every endpoint.
    off = Front(procs, eps, rule("    loadBalancer:\n      localityLbSetting: {enabled: false}\n" + OUTLIER), labels=OWN, workers=1)
    set_fail(a["a1"], 0)
    served = collections.Counter(off.ask()[1] for _ in range(60))
    assert set(served) == {"a1", "a2", "b1"}, served


def test_warmup_ramps_a_new_endpoints_share_up(procs):
    a = apps(procs, ["e0", "e1", "e2"])
    two = [(a["e0"], {}), (a["e1"], {})]
    front = Front(procs, two, rule("    loadBalancer:\n      simple: ROUND_ROBIN\n      warmupDurationSecs: 12s"), workers=1)
    # The endpoints the sidecar started with are warm: plain round robin.
    assert collections.Counter(front.ask()[1] for _ in range(40)) == {"e0": 20, "e1": 20}
    front.reload(two + [(a["e2"], {})])
    # Just added: e2 takes about 10 % (minimumPercent) of its round-robin turns, so well under
    # a third of the requests.
    early = collections.Counter(front.ask()[1] for _ in range(300))
    assert early["e2"] / 300 < 0.15, early
    assert early["e2"] > 0, early
    # Past the warm-up window: an equal share.
    time.sleep(12.2)
    late = collections.Counter(front.ask()[1] for _ in range(300))
    assert all(90 <= late[n] <= 110 for n in ["e0", "e1", "e2"]), late


def test_through_meshd_keys_stay_in_the_own_zone_and_a_new_workload_takes_about_one_nth(procs):
    """Mesh mode: endpoints' locality from the labels their sidecars registered with, the
    caller's from its own --label flags; a new workload's registration pushes a new endpoint."""
    m = Meshd(procs)
    zone = {"a": ["--label", "topology.kubernetes.io/region=r1", "--label", "topology.kubernetes.io/zone=r1-a"],
            "b": ["--label", "topology.kubernetes.io/region=r1", "--label", "topology.kubernetes.io/zone=r1-b"]}
    a = apps(procs, ["a1", "a2", "a3", "b1"])
    for n in ["a1", "a2", "b1"]:
        m.sidecar(f"reviews-{n}", "reviews", app_port=a[n], extra=zone[n[0]])
    _, cadmin, _, outbound = m.sidecar("productpage", "productpage", extra=zone["a"])
    # meshd refuses what a sidecar would, naming file, line and field.
    bad = procs.tmp / "bad-dr.yaml"
    bad.write_text(rule("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65536}}"))
    r = m.ctl("apply", "-f", bad, check=False)
    assert r.returncode != 0
    assert "bad-dr.yaml:8: document 1: spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: must be a prime number" in r.stderr, r.stderr
    f = procs.tmp / "dr.yaml"
    f.write_text(rule("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n" + OUTLIER))
    m.ctl("apply", "-f", f, "--wait")
    front = Front.__new__(Front)
    front.outbound, front.admin = outbound, cadmin

    def owners():
        return {k: front.ask(headers={"x-user": f"key-{k}"})[1] for k in range(200)}

    wait_until(lambda: set(owners().values()) == {"a1", "a2"}, timeout=20, what="keys on zone a only")
    before = owners()
    m.sidecar("reviews-a3", "reviews", app_port=a["a3"], extra=zone["a"])
    wait_until(lambda: "a3" in set(owners().values()), timeout=20, what="the new workload's endpoint pushed")
    after = owners()
    moved = [k for k in after if after[k] != before[k]]
    # One zone-a endpoint joins two: about a third of the keys move, all to it; zone b gets none.
    assert 0.15 * 200 <= len(moved) <= 0.50 * 200, len(moved)
    assert {after[k] for k in moved} == {"a3"}
    assert "b1" not in after.values()


def test_distribute_weights_traffic_by_locality(procs):
    a = apps(procs, ["a1", "b1", "b2", "c1"])
    zone_c = {"topology.kubernetes.io/region": "r2", "topology.kubernetes.io/zone": "r2-c"}
    eps = [(a["a1"], ZONE_A), (a["b1"], ZONE_B), (a["b2"], ZONE_B), (a["c1"], zone_c)]
    dist = """    loadBalancer:
      localityLbSetting:
        distribute:
        - from: r1/r1-a/*
          to: {"r1/r1-a/*": 80, "r1/r1-b/*": 20}"""
    front = Front(procs, eps, rule(dist), labels=OWN)
    dump = json.loads(http_get(f"http://127.0.0.1:{front.admin}/config_dump")[1])["bootstrap"]["target_balancing"]
    assert dump[0]["locality_percent"] == [80, 20], dump
    served = collections.Counter(front.ask()[1] for _ in range(1000))
    # 80 % to zone a, 20 % to zone b (split over its two), none to r2 which no `to` names.
    assert 740 <= served["a1"] <= 860, served
    assert 60 <= served["b1"] <= 140 and 60 <= served["b2"] <= 140, served
    assert served["c1"] == 0, served


def test_source_ip_keeps_each_caller_address_on_one_endpoint(procs):
    a = apps(procs, ["e0", "e1", "e2"])
    front = Front(procs, [(p, {}) for p in a.values()], rule("    loadBalancer:\n      consistentHash: {useSourceIp: true}"))
    owner = {}
    for i in range(2, 26):
        src = f"127.0.0.{i}"
        # A new connection (and source port) for every request: only the address counts.
        seen = {front.ask(source=src)[1] for _ in range(4)}
        assert len(seen) == 1 and "" not in seen, (src, seen)
        owner[src] = seen.pop()
    assert len(set(owner.values())) == 3, owner


def test_failover_priority_orders_endpoints_by_the_listed_labels(procs):
    a = apps(procs, ["same", "other"])
    eps = [(a["same"], {"rack": "r7"}), (a["other"], {"rack": "r9"})]
    fp = "    loadBalancer:\n      localityLbSetting: {failoverPriority: [rack]}\n" + OUTLIER
    front = Front(procs, eps, rule(fp), labels="{rack: r7}", workers=1)
    assert collections.Counter(front.ask()[1] for _ in range(30)) == {"same": 30}
    set_fail(a["same"], 503)
    assert front.ask()[0] == 503
    assert collections.Counter(front.ask()[1] for _ in range(30)) == {"other": 30}


def test_source_ip_on_a_tcp_service(procs):
    """Opaque TCP (CONNECT on the outbound listener): useSourceIp keeps each caller address's
    connections on one endpoint. Each endpoint writes its name and closes."""
    servers = []
    for name in ["t0", "t1", "t2"]:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        servers.append((name, s))

        def serve(sock=s, n=name):
            while True:
                try:
                    c, _ = sock.accept()
                except OSError:
                    return
                c.sendall(n.encode())
                c.close()
        threading.Thread(target=serve, daemon=True).start()
    try:
        outbound, admin = free_port(), free_port()
        eps = "\n".join(f"        - 127.0.0.1:{s.getsockname()[1]}" for _, s in servers)
        dr = rule("    loadBalancer:\n      consistentHash: {useSourceIp: true}").replace("host: reviews", "host: cache")
        cfg = f"""
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata: {{name: front, namespace: default}}
spec:
  workload: {{service: productpage}}
  concurrency: 2
  admin: {{port: {admin}}}
  outbound:
    port: {outbound}
  clusters:
    - name: cache
      tls: DISABLE
      serviceProtocol: TCP
      port: 7000
      endpoints:
{eps}
  routes:
    - {{name: cache, hosts: [cache], cluster: cache}}
---
{dr}
"""
        p = procs.sidecar(cfg, "tcp-front")
        wait_ready(p, admin)

        def who(src):
            s = socket.create_connection(("127.0.0.1", outbound), timeout=10, source_address=(src, 0))
            try:
                s.sendall(b"CONNECT cache:7000 HTTP/1.1\r\nHost: cache:7000\r\n\r\n")
                data = b""
                while True:
                    b = s.recv(4096)
                    if not b:
                        break
                    data += b
                head, _, body = data.partition(b"\r\n\r\n")
                assert b" 200 " in head.split(b"\r\n")[0] + b" ", head
                return body.decode()
            finally:
                s.close()

        owner = {}
        for i in range(2, 26):
            src = f"127.0.0.{i}"
            seen = {who(src) for _ in range(4)}
            assert len(seen) == 1 and "" not in seen, (src, seen)
            owner[src] = seen.pop()
        assert len(set(owner.values())) == 3, owner
    finally:
        for _, s in servers:
            s.close()


def test_an_ejected_endpoints_keys_move_to_their_next_owners_and_come_back(procs):
    a = apps(procs, ["e0", "e1", "e2"])
    front = Front(procs, [(p, {}) for p in a.values()],
                  rule("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n" + OUTLIER), workers=1)
    keys = [f"key-{k}" for k in range(90)]
    before = {k: front.ask(headers={"x-user": k})[1] for k in keys}
    assert set(before.values()) == {"e0", "e1", "e2"}
    set_fail(a["e1"], 503)
    victim = next(k for k in keys if before[k] == "e1")
    assert front.ask(headers={"x-user": victim})[0] == 503   # one 5xx ejects e1
    during = {k: front.ask(headers={"x-user": k})[1] for k in keys}
    assert all(during[k] == before[k] for k in keys if before[k] != "e1"), "only e1's keys move"
    assert {during[k] for k in keys if before[k] == "e1"} <= {"e0", "e2"}
    set_fail(a["e1"], 0)
    wait_until(lambda: front.ask(headers={"x-user": victim})[1] == "e1", timeout=6, what="e1's ejection to end")
    assert {k: front.ask(headers={"x-user": k})[1] for k in keys} == before
