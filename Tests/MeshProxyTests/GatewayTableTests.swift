import XCTest
@testable import MeshConfig
@testable import MeshProxy

/// A gateway's compiled servers: each port's kind, and the routes of every Gateway serving it
/// (two Gateways on one PASSTHROUGH port each bring their tls routes; a tls match for another
/// port or another Gateway does not apply).
final class GatewayTableTests: XCTestCase {
    private func gatewaySnapshot(_ docs: String) throws -> ProxySnapshot {
        var o = MeshModeOptions(service: "gw")
        o.gateway = true
        o.labels = [("istio", "ingressgateway")]
        let tls = Bootstrap.TLSFiles(certChain: "c", privateKey: "k", trustBundle: "b", trustDomain: "cluster.local", minTLS13: true)
        let text = """
            apiVersion: sidecar.mesh/v1alpha1
            kind: ProxyConfig
            metadata: {name: proxy-config}
            spec:
              clusters:
              - {name: a.backend.internal, tls: DISABLE, serviceProtocol: TCP, port: 443, endpoints: ["127.0.0.1:9001"]}
              - {name: b.backend.internal, tls: DISABLE, serviceProtocol: TCP, port: 443, endpoints: ["127.0.0.1:9002"]}
              routes: []
            ---

            """ + docs
        let b = try Bootstrap.meshMode(o, tls: tls).withPushedConfig(text, source: "meshd")
        return try ProxySnapshot(bootstrap: b, version: "t")
    }

    static func gw(_ name: String, _ port: Int = 8443) -> String {
        """
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: \(name)}
        spec:
          selector: {istio: ingressgateway}
          servers:
          - port: {number: \(port), name: tls, protocol: TLS}
            hosts: ["*"]
            tls: {mode: PASSTHROUGH}
        """
    }

