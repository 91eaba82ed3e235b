"""meshd replicas on a real 3-member etcd cluster (DESIGN §12, issue 17): one leader at every
moment, a SIGKILLed leader replaced within its TTL + 1 s with no failed request, a paused leader
that does not act when it wakes, an etcd member down, a replica whose watch fell behind a
compaction, and concurrent applies through two replicas."""

import pathlib
import re
import threading
import time

import pytest

from conftest import Meshd, curl, http_get, wait_until
from etcd_cluster import ETCD, EtcdCluster, Relay
from test_config_push import SPLIT, Traffic

pytestmark = pytest.mark.skipif(not pathlib.Path(ETCD).exists(), reason="etcd-server is not installed (.ci/run installs it)")

TTL = 3


class Replica(Meshd):
    """A meshd replica on the shared etcd store, signing with the shared plug-in CA."""

    def __init__(self, procs, pki, cluster, name, endpoints=None, grace="30s"):
        super().__init__(procs, name=name, extra=["--store", cluster.store_flag(endpoints), "--ca-dir", str(pki),
                                                  "--replica-id", name, "--leader-ttl", f"{TTL}s", "--registry-grace", grace])

    def leader(self):
        """This replica's mesh_leader gauge (None: it does not answer)."""
        try:
            code, body = http_get(f"http://127.0.0.1:{self.admin}/metrics", timeout=0.5)
        except OSError:
            return None
        m = re.search(r"^mesh_leader (\d)$", body.decode(), re.M)
        return int(m.group(1)) if code == 200 and m else None

    def version(self):
        _, body = http_get(f"http://127.0.0.1:{self.admin}/metrics", timeout=2)
        return int(re.search(r"^meshd_config_version (\d+)$", body.decode(), re.M).group(1))


def replicas(procs, pki, cluster, n=3):
    rs = [Replica(procs, pki, cluster, f"r{i}") for i in range(n)]
    wait_until(lambda: sum(r.leader() == 1 for r in rs) == 1, timeout=TTL + 5, what="one leader")
    return rs


def api_list(rs):
    return ",".join(f"127.0.0.1:{r.api}" for r in rs)


class LeaderWatch:
    """Samples every replica's mesh_leader and etcd's election key every 50 ms; records every
    moment when more than one replica said it leads."""

    def __init__(self, rs, cluster):
        self.rs, self.cluster = rs, cluster
        self.samples, self.overlaps = [], []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            says = [r.name for r in self.rs if r.proc.poll() is None and r.leader() == 1]
            self.samples.append((t, says))
            if len(says) > 1:
                self.overlaps.append((t, says))
            time.sleep(0.05)

    def first_leader_after(self, t0, exclude):
        for t, says in self.samples:
            if t >= t0 and [s for s in says if s != exclude]:
                return t, says
        return None

    def close(self):
        self.stop.set()
        self.t.join()


def start_mesh(procs, rs, tmp_path):
    v1, v2 = procs.app("v1"), procs.app("v2")
    m = rs[0]
    sidecars = []
    for name, sa, port, label in [("reviews-v1", "reviews", v1, "version=v1"), ("reviews-v2", "reviews", v2, "version=v2"),
                                  ("productpage", "productpage", None, None)]:
        extra = ["--label", label] if label else []
        p, admin, _, outbound = m.sidecar(name, sa, app_port=port, extra=extra, meshd=api_list(rs))
        sidecars.append((p, admin, outbound))
    wait_until(lambda: m.ctl("get", "services").stdout.count("reviews.default") == 2, what="both versions registered")
    outbound = sidecars[2][2]
    wait_until(lambda: curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout.startswith(b"hello"), what="routing pushed")
    return sidecars, outbound


def apply_split(m, tmp_path, w1, w2):
    f = tmp_path / f"split-{w1}-{w2}.yaml"
    f.write_text(SPLIT.replace("W1", str(w1)).replace("W2", str(w2)))
    r = m.ctl("apply", "-f", f)
    return int(re.search(r"version (\d+)", r.stdout).group(1))


