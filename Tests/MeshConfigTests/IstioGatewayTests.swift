import XCTest
@testable import MeshConfig

/// Gateway resources and VirtualService binding (`gateways`, `tls` routes), refusals first:
/// every refusal names file, line and field; modes and fields not honoured are refused by name.
final class IstioGatewayTests: XCTestCase {
    let gateway = """
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: web-gw, namespace: edge}
    spec:
      selector: {istio: ingressgateway}
      servers:
      - port: {number: 8080, name: http, protocol: HTTP}
        hosts: ["*/bookinfo.example", "./*.internal"]
      - port: {number: 8443, name: tls, protocol: TLS}
        hosts: ["*"]
        tls: {mode: PASSTHROUGH}
      - port: {number: 8081, name: redirect, protocol: HTTP}
        hosts: ["*"]
        tls: {httpsRedirect: true}
      - port: {number: 9000, name: tcp, protocol: TCP}
        hosts: ["*"]
    """

    func refusal(_ text: String) -> String? {
        do { _ = try IstioTraffic.parse(text, file: "gw.yaml"); return nil } catch { return error.description }
    }

    // MARK: refusals

    func testGatewayFieldsRefusedWithFileLineAndField() {
        let cases: [(String, String, String)] = [
            ("protocol: TCP}", "protocol: UDP}", "gw.yaml:15: document 1: spec.servers[3].port.protocol: protocol UDP: not supported yet"),
            ("protocol: TCP}", "protocol: SMTP}", "gw.yaml:15: document 1: spec.servers[3].port.protocol: expected one of HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, got \"SMTP\""),
            ("tls: {mode: PASSTHROUGH}", "tls: {mode: AUTO_PASSTHROUGH}", "gw.yaml:11: document 1: spec.servers[1].tls.mode: mode AUTO_PASSTHROUGH: not supported yet"),
            ("tls: {mode: PASSTHROUGH}", "tls: {mode: SIMPLE, credentialName: web-cert}", "gw.yaml:9: document 1: spec.servers[1].tls.mode: protocol TLS with mode SIMPLE: not supported yet (PASSTHROUGH is)"),
            ("tls: {mode: PASSTHROUGH}", "tls: {mode: MUTUAL, credentialName: web-cert}", "gw.yaml:9: document 1: spec.servers[1].tls.mode: protocol TLS with mode MUTUAL: not supported yet (PASSTHROUGH is)"),
            ("tls: {mode: PASSTHROUGH}", "tls: {mode: PASSTHROUGH, credentialName: web-cert}", "gw.yaml:9: document 1: spec.servers[1].tls.credentialName: credentialName is for SIMPLE and MUTUAL servers (mode PASSTHROUGH takes no server certificate of its own)"),
            ("tls: {mode: PASSTHROUGH}", "tls: {mode: PASSTHROUGH, minProtocolVersion: TLSV1_3}", "gw.yaml:11: document 1: spec.servers[1].tls.minProtocolVersion: not supported yet"),
            ("tls: {mode: PASSTHROUGH}", "tls: {mode: PASSTHROUGH, cipherSuites: [A]}", "gw.yaml:11: document 1: spec.servers[1].tls.cipherSuites: not supported yet"),
            ("tls: {mode: PASSTHROUGH}", "tls: {mode: PASSTHROUGH, serverCertificate: /c.pem}", "gw.yaml:11: document 1: spec.servers[1].tls.serverCertificate: not supported yet"),
            ("tls: {mode: PASSTHROUGH}", "tls: {mode: ISTIO_MUTUAL}", "gw.yaml:9: document 1: spec.servers[1].tls.mode: protocol TLS with mode ISTIO_MUTUAL: not supported yet (PASSTHROUGH is)"),
            ("tls: {mode: PASSTHROUGH}", "tls: {}", "gw.yaml:9: document 1: spec.servers[1].tls.mode: a server of protocol TLS needs tls.mode"),
            ("    tls: {mode: PASSTHROUGH}\n", "", "gw.yaml:9: document 1: spec.servers[1].tls.mode: a server of protocol TLS needs tls.mode"),
            ("tls: {httpsRedirect: true}", "tls: {mode: PASSTHROUGH}", "gw.yaml:12: document 1: spec.servers[2].tls.mode: a server of protocol HTTP is plain text: tls.mode PASSTHROUGH needs protocol HTTPS or TLS"),
            ("hosts: [\"*/bookinfo.example\", \"./*.internal\"]", "hosts: [\"a/b/c\"]", "gw.yaml:7: document 1: spec.servers[0].hosts[0]: expected [namespace/]dnsName: namespace *, . or a namespace name; dnsName *, *.suffix or a lowercase host name, got \"a/b/c\""),
            ("hosts: [\"*/bookinfo.example\", \"./*.internal\"]", "hosts: [\"Bookinfo.example\"]", "gw.yaml:7: document 1: spec.servers[0].hosts[0]: expected [namespace/]dnsName: namespace *, . or a namespace name; dnsName *, *.suffix or a lowercase host name, got \"Bookinfo.example\""),
            ("hosts: [\"*/bookinfo.example\", \"./*.internal\"]", "hosts: [\"a.*.example\"]", "gw.yaml:7: document 1: spec.servers[0].hosts[0]: expected [namespace/]dnsName: namespace *, . or a namespace name; dnsName *, *.suffix or a lowercase host name, got \"a.*.example\""),
            ("hosts: [\"*/bookinfo.example\", \"./*.internal\"]", "hosts: []", "gw.yaml:7: document 1: spec.servers[0].hosts: a server needs at least one host (\"*\" for every host)"),
            ("number: 8080, name: http,", "number: 70000, name: http,", "gw.yaml:7: document 1: spec.servers[0].port.number: must be between 1 and 65535, got 70000"),
            ("number: 8080, name: http,", "number: 8080, targetPort: 80, name: http,", "gw.yaml:7: document 1: spec.servers[0].port.targetPort: not supported yet"),
            ("  - port: {number: 9000", "  - bind: 0.0.0.0\n    port: {number: 9000", "gw.yaml:15: document 1: spec.servers[3].bind: not supported yet"),
            ("    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}", "    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}\n    defaultEndpoint: 127.0.0.1:80", "gw.yaml:12: document 1: spec.servers[1].defaultEndpoint: not supported yet"),
            ("number: 9000, name: tcp, protocol: TCP", "number: 8080, name: tcp, protocol: TCP", "gw.yaml:15: document 1: spec.servers[3].port.number: port 8080 is already served with other settings (protocol HTTP, tls mode none); servers sharing a port must agree on protocol and tls"),
            ("selector: {istio: ingressgateway}", "selector: {istio: \"a b\"}", "gw.yaml:5: document 1: spec.selector.istio: expected a label key=value (letters, digits, '-', '_', '.'), got \"istio\": \"a b\""),
            ("  servers:\n", "  severs: []\n  servers:\n", "gw.yaml:6: document 1: spec.severs: unknown field (known fields here: selector, servers)"),
        ]
        for (old, new, want) in cases {
            XCTAssertTrue(gateway.contains(old), old)
            XCTAssertEqual(refusal(gateway.replacingOccurrences(of: old, with: new)), want)
        }
        XCTAssertEqual(refusal(gateway.replacingOccurrences(of: "  servers:", with: "  servers: []\n  x:")),
                       "gw.yaml:5: document 1: spec.servers: a Gateway needs at least one server")
        XCTAssertEqual(refusal(gateway + "\n---\n" + gateway), "gw.yaml:18: document 2: metadata.name: a second Gateway edge/web-gw")
    }

