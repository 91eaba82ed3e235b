import XCTest
import MeshCore
@testable import MeshConfig
import MeshHTTP
@testable import MeshProxy

/// The compiled match extras (queryParams, authority, port, scheme, withoutHeaders,
/// ignoreUriCase, sourceLabels/sourceNamespace decided at compile time), redirect Locations,
/// CORS origin checks and the shared token bucket.
final class RoutingMoreTests: XCTestCase {
    static let config = """
    apiVersion: sidecar.mesh/v1alpha1
    kind: Bootstrap
    metadata: {name: front, namespace: shop}
    spec:
      workload: {service: productpage, labels: {app: productpage, version: v1}}
      outbound: {port: 15001}
      clusters:
        - name: reviews
          tls: DISABLE
          endpoints: ["127.0.0.1:9081"]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews, namespace: shop}
    spec:
      hosts: [reviews]
      http:
      - name: not-me
        match: [{sourceLabels: {app: ratings}}, {sourceNamespace: other}]
        route: [{destination: {host: reviews}}]
      - name: me
        match: [{sourceLabels: {app: productpage}, headers: {x-who: {exact: me}}}, {sourceLabels: {app: ratings}, uri: {prefix: /}}]
        route: [{destination: {host: reviews}}]
      - name: query
        match: [{queryParams: {v: {exact: "2"}}}, {queryParams: {p: {prefix: "a%20"}}}, {queryParams: {r: {regex: "[0-9]+"}}}]
        route: [{destination: {host: reviews}}]
      - name: present
        match: [{queryParams: {flag: {exact: ""}}}]
        route: [{destination: {host: reviews}}]
      - name: authority
        match: [{authority: {exact: "reviews:9080"}}]
        route: [{destination: {host: reviews}}]
      - name: port
        match: [{port: 9090}]
        route: [{destination: {host: reviews}}]
      - name: without
        match: [{uri: {prefix: /w}, withoutHeaders: {x-skip: {exact: "1"}}}]
        route: [{destination: {host: reviews}}]
      - name: absent
        match: [{uri: {prefix: /a}, withoutHeaders: {x-skip: {prefix: ""}}}]
        route: [{destination: {host: reviews}}]
      - name: nocase
        match: [{uri: {prefix: /Case}, ignoreUriCase: true}, {uri: {exact: /Exact}, ignoreUriCase: true}]
        route: [{destination: {host: reviews}}]
      - name: scheme
        match: [{scheme: {exact: https}}]
        route: [{destination: {host: reviews}}]
      - name: fallback
        route: [{destination: {host: reviews}}]
    """

    struct Req: RoutableRequest {
        var path = "/", headers: [(String, String)] = [], authority = "reviews", servicePort = 80
        func withMethod<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
            let b = Array("GET".utf8); return b.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
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
        func withScheme<T>(_ body: (UnsafePointer<UInt8>, Int) -> T) -> T {
            let b = Array("http".utf8); return b.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
        }
        func withAuthority<T>(_ body: (UnsafePointer<UInt8>, Int) -> T) -> T {
            let b = Array(authority.utf8) + [0]; return b.withUnsafeBufferPointer { body($0.baseAddress!, $0.count - 1) }
        }
    }

    private func snapshot() throws -> ProxySnapshot {
        try ProxySnapshot(bootstrap: Bootstrap.parse(Self.config, file: "t.yaml"), version: "t")
    }

    private func label(_ s: ProxySnapshot, _ r: Req) -> String {
        let host = Array("reviews".utf8)
        let v = host.withUnsafeBufferPointer { s.hosts.lookup($0.baseAddress!, $0.count) }
        let (ri, _) = s.route(vhost: v, r)
        return ri < 0 ? "none" : String(s.routes[ri].label.split(separator: ".").last!)
    }

