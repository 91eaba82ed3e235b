import XCTest
import MeshCore
@testable import MeshHTTP

// Shared helpers for the MeshHTTP tests: copy text into a MeshCore ByteBuffer (optionally at a
// non-zero read index, so that absolute offsets are exercised) and run the parser over
// buf.base[readIndex..<writeIndex], exactly as Downstream does.

func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

/// A buffer whose readable bytes are `bytes`, starting at `offset` (filler before it).
func makeBuffer(_ bytes: [UInt8], offset: Int = 0, spare: Int = 64) -> ByteBuffer {
    let b = ByteBuffer(capacity: offset + bytes.count + spare)
    if offset > 0 { b.append([UInt8](repeating: UInt8(ascii: "Z"), count: offset)) }
    b.append(bytes)
    b.readIndex = offset
    return b
}

/// The outcome of one parse, with accessors that turn the recorded byte ranges into Strings.
struct ParseOutcome {
    let result: HTTP1Parser.Result
    let head: HTTPHead
    let buf: ByteBuffer

    func s(_ a: Int, _ b: Int) -> String { buf.string(a, b) }
    var method: String { s(head.methodStart, head.methodEnd) }
    var target: String { s(head.targetStart, head.targetEnd) }
    var path: String { s(head.pathStart, head.pathEnd) }
    var authority: String { s(head.authorityStart, head.authorityEnd) }
    var reason: String { s(head.reasonStart, head.reasonEnd) }
    func name(_ i: Int) -> String { s(Int(head.fields[i].lineStart), Int(head.fields[i].nameEnd)) }
    func value(_ i: Int) -> String { s(Int(head.fields[i].valueStart), Int(head.fields[i].valueEnd)) }
    /// Value of the first field of a known kind.
    func value(of kind: KnownHeader) -> String? {
        guard let i = head.fields.firstIndex(where: { $0.kind == kind }) else { return nil }
        return value(i)
    }
    var error: HTTPParseError? { if case .error(let e) = result { return e }; return nil }
}

func parseRequest(_ bytes: [UInt8], offset: Int = 0, configure: (inout HTTP1Parser) -> Void = { _ in }) -> ParseOutcome {
    let buf = makeBuffer(bytes, offset: offset)
    var parser = HTTP1Parser()
    configure(&parser)
    var head = HTTPHead()
    let r = parser.parseRequest(buf.base, start: buf.readIndex, end: buf.writeIndex, into: &head)
    return ParseOutcome(result: r, head: head, buf: buf)
}

func parseRequest(_ text: String, offset: Int = 0) -> ParseOutcome { parseRequest(utf8(text), offset: offset) }

func parseResponse(_ bytes: [UInt8], offset: Int = 0) -> ParseOutcome {
    let buf = makeBuffer(bytes, offset: offset)
    var parser = HTTP1Parser()
    var head = HTTPHead()
    let r = parser.parseResponse(buf.base, start: buf.readIndex, end: buf.writeIndex, into: &head)
    return ParseOutcome(result: r, head: head, buf: buf)
}

func parseResponse(_ text: String, offset: Int = 0) -> ParseOutcome { parseResponse(utf8(text), offset: offset) }

func describe(_ bytes: [UInt8]) -> String {
    var out = ""
    for b in bytes.prefix(120) {
        switch b {
        case 13: out += "\\r"
        case 10: out += "\\n"
        case 9: out += "\\t"
        case 32...126: out.unicodeScalars.append(Unicode.Scalar(b))
        default: out += "\\x" + String(b, radix: 16)
        }
    }
    return bytes.count > 120 ? out + "...(\(bytes.count) bytes)" : out
}

/// Asserts that the outcome is an error with `status` (and, if given, a reason containing `reason`).
func assertError(_ out: ParseOutcome, _ status: Int, _ reason: String? = nil, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    guard let e = out.error else {
        XCTFail("\(what): expected error \(status), got \(out.result)", file: file, line: line)
        return
    }
    XCTAssertEqual(e.status, status, "\(what): reason '\(e.reason)'", file: file, line: line)
    if let reason {
        XCTAssertTrue(e.reason.description.contains(reason), "\(what): reason '\(e.reason)' lacks '\(reason)'", file: file, line: line)
    }
}

func assertRequestError(_ text: String, _ status: Int, _ reason: String? = nil,
                        file: StaticString = #filePath, line: UInt = #line) {
    assertError(parseRequest(text), status, reason, describe(utf8(text)), file: file, line: line)
    // The same bytes at a non-zero offset must give the same answer.
    assertError(parseRequest(text, offset: 37), status, reason, "at offset 37: " + describe(utf8(text)), file: file, line: line)
}

func assertRequestError(bytes: [UInt8], _ status: Int, _ reason: String? = nil,
                        file: StaticString = #filePath, line: UInt = #line) {
    assertError(parseRequest(bytes), status, reason, describe(bytes), file: file, line: line)
}

func assertResponseError(_ text: String, _ status: Int = 502, _ reason: String? = nil,
                         file: StaticString = #filePath, line: UInt = #line) {
    assertError(parseResponse(text), status, reason, describe(utf8(text)), file: file, line: line)
}

func assertComplete(_ out: ParseOutcome, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(out.result, .complete, what, file: file, line: line)
}

/// Feeds `bytes` to one parser in pieces ending at each of `cuts` (then the rest), appending to
/// one buffer as a socket read would, and returns the result after each piece.
func feedRequest(_ bytes: [UInt8], cuts: [Int], offset: Int = 0, head: inout HTTPHead,
                 configure: (inout HTTP1Parser) -> Void = { _ in }) -> (results: [HTTP1Parser.Result], buf: ByteBuffer) {
    let buf = ByteBuffer(capacity: offset + bytes.count + 64)
    if offset > 0 { buf.append([UInt8](repeating: UInt8(ascii: "Z"), count: offset)) }
    buf.readIndex = offset
    var parser = HTTP1Parser()
    configure(&parser)
    var results: [HTTP1Parser.Result] = []
    var prev = 0
    for c in cuts + [bytes.count] where c > prev {
        bytes[prev..<c].withUnsafeBufferPointer { buf.append($0.baseAddress!, $0.count) }
        prev = c
        let r = parser.parseRequest(buf.base, start: buf.readIndex, end: buf.writeIndex, into: &head)
        results.append(r)
        if r != .incomplete { break }
    }
    return (results, buf)
}

/// A request head whose bytes before the final CRLF number exactly `size`, with `fields` header
/// fields (Host first, then fillers that share the remaining bytes).
func requestHead(exactSize size: Int, fields: Int) -> [UInt8] {
    precondition(fields >= 2)
    var out = utf8("GET / HTTP/1.1\r\nHost: a\r\n")
    let fillers = fields - 1
    var left = size - out.count
    for i in 0..<fillers {
        let name = utf8("X-Fill-\(i): ")
        let share = i == fillers - 1 ? left - name.count - 2 : (left / (fillers - i)) - name.count - 2
        precondition(share >= 0, "size too small for the field count")
        out += name + [UInt8](repeating: UInt8(ascii: "v"), count: share) + [13, 10]
        left = size - out.count
    }
    precondition(out.count == size)
    return out + [13, 10]
}
