import XCTest
import MeshCore
import MeshConfig
import MeshIO
@testable import MeshProxy
#if canImport(Glibc)
import Glibc
#endif

/// A raw TCP server on 127.0.0.1 (kernel-chosen port) for TCP services: each accepted
/// connection is handed to `handler` (blocking socket) on its own thread. Stopped on `stop()`.
final class RawTCPServer: @unchecked Sendable {
    let fd: Int32
    let port: Int
    private let handler: @Sendable (Int32) -> Void
    private var thread: pthread_t?
    private let stopped = Locked(false)

    init(_ handler: @escaping @Sendable (Int32) -> Void) throws {
        let (fd, port) = try ProxyHarness.refusingPort()
        guard listen(fd, 64) == 0 else { Glibc.close(fd); throw WireError.system("listen", errno) }
        self.fd = fd
        self.port = port
        self.handler = handler
        thread = Threads.spawn(name: "raw server") { [self] in self.acceptLoop() }
    }

    private func acceptLoop() {
        while !stopped.withLock({ $0 }) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 20) <= 0 { continue }
            let c = accept(fd, nil, nil)
            if c < 0 { continue }
            let h = handler
            _ = Threads.spawn(name: "raw conn") { h(c); Glibc.close(c) }
        }
    }

    func stop() {
        stopped.withLock { $0 = true }
        if let t = thread { Threads.join(t); thread = nil }
        Glibc.close(fd)
    }
}

/// Blocking socket helpers for the raw side of these tests (every wait bounded).
enum Raw {
    static func readSome(_ fd: Int32, max: Int = 65_536, timeoutMillis: Int32 = 5_000) -> (bytes: [UInt8], error: Int32) {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, timeoutMillis) <= 0 { return ([], ETIMEDOUT) }
        var buf = [UInt8](repeating: 0, count: max)
        let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, max) }
        if n < 0 { return ([], errno) }
        return (Array(buf[0..<n]), 0)
    }

    /// Reads to end of stream: the bytes and 0, or the bytes so far and the error (a reset).
    static func readToEnd(_ fd: Int32, timeoutMillis: Int32 = 5_000) -> (bytes: [UInt8], error: Int32) {
        var out: [UInt8] = []
        while true {
            let (b, e) = readSome(fd, timeoutMillis: timeoutMillis)
            if e != 0 { return (out, e) }
            if b.isEmpty { return (out, 0) }
            out += b
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }

    static func resetClose(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    }

    /// `CONNECT target` on the proxy's outbound port: the socket and the response head.
    static func connectThrough(port: Int, target: String) throws -> (WireSocket, String) {
        let s = try WireSocket.connect(port: port)
        try s.write("CONNECT \(target) HTTP/1.1\r\nHost: \(target)\r\n\r\n")
        var head: [UInt8] = []
        while !(head.count >= 4 && Array(head.suffix(4)) == Array("\r\n\r\n".utf8)) {
            let (b, e) = readSome(s.fd, max: 1)
            if e != 0 || b.isEmpty { break }
            head += b
        }
        return (s, String(decoding: head, as: UTF8.self))
    }
}

func bytePattern(_ n: Int, seed: Int = 0) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: ($0 &* 31 &+ seed) % 251) } }

/// The TCP proxy on real sockets through the sidecar's own static config (`ProxyHarness`): a
/// CONNECT to a TCP service carried both ways with both half-closes, refusals of hosts that are
/// not TCP services, connect retries past a refusing endpoint, a reset passed on and counted,
/// the idle timeout, and the capture entry point (`startTCPProxy`) passing through to a plain
/// address with the bytes already read going first.
final class TCPProxyTests: XCTestCase {
    private var servers: [RawTCPServer] = []
    private var harness: ProxyHarness?

    override func tearDown() {
        harness?.stop()
        for s in servers { s.stop() }
        servers = []
    }

    private func server(_ h: @escaping @Sendable (Int32) -> Void) throws -> RawTCPServer {
        let s = try RawTCPServer(h)
        servers.append(s)
        return s
    }

    private func start(_ endpoints: [HarnessEndpoint], clusterExtra: String = "", documents: [String] = []) throws -> ProxyHarness {
        let h = try ProxyHarness.start(clusters: [
            HarnessCluster(name: "cache", endpoints: endpoints, extra: "      serviceProtocol: TCP" + clusterExtra),
            HarnessCluster(name: "web"),
        ], documents: documents)
        harness = h
        return h
    }

    private func prometheus(_ h: ProxyHarness) throws -> String {
        let a = try WireSocket.connect(port: h.adminPort)
        try a.write("GET /stats/prometheus HTTP/1.1\r\nHost: admin\r\n\r\n")
        return String(decoding: try a.readResponse().body, as: UTF8.self)
    }

