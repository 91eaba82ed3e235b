import XCTest
import MeshCore
@testable import MeshConfig

/// Static mode with Istio traffic documents beside the Bootstrap: what is read, and each class
/// of inconsistency between the two refused with file, document, path and what was expected.
final class StaticTrafficTests: XCTestCase {
    static let base = """
    apiVersion: sidecar.mesh/v1alpha1
    kind: Bootstrap
    metadata: {name: front}
    spec:
      workload: {service: productpage}
      outbound: {port: 15001}
      clusters:
        - name: reviews
          tls: DISABLE
          endpoints:
            - address: 127.0.0.1:9081
              labels: {version: v1}
            - address: 127.0.0.1:9082
              labels: {version: v2, track: canary}
            - 127.0.0.1:9083
        - name: ratings
          tls: DISABLE
          endpoints: [127.0.0.1:9090]
      routes:
        - hosts: [ratings]
          cluster: ratings
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews.default.svc.cluster.local]
      http:
      - name: api
        match:
        - uri: {regex: "/api/v[0-9]+/.*"}
          method: {exact: POST}
        - headers:
            end-user: {prefix: "jason"}
        route:
        - destination: {host: reviews, subset: v1}
          weight: 75
        - destination: {host: reviews.default, subset: v2}
          weight: 25
        retries: {attempts: 4, perTryTimeout: 300ms, retryOn: "gateway-error,reset,409"}
        mirror: {host: ratings}
        mirrorPercentage: {value: 12.5}
      - route:
        - destination: {host: reviews}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      trafficPolicy:
        loadBalancer: {simple: RANDOM}
        connectionPool:
          tcp: {maxConnections: 7}
          http: {http1MaxPendingRequests: 3, http2MaxRequests: 50, maxRetries: 2}
        outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 34}
      subsets:
      - name: v1
        labels: {version: v1}
      - name: v2
        labels: {version: v2}
        trafficPolicy:
          loadBalancer: {simple: LEAST_REQUEST}
    """

    func testReadsTrafficDocumentsBesideTheBootstrap() throws {
        let b = try Bootstrap.parse(Self.base, file: "front.yaml")
        XCTAssertEqual(b.clusters[0].endpoints.count, 3)
        XCTAssertEqual(b.clusters[0].endpointLabels[1].map { "\($0.0)=\($0.1)" }, ["version=v2", "track=canary"])
        XCTAssertTrue(b.clusters[0].endpointLabels[2].isEmpty)
        XCTAssertEqual(b.traffic.virtualServices.count, 1)
        let vs = b.traffic.virtualServices[0]
        XCTAssertEqual(vs.http[0].match.count, 2)
        XCTAssertEqual(vs.http[0].match[0].uri?.kind, .regex)
        XCTAssertEqual(vs.http[0].match[0].method?.value, "POST")
        XCTAssertEqual(vs.http[0].match[1].headers[0].name, "end-user")
        XCTAssertEqual(vs.http[0].retries?.retryOn, ["gateway-error", "reset", "409"])
        XCTAssertEqual(vs.http[0].retries?.perTryTimeout, 300_000_000)
        XCTAssertEqual(vs.http[0].mirror?.host, "ratings")
        XCTAssertEqual(vs.http[0].mirrorPercent, 12.5)
        XCTAssertEqual(Bootstrap.routeLabel(vs, 0), "reviews.api")
        XCTAssertEqual(Bootstrap.routeLabel(vs, 1), "reviews.1")
        let tp = b.traffic.destinationRules[0].trafficPolicy!
        XCTAssertEqual(tp.loadBalancer, .random)
        XCTAssertEqual(tp.maxConnections, 7)
        XCTAssertEqual(tp.http1MaxPendingRequests, 3)
        XCTAssertEqual(tp.http2MaxRequests, 50)
        XCTAssertEqual(tp.maxRetries, 2)
        XCTAssertEqual(tp.consecutive5xxErrors, 3)
        XCTAssertEqual(tp.consecutiveGatewayErrors, 2)
        XCTAssertEqual(tp.baseEjectionTime, 2_000_000_000)
        XCTAssertEqual(tp.maxEjectionPercent, 34)
        XCTAssertEqual(b.traffic.destinationRules[0].subsets[1].trafficPolicy?.loadBalancer, .leastRequest)
        XCTAssertEqual(b.clusterIndex(forHost: "reviews.default.svc.cluster.local"), 0)
        XCTAssertEqual(b.clusterIndex(forHost: "ratings.default"), 1)
        XCTAssertNil(b.clusterIndex(forHost: "ratings.prod"))
    }

