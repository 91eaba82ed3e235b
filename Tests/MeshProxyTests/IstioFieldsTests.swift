import XCTest
import MeshCore
@testable import MeshConfig
import MeshHTTP
@testable import MeshProxy

/// Istio fields that reach the compiled snapshot: `rewrite.authority` per route, the
/// DestinationRule's connect timeout, pool idle timeout and requests per connection per cluster,
/// and Envoy's `retriable-headers` matching.
final class IstioFieldsTests: XCTestCase {
    static func config(_ policy: String) -> String {
        """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: front}
        spec:
          workload: {service: productpage}
          outbound: {port: 15001}
          clusters:
            - name: reviews
              tls: DISABLE
              endpoints: [127.0.0.1:9081]
            - name: ratings
              tls: DISABLE
              connectTimeout: 3s
              endpoints: [127.0.0.1:9082]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - name: moved
            match:
            - uri: {prefix: /old}
            rewrite: {authority: reviews.internal:9080}
            retries: {attempts: 2, retryOn: retriable-headers}
            route:
            - destination: {host: reviews}
          - route:
            - destination: {host: reviews}
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews
        \(policy)
        """
    }

    func snapshot(_ policy: String) throws -> ProxySnapshot {
        try ProxySnapshot(bootstrap: Bootstrap.parse(Self.config(policy), file: "t.yaml"), version: "t")
    }

    func testDestinationRulePoolSettingsReachTheCluster() throws {
        let s = try snapshot("""
          trafficPolicy:
            connectionPool:
              tcp: {connectTimeout: 250ms}
              http: {idleTimeout: 2s, maxRequestsPerConnection: 2}
        """)
        let reviews = s.clusters.first { $0.name == "reviews" }!
        XCTAssertEqual(reviews.connectTimeout, 250_000_000)
        XCTAssertEqual(reviews.idleTimeout, 2_000_000_000)
        XCTAssertEqual(reviews.maxRequestsPerConnection, 2)
        // A cluster no DestinationRule names keeps its own settings.
        let ratings = s.clusters.first { $0.name == "ratings" }!
        XCTAssertEqual(ratings.connectTimeout, 3_000_000_000)
        XCTAssertEqual(ratings.idleTimeout, Bootstrap.Defaults.poolIdleTimeout)
        XCTAssertEqual(ratings.maxRequestsPerConnection, 0)
    }

    func testWithoutPoolSettingsTheDefaultsStay() throws {
        let s = try snapshot("  trafficPolicy: {loadBalancer: {simple: RANDOM}}")
        let reviews = s.clusters.first { $0.name == "reviews" }!
        XCTAssertEqual(reviews.connectTimeout, Bootstrap.Defaults.connectTimeout)
        XCTAssertEqual(reviews.idleTimeout, Bootstrap.Defaults.poolIdleTimeout)
        XCTAssertEqual(reviews.maxRequestsPerConnection, 0)
    }

    func testRewriteAuthorityAndRetriableHeadersAreCompiledPerRoute() throws {
        let s = try snapshot("  trafficPolicy: {loadBalancer: {simple: RANDOM}}")
        let moved = s.routes.first { $0.label == "reviews.moved" }!
        XCTAssertEqual(moved.rewriteAuthority.map { String(decoding: $0, as: UTF8.self) }, "reviews.internal:9080")
        XCTAssertTrue(moved.retry.on.contains(.retriableHeaders))
        XCTAssertFalse(moved.retry.retries(status: 503, grpc: -1), "retriable-headers alone does not retry on a status")
        let other = s.routes.first { $0.label == "reviews.1" }!
        XCTAssertNil(other.rewriteAuthority)
        XCTAssertFalse(other.retry.on.contains(.retriableHeaders))
    }

    func testRetriableHeaderNamesListMatching() {
        func lists(_ list: String, _ name: String) -> Bool {
            let l = Array(list.utf8), n = Array(name.utf8)
            return l.withUnsafeBufferPointer { lb in
                n.withUnsafeBufferPointer { nb in
                    RetriableHeaderNames.lists(lb.baseAddress ?? nb.baseAddress!, lb.count, nb.baseAddress ?? lb.baseAddress!, nb.count)
                }
            }
        }
        XCTAssertTrue(lists("x-retry-me", "x-retry-me"))
        XCTAssertTrue(lists("x-a, X-Retry-Me ,x-b", "x-retry-me"), "names are trimmed and compared in any case")
        XCTAssertTrue(lists("x-a,x-b", "X-B"))
        XCTAssertFalse(lists("x-retry-me", "x-retry"), "a prefix is not the name")
        XCTAssertFalse(lists("x-retry", "x-retry-me"))
        XCTAssertFalse(lists("", "x-a"))
        XCTAssertFalse(lists(" , ,", "x-a"))
        XCTAssertFalse(lists("x-a", ""))
    }
}
