import XCTest
import Foundation
import MeshCore
import MeshIO
@testable import MeshConfig
@testable import MeshProxy
#if canImport(Glibc)
import Glibc
#endif

/// The exporter's one POST: a collector that never answers costs at most the post's deadline and
/// counts as a failure, a non-2xx answer is a failure, a 2xx one a success; the request's body is
/// an `ExportTraceServiceRequest` wrapping the spans given.
final class TraceExporterTests: XCTestCase {
    /// A listening socket on 127.0.0.1 (kernel-chosen port).
    private func listener() -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 16)
        return (fd, Socket.localPort(fd))
    }

    /// Serves one connection: reads the request (head and content-length body), answers `answer`.
    private func serveOnce(_ fd: Int32, answer: String, got: @escaping @Sendable ([UInt8]) -> Void) -> Thread {
        let t = Thread {
            let c = accept(fd, nil, nil)
            guard c >= 0 else { return }
            var data: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, 65536, 0) }
                if n <= 0 { break }
                data += buf[0..<n]
                let text = String(decoding: data, as: UTF8.self)
                if let r = text.range(of: "\r\n\r\n") {
                    let head = String(text[..<r.lowerBound]).lowercased()
                    let cl = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                        .flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
                    if data.count >= text.utf8.distance(from: text.utf8.startIndex, to: r.upperBound.samePosition(in: text.utf8)!) + cl { break }
                }
            }
            got(data)
            var a = Array(answer.utf8)
            _ = a.withUnsafeMutableBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(c)
        }
        t.start()
        return t
    }

    private func body(_ spans: [[UInt8]]) -> ByteBuffer {
        let s = ByteBuffer(capacity: 1024)
        for sp in spans { sp.withUnsafeBufferPointer { TraceExporter.appendDelimited(s, field: 2, $0.baseAddress!, $0.count) } }
        let out = ByteBuffer(capacity: 1024)
        TraceExporter.encodeRequest(out, resource: TracingTable.keyValue(1, "service.name", "a.ns"), spans: s)
        return out
    }

    func testSilentCollectorTimesOutAsAFailure() {
        let (fd, port) = listener()       // accepts in the kernel's queue, never reads, never answers
        defer { close(fd) }
        let t0 = Clock.monotonicNanos()
        XCTAssertFalse(TraceExporter.post(OTLPEndpoint(host: "127.0.0.1", port: port, path: "/v1/traces"), body([[1, 2, 3]])))
        let ms = (Clock.monotonicNanos() - t0) / 1_000_000
        XCTAssertGreaterThanOrEqual(ms, 4900)      // the whole post's deadline (5 s)
        XCTAssertLessThan(ms, 6500)
    }

    func testNothingListeningIsAFailureAtOnce() {
        let (fd, port) = listener()
        close(fd)
        let t0 = Clock.monotonicNanos()
        XCTAssertFalse(TraceExporter.post(OTLPEndpoint(host: "127.0.0.1", port: port, path: "/v1/traces"), body([[1]])))
        XCTAssertLessThan((Clock.monotonicNanos() - t0) / 1_000_000, 1000)
    }

    func testAnswersAndTheRequestSent() {
        final class Box: @unchecked Sendable { var data: [UInt8] = [] }
        let (fd, port) = listener()
        defer { close(fd) }
        let e = OTLPEndpoint(host: "127.0.0.1", port: port, path: "/otlp/v1/traces")
        let box = Box()
        let done = expectation(description: "served")
        _ = serveOnce(fd, answer: "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n") { _ in done.fulfill() }
        XCTAssertFalse(TraceExporter.post(e, body([[0x0a, 0x01, 0x41]])))
        wait(for: [done], timeout: 5)
        let done2 = expectation(description: "served again")
        _ = serveOnce(fd, answer: "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n") { d in box.data = d; done2.fulfill() }
        XCTAssertTrue(TraceExporter.post(e, body([[0x0a, 0x01, 0x41], [0x0a, 0x01, 0x42]])))
        wait(for: [done2], timeout: 5)
        let text = String(decoding: box.data, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("POST /otlp/v1/traces HTTP/1.1\r\n"), text)
        XCTAssertTrue(text.contains("\r\nContent-Type: application/x-protobuf\r\n"), text)
        // ExportTraceServiceRequest{1: ResourceSpans{1: Resource{1: service.name}, 2: ScopeSpans{1: {1: "swift-mesh"}, 2: span, 2: span}}}
        let res = TracingTable.keyValue(1, "service.name", "a.ns")
        let scope: [UInt8] = [0x0a, 0x0c, 0x0a, 0x0a] + Array("swift-mesh".utf8)
        let spans: [UInt8] = [0x12, 0x03, 0x0a, 0x01, 0x41, 0x12, 0x03, 0x0a, 0x01, 0x42]
        let scopeSpans: [UInt8] = [0x12, UInt8(scope.count + spans.count)] + scope + spans
        let resource: [UInt8] = [0x0a, UInt8(res.count)] + res
        let rs: [UInt8] = resource + scopeSpans
        let expected: [UInt8] = [0x0a, UInt8(rs.count)] + rs
        XCTAssertEqual(Array(box.data.suffix(expected.count)), expected)
        XCTAssertTrue(text.contains("Content-Length: \(expected.count)\r\n"), text)
    }

    /// Accepts one connection, reads the request, then runs `then` on the connection (closed after).
    private func acceptOne(_ fd: Int32, then: @escaping @Sendable (Int32) -> Void) -> Thread {
        let t = Thread {
            let c = accept(fd, nil, nil)
            guard c >= 0 else { return }
            var buf = [UInt8](repeating: 0, count: 65536)
            var tv = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            while buf.withUnsafeMutableBytes({ recv(c, $0.baseAddress, 65536, 0) }) > 0 {}
            then(c)
            close(c)
        }
        t.start()
        return t
    }

    /// Reads one request: its head and its Content-Length body.
    static func readRequest(_ c: Int32) {
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, 65536, 0) }
            if n <= 0 { return }
            data += buf[0..<n]
            var i = 3
            while i < data.count && !(data[i] == 10 && data[i - 1] == 13 && data[i - 2] == 10 && data[i - 3] == 13) { i += 1 }
            if i >= data.count { continue }
            let head = String(decoding: data[0...i], as: UTF8.self).lowercased()
            guard let r = head.range(of: "content-length: ") else { return }
            let cl = Int(head[r.upperBound...].prefix { $0.isNumber }) ?? 0
            if data.count >= i + 1 + cl { return }
        }
    }

    private static func sendText(_ c: Int32, _ text: String) {
        var a = Array(text.utf8)
        _ = a.withUnsafeMutableBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// A collector trickling its answer (a byte every 1.5 s, each within the old per-step
    /// timeout) is cut at the post's deadline: the post fails in about 5 s, not when the
    /// collector is done.
    func testTricklingCollectorIsCutAtThePostDeadline() {
        let (fd, port) = listener()
        defer { close(fd) }
        _ = acceptOne(fd) { c in
            for ch in "HTTP/1.1 200 OK\r\nx-slow: abcdefgh".utf8 {
                var b = ch
                if send(c, &b, 1, Int32(MSG_NOSIGNAL)) != 1 { return }
                usleep(1_500_000)
                if ch == UInt8(ascii: "\n") { continue }
            }
        }
        let t0 = Clock.monotonicNanos()
        XCTAssertFalse(TraceExporter.post(OTLPEndpoint(host: "127.0.0.1", port: port, path: "/v1/traces"), body([[1]])))
        let ms = (Clock.monotonicNanos() - t0) / 1_000_000
        XCTAssertLessThan(ms, 6500)
    }

    /// A collector that answers 200 with its body and keeps the connection open: a success,
    /// at once (the answer is read up to its Content-Length, not to EOF).
    func testCollectorKeepingTheConnectionOpenSucceeds() {
        let (fd, port) = listener()
        defer { close(fd) }
        _ = acceptOne(fd) { c in
            TraceExporterTests.sendText(c, "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 2\r\n\r\nok")
            usleep(4_000_000)
        }
        let t0 = Clock.monotonicNanos()
        XCTAssertTrue(TraceExporter.post(OTLPEndpoint(host: "127.0.0.1", port: port, path: "/v1/traces"), body([[1]])))
        XCTAssertLessThan((Clock.monotonicNanos() - t0) / 1_000_000, 1000)
    }

    /// Each resolved address is tried in turn: the first refuses, the second answers.
    func testEachAddressIsTried() {
        let (dead, deadPort) = listener()
        close(dead)
        let (fd, port) = listener()
        defer { close(fd) }
        _ = acceptOne(fd) { c in TraceExporterTests.sendText(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") }
        let e = OTLPEndpoint(host: "127.0.0.1", port: port, path: "/v1/traces")
        let addresses = TraceExporter.resolve(OTLPEndpoint(host: "127.0.0.1", port: deadPort, path: "/")) + TraceExporter.resolve(e)
        XCTAssertEqual(addresses.count, 2)
        XCTAssertTrue(TraceExporter.post(e, body([[1]]), addresses, deadline: Clock.monotonicNanos() + 5_000_000_000))
    }

    private func options(_ port: Int, batch: Int, queue: Int, flush: UInt64 = 1_000_000_000) -> TraceExportOptions {
        var o = TraceExportOptions()
        o.endpoint = OTLPEndpoint(host: "127.0.0.1", port: port, path: "/v1/traces")
        o.batchSize = batch
        o.queueSize = queue
        o.flushInterval = flush
        return o
    }

    private func push(_ q: SpanQueue, _ byte: UInt8, count: Int) {
        for _ in 0..<count {
            guard let p = q.reserve() else { XCTFail("queue full"); return }
            p[0] = 0x0a; p[1] = 0x01; p[2] = byte
            q.publish(length: 3)
        }
    }

    /// Stopping while the collector trickles: the stop waits at most the post deadline (5 s).
    func testStopWaitsAtMostThePostDeadline() {
        let (fd, port) = listener()
        defer { close(fd) }
        final class Flag: @unchecked Sendable { var accepted = false }
        let flag = Flag()
        _ = acceptOne(fd) { c in
            flag.accepted = true
            for ch in "HTTP/1.1 200 OK\r\nx-slow: abcdefgh".utf8 {
                var b = ch
                if send(c, &b, 1, Int32(MSG_NOSIGNAL)) != 1 { return }
                usleep(1_500_000)
            }
        }
        let o = options(port, batch: 4, queue: 16)
        let e = TraceExporter(workers: 1, options: o)
        e.setTarget(endpoint: o.endpoint, resource: [])
        push(e.queues[0], 0x41, count: 4)
        XCTAssertTrue(e.start())
        let t0 = Clock.monotonicNanos()
        while !flag.accepted && Clock.monotonicNanos() - t0 < 3_000_000_000 { usleep(10_000) }
        XCTAssertTrue(flag.accepted)
        push(e.queues[0], 0x42, count: 4)      // a last batch waits too
        let t1 = Clock.monotonicNanos()
        e.stop()
        XCTAssertLessThan((Clock.monotonicNanos() - t1) / 1_000_000, 5600)
    }

    /// Full batches go one after another (no sleep between them): 100 batches of 16 in well
    /// under the 5 s that a 50 ms pause per batch would cost.
    func testFullBatchesGoWithoutPause() {
        let (fd, port) = listener()
        defer { close(fd) }
        final class Count: @unchecked Sendable { var posts = 0 }
        let count = Count()
        let server = Thread {
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { return }
                TraceExporterTests.readRequest(c)
                var a = Array("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".utf8)
                _ = a.withUnsafeMutableBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(c)
                count.posts += 1
            }
        }
        server.start()
        let o = options(port, batch: 16, queue: 2048)
        let e = TraceExporter(workers: 1, options: o)
        e.setTarget(endpoint: o.endpoint, resource: [])
        push(e.queues[0], 0x41, count: 1600)
        let before = TraceExporter.exported.load(ordering: .relaxed)
        let t0 = Clock.monotonicNanos()
        XCTAssertTrue(e.start())
        while TraceExporter.exported.load(ordering: .relaxed) - before < 1600 && Clock.monotonicNanos() - t0 < 10_000_000_000 { usleep(5_000) }
        let ms = (Clock.monotonicNanos() - t0) / 1_000_000
        e.stop()
        XCTAssertEqual(TraceExporter.exported.load(ordering: .relaxed) - before, 1600)
        XCTAssertLessThan(ms, 2500)
    }

    /// The first queue drained turns with each batch: with two full queues and a batch of 2,
    /// the first batch is queue 0's, the second queue 1's.
    func testTheFirstQueueTurns() {
        var o = TraceExportOptions()
        o.batchSize = 2
        let e = TraceExporter(workers: 2, options: o)
        push(e.queues[0], 0x41, count: 4)
        push(e.queues[1], 0x42, count: 4)
        let out = ByteBuffer(capacity: 1024)
        XCTAssertEqual(e.collect(into: out, release: false), 2)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: out.readPointer, count: out.readableBytes)), [0x12, 3, 0x0a, 1, 0x41, 0x12, 3, 0x0a, 1, 0x41])
        XCTAssertEqual(e.collect(into: out, release: false), 2)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: out.readPointer, count: out.readableBytes)), [0x12, 3, 0x0a, 1, 0x42, 0x12, 3, 0x0a, 1, 0x42])
    }

    /// A drain with `release` gives the drained slots' pages back: the ring written through
    /// once is not left resident.
    func testDrainedPagesAreReleased() {
        let q = SpanQueue(capacity: 512)
        func fill() {
            for _ in 0..<512 {
                let p = q.reserve()!
                for i in 0..<(SpanQueue.slotSize - 4) { p[i] = 0x5a }
                q.publish(length: SpanQueue.slotSize - 4)
            }
        }
        fill()
        XCTAssertGreaterThan(q.residentBytes, 700 * 1024)
        q.drain(max: 512) { _, _ in }
        XCTAssertGreaterThan(q.residentBytes, 700 * 1024)     // without release, it stays
        fill()
        q.drain(max: 512, release: true) { _, n in XCTAssertEqual(n, SpanQueue.slotSize - 4) }
        XCTAssertLessThan(q.residentBytes, 16 * 1024)
        // Used again after the release: the slots read back what was written.
        let p = q.reserve()!
        p[0] = 7
        q.publish(length: 1)
        q.drain(max: 1) { b, n in XCTAssertEqual(n, 1); XCTAssertEqual(b[0], 7) }
    }

    /// With no spans waiting the exporter thread sleeps a whole flush interval: in 1.2 s with a
    /// 1 s interval it wakes at most twice (it woke every 50 ms before).
    func testIdleExporterSleepsTheFlushInterval() {
        let o = options(1, batch: 16, queue: 16)
        let e = TraceExporter(workers: 1, options: o)
        XCTAssertEqual(e.wakeups.load(ordering: .relaxed), 0)
        XCTAssertTrue(e.start())
        usleep(1_200_000)
        let wakes = e.wakeups.load(ordering: .relaxed)
        e.stop()
        XCTAssertLessThanOrEqual(wakes, 2)
    }

    /// A span arriving at an idle exporter goes within about one flush interval.
    func testSpanAfterIdleGoesWithinTheFlushInterval() {
        let (fd, port) = listener()
        defer { close(fd) }
        let done = expectation(description: "served")
        _ = acceptOne(fd) { c in TraceExporterTests.sendText(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); done.fulfill() }
        let o = options(port, batch: 32, queue: 64, flush: 50_000_000)
        let e = TraceExporter(workers: 1, options: o)
        e.setTarget(endpoint: o.endpoint, resource: [])
        let before = TraceExporter.exported.load(ordering: .relaxed)
        XCTAssertTrue(e.start())
        usleep(120_000)
        push(e.queues[0], 0x41, count: 1)
        wait(for: [done], timeout: 2)
        usleep(50_000)
        e.stop()
        XCTAssertEqual(TraceExporter.exported.load(ordering: .relaxed) - before, 1)
    }
}
