import MeshCore

/// The one policy for header fields a proxy receives, the same on every protocol path
/// (RFC 9110 §7.6.1, RFC 9113 §8.2.2): connection-specific fields (`connection`, `keep-alive`,
/// `proxy-connection`, `transfer-encoding`, and on HTTP/1.1 the names `connection` lists) are
/// dropped; `te` survives only as `trailers`; `host` becomes the authority; the caller's
/// `x-forwarded-client-cert` is dropped (the inbound sidecar sets its own); the mesh's
/// `x-mesh-peer-metadata` is read, never forwarded; `upgrade` is kept for a tunnel only.
/// Framing (`content-length` or chunked) is the writers' business.
public enum HeaderPolicy {
    /// Takes one received field into `head`. Names and values arrive checked by whoever read
    /// them, with the same rules: the HTTP/1.1 parser (tokens; no CTL but HTAB in values) or
    /// nghttp2 (RFC 9113 §8.2.1: lowercase tokens; no NUL, CR, LF or CTL in values), so nothing
    /// here can split an HTTP/1.1 head (`FuzzExchangeHead` checks that).
    public static func ingest(_ head: MessageHead, _ n: UnsafePointer<UInt8>, _ nl: Int,
                              _ v: UnsafePointer<UInt8>, _ vl: Int) {
        ingest(head, n, nl, v, vl, kind: KnownHeader.classify(n, nl))
    }

    /// The same, for a field whose kind the reader already found (the HTTP/1.1 parser's). Never
    /// inlined: one copy for every reader keeps the head path within the instruction cache
    /// (callgrind's cache simulation: inlined into each reader it doubled I1 misses).
    @inline(never)
    public static func ingest(_ head: MessageHead, _ n: UnsafePointer<UInt8>, _ nl: Int,
                              _ v: UnsafePointer<UInt8>, _ vl: Int, kind: KnownHeader) {
        if kind.isHopByHop {
            switch kind {
            case .te:
                if ASCII.equalsLower(v, vl, "trailers") { head.teTrailers = true }
                return
            case .upgrade:
                break   // kept, not forwarded: a tunnel's upstream request names it
            default:
                return
            }
        }
        switch kind {
        case .xForwardedClientCert:
            return
        case .host:
            // Checked as a Host even from HTTP/2 (third FuzzExchangeHead finding: nghttp2 lets
            // `host: \xff` through, which no HTTP/1.1 request may carry).
            if !all(v, vl, CharClass.host) { head.malformed = "invalid host"; return }
            if head.authority.isEmpty { head.authority = head.keep(v, vl) }
            return
        default:
            break
        }
        switch kind {
        case .contentLength:
            guard let x = decimal(v, vl) else { head.malformed = "invalid content-length"; return }
            if head.contentLength >= 0 && head.contentLength != x { head.malformed = "conflicting content-length"; return }
            if head.contentLength >= 0 { return }
            head.contentLength = x
            head.addField(n, nl, v, vl, kind: kind)
        case .xRequestID:
            if head.requestIDIndex < 0 { head.requestIDIndex = head.addField(n, nl, v, vl, kind: kind) }
            else { head.addField(n, nl, v, vl, kind: kind) }
        case .meshPeerMetadata:
            head.peerMetadataIndex = head.addField(n, nl, v, vl, kind: kind, forwarded: false)
        case .upgrade:
            head.upgradeIndex = head.addField(n, nl, v, vl, kind: kind, forwarded: false)
        case .expect:
            if ASCII.equalsLower(v, vl, "100-continue") { head.expectContinue = true }
            head.addField(n, nl, v, vl, kind: kind)
        default:
            if nl == 12 && vl >= 16 && ASCII.equalsLower(v, 16, "application/grpc") && ASCII.equalsLower(n, 12, "content-type") {
                head.isGRPC = true
            }
            head.addField(n, nl, v, vl, kind: kind)
        }
    }

