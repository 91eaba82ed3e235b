import XCTest
import MeshCore
import MeshIO
@testable import MeshProxy
#if canImport(Glibc)
import Glibc
#endif

/// HTTP/1.1 exchanges through the whole proxy in-process (`ProxyHarness`: the outbound listener,
/// routing, the upstream pool, retries, local replies), driven by a raw socket client against
/// fake upstreams that record the bytes they receive. Each test asserts the exact bytes on both
/// sides, so that a rewrite of the request layer keeps today's behaviour.
final class ProxyExchangeTests: XCTestCase {

    // MARK: helpers

    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// `head` (ending in the blank line) with `x-request-id: id` added as its last field: the
    /// request as the proxy forwards it.
    private func withRequestID(_ head: String, _ id: String) -> String {
        precondition(head.hasSuffix("\r\n\r\n"))
        return String(decoding: head.utf8.dropLast(2), as: UTF8.self) + "x-request-id: \(id)\r\n\r\n"
    }

    /// A lowercase UUID version 4 (RFC 4122 variant), as the proxy generates.
    private func isUUIDv4(_ s: String) -> Bool {
        let hex = Set("0123456789abcdef")
        let parts = s.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
        guard parts.map(\.count) == [8, 4, 4, 4, 12], parts.allSatisfy({ $0.allSatisfy(hex.contains) }) else { return false }
        return parts[2].first == "4" && "89ab".contains(parts[3].first!)
    }

    private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

    // MARK: tests

    func testGetIsForwardedWithAGeneratedRequestIDAndTheAnswerComesBackAsSent() throws {
        let h = try startHarness(clusters: [HarnessCluster(name: "web")])
        let up = h.upstream("web")
        up.script(UpstreamAnswer(headers: [("x-up", "1"), ("Cache-Control", "no-store")], body: "hello"),
                  UpstreamAnswer(body: "again"),
                  UpstreamAnswer(body: "kept"))
        let c = try h.connect()
        let get = "GET /path/x?q=1&r=%20 HTTP/1.1\r\nHost: web\r\nUser-Agent: raw-test\r\nAccept: */*\r\n\r\n"
        try c.write(get)
        let r = try c.readResponse()
        // Header names go out lowercase, as Envoy sends them; values and order are kept.
        XCTAssertEqual(text(r.raw), "HTTP/1.1 200 OK\r\nx-up: 1\r\ncache-control: no-store\r\ncontent-length: 5\r\n\r\nhello")

        let first = try XCTUnwrap(up.requests.first).message
        let id = try XCTUnwrap(first.value("x-request-id"))
        XCTAssertTrue(isUUIDv4(id), "x-request-id \(id) is not a UUID v4")
        XCTAssertEqual(first.values("x-request-id").count, 1)
        XCTAssertEqual(text(first.raw), withRequestID("GET /path/x?q=1&r=%20 HTTP/1.1\r\nhost: web\r\nuser-agent: raw-test\r\naccept: */*\r\n\r\n", id),
                       "the request was not forwarded as the header policy says (host first, names lowercase, order kept)")

        // Each request gets its own id.
        try c.write(get)
        XCTAssertEqual(try c.readResponse().bodyText, "again")
        let second = try XCTUnwrap(up.requests.last).message
        let id2 = try XCTUnwrap(second.value("x-request-id"))
        XCTAssertTrue(isUUIDv4(id2))
        XCTAssertNotEqual(id2, id)

        // An id from the client is kept, and nothing is added.
        let withID = "GET /kept HTTP/1.1\r\nHost: web\r\nX-Request-Id: abc-123\r\n\r\n"
        try c.write(withID)
        XCTAssertEqual(try c.readResponse().bodyText, "kept")
        XCTAssertEqual(up.requests.count, 3)
        XCTAssertEqual(text(up.requests[2].message.raw), "GET /kept HTTP/1.1\r\nhost: web\r\nx-request-id: abc-123\r\n\r\n")
    }