def applied_versions(p):
    return [int(v) for v in re.findall(r"config version (\d+) from meshd applied", p.log_path.read_text())]


def test_leader_killed_under_traffic(procs, pki, tmp_path):
    cluster = EtcdCluster(procs)
    rs = replicas(procs, pki, cluster)
    # The sidecars dial the leader first: its death also moves their streams.
    leader = next(r for r in rs if r.leader() == 1)
    rs = [leader] + [r for r in rs if r is not leader]
    sidecars, outbound = start_mesh(procs, rs, tmp_path)
    assert leader.ctl("status").stdout.count("\tconnected\t") == 3
    apply_split(rs[0], tmp_path, 100, 0)
    wait_until(lambda: curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout.strip().endswith(b"v1"), what="split 100/0")
    watch = LeaderWatch(rs, cluster)
    traffic = Traffic(outbound)
    try:
        time.sleep(1)
        assert leader.leader() == 1 and cluster.get("/mesh/leader") == leader.name
        # The election key names it; meshctl status through any replica says who leads.
        others = [r for r in rs if r is not leader]
        assert f"replica {leader.name}: leader" in leader.ctl("status").stdout
        assert f"replica {others[0].name}: standby" in others[0].ctl("status").stdout
        assert f"leader {leader.name})" in others[0].ctl("status").stdout
        before = [len(applied_versions(p)) for p, _, _ in sidecars]
        t_kill = time.monotonic()
        leader.proc.kill()
        leader.proc.wait()
        wait_until(lambda: sum(r.leader() == 1 for r in others) == 1, timeout=TTL + 2, what="a new leader")
        t_new = time.monotonic()
        new = next(r for r in others if r.leader() == 1)
        assert cluster.get("/mesh/leader") == new.name
        # The streams moved with their version and digest: nothing was pushed to them again.
        wait_until(lambda: sum(r.ctl("status").stdout.count("\tconnected\t") for r in others) == 3, timeout=3, what="streams moved")
        assert [len(applied_versions(p)) for p, _, _ in sidecars] == before
        # A change right after: in force on every sidecar within 2 s.
        t_apply = time.monotonic()
        v = apply_split(new, tmp_path, 0, 100)
        wait_until(lambda: all(max(applied_versions(p), default=0) >= v for p, _, _ in sidecars), timeout=2,
                   what=f"every sidecar applied version {v}")
        t_applied = time.monotonic()
        wait_until(lambda: curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout.strip().endswith(b"v2"),
                   timeout=max(0.1, t_apply + 2 - time.monotonic()), what="the new split in force")
        time.sleep(1)
        # Every stream moved to a live replica.
        assert sum(r.ctl("status").stdout.count("\tconnected\t") for r in others) == 3
    finally:
        traffic.close()
        watch.close()
    assert traffic.failures == [], traffic.failures[:5]
    assert len(traffic.log) > 200, len(traffic.log)
    assert watch.overlaps == [], watch.overlaps[:3]
    first = watch.first_leader_after(t_kill, exclude=leader.name)
    assert first is not None and first[0] - t_kill <= TTL + 1, (first, t_kill, t_new)
    print(f"measured: new leader {first[0] - t_kill:.2f} s after the kill (TTL {TTL} s); change in force on every sidecar "
          f"{t_applied - t_apply:.2f} s after the apply; {len(traffic.log)} requests, {len(traffic.failures)} failed")


