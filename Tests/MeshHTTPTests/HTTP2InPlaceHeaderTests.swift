import XCTest
@testable import MeshCore
@testable import MeshHTTP

/// Headers added by address (`addHeaderInPlace`, how `H2Emitter` sends a head's fields): they
/// go out in order with the copied ones, their bytes are taken at submit (a head may change
/// after it), trailers added that way are copied when the body ends (they leave later), and the
/// in-place mark never reaches nghttp2 or `pendingHeaderFlags`.
extension HTTP2SessionTests {
    /// Bytes at a fixed address for the test's life (what a head's storage is to the emitter).
    private final class Bytes {
        let p: UnsafeMutableBufferPointer<UInt8>
        init(_ s: String) {
            let u = Array(s.utf8)
            p = .allocate(capacity: u.count)
            _ = p.initialize(from: u)
        }
        deinit { p.deallocate() }
        var base: UnsafePointer<UInt8> { UnsafePointer(p.baseAddress!) }
        var count: Int { p.count }
        func overwrite(_ c: Character) { for i in p.indices { p[i] = c.asciiValue! } }
    }

    func testInPlaceHeadersMixWithCopiedOnesAndAreTakenAtSubmit() {
        setUpPair()
        let scheme = Bytes("http"), authority = Bytes("reviews"), name = Bytes("x-in-place"), value = Bytes("first")
        let n1: StaticString = ":scheme", n2: StaticString = ":authority"
        client.addHeader(":method", "GET")
        client.addHeaderInPlace(n1.utf8Start, n1.utf8CodeUnitCount, scheme.base, scheme.count)
        client.addHeaderInPlace(n2.utf8Start, n2.utf8CodeUnitCount, authority.base, authority.count)
        client.addHeader(":path", "/p")
        client.addHeaderInPlace(name.base, name.count, value.base, value.count, flags: 1)
        XCTAssertEqual(client.pendingHeaderFlags, [0, 0, 0, 0, 1])
        let id = client.submitRequest(endStream: true)
        XCTAssertEqual(id, 1)
        // The caller's bytes change after the submit: the request still carries what was added.
        value.overwrite("z")
        scheme.overwrite("z")
        authority.overwrite("z")
        pump()
        let got = s.headers[1] ?? []
        XCTAssertEqual(got.map { $0.0 }, [":method", ":scheme", ":authority", ":path", "x-in-place"])
        XCTAssertEqual(got.map { $0.1 }, ["GET", "http", "reviews", "/p", "first"])
        XCTAssertTrue(s.ended.contains(1))
    }

    func testInPlaceTrailersAreCopiedWhenTheBodyEnds() {
        setUpPair()
        let id = request("/t", endStream: true)
        pump()
        server.addHeader(":status", "200")
        server.submitResponse(stream: id, endStream: false)
        let body = Array("ok".utf8)
        server.sendData(stream: id, body, body.count)
        let name = Bytes("grpc-status"), value = Bytes("13")
        server.addHeader("grpc-message", "copied")
        server.addHeaderInPlace(name.base, name.count, value.base, value.count)
        server.finishData(stream: id, withTrailers: true)
        // The trailers leave only at the next produce: overwrite the bytes first.
        value.overwrite("9")
        name.overwrite("x")
        pump()
        XCTAssertEqual(c.data[id], body)
        XCTAssertEqual(c.trailers[id]?.map { $0.0 }, ["grpc-message", "grpc-status"])
        XCTAssertEqual(c.trailers[id]?.map { $0.1 }, ["copied", "13"])
        XCTAssertEqual(c.closed[id], 0)
    }
}
