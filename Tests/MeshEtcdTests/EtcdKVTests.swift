import XCTest
import MeshCore
@testable import MeshEtcd
#if canImport(Glibc)
import Glibc
#endif

/// range/put/get/delete/txn/leases/watch against one real etcd (a fresh member per test).
final class EtcdKVTests: XCTestCase {
    private func single() throws -> (EtcdCluster, EtcdClient) {
        let cluster = try EtcdCluster(size: 1, test: self)
        return (cluster, try EtcdClient(endpoints: cluster.endpoints, timeout: 3))
    }

    func testPutGetRangeDelete() throws {
        let (_, c) = try single()
        let r1 = try c.put("/t/b", bytes("2"))
        let r2 = try c.put("/t/a", bytes("1"))
        let r3 = try c.put("/t/c", [0, 0xFF, 10])
        _ = try c.put("/tx", bytes("outside"))
        _ = try c.put("/t", bytes("the prefix itself, no slash"))
        XCTAssertEqual([r2, r3], [r1 + 1, r1 + 2])
        var (kvs, rev) = try c.range(prefix: "/t/")
        XCTAssertEqual(kvs.map { $0.key }, ["/t/a", "/t/b", "/t/c"])
        XCTAssertEqual(kvs.map { $0.value }, [bytes("1"), bytes("2"), [0, 0xFF, 10]])
        XCTAssertEqual(kvs[0], EtcdKeyValue(key: "/t/a", value: bytes("1"), createRevision: r2, modRevision: r2, version: 1, lease: 0))
        XCTAssertEqual(rev, r3 + 2)
        let r4 = try c.put("/t/a", bytes("one"))
        let (a, rev2) = try c.get("/t/a")
        XCTAssertEqual(a, EtcdKeyValue(key: "/t/a", value: bytes("one"), createRevision: r2, modRevision: r4, version: 2, lease: 0))
        XCTAssertEqual(a?.valueText, "one")
        XCTAssertEqual(rev2, r4)
        let (missing, rev3) = try c.get("/t/zzz")
        XCTAssertNil(missing)
        XCTAssertEqual(rev3, r4)
        let r5 = try c.delete("/t/b")
        XCTAssertEqual(r5, r4 + 1)
        XCTAssertNil(try c.get("/t/b").kv)
        XCTAssertEqual(try c.delete("/t/b"), r5, "deleting an absent key changes nothing")
        (kvs, rev) = try c.range(prefix: "/t/")
        XCTAssertEqual(kvs.map { $0.key }, ["/t/a", "/t/c"])
        XCTAssertEqual(rev, r5)
        // Keys with bytes JSON must escape, and a prefix ending in a multi-byte character.
        _ = try c.put("/u/é\"\\\n", bytes("x"))
        _ = try c.put("/u/éa", bytes("y"))
        XCTAssertEqual(try c.range(prefix: "/u/é").kvs.map { $0.key }, ["/u/é\"\\\n", "/u/éa"])
    }

