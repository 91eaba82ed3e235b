import MeshCore

/// Writes a `MessageHead` as HTTP/1.1 bytes. The caller adds its framing and connection lines
/// between `…Start` and the blank line (`end`).
public enum H1Writer {
    /// `METHOD path HTTP/1.1`, `host`, then every forwarded field.
    public static func requestStart(_ h: MessageHead, into out: ByteBuffer, hostSuffix: StaticString? = nil) {
        out.append(h.pointer(h.method), Int(h.method.length))
        out.append(UInt8(ascii: " "))
        if h.path.isEmpty { out.append(UInt8(ascii: "/")) } else { out.append(h.pointer(h.path), Int(h.path.length)) }
        out.append(" HTTP/1.1\r\nhost: ")
        out.append(h.pointer(h.authority), Int(h.authority.length))
        if let s = hostSuffix { out.append(s) }
        out.append("\r\n")
        fields(h, into: out)
        if h.teTrailers { out.append("te: trailers\r\n") }
    }

    /// `HTTP/1.1 status reason`, then every forwarded field.
    public static func responseStart(_ h: MessageHead, into out: ByteBuffer) {
        out.append("HTTP/1.1 ")
        out.appendDecimal(h.status)
        out.append(UInt8(ascii: " "))
        if h.reason.isEmpty { out.append(StatusReason.phrase(h.status)) } else { out.append(h.pointer(h.reason), Int(h.reason.length)) }
        out.append("\r\n")
        fields(h, into: out)
    }

    /// Every forwarded field as `name: value` CRLF, in one reservation (the head path's hottest loop).
    @inline(__always) public static func fields(_ h: MessageHead, into out: ByteBuffer) {
        let fs = h.fields
        var total = 0
        for f in fs where f.forwarded { total &+= Int(f.name.length) &+ Int(f.value.length) &+ 4 }
        if total == 0 { return }
        out.reserve(total)
        let b = UnsafePointer(h.bytes.base)
        var w = out.writePointer
        // Raw writes: `reserve(total)` made room for exactly the bytes written below.
        for f in fs where f.forwarded {
            let nl = Int(f.name.length), vl = Int(f.value.length)
            w.update(from: b + Int(f.name.start), count: nl)
            w += nl
            w[0] = 58; w[1] = 32
            w += 2
            w.update(from: b + Int(f.value.start), count: vl)
            w += vl
            w[0] = 13; w[1] = 10
            w += 2
        }
        out.commit(total)
    }

    /// The last chunk of a chunked body with `trailers` (may be empty).
    public static func lastChunk(_ trailers: MessageHead?, into out: ByteBuffer) {
        out.append("0\r\n")
        if let t = trailers { fields(t, into: out) }
        out.append("\r\n")
    }

    /// A chunk header for `n` data bytes.
    @inline(__always) public static func chunkHeader(_ n: Int, into out: ByteBuffer) {
        out.appendHex(n)
        out.append("\r\n")
    }
}

/// Emits a `MessageHead` as HTTP/2 header fields into a session (names are already lowercase).
public enum H2Emitter {
    /// `:method`, `:scheme`, `:authority`, `:path`, then every forwarded field. The head's bytes
    /// are added in place (`addHeaderInPlace`): the caller submits before it changes `h`.
    public static func request(_ h: MessageHead, into s: HTTP2Session, scheme: StaticString = "http") {
        inPlace(s, ":method", h.pointer(h.method), Int(h.method.length))
        inPlace(s, ":scheme", scheme.utf8Start, scheme.utf8CodeUnitCount)
        inPlace(s, ":authority", h.pointer(h.authority), Int(h.authority.length))
        if h.path.isEmpty { let p: StaticString = "/"; inPlace(s, ":path", p.utf8Start, 1) }
        else { inPlace(s, ":path", h.pointer(h.path), Int(h.path.length)) }
        fieldsInPlace(h, into: s)
        if h.teTrailers { let t: StaticString = "trailers"; inPlace(s, "te", t.utf8Start, t.utf8CodeUnitCount) }
    }

    /// `:status`, then every forwarded field (added in place: the caller submits before it
    /// changes `h`).
    public static func response(_ h: MessageHead, into s: HTTP2Session) {
        status(h.status, into: s)
        fieldsInPlace(h, into: s)
    }

    @inline(__always) static func inPlace(_ s: HTTP2Session, _ name: StaticString, _ v: UnsafePointer<UInt8>, _ vl: Int) {
        s.addHeaderInPlace(name.utf8Start, name.utf8CodeUnitCount, v, vl)
    }

    /// Every forwarded field of `h`, by address (valid until the submit that follows).
    @inline(__always) static func fieldsInPlace(_ h: MessageHead, into s: HTTP2Session) {
        h.forEachForwardedWithFlags { n, nl, v, vl, fl in s.addHeaderInPlace(n, nl, v, vl, flags: fl) }
    }

    @inline(__always) public static func status(_ st: Int, into s: HTTP2Session) {
        var code: (UInt8, UInt8, UInt8) = (UInt8(48 + (st / 100) % 10), UInt8(48 + (st / 10) % 10), UInt8(48 + st % 10))
        withUnsafeBytes(of: &code) { s.addHeader(":status", $0.baseAddress!.assumingMemoryBound(to: UInt8.self), 3) }
    }

    @inline(__always) public static func fields(_ h: MessageHead, into s: HTTP2Session) {
        h.forEachForwardedWithFlags { n, nl, v, vl, fl in s.addHeader(n, nl, v, vl, flags: fl) }
    }
}

/// Standard reason phrases for the status line of a response that came without one.
public enum StatusReason {
    public static func phrase(_ status: Int) -> StaticString {
        switch status {
        case 100: return "Continue"
        case 101: return "Switching Protocols"
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 204: return "No Content"
        case 206: return "Partial Content"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 304: return "Not Modified"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 417: return "Expectation Failed"
        case 418: return "I'm a teapot"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Unknown"
        }
    }
}
