// Fuzz target: the HTTP/1.1 codec of MeshHTTP (HTTP1Parser, BodyFramer, ChunkedDecoder).
//
// Input layout: byte 0 is a mode, byte 1 seeds the split points, the rest is the stream of bytes
// a peer sends. Mode bits: 0x01 parse responses (else requests); 0x02 tight limits (so that the
// 414/431 paths are reached with small inputs); 0x1c the request method a response answers.
//
// For each message: the head is parsed incrementally (growing prefixes, as reads arrive) and in
// one shot on a fresh parser, and both must agree; a complete head is checked against the
// invariants the proxy relies on; then the body is framed by BodyFramer in random pieces and
// decoded again by a ChunkedDecoder in one piece, which must agree; pipelined messages follow.
import CFuzzDriver
import MeshCore
import MeshHTTP

/// Stops the process the way libFuzzer notices (a crash), naming the broken invariant.
func check(_ ok: @autoclosure () -> Bool, _ what: String) {
    if !ok() { fatalError("FuzzHTTP1 invariant: \(what)") }
}

/// A tiny deterministic generator for split points, seeded from the input.
struct Splitter {
    var state: UInt32
    init(_ seed: UInt8) { state = UInt32(seed) &* 2_654_435_761 | 1 }
    mutating func next(_ bound: Int) -> Int {
        state ^= state << 13; state ^= state >> 17; state ^= state << 5
        return bound <= 1 ? 0 : Int(state % UInt32(bound))
    }
}

/// The parser with the limits chosen by the mode byte.
func makeParser(tight: Bool) -> HTTP1Parser {
    var p = HTTP1Parser()
    if tight { p.maxStartLine = 40; p.maxHeadBytes = 160; p.maxFields = 4 }
    return p
}

/// Parses the head at `start` in `buf[start..<end]` by feeding growing prefixes to one parser.
func parseIncrementally(_ parser: inout HTTP1Parser, _ buf: UnsafePointer<UInt8>, start: Int, end: Int,
                        response: Bool, splits: inout Splitter, into head: inout HTTPHead) -> HTTP1Parser.Result {
    var upTo = start
    while true {
        upTo = min(end, upTo + 1 + splits.next(24))
        let r = response ? parser.parseResponse(buf, start: start, end: upTo, into: &head)
                         : parser.parseRequest(buf, start: start, end: upTo, into: &head)
        if case .incomplete = r, upTo < end { continue }
        return r
    }
}