    func testTxnComparesAndBranches() throws {
        let (_, c) = try single()
        let r1 = try c.put("/x/k", bytes("v1"))
        // mod revision: the right one wins, a stale one fails and runs the failure branch.
        var t = try c.txn(compare: [.modRevision("/x/k", r1)], success: [.put("/x/k", bytes("v2"))], failure: [.get("/x/k")])
        XCTAssertTrue(t.succeeded)
        XCTAssertEqual(t.revision, r1 + 1)
        XCTAssertTrue(t.gets.isEmpty)
        t = try c.txn(compare: [.modRevision("/x/k", r1)], success: [.put("/x/k", bytes("v3"))], failure: [.get("/x/k"), .get("/x/none"), .get("/x/k")])
        XCTAssertFalse(t.succeeded)
        XCTAssertEqual(t.revision, r1 + 1, "a failed compare writes nothing")
        XCTAssertEqual(t.gets.map { $0.valueText }, ["v2", "v2"])
        XCTAssertEqual(t.getResults.map { $0?.valueText }, ["v2", nil, "v2"])
        XCTAssertEqual(try c.get("/x/k").kv?.valueText, "v2")
        // create revision 0: only while the key is absent.
        t = try c.txn(compare: [.createRevision("/x/new", 0)], success: [.put("/x/new", bytes("n")), .get("/x/new")])
        XCTAssertTrue(t.succeeded)
        XCTAssertEqual(t.gets.first?.createRevision, t.revision)
        t = try c.txn(compare: [.createRevision("/x/new", 0)], success: [.put("/x/new", bytes("n2"))])
        XCTAssertFalse(t.succeeded)
        XCTAssertTrue(try c.txn(compare: [.createRevision("/x/new", t.revision)], success: []).succeeded)
        XCTAssertFalse(try c.txn(compare: [.createRevision("/x/new", t.revision - 1)], success: []).succeeded)
        XCTAssertTrue(try c.txn(compare: [.modRevision("/x/absent", 0)], success: []).succeeded)
        // value
        XCTAssertTrue(try c.txn(compare: [.value("/x/k", bytes("v2"))], success: [.delete("/x/new")]).succeeded)
        XCTAssertNil(try c.get("/x/new").kv)
        XCTAssertFalse(try c.txn(compare: [.value("/x/k", bytes("v1"))], success: [.delete("/x/k")]).succeeded)
        // lease
        let lease = try c.leaseGrant(ttl: 30)
        _ = try c.put("/x/leased", bytes("l"), lease: lease.id)
        XCTAssertEqual(try c.get("/x/leased").kv?.lease, lease.id)
        XCTAssertTrue(try c.txn(compare: [.lease("/x/leased", lease.id)], success: []).succeeded)
        XCTAssertFalse(try c.txn(compare: [.lease("/x/leased", lease.id + 1)], success: []).succeeded)
        XCTAssertFalse(try c.txn(compare: [.lease("/x/k", lease.id)], success: []).succeeded)
        // All compares must hold.
        XCTAssertFalse(try c.txn(compare: [.value("/x/k", bytes("v2")), .lease("/x/leased", 1)], success: [.delete("/x/k")]).succeeded)
        XCTAssertNotNil(try c.get("/x/k").kv)
        // A put with a lease inside a txn, and deletePrefix deleting only its prefix.
        _ = try c.put("/y/1", bytes("a"))
        _ = try c.put("/y/2", bytes("b"))
        _ = try c.put("/y2", bytes("c"))
        t = try c.txn(compare: [], success: [.deletePrefix("/y/"), .put("/x/l2", bytes("z"), lease: lease.id)])
        XCTAssertTrue(t.succeeded)
        XCTAssertEqual(try c.range(prefix: "/y").kvs.map { $0.key }, ["/y2"])
        XCTAssertEqual(try c.get("/x/l2").kv?.lease, lease.id)
        XCTAssertThrowsError(try c.txn(compare: [], success: [.deletePrefix("")])) { e in
            XCTAssertTrue("\(e)".contains("empty prefix"))
        }
        XCTAssertEqual(try c.range(prefix: "/y").kvs.count, 1)
        // An etcd refusal is thrown at once, naming the endpoint (a put on a lease that does not exist).
        XCTAssertThrowsError(try c.put("/x/bad", bytes("b"), lease: 12345)) { e in
            let m = (e as! EtcdError).message
            XCTAssertTrue(m.contains(c.endpointNames[0]) && m.contains("lease not found"), m)
        }
    }

    func testLeases() throws {
        let (_, c) = try single()
        let l = try c.leaseGrant(ttl: 5)
        XCTAssertEqual(l.ttl, 5)
        XCTAssertNotEqual(l.id, 0)
        let left = try c.leaseKeepAlive(l.id, timeout: 2)
        XCTAssertTrue((4...5).contains(left), "\(left)")
        _ = try c.put("/l/k", bytes("v"), lease: l.id)
        try c.leaseRevoke(l.id)
        XCTAssertNil(try c.get("/l/k").kv, "revoking deletes the lease's keys")
        XCTAssertEqual(try c.leaseKeepAlive(l.id, timeout: 2), 0, "a revoked lease answers TTL 0")
        XCTAssertThrowsError(try c.leaseRevoke(l.id)) { e in
            XCTAssertEqual((e as! EtcdError).code, 5)
            XCTAssertTrue("\(e)".contains(c.endpointNames[0]))
        }
        XCTAssertThrowsError(try c.leaseGrant(ttl: 0))
        // A short lease expires by itself.
        let short = try c.leaseGrant(ttl: 1)
        XCTAssertGreaterThanOrEqual(short.ttl, 1)
        _ = try c.put("/l/short", bytes("v"), lease: short.id)
        XCTAssertTrue(eventually(Double(short.ttl) + 2) { (try? c.get("/l/short").kv) == .some(nil) })
    }

    func testDeadEndpointsNamedAndSkippedIPv6AndNames() throws {
        let cluster = try EtcdCluster(size: 1, test: self, ipv6: true)
        let port = cluster.members[0].clientPort
        // An IPv6 literal and a name resolved by getaddrinfo reach the same member.
        let v6 = try EtcdClient(endpoints: ["[::1]:\(port)"], timeout: 2)
        let r = try v6.put("/v6/k", bytes("six"))
        let named = try EtcdClient(endpoints: ["localhost:\(port)"], timeout: 2)
        XCTAssertEqual(try named.get("/v6/k").kv?.modRevision, r)

        let dead = "127.0.0.1:\(EtcdCluster.freePorts(1)[0])"
        let onlyDead = try EtcdClient(endpoints: [dead], timeout: 0.5)
        let t0 = Clock.monotonicNanos()
        XCTAssertThrowsError(try onlyDead.get("/a")) { e in
            XCTAssertTrue("\(e)".contains(dead) && "\(e)".contains("refused"), "\(e)")
            XCTAssertEqual((e as! EtcdError).code, 14)
        }
        let took = Double(Clock.monotonicNanos() - t0) / 1e9
        XCTAssertTrue(took >= 0.45 && took < 1.5, "gave up after \(took) s")
        let both = try EtcdClient(endpoints: [dead, cluster.endpoints[0]], timeout: 2)
        _ = try both.put("/d/k", bytes("v"))
        XCTAssertEqual(both.preferredIndex, 1, "the endpoint that worked is tried first next time")
        XCTAssertEqual(try both.get("/d/k").kv?.valueText, "v")
    }