    func testVirtualServiceGatewayReferencesAndTLSRoutesRefusedWithField() {
        let vs = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: pass}
        spec:
          hosts: [secure.example]
          gateways: [edge/web-gw]
          tls:
          - match: [{sniHosts: [secure.example], port: 8443}]
            route: [{destination: {host: backend.example.com}}]
        """
        XCTAssertNil(refusal(vs))
        let cases: [(String, String, String)] = [
            ("gateways: [edge/web-gw]", "gateways: [\"a/b/c\"]", "gw.yaml:5: document 1: spec.gateways[0]: expected mesh, a Gateway name or namespace/name, got \"a/b/c\""),
            ("gateways: [edge/web-gw]", "gateways: [Web]", "gw.yaml:5: document 1: spec.gateways[0]: expected mesh, a Gateway name or namespace/name, got \"Web\""),
            ("gateways: [edge/web-gw]", "gateways: [mesh, mesh]", "gw.yaml:5: document 1: spec.gateways[1]: \"mesh\" is listed twice"),
            ("sniHosts: [secure.example], port: 8443", "port: 8443", "gw.yaml:8: document 1: spec.tls[0].match[0].sniHosts: required field is missing (the server names this route takes)"),
            ("sniHosts: [secure.example]", "sniHosts: [\"Secure\"]", "gw.yaml:8: document 1: spec.tls[0].match[0].sniHosts[0]: expected a lowercase host name, *.suffix or *, got \"Secure\""),
            ("port: 8443}", "port: 8443, sourceLabels: {a: b}}", "gw.yaml:8: document 1: spec.tls[0].match[0].sourceLabels: not supported yet"),
            ("port: 8443}", "port: 8443, destinationSubnets: [10.0.0.0/8]}", "gw.yaml:8: document 1: spec.tls[0].match[0].destinationSubnets: not supported yet"),
            ("  - match: [{sniHosts: [secure.example], port: 8443}]\n", "  - match: []\n", "gw.yaml:8: document 1: spec.tls[0].match: a tls route needs at least one match with sniHosts"),
            ("{destination: {host: backend.example.com}}", "{destination: {host: a.example}, weight: 50}, {destination: {host: b.example}, weight: 40}",
             "gw.yaml:8: document 1: spec.tls[0].route: weights must sum to 100, they sum to 90"),
        ]
        for (old, new, want) in cases {
            XCTAssertTrue(vs.contains(old), old)
            XCTAssertEqual(refusal(vs.replacingOccurrences(of: old, with: new)), want)
        }
    }

    // MARK: what is kept

    func testGatewayFieldsKeepTheirValues() throws {
        let c = try IstioTraffic.parse(gateway, file: "gw.yaml")
        let g = try XCTUnwrap(c.gateways.first)
        XCTAssertEqual(g.name, "web-gw")
        XCTAssertEqual(g.namespace, "edge")
        XCTAssertTrue(g.selects(labels: [("app", "x"), ("istio", "ingressgateway")]))
        XCTAssertFalse(g.selects(labels: [("istio", "egressgateway")]))
        XCTAssertEqual(g.servers.map(\.port), [8080, 8443, 8081, 9000])
        XCTAssertEqual(g.servers.map(\.proto), [.http, .tls, .http, .tcp])
        XCTAssertEqual(g.servers[0].hosts, [.init(namespace: .any, dnsName: "bookinfo.example"), .init(namespace: .own, dnsName: "*.internal")])
        XCTAssertEqual(g.servers[1].tls?.mode, .passthrough)
        XCTAssertEqual(g.servers[2].tls?.httpsRedirect, true)
        XCTAssertNil(g.servers[2].tls?.mode)
        XCTAssertNil(g.servers[3].tls)
        // Istio's host rules: namespace part, exact names, wildcards.
        let h = g.servers[0].hosts
        XCTAssertTrue(h[0].admits(vsHost: "bookinfo.example", vsNamespace: "any", gatewayNamespace: "edge"))
        XCTAssertFalse(h[0].admits(vsHost: "other.example", vsNamespace: "any", gatewayNamespace: "edge"))
        XCTAssertTrue(h[1].admits(vsHost: "a.internal", vsNamespace: "edge", gatewayNamespace: "edge"))
        XCTAssertFalse(h[1].admits(vsHost: "a.internal", vsNamespace: "default", gatewayNamespace: "edge"))
        XCTAssertFalse(h[1].admits(vsHost: "internal", vsNamespace: "edge", gatewayNamespace: "edge"))
        XCTAssertTrue(IstioGateway.hostsIntersect("*.example", "*.a.example"))
        XCTAssertFalse(IstioGateway.hostsIntersect("*.example", "*.other"))
        XCTAssertEqual(IstioGateway.Host.parse("prod/x.example"), .init(namespace: .named("prod"), dnsName: "x.example"))
    }

    // MARK: binding (Istio's meaning of gateways)

    let bound = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: mixed, namespace: edge}
    spec:
      hosts: [reviews]
      gateways: [web-gw, mesh]
      http:
      - name: gw-only
        match: [{uri: {prefix: /gw}, gateways: [edge/web-gw]}]
        route: [{destination: {host: reviews}}]
      - match: [{uri: {prefix: /mesh}, gateways: [mesh]}, {uri: {prefix: /both}}]
        route: [{destination: {host: reviews}}]
      - route: [{destination: {host: reviews}}]
      tcp:
      - match: [{port: 9000, gateways: [other/gw]}]
        route: [{destination: {host: cache}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: plain, namespace: edge}
    spec:
      hosts: [ratings]
      http:
      - route: [{destination: {host: ratings}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: gwonly, namespace: edge}
    spec:
      hosts: [bookinfo.example]
      gateways: [web-gw]
      http:
      - route: [{destination: {host: reviews}}]
    """

