import XCTest
import MeshCore
@testable import MeshHTTP

/// The one header policy every protocol path uses, and the writers that read its heads.
final class HeaderPolicyTests: XCTestCase {
    private func ingest(_ h: MessageHead, _ n: String, _ v: String) {
        var n = n, v = v
        n.withUTF8 { nb in v.withUTF8 { vb in
            HeaderPolicy.ingest(h, nb.baseAddress!, nb.count, vb.baseAddress ?? nb.baseAddress!, vb.count)
        } }
    }

    private func pseudo(_ h: MessageHead, _ n: String, _ v: String) {
        var n = n, v = v
        n.withUTF8 { nb in v.withUTF8 { vb in HeaderPolicy.ingestPseudo(h, nb.baseAddress!, nb.count, vb.baseAddress!, vb.count) } }
    }

    private func forwarded(_ h: MessageHead) -> [String] {
        var out: [String] = []
        h.forEachForwarded { n, nl, v, vl in
            out.append(String(decoding: UnsafeBufferPointer(start: n, count: nl), as: UTF8.self) + ": "
                       + String(decoding: UnsafeBufferPointer(start: v, count: vl), as: UTF8.self))
        }
        return out
    }

    private func string(_ h: MessageHead, _ r: ByteRange) -> String {
        String(decoding: UnsafeBufferPointer(start: h.pointer(r), count: Int(r.length)), as: UTF8.self)
    }

    // Negative cases first: what must never be forwarded.

