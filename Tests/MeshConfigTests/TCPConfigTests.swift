import XCTest
@testable import MeshConfig

/// Config for opaque TCP, refusals first: VirtualService tcp routes (match fields not honoured
/// refused by name, weights, http routes to TCP services and tcp routes to HTTP services refused
/// in the shared check), cluster serviceProtocol/port, AuthorizationPolicy ports, ServiceEntry
/// TCP ports, and mesh-mode --app-protocol tcp with --service-port.
final class TCPConfigTests: XCTestCase {
    private func bootstrap(_ docs: String = "", cacheExtra: String = "      serviceProtocol: TCP\n      port: 6379\n") -> String {
        """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: t}
        spec:
          workload: {service: t}
          outbound: {port: 15001}
          clusters:
            - name: cache
              tls: DISABLE
              endpoints: [{address: "127.0.0.1:7001", labels: {version: v1}}, {address: "127.0.0.1:7002", labels: {version: v2}}]
        \(cacheExtra)    - name: web
              tls: DISABLE
              endpoints: ["127.0.0.1:8000"]
          routes: [{name: web, hosts: [web], cluster: web}]
        """ + (docs.isEmpty ? "" : "\n---\n" + docs)
    }

    private func refused(_ text: String, _ expected: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Bootstrap.parse(text, file: "t.yaml"), file: file, line: line) { e in
            let msg = "\(e)"
            for part in expected { XCTAssertTrue(msg.contains(part), "\"\(part)\" not in: \(msg)", file: file, line: line) }
        }
    }

    private let subsets = """
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: cache}
    spec:
      host: cache
      subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
    """

    private func vs(_ body: String) -> String {
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: cache}\nspec:\n  hosts: [cache]\n" + body + "\n---\n" + subsets
    }

    func testTCPMatchFieldsNotHonouredAreRefusedByName() {
        for f in ["destinationSubnets: [10.0.0.0/8]", "sourceLabels: {app: x}", "sourceNamespace: ns"] {
            refused(bootstrap(vs("  tcp:\n  - match: [{port: 6379, \(f)}]\n    route: [{destination: {host: cache}}]")),
                    ["spec.tcp[0].match[0]." + f.split(separator: ":")[0]])
        }
    }

    func testTCPRouteWeightsMustSumTo100AndAMatchNeedsAPort() {
        refused(bootstrap(vs("  tcp:\n  - route: [{destination: {host: cache, subset: v1}, weight: 60}, {destination: {host: cache, subset: v2}, weight: 30}]")),
                ["spec.tcp[0].route", "sum to 90"])
        refused(bootstrap(vs("  tcp:\n  - match: [{}]\n    route: [{destination: {host: cache}}]")), ["spec.tcp[0].match[0].port"])
    }

    func testAnHTTPRouteToATCPServiceAndATCPRouteToAnHTTPServiceAreRefused() {
        refused(bootstrap(vs("  http:\n  - route: [{destination: {host: cache}}]")),
                ["spec.http[0].route[0].destination.host", "is a TCP service"])
        let toWeb = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: w}\nspec:\n  hosts: [web2]\n  tcp:\n  - route: [{destination: {host: web}}]"
        refused(bootstrap(toWeb), ["spec.tcp[0].route[0].destination.host", "is not a TCP service"])
    }

    func testATCPRouteToAnUndefinedSubsetIsRefused() {
        refused(bootstrap("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: cache}\nspec:\n  hosts: [cache]\n  tcp:\n  - route: [{destination: {host: cache, subset: v3}}]"),
                ["spec.tcp[0].route[0].destination.subset", "v3"])
    }

    func testAWeightedTCPRouteIsAccepted() throws {
        let b = try Bootstrap.parse(bootstrap(vs("  tcp:\n  - match: [{port: 6379}]\n    route: [{destination: {host: cache, subset: v1}, weight: 80}, {destination: {host: cache, subset: v2}, weight: 20}]")), file: "t.yaml")
        XCTAssertEqual(b.traffic.virtualServices[0].tcp.count, 1)
        XCTAssertEqual(b.traffic.virtualServices[0].tcp[0].ports, [6379])
        XCTAssertEqual(b.traffic.virtualServices[0].tcp[0].route.map(\.weight), [80, 20])
        XCTAssertEqual(b.clusters[0].serviceProtocol, .tcp)
        XCTAssertEqual(b.clusters[0].port, 6379)
    }

    func testClusterServiceProtocolAndHopProtocolAreNotMixed() {
        refused(bootstrap(cacheExtra: "      serviceProtocol: UDP\n"), ["serviceProtocol", "UDP"])
        refused(bootstrap(cacheExtra: "      serviceProtocol: TCP\n      protocol: HTTP2\n"), ["clusters[0].protocol", "does not apply to a TCP service"])
        refused(bootstrap(cacheExtra: "      serviceProtocol: TCP\n      port: 70000\n"), ["clusters[0].port"])
    }

    func testAuthorizationPolicyPortsMustBePortNumbers() {
        let ap = { (p: String) in "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  rules: [{to: [{operation: {ports: [\"\(p)\"]}}]}]" }
        refused(bootstrap(ap("http")), ["ports", "\"http\""])
        refused(bootstrap(ap("0")), ["ports", "\"0\""])
        XCTAssertNoThrow(try Bootstrap.parse(bootstrap(ap("6379")), file: "t.yaml"))
    }

    func testServiceEntryTCPPortsAndOtherProtocolsRefused() throws {
        func se(_ port: String) -> String {
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [db.example.com]\n  ports: [\(port)]\n  endpoints: [{address: 10.0.0.1}]"
        }
        XCTAssertThrowsError(try IstioTraffic.parse(se("{number: 5432, name: pg, protocol: MONGO}"), file: "s.yaml")) { e in
            XCTAssertTrue("\(e)".contains("ports[0].protocol") && "\(e)".contains("MONGO"), "\(e)")
        }
        XCTAssertEqual(try IstioTraffic.parse(se("{number: 5432, name: pg, protocol: TCP}"), file: "s.yaml").serviceEntries[0].ports[0].proto, "TCP")
        XCTAssertEqual(try IstioTraffic.parse(se("{number: 5432, name: tcp-pg}"), file: "s.yaml").serviceEntries[0].ports[0].proto, "TCP")
        // A name that declares no protocol leaves it to detection (AUTO); `http-*`, `grpc` declare HTTP.
        XCTAssertEqual(try IstioTraffic.parse(se("{number: 80, name: web}"), file: "s.yaml").serviceEntries[0].ports[0].proto, "AUTO")
        XCTAssertEqual(try IstioTraffic.parse(se("{number: 80}"), file: "s.yaml").serviceEntries[0].ports[0].proto, "AUTO")
        XCTAssertEqual(try IstioTraffic.parse(se("{number: 80, name: http-web}"), file: "s.yaml").serviceEntries[0].ports[0].proto, "HTTP")
        XCTAssertEqual(try IstioTraffic.parse(se("{number: 80, name: grpc}"), file: "s.yaml").serviceEntries[0].ports[0].proto, "HTTP")
        XCTAssertEqual(try IstioTraffic.parse(se("{number: 80, name: web, protocol: HTTP}"), file: "s.yaml").serviceEntries[0].ports[0].proto, "HTTP")
        // AUTO is what an undeclared port gets, not a value to write.
        XCTAssertThrowsError(try IstioTraffic.parse(se("{number: 80, name: web, protocol: AUTO}"), file: "s.yaml")) { e in
            XCTAssertTrue("\(e)".contains("ports[0].protocol"), "\(e)")
        }
    }

    func testMeshModeTCPAppAndServicePort() throws {
        let tls = Bootstrap.TLSFiles(certChain: "c", privateKey: "k", trustBundle: "b", trustDomain: "cluster.local", minTLS13: false)
        var o = MeshModeOptions(service: "cache")
        o.appPort = 7000
        o.appProtocol = "tcp"
        let b = try Bootstrap.meshMode(o, tls: tls)
        XCTAssertEqual(b.inbound?.appTCP, true)
        XCTAssertEqual(b.inbound?.servicePort, 7000, "the service port defaults to the app port")
        o.servicePort = 6379
        XCTAssertEqual(try Bootstrap.meshMode(o, tls: tls).inbound?.servicePort, 6379)
        o.appProtocol = "udp"
        XCTAssertThrowsError(try Bootstrap.meshMode(o, tls: tls)) { e in XCTAssertTrue("\(e)".contains("--app-protocol"), "\(e)") }
    }
}
