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
        assertRefused(good.replacingOccurrences(of: "kind: DestinationRule", with: "kind: Gateway"), "unknown kind \"Gateway\"")
        assertRefused(good.replacingOccurrences(of: "simple: LEAST_REQUEST", with: "simple: FASTEST"), "expected ROUND_ROBIN, LEAST_REQUEST or RANDOM")
        assertRefused(good.replacingOccurrences(of: "httpStatus: 503", with: "httpStatus: 99"), "httpStatus: must be between 200 and 599")
        assertRefused(good.replacingOccurrences(of: "- name: v2\n    labels: {version: v2}", with: "- name: v1\n    labels: {version: v2}"), "duplicate subset \"v1\"")
        let dr = good.components(separatedBy: "---\n")[1]
        assertRefused(good + "\n---\n" + dr.replacingOccurrences(of: "{name: reviews}", with: "{name: reviews2}"), "already has DestinationRule")
        assertRefused(good + "\n---\n" + dr, "document 3: metadata.name: a second DestinationRule default/reviews")
    }
}
