import XCTest
import MeshCore
@testable import MeshHTTP

/// What a run of the decoder over some bytes produced.
private struct Decoded {
    var data: [UInt8] = []
    var framing = 0
    var endAt: Int? = nil          // absolute index one past the message's last byte
    var error: String? = nil
    var violations: [String] = []  // broken step invariants
}

/// Feeds `bytes` to a ChunkedDecoder as if they arrived in pieces ending at `cuts`: each piece
/// is offered from the first unconsumed byte to the end of what has arrived, and the decoder is
/// called until it needs more, ends or fails.
private func decode(_ bytes: [UInt8], cuts: [Int] = [], decoder: inout ChunkedDecoder) -> Decoded {
    var out = Decoded()
    bytes.withUnsafeBufferPointer { bp in
        let base = bp.baseAddress!
        var pos = 0
        for avail in (cuts + [bytes.count]) where avail > pos {
            while pos < avail {
                let n = avail - pos
                switch decoder.next(base + pos, n) {
                case .data(let k):
                    if k <= 0 || k > n { out.violations.append("data(\(k)) of \(n) at \(pos)") ; return }
                    out.data += bp[pos..<(pos + k)]
                    pos += k
                case .framing(let k):
                    if k <= 0 || k > n { out.violations.append("framing(\(k)) of \(n) at \(pos)"); return }
                    out.framing += k
                    pos += k
                case .needMore(let k):
                    if k != n { out.violations.append("needMore(\(k)) of \(n) at \(pos)"); return }
                    out.framing += k
                    pos += k
                case .end(let k):
                    if k < 0 || k > n { out.violations.append("end(\(k)) of \(n) at \(pos)"); return }
                    out.framing += k
                    out.endAt = pos + k
                    return
                case .error(let e):
                    out.error = e.description
                    return
                }
            }
        }
    }
    return out
}

private func decode(_ bytes: [UInt8], cuts: [Int] = []) -> Decoded {
    var d = ChunkedDecoder()
    return decode(bytes, cuts: cuts, decoder: &d)
}

final class ChunkedDecoderTests: XCTestCase {

