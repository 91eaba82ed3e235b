import XCTest
import MeshCore
import MeshConfig
@testable import MeshProxy
#if canImport(Glibc)
import Glibc
#endif

/// Access-log lines through the whole proxy (`ProxyHarness`, a static bootstrap with
/// `spec.accessLog` and a Telemetry in the same file): Envoy's default text format field by field,
/// escaping, the filter on a local reply, the JSON line when no Telemetry decides; and the
/// `%START_TIME%` formatter on its own.
final class AccessLogFormatTests: XCTestCase {
    private var logPath = ""

    override func setUp() {
        var t = Array("/tmp/accesslog-XXXXXX".utf8CString)
        logPath = String(cString: mkdtemp(&t)!) + "/access.log"
    }

    override func tearDown() {
        unlink(logPath)
        rmdir((logPath as NSString).deletingLastPathComponent)
    }

    private func telemetry(_ body: String) -> String {
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: logs}\nspec:\n" + body
    }

    private func harness(_ docs: [String]) throws -> ProxyHarness {
        try startHarness(clusters: [HarnessCluster(name: "web")], documents: docs,
                         outboundExtra: "  accessLog: {path: \(logPath)}")
    }

    /// The log's lines once `n` are there (the writer thread drains the workers' pipes).
    private func lines(_ n: Int) throws -> [String] {
        let deadline = Date().addingTimeInterval(5)
        var got: [String] = []
        while Date() < deadline {
            got = ((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            if got.count >= n { return got }
            usleep(20_000)
        }
        XCTFail("expected \(n) lines, got \(got)")
        return got
    }

    func testEnvoyTextFormat() throws {
        let h = try harness([telemetry("  accessLogging: [{providers: [{name: envoy}]}]\n")])
        h.upstream("web").script(UpstreamAnswer(headers: [("x-envoy-upstream-service-time", "7")], body: "hello"))
        let c = try h.connect()
        try c.write("GET /a/b?secret=1 HTTP/1.1\r\nHost: web\r\nUser-Agent: agent \"q\" \\ x\r\nX-Forwarded-For: 10.0.0.1\r\nX-Request-Id: rid-1\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200)
        let line = try XCTUnwrap(try lines(1).first)
        let port = h.upstream("web").port
        // [START] "METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION UPSTREAM-SERVICE-TIME "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM"
        let re = try NSRegularExpression(pattern: #"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /a/b HTTP/1\.1" 200 - (\d+) (\d+) \d+ 7 "10\.0\.0\.1" "agent \\x22q\\x22 \\x5c x" "rid-1" "web" "127\.0\.0\.1:(\d+)"$"#)
        let m = try XCTUnwrap(re.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)), line)
        XCTAssertEqual(Int((line as NSString).substring(with: m.range(at: 3))), port, line)
        XCTAssertGreaterThan(Int((line as NSString).substring(with: m.range(at: 2)))!, 5, "bytes sent count the body")
        // The line's time is now (UTC).
        let stamp = String(line.dropFirst().prefix(19))
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
        let when = try XCTUnwrap(f.date(from: stamp), stamp)
        XCTAssertLessThan(abs(when.timeIntervalSinceNow), 5)
    }

    /// The app answers an `x-envoy-upstream-service-time` that would add fields to the unquoted
    /// part of the line: it is written as `-`, the line keeps its fields.
    func testAppCannotInjectFieldsThroughUpstreamServiceTime() throws {
        let h = try harness([telemetry("  accessLogging: [{providers: [{name: envoy}]}]\n")])
        h.upstream("web").script(UpstreamAnswer(headers: [("x-envoy-upstream-service-time", "7 \"10.9.9.9\" \"fake-agent")], body: "x"))
        h.upstream("web").script(UpstreamAnswer(headers: [("x-envoy-upstream-service-time", "12a")], body: "x"))
        let c = try h.connect()
        try c.write("GET /one HTTP/1.1\r\nHost: web\r\nX-Request-Id: r1\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200)
        try c.write("GET /two HTTP/1.1\r\nHost: web\r\nX-Request-Id: r2\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200)
        let got = try lines(2)
        let re = try NSRegularExpression(pattern: #"^\[[^\]]+\] "GET /(one|two) HTTP/1\.1" 200 - \d+ \d+ \d+ - "-" "-" "r[12]" "web" "[^"]+"$"#)
        for line in got {
            XCTAssertNotNil(re.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)), line)
            XCTAssertFalse(line.contains("fake-agent"), line)
        }
    }

    /// The unquoted method and path (as an HTTP/2 request could carry them) escape spaces, so
    /// neither can add a field; the quoted fields keep theirs.
    func testTextEscapesSpacesWhereUnquoted() {
        func esc(_ s: String, space: Bool) -> String {
            let o = ByteBuffer(capacity: 64)
            let b = Array(s.utf8)
            b.withUnsafeBufferPointer { ExchangeLog.text(o, $0.baseAddress!, b.count, space: space) }
            return String(decoding: UnsafeBufferPointer(start: o.readPointer, count: o.readableBytes), as: UTF8.self)
        }
        XCTAssertEqual(esc("/a b\"c", space: true), #"/a\x20b\x22c"#)
        XCTAssertEqual(esc("agent 1.0", space: false), "agent 1.0")
    }

    func testFilterKeepsTheLocalReplyOnlyAndAbsentValuesAreDashes() throws {
        let h = try harness([telemetry("  accessLogging:\n  - filter: {expression: \"response.code >= 400 && response.flags == 'NR'\"}\n")])
        let c = try h.connect()
        try c.write("GET / HTTP/1.1\r\nHost: web\r\nX-Request-Id: ok\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200)
        try c.write("GET /nowhere HTTP/1.1\r\nHost: unknown-host\r\nX-Request-Id: nr\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 404)
        // A third request that is logged proves the first was filtered out, not late.
        try c.write("GET /again HTTP/1.1\r\nHost: unknown-host\r\nX-Request-Id: nr2\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 404)
        let got = try lines(2)
        XCTAssertEqual(got.count, 2, "\(got)")
        XCTAssertTrue(got[0].contains(#""GET /nowhere HTTP/1.1" 404 NR "#), got[0])
        XCTAssertTrue(got[0].contains(#" - "-" "-" "nr" "unknown-host" "-""#), got[0])
        XCTAssertTrue(got[1].contains(#""nr2""#), got[1])
    }

    func testWithoutTelemetryTheStaticJSONLineStays() throws {
        let h = try harness([])
        let c = try h.connect()
        try c.write("GET /j HTTP/1.1\r\nHost: web\r\nX-Request-Id: j1\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200)
        let line = try XCTUnwrap(try lines(1).first)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], line)
        XCTAssertEqual(obj["request_id"] as? String, "j1")
        XCTAssertEqual(obj["response_code"] as? Int, 200)
        let f = ISO8601DateFormatter()
        let start = try XCTUnwrap(f.date(from: obj["start_time"] as? String ?? ""), line)
        XCTAssertLessThan(abs(start.timeIntervalSinceNow), 5)
        let ms = try XCTUnwrap(obj["start_time_ms"] as? Int)
        XCTAssertEqual(ms / 1000, Int(start.timeIntervalSince1970))
    }

    func testJSONProviderAndDisabled() throws {
        let both = telemetry("  accessLogging:\n  - providers: [{name: envoy-json}, {name: envoy}]\n")
        let h = try harness([both])
        let c = try h.connect()
        try c.write("GET /j HTTP/1.1\r\nHost: web\r\nX-Request-Id: j2\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200)
        let got = try lines(2)
        XCTAssertEqual(got.count, 2)
        XCTAssertTrue(got[0].hasPrefix("{") && got[0].contains(#""request_id":"j2""#), got[0])
        XCTAssertTrue(got[1].hasPrefix("[") && got[1].contains(#""j2""#), got[1])
    }

    func testAStaticTelemetryWithoutAnAccessLogPathIsRefused() {
        let text = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        spec:
          workload: {service: s}
          outbound: {port: 15001}
          clusters: [{name: web, tls: DISABLE, endpoints: [127.0.0.1:1]}]
          routes: [{name: web, hosts: [web], cluster: web}]
        ---
        """ + "\n" + telemetry("  accessLogging: [{}]\n")
        XCTAssertThrowsError(try Bootstrap.parse(text, file: "s.yaml")) { e in
            XCTAssertTrue("\(e)".contains("Telemetry default/logs: spec.accessLogging"), "\(e)")
            XCTAssertTrue("\(e)".contains("spec.accessLog"), "\(e)")
        }
    }

    func testTCPConnectionsAreLoggedInBothFormats() throws {
        let srv = try RawTCPServer { fd in
            let (got, e) = Raw.readToEnd(fd)
            guard e == 0 else { return }
            _ = Raw.writeAll(fd, Array("got \(got.count)\n".utf8))
        }
        defer { srv.stop() }
        let h = try startHarness(clusters: [HarnessCluster(name: "cache", endpoints: [.port(srv.port)], extra: "      serviceProtocol: TCP"),
                                            HarnessCluster(name: "web")],
                                 documents: [telemetry("  accessLogging: [{providers: [{name: envoy}, {name: envoy-json}]}]\n")],
                                 outboundExtra: "  accessLog: {path: \(logPath)}")
        let (c, head) = try Raw.connectThrough(port: h.outboundPort, target: "cache:6379")
        XCTAssertTrue(head.hasPrefix("HTTP/1.1 200"), head)
        XCTAssertTrue(Raw.writeAll(c.fd, Array("hello".utf8)))
        shutdown(c.fd, Int32(SHUT_WR))
        XCTAssertEqual(String(decoding: Raw.readToEnd(c.fd).bytes, as: UTF8.self), "got 5\n")
        let got = try lines(2)
        let text = try XCTUnwrap(got.first { $0.hasPrefix("[") })
        XCTAssertTrue(text.contains(#"] "- - -" 0 - 5 6 "#), text)
        XCTAssertTrue(text.hasSuffix(#" - "-" "-" "-" "-" "127.0.0.1:\#(srv.port)""#), text)
        let json = try XCTUnwrap(got.first { $0.hasPrefix("{") })
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any], json)
        XCTAssertEqual(obj["protocol"] as? String, "TCP")
        XCTAssertEqual(obj["direction"] as? String, "outbound")
        XCTAssertEqual(obj["bytes_received"] as? Int, 5)
        XCTAssertEqual(obj["bytes_sent"] as? Int, 6)
        XCTAssertEqual(obj["upstream"] as? String, "127.0.0.1:\(srv.port)")
        let start = try XCTUnwrap(obj["start_time"] as? String)
        XCTAssertEqual(start.count, 20, "seconds, as the HTTP JSON line: \(start)")
    }

    func testSamplingKeepsErrorsAndDropsTheRest() throws {
        // A share so small that none of 40 successful requests is kept (1 in 25,000 odds).
        let h = try startHarness(clusters: [HarnessCluster(name: "web")], documents: [telemetry("  accessLogging: [{}]\n")],
                                 outboundExtra: "  accessLog: {path: \(logPath), sampling: 0.000001}")
        let c = try h.connect()
        for i in 0..<40 {
            try c.write("GET / HTTP/1.1\r\nHost: web\r\nX-Request-Id: ok-\(i)\r\n\r\n")
            XCTAssertEqual(try c.readResponse().status, 200)
        }
        try c.write("GET / HTTP/1.1\r\nHost: nowhere\r\nX-Request-Id: err\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 404)
        let got = try lines(1)
        XCTAssertEqual(got.count, 1, "\(got)")
        XCTAssertTrue(got[0].contains(#""err""#), got[0])
    }

    func testStartTime() {
        func stamp(_ ms: UInt64) -> String {
            let b = ByteBuffer(capacity: 64)
            ExchangeLog.appendTime(b, ms * 1_000_000 + 999_999)
            return String(decoding: UnsafeBufferPointer(start: b.readPointer, count: b.readableBytes), as: UTF8.self)
        }
        XCTAssertEqual(stamp(0), "1970-01-01T00:00:00.000Z")
        let b = ByteBuffer(capacity: 64)
        ExchangeLog.appendTime(b, 951_782_400_123_000_000, millis: false)
        XCTAssertEqual(String(decoding: UnsafeBufferPointer(start: b.readPointer, count: b.readableBytes), as: UTF8.self), "2000-02-29T00:00:00Z")
        XCTAssertEqual(stamp(951_782_400_123), "2000-02-29T00:00:00.123Z")
        XCTAssertEqual(stamp(1_796_604_746_905), "2026-12-07T00:52:26.905Z")
        XCTAssertEqual(stamp(4_102_444_799_999), "2099-12-31T23:59:59.999Z")
        XCTAssertEqual(stamp(1_709_164_800_050), "2024-02-29T00:00:00.050Z")
    }
}
