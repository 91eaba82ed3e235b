import XCTest
import MeshCore
@testable import MeshConfig
@testable import MeshControl
#if canImport(Glibc)
import Glibc
#endif

/// What meshd sends for Istio's egress-gateway task (docs/gateways.md "Egress gateway"): one
/// VirtualService bound to `mesh` and the egress Gateway reaches both the sidecars (their `mesh`
/// route to the gateway's ServiceEntry) and the gateway (its route to the external host, with
/// that host's cluster and DestinationRule); sidecars never get the Gateway.
final class EgressGatewayScopeTests: XCTestCase {
    var dir = ""

    override func setUp() {
        var t = Array("/tmp/egwscope-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
    }

    override func tearDown() { _ = system("rm -rf '\(dir)'") }

    func id(_ sa: String) -> String { "spiffe://cluster.local/ns/default/sa/\(sa)" }

    func applied(_ text: String, gateway labels: [(String, String)]?) throws -> Bootstrap {
        var o = MeshModeOptions(service: "probe")
        o.namespace = "default"
        if let l = labels { o.gateway = true; o.labels = l } else { o.appPort = 1 }
        let tls = Bootstrap.TLSFiles(certChain: "x", privateKey: "x", trustBundle: "x", trustDomain: "cluster.local", minTLS13: true)
        return try Bootstrap.meshMode(o, tls: tls).withPushedConfig(text, source: "push")
    }

    static let task = """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: cnn}
        spec:
          hosts: [edition.cnn.com]
          location: MESH_EXTERNAL
          resolution: DNS
          ports: [{number: 80, name: http-port, protocol: HTTP}]
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: istio-egressgateway}
        spec:
          hosts: [istio-egressgateway.istio-system.svc.cluster.local]
          location: MESH_INTERNAL
          resolution: STATIC
          ports: [{number: 443, name: http-mtls, protocol: HTTP}]
          endpoints: [{address: 10.0.0.9, ports: {http-mtls: 8443}, serviceAccount: istio-egressgateway}]
        ---
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: istio-egressgateway}
        spec:
          selector: {istio: egressgateway}
          servers:
          - port: {number: 8443, name: https, protocol: HTTPS}
            hosts: [edition.cnn.com]
            tls: {mode: ISTIO_MUTUAL}
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: originate-tls-for-cnn}
        spec:
          host: edition.cnn.com
          trafficPolicy:
            portLevelSettings:
            - port: {number: 80}
              tls: {mode: SIMPLE}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: direct-cnn-through-egress-gateway}
        spec:
          hosts: [edition.cnn.com]
          gateways: [istio-egressgateway, mesh]
          http:
          - match: [{gateways: [mesh], port: 80}]
            route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 443}}}]
          - match: [{gateways: [istio-egressgateway], port: 8443}]
            route: [{destination: {host: edition.cnn.com, port: {number: 80}}}]
        """

    func testTheTaskReachesTheGatewayAndTheSidecars() throws {
        let store = try ConfigStore(stateDir: dir)
        _ = try store.apply([ConfigStore.Input(file: "task.yaml", text: Self.task)])
        store.seen(identity: id("istio-egressgateway"), node: "10.0.0.9:1", gateway: [("app", "istio-egressgateway"), ("istio", "egressgateway")])
        let gw = try applied(store.proxyConfig(identity: id("istio-egressgateway"), node: "10.0.0.9:1").text,
                             gateway: [("app", "istio-egressgateway"), ("istio", "egressgateway")])
        XCTAssertEqual(gw.traffic.gateways.map(\.name), ["istio-egressgateway"])
        XCTAssertEqual(gw.traffic.virtualServices.map(\.name), ["direct-cnn-through-egress-gateway"])
        XCTAssertTrue(gw.clusters.map(\.name).contains("edition.cnn.com"))
        XCTAssertEqual(gw.traffic.destinationRules.map(\.name), ["originate-tls-for-cnn"])
        XCTAssertTrue(gw.routes.isEmpty)
        // The sidecar: the VirtualService (its `mesh` route), the gateway's cluster over mTLS
        // with the gateway's identity only, and no Gateway.
        let text = store.proxyConfig(identity: id("sleep"), node: "10.0.0.2:1").text
        XCTAssertFalse(text.contains("kind: Gateway"))
        let sc = try applied(text, gateway: nil)
        XCTAssertEqual(sc.traffic.virtualServices.map(\.name), ["direct-cnn-through-egress-gateway"])
        let toGateway = try XCTUnwrap(sc.clusters.first { $0.name == "istio-egressgateway.istio-system.svc.cluster.local" })
        XCTAssertEqual(toGateway.subjectAltNames, [id("istio-egressgateway")])
        XCTAssertEqual(toGateway.endpoints.map { "\($0)" }, ["10.0.0.9:8443"])
    }
}