    func testSourceConditionsAreDecidedForThisWorkloadAtCompileTime() throws {
        let s = try snapshot()
        // "not-me" selects other callers only: dropped whole; "me" keeps its one entry for us.
        XCTAssertFalse(s.routes.contains { $0.label.hasSuffix(".not-me") || $0.label.hasSuffix(".0") }, s.routes.map(\.label).description)
        let me = try XCTUnwrap(s.routes.first { $0.label.hasSuffix(".me") })
        XCTAssertEqual(me.matches.count, 1)
        XCTAssertEqual(label(s, Req(headers: [("x-who", "me")])), "me")
        // The ratings entry (uri prefix /) was dropped, so a plain request falls through.
        XCTAssertEqual(label(s, Req(path: "/")), "fallback")
    }

    func testQueryParamsMatchTheFirstRawValue() throws {
        let s = try snapshot()
        XCTAssertEqual(label(s, Req(path: "/x?v=2")), "query")
        XCTAssertEqual(label(s, Req(path: "/x?a=1&v=2&v=3")), "query")
        XCTAssertEqual(label(s, Req(path: "/x?v=3&v=2")), "fallback", "the first value counts")
        XCTAssertEqual(label(s, Req(path: "/x?v=22")), "fallback")
        XCTAssertEqual(label(s, Req(path: "/x?vv=2")), "fallback")
        XCTAssertEqual(label(s, Req(path: "/x?p=a%20b")), "query", "raw, not decoded")
        XCTAssertEqual(label(s, Req(path: "/x?p=a%2520b")), "fallback")
        XCTAssertEqual(label(s, Req(path: "/x?p=a b")), "fallback", "a decoded value is not the raw one")
        XCTAssertEqual(label(s, Req(path: "/x?r=123")), "query")
        XCTAssertEqual(label(s, Req(path: "/x?r=12a")), "fallback", "regex matches the whole value")
        XCTAssertEqual(label(s, Req(path: "/x#v=2")), "fallback")
        XCTAssertEqual(label(s, Req(path: "/x?q=1#&v=2")), "fallback", "the fragment is not the query")
        // exact "" is presence: with or without a value, with or without '='.
        XCTAssertEqual(label(s, Req(path: "/x?flag")), "present")
        XCTAssertEqual(label(s, Req(path: "/x?flag=")), "present")
        XCTAssertEqual(label(s, Req(path: "/x?a=b&flag=on")), "present")
        XCTAssertEqual(label(s, Req(path: "/x?flags=on")), "fallback")
        XCTAssertEqual(label(s, Req(path: "/flag")), "fallback")
    }

    func testAuthorityPortAndScheme() throws {
        let s = try snapshot()
        XCTAssertEqual(label(s, Req(authority: "reviews:9080")), "authority")
        XCTAssertEqual(label(s, Req(authority: "reviews")), "fallback", "the authority is matched as sent, port included")
        XCTAssertEqual(label(s, Req(authority: "reviews:90800")), "fallback")
        XCTAssertEqual(label(s, Req(servicePort: 9090)), "port")
        XCTAssertEqual(label(s, Req(servicePort: 9091)), "fallback")
        XCTAssertEqual(label(s, Req()), "fallback", "plaintext requests are http, so scheme https does not match")
    }

    /// The pipeline's view of a request: `https` when it came over TLS (a gateway's
    /// TLS-terminating port), `http` on the plaintext outbound listener.
    func testSchemeIsHTTPSOverATerminatingPort() throws {
        let s = try snapshot()
        let host = Array("reviews".utf8)
        let v = host.withUnsafeBufferPointer { s.hosts.lookup($0.baseAddress!, $0.count) }
        func routed(_ view: HeadRequestView) -> String {
            let (ri, _) = s.route(vhost: v, view)
            return ri < 0 ? "none" : String(s.routes[ri].label.split(separator: ".").last!)
        }
        XCTAssertEqual(routed(HeadRequestView(head: MessageHead(), servicePort: 0, https: true)), "scheme")
        XCTAssertEqual(routed(HeadRequestView(head: MessageHead(), servicePort: 0, https: false)), "fallback")
        XCTAssertEqual(HeadRequestView(head: MessageHead(), https: true).withScheme { String(decoding: UnsafeBufferPointer(start: $0, count: $1), as: UTF8.self) }, "https")
    }

