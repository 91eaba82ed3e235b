import XCTest
import MeshConfig
import MeshHTTP
@testable import MeshProxy

/// The ring hash and Maglev tables, the key readers and the locality priorities (pure, no sockets).
final class ConsistentHashTableTests: XCTestCase {
    func addresses(_ n: Int) -> [String] { (0..<n).map { "10.0.\($0 / 200).\($0 % 200 + 1):9080" } }

    /// 100,000 keys, hashed as requests' keys are.
    let keys: [UInt64] = (0..<100_000).map { LBHash.string("user-\($0)") }

    func shares(_ t: ConsistentHashTable, _ n: Int) -> [Double] {
        var c = [Int](repeating: 0, count: n)
        for k in keys { c[t.owner(for: k)] += 1 }
        return c.map { Double($0) / Double(keys.count) }
    }

    func testRingSpreadsKeysEvenly() {
        for n in [2, 3, 5, 8] {
            let s = shares(HashRing.build(keys: addresses(n), minimumSize: 1024), n)
            let fair = 1.0 / Double(n)
            // 1024 points per endpoint keep each share within a fifth of the fair one.
            for x in s { XCTAssertEqual(x, fair, accuracy: fair * 0.2, "ring of \(n): \(s)") }
        }
    }

    func testMaglevSpreadsKeysEvenly() {
        for n in [2, 3, 5, 8] {
            let t = Maglev.build(keys: addresses(n), tableSize: 65537)
            XCTAssertEqual(t.count, 65537)
            var entries = [Int](repeating: 0, count: n)
            for o in t.owners { entries[Int(o)] += 1 }
            // Maglev's population gives every endpoint M/N entries, give or take one.
            XCTAssertLessThanOrEqual(entries.max()! - entries.min()!, 1, "\(entries)")
            for x in shares(t, n) { XCTAssertEqual(x, 1.0 / Double(n), accuracy: 0.02) }
        }
    }

    /// Adding an endpoint to N moves about 1/(N+1) of the keys; on the ring every moved key
    /// moves to the new endpoint (positions of the old ones are unchanged: the new one is last).
    func testAddingAnEndpointMovesAboutOneNth() {
        for kind in ["ring", "maglev"] {
            let build = { (a: [String]) in kind == "ring" ? HashRing.build(keys: a, minimumSize: 1024) : Maglev.build(keys: a, tableSize: 65537) }
            for n in [2, 3, 4, 7] {
                let before = build(addresses(n)), after = build(addresses(n + 1))
                var moved = 0, movedElsewhere = 0
                for k in keys {
                    let a = before.owner(for: k), b = after.owner(for: k)
                    if a != b { moved += 1; if b != n { movedElsewhere += 1 } }
                }
                let f = Double(moved) / Double(keys.count), want = 1 / Double(n + 1)
                XCTAssertEqual(f, want, accuracy: want * 0.25, "\(kind) \(n) -> \(n + 1) moved \(f)")
                if kind == "ring" { XCTAssertEqual(movedElsewhere, 0) } else { XCTAssertLessThan(Double(movedElsewhere) / Double(keys.count), 0.03) }
            }
        }
    }

    func testTablesAndHashesAreTheSameInEveryProcess() {
        // Fixed values: another process (another sidecar) computes exactly these.
        XCTAssertEqual(LBHash.string("user-1"), 0x41a2_fca5_c684_01c5)
        XCTAssertEqual(LBHash.string(""), LBHash.finish(LBHash.seed))
        let a = HashRing.build(keys: addresses(3), minimumSize: 1024), b = HashRing.build(keys: addresses(3), minimumSize: 1024)
        XCTAssertEqual(a.points, b.points)
        XCTAssertEqual(a.owners, b.owners)
        XCTAssertEqual(a.count, 3072)  // 1024 points each
        XCTAssertEqual(Maglev.build(keys: addresses(3), tableSize: 251).owners, Maglev.build(keys: addresses(3), tableSize: 251).owners)
        // The order endpoints are listed in does not change which address owns a key.
        let r = HashRing.build(keys: addresses(3).reversed(), minimumSize: 1024)
        for k in keys.prefix(1000) { XCTAssertEqual(2 - r.owner(for: k), a.owner(for: k)) }
    }

    func testRingSlotWrapsAround() {
        let t = HashRing.build(keys: addresses(2), minimumSize: 16)
        XCTAssertEqual(t.slot(for: t.points.last! &+ 1), 0)
        XCTAssertEqual(t.slot(for: 0), 0)
        XCTAssertEqual(t.slot(for: t.points[3]), 3)
        XCTAssertEqual(t.slot(for: t.points[3] &+ 1), 4)
    }

