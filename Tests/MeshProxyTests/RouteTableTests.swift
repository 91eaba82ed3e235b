import XCTest
import MeshCore
@testable import MeshConfig
import MeshHTTP
@testable import MeshProxy

/// The compiled route table: subsets become endpoint sets, matches are tried in order, weights
/// split draws exactly, and retry conditions mean what Envoy's `retry_on` means.
final class RouteTableTests: XCTestCase {
    static let config = """
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
            - {address: 127.0.0.1:9081, labels: {version: v1}}
            - {address: 127.0.0.1:9082, labels: {version: v2}}
            - 127.0.0.1:9083
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
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
        - destination: {host: reviews, subset: v2}
          weight: 25
        retries: {attempts: 4, retryOn: "gateway-error,reset,409"}
        headers:
          request: {set: {x-route: api}, remove: [X-Debug]}
      - name: exact
        match:
        - uri: {exact: /exact}
        route:
        - destination: {host: reviews, subset: v2}
      - route:
        - destination: {host: reviews}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
    """

    struct Req: RoutableRequest {
        var method = "GET", path = "/", headers: [(String, String)] = []
        func withMethod<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
            let b = Array(method.utf8); return b.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
        }
        func withPath<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
            let b = Array(path.utf8); return b.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
        }
        func withHeader<R>(_ name: UnsafePointer<UInt8>, _ n: Int, _ body: (UnsafePointer<UInt8>, Int) -> R) -> R? {
            let want = Array(UnsafeBufferPointer(start: name, count: n))
            guard let v = headers.first(where: { Array($0.0.lowercased().utf8) == want })?.1 else { return nil }
            let b = Array(v.utf8) + [0]
            return b.withUnsafeBufferPointer { body($0.baseAddress!, $0.count - 1) }
        }
    }

    func snapshot() throws -> ProxySnapshot {
        try ProxySnapshot(bootstrap: Bootstrap.parse(Self.config, file: "t.yaml"), version: "t")
    }

    private func label(_ s: ProxySnapshot, _ r: Req) -> String {
        let host = Array("reviews".utf8)
        let v = host.withUnsafeBufferPointer { s.hosts.lookup($0.baseAddress!, $0.count) }
        XCTAssertGreaterThanOrEqual(v, 0)
        let (ri, _) = s.route(vhost: v, r)
        return ri < 0 ? "none" : s.routes[ri].label
    }

    func testSubsetsSelectEndpointsByLabel() throws {
        let s = try snapshot()
        let byName = Dictionary(uniqueKeysWithValues: s.targets.map { ($0.name, $0.endpoints) })
        XCTAssertEqual(byName["reviews/v1"], [0])
        XCTAssertEqual(byName["reviews/v2"], [1])
        XCTAssertEqual(byName["reviews"], [0, 1, 2])
    }

    func testFirstMatchWins() throws {
        let s = try snapshot()
        XCTAssertEqual(label(s, Req(method: "POST", path: "/api/v2/items")), "reviews.api")
        XCTAssertEqual(label(s, Req(method: "POST", path: "/api/v2/items?x=1")), "reviews.api", "regex ignores the query")
        XCTAssertEqual(label(s, Req(method: "GET", path: "/api/v2/items")), "reviews.2", "method must match too")
        XCTAssertEqual(label(s, Req(method: "GET", path: "/", headers: [("End-User", "jason-b")])), "reviews.api", "second match entry")
        XCTAssertEqual(label(s, Req(method: "GET", path: "/", headers: [("end-user", "json")])), "reviews.2")
        XCTAssertEqual(label(s, Req(path: "/exact")), "reviews.exact")
        XCTAssertEqual(label(s, Req(path: "/exact?q")), "reviews.exact", "exact ignores the query")
        XCTAssertEqual(label(s, Req(path: "/exact/more")), "reviews.2")
    }

    func testWeightsSplitExactly() throws {
        let s = try snapshot()
        let r = s.routes.first { $0.label == "reviews.api" }!
        var rng = FastRandom(seed: 42)
        var v1 = 0
        let n = 100_000
        for _ in 0..<n where s.targets[r.pickTarget(&rng)].name == "reviews/v1" { v1 += 1 }
        XCTAssertEqual(Double(v1) / Double(n), 0.75, accuracy: 0.01)
    }

    func testRetryConditions() throws {
        let s = try snapshot()
        let p = s.routes.first { $0.label == "reviews.api" }!.retry
        XCTAssertEqual(p.retries, 4)
        XCTAssertTrue(p.retries(status: 503, grpc: -1))
        XCTAssertTrue(p.retries(status: 409, grpc: -1))
        XCTAssertFalse(p.retries(status: 500, grpc: -1), "gateway-error is 502-504 only")
        XCTAssertTrue(p.onReset)
        XCTAssertTrue(p.onConnectFailure, "gateway-error includes connect failures")
        let d = s.routes.first { $0.label == "reviews.2" }!.retry
        XCTAssertEqual(d.retries, 2, "DESIGN §2 default")
        XCTAssertTrue(d.onConnectFailure)
        XCTAssertFalse(d.retries(status: 503, grpc: -1))
        XCTAssertFalse(d.onReset)
        let five = RetryPolicy(IstioTraffic.Retry(attempts: 1, perTryTimeout: nil, retryOn: ["5xx"]))
        XCTAssertTrue(five.retries(status: 500, grpc: -1))
        XCTAssertTrue(five.onReset && five.onRefusedStream && five.onTimeout)
        let grpc = RetryPolicy(IstioTraffic.Retry(attempts: 1, perTryTimeout: nil, retryOn: []))
        XCTAssertTrue(grpc.retries(status: 200, grpc: 14), "Istio's default retryOn includes unavailable")
        XCTAssertTrue(grpc.retries(status: 503, grpc: -1), "and 503")
    }

    func testHeaderOpsRemoveCaseInsensitively() throws {
        let s = try snapshot()
        let ops = s.routes.first { $0.label == "reviews.api" }!.requestOps
        for (name, removed) in [("x-debug", true), ("X-DEBUG", true), ("x-route", true), ("x-other", false)] {
            let b = Array(name.utf8)
            XCTAssertEqual(b.withUnsafeBufferPointer { ops.removes($0.baseAddress!, $0.count) }, removed, name)
        }
        XCTAssertEqual(ops.add.map { String(decoding: $0.name, as: UTF8.self) }, ["x-route"])
    }
}