    func testBindingFollowsIstio() throws {
        let c = try IstioTraffic.parse(bound, file: "b.yaml")
        // mesh: no gateways means mesh; a gateway-only VirtualService is not applied.
        let mesh = c.virtualServices(boundTo: .mesh)
        XCTAssertEqual(mesh.map(\.name), ["mixed", "plain"])
        XCTAssertEqual(mesh[0].http.map(\.name), ["1", "2"])            // labels keep their index
        XCTAssertEqual(mesh[0].http[0].match.count, 2)                   // /mesh and /both (inherits mesh)
        XCTAssertTrue(mesh[0].tcp.isEmpty)                               // its match names another gateway
        // The gateway edge/web-gw ("web-gw" in the VirtualService's namespace).
        let gw = c.virtualServices(boundTo: .gateways(["edge/web-gw"]))
        XCTAssertEqual(gw.map(\.name), ["mixed", "gwonly"])
        XCTAssertEqual(gw[0].http.map(\.name), ["gw-only", "1", "2"])
        XCTAssertEqual(gw[0].http[1].match.count, 1)                     // only /both
        XCTAssertTrue(gw[0].tcp.isEmpty)
        // A gateway that nothing names gets nothing; the tcp match's own gateway gets its route.
        XCTAssertTrue(c.virtualServices(boundTo: .gateways(["default/web-gw"])).isEmpty)
        let other = c.virtualServices(boundTo: .gateways(["other/gw"]))
        XCTAssertEqual(other.map(\.name), ["mixed"])
        XCTAssertEqual(other[0].tcp.first?.ports, [9000])
        XCTAssertTrue(other[0].http.isEmpty)
    }