    static let alphabet = utf8("abcdefghijklmnopqrstuvwxyz")
    static let big = (0..<256).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }

    /// Body with extensions, an uppercase size, binary data, a last-chunk extension and trailers,
    /// followed by bytes of the next message that must not be consumed.
    static let body: [UInt8] = utf8("5;name=val\r\nhello\r\n1A\r\n") + alphabet + utf8("\r\n100;a;b=\"q r\"\t\r\n") + big
        + utf8("\r\n0001\r\n!\r\n0;last\r\nX-Sum: 123\r\nX-Other:  v \r\n\r\n")
    static let payload: [UInt8] = utf8("hello") + alphabet + big + utf8("!")
    static let next = utf8("GET / HTTP/1.1\r\n")

    private func checkFull(_ r: Decoded, bodyLength: Int, payload: [UInt8], _ what: String,
                           file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.violations, [], what, file: file, line: line)
        XCTAssertNil(r.error, what, file: file, line: line)
        XCTAssertEqual(r.endAt, bodyLength, what, file: file, line: line)
        XCTAssertEqual(r.data, payload, what, file: file, line: line)
        XCTAssertEqual(r.data.count + r.framing, bodyLength, "data + framing = body: " + what, file: file, line: line)
    }

    func testValidBodyDecodedCompletely() {
        let all = ChunkedDecoderTests.body + ChunkedDecoderTests.next
        var d = ChunkedDecoder()
        let r = decode(all, decoder: &d)
        checkFull(r, bodyLength: ChunkedDecoderTests.body.count, payload: ChunkedDecoderTests.payload, "whole")
        XCTAssertTrue(d.isDone)
        XCTAssertTrue(d.sawTrailers)
    }

    func testChunkExtensionsAreBoundedButAllowed() {
        let ok = Array("4;name=value;flag\r\nabcd\r\n0\r\n\r\n".utf8)
        XCTAssertNil(decode(ok).error)
        let limit = ChunkedDecoder.maxExtensionBytes
        let atLimit = Array(("4;" + String(repeating: "e", count: limit - 1) + "\r\nabcd\r\n0\r\n\r\n").utf8)
        XCTAssertNil(decode(atLimit, cuts: [3, 100, 4000]).error)
        let over = Array(("4;" + String(repeating: "e", count: limit + 1) + "\r\nabcd\r\n0\r\n\r\n").utf8)
        XCTAssertEqual(decode(over).error, "chunk extension too long")
        XCTAssertEqual(decode(over, cuts: [1, 2, 3, 2000]).error, "chunk extension too long")
        // The bound is per chunk: many chunks with extensions below it are fine.
        let many = Array((String(repeating: "1;" + String(repeating: "e", count: 3000) + "\r\na\r\n", count: 4) + "0\r\n\r\n").utf8)
        XCTAssertNil(decode(many).error)
    }

    func testMinimalBodies() {
        var d = ChunkedDecoder()
        var r = decode(utf8("0\r\n\r\n"), decoder: &d)
        XCTAssertEqual(r.endAt, 5); XCTAssertEqual(r.data, []); XCTAssertNil(r.error)
        XCTAssertTrue(d.isDone); XCTAssertFalse(d.sawTrailers)

        d = ChunkedDecoder()
        r = decode(utf8("3\r\nabc\r\n0\r\n\r\nNEXT"), decoder: &d)
        XCTAssertEqual(r.endAt, 13); XCTAssertEqual(r.data, utf8("abc")); XCTAssertFalse(d.sawTrailers)

        // A whole-body step sequence: exact kinds and lengths.
        d = ChunkedDecoder()
        let b = utf8("3\r\nabc\r\n0\r\n\r\n")
        b.withUnsafeBufferPointer { p in
            guard case .framing(3) = d.next(p.baseAddress!, 13) else { return XCTFail("size line is framing(3)") }
            guard case .data(3) = d.next(p.baseAddress! + 3, 10) else { return XCTFail("then data(3)") }
            guard case .end(7) = d.next(p.baseAddress! + 6, 7) else { return XCTFail("then end(7)") }
        }
    }

    func testDoneDecoderReportsEndWithoutConsuming() {
        var d = ChunkedDecoder()
        _ = decode(utf8("0\r\n\r\n"), decoder: &d)
        XCTAssertTrue(d.isDone)
        let extra = utf8("more")
        extra.withUnsafeBufferPointer { p in
            guard case .end(0) = d.next(p.baseAddress!, 4) else { return XCTFail("a done decoder consumes nothing") }
        }
    }

    func testSplitInTwoAtEveryPosition() {
        let all = ChunkedDecoderTests.body + ChunkedDecoderTests.next
        for cut in 1..<all.count {
            let r = decode(all, cuts: [cut])
            checkFull(r, bodyLength: ChunkedDecoderTests.body.count, payload: ChunkedDecoderTests.payload, "cut at \(cut)")
        }
    }

    func testOneBytePieces() {
        let all = ChunkedDecoderTests.body + ChunkedDecoderTests.next
        let r = decode(all, cuts: Array(1..<all.count))
        checkFull(r, bodyLength: ChunkedDecoderTests.body.count, payload: ChunkedDecoderTests.payload, "1-byte pieces")
    }

    func testIncompleteBodyNeedsMore() {
        let body = ChunkedDecoderTests.body
        for len in [1, 5, 12, 14, 20, body.count - 2, body.count - 1] {
            var d = ChunkedDecoder()
            let r = decode(Array(body[0..<len]), decoder: &d)
            XCTAssertNil(r.error, "prefix \(len)")
            XCTAssertNil(r.endAt, "prefix \(len)")
            XCTAssertFalse(d.isDone, "prefix \(len)")
        }
    }

    func testLargestSizeAccepted() {
        // 15 hex digits is the limit; the decoder then just hands out data.
        var d = ChunkedDecoder()
        let r = decode(utf8("fffffffffffffff\r\n") + [UInt8](repeating: 1, count: 1000), decoder: &d)
        XCTAssertNil(r.error)
        XCTAssertEqual(r.data.count, 1000)
        XCTAssertNil(r.endAt)
    }

    func testResetAfterError() {
        var d = ChunkedDecoder()
        XCTAssertNotNil(decode(utf8("zz\r\n"), decoder: &d).error)
        d.reset()
        let r = decode(ChunkedDecoderTests.body, decoder: &d)
        checkFull(r, bodyLength: ChunkedDecoderTests.body.count, payload: ChunkedDecoderTests.payload, "after reset")
    }

    // MARK: - Refusals

    private func assertRefused(_ bytes: [UInt8], _ reason: String, file: StaticString = #filePath, line: UInt = #line) {
        let what = describe(bytes)
        let whole = decode(bytes)
        XCTAssertEqual(whole.error, reason, "whole: \(what)", file: file, line: line)
        XCTAssertNil(whole.endAt, what, file: file, line: line)
        // The same refusal when the bytes trickle in one at a time.
        let trickle = decode(bytes, cuts: Array(1..<max(1, bytes.count)))
        XCTAssertEqual(trickle.error, reason, "1-byte pieces: \(what)", file: file, line: line)
    }

    func testInvalidSizes() {
        assertRefused(utf8("x\r\n"), "invalid chunk size")
        assertRefused(utf8("\r\n"), "invalid chunk size")
        assertRefused(utf8(" 5\r\nhello\r\n0\r\n\r\n"), "invalid chunk size")
        assertRefused(utf8("-5\r\n"), "invalid chunk size")
        assertRefused(utf8("+5\r\n"), "invalid chunk size")
        assertRefused(utf8(";ext\r\n"), "invalid chunk size")
        assertRefused(utf8("0x5\r\n"), "invalid chunk size line")
        assertRefused(utf8("5g\r\n"), "invalid chunk size line")
        assertRefused(utf8("3\r\nabc\r\nq\r\n"), "invalid chunk size")
    }

    func testWhitespaceInSizeLine() {
        assertRefused(utf8("5 \r\nhello\r\n0\r\n\r\n"), "invalid chunk size line")
        assertRefused(utf8("5\t\r\nhello\r\n0\r\n\r\n"), "invalid chunk size line")
        assertRefused(utf8("1 2\r\n"), "invalid chunk size line")
        assertRefused(utf8("5 ;a\r\nhello\r\n0\r\n\r\n"), "invalid chunk size line")
    }

    func testTooManyHexDigits() {
        assertRefused(utf8("1234567890abcdef\r\n"), "chunk size too large")
        assertRefused(utf8("10000000000000000\r\n"), "chunk size too large")
        assertRefused(utf8("0000000000000005\r\nhello\r\n"), "chunk size too large")   // leading zeros count
        assertRefused(utf8("ffffffffffffffffffffffffffffffff\r\n"), "chunk size too large")
    }

    func testMissingCRLFAfterData() {
        assertRefused(utf8("5\r\nhello0\r\n\r\n"), "chunk data longer than its size")
        assertRefused(utf8("5\r\nhelloX\r\n0\r\n\r\n"), "chunk data longer than its size")
        assertRefused(utf8("3\r\nhello\r\n0\r\n\r\n"), "chunk data longer than its size")
        assertRefused(utf8("5\r\nhello\n0\r\n\r\n"), "chunk data longer than its size")
        assertRefused(utf8("5\r\nhello\rX0\r\n\r\n"), "bare CR after chunk data")
        assertRefused(utf8("5\r\nhello\r\r\n"), "bare CR after chunk data")
    }

    func testBareLFAndBareCRInSizeLine() {
        assertRefused(utf8("5\nhello\r\n0\r\n\r\n"), "invalid chunk size line")
        assertRefused(utf8("5\rhello\r\n0\r\n\r\n"), "bare CR in chunk size line")
        assertRefused(utf8("5;ext\rhello\r\n"), "bare CR in chunk size line")
        assertRefused(utf8("5;ext\nhello\r\n"), "invalid chunk extension")
        assertRefused(utf8("0\n\r\n"), "invalid chunk size line")
        assertRefused(utf8("0\r\r\n"), "bare CR in chunk size line")
    }

    func testControlBytesInExtension() {
        for c: UInt8 in [0, 1, 8, 11, 27, 31, 127] {
            assertRefused(utf8("5;a") + [c] + utf8("b\r\nhello\r\n0\r\n\r\n"), "invalid chunk extension")
        }
        // HTAB and obs-text are allowed.
        let r = decode(utf8("5;a\tb=") + [0xC3, 0xA9] + utf8("\r\nhello\r\n0\r\n\r\n"))
        XCTAssertNil(r.error)
        XCTAssertEqual(r.data, utf8("hello"))
    }

    func testTrailerRefusals() {
        assertRefused(utf8("0\r\nX: a\r\n b\r\n\r\n"), "obs-fold in trailer")
        assertRefused(utf8("0\r\n\tX: a\r\n\r\n"), "obs-fold in trailer")
        assertRefused(utf8("0\r\nX: a\nY: b\r\n\r\n"), "bare LF in trailer")
        assertRefused(utf8("0\r\n\n"), "bare LF in trailer")
        assertRefused(utf8("0\r\nX: a") + [0] + utf8("\r\n\r\n"), "NUL in trailer")
        assertRefused(utf8("0\r\nX: a\rY\r\n\r\n"), "bare CR in trailer")
        assertRefused(utf8("0\r\n\rX"), "bare CR after last chunk")
        assertRefused(utf8("0\r\nX: a\r\n\r\r\n"), "bare CR after last chunk")
    }

    func testHugeTrailerSectionRefused() {
        // One enormous line.
        assertRefused(utf8("0\r\nX-Big: ") + [UInt8](repeating: 118, count: 70_000) + utf8("\r\n\r\n"), "trailer section too large")
        // Many lines adding up past 64 KiB.
        var many = utf8("0\r\n")
        for i in 0..<2000 { many += utf8("X-\(i): ") + [UInt8](repeating: 118, count: 40) + [13, 10] }
        assertRefused(many + [13, 10], "trailer section too large")
        // Never terminated: refused before the end arrives.
        let endless = utf8("0\r\nX-Big: ") + [UInt8](repeating: 118, count: 100_000)
        XCTAssertEqual(decode(endless, cuts: Array(stride(from: 4096, to: endless.count, by: 4096))).error, "trailer section too large")
        // Well below the limit: accepted.
        var d = ChunkedDecoder()
        let ok = decode(utf8("0\r\nX-Big: ") + [UInt8](repeating: 118, count: 60_000) + utf8("\r\n\r\n"), decoder: &d)
        XCTAssertNil(ok.error)
        XCTAssertTrue(d.isDone)
        XCTAssertTrue(d.sawTrailers)
    }
}