def test_paused_leader_does_not_act_when_it_wakes(procs, pki, tmp_path):
    import os
    import signal
    cluster = EtcdCluster(procs)
    rs = replicas(procs, pki, cluster)
    leader = next(r for r in rs if r.leader() == 1)
    watch = LeaderWatch(rs, cluster)
    try:
        os.kill(leader.proc.pid, signal.SIGSTOP)
        others = [r for r in rs if r is not leader]
        wait_until(lambda: sum(r.leader() == 1 for r in others) == 1, timeout=TTL + 2, what="a new leader while paused")
        new = next(r for r in others if r.leader() == 1)
        time.sleep(1)
        os.kill(leader.proc.pid, signal.SIGCONT)
        # Its very first answer after waking says it does not lead, and it never says so again.
        first = None
        deadline = time.monotonic() + 5
        while first is None and time.monotonic() < deadline:
            first = leader.leader()
        assert first == 0
        time.sleep(TTL)
        assert leader.leader() == 0 and new.leader() == 1
        assert cluster.get("/mesh/leader") == new.name
        assert f"replica {leader.name}: standby" in leader.ctl("status").stdout
    finally:
        watch.close()
    assert watch.overlaps == [], watch.overlaps[:3]


def test_an_etcd_member_down(procs, pki, tmp_path):
    cluster = EtcdCluster(procs)
    rs = replicas(procs, pki, cluster)
    sidecars, outbound = start_mesh(procs, rs, tmp_path)
    # The member every replica dials first goes away: they move on to the others.
    cluster.kill(0)
    for i, r in enumerate(rs):
        v = apply_split(r, tmp_path, 100 - 10 * i, 10 * i)
        assert r.version() >= v
    wait_until(lambda: len({r.version() for r in rs}) == 1, timeout=5, what="replicas agree on the version")
    wait_until(lambda: all(max(applied_versions(p), default=0) >= rs[0].version() for p, _, _ in sidecars), timeout=5,
               what="every sidecar has the last version")
    code, body = http_get(f"http://127.0.0.1:{rs[1].admin}/ready")
    assert code == 200


def test_watch_behind_a_compaction_lists_again(procs, pki, tmp_path):
    cluster = EtcdCluster(procs)
    first = Replica(procs, pki, cluster, "r0")
    wait_until(lambda: first.leader() == 1, timeout=TTL + 5, what="r0 leads")
    relay = Relay(cluster.members[1]["client"])
    try:
        behind = Replica(procs, pki, cluster, "r1", endpoints=[relay.endpoint])
        apply_split(first, tmp_path, 100, 0)
        wait_until(lambda: behind.version() == first.version(), timeout=5, what="r1 follows")
        relay.hold()   # what etcd sends r1 from now on is held back
        for w in (90, 80, 70):
            v = apply_split(first, tmp_path, w, 100 - w)
        time.sleep(0.5)
        assert behind.version() < v
        cluster.ctl("compact", str(cluster.revision()))
        relay.cut()    # r1's watch breaks with nothing pending: it must resume from a compacted revision
        wait_until(lambda: behind.version() == v, timeout=10, what="r1 converged after listing again")
        assert "compacted" in behind.proc.log_path.read_text()
        assert behind.routes() == first.routes()
        r = behind.ctl("get", "routes", "-o", "yaml").stdout
        assert "weight: 70" in r, r
    finally:
        relay.close()


