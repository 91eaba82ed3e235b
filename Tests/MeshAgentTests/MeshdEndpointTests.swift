import XCTest
import MeshAgent
import MeshCore

/// `--meshd HOST:PORT`: address literals and DNS names told apart, bad names refused, names
/// resolved in order with duplicates dropped.
final class MeshdEndpointTests: XCTestCase {
    func testBadHostNamesAreRefused() {
        for bad in ["", "-a", "a-", "a..b", ".a", "a_b", "a b", "ä.example", "a.-b.c", "a.b-.c", "1.2.3", "999.1.1.1", "a.123",
                    String(repeating: "a", count: 64), String(repeating: "abcd.", count: 51) + "com", "a.b/c", "a:b", "*.svc"] {
            XCTAssertFalse(MeshdEndpoint.isHostName(bad), bad)
        }
        for good in ["meshd", "meshd.mesh-system.svc", "meshd.mesh-system.svc.cluster.local.", "MESHD.Example.com", "a1-b2.c3",
                     String(repeating: "a", count: 63), String(repeating: "abc.", count: 62) + "com"] {
            XCTAssertTrue(MeshdEndpoint.isHostName(good), good)
        }
        XCTAssertEqual((String(repeating: "abc.", count: 62) + "com").utf8.count, 251)
    }

    func testEndpointsParse() throws {
        func refused(_ s: String, _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try MeshdEndpoint.parse(s), line: line) { e in
                XCTAssertTrue("\(e)".contains(fragment), "\(e)", line: line)
            }
        }
        refused("meshd", "expected HOST:PORT")
        refused("meshd:", "from 1 to 65535")
        refused("meshd:0", "from 1 to 65535")
        refused("meshd:65536", "from 1 to 65535")
        refused("meshd:+80", "from 1 to 65535")
        refused("meshd:0000080", "from 1 to 65535")
        refused(":15012", "no host")
        refused("::1:15012", "in brackets")
        refused("[meshd]:15012", "in brackets")
        refused("[::1:15012", "in brackets")
        refused("meshd_x:15012", "neither an IP address nor a DNS name")
        refused("300.1.1.1:15012", "neither an IP address nor a DNS name")
        XCTAssertEqual(try MeshdEndpoint.parse("10.0.0.2:15012"), .address(SocketAddress("10.0.0.2:15012")!))
        XCTAssertEqual(try MeshdEndpoint.parse("[fd00::2]:15012"), .address(SocketAddress("[fd00::2]:15012")!))
        XCTAssertEqual(try MeshdEndpoint.parse("localhost:15012"), .name("localhost", port: 15012))
        XCTAssertEqual(try MeshdEndpoint.parse("meshd.mesh-system.svc:15012"), .name("meshd.mesh-system.svc", port: 15012))
    }

    func testNamesResolveInOrderWithoutDuplicates() {
        let r = MeshdResolver.resolve([.address(SocketAddress("10.9.9.9:7")!), .name("localhost", port: 7),
                                       .address(SocketAddress("127.0.0.1:7")!), .name("name-that-is-not-there.invalid", port: 7)])
        XCTAssertEqual(r.addresses.first?.text, "10.9.9.9:7")
        XCTAssertEqual(r.addresses.dropFirst().first?.text, "127.0.0.1:7", "\(r.addresses)")
        XCTAssertEqual(r.addresses.filter { $0.text == "127.0.0.1:7" }.count, 1)
        XCTAssertTrue(r.addresses.allSatisfy { $0.text == "10.9.9.9:7" || $0.text == "127.0.0.1:7" || $0.text == "[::1]:7" }, "\(r.addresses)")
        XCTAssertEqual(r.failures.count, 1)
        XCTAssertTrue(r.failures[0].hasPrefix("name-that-is-not-there.invalid: "), r.failures[0])
    }
}
