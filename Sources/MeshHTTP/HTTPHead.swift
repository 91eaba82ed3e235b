import MeshCore

/// Headers the proxy acts on; everything else is `.other` and passes through untouched.
public enum KnownHeader: UInt8, Sendable {
    case other, host, contentLength, transferEncoding, connection, upgrade, expect, te, keepAlive,
         proxyConnection, xRequestID, xForwardedClientCert, trailer,
         /// `x-mesh-peer-metadata`: the calling or answering sidecar's workload (metrics labels).
         meshPeerMetadata,
         /// `traceparent`, `tracestate`, `b3`, `x-b3-*`: a new value on every request.
         traceContext

    /// Hop-by-hop headers (RFC 9110 §7.6.1) that a proxy never forwards as they are.
    @inline(__always) public var isHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .transferEncoding, .upgrade: return true
        default: return false
        }
    }

    /// A field with no framing, routing or mesh role (`.other`, or trace context, which only
    /// differs in its HPACK flags): what `connection` may list and route operations may remove.
    @inline(__always) public var isOrdinary: Bool { self == .other || self == .traceContext }

    /// `nghttp2_nv` flags for a field of this kind, computed once per kind: values new on every
    /// request (trace context, `x-request-id`) are sent `NO_INDEX` (HPACK literal without
    /// indexing), so they never churn the connection's dynamic table.
    /// (A switch the compiler turns into a constant lookup: nothing is computed per field.)
    @inline(__always) public var hpackFlags: UInt8 {
        switch self {
        case .xRequestID, .traceContext: return 1   // NGHTTP2_NV_FLAG_NO_INDEX
        default: return 0                           // NGHTTP2_NV_FLAG_NONE
        }
    }

    /// The kind of the header named `p[0..<n]` (any case).
    @inline(__always) public static func classify(_ p: UnsafePointer<UInt8>, _ n: Int) -> KnownHeader {
        switch n {
        case 2:
            if ASCII.equalsLower(p, 2, "te") { return .te }
            return ASCII.equalsLower(p, 2, "b3") ? .traceContext : .other
        case 4: return ASCII.equalsLower(p, 4, "host") ? .host : .other
        case 6: return ASCII.equalsLower(p, 6, "expect") ? .expect : .other
        case 7:
            if ASCII.equalsLower(p, 7, "upgrade") { return .upgrade }
            if ASCII.equalsLower(p, 7, "trailer") { return .trailer }
            return .other
        case 10:
            if ASCII.equalsLower(p, 10, "connection") { return .connection }
            if ASCII.equalsLower(p, 10, "keep-alive") { return .keepAlive }
            if ASCII.equalsLower(p, 10, "tracestate") || ASCII.equalsLower(p, 10, "x-b3-flags") { return .traceContext }
            return .other
        case 11:
            return ASCII.equalsLower(p, 11, "traceparent") || ASCII.equalsLower(p, 11, "x-b3-spanid") ? .traceContext : .other
        case 12:
            if ASCII.equalsLower(p, 12, "x-request-id") { return .xRequestID }
            return ASCII.equalsLower(p, 12, "x-b3-traceid") || ASCII.equalsLower(p, 12, "x-b3-sampled") ? .traceContext : .other
        case 14: return ASCII.equalsLower(p, 14, "content-length") ? .contentLength : .other
        case 16: return ASCII.equalsLower(p, 16, "proxy-connection") ? .proxyConnection : .other
        case 17:
            if ASCII.equalsLower(p, 17, "transfer-encoding") { return .transferEncoding }
            return ASCII.equalsLower(p, 17, "x-b3-parentspanid") ? .traceContext : .other
        case 20: return ASCII.equalsLower(p, 20, "x-mesh-peer-metadata") ? .meshPeerMetadata : .other
        case 23: return ASCII.equalsLower(p, 23, "x-forwarded-client-cert") ? .xForwardedClientCert : .other
        default: return .other
        }
    }
}

/// One header line as byte offsets into the buffer it was parsed from.
public struct HeaderField: Sendable {
    public var lineStart: Int32      // first byte of the name
    public var nameEnd: Int32        // the ':'
    public var valueStart: Int32     // after leading whitespace
    public var valueEnd: Int32       // before trailing whitespace
    public var lineEnd: Int32        // after CRLF
    public var kind: KnownHeader
}

