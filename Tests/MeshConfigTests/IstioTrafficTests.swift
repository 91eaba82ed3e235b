import XCTest
@testable import MeshConfig

final class IstioTrafficTests: XCTestCase {
    let good = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews, namespace: default}
    spec:
      hosts: [reviews]
      http:
      - name: canary
        match:
        - uri: {prefix: /api}
          headers:
            x-user: {exact: tester}
          method: {exact: GET}
        route:
        - destination: {host: reviews, subset: v1, port: {number: 9080}}
          weight: 90
        - destination: {host: reviews, subset: v2}
          weight: 10
        timeout: 2s
        retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure,refused-stream"}
        fault:
          delay: {percentage: {value: 5}, fixedDelay: 100ms}
          abort: {percentage: {value: 1}, httpStatus: 503}
        mirror: {host: reviews, subset: v2}
        mirrorPercentage: {value: 10}
        headers:
          request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
          response: {remove: [server]}
        rewrite: {uri: /v2/api}
      - route:
        - destination: {host: reviews, subset: v1}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews.default.svc.cluster.local
      trafficPolicy:
        loadBalancer: {simple: LEAST_REQUEST}
        connectionPool:
          tcp: {maxConnections: 100}
          http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRetries: 3}
        outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
      subsets:
      - name: v1
        labels: {version: v1}
      - name: v2
        labels: {version: v2}
    """

    func testParsesAVirtualServiceAndDestinationRule() throws {
        let c = try IstioTraffic.parse(good, file: "t.yaml")
        XCTAssertEqual(c.virtualServices.count, 1)
        let r = c.virtualServices[0].http[0]
        XCTAssertEqual(r.name, "canary")
        XCTAssertEqual(r.match[0].uri, .init(kind: .prefix, value: "/api"))
        XCTAssertEqual(r.match[0].headers[0].name, "x-user")
        XCTAssertEqual(r.route.map(\.weight), [90, 10])
        XCTAssertEqual(r.route[0].destination.port, 9080)
        XCTAssertEqual(r.timeout, 2_000_000_000)
        XCTAssertEqual(r.retries?.attempts, 3)
        XCTAssertEqual(r.retries?.retryOn, ["5xx", "connect-failure", "refused-stream"])
        XCTAssertEqual(r.fault?.abortStatus, 503)
        XCTAssertEqual(r.mirrorPercent, 10)
        XCTAssertEqual(r.rewriteURI, "/v2/api")
        XCTAssertEqual(c.virtualServices[0].http[1].route[0].weight, 100)
        let dr = c.destinationRules[0]
        XCTAssertEqual(dr.subsets.map(\.name), ["v1", "v2"])
        XCTAssertEqual(dr.trafficPolicy?.loadBalancer, .leastRequest)
        XCTAssertEqual(dr.trafficPolicy?.maxEjectionPercent, 50)
    }

    func assertRefused(_ text: String, _ want: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try IstioTraffic.parse(text, file: "bad.yaml")
            XCTFail("accepted: \(text)", file: file, line: line)
        } catch {
            XCTAssertTrue(error.description.contains(want), "\(error.description) lacks \(want)", file: file, line: line)
        }
    }

    func testRefusals() {
        assertRefused(good.replacingOccurrences(of: "weight: 10", with: "weight: 20"), "weights must sum to 100, they sum to 110")
        assertRefused(good.replacingOccurrences(of: "subset: v2}\n      weight: 10", with: "subset: v3}\n      weight: 10"), "no DestinationRule defines subset \"v3\"")
        assertRefused(good.replacingOccurrences(of: "timeout: 2s", with: "timeout: 2 seconds"), "spec.http[0].timeout: expected a duration")
        assertRefused(good.replacingOccurrences(of: "retryOn: \"5xx,", with: "retryOn: \"5xx,bogus,"), "unknown retry condition \"bogus\"")
        assertRefused(good.replacingOccurrences(of: "uri: {prefix: /api}", with: "uri: {prefix: /api, exact: /x}"), "exactly one of exact, prefix or regex")
        assertRefused(good.replacingOccurrences(of: "uri: {prefix: /api}", with: "uri: {regex: \"([a-z\"}"), "invalid regular expression")
        assertRefused(good.replacingOccurrences(of: "timeout: 2s", with: "timeout: 2s\n    timout: 3s"), "spec.http[0].timout: unknown field")
        assertRefused(good.replacingOccurrences(of: "kind: DestinationRule", with: "kind: EnvoyFilter"), "unknown kind \"EnvoyFilter\"")
        assertRefused(good.replacingOccurrences(of: "simple: LEAST_REQUEST", with: "simple: FASTEST"), "expected ROUND_ROBIN, LEAST_REQUEST or RANDOM")
        assertRefused(good.replacingOccurrences(of: "httpStatus: 503", with: "httpStatus: 99"), "httpStatus: must be between 200 and 599")
        assertRefused(good.replacingOccurrences(of: "- name: v2\n    labels: {version: v2}", with: "- name: v1\n    labels: {version: v2}"), "duplicate subset \"v1\"")
        let dr = good.components(separatedBy: "---\n")[1]
        assertRefused(good + "\n---\n" + dr.replacingOccurrences(of: "{name: reviews}", with: "{name: reviews2}"), "already has DestinationRule")
        assertRefused(good + "\n---\n" + dr, "document 3: metadata.name: a second DestinationRule default/reviews")
    }

    // MARK: Istio fields: honoured or refused by name, never parsed and dropped

    /// The exact error for `text` (nil when it was accepted).
    func refusal(_ text: String) -> String? {
        do { _ = try IstioTraffic.parse(text, file: "bad.yaml"); return nil } catch { return error.description }
    }

    func testHonouredIstioFieldsKeepTheirValues() throws {
        let text = good
            .replacingOccurrences(of: "rewrite: {uri: /v2/api}", with: "rewrite: {uri: /v2/api, authority: reviews.internal:9080}")
            .replacingOccurrences(of: "retryOn: \"5xx,connect-failure,refused-stream\"", with: "retryOn: \"retriable-headers,5xx\"")
            .replacingOccurrences(of: "tcp: {maxConnections: 100}", with: "tcp: {maxConnections: 100, connectTimeout: 250ms}")
            .replacingOccurrences(of: "maxRetries: 3}", with: "maxRetries: 3, idleTimeout: 2s, maxRequestsPerConnection: 2}")
        let c = try IstioTraffic.parse(text, file: "t.yaml")
        let r = c.virtualServices[0].http[0]
        XCTAssertEqual(r.rewriteAuthority, "reviews.internal:9080")
        XCTAssertEqual(r.rewriteURI, "/v2/api")
        XCTAssertEqual(r.retries?.retryOn, ["retriable-headers", "5xx"])
        let tp = try XCTUnwrap(c.destinationRules[0].trafficPolicy)
        XCTAssertEqual(tp.connectTimeout, 250_000_000)
        XCTAssertEqual(tp.idleTimeout, 2_000_000_000)
        XCTAssertEqual(tp.maxRequestsPerConnection, 2)
        XCTAssertEqual(tp.maxConnections, 100)
        // Absent: nil, so the cluster keeps its defaults.
        let plain = try IstioTraffic.parse(good, file: "t.yaml")
        XCTAssertNil(plain.virtualServices[0].http[0].rewriteAuthority)
        XCTAssertNil(plain.destinationRules[0].trafficPolicy?.connectTimeout)
        XCTAssertNil(plain.destinationRules[0].trafficPolicy?.idleTimeout)
        XCTAssertNil(plain.destinationRules[0].trafficPolicy?.maxRequestsPerConnection)
    }

    func testHonouredIstioFieldsRefuseBadValues() {
        XCTAssertEqual(refusal(good.replacingOccurrences(of: "rewrite: {uri: /v2/api}", with: "rewrite: {authority: \"a b\"}")),
                       "bad.yaml:28: document 1: spec.http[0].rewrite.authority: expected a host name such as reviews.example.com or reviews:9080, got \"a b\"")
        XCTAssertEqual(refusal(good.replacingOccurrences(of: "tcp: {maxConnections: 100}", with: "tcp: {connectTimeout: 0s}")),
                       "bad.yaml:40: document 2: spec.trafficPolicy.connectionPool.tcp.connectTimeout: must be greater than zero")
        XCTAssertEqual(refusal(good.replacingOccurrences(of: "maxRetries: 3}", with: "maxRetries: 3, idleTimeout: soon}")),
                       "bad.yaml:41: document 2: spec.trafficPolicy.connectionPool.http.idleTimeout: expected a duration such as 500ms, 10s, 5m or 24h, got the value \"soon\"")
        XCTAssertEqual(refusal(good.replacingOccurrences(of: "maxRetries: 3}", with: "maxRetries: 3, maxRequestsPerConnection: -1}")),
                       "bad.yaml:41: document 2: spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection: must be between 0 and 536870912, got -1")
    }

    func testUnimplementedIstioFieldsAreRefusedByName() {
        let cases: [(String, String)] = [
            (good.replacingOccurrences(of: "hosts: [reviews]", with: "hosts: [reviews]\n  exportTo: [\".\"]"),
             "bad.yaml:6: document 1: spec.exportTo: not supported yet"),
            (good.replacingOccurrences(of: "retryOn: \"5xx,connect-failure,refused-stream\"", with: "retryRemoteLocalities: true"),
             "bad.yaml:19: document 1: spec.http[0].retries.retryRemoteLocalities: not supported yet"),
            (good.replacingOccurrences(of: "subset: v2}\n      weight: 10", with: "subset: v2}\n      weight: 10\n      headers: {request: {set: {x-a: b}}}"),
             "bad.yaml:18: document 1: spec.http[0].route[1].headers: not supported yet"),
            (good.replacingOccurrences(of: "method: {exact: GET}", with: "method: {exact: GET}\n      name: by-user"),
             "bad.yaml:13: document 1: spec.http[0].match[0].name: not supported yet"),
            (good.replacingOccurrences(of: "host: reviews.default.svc.cluster.local", with: "host: reviews.default.svc.cluster.local\n  exportTo: [\"*\"]"),
             "bad.yaml:37: document 2: spec.exportTo: not supported yet"),
            (good.replacingOccurrences(of: "labels: {version: v2}", with: "labels: {version: v2}\n    trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}"),
             "bad.yaml:48: document 2: spec.subsets[1].trafficPolicy.connectionPool: not supported yet"),
            (good.replacingOccurrences(of: "labels: {version: v2}", with: "labels: {version: v2}\n    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}"),
             "bad.yaml:48: document 2: spec.subsets[1].trafficPolicy.outlierDetection: not supported yet"),
        ]
        for (text, want) in cases { XCTAssertEqual(refusal(text), want) }
        // A subset may still choose its load balancer.
        XCTAssertNil(refusal(good.replacingOccurrences(of: "labels: {version: v2}", with: "labels: {version: v2}\n    trafficPolicy: {loadBalancer: {simple: RANDOM}}")))
    }

    func testUnimplementedServiceEntryFieldsAreRefusedByName() {
        let se = """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: ext}
        spec:
          hosts: [ext.example.com]
          ports:
          - {number: 80, name: http, protocol: HTTP}
          location: MESH_EXTERNAL
          resolution: STATIC
          endpoints:
          - address: 10.0.0.1
        """
        XCTAssertNil(refusal(se))
        XCTAssertNil(refusal(se + "\n  addresses: [240.0.0.1, \"2001:db8::1\"]"))
        let cases: [(String, String)] = [
            (se + "\n  exportTo: [\".\"]", "bad.yaml:12: document 1: spec.exportTo: not supported yet"),
            // Single addresses are accepted (the host's VIPs); a CIDR is refused by name.
            (se + "\n  addresses: [240.0.0.0/24]", "bad.yaml:12: document 1: spec.addresses[0]: CIDR ranges are not supported as addresses; give single IPv4 or IPv6 addresses, got \"240.0.0.0/24\""),
            (se + "\n  addresses: [240.0.0.1, ext.example.com]", "bad.yaml:12: document 1: spec.addresses[1]: expected an IPv4 or IPv6 address, got \"ext.example.com\""),
            (se.replacingOccurrences(of: "protocol: HTTP}", with: "protocol: HTTP, targetPort: 8080}"),
             "bad.yaml:7: document 1: spec.ports[0].targetPort: not supported yet"),
            (se + "\n    network: net1", "bad.yaml:12: document 1: spec.endpoints[0].network: not supported yet"),
            (se + "\n    locality: us/east", "bad.yaml:12: document 1: spec.endpoints[0].locality: not supported yet"),
            (se + "\n    weight: 3", "bad.yaml:12: document 1: spec.endpoints[0].weight: not supported yet"),
        ]
        for (text, want) in cases { XCTAssertEqual(refusal(text), want) }
        // What a ServiceEntry would mean differently per namespace, or could not be honoured.
        let shapes: [(String, String)] = [
            (se.replacingOccurrences(of: "hosts: [ext.example.com]", with: "hosts: [ext]"),
             "bad.yaml:5: document 1: spec.hosts[0]: expected a fully qualified lowercase host name such as api.example.com, got \"ext\""),
            (se.replacingOccurrences(of: "hosts: [ext.example.com]", with: "hosts: [Ext.example.com]"),
             "bad.yaml:5: document 1: spec.hosts[0]: expected a fully qualified lowercase host name such as api.example.com, got \"Ext.example.com\""),
            (se.replacingOccurrences(of: "protocol: HTTP}", with: "protocol: HTTPS}"),
             "bad.yaml:7: document 1: spec.ports[0].protocol: expected HTTP (endpoints reached over HTTP/1.1) or TCP (carried as bytes), got \"HTTPS\""),
            (se.replacingOccurrences(of: "protocol: HTTP}", with: "protocol: HTTP}\n  - {number: 81, name: admin}"),
             "bad.yaml:8: document 1: spec.ports[1].number: a second port is not supported yet"),
            (se + "\n    ports: {metrics: 9090}",
             "bad.yaml:11: document 1: spec.endpoints[0].ports.metrics: no port of this ServiceEntry is named \"metrics\" (ports: http)"),
        ]
        for (text, want) in shapes { XCTAssertEqual(refusal(text), want) }
        let we = """
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: vm1}
        spec:
          address: 10.0.0.2
          locality: us/east
        """
        XCTAssertEqual(refusal(we), "bad.yaml:6: document 1: spec.locality: not supported yet")
    }

    /// Istio fields we never read are refused generically, naming the field.
    func testOtherIstioFieldsAreUnknownFields() {
        for (from, to, path) in [
            ("rewrite: {uri: /v2/api}", "rewrite: {uri: /v2/api, uriRegexRewrite: {match: a, rewrite: b}}", "spec.http[0].rewrite.uriRegexRewrite"),
            ("timeout: 2s", "timeout: 2s\n    corsPolicy: {allowOrigins: [{exact: x}]}", "spec.http[0].corsPolicy"),
            ("timeout: 2s", "timeout: 2s\n    mirrors: [{destination: {host: reviews}}]", "spec.http[0].mirrors"),
            ("simple: LEAST_REQUEST}", "simple: LEAST_REQUEST}\n    tls: {mode: ISTIO_MUTUAL}", "spec.trafficPolicy.tls"),
            ("tcp: {maxConnections: 100}", "tcp: {maxConnections: 100, tcpKeepalive: {time: 10s}}", "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive"),
        ] {
            let err = refusal(good.replacingOccurrences(of: from, with: to)) ?? "accepted"
            XCTAssertTrue(err.contains(": \(path): unknown field (known fields here: "), err)
        }
    }
}
