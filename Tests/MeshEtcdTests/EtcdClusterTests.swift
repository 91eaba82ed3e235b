import XCTest
import MeshCore
@testable import MeshEtcd

/// A real 3-member etcd cluster on 127.0.0.1: a member SIGKILLed under a watch and under a
/// leader's keepalive.
final class EtcdClusterTests: XCTestCase {
    /// The watch is connected to member 0 (a new client starts at its first endpoint); member 0
    /// is SIGKILLed while writes go on through the others. The watch resumes on another member,
    /// and what it delivered equals etcd's own history read afterwards by a fresh watch: nothing
    /// lost, nothing twice, in revision order.
    func testWatchResumesOnAnotherMemberWithoutLossOrRepeat() throws {
        let cluster = try EtcdCluster(size: 3, test: self)
        let watcher = try EtcdClient(endpoints: cluster.endpoints, timeout: 5)
        let writer = try EtcdClient(endpoints: Array(cluster.endpoints[1...]), timeout: 5)
        let start = try writer.put("/mesh/start", bytes("")) + 1
        let seen = Shared<[EtcdEvent]>([])
        let total = 120
        let lastWritten = Shared<Int64>(Int64.max)
        let end = Shared<String>("")
        let th = TestThread {
            do {
                let r = try watcher.watch(prefix: "/mesh/w/", fromRevision: start) { events, rev in
                    seen.update { $0.append(contentsOf: events) }
                    return rev < lastWritten.value
                }
                end.update { $0 = "\(r)" }
            } catch {
                end.update { $0 = "threw \(error)" }
            }
        }
        XCTAssertTrue(eventually(5) { watcher.watchEndpoints == [cluster.endpoints[0]] }, "\(watcher.watchEndpoints)")
        var written = 0
        var killedAt = -1
        var last: Int64 = 0
        for i in 0..<total {
            // A key per write, created once (a retried create fails its compare instead of writing twice).
            let key = "/mesh/w/\(i)"
            if let t = try? writer.txn(compare: [.createRevision(key, 0)], success: [.put(key, bytes("v\(i)"))]) {
                if t.succeeded { written += 1 }
                last = max(last, t.revision)
            }
            if i == 40 {
                XCTAssertTrue(eventually(3) { seen.value.count >= 30 }, "the watch saw \(seen.value.count) events before the kill")
                cluster.kill(0)
                killedAt = seen.value.count
                XCTAssertTrue(eventually(5) { !watcher.watchEndpoints.isEmpty && !watcher.watchEndpoints.contains(cluster.endpoints[0]) },
                              "the watch did not move off the killed member: \(watcher.watchEndpoints)")
            }
        }
        XCTAssertGreaterThanOrEqual(written, total - 2, "the writer lost too many writes to the kill")
        // Everything up to the last revision written must arrive.
        last = try writer.get("/mesh/none").revision
        lastWritten.update { $0 = last }
        _ = try writer.put("/mesh/w/zz-end", bytes("end"))
        XCTAssertTrue(th.join(seconds: 15), "the watch did not deliver everything (saw \(seen.value.count), ended: \(end.value))")
        XCTAssertEqual(end.value, "stopped")
        XCTAssertLessThan(killedAt, seen.value.count)
        // etcd's history from the start revision, read by a fresh watch on a live member.
        let truth = Shared<[EtcdEvent]>([])
        let check = try EtcdClient(endpoints: Array(cluster.endpoints[1...]), timeout: 5)
        XCTAssertEqual(try check.watch(prefix: "/mesh/w/", fromRevision: start) { events, _ in
            truth.update { $0.append(contentsOf: events) }
            return !events.contains { if case .put(let kv) = $0 { return kv.key == "/mesh/w/zz-end" }; return false }
        }, .stopped)
        var got = seen.value
        while let l = got.last, case .put(let kv) = l, kv.key == "/mesh/w/zz-end" { got.removeLast() }
        var want = truth.value
        while let l = want.last, case .put(let kv) = l, kv.key == "/mesh/w/zz-end" { want.removeLast() }
        XCTAssertEqual(got.count, want.count)
        XCTAssertEqual(got, want, "the watch's events differ from etcd's history")
        let revs = got.map { $0.modRevision }
        XCTAssertEqual(revs, revs.sorted())
        XCTAssertEqual(Set(revs).count, revs.count, "an event was delivered twice")
        XCTAssertGreaterThanOrEqual(got.count, written, "every acknowledged write was seen")
        let keys = got.compactMap { e -> String? in if case .put(let kv) = e { return kv.key }; return nil }
        XCTAssertEqual(Set(keys).count, keys.count, "a key created twice")
    }

