import XCTest
import MeshCore
import MeshConfig
@testable import MeshControl
@testable import MeshCA
#if canImport(Glibc)
import Glibc
#endif

/// TCP services in meshd's store (docs/tcp.md): the registry file keeps each workload's
/// protocol and service port across a restart (older files load as HTTP, port unknown; damaged
/// fields are named); a VirtualService `tcp` route applied before any workload registered makes
/// the service's cluster TCP; a registration that disagrees with the documents or with the
/// service's other workloads is refused by name; and how `serviceProtocol`/`port` are rendered.
final class TCPRegistryTests: XCTestCase {
    var dir = ""

    override func setUp() {
        var t = Array("/tmp/tcpregistry-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
    }

    override func tearDown() { _ = system("rm -rf '\(dir)'") }

    let cacheID = "spiffe://cluster.local/ns/default/sa/cache"

    func input(_ text: String, _ file: String = "in.yaml") -> [ConfigStore.Input] { [ConfigStore.Input(file: file, text: text)] }

    /// The lines of one cluster in the pushed config, from its `- name:` line to the next entry,
    /// without its VIPs (`addresses:`, tested in ConfigStoreVIPTests).
    func cluster(_ text: String, _ name: String) -> [String] {
        let lines = text.split(separator: "\n").map(String.init)
        guard let i = lines.firstIndex(of: "  - name: \"\(name)\"") else { return [] }
        var out: [String] = []
        for l in lines[(i + 1)...] {
            if l.hasPrefix("  - ") || !l.hasPrefix("    ") { break }
            let t = l.trimmingCharacters(in: .whitespaces)
            if !t.hasPrefix("addresses:") { out.append(t) }
        }
        return out
    }

    static let tcpSplit = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: cache}
        spec:
          hosts: [cache]
          tcp:
          - match: [{port: 6379}]
            route:
            - destination: {host: cache.default.svc.cluster.local, subset: v1}
              weight: 50
            - destination: {host: cache, subset: v2}
              weight: 50
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: cache}
        spec:
          host: cache
          subsets:
          - {name: v1, labels: {version: v1}}
          - {name: v2, labels: {version: v2}}
        """

    static let httpRoute = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews}
        """

    // MARK: the registry file

    func testTheRegistryKeepsProtocolAndPortAcrossARestart() throws {
        let store = try ConfigStore(stateDir: dir)
        try store.register(identity: cacheID, service: "cache", namespace: "default", labels: [("version", "v1")],
                           address: "127.0.0.1:15006", serviceProtocol: "TCP", servicePort: 6379)
        try store.register(identity: "spiffe://cluster.local/ns/default/sa/grpc", service: "grpc", namespace: "default", labels: [],
                           address: "127.0.0.1:15007", serviceProtocol: "GRPC", servicePort: nil)
        let line = try String(contentsOfFile: "\(dir)/registry.txt", encoding: .utf8).split(separator: "\n").first { $0.contains("cache") }
        XCTAssertEqual(line.map(String.init), "\(cacheID)\tcache\tdefault\tversion=v1\t127.0.0.1:15006\tTCP\t6379")

        let again = try ConfigStore(stateDir: dir)
        let w = again.workloads()
        XCTAssertEqual(w.map(\.serviceProtocol), ["TCP", "GRPC"])
        XCTAssertEqual(w.map(\.servicePort), [6379, nil])
        XCTAssertEqual(cluster(again.proxyConfig().text, "cache.default"),
                       ["tls: ISTIO_MUTUAL", "serviceProtocol: TCP", "port: 6379", "subjectAltNames: [\"\(cacheID)\"]", "endpoints:",
                        "- {address: \"127.0.0.1:15006\", labels: {\"version\": \"v1\"}}"])
        // Still TCP after the restart: a tcp route to it is accepted, an HTTP workload refused.
        XCTAssertNoThrow(try again.apply(input(Self.tcpSplit)))
        XCTAssertThrowsError(try again.register(identity: cacheID, service: "cache", namespace: "default", labels: [], address: "127.0.0.1:15008"))
    }

    func testARegistryFileOfAnEarlierMeshdLoadsAsHTTPWithNoPort() throws {
        let old = "spiffe://cluster.local/ns/default/sa/reviews\treviews\tdefault\tapp=reviews,version=v1\t127.0.0.1:15006\n"
        try old.write(toFile: "\(dir)/registry.txt", atomically: true, encoding: .utf8)
        let store = try ConfigStore(stateDir: dir)
        let w = try XCTUnwrap(store.workloads().first)
        XCTAssertEqual(w.service, "reviews")
        XCTAssertEqual(w.serviceProtocol, "HTTP")
        XCTAssertNil(w.servicePort)
        XCTAssertEqual(cluster(store.proxyConfig().text, "reviews.default").filter { $0.hasPrefix("serviceProtocol") || $0.hasPrefix("port") }, [])
    }

    func testADamagedProtocolOrPortInTheRegistryIsNamed() throws {
        let base = "\(cacheID)\tcache\tdefault\t\t127.0.0.1:15006"
        let cases: [(String, String)] = [
            ("\tTCPX\t6379", "registry.txt:2: expected a protocol (HTTP, HTTP2, GRPC or TCP), got \"TCPX\""),
            ("\ttcp\t6379", "registry.txt:2: expected a protocol (HTTP, HTTP2, GRPC or TCP), got \"tcp\""),
            ("\tTCP\t0", "registry.txt:2: expected a service port (1-65535 or -), got \"0\""),
            ("\tTCP\t65536", "registry.txt:2: expected a service port (1-65535 or -), got \"65536\""),
            ("\tTCP\t", "registry.txt:2: expected a service port (1-65535 or -), got \"\""),
            ("\tTCP", "registry.txt:2: expected 5 tab-separated fields, got 6 (or 7: with the protocol and service port this meshd saves)"),
            ("\tTCP\t6379\tx", "registry.txt:2: expected 5 tab-separated fields, got 8 (or 7: with the protocol and service port this meshd saves)"),
        ]
        for (tail, message) in cases {
            let good = "\(cacheID)\tcache\tdefault\t\t127.0.0.1:15009\tTCP\t-\n"
            try (good + base + tail + "\n").write(toFile: "\(dir)/registry.txt", atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try ConfigStore(stateDir: dir), tail) { e in
                XCTAssertEqual("\(e)", "\(dir)/\(message)", tail)
            }
        }
        // The same file with a good last line loads, "-" being no port.
        try ("\(cacheID)\tcache\tdefault\t\t127.0.0.1:15009\tTCP\t-\n" + base + "\tTCP\t6379\n")
            .write(toFile: "\(dir)/registry.txt", atomically: true, encoding: .utf8)
        let ports = try ConfigStore(stateDir: dir).workloads().map(\.servicePort)
        XCTAssertEqual(ports, [6379, nil])
    }

    // MARK: routes before registrations

    func testATCPRouteAppliedBeforeAnyWorkloadMakesTheClusterTCP() throws {
        let store = try ConfigStore(stateDir: dir)
        let r = try store.apply(input(Self.tcpSplit))
        XCTAssertTrue(r.changed)
        XCTAssertEqual(cluster(store.proxyConfig().text, "cache.default"),
                       ["tls: ISTIO_MUTUAL", "serviceProtocol: TCP", "endpoints:", "[]"], "TCP, port unknown until a workload registers")
        // The pushed config is one a sidecar accepts, with the tcp route in it.
        XCTAssertNoThrow(try Bootstrap.checkPushed(store.proxyConfig().text, namespace: "default", source: "push"))
        // A TCP workload registers: its port joins the cluster.
        try store.register(identity: cacheID, service: "cache", namespace: "default", labels: [("version", "v1")],
                           address: "127.0.0.1:15006", serviceProtocol: "TCP", servicePort: 6379)
        XCTAssertEqual(cluster(store.proxyConfig().text, "cache.default").prefix(3), ["tls: ISTIO_MUTUAL", "serviceProtocol: TCP", "port: 6379"])
    }

    func testAnHTTPRegistrationForAServiceATCPRouteNamesIsRefusedByName() throws {
        let store = try ConfigStore(stateDir: dir)
        let v = try store.apply(input(Self.tcpSplit)).version
        for proto in ["HTTP", "HTTP2", "GRPC"] {
            XCTAssertThrowsError(try store.register(identity: cacheID, service: "cache", namespace: "default", labels: [],
                                                    address: "127.0.0.1:15006", serviceProtocol: proto)) { e in
                XCTAssertEqual("\(e)", "config: register cache.default at 127.0.0.1:15006: protocol \(proto) conflicts with VirtualService default/cache, which routes cache.default with a tcp route (register it with --app-protocol tcp, or route it with http routes)")
            }
        }
        XCTAssertEqual(store.version, v, "nothing changed")
        XCTAssertTrue(store.workloads().isEmpty)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/registry.txt"))
        // Another namespace's cache is another service.
        XCTAssertNoThrow(try store.register(identity: "spiffe://cluster.local/ns/shop/sa/cache", service: "cache", namespace: "shop",
                                            labels: [], address: "127.0.0.1:15007"))
    }

    func testATCPRegistrationForAServiceAnHTTPRouteNamesIsRefusedByName() throws {
        let store = try ConfigStore(stateDir: dir)
        let v = try store.apply(input(Self.httpRoute)).version
        XCTAssertThrowsError(try store.register(identity: "spiffe://cluster.local/ns/default/sa/reviews", service: "reviews", namespace: "default",
                                                labels: [], address: "127.0.0.1:15006", serviceProtocol: "TCP", servicePort: 9080)) { e in
            XCTAssertEqual("\(e)", "config: register reviews.default at 127.0.0.1:15006: protocol TCP conflicts with VirtualService default/reviews, which routes reviews.default with http routes (register it as an HTTP service, or route it with a tcp route)")
        }
        XCTAssertEqual(store.version, v)
        XCTAssertNoThrow(try store.register(identity: "spiffe://cluster.local/ns/default/sa/reviews", service: "reviews", namespace: "default",
                                            labels: [], address: "127.0.0.1:15006", serviceProtocol: "HTTP2"))
    }

    func testWorkloadsOfOneServiceMustAgreeOnProtocolAndPort() throws {
        let store = try ConfigStore(stateDir: dir)
        try store.register(identity: cacheID, service: "cache", namespace: "default", labels: [], address: "127.0.0.1:15006",
                           serviceProtocol: "TCP", servicePort: 6379)
        XCTAssertThrowsError(try store.register(identity: cacheID, service: "cache", namespace: "default", labels: [], address: "127.0.0.1:15007")) { e in
            XCTAssertEqual("\(e)", "config: register cache.default at 127.0.0.1:15007: protocol HTTP differs from TCP, registered by 127.0.0.1:15006 for the same service")
        }
        XCTAssertThrowsError(try store.register(identity: cacheID, service: "cache", namespace: "default", labels: [], address: "127.0.0.1:15007",
                                                serviceProtocol: "TCP", servicePort: 6380)) { e in
            XCTAssertEqual("\(e)", "config: register cache.default at 127.0.0.1:15007: service port 6380 differs from 6379, registered by 127.0.0.1:15006 for the same service")
        }
        XCTAssertEqual(store.workloads().count, 1)
        // HTTP services route by host: their workloads' ports may differ (two versions on two app ports).
        let reviews = "spiffe://cluster.local/ns/default/sa/reviews"
        try store.register(identity: reviews, service: "reviews", namespace: "default", labels: [("version", "v1")], address: "127.0.0.1:15010",
                           serviceProtocol: "HTTP", servicePort: 9080)
        XCTAssertNoThrow(try store.register(identity: reviews, service: "reviews", namespace: "default", labels: [("version", "v2")],
                                            address: "127.0.0.1:15011", serviceProtocol: "HTTP", servicePort: 9081))
        XCTAssertEqual(store.workloads().count, 3)
        // With a TCP workload in force, an http route to it is refused at apply, naming the document.
        XCTAssertThrowsError(try store.apply(input(Self.httpRoute.replacingOccurrences(of: "reviews", with: "cache"), "routes.yaml"))) { e in
            XCTAssertTrue("\(e)".hasPrefix("routes.yaml:"), "\(e)")
            XCTAssertTrue("\(e)".contains("\"cache\" is a TCP service"), "\(e)")
        }
    }

    func testRenderingOfServiceProtocolAndPort() throws {
        let store = try ConfigStore(stateDir: dir)
        try store.register(identity: "spiffe://cluster.local/ns/default/sa/web", service: "web", namespace: "default", labels: [],
                           address: "127.0.0.1:15001", serviceProtocol: "HTTP", servicePort: 8080)
        try store.register(identity: "spiffe://cluster.local/ns/default/sa/api", service: "api", namespace: "default", labels: [],
                           address: "127.0.0.1:15002", serviceProtocol: "HTTP2", servicePort: nil)
        try store.register(identity: "spiffe://cluster.local/ns/default/sa/db", service: "db", namespace: "default", labels: [],
                           address: "127.0.0.1:15003", serviceProtocol: "TCP", servicePort: 5432)
        let text = store.proxyConfig().text
        func head(_ name: String) -> [String] { cluster(text, name).filter { $0.hasPrefix("serviceProtocol") || $0.hasPrefix("port") } }
        XCTAssertEqual(head("web.default"), ["port: 8080"], "HTTP is the default and not written")
        XCTAssertEqual(head("api.default"), ["serviceProtocol: HTTP2"])
        XCTAssertEqual(head("db.default"), ["serviceProtocol: TCP", "port: 5432"])
        // A host only an http route names: an HTTP cluster (no protocol line) before registration.
        _ = try store.apply(input(Self.httpRoute))
        XCTAssertEqual(cluster(store.proxyConfig().text, "reviews.default"), ["tls: ISTIO_MUTUAL", "endpoints:", "[]"])
        // The pushed config is one a sidecar accepts.
        XCTAssertNoThrow(try Bootstrap.checkPushed(store.proxyConfig().text, namespace: "default", source: "push"))
    }

    func testATCPRouteToATCPServiceEntryIsAccepted() throws {
        let store = try ConfigStore(stateDir: dir)
        let se = """
            apiVersion: networking.istio.io/v1
            kind: ServiceEntry
            metadata: {name: legacy-db}
            spec:
              hosts: [db.legacy.example]
              location: MESH_EXTERNAL
              resolution: STATIC
              ports: [{number: 5432, name: tcp-postgres, protocol: TCP}]
              endpoints: [{address: 127.0.0.1}]
            ---
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: legacy-db}
            spec:
              hosts: [db.legacy.example]
              tcp:
              - route:
                - destination: {host: db.legacy.example}
            """
        XCTAssertNoThrow(try store.apply(input(se)))
        XCTAssertEqual(cluster(store.proxyConfig().text, "db.legacy.example").prefix(3), ["tls: DISABLE", "serviceProtocol: TCP", "port: 5432"])
    }
}