    /// The policy takes names and values as nghttp2 checked them; these are the checks it relies on.
    func testNGHTTP2RefusesWhatWouldSplitAnHTTP1Head() {
        func ok(_ f: (UnsafePointer<UInt8>, Int) -> Bool, _ s: String) -> Bool {
            var s = s
            return s.withUTF8 { f($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
        }
        for bad in ["a\r\nx-injected: 1", "a\nb", "a\rb", "a\u{0}b", "a\u{1}b", "a\u{7f}"] {
            XCTAssertFalse(ok(HTTP2FieldRules.value, bad), bad.debugDescription)
        }
        for bad in ["X-Upper", "x y", "x:y", "", "x\u{1}"] { XCTAssertFalse(ok(HTTP2FieldRules.name, bad), bad.debugDescription) }
        for bad in ["/a b", "/a\r\nx", "/a\u{1}"] { XCTAssertFalse(ok(HTTP2FieldRules.path, bad), bad.debugDescription) }
        for bad in ["GET /x", "GET\r\n", ""] { XCTAssertFalse(ok(HTTP2FieldRules.method, bad), bad.debugDescription) }
        XCTAssertTrue(ok(HTTP2FieldRules.value, "v\tw"))
        XCTAssertTrue(ok(HTTP2FieldRules.path, "/ok?q=%20"))
        XCTAssertTrue(ok(HTTP2FieldRules.authority, "user@host"), "nghttp2 lets `@` through: the policy checks :authority itself")
    }

    func testConnectionSpecificFieldsAreDropped() {
        let h = MessageHead()
        for n in ["Connection", "keep-alive", "Proxy-Connection", "transfer-encoding", "x-forwarded-client-cert"] {
            ingest(h, n, "x")
        }
        XCTAssertEqual(forwarded(h), [])
        XCTAssertNil(h.malformed)
    }

    func testTEOnlyAsTrailers() {
        let a = MessageHead()
        ingest(a, "TE", "gzip")
        XCTAssertFalse(a.teTrailers)
        XCTAssertEqual(forwarded(a), [])
        let b = MessageHead()
        ingest(b, "te", "Trailers")
        XCTAssertTrue(b.teTrailers)
        XCTAssertEqual(forwarded(b), [], "te is written by the writers, never copied")
    }

    func testContentLengthIsCheckedAndConflictsRefused() {
        let a = MessageHead()
        ingest(a, "content-length", "12a")
        XCTAssertNotNil(a.malformed)
        let b = MessageHead()
        ingest(b, "content-length", "5")
        ingest(b, "content-length", "6")
        XCTAssertNotNil(b.malformed)
        let c = MessageHead()
        ingest(c, "Content-Length", "5")
        XCTAssertNil(c.malformed)
        XCTAssertEqual(c.contentLength, 5)
        XCTAssertEqual(forwarded(c), ["content-length: 5"])
    }

    func testMeshHeadersAreReadNotForwarded() {
        let h = MessageHead()
        ingest(h, "X-Mesh-Peer-Metadata", "reviews;default;reviews;v1")
        ingest(h, "Upgrade", "websocket")
        XCTAssertEqual(forwarded(h), [])
        XCTAssertGreaterThanOrEqual(h.peerMetadataIndex, 0)
        XCTAssertEqual(string(h, h.fields[h.peerMetadataIndex].value), "reviews;default;reviews;v1")
        XCTAssertGreaterThanOrEqual(h.upgradeIndex, 0)
    }

    /// FuzzExchangeHead's third finding: a Host nghttp2 lets through is still no HTTP/1.1 Host.
    func testHostThatIsNoHostIsRefused() {
        for bad in ["\u{ff}", "a b", "user@host"] {
            let h = MessageHead()
            ingest(h, "host", bad)
            XCTAssertNotNil(h.malformed, bad.debugDescription)
        }
    }

    func testHostBecomesTheAuthorityUnlessAuthorityCameFirst() {
        let a = MessageHead()
        ingest(a, "Host", "reviews:9080")
        XCTAssertEqual(string(a, a.authority), "reviews:9080")
        XCTAssertEqual(forwarded(a), [])
        let b = MessageHead()
        pseudo(b, ":authority", "ratings")
        ingest(b, "host", "reviews")
        XCTAssertEqual(string(b, b.authority), "ratings")
    }

    func testNamesAreLowercasedAndGRPCAndRequestIDFound() {
        let h = MessageHead()
        ingest(h, "Content-Type", "application/grpc+proto")
        ingest(h, "X-Request-ID", "abc")
        ingest(h, "X-Custom", "Value")
        XCTAssertTrue(h.isGRPC)
        XCTAssertEqual(string(h, h.fields[h.requestIDIndex].value), "abc")
        XCTAssertEqual(forwarded(h), ["content-type: application/grpc+proto", "x-request-id: abc", "x-custom: Value"])
    }

    func testTrailersNeverCarryFramingOrRoutingFields() {
        let h = MessageHead()
        for (n, v) in [("content-length", "1"), ("transfer-encoding", "chunked"), ("host", "x"), ("connection", "close"),
                       (":status", "200"), ("grpc-status", "0"), ("grpc-message", "bad\r\nx: y")] {
            var n = n, v = v
            n.withUTF8 { nb in v.withUTF8 { vb in HeaderPolicy.ingestTrailer(h, nb.baseAddress!, nb.count, vb.baseAddress!, vb.count) } }
        }
        XCTAssertEqual(forwarded(h), ["grpc-status: 0"])
    }

    func testPseudoHeadersAndStatus() {
        let h = MessageHead()
        pseudo(h, ":method", "POST")
        pseudo(h, ":path", "/a?b")
        pseudo(h, ":scheme", "https")
        XCTAssertEqual(h.methodKind, .post)
        XCTAssertEqual(string(h, h.path), "/a?b")
        XCTAssertEqual(string(h, h.originalPath), "/a?b")
        let r = MessageHead()
        pseudo(r, ":status", "503")
        XCTAssertEqual(r.status, 503)
    }

    // Writers.

    func testH1RequestWriterRoundTripsThroughTheParser() {
        let h = MessageHead()
        pseudo(h, ":method", "GET")
        pseudo(h, ":path", "/reviews/1")
        pseudo(h, ":authority", "reviews")
        ingest(h, "te", "trailers")
        ingest(h, "x-b", "2")
        let out = ByteBuffer(capacity: 256)
        H1Writer.requestStart(h, into: out, hostSuffix: "-shadow")
        out.append("\r\n")
        XCTAssertEqual(out.string(out.readIndex, out.writeIndex),
                       "GET /reviews/1 HTTP/1.1\r\nhost: reviews-shadow\r\nx-b: 2\r\nte: trailers\r\n\r\n")
        var parser = HTTP1Parser()
        var head = HTTPHead()
        guard case .complete = parser.parseRequest(out.base, start: out.readIndex, end: out.writeIndex, into: &head) else {
            return XCTFail("the written head does not parse")
        }
        XCTAssertTrue(head.teTrailers)
    }

    func testH1ResponseWriterUsesTheStandardReasonWhenNoneCame() {
        let h = MessageHead()
        h.status = 418
        let out = ByteBuffer(capacity: 128)
        H1Writer.responseStart(h, into: out)
        XCTAssertEqual(out.string(out.readIndex, out.writeIndex), "HTTP/1.1 418 I'm a teapot\r\n")
        let t = MessageHead()
        var n = "grpc-status", v = "0"
        n.withUTF8 { nb in v.withUTF8 { vb in HeaderPolicy.ingestTrailer(t, nb.baseAddress!, nb.count, vb.baseAddress!, vb.count) } }
        let last = ByteBuffer(capacity: 64)
        H1Writer.lastChunk(t, into: last)
        XCTAssertEqual(last.string(last.readIndex, last.writeIndex), "0\r\ngrpc-status: 0\r\n\r\n")
    }

    func testCopyKeepsEveryRange() {
        let a = MessageHead()
        pseudo(a, ":status", "200")
        ingest(a, "x-a", "1")
        let b = MessageHead()
        b.copy(from: a)
        XCTAssertEqual(b.status, 200)
        XCTAssertEqual(forwarded(b), ["x-a: 1"])
    }
}

/// The HTTP/1.1 body reader: data without framing, the end found for every delimitation.
final class BodyDecoderTests: XCTestCase {
    private func drain(_ d: inout BodyDecoder, _ s: String) -> (data: String, ended: Bool, error: Bool) {
        let bytes = Array(s.utf8)
        var data: [UInt8] = []
        var i = 0
        var ended = false
        while i < bytes.count || (!ended && d.mode == .none) {
            let step = bytes.withUnsafeBufferPointer { d.next($0.baseAddress! + i, bytes.count - i) }
            switch step {
            case .data(let n): data += bytes[i..<(i + n)]; i += n
            case .framing(let n), .needMore(let n): i += n; if n == 0 { return (String(decoding: data, as: UTF8.self), ended, false) }
            case .end(let n): i += n; ended = true
            case .error: return (String(decoding: data, as: UTF8.self), ended, true)
            }
            if ended { break }
        }
        return (String(decoding: data, as: UTF8.self), ended || d.isDone, false)
    }

    private func head(_ s: String) -> HTTPHead {
        var p = HTTP1Parser()
        var h = HTTPHead()
        let b = ByteBuffer(capacity: 512)
        b.append(Array(s.utf8))
        _ = p.parseRequest(b.base, start: 0, end: b.writeIndex, into: &h)
        return h
    }

    func testChunkedBodyLosesItsFramingAndKeepsTrailers() {
        var d = BodyDecoder()
        let sink = ByteBuffer(capacity: 64)
        d.trailers = sink
        d.startRequest(head("POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"))
        let r = drain(&d, "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\nNEXT")
        XCTAssertEqual(r.data, "abcde")
        XCTAssertTrue(r.ended)
        XCTAssertEqual(sink.string(sink.readIndex, sink.writeIndex), "x-t: 1\r\n")
    }

    func testLengthBodyEndsExactlyAtItsLength() {
        var d = BodyDecoder()
        d.startRequest(head("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\n"))
        let r = drain(&d, "abcdGET")
        XCTAssertEqual(r.data, "abcd")
        XCTAssertTrue(d.isDone)
        XCTAssertTrue(d.lengthComplete)
    }

    func testBadChunkIsAnError() {
        var d = BodyDecoder()
        d.startRequest(head("POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"))
        XCTAssertTrue(drain(&d, "zz\r\n").error)
    }

    func testTruncatedLengthBodyIsNotCompleteAtClose() {
        var d = BodyDecoder()
        d.startRequest(head("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n"))
        _ = drain(&d, "abc")
        XCTAssertFalse(d.finishAtClose())
    }
}

/// `:authority` from HTTP/2, checked as a Host (nghttp2's rule is wider).
final class HeaderPolicyPseudoTests: XCTestCase {
    private func pseudo(_ n: String, _ v: String) -> MessageHead {
        let h = MessageHead()
        var n = n, v = v
        n.withUTF8 { nb in v.withUTF8 { vb in
            HeaderPolicy.ingestPseudo(h, nb.baseAddress!, nb.count, vb.baseAddress ?? nb.baseAddress!, vb.count)
        } }
        return h
    }

    func testAuthorityThatIsNoHostIsRefused() {
        XCTAssertNotNil(pseudo(":authority", "a b").malformed)
        XCTAssertNotNil(pseudo(":authority", "user@host").malformed)
        XCTAssertNotNil(pseudo(":authority", "evil\r\nx: 1").malformed)
        XCTAssertNil(pseudo(":authority", "reviews.default.svc:9080").malformed)
        XCTAssertNil(pseudo(":path", "/ok?q=%20").malformed)
    }

    /// FuzzExchangeHead's finding: a `:path` nghttp2 lets through that is no origin-form target
    /// must not become an HTTP/1.1 request line.
    func testPathThatIsNotOriginFormIsRefused() {
        XCTAssertNotNil(pseudo(":path", "pk/g.Svc/M").malformed)
        XCTAssertNotNil(pseudo(":path", "").malformed)
        XCTAssertNotNil(pseudo(":path", "http://a/b").malformed)
        XCTAssertNil(pseudo(":path", "*").malformed)
        XCTAssertNil(pseudo(":path", "/").malformed)
    }

    /// FuzzExchangeHead's second finding: `*` is a request target only for OPTIONS.
    func testAsteriskOnlyForOptionsAndBothPseudoHeadersNeeded() {
        func head(_ pairs: [(String, String)]) -> MessageHead {
            let h = MessageHead()
            for (n, v) in pairs {
                var n = n, v = v
                n.withUTF8 { nb in v.withUTF8 { vb in HeaderPolicy.ingestPseudo(h, nb.baseAddress!, nb.count, vb.baseAddress!, vb.count) } }
            }
            HeaderPolicy.completeRequest(h)
            return h
        }
        XCTAssertNotNil(head([(":method", "GET"), (":path", "*")]).malformed)
        XCTAssertNil(head([(":path", "*"), (":method", "OPTIONS")]).malformed)
        XCTAssertNotNil(head([(":method", "GET")]).malformed)
        XCTAssertNotNil(head([(":path", "/")]).malformed)
        XCTAssertNil(head([(":method", "GET"), (":path", "/")]).malformed)
    }

}