    static func vs(_ name: String, gateway: String, sni: String, host: String, port: Int? = nil) -> String {
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: \(name)}
        spec:
          hosts: [\(sni)]
          gateways: [\(gateway)]
          tls:
          - match: [{sniHosts: [\(sni)]\(port.map { ", port: \($0)" } ?? "")}]
            route: [{destination: {host: \(host)}}]
        """
    }

    private func cluster(_ s: ProxySnapshot, _ port: Int, _ name: String) -> String? {
        guard let g = s.gateway, let e = g.port(port) else { return nil }
        let b = Array(name.utf8)
        let r = b.withUnsafeBytes { g.sniRoute(e, $0, 0, b.count) }
        return r < 0 ? nil : s.clusters[s.tcpRoutes[r].cluster].name
    }

    func testTwoGatewaysOnOnePortBringTheirRoutes() throws {
        let s = try gatewaySnapshot([Self.gw("one"), Self.gw("two"),
                                     Self.vs("a", gateway: "one", sni: "a.example", host: "a.backend.internal"),
                                     Self.vs("b", gateway: "two", sni: "b.example", host: "b.backend.internal")].joined(separator: "\n---\n"))
        XCTAssertEqual(s.gateway?.ports.map(\.port), [8443])
        XCTAssertEqual(s.gateway?.port(8443)?.kind, .passthrough)
        XCTAssertEqual(cluster(s, 8443, "a.example"), "a.backend.internal")
        XCTAssertEqual(cluster(s, 8443, "B.Example"), "b.backend.internal")
        XCTAssertNil(cluster(s, 8443, "c.example"))
    }

    func testAMatchForAnotherPortDoesNotApply() throws {
        let s = try gatewaySnapshot([Self.gw("one"), Self.gw("two", 9443),
                                     Self.vs("a", gateway: "one", sni: "a.example", host: "a.backend.internal", port: 9443),
                                     Self.vs("b", gateway: "two", sni: "b.example", host: "b.backend.internal")].joined(separator: "\n---\n"))
        XCTAssertEqual(s.gateway?.ports.map(\.port), [8443, 9443])
        XCTAssertNil(cluster(s, 8443, "a.example"))        // its match names port 9443, which gateway one does not serve
        XCTAssertNil(cluster(s, 9443, "a.example"))        // and it is bound to gateway one only
        XCTAssertEqual(cluster(s, 9443, "b.example"), "b.backend.internal")
        XCTAssertNil(cluster(s, 8443, "b.example"))
    }

    func testGatewaysDisagreeingOnAPortAreRefused() {
        let tcp = Self.gw("two").replacingOccurrences(of: "protocol: TLS}\n    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}", with: "protocol: TCP}\n    hosts: [\"*\"]")
        XCTAssertTrue(tcp.contains("protocol: TCP"))
        XCTAssertThrowsError(try gatewaySnapshot(Self.gw("one") + "\n---\n" + tcp)) { e in
            XCTAssertEqual("\(e)", "meshd: Gateway default/two: spec.servers[0].port.number: port 8443 is already served by Gateway default/one with other settings (protocol TLS, tls mode PASSTHROUGH) on the gateways both select; servers sharing a port must agree on protocol and tls")
        }
    }
}

/// A gateway's wildcard VirtualService hosts: the most specific suffix wins, `*` takes the rest,
/// a bare suffix (no label before it) is not taken.
final class GatewayWildcardHostTests: XCTestCase {
    func testMostSpecificWildcardWins() {
        let w: [(suffix: [UInt8], vhost: Int)] = [(Array(".a.shop.example".utf8), 3), (Array(".shop.example".utf8), 2), ([], 1)]
        func v(_ h: String, _ w: [(suffix: [UInt8], vhost: Int)]) -> Int {
            Array(h.utf8).withUnsafeBufferPointer { GatewayTable.wildcardVHost(w, $0.baseAddress!, $0.count) }
        }
        XCTAssertEqual(v("x.a.shop.example", w), 3)
        XCTAssertEqual(v("X.A.Shop.Example", w), 3)
        XCTAssertEqual(v("b.shop.example", w), 2)
        XCTAssertEqual(v("shop.example", w), 1)      // not under *.shop.example: the catch-all
        XCTAssertEqual(v("other.test", w), 1)
        let one: [(suffix: [UInt8], vhost: Int)] = [(Array(".shop.example".utf8), 2)]
        XCTAssertEqual(v(".shop.example", one), -1)
        XCTAssertEqual(v("other.test", one), -1)
    }
}

extension GatewayTableTests {
    /// Istio keeps HTTP routes per port: a host bound through one server does not answer on
    /// another HTTP port whose server hosts do not admit it.
    func testHTTPRoutesArePerPort() throws {
        let docs = """
            apiVersion: networking.istio.io/v1
            kind: Gateway
            metadata: {name: web}
            spec:
              selector: {istio: ingressgateway}
              servers:
              - port: {number: 8080, name: http, protocol: HTTP}
                hosts: [bookinfo.example, "*.shop.example"]
              - port: {number: 8081, name: http-other, protocol: HTTP}
                hosts: [other.example]
            ---
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: front}
            spec:
              hosts: [bookinfo.example, other.example]
              gateways: [web]
              http:
              - route: [{destination: {host: web.backend.internal}}]
            ---
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: shop}
            spec:
              hosts: ["*.shop.example"]
              gateways: [web]
              http:
              - route: [{destination: {host: web.backend.internal}}]
            """
        var o = MeshModeOptions(service: "gw")
        o.gateway = true
        o.labels = [("istio", "ingressgateway")]
        let tls = Bootstrap.TLSFiles(certChain: "c", privateKey: "k", trustBundle: "b", trustDomain: "cluster.local", minTLS13: true)
        let text = "apiVersion: sidecar.mesh/v1alpha1\nkind: ProxyConfig\nmetadata: {name: proxy-config}\nspec:\n  clusters:\n"
            + "  - {name: web.backend.internal, tls: DISABLE, endpoints: [\"127.0.0.1:9001\"]}\n  routes: []\n---\n" + docs
        let s = try ProxySnapshot(bootstrap: try Bootstrap.meshMode(o, tls: tls).withPushedConfig(text, source: "meshd"), version: "t")
        let g = try XCTUnwrap(s.gateway)
        func v(_ port: Int, _ h: String) -> Int { Array(h.utf8).withUnsafeBufferPointer { g.vhost(port: port, $0.baseAddress!, $0.count) } }
        XCTAssertGreaterThanOrEqual(v(8080, "bookinfo.example"), 0)
        XCTAssertGreaterThanOrEqual(v(8080, "eu.shop.example"), 0)
        XCTAssertEqual(v(8080, "other.example"), -1)      // front binds it, but port 8080's server does not admit it
        XCTAssertGreaterThanOrEqual(v(8081, "other.example"), 0)
        XCTAssertEqual(v(8081, "bookinfo.example"), -1)
        XCTAssertEqual(v(8081, "eu.shop.example"), -1)
        XCTAssertEqual(v(9999, "bookinfo.example"), -1)   // no such port
    }

    /// A `*` VirtualService host bound through a server of narrower hosts answers those only.
    func testAWildcardVirtualServiceHostIsNarrowedToTheServerHosts() throws {
        let docs = """
            apiVersion: networking.istio.io/v1
            kind: Gateway
            metadata: {name: web}
            spec:
              selector: {istio: ingressgateway}
              servers:
              - port: {number: 8080, name: http, protocol: HTTP}
                hosts: [bookinfo.example, "*.shop.example"]
              - port: {number: 8081, name: http-any, protocol: HTTP}
                hosts: ["*"]
            ---
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: all}
            spec:
              hosts: ["*"]
              gateways: [web]
              http:
              - route: [{destination: {host: web.backend.internal}}]
            """
        var o = MeshModeOptions(service: "gw")
        o.gateway = true
        o.labels = [("istio", "ingressgateway")]
        let tls = Bootstrap.TLSFiles(certChain: "c", privateKey: "k", trustBundle: "b", trustDomain: "cluster.local", minTLS13: true)
        let text = "apiVersion: sidecar.mesh/v1alpha1\nkind: ProxyConfig\nmetadata: {name: proxy-config}\nspec:\n  clusters:\n"
            + "  - {name: web.backend.internal, tls: DISABLE, endpoints: [\"127.0.0.1:9001\"]}\n  routes: []\n---\n" + docs
        let s = try ProxySnapshot(bootstrap: try Bootstrap.meshMode(o, tls: tls).withPushedConfig(text, source: "meshd"), version: "t")
        let g = try XCTUnwrap(s.gateway)
        func v(_ port: Int, _ h: String) -> Int { Array(h.utf8).withUnsafeBufferPointer { g.vhost(port: port, $0.baseAddress!, $0.count) } }
        XCTAssertGreaterThanOrEqual(v(8080, "bookinfo.example"), 0)
        XCTAssertGreaterThanOrEqual(v(8080, "eu.shop.example"), 0)
        XCTAssertEqual(v(8080, "other.example"), -1)
        XCTAssertGreaterThanOrEqual(v(8081, "other.example"), 0)
        XCTAssertTrue(GatewayTable.covers("*", "*.a"))
        XCTAssertTrue(GatewayTable.covers("*.a", "*.b.a"))
        XCTAssertFalse(GatewayTable.covers("*.b.a", "*.a"))
        XCTAssertFalse(GatewayTable.covers("x.a", "*"))
    }
}
