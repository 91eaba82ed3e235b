import XCTest
import MeshCore
@testable import MeshConfig
@testable import MeshControl
#if canImport(Glibc)
import Glibc
#endif

/// What meshd sends gateway proxies and sidecars (DESIGN §15): a gateway gets the Gateways that
/// select its labels, the VirtualServices bound to them and the clusters they route to, no
/// default routes; sidecars never get Gateways nor gateway-only VirtualServices (nor a cluster
/// for their hosts); meshd refuses, naming file and line, what a gateway would refuse.
final class GatewayScopeTests: XCTestCase {
    var dir = ""

    override func setUp() {
        var t = Array("/tmp/gwscope-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
    }

    override func tearDown() { _ = system("rm -rf '\(dir)'") }

    func input(_ text: String, _ file: String = "in.yaml") -> [ConfigStore.Input] { [ConfigStore.Input(file: file, text: text)] }
    func id(_ ns: String, _ sa: String) -> String { "spiffe://cluster.local/ns/\(ns)/sa/\(sa)" }

    func applied(_ text: String, gateway labels: [(String, String)]?, ns: String = "default") throws -> Bootstrap {
        var o = MeshModeOptions(service: "probe")
        o.namespace = ns
        if let l = labels { o.gateway = true; o.labels = l } else { o.appPort = 1 }
        let tls = Bootstrap.TLSFiles(certChain: "x", privateKey: "x", trustBundle: "x", trustDomain: "cluster.local", minTLS13: true)
        return try Bootstrap.meshMode(o, tls: tls).withPushedConfig(text, source: "push")
    }

    static let docs = """
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: web-gw}
        spec:
          selector: {istio: ingressgateway}
          servers:
          - port: {number: 8080, name: http, protocol: HTTP}
            hosts: [bookinfo.example]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: front}
        spec:
          hosts: [bookinfo.example]
          gateways: [web-gw]
          http:
          - route: [{destination: {host: reviews}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: ratings}
        spec:
          hosts: [ratings]
          http:
          - route: [{destination: {host: ratings}}]
        """

    func mesh() throws -> ConfigStore {
        let store = try ConfigStore(stateDir: dir)
        try store.register(identity: id("default", "reviews"), service: "reviews", namespace: "default", labels: [("app", "reviews")], address: "127.0.0.1:15006")
        try store.register(identity: id("default", "ratings"), service: "ratings", namespace: "default", labels: [("app", "ratings")], address: "127.0.0.1:15016")
        _ = try store.apply(input(Self.docs))
        return store
    }

    func testAGatewayGetsItsGatewaysAndWhatBindsToThem() throws {
        let store = try mesh()
        store.seen(identity: id("default", "ingressgateway"), node: "127.0.0.1:1", gateway: [("app", "ingressgateway"), ("istio", "ingressgateway")])
        let text = store.proxyConfig(identity: id("default", "ingressgateway"), node: "127.0.0.1:1").text
        let gw = try applied(text, gateway: [("istio", "ingressgateway")])
        XCTAssertEqual(gw.traffic.gateways.map(\.name), ["web-gw"])
        XCTAssertEqual(gw.traffic.virtualServices.map(\.name), ["front"])
        XCTAssertEqual(gw.clusters.map(\.name), ["reviews.default"])    // only what its routes lead to
        XCTAssertTrue(gw.routes.isEmpty)                                  // no default routes
        // A gateway whose labels no Gateway selects gets nothing to serve.
        store.seen(identity: id("default", "egress"), node: "127.0.0.1:2", gateway: [("istio", "egressgateway")])
        let other = try applied(store.proxyConfig(identity: id("default", "egress"), node: "127.0.0.1:2").text, gateway: [("istio", "egressgateway")])
        XCTAssertTrue(other.traffic.gateways.isEmpty)
        XCTAssertTrue(other.traffic.virtualServices.isEmpty)
        XCTAssertTrue(other.clusters.isEmpty)
    }

    func testSidecarsGetNoGatewayNorGatewayOnlyVirtualService() throws {
        let store = try mesh()
        let text = store.proxyConfig(identity: id("default", "web"), node: "127.0.0.1:3").text
        XCTAssertFalse(text.contains("kind: Gateway"))
        XCTAssertFalse(text.contains("name: front"))
        XCTAssertFalse(text.contains("bookinfo.example"))                 // no cluster or route for the gateway's host
        let sc = try applied(text, gateway: nil)
        XCTAssertEqual(sc.traffic.virtualServices.map(\.name), ["ratings"])
        // Nor a VIP: the gateway's host is not a mesh host.
        XCTAssertEqual(store.serviceAddresses().map(\.host).sorted(), ["ratings.default", "reviews.default"])
    }

    func testMeshdRefusesWhatAGatewayWouldRefuseNamingFileAndLine() throws {
        let store = try mesh()
        let v = store.version
        let bad = """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: pass}
            spec:
              hosts: [secure.example]
              gateways: [web-gw]
              tls:
              - match: [{sniHosts: [secure.example]}]
                route: [{destination: {host: reviews}}]
            """
        XCTAssertThrowsError(try store.apply(input(bad, "pass.yaml"))) { e in
            let e = e as! ConfigError
            XCTAssertEqual(e.file, "pass.yaml", "\(e)")
            XCTAssertEqual(e.path, "VirtualService default/pass: spec.tls[0].route[0].destination.host", "\(e)")
            XCTAssertTrue(e.message.contains("\"reviews\" is not a TCP service"), e.message)
        }
        // A tls route for the sidecars (no gateways) is refused by name too.
        XCTAssertThrowsError(try store.apply(input(bad.replacingOccurrences(of: "  gateways: [web-gw]\n", with: ""), "mesh.yaml"))) { e in
            XCTAssertTrue("\(e)".contains("spec.tls: tls routes are honoured on gateways"), "\(e)")
        }
        XCTAssertEqual(store.version, v)
    }

    /// A connected gateway whose labels select two Gateways that disagree on a port: meshd
    /// refuses the second (each Gateway alone would pass).
    func testAConnectedGatewaysLabelsAreCheckedToo() throws {
        let store = try mesh()
        store.seen(identity: id("default", "ingressgateway"), node: "127.0.0.1:1", gateway: [("istio", "ingressgateway"), ("team", "a")])
        let v = store.version
        let other = """
            apiVersion: networking.istio.io/v1
            kind: Gateway
            metadata: {name: team-a}
            spec:
              selector: {team: a}
              servers:
              - port: {number: 8080, name: tcp, protocol: TCP}
                hosts: ["*"]
            """
        XCTAssertThrowsError(try store.apply(input(other, "team.yaml"))) { e in
            XCTAssertEqual("\(e)", "team.yaml:7: document 1: Gateway default/team-a: spec.servers[0].port.number: port 8080 is already served by Gateway default/web-gw with other settings (protocol HTTP, tls mode none) on the gateways both select; servers sharing a port must agree on protocol and tls")
        }
        XCTAssertEqual(store.version, v)
        // Without that gateway connected, the same document is fine.
        mkdir(dir + "-alone", 0o700)
        let alone = try ConfigStore(stateDir: dir + "-alone")
        defer { _ = system("rm -rf '\(dir)-alone'") }
        _ = try alone.apply(input(Self.docs))
        XCTAssertNoThrow(try alone.apply(input(other, "team.yaml")))
    }
}
