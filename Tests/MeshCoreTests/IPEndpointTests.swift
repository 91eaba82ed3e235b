import XCTest
@testable import MeshCore

/// The capture table's key: both families in one space, round trips back to a connectable address.
final class IPEndpointTests: XCTestCase {
    func testIPv4IsMappedAndRoundTrips() throws {
        let a = try XCTUnwrap(IPEndpoint(SocketAddress("240.240.1.2:9080")!))
        XCTAssertEqual(a, IPEndpoint(ipv4: 0xF0F0_0102, port: 9080))
        XCTAssertTrue(a.isIPv4)
        XCTAssertFalse(a.isUnspecified)
        XCTAssertEqual(a.socketAddress.text, "240.240.1.2:9080")
        XCTAssertNotEqual(a, a.with(port: 9081))
        XCTAssertTrue(IPEndpoint(SocketAddress("0.0.0.0:1")!)!.isUnspecified)
    }

    func testIPv6RoundTripsAndDiffersFromIPv4() throws {
        let a = try XCTUnwrap(IPEndpoint(SocketAddress("[2001:2::f0f0:102]:9080")!))
        XCTAssertFalse(a.isIPv4)
        XCTAssertEqual(a.high, 0x2001_0002_0000_0000)
        XCTAssertEqual(a.low, 0x0000_0000_f0f0_0102)
        XCTAssertEqual(a.socketAddress.text, "[2001:2::f0f0:102]:9080")
        XCTAssertNotEqual(a, IPEndpoint(ipv4: 0xF0F0_0102, port: 9080))
        XCTAssertTrue(IPEndpoint(SocketAddress("[::]:1")!)!.isUnspecified)
        // An IPv4-mapped IPv6 address is the IPv4 endpoint.
        XCTAssertEqual(IPEndpoint(SocketAddress("[::ffff:10.0.0.1]:80")!), IPEndpoint(SocketAddress("10.0.0.1:80")!))
    }
}