def test_concurrent_applies_through_two_replicas_are_all_kept(procs, pki, tmp_path):
    cluster = EtcdCluster(procs)
    rs = replicas(procs, pki, cluster, n=2)
    errors = []

    def applier(r, tag):
        for i in range(10):
            f = tmp_path / f"{tag}-{i}.yaml"
            f.write_text(f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {tag}-{i}}}\n"
                         f"spec:\n  host: {tag}-{i}\n  trafficPolicy:\n    connectionPool:\n      http: {{maxRequestsPerConnection: {i + 1}}}\n")
            res = r.ctl("apply", "-f", f, check=False)
            if res.returncode != 0:
                errors.append(res.stderr)

    ts = [threading.Thread(target=applier, args=(r, f"svc{j}")) for j, r in enumerate(rs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    wait_until(lambda: rs[0].version() == rs[1].version(), timeout=5, what="same version on both")
    want = sorted(f"svc{j}-{i}.default" for j in range(2) for i in range(10))
    for r in rs:
        names = sorted(n for k, n in r.routes() if k == "DestinationRule")
        assert names == sorted(f"default/svc{j}-{i}" for j in range(2) for i in range(10)), names
        # Each apply gave its host a virtual IP in the one shared table: none lost, none given twice.
        vips = {l.split("\t")[0]: l.split("\t")[-1] for l in r.ctl("get", "services").stdout.splitlines() if l.startswith("svc")}
        assert sorted(vips) == want, vips
        assert len(set(vips.values())) == 20 and all(v.startswith("240.240.") for v in vips.values()), vips


def test_concurrent_applies_are_validated_against_each_other(procs, pki, tmp_path):
    """Two VirtualServices for one host are each valid alone and refused together. Sent at the
    same moment through two replicas, exactly one of each pair lands: a replica whose view was
    stale loses its transaction, catches up and validates again."""
    import subprocess
    from conftest import MESHCTL
    cluster = EtcdCluster(procs)
    rs = replicas(procs, pki, cluster, n=2)
    runs = []
    for i in range(8):
        for j, r in enumerate(rs):
            f = tmp_path / f"vs-{i}-{j}.yaml"
            f.write_text(f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: h{i}-by-{j}}}\n"
                         f"spec:\n  hosts: [h{i}]\n  http:\n  - route:\n    - destination: {{host: h{i}}}\n")
            runs.append((i, j, [str(MESHCTL), "--meshd", f"http://127.0.0.1:{r.admin}", "--admin-token-file", str(r.state / "admin-token"),
                                "apply", "-f", str(f)]))
    ps = [(i, j, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for i, j, cmd in runs]
    done = [(i, j, p.wait(timeout=60), p.stderr.read()) for i, j, p in ps]
    for i in range(8):
        rcs = sorted(rc for k, _, rc, _ in done if k == i)
        assert rcs[0] == 0 and rcs[1] != 0, [(k, j, rc, e) for k, j, rc, e in done if k == i]
        refused = next(e for k, _, rc, e in done if k == i and rc != 0)
        assert f"h{i}" in refused, refused
    wait_until(lambda: rs[0].version() == rs[1].version(), timeout=5, what="same version on both")
    for r in rs:
        hosts = sorted(n.split("/")[1].split("-by-")[0] for k, n in r.routes() if k == "VirtualService")
        assert hosts == sorted(f"h{i}" for i in range(8)), hosts


def test_expiry_own_and_of_a_dead_replica(procs, pki, tmp_path):
    """Each replica expires the workloads whose streams it held; the workloads of a replica that
    died (its presence key lapsed) are expired by the leader alone, once the grace period passed
    and their sidecars did not come back elsewhere."""
    cluster = EtcdCluster(procs)
    rs = [Replica(procs, pki, cluster, f"r{i}", grace="3s") for i in range(2)]
    wait_until(lambda: sum(r.leader() == 1 for r in rs) == 1, timeout=TTL + 5, what="one leader")
    leader = next(r for r in rs if r.leader() == 1)
    standby = next(r for r in rs if r is not leader)
    a, b = procs.app("a"), procs.app("b")
    pa, _, _, _ = leader.sidecar("reviews", "reviews", app_port=a)     # held by the leader
    pb, _, _, _ = standby.sidecar("ratings", "ratings", app_port=b)    # held by the standby
    services = lambda r: [l.split("\t")[0] for l in r.ctl("get", "services").stdout.splitlines() if "\t" in l]  # noqa: E731
    wait_until(lambda: {"reviews.default", "ratings.default"} <= set(services(leader)), what="both registered")
    assert cluster.get("/mesh/config/registry/spiffe://cluster.local/ns/default/sa/ratings|" + next(
        l.split("\t")[1] for l in standby.ctl("get", "services").stdout.splitlines() if l.startswith("ratings.default"))).endswith("\t" + standby.name)
    pa.kill()
    wait_until(lambda: "reviews.default" not in services(leader), timeout=15, what="the leader expiring its own workload")
    assert "ratings.default" in services(leader)
    t0 = time.monotonic()
    pb.kill()
    standby.proc.kill()
    standby.proc.wait()
    # The standby's presence lease (10 s) lapses, then the grace period (3 s): the leader removes it.
    wait_until(lambda: "ratings.default" not in services(leader), timeout=25, what="the leader expiring the dead replica's workload")
    assert time.monotonic() - t0 >= 3
    assert "removed ratings.default" in leader.proc.log_path.read_text()


def test_refusals_on_the_shared_store(procs, pki, tmp_path):
    """A second replica with an id in use is refused by name; an apply larger than one etcd
    transaction is refused naming the limit, and nothing of it is stored; --store etcd without a
    shared CA, and --config-dir with it, are refused by flag."""
    import subprocess
    from conftest import MESHD
    cluster = EtcdCluster(procs, n=1)
    r0 = Replica(procs, pki, cluster, "r0")
    twin = subprocess.run([str(MESHD), "--state-dir", str(tmp_path / "twin"), "--api-port", "0", "--admin-port", "0",
                           "--store", cluster.store_flag(), "--ca-dir", str(pki), "--replica-id", "r0"],
                          capture_output=True, text=True, timeout=30)
    assert twin.returncode == 1 and "--replica-id r0: another meshd holds it" in twin.stderr, twin.stderr
    for extra, why in [([], "give every replica the same --ca-dir"), (["--ca-dir", str(pki), "--config-dir", str(tmp_path)], "--config-dir: not with --store etcd")]:
        r = subprocess.run([str(MESHD), "--state-dir", str(tmp_path / "x"), "--store", cluster.store_flag(), *extra],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and why in r.stderr, r.stderr
    big = tmp_path / "big.yaml"
    big.write_text("\n---\n".join(f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d{i}}}\nspec:\n  host: d{i}"
                                  for i in range(130)))
    before = r0.version()
    res = r0.ctl("apply", "-f", big, check=False)
    assert res.returncode != 0 and "etcd takes at most 120 operations" in res.stderr and "apply it in smaller parts" in res.stderr, res.stderr
    assert r0.version() == before and r0.routes() == []


