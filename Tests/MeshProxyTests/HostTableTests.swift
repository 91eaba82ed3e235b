import XCTest
import MeshCore
@testable import MeshProxy

/// HostTable: case-insensitive host lookup over raw bytes, and the host/port split used on the
/// request path (Downstream routes on `hostLength` bytes of the Host value or the authority).
final class HostTableTests: XCTestCase {

    private func lookup(_ t: HostTable, _ s: String) -> Int {
        let b = Array(s.utf8)
        return b.withUnsafeBufferPointer { t.lookup($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
    }

    private func hostLength(_ s: String) -> Int {
        let b = Array(s.utf8)
        return b.withUnsafeBufferPointer { HostTable.hostLength($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
    }

    /// What Downstream does: split off the port, then look up the host part.
    private func route(_ t: HostTable, _ hostHeader: String) -> Int {
        let b = Array(hostHeader.utf8)
        return b.withUnsafeBufferPointer { p -> Int in
            let base = p.baseAddress ?? UnsafePointer(bitPattern: 1)!
            return t.lookup(base, HostTable.hostLength(base, p.count))
        }
    }

    static let mesh: [(String, Int)] = [("reviews", 0), ("reviews.default", 0), ("reviews.default.svc.cluster.local", 0),
                                        ("ratings", 1), ("Details.Prod", 2), ("[::1]", 3), ("10.0.0.7", 4)]

    func testLookupIsCaseInsensitive() {
        let t = HostTable(HostTableTests.mesh)
        XCTAssertEqual(lookup(t, "reviews"), 0)
        XCTAssertEqual(lookup(t, "REVIEWS"), 0)
        XCTAssertEqual(lookup(t, "Reviews.Default"), 0)
        XCTAssertEqual(lookup(t, "reviews.default.SVC.cluster.LOCAL"), 0)
        XCTAssertEqual(lookup(t, "ratings"), 1)
        XCTAssertEqual(lookup(t, "details.prod"), 2, "keys are lowercased when the table is built")
        XCTAssertEqual(lookup(t, "DETAILS.PROD"), 2)
        XCTAssertEqual(lookup(t, "[::1]"), 3)
        XCTAssertEqual(lookup(t, "10.0.0.7"), 4)
    }

    func testMisses() {
        let t = HostTable(HostTableTests.mesh)
        for miss in ["review", "reviewsx", "reviews.", ".reviews", "reviews.default.svc", "ratings:9080", "details",
                     "10.0.0.70", "[::2]", " reviews", "reviews ", "rAtingz"] {
            XCTAssertEqual(lookup(t, miss), -1, "'\(miss)'")
        }
        XCTAssertEqual(lookup(t, ""), -1, "empty host")
        let empty = HostTable([])
        XCTAssertEqual(lookup(empty, "reviews"), -1)
        XCTAssertEqual(lookup(empty, ""), -1)
    }

    func testFirstEntryWinsForDuplicates() {
        let t = HostTable([("a", 1), ("A", 2), ("a", 3), ("b", 4)])
        XCTAssertEqual(lookup(t, "a"), 1)
        XCTAssertEqual(lookup(t, "A"), 1)
        XCTAssertEqual(lookup(t, "b"), 4)
    }

    func testManyEntries() {
        var entries: [(String, Int)] = []
        for i in 0..<3000 { entries.append(("svc-\(i).ns-\(i % 7).svc.cluster.local", i)) }
        // Short names that collide in length and prefix.
        for i in 0..<500 { entries.append(("s\(i)", 10_000 + i)) }
        let t = HostTable(entries)
        for (k, v) in entries {
            XCTAssertEqual(lookup(t, k), v, k)
            XCTAssertEqual(lookup(t, k.uppercased()), v, k)
        }
        for i in 0..<3000 { XCTAssertEqual(lookup(t, "svc-\(i).ns-\((i + 1) % 7).svc.cluster.local"), -1) }
        for i in 500..<1500 { XCTAssertEqual(lookup(t, "s\(i)"), -1) }
    }

    func testTableSizesAroundPowersOfTwo() {
        // Entry counts around the growth points of the slot array (16, 32, ...): every key found,
        // and a miss always terminates (there is always an empty slot).
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65] {
            let t = HostTable((0..<n).map { ("h\($0)", $0) })
            for i in 0..<n { XCTAssertEqual(lookup(t, "h\(i)"), i, "n=\(n)") }
            XCTAssertEqual(lookup(t, "missing"), -1, "n=\(n)")
        }
    }

    func testHostLength() {
        XCTAssertEqual(hostLength("a:80"), 1)
        XCTAssertEqual(hostLength("a"), 1)
        XCTAssertEqual(hostLength("[::1]:80"), 5)
        XCTAssertEqual(hostLength("a:b"), 3, "a non-numeric port is part of the host (and will not match)")
        XCTAssertEqual(hostLength("reviews:9080"), 7)
        XCTAssertEqual(hostLength("reviews.default.svc.cluster.local:9080"), 33)
        XCTAssertEqual(hostLength("10.0.0.7:9080"), 8)
        XCTAssertEqual(hostLength("10.0.0.7"), 8)
        XCTAssertEqual(hostLength("[::1]"), 5)
        XCTAssertEqual(hostLength("[::1"), 4, "unclosed bracket: the whole value")
        XCTAssertEqual(hostLength("a:"), 1, "empty port")
        XCTAssertEqual(hostLength(":80"), 0)
        XCTAssertEqual(hostLength("8080"), 4)
        XCTAssertEqual(hostLength(""), 0)
    }

    func testRoutingHostHeaders() {
        let t = HostTable(HostTableTests.mesh)
        XCTAssertEqual(route(t, "reviews:9080"), 0)
        XCTAssertEqual(route(t, "Reviews.Default:80"), 0)
        XCTAssertEqual(route(t, "ratings"), 1)
        XCTAssertEqual(route(t, "[::1]:15001"), 3)
        XCTAssertEqual(route(t, "10.0.0.7:9080"), 4)
        XCTAssertEqual(route(t, "reviews:abc"), -1)
        XCTAssertEqual(route(t, ":9080"), -1)
        XCTAssertEqual(route(t, ""), -1)
    }
}
