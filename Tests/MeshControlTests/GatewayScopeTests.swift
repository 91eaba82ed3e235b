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

    /// A connected gateway whose labels select two Gateways that disagree on a port does not
    /// block applies (each Gateway alone passes): its push is one it refuses (NACK), and the
    /// config it has stays in force there.
    func testAConnectedGatewaysClashingLabelsGetANackNotARefusedApply() throws {
        let store = try mesh()
        store.seen(identity: id("default", "ingressgateway"), node: "127.0.0.1:1", gateway: [("istio", "ingressgateway"), ("team", "a")])
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
        XCTAssertNoThrow(try store.apply(input(other, "team.yaml")))
        // Later applies are not blocked either.
        XCTAssertNoThrow(try store.apply(input(Self.docs.replacingOccurrences(of: "hosts: [ratings]", with: "hosts: [ratings, ratings.default]"))))
        let text = store.proxyConfig(identity: id("default", "ingressgateway"), node: "127.0.0.1:1").text
        XCTAssertThrowsError(try applied(text, gateway: [("istio", "ingressgateway"), ("team", "a")])) { e in
            XCTAssertTrue("\(e)".contains("port 8080 is already served by Gateway default/web-gw with other settings"), "\(e)")
        }
    }

    /// The gateway labels of a proxy entry follow its latest config request: a later sidecar
    /// with the same identity and node that claims none is no gateway (no Gateways, no keys).
    func testGatewayLabelsClearedByARequestWithout() throws {
        let store = try mesh()
        store.seen(identity: id("default", "ingressgateway"), node: "127.0.0.1:1", gateway: [("istio", "ingressgateway")])
        XCTAssertTrue(store.proxyConfig(identity: id("default", "ingressgateway"), node: "127.0.0.1:1").text.contains("kind: Gateway"))
        // A push marks it seen without a request: the labels stay.
        store.seen(identity: id("default", "ingressgateway"), node: "127.0.0.1:1", request: false)
        XCTAssertTrue(store.proxyConfig(identity: id("default", "ingressgateway"), node: "127.0.0.1:1").text.contains("kind: Gateway"))
        store.seen(identity: id("default", "ingressgateway"), node: "127.0.0.1:1")
        let key = "\(id("default", "ingressgateway"))|127.0.0.1:1"
        XCTAssertNil(store.currentState().proxies[key]?.gatewayLabels)
        let text = store.proxyConfig(identity: id("default", "ingressgateway"), node: "127.0.0.1:1").text
        XCTAssertFalse(text.contains("kind: Gateway"))
        XCTAssertNoThrow(try applied(text, gateway: nil))
    }

    /// A LocalRateLimit on a gateway-bound VirtualService reaches the gateway with it.
    func testALocalRateLimitOnAGatewayVirtualServiceReachesTheGateway() throws {
        let store = try mesh()
        _ = try store.apply(input("""
            apiVersion: mesh.io/v1alpha1
            kind: LocalRateLimit
            metadata: {name: front-limit}
            spec:
              virtualService: front
              tokenBucket: {maxTokens: 1, tokensPerFill: 1, fillInterval: 60s}
            """))
        store.seen(identity: id("default", "ingressgateway"), node: "127.0.0.1:1", gateway: [("istio", "ingressgateway")])
        let gw = try applied(store.proxyConfig(identity: id("default", "ingressgateway"), node: "127.0.0.1:1").text, gateway: [("istio", "ingressgateway")])
        XCTAssertEqual(gw.traffic.localRateLimits.map(\.name), ["front-limit"])
        XCTAssertTrue(gw.traffic.localRateLimits.first?.applies(to: gw.traffic.virtualServices[0], routeName: nil) == true)
        // Sidecars do not get it (its VirtualService is the gateway's alone).
        XCTAssertFalse(store.proxyConfig(identity: id("default", "web"), node: "127.0.0.1:3").text.contains("front-limit"))
    }

    static func policy(_ kind: String, _ name: String, selector: String) -> String {
        kind == "AuthorizationPolicy" ? """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: \(name)}
            spec:
              selector: {matchLabels: {\(selector)}}
              action: DENY
              rules: [{to: [{operation: {paths: ["/admin"]}}]}]
            """ : """
            apiVersion: security.istio.io/v1
            kind: RequestAuthentication
            metadata: {name: \(name)}
            spec:
              selector: {matchLabels: {\(selector)}}
              jwtRules: [{issuer: "https://issuer.example", jwksUri: "https://issuer.example/jwks"}]
            """
    }

    /// Policies are not enforced on gateways: one whose selector matches a Gateway's selector
    /// or a known gateway proxy's labels is refused, naming file, line and field; one already
    /// in force that a gateway connecting later matches is refused by that gateway (NACK).
    func testPoliciesSelectingAGatewayAreRefused() throws {
        let store = try mesh()
        let v = store.version
        for kind in ["AuthorizationPolicy", "RequestAuthentication"] {
            XCTAssertThrowsError(try store.apply(input(Self.policy(kind, "gw-policy", selector: "istio: ingressgateway"), "p.yaml"))) { e in
                XCTAssertEqual("\(e)", "p.yaml:5: document 1: \(kind) default/gw-policy: spec.selector: selects the gateway proxies Gateway default/web-gw selects: policies on gateways are not supported yet (a gateway proxy runs neither AuthorizationPolicy nor RequestAuthentication checks; select only sidecar workloads)")
            }
        }
        XCTAssertEqual(store.version, v)
        // Selecting a sidecar workload is fine.
        XCTAssertNoThrow(try store.apply(input(Self.policy("AuthorizationPolicy", "app-policy", selector: "app: reviews"), "ok.yaml")))
        // A policy in force whose selector a gateway proxy connecting later claims: its push is
        // one it refuses by name, and applies are not blocked.
        XCTAssertNoThrow(try store.apply(input(Self.policy("AuthorizationPolicy", "team-policy", selector: "team: a"), "team.yaml")))
        store.seen(identity: id("default", "ingressgateway"), node: "127.0.0.1:1", gateway: [("istio", "ingressgateway"), ("team", "a")])
        let text = store.proxyConfig(identity: id("default", "ingressgateway"), node: "127.0.0.1:1").text
        XCTAssertThrowsError(try applied(text, gateway: [("istio", "ingressgateway"), ("team", "a")])) { e in
            XCTAssertTrue("\(e)".contains("AuthorizationPolicy default/team-policy: spec.selector: selects this gateway proxy (namespace default): policies on gateways are not supported yet"), "\(e)")
        }
        XCTAssertNoThrow(try store.apply(input(Self.docs)))
        // Claimed labels alone block no apply: that proxy's service account is not granted.
        XCTAssertNoThrow(try store.apply(input(Self.policy("RequestAuthentication", "team-jwt", selector: "team: a"), "jwt.yaml")))
        XCTAssertNoThrow(try store.apply(input(Self.policy("RequestAuthentication", "team-jwt", selector: "team: a"), "jwt.yaml"), delete: true))
        // Granted (meshd --gateway-service-account): applying one whose selector that connected
        // gateway proxy's labels match is refused.
        store.grantGatewayServiceAccounts(try GatewayServiceAccounts.parse(["default/ingressgateway"]))
        XCTAssertThrowsError(try store.apply(input(Self.policy("RequestAuthentication", "team-jwt", selector: "team: a"), "jwt.yaml"))) { e in
            XCTAssertTrue("\(e)".hasPrefix("jwt.yaml:5: document 1: RequestAuthentication default/team-jwt: spec.selector: selects the gateway proxy \(id("default", "ingressgateway")) at 127.0.0.1:1: policies on gateways are not supported yet"), "\(e)")
        }
    }

    /// Gateways of two namespaces sharing a port name secrets of their own namespaces: one
    /// port serves one certificate, so the second is refused, naming both.
    func testOnePortTwoNamespacesCredentialsRefused() throws {
        let store = try mesh()
        func gw(_ ns: String) -> String {
            """
            apiVersion: networking.istio.io/v1
            kind: Gateway
            metadata: {name: tls-gw, namespace: \(ns)}
            spec:
              selector: {istio: ingressgateway}
              servers:
              - port: {number: 8443, name: https, protocol: HTTPS}
                hosts: ["*/tls.example"]
                tls: {mode: SIMPLE, credentialName: web-cert}
            """
        }
        XCTAssertNoThrow(try store.apply(input(gw("team-a"), "a.yaml")))
        XCTAssertThrowsError(try store.apply(input(gw("team-b"), "b.yaml"))) { e in
            XCTAssertTrue("\(e)".contains("spec.servers[0].tls.credentialName: port 8443 is already served by Gateway team-"), "\(e)")
            XCTAssertTrue("\(e)".contains("team-a/web-cert") && "\(e)".contains("team-b/web-cert"), "\(e)")
        }
    }
}