    func testWatchDeliversPutsAndDeletesInOrder() throws {
        let (_, c) = try single()
        let start = try c.put("/w/before", bytes("0"))
        let seen = Shared<[EtcdEvent]>([])
        let revs = Shared<[Int64]>([])
        let end = Shared<EtcdWatchEnd?>(nil)
        let watcher = TestThread {
            let r = try? c.watch(prefix: "/w/", fromRevision: start + 1) { events, rev in
                seen.update { $0.append(contentsOf: events) }
                revs.update { $0.append(rev) }
                return seen.value.count < 6
            }
            end.update { $0 = r }
        }
        let w1 = try c.put("/w/a", bytes("1"))
        _ = try c.put("/wx", bytes("not under the prefix"))
        let w2 = try c.put("/w/b", bytes("2"))
        let w3 = try c.delete("/w/a")
        let t = try c.txn(compare: [], success: [.put("/w/c", bytes("3")), .put("/w/d", bytes("4")), .delete("/w/b")])
        XCTAssertTrue(watcher.join(seconds: 5))
        XCTAssertEqual(end.value, .stopped)
        XCTAssertEqual(seen.value, [
            .put(EtcdKeyValue(key: "/w/a", value: bytes("1"), createRevision: w1, modRevision: w1, version: 1, lease: 0)),
            .put(EtcdKeyValue(key: "/w/b", value: bytes("2"), createRevision: w2, modRevision: w2, version: 1, lease: 0)),
            .delete(key: "/w/a", modRevision: w3),
            .put(EtcdKeyValue(key: "/w/c", value: bytes("3"), createRevision: t.revision, modRevision: t.revision, version: 1, lease: 0)),
            .put(EtcdKeyValue(key: "/w/d", value: bytes("4"), createRevision: t.revision, modRevision: t.revision, version: 1, lease: 0)),
            .delete(key: "/w/b", modRevision: t.revision),
        ])
        XCTAssertEqual(revs.value.last, t.revision)
        XCTAssertEqual(revs.value, revs.value.sorted())
        // A watch from an old revision replays the history from there, the same events.
        let replay = Shared<[EtcdEvent]>([])
        XCTAssertEqual(try c.watch(prefix: "/w/", fromRevision: w2) { events, _ in
            replay.update { $0.append(contentsOf: events) }
            return replay.value.count < 5
        }, .stopped)
        XCTAssertEqual(replay.value, Array(seen.value.dropFirst()))
    }

    func testWatchFromCompactedRevisionAndStop() throws {
        let (_, c) = try single()
        let first = try c.put("/cw/k", bytes("1"))
        _ = try c.put("/cw/k", bytes("2"))
        let third = try c.put("/cw/k", bytes("3"))
        try c.compact(revision: third)
        var called = false
        let end = try c.watch(prefix: "/cw/", fromRevision: first) { _, _ in called = true; return true }
        XCTAssertEqual(end, .compacted(compactRevision: third))
        XCTAssertFalse(called)
        // From the compact revision on, the watch runs; stopWatches ends it from another thread.
        let got = Shared<[Int64]>([])
        let result = Shared<EtcdWatchEnd?>(nil)
        let th = TestThread {
            let r = try? c.watch(prefix: "/cw/", fromRevision: third) { events, _ in
                got.update { $0.append(contentsOf: events.map { $0.modRevision }) }
                return true
            }
            result.update { $0 = r }
        }
        XCTAssertTrue(eventually(3) { got.value == [third] })
        XCTAssertEqual(c.watchEndpoints, c.endpointNames)
        let t0 = Clock.monotonicNanos()
        c.stopWatches()
        XCTAssertTrue(th.join(seconds: 2))
        XCTAssertLessThan(Double(Clock.monotonicNanos() - t0) / 1e9, 0.6)
        XCTAssertEqual(result.value, .stopped)
        XCTAssertTrue(c.watchEndpoints.isEmpty)
        // A watch started after stopWatches runs normally.
        let later = try c.put("/cw/k", bytes("4"))
        XCTAssertEqual(try c.watch(prefix: "/cw/", fromRevision: later) { e, _ in e.isEmpty }, .stopped)
    }
}