/// The invariants of a complete head over `buf[start..<end]`.
func checkHead(_ h: HTTPHead, _ buf: UnsafePointer<UInt8>, start: Int, end: Int, response: Bool) {
    check(h.headStart == start, "head starts where parsing started")
    check(h.headEnd > start && h.headEnd <= end, "head ends inside the buffer")
    check(h.headEnd - start >= 4 && buf[h.headEnd - 4] == 13 && buf[h.headEnd - 3] == 10 && buf[h.headEnd - 2] == 13
          && buf[h.headEnd - 1] == 10, "head ends with CRLF CRLF")
    check(!(h.chunked && h.contentLength >= 0), "Content-Length and Transfer-Encoding both accepted")
    var cl = 0, te = 0
    var previousEnd = start
    for f in h.fields {
        let ls = Int(f.lineStart), ne = Int(f.nameEnd), vs = Int(f.valueStart), ve = Int(f.valueEnd), le = Int(f.lineEnd)
        check(previousEnd < ls && ls < ne && ne < vs && vs <= ve && ve + 2 <= le && le <= h.headEnd - 2, "field ranges ordered and inside the head")
        check(buf[ne] == 58 && buf[le - 2] == 13 && buf[le - 1] == 10, "field has a colon and ends with CRLF")
        for i in ls..<ne { check(buf[i] > 32 && buf[i] < 127 && buf[i] != 58, "field name is a token") }
        for i in vs..<ve { let c = buf[i]; check(c == 9 || c >= 32 && c != 127, "no CR, LF, NUL or control byte in a value") }
        if f.kind == .contentLength { cl += 1 }
        if f.kind == .transferEncoding { te += 1 }
        previousEnd = le - 1
    }
    check(cl <= 1 && te <= 1, "at most one Content-Length and one Transfer-Encoding")
    check(!(cl == 1 && te == 1), "Content-Length with Transfer-Encoding accepted")
    check(h.chunked == (te == 1), "chunked exactly when Transfer-Encoding was accepted")
    check(h.contentLength >= -1 && h.contentLength < 1_000_000_000_000_000_000, "Content-Length in range")
    if response {
        check(h.status >= 100 && h.status <= 999, "status code has three digits")
        check(start < h.reasonStart || h.reasonStart == h.reasonEnd, "reason inside the status line")
        check(h.reasonStart <= h.reasonEnd && h.reasonEnd < h.headEnd, "reason range ordered")
    } else {
        check(start <= h.methodStart && h.methodStart < h.methodEnd && h.methodEnd < h.targetStart, "method range")
        check(h.targetStart < h.targetEnd && h.targetEnd < h.headEnd, "target range")
        check(h.pathStart <= h.pathEnd && h.pathEnd <= h.targetEnd, "path range inside the target")
        check(h.authorityStart <= h.authorityEnd && h.authorityEnd <= h.targetEnd, "authority range inside the target")
        if h.isAbsoluteForm { check(h.authorityStart >= h.targetStart + 7 && h.authorityEnd > h.authorityStart, "absolute-form authority") }
        check(h.minorVersion == 0 || h.minorVersion == 1, "HTTP/1.0 or HTTP/1.1")
        if h.minorVersion == 1 && !h.isAbsoluteForm { check(h.hostIndex >= 0, "HTTP/1.1 request without Host accepted") }
        if h.chunked { check(h.minorVersion == 1, "chunked HTTP/1.0 request accepted") }
        if h.hostIndex >= 0 { check(h.fields[h.hostIndex].kind == .host, "host index names a Host field") }
    }
    for r in h.connectionListed { check(Int(r.start) >= start && r.start < r.end && Int(r.end) <= h.headEnd, "Connection token range") }
}

/// What decoding a chunked body came to: the data bytes and where it ended (or failed).
struct ChunkedOutcome: Equatable {
    var data: [UInt8] = []
    var endedAt = -1
    /// Refused (the decoder does not say at which byte, only in which call).
    var failed = false
    var trailers: [UInt8] = []
}

/// Decodes `p[0..<n]` as a chunked body, taking at most `piece(remaining)` bytes per call.
func decodeChunked(_ p: UnsafePointer<UInt8>, _ n: Int, piece: (Int) -> Int) -> ChunkedOutcome {
    var d = ChunkedDecoder()
    let sink = ByteBuffer(capacity: 64)
    d.trailerSink = sink
    var out = ChunkedOutcome()
    var used = 0
    loop: while used < n {
        let avail = max(1, min(n - used, piece(n - used)))
        var within = 0
        while within < avail {
            switch d.next(p + used + within, avail - within) {
            case .data(let k):
                check(k > 0 && k <= avail - within, "chunk data step inside the input")
                out.data.append(contentsOf: UnsafeBufferPointer(start: p + used + within, count: k)); within += k
            case .framing(let k):
                check(k > 0 && k <= avail - within, "framing step inside the input"); within += k
            case .needMore(let k):
                check(k == avail - within, "needMore consumes the rest"); within += k
            case .end(let k):
                check(k <= avail - within, "end step inside the input")
                out.endedAt = used + within + k; break loop
            case .error:
                out.failed = true; break loop
            }
        }
        used += avail
    }
    if sink.readableBytes > 0 {
        out.trailers = Array(UnsafeBufferPointer(start: sink.readPointer, count: sink.readableBytes))
        TrailerLines.forEach(sink) { _, nl, _, vl in check(nl > 0 && vl >= 0, "trailer line ranges") }
    }
    return out
}