    /// Takes one HTTP/2 pseudo-header (`:method`, `:path`, `:authority`, `:status`; `:scheme`
    /// is not forwarded: the hop decides it). nghttp2 checked the bytes of `:method` and `:path`
    /// with the HTTP/1.1 parser's rules (tokens; no SP or CTL), not that a path is in origin form
    /// (found by FuzzExchangeHead: `pk/g.Svc/M` went out as a request line the parser refuses),
    /// and its rule for `:authority` lets through bytes a Host may not hold (`@`, sub-delims):
    /// those two are checked here.
    public static func ingestPseudo(_ head: MessageHead, _ n: UnsafePointer<UInt8>, _ nl: Int,
                                    _ v: UnsafePointer<UInt8>, _ vl: Int) {
        switch nl {
        case 5 where ASCII.equalsLower(n, 5, ":path"):
            // Origin form (`/...`) or `*` only: anything else is no HTTP/1.1 request target.
            if vl == 0 || (v[0] != UInt8(ascii: "/") && !(vl == 1 && v[0] == UInt8(ascii: "*"))) {
                head.malformed = "invalid :path"
                return
            }
            head.path = head.keep(v, vl)
            head.originalPath = head.path
        case 7 where ASCII.equalsLower(n, 7, ":method"):
            head.method = head.keep(v, vl)
            head.methodKind = HTTPMethod.classify(v, vl)
        case 7 where ASCII.equalsLower(n, 7, ":status"):
            var st = 0
            for i in 0..<min(vl, 3) where v[i] >= 48 && v[i] <= 57 { st = st * 10 + Int(v[i] - 48) }
            head.status = st
        case 10 where ASCII.equalsLower(n, 10, ":authority"):
            if !all(v, vl, CharClass.host) { head.malformed = "invalid :authority"; return }
            head.authority = head.keep(v, vl)
        default:
            break
        }
    }

    /// A request head read from HTTP/2 is complete: it needs `:method` and `:path`, and `*` is a
    /// target only for OPTIONS (RFC 9112 §3.2.4; found by FuzzExchangeHead: `GET *` went out as a
    /// request line the HTTP/1.1 parser refuses).
    public static func completeRequest(_ head: MessageHead) {
        if head.malformed != nil { return }
        if head.method.isEmpty { head.malformed = "missing :method"; return }
        if head.path.isEmpty { head.malformed = "missing :path"; return }
        if head.path.length == 1 && head.pointer(head.path)[0] == UInt8(ascii: "*") && head.methodKind != .options {
            head.malformed = "* is a target only for OPTIONS"
        }
    }

    /// One trailer field (after the body): framing, connection-specific and routing fields never
    /// travel as trailers (RFC 9110 §6.5.1).
    public static func ingestTrailer(_ head: MessageHead, _ n: UnsafePointer<UInt8>, _ nl: Int,
                                     _ v: UnsafePointer<UInt8>, _ vl: Int) {
        if nl == 0 || n[0] == UInt8(ascii: ":") { return }
        switch KnownHeader.classify(n, nl) {
        case .other, .xRequestID, .trailer, .traceContext: break
        default: return
        }
        for i in 0..<vl where v[i] == 13 || v[i] == 10 || v[i] == 0 { return }
        head.addField(n, nl, v, vl)
    }

    /// The trailer lines a chunked HTTP/1.1 body ended with (`name: value\r\n`...), into `head`.
    public static func ingestTrailerLines(_ head: MessageHead, _ lines: ByteBuffer) {
        TrailerLines.forEach(lines) { n, nl, v, vl in ingestTrailer(head, n, nl, v, vl) }
    }

    @inline(__always) static func all(_ p: UnsafePointer<UInt8>, _ n: Int, _ cls: UInt8) -> Bool {
        let t = CharClass.table
        for i in 0..<n where t[Int(p[i])] & cls == 0 { return false }
        return true
    }

    @inline(__always) static func decimal(_ v: UnsafePointer<UInt8>, _ vl: Int) -> Int64? {
        if vl == 0 || vl > 18 { return nil }
        var x: Int64 = 0
        for i in 0..<vl {
            let c = v[i]
            if c < 48 || c > 57 { return nil }
            x = x &* 10 &+ Int64(c &- 48)   // at most 18 digits: no overflow
        }
        return x
    }
}