    func testPostWithContentLengthArrivesIntact() throws {
        let h = try startHarness(clusters: [HarnessCluster(name: "web")])
        let up = h.upstream("web")
        up.script(UpstreamAnswer(status: 201, reason: "Created", body: "stored"))
        let body = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 % 251) }
        let head = "POST /upload HTTP/1.1\r\nHost: web\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
        let c = try h.connect()
        try c.write(bytes(head) + body)
        let r = try c.readResponse()
        XCTAssertEqual(text(r.raw), "HTTP/1.1 201 Created\r\ncontent-length: 6\r\n\r\nstored")
        let got = try XCTUnwrap(up.requests.first).message
        let id = try XCTUnwrap(got.value("x-request-id"))
        XCTAssertEqual(got.head, withRequestID("POST /upload HTTP/1.1\r\nhost: web\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\n", id))
        XCTAssertEqual(got.body.count, body.count)
        XCTAssertTrue(got.body == body, "the body arrived changed")
        XCTAssertEqual(up.requests.count, 1)
    }

    func testChunkedPostArrivesIntactWithItsTrailers() throws {
        let h = try startHarness(clusters: [HarnessCluster(name: "web")])
        let up = h.upstream("web")
        up.script(UpstreamAnswer(body: "got it"))
        let big = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 % 251) }
        let head = "POST /stream HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
        let framed = bytes("5;ext=1\r\nhello\r\n") + bytes(String(big.count, radix: 16) + "\r\n") + big + bytes("\r\n")
            + bytes("0\r\nx-sum: 70005\r\n\r\n")
        let c = try h.connect()
        // The head first, then the body in two writes, as a streaming client sends it.
        try c.write(head)
        usleep(20_000)
        try c.write(Array(framed[0..<1000]))
        usleep(20_000)
        try c.write(Array(framed[1000...]))
        XCTAssertEqual(text(try c.readResponse().raw), "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ngot it")
        let got = try XCTUnwrap(up.requests.first).message
        let id = try XCTUnwrap(got.value("x-request-id"))
        // The body crosses the exchange without its framing and goes out chunked again (chunk
        // sizes are the proxy's; extensions are dropped, as Envoy does); the trailer is kept.
        XCTAssertEqual(got.head, "POST /stream HTTP/1.1\r\nhost: web\r\nx-request-id: \(id)\r\ntransfer-encoding: chunked\r\n\r\n")
        XCTAssertTrue(got.body == bytes("hello") + big, "the chunked body arrived changed")
        let rawTail = Array(got.rawBody.suffix(21))
        XCTAssertEqual(text(rawTail), "\r\n0\r\nx-sum: 70005\r\n\r\n", "the trailer was not forwarded in the last chunk")
        XCTAssertFalse(text(got.rawBody).contains(";ext=1"))
    }

    func testVirtualServiceMatchesSendEachRequestToItsDestination() throws {
        let vs = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: web}
        spec:
          hosts: [web]
          http:
          - name: api
            match:
            - uri: {prefix: /api/}
            - headers:
                x-canary: {exact: "yes"}
            route:
            - destination: {host: api}
          - name: site
            route:
            - destination: {host: web}
        """
        let h = try startHarness(clusters: [HarnessCluster(name: "web", routed: false), HarnessCluster(name: "api", routed: false)],
                                 documents: [vs])
        let (web, api) = (h.upstream("web"), h.upstream("api"))
        web.setDefault(UpstreamAnswer(body: "from web"))
        api.setDefault(UpstreamAnswer(body: "from api"))
        let c = try h.connect()
        let cases: [(String, [String], String)] = [
            ("/api/items", [], "from api"),
            ("/index.html", [], "from web"),
            ("/api", [], "from web"),                    // a prefix is not matched by its stem
            ("/other", ["x-canary: yes"], "from api"),
            ("/other", ["x-canary: yess"], "from web"),  // exact means exact
            ("/API/items", [], "from web"),              // prefixes are case-sensitive
        ]
        for (path, extra, want) in cases {
            try c.write("GET \(path) HTTP/1.1\r\nHost: web\r\n" + extra.map { $0 + "\r\n" }.joined() + "\r\n")
            XCTAssertEqual(try c.readResponse().bodyText, want, "\(path) \(extra)")
        }
        XCTAssertEqual(api.requests.map { $0.message.target }, ["/api/items", "/other"])
        XCTAssertEqual(web.requests.map { $0.message.target }, ["/index.html", "/api", "/other", "/API/items"])
        // The destination's own host is not routed: only the VirtualService's host is.
        try c.write("GET /api/items HTTP/1.1\r\nHost: api\r\n\r\n")
        let r = try c.readResponse()
        XCTAssertEqual(r.status, 404)
        XCTAssertEqual(r.value("x-mesh-response-flags"), "NR")
        XCTAssertEqual(api.requests.count, 2)
    }

    func testRetryOn503HidesTheFailureOnlyWhereTheRouteAsksForIt() throws {
        let vs = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: web}
        spec:
          hosts: [web]
          http:
          - name: main
            route:
            - destination: {host: web}
            retries: {attempts: 2, retryOn: 5xx}
        """
        let h = try startHarness(clusters: [HarnessCluster(name: "web", routed: false), HarnessCluster(name: "plain")], documents: [vs])
        let (web, plain) = (h.upstream("web"), h.upstream("plain"))
        web.script(UpstreamAnswer(status: 503, reason: "Service Unavailable", body: "busy"), UpstreamAnswer(body: "ok"))
        plain.script(UpstreamAnswer(status: 503, reason: "Service Unavailable", body: "busy"), UpstreamAnswer(body: "ok"))
        let c = try h.connect()
        let post = "POST /r HTTP/1.1\r\nHost: web\r\nContent-Length: 7\r\n\r\n"
        try c.write(post + "payload")
        XCTAssertEqual(text(try c.readResponse().raw), "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        XCTAssertEqual(web.requests.count, 2, "the 503 was not retried once")
        if web.requests.count == 2 {
            // The retry is the same request, x-request-id and body included.
            let first = web.requests[0].message
            let id = try XCTUnwrap(first.value("x-request-id"))
            XCTAssertEqual(text(first.raw), withRequestID("POST /r HTTP/1.1\r\nhost: web\r\ncontent-length: 7\r\n\r\n", id) + "payload")
            XCTAssertEqual(text(web.requests[1].message.raw), text(first.raw), "the retry differs from the first attempt")
        }
        XCTAssertEqual(h.counter(.retriesStatus), 1)
        // A route without retries on 5xx hands the 503 to the client as the upstream sent it.
        try c.write("GET /r HTTP/1.1\r\nHost: plain\r\n\r\n")
        XCTAssertEqual(text(try c.readResponse().raw), "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
        XCTAssertEqual(plain.requests.count, 1)
        XCTAssertEqual(h.counter(.retriesStatus), 1)
    }

    func testAnUnknownHostGets404NRAndTheConnectionServesTheNextRequest() throws {
        let h = try startHarness(clusters: [HarnessCluster(name: "web")])
        let up = h.upstream("web")
        up.script(UpstreamAnswer(body: "served"))
        let c = try h.connect()
        try c.write("GET / HTTP/1.1\r\nHost: nosuch\r\n\r\n")
        XCTAssertEqual(text(try c.readResponse().raw),
                       "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 23\r\nx-mesh-response-flags: NR\r\n\r\nno route for this host\n")
        try c.write("GET /next HTTP/1.1\r\nHost: web\r\n\r\n")
        XCTAssertEqual(try c.readResponse().bodyText, "served")
        XCTAssertEqual(up.requests.map { $0.message.target }, ["/next"], "the upstream must see the routed request only")
        XCTAssertEqual(h.counter(.noRoute), 1)
        // With a body the proxy did not read, it answers and closes instead.
        try c.write("POST /x HTTP/1.1\r\nHost: nosuch\r\nContent-Length: 5\r\n\r\nhello")
        XCTAssertEqual(text(try c.readResponse().raw),
                       "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 23\r\nx-mesh-response-flags: NR\r\nconnection: close\r\n\r\nno route for this host\n")
        XCTAssertTrue(try c.closedByPeer(), "the connection stayed open after connection: close")
        XCTAssertEqual(up.requests.count, 1)
    }

    func testARequestNoRouteOfTheHostMatchesGets404NR() throws {
        let vs = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: web}
        spec:
          hosts: [web]
          http:
          - match:
            - uri: {prefix: /only}
            route:
            - destination: {host: web}
        """
        let h = try startHarness(clusters: [HarnessCluster(name: "web", routed: false)], documents: [vs])
        let c = try h.connect()
        try c.write("GET /elsewhere HTTP/1.1\r\nHost: web\r\n\r\n")
        XCTAssertEqual(text(try c.readResponse().raw),
                       "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 30\r\nx-mesh-response-flags: NR\r\n\r\nno route matched this request\n")
        try c.write("GET /only/this HTTP/1.1\r\nHost: web\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200)
        XCTAssertEqual(h.upstream("web").requests.map { $0.message.target }, ["/only/this"])
    }

    func testAnUpstreamRefusingConnectionsGives503UFAfterTwoConnectRetries() throws {
        let h = try startHarness(clusters: [HarnessCluster(name: "down", endpoints: [.refusing])])
        let c = try h.connect()
        let uf = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 23\r\nx-mesh-response-flags: UF\r\n\r\nupstream connect error\n"
        let t0 = Clock.monotonicNanos()
        try c.write("GET / HTTP/1.1\r\nHost: down\r\n\r\n")
        XCTAssertEqual(text(try c.readResponse().raw), uf)
        XCTAssertLessThan(Clock.monotonicNanos() - t0, 2_000_000_000, "the connect retries took too long")
        XCTAssertEqual(h.counter(.upstreamConnectFailures), 3, "the attempt and two default retries")
        XCTAssertEqual(h.counter(.retries), 2)
        // The connection stays usable: the next request is answered the same way.
        try c.write("GET /again HTTP/1.1\r\nHost: down\r\n\r\n")
        XCTAssertEqual(text(try c.readResponse().raw), uf)
        XCTAssertEqual(h.counter(.upstreamConnectFailures), 6)
    }

    func testAKeepAliveConnectionCarriesTwoRequestsOnOnePooledUpstreamConnection() throws {
        let h = try startHarness(clusters: [HarnessCluster(name: "web")])
        let up = h.upstream("web")
        up.script(UpstreamAnswer(body: "first"), UpstreamAnswer(headers: [("x-n", "2")], body: "second", framing: .chunked))
        let c = try h.connect()
        try c.write("GET /1 HTTP/1.1\r\nHost: web\r\n\r\n")
        XCTAssertEqual(text(try c.readResponse().raw), "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
        try c.write("GET /2 HTTP/1.1\r\nHost: web\r\n\r\n")
        XCTAssertEqual(text(try c.readResponse().raw), "HTTP/1.1 200 OK\r\nx-n: 2\r\ntransfer-encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\n\r\n")
        XCTAssertEqual(up.requests.map { $0.message.target }, ["/1", "/2"])
        XCTAssertEqual(up.requests.map(\.connection), [0, 0], "the second request did not reuse the pooled connection")
        XCTAssertEqual(up.connections, 1)
        XCTAssertEqual(h.counter(.downstreamConnectionsTotal), 1)
        XCTAssertEqual(h.counter(.requestsTotal), 2)
    }

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        let h = try startHarness(clusters: [HarnessCluster(name: "web")])
        let up = h.upstream("web")
        // The first answer is slow: the second must still come after it.
        up.script(UpstreamAnswer(body: "one", delayMillis: 150), UpstreamAnswer(body: "two"))
        let c = try h.connect()
        try c.write("GET /1 HTTP/1.1\r\nHost: web\r\n\r\nGET /2 HTTP/1.1\r\nHost: web\r\n\r\n")
        XCTAssertEqual(text(try c.readResponse().raw), "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none")
        XCTAssertEqual(text(try c.readResponse().raw), "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo")
        let reqs = up.requests
        XCTAssertEqual(reqs.map { $0.message.target }, ["/1", "/2"])
        if reqs.count == 2 {
            XCTAssertGreaterThanOrEqual(reqs[1].receivedAt, reqs[0].answeredAt, "the second request went upstream before the first was answered")
            XCTAssertEqual(reqs.map(\.connection), [0, 0])
        }
    }

    func testTearDownFreesEveryPortAndSocket() throws {
        let before = ProxyHarness.openSockets()
        let h = try ProxyHarness.start(clusters: [HarnessCluster(name: "web"), HarnessCluster(name: "down", endpoints: [.refusing])])
        let c = try h.connect()
        try c.write("GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200)
        let ports = [h.outboundPort, h.adminPort, h.upstream("web").port]
        h.stop()
        XCTAssertTrue(try c.closedByPeer(), "the proxy did not close the client's idle connection when it stopped")
        c.close()
        for p in ports {
            let fd = Socket.listen(SocketAddress(host: "127.0.0.1", port: p)!, reusePort: false)
            XCTAssertGreaterThanOrEqual(fd, 0, "port \(p) is still held after tear-down")
            if fd >= 0 { Glibc.close(fd) }
        }
        XCTAssertEqual(ProxyHarness.openSockets().subtracting(before), [], "sockets left open after tear-down")
        h.stop()   // idempotent
    }

    func testAConfigTheSidecarRefusesFailsTheStartAndLeavesNothingBehind() throws {
        let before = ProxyHarness.openSockets()
        let dirsBefore = ProxyHarness.harnessDirectories()
        let bad = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: web}
        spec:
          hosts: [web]
          http:
          - route:
            - destination: {host: nowhere}
        """
        XCTAssertThrowsError(try ProxyHarness.start(clusters: [HarnessCluster(name: "web", routed: false)], documents: [bad])) { e in
            XCTAssertTrue("\(e)".contains("nowhere"), "\(e)")
        }
        XCTAssertEqual(ProxyHarness.openSockets().subtracting(before), [], "a failed start left its upstream's sockets open")
        XCTAssertEqual(ProxyHarness.harnessDirectories().subtracting(dirsBefore), [], "a failed start left its config behind")
    }
}