    /// A leader whose only endpoint dies: its keepalive fails, it steps down at once (well
    /// before its TTL), and the other candidate (on the surviving members) is elected within
    /// TTL + 1 s of the kill; the old leader's fence fails.
    func testLeaderWhoseEndpointDiesStepsDownAndAnotherIsElected() throws {
        let cluster = try EtcdCluster(size: 3, test: self)
        // The doomed member must not be raft's leader (a raft election would extend every lease).
        let raftLeader = try cluster.raftLeaderIndex() ?? 0
        let doomed = (raftLeader + 1) % 3
        let others = (0..<3).filter { $0 != doomed }.map { cluster.endpoints[$0] }
        let ttl = 2
        let ca = try EtcdClient(endpoints: [cluster.endpoints[doomed]], timeout: 2)
        let cb = try EtcdClient(endpoints: others, timeout: 2)
        let a = EtcdElection(client: ca, key: "/mesh/leader", id: "replica-a", ttl: ttl)
        let b = EtcdElection(client: cb, key: "/mesh/leader", id: "replica-b", ttl: ttl)
        addTeardownBlock { a.resign(); b.resign() }
        let la = ElectionLog(), lb = ElectionLog()
        la.start(a)
        XCTAssertTrue(eventually(3) { a.isLeader })
        lb.start(b)
        usleep(1_000_000)
        XCTAssertTrue(a.isLeader)
        XCTAssertFalse(b.isLeader)
        let fence = try XCTUnwrap(a.fence)
        let t0 = Clock.monotonicNanos()
        cluster.kill(doomed)
        // The next keepalive (at most ttl/3 away) is refused: a steps down then, not at expiry.
        XCTAssertTrue(eventually(Double(ttl) / 3 + 0.5, step: 0.01) { !a.isLeader && la.lost.value.count == 1 },
                      "a still leads \(seconds(since: t0)) s after its endpoint died")
        XCTAssertLessThan(seconds(since: t0), Double(ttl) / 3 + 0.5)
        XCTAssertTrue(eventually(Double(ttl) + 1 - seconds(since: t0), step: 0.01) { b.isLeader }, "b not elected \(seconds(since: t0)) s after the kill")
        XCTAssertLessThanOrEqual(seconds(since: t0), Double(ttl) + 1)
        XCTAssertFalse(a.isLeader)
        XCTAssertFalse(try cb.txn(compare: [fence], success: [.put("/mesh/singleton", bytes("stale"))]).succeeded)
        XCTAssertEqual(try b.leader(), "replica-b")
    }

    /// A member that hangs (SIGSTOP) keeps its connections open and its kernel answers TCP
    /// keepalives: the watch on it notices the silence, finds the member does not answer a
    /// status probe, and resumes on another member, delivering a write made meanwhile.
    func testWatchOnAHungMemberMovesOn() throws {
        let cluster = try EtcdCluster(size: 3, test: self)
        defer { cluster.signal(0, SIGCONT) }
        let watcher = try EtcdClient(endpoints: cluster.endpoints, timeout: 20)
        let writer = try EtcdClient(endpoints: Array(cluster.endpoints[1...]), timeout: 5)
        let start = try writer.put("/mesh/start", bytes("")) + 1
        let seen = Shared<[String]>([])
        let th = TestThread {
            _ = try? watcher.watch(prefix: "/mesh/h/", fromRevision: start) { events, _ in
                for case .put(let kv) in events { seen.update { $0.append(kv.key) } }
                return !seen.value.contains("/mesh/h/after")
            }
        }
        XCTAssertTrue(eventually(5) { watcher.watchEndpoints == [cluster.endpoints[0]] }, "\(watcher.watchEndpoints)")
        _ = try writer.put("/mesh/h/before", bytes("1"))
        XCTAssertTrue(eventually(3) { seen.value == ["/mesh/h/before"] }, "\(seen.value)")
        cluster.signal(0, SIGSTOP)
        let t0 = Clock.monotonicNanos()
        var wrote = false
        for _ in 0..<40 where !wrote {   // the others may be electing a new raft leader
            wrote = (try? writer.put("/mesh/h/after", bytes("2"))) != nil
            if !wrote { usleep(250_000) }
        }
        XCTAssertTrue(wrote)
        XCTAssertTrue(th.join(seconds: 15), "the watch stayed on the hung member: saw \(seen.value), on \(watcher.watchEndpoints)")
        XCTAssertEqual(seen.value, ["/mesh/h/before", "/mesh/h/after"])
        XCTAssertLessThan(Double(Clock.monotonicNanos() - t0) / 1e9, 12)
    }
}