def test_a_version_the_replica_refuses_stops_it_serving(procs, pki, tmp_path):
    """Documents written into etcd by hand that each read well but refuse together (two
    VirtualServices for one host): the replica does not put them in force, says why on /ready
    (503) and on config requests, and serves again once etcd holds a config it accepts."""
    cluster = EtcdCluster(procs, n=1)
    r0 = Replica(procs, pki, cluster, "r0")
    apply_split(r0, tmp_path, 100, 0)
    good = r0.version()
    vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: again}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n"
    cluster.ctl("put", "/mesh/config/docs/VirtualService/default/again", vs)
    cluster.ctl("put", "/mesh/config/rev", "by-hand")
    wait_until(lambda: http_get(f"http://127.0.0.1:{r0.admin}/ready")[0] == 503, timeout=5, what="the replica stops serving")
    code, body = http_get(f"http://127.0.0.1:{r0.admin}/ready")
    assert b"refused by this replica" in body and b"already routed" in body, body
    assert r0.version() == good and ("VirtualService", "default/again") not in r0.routes()
    assert "refused by this replica" in r0.proc.log_path.read_text()
    cluster.ctl("del", "/mesh/config/docs/VirtualService/default/again")
    cluster.ctl("put", "/mesh/config/rev", "fixed")
    wait_until(lambda: http_get(f"http://127.0.0.1:{r0.admin}/ready")[0] == 200, timeout=5, what="serving again")
    assert r0.version() > good