    func testConnectCarriesBytesBothWaysWithHalfCloseEachWay() throws {
        // The server reads to the caller's FIN, then answers (its own FIN after the answer).
        let srv = try server { fd in
            let (got, e) = Raw.readToEnd(fd)
            guard e == 0 else { return }
            let ok = got == bytePattern(1 << 20)
            _ = Raw.writeAll(fd, Array("got \(got.count) \(ok ? "intact" : "damaged")\n".utf8) + bytePattern(1 << 20, seed: 7))
        }
        let h = try start([.port(srv.port)])
        let (c, head) = try Raw.connectThrough(port: h.outboundPort, target: "cache:6379")
        XCTAssertTrue(head.hasPrefix("HTTP/1.1 200"), head)
        XCTAssertTrue(Raw.writeAll(c.fd, bytePattern(1 << 20)))
        shutdown(c.fd, Int32(SHUT_WR))
        let (reply, e) = Raw.readToEnd(c.fd)
        XCTAssertEqual(e, 0, "the answer after our FIN did not end cleanly")
        let line = "got 1048576 intact\n"
        XCTAssertEqual(String(decoding: reply.prefix(line.utf8.count), as: UTF8.self), line)
        XCTAssertTrue(Array(reply.dropFirst(line.utf8.count)) == bytePattern(1 << 20, seed: 7), "the answer arrived damaged (\(reply.count) bytes)")
        XCTAssertTrue(tcpWait(timeoutMillis: 2_000) { (try? self.prometheus(h).contains("istio_tcp_connections_closed_total{")) ?? false })
        let text = try prometheus(h)
        let sent = text.split(separator: "\n").first { $0.hasPrefix("istio_tcp_sent_bytes_total{") && $0.contains("request_protocol=\"tcp\"") }
        let received = text.split(separator: "\n").first { $0.hasPrefix("istio_tcp_received_bytes_total{") && $0.contains("request_protocol=\"tcp\"") }
        XCTAssertEqual(sent?.split(separator: " ").last, "\(line.utf8.count + (1 << 20))")
        XCTAssertEqual(received?.split(separator: " ").last, "\(1 << 20)")
        XCTAssertTrue(received?.contains("destination_service=\"cache.default.svc.cluster.local\"") ?? false, "\(received ?? "")")
    }

    func testConnectToAHostOutsideTheMeshIs404NRAndToAnHTTPServiceIs405() throws {
        let srv = try server { _ in }
        let h = try start([.port(srv.port)])
        let (a, headA) = try Raw.connectThrough(port: h.outboundPort, target: "nowhere:6379")
        XCTAssertTrue(headA.hasPrefix("HTTP/1.1 404"), headA)
        XCTAssertTrue(headA.lowercased().contains("x-mesh-response-flags: nr"), headA)
        _ = a
        let (b, headB) = try Raw.connectThrough(port: h.outboundPort, target: "web:80")
        XCTAssertTrue(headB.hasPrefix("HTTP/1.1 405"), headB)
        _ = b
        let (c, headC) = try Raw.connectThrough(port: h.outboundPort, target: "cache")
        XCTAssertTrue(headC.hasPrefix("HTTP/1.1 400"), headC)
        _ = c
    }

    func testAConnectRetryReachesTheSecondEndpointWhenTheFirstRefuses() throws {
        let echo = try server { fd in
            let (b, _) = Raw.readSome(fd)
            _ = Raw.writeAll(fd, b)
        }
        let h = try start([.refusing, .port(echo.port)])
        for i in 0..<6 {
            let (c, head) = try Raw.connectThrough(port: h.outboundPort, target: "cache.default.svc.cluster.local:6379")
            XCTAssertTrue(head.hasPrefix("HTTP/1.1 200"), "connection \(i): \(head)")
            XCTAssertTrue(Raw.writeAll(c.fd, Array("ping \(i)".utf8)))
            XCTAssertEqual(String(decoding: Raw.readSome(c.fd).bytes, as: UTF8.self), "ping \(i)")
        }
        XCTAssertGreaterThan(h.counter(.upstreamConnectFailures), 0, "the refusing endpoint was never tried")
    }

    func testNoEndpointConnectingAnswers503UF() throws {
        let h = try start([.refusing, .refusing])
        let (_, head) = try Raw.connectThrough(port: h.outboundPort, target: "cache:6379")
        XCTAssertTrue(head.hasPrefix("HTTP/1.1 503"), head)
        XCTAssertTrue(head.lowercased().contains("x-mesh-response-flags: uf"), head)
        XCTAssertEqual(h.counter(.upstreamConnectFailures), 3, "three connect attempts by default")
        let closed = try prometheus(h).split(separator: "\n").filter { $0.hasPrefix("istio_tcp_connections_closed_total{") && !$0.hasSuffix(" 0") }
        XCTAssertEqual(closed.count, 1, "\(closed)")
        XCTAssertTrue(closed.first?.contains("response_flags=\"UF\"") ?? false, "\(closed)")
        XCTAssertTrue(closed.first?.hasSuffix(" 1") ?? false, "\(closed)")
    }