    func testWithoutHeadersIsEnvoysInvertedMatch() throws {
        let s = try snapshot()
        XCTAssertEqual(label(s, Req(path: "/w", headers: [("x-skip", "0")])), "without")
        XCTAssertEqual(label(s, Req(path: "/w", headers: [("x-skip", "1")])), "fallback")
        XCTAssertEqual(label(s, Req(path: "/w")), "fallback", "an inverted value match needs the header (Envoy)")
        XCTAssertEqual(label(s, Req(path: "/a")), "absent", "a catch-all inverted: the header is absent")
        XCTAssertEqual(label(s, Req(path: "/a", headers: [("x-skip", "")])), "fallback")
    }

    func testIgnoreUriCase() throws {
        let s = try snapshot()
        XCTAssertEqual(label(s, Req(path: "/CASE/x")), "nocase")
        XCTAssertEqual(label(s, Req(path: "/case")), "nocase")
        XCTAssertEqual(label(s, Req(path: "/cas")), "fallback")
        XCTAssertEqual(label(s, Req(path: "/eXACT?q=1")), "nocase")
        XCTAssertEqual(label(s, Req(path: "/exactly")), "fallback")
    }

    private func location(_ r: IstioTraffic.HTTPRedirect, authority: String, path: String, port: Int = 0) -> String {
        let d = DirectReply(redirect: r)
        let out = ByteBuffer(capacity: 256)
        let a = Array(authority.utf8) + [0], p = Array(path.utf8) + [0]
        a.withUnsafeBufferPointer { ab in p.withUnsafeBufferPointer { pb in
            d.appendLocation(out, authority: ab.baseAddress!, a.count - 1, path: pb.baseAddress!, p.count - 1, servicePort: port)
        } }
        return String(decoding: UnsafeBufferPointer(start: out.readPointer, count: out.readableBytes), as: UTF8.self)
    }

    func testRedirectLocations() {
        var r = IstioTraffic.HTTPRedirect()
        XCTAssertEqual(location(r, authority: "a:9080", path: "/p?q=1"), "http://a:9080/p?q=1")
        r.uri = "/new"
        XCTAssertEqual(location(r, authority: "a:9080", path: "/p?q=1"), "http://a:9080/new?q=1", "the query is kept")
        r.uri = "/new?x=2"
        XCTAssertEqual(location(r, authority: "a", path: "/p?q=1"), "http://a/new?x=2", "a uri with a query replaces it")
        r = IstioTraffic.HTTPRedirect()
        r.scheme = "https"
        XCTAssertEqual(location(r, authority: "a:80", path: "/"), "https://a/", "the old default port goes with the scheme")
        XCTAssertEqual(location(r, authority: "a:8080", path: "/"), "https://a:8080/")
        r.authority = "b.example"
        XCTAssertEqual(location(r, authority: "a:8080", path: "/x"), "https://b.example/x")
        r.port = 8443
        XCTAssertEqual(location(r, authority: "a:8080", path: "/x"), "https://b.example:8443/x")
        r.port = nil; r.derivePort = .fromRequestPort
        XCTAssertEqual(location(r, authority: "a:8080", path: "/x", port: 8080), "https://b.example:8080/x")
        r.derivePort = .fromProtocolDefault
        XCTAssertEqual(location(r, authority: "a:8080", path: "/x", port: 8080), "https://b.example/x")
    }

