import XCTest
import MeshCore
import MeshConfig
@testable import MeshProxy

/// What a captured connection's original destination leads to: a mesh VIP and port to its
/// service (HTTP virtual host or TCP service), a VIP whose port is unknown on any port, the
/// sidecar's own ports refused (loop), everything else outside the mesh; and the policy.
final class CaptureTableTests: XCTestCase {
    static func config(policy: String = "", capture: Bool = true) -> String {
        """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: t}
        spec:
          workload: {service: t}
          outbound: {port: 15001, capture: \(capture)}
          admin: {port: 15000}
          clusters:
          - {name: reviews.default, tls: DISABLE, port: 9080, addresses: ["240.240.0.7", "2001:2::f0f0:7"], endpoints: ["127.0.0.1:1"]}
          - {name: cache.default, tls: DISABLE, serviceProtocol: TCP, port: 6379, addresses: ["240.240.0.9"], endpoints: ["127.0.0.1:2"]}
          - {name: fresh.default, tls: DISABLE, addresses: ["240.240.0.11"], endpoints: ["127.0.0.1:3"]}
          - {name: novip.default, tls: DISABLE, port: 80, endpoints: ["127.0.0.1:4"]}
          - {name: ext.example.com, tls: DISABLE, serviceProtocol: AUTO, port: 2525, addresses: ["240.240.0.13"], endpoints: ["127.0.0.1:5"]}
          routes:
          - {hosts: [reviews.default], cluster: reviews.default}
          - {hosts: [cache.default], cluster: cache.default}
          - {hosts: [fresh.default], cluster: fresh.default}
          - {hosts: [novip.default], cluster: novip.default}
          - {hosts: [ext.example.com], cluster: ext.example.com}
        \(policy)
        """
    }

    func table(_ yaml: String) throws -> (ProxySnapshot, CaptureTable) {
        let s = try ProxySnapshot(bootstrap: Bootstrap.parse(yaml, file: "t.yaml"), version: "t")
        return (s, try XCTUnwrap(s.capture))
    }

    func ep(_ text: String) -> IPEndpoint { IPEndpoint(SocketAddress(text)!)! }

    func testOutsideTheMeshAndLoopsFirst() throws {
        let (_, t) = try table(Self.config())
        XCTAssertNil(t.lookup(ep("10.0.0.5:9080")))
        XCTAssertNil(t.lookup(ep("240.240.0.8:9080")), "an address no cluster owns")
        XCTAssertNil(t.lookup(ep("240.240.0.7:9081")), "a VIP on a port its service does not have")
        XCTAssertEqual(t.policy, .allowAny)
        // The sidecar's own ports on loopback, unspecified or its own listener addresses: a loop.
        XCTAssertTrue(t.isLoop(ep("127.0.0.1:15001")))
        XCTAssertTrue(t.isLoop(ep("127.0.0.9:15000")))
        XCTAssertTrue(t.isLoop(ep("[::1]:15001")))
        XCTAssertTrue(t.isLoop(ep("0.0.0.0:15001")))
        XCTAssertFalse(t.isLoop(ep("10.0.0.5:15001")), "another host's port 15001 is not this sidecar")
        XCTAssertFalse(t.isLoop(ep("127.0.0.1:8080")))
    }

    func testMeshDestinations() throws {
        let (s, t) = try table(Self.config())
        guard case .http(let v)? = t.lookup(ep("240.240.0.7:9080")) else { return XCTFail("reviews VIP") }
        XCTAssertEqual(s.clusters[s.routes[s.vhosts[v].routes[0]].cluster].name, "reviews.default")
        XCTAssertEqual(t.lookup(ep("[2001:2::f0f0:7]:9080")), .http(vhost: v), "the IPv6 VIP leads to the same service")
        guard case .tcp(let sv)? = t.lookup(ep("240.240.0.9:6379")) else { return XCTFail("cache VIP") }
        XCTAssertEqual(s.clusters[s.tcpRoutes[s.tcpServices[sv][0]].cluster].name, "cache.default")
        // No port known yet: every port of its VIP.
        XCTAssertNotNil(t.lookup(ep("240.240.0.11:1234")))
        // Protocol not declared: both an HTTP virtual host and a TCP service, told apart by bytes.
        guard case .detect(let dv, let dsv)? = t.lookup(ep("240.240.0.13:2525")) else { return XCTFail("ext VIP") }
        XCTAssertEqual(s.clusters[s.routes[s.vhosts[dv].routes[0]].cluster].name, "ext.example.com")
        XCTAssertEqual(s.clusters[s.tcpRoutes[s.tcpServices[dsv][0]].cluster].name, "ext.example.com")
        XCTAssertEqual(t.lookup(ep("240.240.0.13:2525"))?.httpVHost, dv)
        XCTAssertNil(t.lookup(ep("240.240.0.9:6379"))?.httpVHost, "a TCP service has no virtual host")
        XCTAssertEqual(t.count, 5)
    }

    func testRegistryOnlyAndNoCapture() throws {
        let (_, t) = try table(Self.config(policy: "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}"))
        XCTAssertEqual(t.policy, .registryOnly)
        let s = try ProxySnapshot(bootstrap: Bootstrap.parse(Self.config(capture: false), file: "t.yaml"), version: "t")
        XCTAssertNil(s.capture, "no capture table unless the outbound listener says capture: true")
        XCTAssertThrowsError(try Bootstrap.parse(Self.config(policy: "  outboundTrafficPolicy: {mode: DENY}"), file: "t.yaml")) {
            XCTAssertTrue("\($0)".contains("spec.outboundTrafficPolicy.mode"), "\($0)")
        }
    }
}