/// Frames the body after a head, checks it against a one-shot chunked decode, and returns how
/// many bytes it took (nil when the body ran to the end of the input or was refused).
func frameBody(_ head: HTTPHead, _ p: UnsafePointer<UInt8>, _ n: Int, response: Bool, method: HTTPMethod,
               splits: inout Splitter) -> Int? {
    var framer = BodyFramer()
    if response { framer.startResponse(head, requestMethod: method) } else { framer.startRequest(head) }
    if !response { check(framer.mode != .untilClose, "a request body never runs until close") }
    if framer.isDone { return 0 }
    var used = 0
    var endedAt = -1
    var failed = false
    var pieces: [Int] = []
    while used < n {
        let piece = max(1, min(n - used, 1 + splits.next(48)))
        pieces.append(piece)
        let a = framer.advance(p + used, piece)
        check(a.forward >= 0 && a.forward <= piece, "framer forwards at most what it was given")
        used += a.forward
        if a.error != nil { failed = true; break }
        if a.done { endedAt = used; break }
        if a.forward < piece { check(framer.mode == .length && framer.isDone, "framer stops early only at the end of a length") }
    }
    if framer.mode == .length {
        let want = Int(min(Int64(n), head.contentLength))
        check(used == want, "a Content-Length body takes exactly its length")
    }
    if framer.mode == .chunked {
        var k = 0
        let whole = decodeChunked(p, n) { _ in n }
        let split = decodeChunked(p, n) { _ in defer { k += 1 }; return k < pieces.count ? pieces[k] : 64 }
        check(whole == split, "chunked decoding does not depend on how the bytes arrive")
        check((whole.endedAt >= 0) == (endedAt >= 0) && (!failed || whole.failed), "framer and decoder agree")
        if endedAt >= 0 { check(whole.endedAt == endedAt, "framer and decoder end at the same byte") }
    }
    return endedAt >= 0 ? endedAt : nil
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 2 else { return 0 }
    let mode = data[0]
    let response = mode & 1 != 0
    let tight = mode & 2 != 0
    let methods: [HTTPMethod] = [.get, .head, .post, .put, .delete, .options, .connect, .other]
    let method = methods[Int(mode >> 2) & 7]
    var splits = Splitter(data[1])
    // A few filler bytes before the message, so that offsets are absolute as in a reused read
    // buffer; an exact-size allocation so that AddressSanitizer sees any read past the end.
    let offset = 3
    let n = size - 2
    let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: offset + n)
    defer { buf.deallocate() }
    buf.initialize(repeating: 90, count: offset)
    (buf + offset).update(from: data + 2, count: n)
    let end = offset + n

    var parser = makeParser(tight: tight)
    var head = HTTPHead()
    var start = offset
    for _ in 0..<8 {   // pipelined messages
        guard start < end else { break }
        let r = parseIncrementally(&parser, buf, start: start, end: end, response: response, splits: &splits, into: &head)
        var fresh = makeParser(tight: tight)
        var head2 = HTTPHead()
        let r2 = response ? fresh.parseResponse(buf, start: start, end: end, into: &head2)
                          : fresh.parseRequest(buf, start: start, end: end, into: &head2)
        switch (r, r2) {
        case (.complete, .complete):
            check(head.headEnd == head2.headEnd && head.fields.count == head2.fields.count && head.contentLength == head2.contentLength
                  && head.chunked == head2.chunked, "incremental and one-shot parses agree")
        case (.error, .error), (.incomplete, .incomplete):
            break
        default:
            check(false, "incremental (\(r)) and one-shot (\(r2)) parses agree")
        }
        guard case .complete = r else { break }
        checkHead(head, buf, start: start, end: end, response: response)
        parser.resetScan()
        guard let took = frameBody(head, buf + head.headEnd, end - head.headEnd, response: response, method: method, splits: &splits)
        else { break }
        start = head.headEnd + took
    }
    return 0
}

/// The process entry: SwiftPM links `main` as `FuzzHTTP1_main`; libFuzzer's driver takes over.
@_cdecl("FuzzHTTP1_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    mesh_fuzz_main(argc, argv)
}