    func testCORSOrigins() {
        var p = IstioTraffic.CORSPolicy()
        p.allowOrigins = [.init(kind: .exact, value: "https://a.example"), .init(kind: .regex, value: "https://.*\\.b\\.example")]
        let c = CORSTable(p)
        func allows(_ o: String) -> Bool { let b = Array(o.utf8) + [0]; return b.withUnsafeBufferPointer { c.allows($0.baseAddress!, b.count - 1) } }
        XCTAssertTrue(allows("https://a.example"))
        XCTAssertFalse(allows("https://a.example.evil"))
        XCTAssertFalse(allows("http://a.example"))
        XCTAssertTrue(allows("https://x.b.example"))
        XCTAssertFalse(allows("https://b.example"))
        XCTAssertFalse(allows(""))
        p.allowOrigins = [.init(kind: .exact, value: "*")]
        XCTAssertTrue(CORSTable(p).allows(Array("https://any".utf8), 11), "an exact \"*\" allows every origin (Envoy)")
    }

    func testRateLimitsApplyToTheirRoutesForTheCallersTheySelect() throws {
        func limits(_ selector: String, routes: String = "") throws -> [String: Int] {
            let text = Self.config + """

            ---
            apiVersion: mesh.io/v1alpha1
            kind: LocalRateLimit
            metadata: {name: lim, namespace: shop}
            spec:
              virtualService: reviews
            \(routes)  \(selector)
              tokenBucket: {maxTokens: 5, fillInterval: 1s}
            """
            let s = try ProxySnapshot(bootstrap: Bootstrap.parse(text, file: "t.yaml"), version: "t")
            return Dictionary(uniqueKeysWithValues: s.routes.map { ($0.label, $0.rateLimiters.count) })
        }
        let mine = try limits("workloadSelector: {labels: {app: productpage}}", routes: "  routes: [query, port]\n")
        XCTAssertEqual(mine["reviews.query"], 1)
        XCTAssertEqual(mine["reviews.port"], 1)
        XCTAssertEqual(mine["reviews.fallback"], 0)
        XCTAssertEqual(try limits("workloadSelector: {labels: {app: ratings}}").values.reduce(0, +), 0, "another caller's limit")
        let all = try limits("")
        XCTAssertFalse(all.isEmpty)
        XCTAssertTrue(all.values.allSatisfy { $0 == 1 }, "no routes: every route of the VirtualService")
    }

    func testTokenBucketFillsByInterval() {
        let l = LocalRateLimiter(.init(maxTokens: 3, tokensPerFill: 2, fillInterval: 100), now: 1000)
        XCTAssertEqual((0..<5).filter { _ in l.tryTake(now: 1000) }.count, 3, "starts full")
        XCTAssertFalse(l.tryTake(now: 1099))
        XCTAssertTrue(l.tryTake(now: 1100)); XCTAssertTrue(l.tryTake(now: 1150)); XCTAssertFalse(l.tryTake(now: 1199))
        // Ten missed fills: at most a full bucket.
        XCTAssertEqual((0..<10).filter { _ in l.tryTake(now: 2200) }.count, 3)
        XCTAssertFalse(l.tryTake(now: 900), "a clock before the start adds nothing")
    }

    func testTokenBucketIsExactAcrossThreads() {
        // 8 threads take at once, over 20 fills: exactly max + fills * perFill tokens granted.
        let l = LocalRateLimiter(.init(maxTokens: 50, tokensPerFill: 7, fillInterval: 10), now: 0)
        struct Slots: @unchecked Sendable { let p = UnsafeMutablePointer<Int>.allocate(capacity: 8) }
        let slots = Slots()
        let granted = slots.p
        granted.initialize(repeating: 0, count: 8)
        defer { granted.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            var n = 0
            for step in 0..<20_000 { if l.tryTake(now: UInt64(step / 100)) { n += 1 } }   // now 0...199: fills 0...19
            slots.p[t] = n
        }
        XCTAssertEqual((0..<8).reduce(0) { $0 + granted[$1] }, 50 + 19 * 7)
    }
}
