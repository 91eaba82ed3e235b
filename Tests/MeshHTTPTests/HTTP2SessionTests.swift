import CNghttp2
import XCTest
@testable import MeshCore
@testable import MeshHTTP

/// A client and a server `HTTP2Session` talking through memory: requests, bodies under flow
/// control, trailers, resets and bad input, without sockets.
final class HTTP2SessionTests: XCTestCase {
    final class Recorder: HTTP2SessionDelegate {
        var headers: [Int32: [(String, String)]] = [:]
        var trailers: [Int32: [(String, String)]] = [:]
        var inTrailers: Set<Int32> = []
        var data: [Int32: [UInt8]] = [:]
        var ended: Set<Int32> = []
        var closed: [Int32: UInt32] = [:]
        var goaway: (Int32, UInt32)? = nil
        weak var session: HTTP2Session?
        var autoConsume = true

        func h2BeginHeaders(stream: Int32) {}
        func h2Header(stream: Int32, name: UnsafePointer<UInt8>, nameLength: Int, value: UnsafePointer<UInt8>, valueLength: Int) -> Bool {
            let n = String(decoding: UnsafeBufferPointer(start: name, count: nameLength), as: UTF8.self)
            let v = String(decoding: UnsafeBufferPointer(start: value, count: valueLength), as: UTF8.self)
            if headers[stream] == nil || inTrailers.contains(stream) {
                if headers[stream] == nil { headers[stream] = [] ; headers[stream]!.append((n, v)) } else { trailers[stream, default: []].append((n, v)) }
            } else if trailers[stream] != nil {
                trailers[stream]!.append((n, v))
            } else {
                headers[stream]!.append((n, v))
            }
            return true
        }
        func h2HeadersComplete(stream: Int32, trailers: Bool, endStream: Bool) {
            inTrailers.insert(stream)
            if endStream { ended.insert(stream) }
        }
        func h2Data(stream: Int32, _ p: UnsafePointer<UInt8>, _ n: Int) {
            data[stream, default: []].append(contentsOf: UnsafeBufferPointer(start: p, count: n))
            if autoConsume { session?.consume(stream: stream, n) }
        }
        func h2DataEnd(stream: Int32) { ended.insert(stream) }
        func h2StreamClosed(stream: Int32, error: UInt32) { closed[stream] = error }
        func h2GoAway(lastStream: Int32, error: UInt32) { goaway = (lastStream, error) }
    }

    var client: HTTP2Session!, server: HTTP2Session!
    let c = Recorder(), s = Recorder()

    func setUpPair(serverSettings: HTTP2Session.Settings = .init()) {
        client = HTTP2Session(role: .client, delegate: c)
        server = HTTP2Session(role: .server, delegate: s, settings: serverSettings)
        c.session = client
        s.session = server
    }

    /// Moves bytes both ways until neither side has anything to say.
    func pump() {
        let c2s = ByteBuffer(), s2c = ByteBuffer()
        for _ in 0..<1000 {
            client.produce(into: c2s)
            let moved = !c2s.isEmpty
            XCTAssertTrue(server.receive(c2s))
            server.produce(into: s2c)
            let back = !s2c.isEmpty
            XCTAssertTrue(client.receive(s2c))
            if !moved && !back { return }
        }
    }

    func request(_ path: String, endStream: Bool) -> Int32 {
        client.addHeader(":method", endStream ? "GET" : "POST")
        client.addHeader(":scheme", "http")
        client.addHeader(":authority", "reviews")
        client.addHeader(":path", path)
        return client.submitRequest(endStream: endStream)
    }

    func testRequestResponseWithTrailers() {
        setUpPair()
        let id = request("/a", endStream: true)
        XCTAssertEqual(id, 1)
        pump()
        XCTAssertEqual(s.headers[1]?.first { $0.0 == ":path" }?.1, "/a")
        XCTAssertTrue(s.ended.contains(1))
        server.addHeader(":status", "200")
        server.addHeader("content-type", "application/grpc")
        server.submitResponse(stream: 1, endStream: false)
        let body = Array("hello".utf8)
        server.sendData(stream: 1, body, body.count)
        server.addHeader("grpc-status", "7")
        server.addHeader("grpc-message", "denied")
        server.finishData(stream: 1, withTrailers: true)
        pump()
        XCTAssertEqual(c.headers[1]?.first { $0.0 == ":status" }?.1, "200")
        XCTAssertEqual(c.data[1], body)
        XCTAssertEqual(c.trailers[1]?.first { $0.0 == "grpc-status" }?.1, "7")
        XCTAssertEqual(c.trailers[1]?.first { $0.0 == "grpc-message" }?.1, "denied")
        XCTAssertEqual(c.closed[1], 0)
    }

    func testLargeBodyIsFlowControlledByConsume() {
        var settings = HTTP2Session.Settings()
        settings.initialWindowSize = 65535
        settings.connectionWindowSize = 65535
        setUpPair(serverSettings: settings)
        s.autoConsume = false
        let id = request("/upload", endStream: false)
        var payload = [UInt8](repeating: 0, count: 1 << 20)
        for i in payload.indices { payload[i] = UInt8(truncatingIfNeeded: i &* 31) }
        client.sendData(stream: id, payload, payload.count)
        client.finishData(stream: id, withTrailers: false)
        pump()
        // Without consume the server never gets more than its window.
        XCTAssertLessThanOrEqual(s.data[id]?.count ?? 0, 65535)
        XCTAssertFalse(s.ended.contains(id))
        s.autoConsume = true
        server.consume(stream: id, s.data[id]?.count ?? 0)
        pump()
        XCTAssertEqual(s.data[id]?.count, payload.count)
        XCTAssertEqual(s.data[id], payload)
        XCTAssertTrue(s.ended.contains(id))
    }

    func testResetStreamReachesThePeer() {
        setUpPair()
        let id = request("/x", endStream: true)
        pump()
        server.reset(stream: id, error: UInt32(NGHTTP2_REFUSED_STREAM.rawValue))
        pump()
        XCTAssertEqual(c.closed[id], UInt32(NGHTTP2_REFUSED_STREAM.rawValue))
    }

    func testGracefulGoAway() {
        setUpPair()
        _ = request("/x", endStream: true)
        pump()
        server.goAway()
        pump()
        XCTAssertNotNil(c.goaway)
    }

    func testGarbageIsAConnectionError() {
        server = HTTP2Session(role: .server, delegate: s)
        let junk = ByteBuffer()
        junk.append(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        XCTAssertFalse(server.receive(junk))
        XCTAssertTrue(server.failed)
        let out = ByteBuffer()
        server.produce(into: out)   // SETTINGS and a GOAWAY, no crash
    }

    func testHeaderListOverTheLimitResetsTheStream() {
        var settings = HTTP2Session.Settings()
        settings.maxHeaderListSize = 1024
        setUpPair(serverSettings: settings)
        pump()    // exchange SETTINGS so the client knows the limit
        client.addHeader(":method", "GET")
        client.addHeader(":scheme", "http")
        client.addHeader(":authority", "reviews")
        client.addHeader(":path", "/")
        client.addHeader("x-big", String(repeating: "a", count: 4000))
        let id = client.submitRequest(endStream: true)
        pump()
        XCTAssertNil(s.headers[id].flatMap { $0.first { $0.0 == "x-big" } })
        XCTAssertNotNil(c.closed[id])
    }
}
