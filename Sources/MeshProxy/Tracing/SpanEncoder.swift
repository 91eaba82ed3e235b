import MeshCore
import MeshHTTP

/// Encodes one exchange's span as an OTLP `Span` message (opentelemetry-proto
/// `trace/v1/trace.proto`) with Envoy/Istio's span tags, from the exchange's own state, into
/// the memory of a queue slot. Nothing allocates: the workload's, route's and cluster's tags
/// were encoded at snapshot time (`TracingTable`), the request's values are copied from its head.
enum SpanEncoder {
    // Span field numbers.
    static let traceID = 1, spanID = 2, parentSpanID = 4, name = 5, kind = 6, start = 7, end = 8, attributes = 9, statusField = 15
    /// `Span.SpanKind`.
    static let kindServer: UInt64 = 2, kindClient: UInt64 = 3
    /// `Status.StatusCode`.
    static let statusError: UInt64 = 2
    /// grpc-status codes Envoy's tracer counts as upstream errors (bit per code): 2, 4, 8, 12,
    /// 13, 14, 15.
    static let grpcUpstreamErrors = 1 << 2 | 1 << 4 | 1 << 8 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15

    static func encode(_ e: Exchange, into w: inout ProtobufWriter, status st: Int, flag f: ResponseFlag, local: Bool, endWall: UInt64) {
        let t = e.snapshot.tracing
        let tr = e.trace
        let r = e.request
        w.id128(traceID, high: tr.traceHigh, low: tr.traceLow)
        w.id64(spanID, tr.span)
        if tr.parent != 0 { w.id64(parentSpanID, tr.parent) }
        // Istio's operation name: `<host>/*`.
        let auth = e.clientAuthority.isEmpty ? r.authority : e.clientAuthority
        let star: StaticString = "/*"
        w.bytesParts(name, r.pointer(auth), Int(auth.length), star.utf8Start, 2)
        w.varint(kind, e.inbound ? kindServer : kindClient)
        w.fixed64(start, tr.startWall)
        w.fixed64(end, max(endWall, tr.startWall))
        // Status { message = 2, code = 3 }: ERROR on 5xx, no response, and a local reply with a
        // response flag (not a CORS preflight, direct response or redirect).
        // The message is the response flag, when there is one.
        // A gRPC answer is an ERROR when its grpc-status is one of Envoy's upstream errors
        // (Unknown, DeadlineExceeded, ResourceExhausted, Unimplemented, Internal, Unavailable,
        // DataLoss), as Envoy's tracer tags `error`.
        let g = e.grpc
        let grpcError = g >= 0 && g <= 16 && (1 << g) & grpcUpstreamErrors != 0
        if st >= 500 || st == 0 || (local && f != .none) || grpcError {
            let code = f.code
            let msg = f == .none ? 0 : ProtobufWriter.delimitedSize(2, code.utf8CodeUnitCount)
            if w.beginDelimited(statusField, length: msg + 2) {
                if f != .none { w.bytes(2, code.utf8Start, code.utf8CodeUnitCount) }
                w.varint(3, statusError)
            }
        }
        // Tags.
        if !r.method.isEmpty { w.stringKeyValue(attributes, key: "http.method", value: r.pointer(r.method), Int(r.method.length)) }
        var pn = Int(r.originalPath.length)
        let pp = r.pointer(r.originalPath)
        var i = 0
        while i < pn && pp[i] != UInt8(ascii: "?") { i += 1 }
        pn = i
        let scheme: StaticString = tr.https ? "https://" : "http://"
        w.stringKeyValueParts(attributes, key: "http.url", scheme.utf8Start, scheme.utf8CodeUnitCount,
                              r.pointer(auth), Int(auth.length), pp, pn)
        var digits = DecimalDigits()
        digits.set(UInt64(st))
        digits.withBytes { w.stringKeyValue(attributes, key: "http.status_code", value: $0, $1) }
        switch r.version {
        case .http10: w.stringKeyValue(attributes, key: "http.protocol", value: "HTTP/1.0")
        case .http11: w.stringKeyValue(attributes, key: "http.protocol", value: "HTTP/1.1")
        case .http2: w.stringKeyValue(attributes, key: "http.protocol", value: "HTTP/2")
        }
        if g >= 0 && g <= 16 {
            digits.set(UInt64(g))
            digits.withBytes { w.stringKeyValue(attributes, key: "grpc.status_code", value: $0, $1) }
        }
        let fc = f.code
        w.stringKeyValue(attributes, key: "response_flags", value: fc.utf8Start, fc.utf8CodeUnitCount)
        t.raw(&w, e.cluster.isNone || e.cluster.index >= t.clusterAttributes.count ? t.noCluster : t.clusterAttributes[e.cluster.index])
        if e.inbound { t.raw(&w, t.inboundRoute) }
        else if !e.routeID.isNone && e.routeID.index < t.routeAttributes.count { t.raw(&w, t.routeAttributes[e.routeID.index]) }
        t.raw(&w, t.workloadAttributes)
        if let p = tr.peer {
            var a = AddressText()
            a.set(p)
            a.withBytes { w.stringKeyValue(attributes, key: "peer.address", value: $0, $1) }
        }
        if r.requestIDIndex >= 0 {
            let v = r.fields[r.requestIDIndex].value
            w.stringKeyValue(attributes, key: "guid:x-request-id", value: r.pointer(v), Int(v.length))
        }
        let ua: StaticString = "user-agent"
        _ = r.withValue(ua.utf8Start, ua.utf8CodeUnitCount) { w.stringKeyValue(attributes, key: "user_agent", value: $0, $1) }
        digits.set(e.requestBytes)
        digits.withBytes { w.stringKeyValue(attributes, key: "request_size", value: $0, $1) }
        digits.set(e.responseBytes)
        digits.withBytes { w.stringKeyValue(attributes, key: "response_size", value: $0, $1) }
        for tag in t.headerTags {
            tag.key.withUnsafeBufferPointer { k in
                tag.header.withUnsafeBufferPointer { h in
                    let found: Bool? = r.withValue(h.baseAddress!, h.count) { v, n in
                        w.stringKeyValue(attributes, key: k.baseAddress!, k.count, value: v, n)
                        return true
                    }
                    if found == nil, let d = tag.defaultValue {
                        d.withUnsafeBufferPointer { db in
                            w.stringKeyValue(attributes, key: k.baseAddress!, k.count, value: db.baseAddress ?? k.baseAddress!, db.count)
                        }
                    }
                }
            }
        }
    }
}