    func testAnUpstreamResetMidStreamResetsTheCallerAndIsCountedUC() throws {
        let srv = try server { fd in
            _ = Raw.writeAll(fd, Array("partial".utf8))
            usleep(100_000)
            Raw.resetClose(fd)
        }
        let h = try start([.port(srv.port)])
        let (c, head) = try Raw.connectThrough(port: h.outboundPort, target: "cache:6379")
        XCTAssertTrue(head.hasPrefix("HTTP/1.1 200"), head)
        let (got, e) = Raw.readToEnd(c.fd)
        XCTAssertEqual(String(decoding: got, as: UTF8.self), "partial")
        XCTAssertEqual(e, ECONNRESET, "the caller saw a clean end, not a reset")
        XCTAssertTrue(tcpWait(timeoutMillis: 2_000) {
            (try? self.prometheus(h).split(separator: "\n").contains { $0.hasPrefix("istio_tcp_connections_closed_total{") && $0.contains("response_flags=\"UC\"") && $0.hasSuffix(" 1") }) ?? false
        }, "the reset was not counted with UC: \((try? self.prometheus(h).split(separator: "\n").filter { $0.hasPrefix("istio_tcp_connections_closed_total{") }) ?? [])")
    }

    func testIdleTimeoutClosesBothSides() throws {
        let serverSawEnd = Locked(Int64(-1))
        let srv = try server { fd in
            let t0 = Clock.monotonicNanos()
            _ = Raw.readToEnd(fd, timeoutMillis: 5_000)
            serverSawEnd.withLock { $0 = Int64(Clock.monotonicNanos() - t0) / 1_000_000 }
        }
        let dr = """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: cache}
        spec:
          host: cache
          trafficPolicy: {connectionPool: {tcp: {idleTimeout: 400ms}}}
        """
        let h = try start([.port(srv.port)], documents: [dr])
        let t0 = Clock.monotonicNanos()
        let (c, head) = try Raw.connectThrough(port: h.outboundPort, target: "cache:6379")
        XCTAssertTrue(head.hasPrefix("HTTP/1.1 200"), head)
        let (_, e) = Raw.readToEnd(c.fd, timeoutMillis: 5_000)
        let took = Int64(Clock.monotonicNanos() - t0) / 1_000_000
        XCTAssertEqual(e, 0)
        XCTAssertGreaterThanOrEqual(took, 380, "closed before the idle timeout")
        XCTAssertLessThan(took, 2_000, "not closed at the idle timeout")
        XCTAssertTrue(tcpWait(timeoutMillis: 2_000) { serverSawEnd.withLock { $0 } >= 0 }, "the upstream side stayed open")
    }

    func testStartTCPProxyPassesThroughWithTheInitialBytesFirst() throws {
        let srv = try server { fd in
            var got: [UInt8] = []
            while got.count < 10 { let (b, e) = Raw.readSome(fd); if e != 0 || b.isEmpty { break }; got += b }
            _ = Raw.writeAll(fd, Array("echo:".utf8) + got)
        }
        let yaml = """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: t}
        spec:
          workload: {service: t}
          outbound: {port: 15001}
          clusters: [{name: x, tls: DISABLE, endpoints: ["127.0.0.1:1"]}]
          routes: [{hosts: [x], cluster: x}]
        """
        let snap = try ProxySnapshot(bootstrap: try Bootstrap.parse(yaml, file: "t.yaml"), version: "1")
        let worker = Worker(id: 0, snapshot: snap)
        let t = Threads.spawn(name: "worker") { worker.loop.run() }
        defer { worker.loop.stop(); Threads.join(t) }
        // An accepted plaintext socket, as capture would hand it over.
        let (lfd, lport) = try ProxyHarness.refusingPort()
        defer { Glibc.close(lfd) }
        XCTAssertEqual(listen(lfd, 4), 0)
        let client = try WireSocket.connect(port: lport)
        let accepted = accept(lfd, nil, nil)
        XCTAssertGreaterThanOrEqual(accepted, 0)
        _ = fcntl(accepted, F_SETFL, fcntl(accepted, F_GETFL) | O_NONBLOCK)
        let dest = SocketAddress(host: "127.0.0.1", port: srv.port)!
        let started = Locked(false)
        worker.loop.post {
            let ok = Array("early".utf8).withUnsafeBytes { worker.startTCPProxy(fd: accepted, initial: $0, target: .passthrough(dest)) }
            started.withLock { $0 = ok }
        }
        XCTAssertTrue(tcpWait(timeoutMillis: 2_000) { started.withLock { $0 } })
        XCTAssertTrue(Raw.writeAll(client.fd, Array("-late".utf8)))
        XCTAssertEqual(String(decoding: Raw.readSome(client.fd).bytes, as: UTF8.self), "echo:early-late")
    }
}

/// Polls `condition` every 10 ms until it holds or `timeoutMillis` pass.
func tcpWait(timeoutMillis: Int, _ condition: () -> Bool) -> Bool {
    let end = Clock.monotonicNanos() + UInt64(timeoutMillis) * 1_000_000
    while Clock.monotonicNanos() < end { if condition() { return true }; usleep(10_000) }
    return condition()
}
