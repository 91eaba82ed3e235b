// Fuzz target: the exchange's header path (issue 15). A request head as a hostile client sends
// it, either an HTTP/2 header list (the fields nghttp2 would hand over: each passes nghttp2's own
// checks, `HTTP2FieldRules`, as in the proxy) or an HTTP/1.1 head (through the real parser), goes through HeaderPolicy into a MessageHead and out
// through H1Writer, as the proxy sends it to an HTTP/1.1 app or hop. What comes out must parse as
// exactly one HTTP/1.1 request head carrying the same method, path, authority and forwarded
// fields, and nothing the policy drops (connection-specific fields, the caller's XFCC, the mesh's
// peer metadata, a client's framing): no header splitting, no smuggling across the hop.
//
// Input layout: byte 0 is a mode (bit 0: HTTP/1.1 head, else an HTTP/2 list; bit 1: the body goes
// chunked). An HTTP/2 list is a sequence of [name length][value length][name][value].
import CFuzzDriver
import MeshCore
import MeshHTTP

func check(_ ok: @autoclosure () -> Bool, _ what: String) {
    if !ok() { fatalError("FuzzExchangeHead invariant: \(what)") }
}

nonisolated(unsafe) let head = MessageHead()
nonisolated(unsafe) let out = ByteBuffer(capacity: 256 * 1024)
nonisolated(unsafe) let input = ByteBuffer(capacity: 256 * 1024)
nonisolated(unsafe) var parser = HTTP1Parser()
/// Reads the written head back: the writer adds up to three fields (host, te, transfer-encoding)
/// to a head the first parser took at its limits, so the limits are that much wider here (the
/// invariant is about splitting and smuggling, not about a head at 100 fields growing to 101).
nonisolated(unsafe) var reparser: HTTP1Parser = {
    var p = HTTP1Parser()
    p.maxFields += 3
    p.maxHeadBytes += 512
    return p
}()
nonisolated(unsafe) var parsed = HTTPHead()
nonisolated(unsafe) var reparsed = HTTPHead()

func bytes(_ b: UnsafePointer<UInt8>, _ n: Int) -> [UInt8] { Array(UnsafeBufferPointer(start: b, count: n)) }

func trimmed(_ b: [UInt8]) -> [UInt8] {
    var s = 0, e = b.count
    while s < e && (b[s] == 32 || b[s] == 9) { s += 1 }
    while e > s && (b[e - 1] == 32 || b[e - 1] == 9) { e -= 1 }
    return Array(b[s..<e])
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzExchangeHead(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let mode = data[0]
    let p = data + 1, n = size - 1
    head.reset()
    if mode & 1 != 0 {
        input.clear()
        input.append(p, n)
        parser.resetScan()
        guard case .complete = parser.parseRequest(input.base, start: 0, end: input.writeIndex, into: &parsed) else { return 0 }
        H1HeadReader.request(&parsed, UnsafePointer(input.base), into: head)
    } else {
        var i = 0
        while i + 2 <= n {
            let nl = Int(p[i]), vl = Int(p[i + 1])
            i += 2
            guard i + nl + vl <= n else { break }
            let np = p + i, vp = p + i + nl
            i += nl + vl
            // nghttp2 resets a stream whose fields break these rules; the proxy never sees them.
            if nl > 0 && np[0] == UInt8(ascii: ":") {
                // Only the request pseudo-headers exist (RFC 9113 §8.3.1); nghttp2 refuses others.
                let name = String(decoding: UnsafeBufferPointer(start: np, count: nl), as: UTF8.self)
                switch name {
                case ":method": if !HTTP2FieldRules.method(vp, vl) { return 0 }
                case ":path": if !HTTP2FieldRules.path(vp, vl) { return 0 }
                case ":authority": if !HTTP2FieldRules.authority(vp, vl) { return 0 }
                case ":scheme": break
                default: return 0
                }
            } else if !HTTP2FieldRules.name(np, nl) || !HTTP2FieldRules.value(vp, vl) {
                return 0
            }
            if nl > 0 && np[0] == UInt8(ascii: ":") { HeaderPolicy.ingestPseudo(head, np, nl, vp, vl) }
            else { HeaderPolicy.ingest(head, np, nl, vp, vl) }
        }
        HeaderPolicy.completeRequest(head)
    }
    // The proxy answers 400 to a malformed head and never forwards it.
    if head.malformed != nil || head.method.isEmpty { return 0 }
    let chunked = mode & 2 != 0 && head.contentLength < 0
    out.clear()
    H1Writer.requestStart(head, into: out)
    if chunked { out.append("transfer-encoding: chunked\r\n") }
    out.append("\r\n")
    reparser.resetScan()
    guard case .complete = reparser.parseRequest(out.base, start: 0, end: out.writeIndex, into: &reparsed) else {
        fatalError("FuzzExchangeHead invariant: a head the policy accepted does not parse as HTTP/1.1: \(String(decoding: bytes(out.readPointer, out.readableBytes), as: UTF8.self).debugDescription)")
    }
    check(reparsed.headEnd == out.writeIndex, "the written head holds more than one head")
    let b = UnsafePointer(out.base)
    check(bytes(b + reparsed.methodStart, reparsed.methodEnd - reparsed.methodStart) == bytes(head.pointer(head.method), Int(head.method.length)), "method changed")
    let path = head.path.isEmpty ? [UInt8(ascii: "/")] : bytes(head.pointer(head.path), Int(head.path.length))
    check(bytes(b + reparsed.targetStart, reparsed.targetEnd - reparsed.targetStart) == path, "path changed")
    check(reparsed.hostIndex >= 0, "no host")
    let hf = reparsed.fields[reparsed.hostIndex]
    check(bytes(b + Int(hf.valueStart), Int(hf.valueEnd - hf.valueStart)) == trimmed(bytes(head.pointer(head.authority), Int(head.authority.length))), "authority changed")
    check(reparsed.chunked == chunked, "framing taken from the client")
    check(reparsed.connectionListed.isEmpty && !reparsed.connectionClose && !reparsed.connectionUpgrade, "a connection option reached the hop")
    // The forwarded fields, in order, then host/te/transfer-encoding that the writer adds.
    var expected: [([UInt8], [UInt8])] = []
    head.forEachForwarded { n, nl, v, vl in expected.append((bytes(n, nl), trimmed(bytes(v, vl)))) }
    var got: [([UInt8], [UInt8])] = []
    for f in reparsed.fields {
        switch f.kind {
        case .connection, .keepAlive, .proxyConnection, .upgrade, .xForwardedClientCert, .meshPeerMetadata:
            fatalError("FuzzExchangeHead invariant: a field the policy drops reached the hop")
        case .host, .transferEncoding, .te:
            continue
        default:
            got.append((bytes(b + Int(f.lineStart), Int(f.nameEnd - f.lineStart)), bytes(b + Int(f.valueStart), Int(f.valueEnd - f.valueStart))))
        }
    }
    check(got.count == expected.count, "field count changed: \(got.count) vs \(expected.count)")
    for (g, e) in zip(got, expected) { check(g.0 == e.0 && g.1 == e.1, "a field changed on the way") }
    check(reparsed.teTrailers == head.teTrailers, "te changed")
    return 0
}

/// The process entry: SwiftPM links `main` as `FuzzExchangeHead_main`; libFuzzer's driver takes over.
@_cdecl("FuzzExchangeHead_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    mesh_fuzz_main(argc, argv)
}