    private func meshBootstrap(gateway: Bool, labels: [(String, String)] = [("istio", "ingressgateway")]) throws -> Bootstrap {
        var o = MeshModeOptions(service: "gw")
        o.gateway = gateway
        o.labels = labels
        if !gateway { o.appPort = 8000 }
        let tls = Bootstrap.TLSFiles(certChain: "c", privateKey: "k", trustBundle: "b", trustDomain: "cluster.local", minTLS13: true)
        return try Bootstrap.meshMode(o, tls: tls)
    }

    private func pushed(_ docs: String) -> String {
        """
        apiVersion: sidecar.mesh/v1alpha1
        kind: ProxyConfig
        metadata: {name: proxy-config}
        spec:
          clusters:
          - {name: reviews.default, tls: ISTIO_MUTUAL, endpoints: []}
          - {name: backend.example.com, tls: DISABLE, serviceProtocol: TCP, port: 443, endpoints: ["127.0.0.1:9443"]}
          routes: []
        ---

        """ + docs
    }

    let gatewayDocs = """
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: web-gw}
    spec:
      selector: {istio: ingressgateway}
      servers:
      - port: {number: 8080, name: http, protocol: HTTP}
        hosts: [bookinfo.example]
      - port: {number: 8443, name: tls, protocol: TLS}
        hosts: ["*"]
        tls: {mode: PASSTHROUGH}
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: front}
    spec:
      hosts: [bookinfo.example, not-on-this-gateway.example]
      gateways: [web-gw]
      http:
      - route: [{destination: {host: reviews}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: pass}
    spec:
      hosts: [secure.example]
      gateways: [web-gw]
      tls:
      - match: [{sniHosts: [secure.example]}]
        route: [{destination: {host: backend.example.com}}]
    """