/// A parsed request or response head: byte ranges into the read buffer plus what framing and
/// routing need, materialised once. Reused across requests (the field array keeps its capacity).
public struct HTTPHead: Sendable {
    public var isRequest = true
    // Request line
    public var methodStart = 0, methodEnd = 0
    public var targetStart = 0, targetEnd = 0
    /// For absolute-form targets: the authority and the origin-form path within the target.
    public var authorityStart = 0, authorityEnd = 0
    public var pathStart = 0, pathEnd = 0
    public var isAbsoluteForm = false
    public var method: HTTPMethod = .other
    // Status line
    public var status = 0
    public var reasonStart = 0, reasonEnd = 0
    /// Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    public var minorVersion = 1
    public var fields: [HeaderField] = []
    /// First byte of the head and one past its final CRLFCRLF.
    public var headStart = 0, headEnd = 0

    // Framing and connection management.
    public var contentLength: Int64 = -1
    public var chunked = false
    public var connectionClose = false
    public var connectionKeepAlive = false
    public var connectionUpgrade = false
    public var expectContinue = false
    public var teTrailers = false
    public var hostIndex = -1
    public var upgradeIndex = -1
    public var requestIDIndex = -1
    /// Other header names listed in `Connection` (hop-by-hop by declaration), as byte ranges.
    public var connectionListed: [(start: Int32, end: Int32)] = []

    /// `reserve`: room for that many fields up front (0 for a head that is rarely parsed; the
    /// table then grows at its first parse).
    public init(reserve: Int = 32) { if reserve > 0 { fields.reserveCapacity(reserve) } }

    /// True if the field's name is one `Connection` declared hop-by-hop.
    public func isConnectionListed(_ f: HeaderField, in buf: UnsafePointer<UInt8>) -> Bool {
        let n = Int(f.nameEnd - f.lineStart)
        for r in connectionListed where Int(r.end - r.start) == n {
            var same = true
            for i in 0..<n where ASCII.lower(buf[Int(f.lineStart) + i]) != ASCII.lower(buf[Int(r.start) + i]) { same = false; break }
            if same { return true }
        }
        return false
    }

    mutating func reset(isRequest: Bool) {
        self.isRequest = isRequest
        fields.removeAll(keepingCapacity: true)
        contentLength = -1
        chunked = false
        connectionClose = false
        connectionKeepAlive = false
        connectionUpgrade = false
        expectContinue = false
        teTrailers = false
        hostIndex = -1
        upgradeIndex = -1
        requestIDIndex = -1
        if !connectionListed.isEmpty { connectionListed.removeAll(keepingCapacity: true) }
        isAbsoluteForm = false
        authorityStart = 0; authorityEnd = 0
        pathStart = 0; pathEnd = 0
        method = .other
        status = 0
        minorVersion = 1
    }

    /// Whether the connection stays open after this message (RFC 9112 §9.3).
    public var keepAlive: Bool {
        if connectionClose { return false }
        return minorVersion == 1 || connectionKeepAlive
    }
}

/// Request methods the proxy treats specially (safe/idempotent for retries, HEAD for framing).
public enum HTTPMethod: UInt8, Sendable {
    case get, head, post, put, delete, options, trace, connect, patch, other

    /// The method named by `p[0..<n]` (methods are case-sensitive).
    @inline(__always) public static func classify(_ p: UnsafePointer<UInt8>, _ n: Int) -> HTTPMethod {
        @inline(__always) func eq(_ lit: StaticString) -> Bool {
            let l = lit.utf8Start
            for i in 0..<n where p[i] != l[i] { return false }
            return true
        }
        switch n {
        case 3:
            if eq("GET") { return .get }
            if eq("PUT") { return .put }
        case 4:
            if eq("POST") { return .post }
            if eq("HEAD") { return .head }
        case 5:
            if eq("PATCH") { return .patch }
            if eq("TRACE") { return .trace }
        case 6: if eq("DELETE") { return .delete }
        case 7:
            if eq("OPTIONS") { return .options }
            if eq("CONNECT") { return .connect }
        default: break
        }
        return .other
    }

    public var isIdempotent: Bool {
        switch self {
        case .get, .head, .put, .delete, .options, .trace: return true
        default: return false
        }
    }
}

/// Why a head was refused, with the status to answer (400, 414, 431, 501, 505, or 502 for a
/// response from upstream) and a reason for the access log.
public struct HTTPParseError: Error, Sendable, Equatable {
    public let status: Int
    public let reason: StaticString
    public init(_ status: Int, _ reason: StaticString) { self.status = status; self.reason = reason }
    public static func == (a: Self, b: Self) -> Bool { a.status == b.status && a.reason.description == b.reason.description }
}