// MARK: - BodyFramer

final class BodyFramerTests: XCTestCase {

    private func head(cl: Int64 = -1, chunked: Bool = false, status: Int = 0) -> HTTPHead {
        var h = HTTPHead()
        h.contentLength = cl
        h.chunked = chunked
        h.status = status
        return h
    }

    private func advance(_ f: inout BodyFramer, _ bytes: [UInt8]) -> BodyFramer.Advance {
        bytes.withUnsafeBufferPointer { f.advance($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
    }

    func testRequestWithoutBody() {
        var f = BodyFramer()
        XCTAssertTrue(f.isDone)
        XCTAssertEqual(f.mode, .none)
        f.startRequest(head())
        XCTAssertEqual(f.mode, .none)
        XCTAssertTrue(f.isDone)
        let a = advance(&f, utf8("GET / HTTP/1.1\r\n"))
        XCTAssertEqual(a.forward, 0, "bytes after a bodiless request belong to the next one")
        XCTAssertTrue(a.done)
        XCTAssertNil(a.error)
        f.startRequest(head(cl: 0))
        XCTAssertEqual(f.mode, .none)
        XCTAssertTrue(f.isDone)
    }

    func testRequestWithContentLength() {
        var f = BodyFramer()
        f.startRequest(head(cl: 10))
        XCTAssertEqual(f.mode, .length)
        XCTAssertFalse(f.isDone)
        XCTAssertEqual(f.remaining, 10)
        var a = advance(&f, utf8("abcd"))
        XCTAssertEqual(a.forward, 4); XCTAssertFalse(a.done)
        XCTAssertEqual(f.remaining, 6)
        a = advance(&f, [])
        XCTAssertEqual(a.forward, 0); XCTAssertFalse(a.done)
        a = advance(&f, utf8("efghijNEXT"))
        XCTAssertEqual(a.forward, 6, "stops at the body's end")
        XCTAssertTrue(a.done)
        XCTAssertTrue(f.isDone)
        XCTAssertEqual(f.remaining, 0)
        XCTAssertTrue(f.finishAtClose())
    }

    func testRequestChunked() {
        var f = BodyFramer()
        f.startRequest(head(chunked: true))
        XCTAssertEqual(f.mode, .chunked)
        XCTAssertFalse(f.isDone)
        let body = ChunkedDecoderTests.body
        // In three pieces; the last one carries the next request.
        let cuts = [7, 200]
        var forwarded = 0
        var a = advance(&f, Array(body[0..<cuts[0]]))
        forwarded += a.forward; XCTAssertFalse(a.done); XCTAssertEqual(a.forward, cuts[0])
        a = advance(&f, Array(body[cuts[0]..<cuts[1]]))
        forwarded += a.forward; XCTAssertFalse(a.done); XCTAssertEqual(a.forward, cuts[1] - cuts[0])
        a = advance(&f, Array(body[cuts[1]...]) + ChunkedDecoderTests.next)
        forwarded += a.forward
        XCTAssertTrue(a.done)
        XCTAssertNil(a.error)
        XCTAssertEqual(forwarded, body.count, "forwards data and framing verbatim, up to the exact end")
        XCTAssertTrue(f.isDone)
        XCTAssertTrue(f.chunked.isDone)
    }

    func testRequestChunkedError() {
        var f = BodyFramer()
        f.startRequest(head(chunked: true))
        let a = advance(&f, utf8("5\r\nhello\r\nzz\r\n"))
        XCTAssertEqual(a.error?.description, "invalid chunk size")
        XCTAssertFalse(a.done)
        XCTAssertLessThanOrEqual(a.forward, 10, "never more than the bytes before the bad one")
        XCTAssertFalse(f.finishAtClose())
    }

    func testChunkedDecoderIsResetBetweenMessages() {
        var f = BodyFramer()
        f.startRequest(head(chunked: true))
        _ = advance(&f, utf8("5\r\nhel"))
        f.startRequest(head(chunked: true))
        let a = advance(&f, utf8("2\r\nab\r\n0\r\n\r\n"))
        XCTAssertTrue(a.done)
        XCTAssertNil(a.error)
        XCTAssertEqual(a.forward, 12)
    }

    func testResponsesWithoutBody() {
        var f = BodyFramer()
        // HEAD: no body whatever the head says.
        f.startResponse(head(cl: 100, status: 200), requestMethod: .head)
        XCTAssertEqual(f.mode, .none); XCTAssertTrue(f.isDone)
        f.startResponse(head(chunked: true, status: 200), requestMethod: .head)
        XCTAssertEqual(f.mode, .none); XCTAssertTrue(f.isDone)
        f.startResponse(head(status: 200), requestMethod: .head)
        XCTAssertEqual(f.mode, .none); XCTAssertTrue(f.isDone)
        for s in [204, 304, 100, 101, 103, 199] {
            f.startResponse(head(cl: 5, status: s), requestMethod: .get)
            XCTAssertEqual(f.mode, .none, "status \(s)")
            XCTAssertTrue(f.isDone, "status \(s)")
            f.startResponse(head(chunked: true, status: s), requestMethod: .post)
            XCTAssertEqual(f.mode, .none, "status \(s) chunked")
        }
        f.startResponse(head(cl: 0, status: 200), requestMethod: .get)
        XCTAssertEqual(f.mode, .none); XCTAssertTrue(f.isDone)
        let a = advance(&f, utf8("HTTP/1.1 200 OK\r\n"))
        XCTAssertEqual(a.forward, 0); XCTAssertTrue(a.done)
    }

    func testResponseWithContentLength() {
        var f = BodyFramer()
        f.startResponse(head(cl: 3, status: 200), requestMethod: .get)
        XCTAssertEqual(f.mode, .length)
        XCTAssertFalse(f.isDone)
        XCTAssertFalse(f.finishAtClose(), "a close before the length is reached truncates")
        let a = advance(&f, utf8("abcdef"))
        XCTAssertEqual(a.forward, 3); XCTAssertTrue(a.done)
        XCTAssertTrue(f.finishAtClose())
        // 200 to anything but HEAD, e.g. 404 with a body.
        f.startResponse(head(cl: 2, status: 404), requestMethod: .post)
        XCTAssertEqual(f.mode, .length)
    }

    func testResponseChunked() {
        var f = BodyFramer()
        f.startResponse(head(chunked: true, status: 200), requestMethod: .get)
        XCTAssertEqual(f.mode, .chunked)
        XCTAssertFalse(f.finishAtClose())
        let all = ChunkedDecoderTests.body
        var forwarded = 0
        var done = false
        for i in 0..<all.count where !done {
            let a = advance(&f, [all[i]])
            XCTAssertNil(a.error)
            forwarded += a.forward
            done = a.done
        }
        XCTAssertTrue(done)
        XCTAssertEqual(forwarded, all.count)
        XCTAssertTrue(f.finishAtClose())
    }

    func testResponseUntilClose() {
        var f = BodyFramer()
        f.startResponse(head(status: 200), requestMethod: .get)
        XCTAssertEqual(f.mode, .untilClose)
        XCTAssertFalse(f.isDone)
        var a = advance(&f, utf8("some bytes"))
        XCTAssertEqual(a.forward, 10); XCTAssertFalse(a.done)
        a = advance(&f, [UInt8](repeating: 0, count: 100_000))
        XCTAssertEqual(a.forward, 100_000); XCTAssertFalse(a.done)
        XCTAssertTrue(f.finishAtClose(), "the close ends a body delimited by close")
        XCTAssertTrue(f.isDone)
    }

    func testTunnel() {
        var f = BodyFramer()
        f.startTunnel()
        XCTAssertEqual(f.mode, .untilClose)
        XCTAssertFalse(f.isDone)
        XCTAssertEqual(advance(&f, utf8("raw")).forward, 3)
        XCTAssertTrue(f.finishAtClose())
    }

    func testFinishAtCloseForEachMode() {
        var f = BodyFramer()
        f.startRequest(head())
        XCTAssertTrue(f.finishAtClose(), "no body: nothing truncated")
        f.startRequest(head(cl: 4))
        XCTAssertFalse(f.finishAtClose(), "length not reached")
        _ = advance(&f, utf8("ab"))
        XCTAssertFalse(f.finishAtClose(), "length half reached")
        f.startRequest(head(chunked: true))
        _ = advance(&f, utf8("3\r\nabc\r\n"))
        XCTAssertFalse(f.finishAtClose(), "chunked without the last chunk")
        _ = advance(&f, utf8("0\r\n\r\n"))
        XCTAssertTrue(f.finishAtClose(), "chunked complete")
    }

    /// A BodyFramer started from a parsed head.
    func testFromParsedHeads() {
        let req = parseRequest("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        var f = BodyFramer()
        f.startRequest(req.head)
        XCTAssertEqual(f.mode, .chunked)
        let res = parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
        f.startResponse(res.head, requestMethod: req.head.method)
        XCTAssertEqual(f.mode, .length)
        XCTAssertEqual(f.remaining, 12)
        let close = parseResponse("HTTP/1.0 200 OK\r\n\r\n")
        f.startResponse(close.head, requestMethod: .get)
        XCTAssertEqual(f.mode, .untilClose)
    }
}