    func testCookieAndQueryKeysAreReadInPlace() {
        let h = MessageHead()
        h.addField(Array("cookie".utf8), Array("a=1; user=\"abc\"; b=2".utf8))
        func cookie(_ n: String) -> UInt64? { Array(n.utf8).withUnsafeBufferPointer { Exchange.cookieHash(h, $0.baseAddress!, $0.count) } }
        XCTAssertEqual(cookie("user"), LBHash.string("abc"))
        XCTAssertEqual(cookie("a"), LBHash.string("1"))
        XCTAssertNil(cookie("us"))
        XCTAssertNil(cookie("other"))
        // HTTP/2 may send the cookies in several fields.
        h.addField(Array("cookie".utf8), Array("session=xyz".utf8))
        XCTAssertEqual(cookie("session"), LBHash.string("xyz"))
        // A generated cookie hashes as its hex digits will when they come back.
        XCTAssertEqual(LBHash.finish(Exchange.hexHash(0x0123_4567_89ab_cdef)), LBHash.string("0123456789abcdef"))

        func query(_ path: String, _ n: String) -> UInt64? {
            let p = Array(path.utf8), name = Array(n.utf8)
            return p.withUnsafeBufferPointer { pb in name.withUnsafeBufferPointer { Exchange.queryHash(pb.baseAddress!, pb.count, $0.baseAddress!, $0.count) } }
        }
        XCTAssertEqual(query("/a?x=1&user=bob&y", "user"), LBHash.string("bob"))
        XCTAssertEqual(query("/a?y", "y"), LBHash.string(""))
        XCTAssertNil(query("/a?username=bob", "user"))
        XCTAssertNil(query("/a/user=bob", "user"))
        XCTAssertNil(query("/a?x=1#user=bob", "user"))
    }

    func testLocalityPriorities() {
        let own = [("topology.kubernetes.io/region", "us"), ("topology.kubernetes.io/zone", "us-a"), ("topology.istio.io/subzone", "r1")]
        func ep(_ r: String, _ z: String, _ s: String = "") -> [(String, String)] {
            [("topology.kubernetes.io/region", r), ("topology.kubernetes.io/zone", z), ("topology.istio.io/subzone", s)]
        }
        var l = IstioTraffic.LocalityLbSetting()
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("us", "us-a", "r1"), own: own, setting: l), 0)
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("us", "us-a", "r2"), own: own, setting: l), 1)
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("us", "us-b"), own: own, setting: l), 2)
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("eu", "eu-a"), own: own, setting: l), 4)
        l.failover = [(from: "us", to: "eu")]
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("eu", "eu-a"), own: own, setting: l), 3)
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("ap", "ap-a"), own: own, setting: l), 4)
        // failover applies from the caller's own region only.
        l.failover = [(from: "ap", to: "eu")]
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("eu", "eu-a"), own: own, setting: l), 4)
        // distribute: the caller's `from`; each `to` claims unclaimed localities, split by count.
        var d = IstioTraffic.LocalityLbSetting()
        d.distribute = [(from: "eu", to: [(locality: "eu", weight: 100)]),
                        (from: "us/*", to: [(locality: "us/us-a", weight: 60), (locality: "us", weight: 30), (locality: "*", weight: 10)])]
        let eps = [ep("us", "us-a", "r1"), ep("us", "us-b"), ep("us", "us-a", "r2"), ep("us", "us-c"), ep("us", "us-c"), ep("eu", "eu-a")]
        let dist = LocalityPriority.distribution(endpoints: eps, own: own, setting: d)!
        // us-a/r1 and us-a/r2: 60 % split 1:1; us-b 30 % x 1/3, us-c 30 % x 2/3; eu 10 %.
        XCTAssertEqual(dist.levelOf, [0, 2, 1, 3, 3, 4])
        XCTAssertEqual(dist.weights, [300_000, 300_000, 100_000, 200_000, 100_000])
        d.distribute = [(from: "us/us-a", to: [(locality: "us/us-a", weight: 100)])]
        XCTAssertEqual(LocalityPriority.distribution(endpoints: eps, own: own, setting: d)!.levelOf, [0, -1, 1, -1, -1, -1])
        d.distribute = [(from: "ap", to: [(locality: "ap", weight: 100)])]
        XCTAssertNil(LocalityPriority.distribution(endpoints: eps, own: own, setting: d))
        var fp = IstioTraffic.LocalityLbSetting()
        fp.failoverPriority = ["topology.kubernetes.io/region", "topology.kubernetes.io/zone"]
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("us", "us-a"), own: own, setting: fp), 0)
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("us", "us-b"), own: own, setting: fp), 1)
        XCTAssertEqual(LocalityPriority.of(endpoint: ep("eu", "us-a"), own: own, setting: fp), 2)
    }
}
