import XCTest
import Foundation
import MeshCore
import MeshIO
@testable import MeshConfig
@testable import MeshProxy
#if canImport(Glibc)
import Glibc
#endif

/// The exporter's one POST: a collector that never answers costs at most its step timeout and
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
        XCTAssertGreaterThanOrEqual(ms, 1900)
        XCTAssertLessThan(ms, 4500)
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
}