    func testGatewayProxyAppliesWhatBindsToItsGateways() throws {
        let b = try meshBootstrap(gateway: true).withPushedConfig(pushed(gatewayDocs), source: "meshd")
        XCTAssertEqual(b.traffic.gateways.map(\.name), ["web-gw"])
        XCTAssertEqual(b.traffic.virtualServices.map(\.name), ["front"])
        XCTAssertEqual(b.traffic.virtualServices[0].hosts, ["bookinfo.example"])   // the server's hosts only
        XCTAssertEqual(b.gatewayRoutes.map(\.name), ["pass"])
        // Another gateway's labels: its Gateway does not select it, nothing binds.
        let other = try meshBootstrap(gateway: true, labels: [("istio", "egressgateway")]).withPushedConfig(pushed(gatewayDocs), source: "meshd")
        XCTAssertTrue(other.traffic.gateways.isEmpty)
        XCTAssertTrue(other.traffic.virtualServices.isEmpty)
        XCTAssertTrue(other.gatewayRoutes.isEmpty)
    }

    func testSidecarRefusesGatewaysAndMeshTLSRoutesAndIgnoresGatewayOnlyServices() throws {
        XCTAssertThrowsError(try meshBootstrap(gateway: false).withPushedConfig(pushed(gatewayDocs), source: "meshd")) { e in
            XCTAssertEqual("\(e)", "meshd: Gateway default/web-gw: a Gateway configures gateway proxies (sidecar --gateway), to which meshd sends it; a sidecar does not take one")
        }
        let vsOnly = gatewayDocs.components(separatedBy: "---\n").dropFirst().joined(separator: "---\n")
        let b = try meshBootstrap(gateway: false).withPushedConfig(pushed(vsOnly), source: "meshd")
        XCTAssertTrue(b.traffic.virtualServices.isEmpty)
        let meshTLS = vsOnly.replacingOccurrences(of: "  hosts: [secure.example]\n  gateways: [web-gw]", with: "  hosts: [secure.example]")
        XCTAssertThrowsError(try meshBootstrap(gateway: false).withPushedConfig(pushed(meshTLS), source: "meshd")) { e in
            XCTAssertEqual("\(e)", "meshd: VirtualService default/pass: spec.tls: tls routes are honoured on gateways (PASSTHROUGH servers); for the sidecars (gateways: mesh, or none): not supported yet")
        }
    }

    func testGatewayRouteToAnHTTPServiceRefused() {
        let bad = gatewayDocs.replacingOccurrences(of: "route: [{destination: {host: backend.example.com}}]", with: "route: [{destination: {host: reviews}}]")
        XCTAssertThrowsError(try meshBootstrap(gateway: true).withPushedConfig(pushed(bad), source: "meshd")) { e in
            XCTAssertEqual("\(e)", "meshd: VirtualService default/pass: spec.tls[0].route[0].destination.host: \"reviews\" is not a TCP service (its protocol is HTTP): a tls route carries bytes, route it with an http route")
        }
        XCTAssertThrowsError(try { var o = MeshModeOptions(service: "gw"); o.gateway = true; o.appPort = 80
            _ = try Bootstrap.meshMode(o, tls: Bootstrap.TLSFiles(certChain: "c", privateKey: "k", trustBundle: "b", trustDomain: "cluster.local", minTLS13: true)) }()) { e in
            XCTAssertEqual("\(e)", "config: --gateway: a gateway has no app: leave out --app-port")
        }
    }
}

extension IstioGatewayTests {
    func testWildcardHostsBindOnGatewaysAndStayRefusedOnSidecars() throws {
        let docs = gatewayDocs.replacingOccurrences(of: "hosts: [bookinfo.example]", with: "hosts: [\"*\"]")
            .replacingOccurrences(of: "hosts: [bookinfo.example, not-on-this-gateway.example]", with: "hosts: [\"*\", \"*.shop.example\"]")
        let b = try meshBootstrap(gateway: true).withPushedConfig(pushed(docs), source: "meshd")
        XCTAssertEqual(b.traffic.virtualServices.first?.hosts, ["*", "*.shop.example"])
        // The same VirtualService bound to the sidecars is refused there by name.
        let mesh = docs.replacingOccurrences(of: "  hosts: [\"*\", \"*.shop.example\"]\n  gateways: [web-gw]", with: "  hosts: [\"*.shop.example\"]")
        let vsOnly = mesh.components(separatedBy: "---\n").dropFirst().joined(separator: "---\n")
        XCTAssertThrowsError(try meshBootstrap(gateway: false).withPushedConfig(pushed(vsOnly), source: "meshd")) { e in
            XCTAssertTrue("\(e)".contains("spec.hosts[0]: wildcard hosts are not supported"), "\(e)")
        }
    }
}

