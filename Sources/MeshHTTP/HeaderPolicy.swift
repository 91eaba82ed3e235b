import MeshCore

/// The one policy for header fields a proxy receives, the same on every protocol path
/// (RFC 9110 §7.6.1, RFC 9113 §8.2.2): connection-specific fields (`connection`, `keep-alive`,
/// `proxy-connection`, `transfer-encoding`, and on HTTP/1.1 the names `connection` lists) are
/// dropped; `te` survives only as `trailers`; `host` becomes the authority; the caller's
/// `x-forwarded-client-cert` is dropped (the inbound sidecar sets its own); the mesh's
/// `x-mesh-peer-metadata` is read, never forwarded; `upgrade` is kept for a tunnel only.
/// Framing (`content-length` or chunked) is the writers' business.
public enum HeaderPolicy {
    /// Takes one received field into `head`. `validate`: check the value for bytes that would
    /// split an HTTP/1.1 head (values from HTTP/2; the HTTP/1.1 parser already refuses them).
    @inline(__always)
    public static func ingest(_ head: MessageHead, _ n: UnsafePointer<UInt8>, _ nl: Int,
                              _ v: UnsafePointer<UInt8>, _ vl: Int, validate: Bool) {
        let kind = KnownHeader.classify(n, nl)
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
            if validate && !all(v, vl, CharClass.host) { head.malformed = "invalid host"; return }
            if head.authority.isEmpty { head.authority = head.keep(v, vl) }
            return
        default:
            break
        }
        if validate {
            // What the HTTP/1.1 parser would refuse must not reach an HTTP/1.1 hop from HTTP/2.
            let t = CharClass.table
            if nl == 0 { head.malformed = "empty header name"; return }
            for i in 0..<nl where t[Int(n[i])] & CharClass.token == 0 {
                head.malformed = "invalid header name"
                return
            }
            for i in 0..<vl where t[Int(v[i])] & CharClass.value == 0 {
                head.malformed = "header value with CR, LF, NUL or a control byte"
                return
            }
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
    /// is not forwarded: the hop decides it). Values are checked as the HTTP/1.1 parser checks
    /// a request line and Host (nghttp2 checks them too; this does not rely on it).
    public static func ingestPseudo(_ head: MessageHead, _ n: UnsafePointer<UInt8>, _ nl: Int,
                                    _ v: UnsafePointer<UInt8>, _ vl: Int) {
        switch nl {
        case 5 where ASCII.equalsLower(n, 5, ":path"):
            if vl == 0 || !all(v, vl, CharClass.target) { head.malformed = "invalid :path"; return }
            head.path = head.keep(v, vl)
            head.originalPath = head.path
        case 7 where ASCII.equalsLower(n, 7, ":method"):
            if vl == 0 || !all(v, vl, CharClass.token) { head.malformed = "invalid :method"; return }
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

    /// One trailer field (after the body): framing, connection-specific and routing fields never
    /// travel as trailers (RFC 9110 §6.5.1).
    public static func ingestTrailer(_ head: MessageHead, _ n: UnsafePointer<UInt8>, _ nl: Int,
                                     _ v: UnsafePointer<UInt8>, _ vl: Int) {
        if nl == 0 || n[0] == UInt8(ascii: ":") { return }
        switch KnownHeader.classify(n, nl) {
        case .other, .xRequestID, .trailer: break
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