    func testAVirtualServiceAloneRoutesTheOutboundListener() throws {
        let t = Self.base.replacingOccurrences(of: "  routes:\n    - hosts: [ratings]\n      cluster: ratings\n", with: "")
        let b = try Bootstrap.parse(t, file: "front.yaml")
        XCTAssertTrue(b.routes.isEmpty)
        XCTAssertEqual(b.traffic.virtualServices.count, 1)
    }

    private func refused(_ text: String, _ want: [String], file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try Bootstrap.parse(text, file: "front.yaml")
            XCTFail("accepted", file: file, line: line)
        } catch {
            XCTAssertTrue(error.description.hasPrefix("front.yaml"), "\(error)", file: file, line: line)
            for w in want { XCTAssertTrue(error.description.contains(w), "'\(error)' lacks '\(w)'", file: file, line: line) }
        }
    }

    private func replacing(_ a: String, _ b: String) -> String {
        XCTAssertTrue(Self.base.contains(a), "fixture lacks \(a)")
        return Self.base.replacingOccurrences(of: a, with: b)
    }

    func testRefusesDestinationsWithoutACluster() {
        refused(replacing("- destination: {host: reviews.default, subset: v2}", "- destination: {host: details, subset: v2}"),
                ["VirtualService default/reviews: spec.http[0].route[1].destination", "details"])
        refused(replacing("mirror: {host: ratings}", "mirror: {host: payments}"),
                ["spec.http[0].mirror.host", "no cluster serves host \"payments\""])
        refused(Self.base + "\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: pay}\nspec:\n  host: payments.prod\n",
                ["DestinationRule default/pay: spec.host", "no cluster serves host \"payments.prod\""])
    }

    func testRefusesHostsRoutedTwice() {
        refused(replacing("hosts: [reviews.default.svc.cluster.local]", "hosts: [ratings]"),
                ["spec.hosts[0]", "already routed by spec.routes[0]"])
        refused(replacing("hosts: [reviews.default.svc.cluster.local]", "hosts: [\"*.default.svc.cluster.local\"]"),
                ["wildcard hosts are not supported"])
    }

    func testRefusesBadRouteNamesAndSubsets() {
        refused(replacing("- name: api", "- name: \"api v1\""), ["spec.http[0].name", "expected letters, digits"])
        refused(replacing("- route:\n    - destination: {host: reviews}", "- name: api\n    route:\n    - destination: {host: reviews}"),
                ["route \"reviews.api\" is defined twice"])
        refused(replacing("- destination: {host: reviews, subset: v1}", "- destination: {host: reviews, subset: v9}"),
                ["no DestinationRule defines subset \"v9\""])
        refused(replacing("mirror: {host: ratings}", "mirror: {host: ratings, subset: blue}"),
                ["spec.http[0].mirror.subset", "no DestinationRule defines subset \"blue\""])
    }

    func testRefusesBadEndpointsAndKinds() {
        refused(replacing("- address: 127.0.0.1:9081", "- address: 127.0.0.1:99999"),
                ["spec.clusters[0].endpoints[0]", "expected IP:PORT"])
        refused(replacing("127.0.0.1:9081\n          labels: {version: v1}\n", "127.0.0.1:9081\n          labels: {version: v1}\n          weight: 3\n"),
                ["spec.clusters[0].endpoints[0].weight", "unknown field"])
        refused(replacing("kind: DestinationRule", "kind: EnvoyFilter"),
                ["document 3", "unknown kind \"EnvoyFilter\"", "Bootstrap", "VirtualService", "DestinationRule"])
        refused(replacing("uri: {regex: \"/api/v[0-9]+/.*\"}", "uri: {regex: \"/api/(v1\"}"),
                ["spec.http[0].match[0].uri.regex", "invalid regular expression"])
        refused(replacing("retryOn: \"gateway-error,reset,409\"", "retryOn: \"gateway-error,sometimes\""),
                ["unknown retry condition \"sometimes\""])
        refused(replacing("weight: 25", "weight: 30"), ["weights must sum to 100, they sum to 105"])
        refused(replacing("mirrorPercentage: {value: 12.5}", "mirrorPercentage: {value: 120}"), ["expected a percentage from 0 to 100"])
        refused(replacing("maxEjectionPercent: 34", "maxEjectionPercent: 340"), ["maxEjectionPercent: must be between 0 and 100"])
    }

    func testServiceEntriesBelongToMeshd() {
        let se = Self.base + "\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 80}]\n"
        refused(se, ["ServiceEntry default/ext", "applied through meshd", "declare a cluster"])
        refused(se.replacingOccurrences(of: "ports: [{number: 80}]", with: "ports: [{number: 80}]\n  resolution: DNS"), ["only STATIC resolution"])
    }
}