extension IstioGatewayTests {
    func testStaticGatewayFieldRefusals() {
        let base = """
            apiVersion: sidecar.mesh/v1alpha1
            kind: Bootstrap
            metadata: {name: edge}
            spec:
              workload: {service: edge, labels: {istio: ingressgateway}}
              outbound: {port: 15001}
              gateway: {listenAddress: 127.0.0.1}
              clusters: [{name: web, tls: DISABLE, endpoints: ["127.0.0.1:8000"]}]
              routes: []
            """
        XCTAssertNoThrow(try Bootstrap.parse(base, file: "s.yaml"))
        func refusal(_ t: String) -> String { do { _ = try Bootstrap.parse(t, file: "s.yaml"); return "accepted" } catch { return "\(error)" } }
        XCTAssertEqual(refusal(base.replacingOccurrences(of: "listenAddress: 127.0.0.1", with: "listenAddress: somewhere")),
                       "s.yaml:7: document 1: spec.gateway.listenAddress: expected an IP address (e.g. 0.0.0.0), got \"somewhere\"")
        XCTAssertEqual(refusal(base.replacingOccurrences(of: "listenAddress: 127.0.0.1", with: "listen: 127.0.0.1")),
                       "s.yaml:7: document 1: spec.gateway.listen: unknown field (known fields here: listenAddress)")
        XCTAssertTrue(refusal(base.replacingOccurrences(of: "  outbound: {port: 15001}", with: "  outbound: {port: 15001}\n  inbound: {port: 15006, appAddress: \"127.0.0.1:8000\"}\n  tls: {certChain: c, privateKey: k, trustBundle: b}"))
                        .contains("spec.gateway: a gateway has no app: leave out spec.inbound"))
        // SIMPLE and MUTUAL take their certificate from meshd: refused in a static file.
        for mode in ["SIMPLE", "MUTUAL"] {
            let withGateway = base + """

                ---
                apiVersion: networking.istio.io/v1
                kind: Gateway
                metadata: {name: gw}
                spec:
                  selector: {istio: ingressgateway}
                  servers:
                  - port: {number: 8443, name: https, protocol: HTTPS}
                    hosts: ["*"]
                    tls: {mode: \(mode), credentialName: web-cert}
                """
            XCTAssertEqual(refusal(withGateway), "s.yaml: Gateway default/gw: spec.servers[0].tls.mode: mode \(mode) in a static file: not supported yet (its credentialName secret comes from meshd: run the gateway with --meshd and meshctl create secret tls)")
        }
        // AuthorizationPolicy and RequestAuthentication are not enforced on a gateway: one that
        // selects it (by labels, or namespace-wide) is refused; one for other workloads is not.
        let deny = """

            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: deny-admin}
            spec:
              selector: {matchLabels: {istio: ingressgateway}}
              action: DENY
              rules: [{to: [{operation: {paths: ["/admin"]}}]}]
            """
        XCTAssertEqual(refusal(base + deny), "s.yaml: AuthorizationPolicy default/deny-admin: spec.selector: selects this gateway proxy (namespace default): policies on gateways are not supported yet (a gateway proxy runs neither AuthorizationPolicy nor RequestAuthentication checks; select only sidecar workloads)")
        XCTAssertTrue(refusal(base + deny.replacingOccurrences(of: "  selector: {matchLabels: {istio: ingressgateway}}\n", with: ""))
                        .hasPrefix("s.yaml: AuthorizationPolicy default/deny-admin: metadata.namespace: selects this gateway proxy"))
        XCTAssertNoThrow(try Bootstrap.parse(base + deny.replacingOccurrences(of: "istio: ingressgateway", with: "app: web"), file: "s.yaml"))
        let jwt = """

            ---
            apiVersion: security.istio.io/v1
            kind: RequestAuthentication
            metadata: {name: jwt}
            spec:
              selector: {matchLabels: {istio: ingressgateway}}
              jwtRules: [{issuer: "https://issuer.example", jwksUri: "https://issuer.example/jwks"}]
            """
        XCTAssertTrue(refusal(base + jwt).hasPrefix("s.yaml: RequestAuthentication default/jwt: spec.selector: selects this gateway proxy"), refusal(base + jwt))
    }
}