extension TracingTable {
    /// Copies precompiled fields into the span (skipped whole when they do not fit).
    @inline(__always) func raw(_ w: inout ProtobufWriter, _ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { b in if let p = b.baseAddress { w.raw(p, b.count) } }
    }
}

extension ProtobufWriter {
    /// A length-delimited field made of two pieces.
    mutating func bytesParts(_ field: Int, _ a: UnsafePointer<UInt8>, _ an: Int, _ b: UnsafePointer<UInt8>, _ bn: Int) {
        guard beginDelimited(field, length: an + bn) else { return }
        raw(a, an)
        raw(b, bn)
    }

    /// A string `KeyValue` whose value is three pieces (a URL).
    mutating func stringKeyValueParts(_ field: Int, key: StaticString, _ a: UnsafePointer<UInt8>, _ an: Int,
                                      _ b: UnsafePointer<UInt8>, _ bn: Int, _ c: UnsafePointer<UInt8>, _ cn: Int) {
        let vl = an + bn + cn
        let any = ProtobufWriter.delimitedSize(1, vl)
        let kv = ProtobufWriter.delimitedSize(1, key.utf8CodeUnitCount) + ProtobufWriter.delimitedSize(2, any)
        guard beginDelimited(field, length: kv) else { return }
        bytes(1, key.utf8Start, key.utf8CodeUnitCount)
        beginDelimited(2, length: any)
        beginDelimited(1, length: vl)
        raw(a, an); raw(b, bn); raw(c, cn)
    }
}

/// A decimal number's digits in a fixed buffer (no String).
struct DecimalDigits {
    private var buf: (UInt64, UInt64, UInt64) = (0, 0, 0)
    private var start = 24

    mutating func set(_ v: UInt64) {
        var x = v
        var i = 24
        withUnsafeMutableBytes(of: &buf) { b in
            repeat {
                i -= 1
                b[i] = UInt8(48 + x % 10)
                x /= 10
            } while x != 0
        }
        start = i
    }

    func withBytes<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
        var copy = buf
        let s = start
        return withUnsafeBytes(of: &copy) { body($0.baseAddress!.assumingMemoryBound(to: UInt8.self) + s, 24 - s) }
    }
}

/// An IP address as text in a fixed buffer (dotted IPv4, or IPv6 as eight hex groups).
struct AddressText {
    private var buf: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)
    private var count = 0

    mutating func set(_ a: IPEndpoint) {
        var n = 0
        withUnsafeMutableBytes(of: &buf) { b in
            func put(_ c: UInt8) { b[n] = c; n += 1 }
            func dec(_ v: Int) {
                if v >= 100 { put(UInt8(48 + v / 100)) }
                if v >= 10 { put(UInt8(48 + v / 10 % 10)) }
                put(UInt8(48 + v % 10))
            }
            if a.isIPv4 {
                let v = UInt32(truncatingIfNeeded: a.low)
                dec(Int(v >> 24)); put(46); dec(Int(v >> 16 & 255)); put(46); dec(Int(v >> 8 & 255)); put(46); dec(Int(v & 255))
            } else {
                let hex: StaticString = "0123456789abcdef"
                for g in 0..<8 {
                    let word = g < 4 ? a.high : a.low
                    let v = Int(word >> (UInt64(3 - g % 4) * 16) & 0xffff)
                    if g > 0 { put(58) }
                    var started = false
                    for s in stride(from: 12, through: 0, by: -4) {
                        let d = v >> s & 15
                        if d != 0 || started || s == 0 { put(hex.utf8Start[d]); started = true }
                    }
                }
            }
        }
        count = n
    }

    func withBytes<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
        var copy = buf
        let n = count
        return withUnsafeBytes(of: &copy) { body($0.baseAddress!.assumingMemoryBound(to: UInt8.self), n) }
    }
}
