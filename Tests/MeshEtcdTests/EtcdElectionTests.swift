import XCTest
import MeshCore
@testable import MeshEtcd

/// Counts an election's callbacks and when they came (monotonic ns).
final class ElectionLog: @unchecked Sendable {
    let elected = Shared<[UInt64]>([])
    let lost = Shared<[UInt64]>([])
    func start(_ e: EtcdElection) {
        e.start(onElected: { [elected] in elected.update { $0.append(Clock.monotonicNanos()) } },
                onLost: { [lost] in lost.update { $0.append(Clock.monotonicNanos()) } })
    }
}

func seconds(since t: UInt64) -> Double { Double(Clock.monotonicNanos() - t) / 1e9 }

/// Leader election on one real etcd: one leader at a time, a frozen leader (as under SIGSTOP)
/// steps down by the clock and its fence fails, resign hands over at once.
final class EtcdElectionTests: XCTestCase {
    func testExactlyOneLeaderAndResignHandsOver() throws {
        let cluster = try EtcdCluster(size: 1, test: self)
        let ca = try EtcdClient(endpoints: cluster.endpoints, timeout: 2)
        let cb = try EtcdClient(endpoints: cluster.endpoints, timeout: 2)
        let a = EtcdElection(client: ca, key: "/mesh/leader", id: "replica-a", ttl: 2)
        let b = EtcdElection(client: cb, key: "/mesh/leader", id: "replica-b", ttl: 2)
        addTeardownBlock { a.resign(); b.resign() }
        let la = ElectionLog(), lb = ElectionLog()
        XCTAssertFalse(a.isLeader)
        XCTAssertNil(a.fence)
        la.start(a)
        lb.start(b)
        XCTAssertTrue(eventually(3) { a.isLeader || b.isLeader })
        // For three TTLs (so several keepalive rounds), exactly one leads, and it is the one the key names.
        let until = Clock.monotonicNanos() + 6_000_000_000
        var samples = 0
        while Clock.monotonicNanos() < until {
            let leaders = [a, b].filter { $0.isLeader }
            XCTAssertEqual(leaders.count, 1)
            samples += 1
            usleep(50_000)
        }
        XCTAssertGreaterThan(samples, 50)
        let (leader, follower, leaderLog, followerLog) = a.isLeader ? (a, b, la, lb) : (b, a, lb, la)
        XCTAssertEqual(try follower.leader(), leader.id)
        XCTAssertEqual(leaderLog.elected.value.count, 1)
        XCTAssertEqual(leaderLog.lost.value.count, 0)
        XCTAssertEqual(followerLog.elected.value.count, 0)
        XCTAssertNil(follower.fence)
        guard case .createRevision(let k, let rev) = leader.fence else { return XCTFail("leader without a fence") }
        XCTAssertEqual(k, "/mesh/leader")
        XCTAssertEqual(try ca.get("/mesh/leader").kv?.createRevision, rev)
        XCTAssertEqual(try ca.get("/mesh/leader").kv?.lease, leader.leaseID)
        XCTAssertTrue(try ca.txn(compare: [leader.fence!], success: [.put("/mesh/singleton", bytes("by leader"))]).succeeded)
        // Resign: the lease is revoked, the follower (watching the key) takes over well within a TTL.
        let t0 = Clock.monotonicNanos()
        leader.resign()
        XCTAssertFalse(leader.isLeader)
        XCTAssertNil(leader.fence)
        XCTAssertTrue(eventually(1.5) { follower.isLeader }, "not elected \(seconds(since: t0)) s after resign")
        XCTAssertTrue(eventually(1) { leaderLog.lost.value.count == 1 })
        XCTAssertEqual(try leader.leader(), follower.id)
        XCTAssertEqual(followerLog.elected.value.count, 1)
        // The old leader's fence no longer holds.
        XCTAssertFalse(try ca.txn(compare: [.createRevision("/mesh/leader", rev)], success: [.put("/mesh/singleton", bytes("stale"))]).succeeded)
        XCTAssertEqual(try ca.get("/mesh/singleton").kv?.valueText, "by leader")
    }

    func testFrozenLeaderStepsDownByTheClockAndItsFenceFails() throws {
        let cluster = try EtcdCluster(size: 1, test: self)
        let ca = try EtcdClient(endpoints: cluster.endpoints, timeout: 2)
        let cb = try EtcdClient(endpoints: cluster.endpoints, timeout: 2)
        let ttl = 2
        let a = EtcdElection(client: ca, key: "/mesh/leader", id: "replica-a", ttl: ttl)
        let b = EtcdElection(client: cb, key: "/mesh/leader", id: "replica-b", ttl: ttl)
        addTeardownBlock { a.resign(); b.resign() }
        let la = ElectionLog(), lb = ElectionLog()
        la.start(a)
        XCTAssertTrue(eventually(3) { a.isLeader })
        lb.start(b)
        usleep(1_200_000) // a few keepalive rounds; b follows
        XCTAssertTrue(a.isLeader)
        XCTAssertFalse(b.isLeader)
        let staleFence = try XCTUnwrap(a.fence)
        // Freeze a's thread past its TTL, as SIGSTOP would: no keepalive goes out.
        let frozenFor = Double(ttl) + 2
        let t0 = Clock.monotonicNanos()
        a.freezeForTesting(seconds: frozenFor)
        usleep(100_000)
        let sentBefore = a.keepalivesSentForTesting
        // isLeader turns false by the clock alone, within the TTL.
        XCTAssertTrue(eventually(Double(ttl) + 0.1, step: 0.01) { !a.isLeader }, "a still leads \(seconds(since: t0)) s into the freeze")
        let stepDown = seconds(since: t0)
        XCTAssertLessThanOrEqual(stepDown, Double(ttl) + 0.1)
        XCTAssertGreaterThan(stepDown, 0.5, "a lost its leadership before its lease could have expired")
        XCTAssertNil(a.fence)
        // etcd expires the lease; b, watching the key, is elected within TTL + 1 s of the freeze.
        XCTAssertTrue(eventually(Double(ttl) + 1 - seconds(since: t0), step: 0.01) { b.isLeader }, "b not elected \(seconds(since: t0)) s after the freeze")
        XCTAssertLessThanOrEqual(seconds(since: t0), Double(ttl) + 1)
        XCTAssertFalse(a.isLeader)
        // The frozen leader's fenced write fails in etcd.
        XCTAssertFalse(try ca.txn(compare: [staleFence], success: [.put("/mesh/singleton", bytes("from the old leader"))]).succeeded)
        XCTAssertNil(try ca.get("/mesh/singleton").kv)
        // On waking, a steps down (onLost) without sending a keepalive first, and stays a follower.
        XCTAssertTrue(eventually(frozenFor + 1 - seconds(since: t0)) { la.lost.value.count == 1 })
        XCTAssertGreaterThanOrEqual(Double(la.lost.value[0] - t0) / 1e9, frozenFor - 0.05, "onLost came from the thread before it woke")
        XCTAssertEqual(a.keepalivesSentForTesting, sentBefore, "a sent a keepalive after its lease could have expired")
        usleep(500_000)
        XCTAssertFalse(a.isLeader)
        XCTAssertTrue(b.isLeader)
        XCTAssertEqual(la.elected.value.count, 1)
        XCTAssertEqual(lb.elected.value.count, 1)
        XCTAssertEqual(try a.leader(), "replica-b")
    }
}
