import MeshCore
import MeshHTTP

/// A trace context as a request carried it: W3C `traceparent` (and whether a `tracestate` may be
/// kept), B3 multi-header (`x-b3-*`) or single-header (`b3`). Parsed strictly from the header
/// bytes, in place; a header that breaks its format is treated as absent (never half used).
struct TraceContext: Equatable {
    /// The incoming sampling decision: unset (the sidecar decides), sampled, not sampled, or
    /// B3 debug (sampled, and `x-b3-flags: 1` / `d` forwarded).
    enum Sampling: UInt8 { case unset, sampled, notSampled, debug }

    var traceHigh: UInt64 = 0
    var traceLow: UInt64 = 0
    /// The caller's span (the parent of this hop's span); 0 when the trace starts here.
    var spanID: UInt64 = 0
    var sampling: Sampling = .unset
    /// A trace id came in (traceHigh/traceLow/spanID are set).
    var hasIDs: Bool { traceHigh != 0 || traceLow != 0 }
    /// The B3 trace id was 64-bit (forwarded as 16 hex digits again).
    var trace64 = false

    /// This context came from W3C `w3c`; `b` is the B3 context the same request carried. When
    /// it is the same trace, B3's 64-bit width and debug flag are kept.
    mutating func adoptB3Form(_ b: TraceContext, w3c: TraceContext) {
        guard b.hasIDs, w3c.traceLow == b.traceLow, w3c.traceHigh == b.traceHigh || (b.trace64 && w3c.traceHigh == 0) else { return }
        if b.trace64 { trace64 = true }
        if b.sampling == .debug && w3c.sampling == .sampled { sampling = .debug }
    }
}

/// Strict parsers of the trace headers (W3C Trace Context level 1, B3). Every function reads a
/// header value in place and returns nil for anything outside the format: wrong length, a
/// non-lowercase-hex digit, an all-zero id, version `ff`, a value longer than the bound.
enum TraceHeaders {
    /// Longest header value looked at; a longer one is treated as absent.
    static let maxValue = 512
    /// Longest `tracestate` forwarded as received (W3C: 32 members; implementations may
    /// drop it beyond 512 bytes); a longer one is dropped.
    static let maxTraceState = 512

    @inline(__always) static func hexDigit(_ c: UInt8) -> UInt64? {
        if c >= 48 && c <= 57 { return UInt64(c &- 48) }
        if c >= 97 && c <= 102 { return UInt64(c &- 87) }
        return nil
    }

    /// `n` (<= 16) lowercase hex digits at `p`.
    @inline(__always) static func hex(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64? {
        var v: UInt64 = 0
        for i in 0..<n {
            guard let d = hexDigit(p[i]) else { return nil }
            v = v << 4 | d
        }
        return v
    }

    /// W3C `traceparent`: `version-traceid(32)-parentid(16)-flags(2)`. Version 00 is exactly 55
    /// bytes; a later version (not `ff`) may append `-...` after the flags.
    static func parseTraceparent(_ p: UnsafePointer<UInt8>, _ n: Int) -> TraceContext? {
        guard n >= 55 && n <= maxValue else { return nil }
        guard let version = hex(p, 2), version != 0xff else { return nil }
        if version == 0 && n != 55 { return nil }
        if n > 55 && p[55] != UInt8(ascii: "-") { return nil }
        guard p[2] == UInt8(ascii: "-"), p[35] == UInt8(ascii: "-"), p[52] == UInt8(ascii: "-") else { return nil }
        guard let hi = hex(p + 3, 16), let lo = hex(p + 19, 16), hi | lo != 0 else { return nil }
        guard let span = hex(p + 36, 16), span != 0 else { return nil }
        guard let flags = hex(p + 53, 2) else { return nil }
        return TraceContext(traceHigh: hi, traceLow: lo, spanID: span, sampling: flags & 1 == 1 ? .sampled : .notSampled)
    }

    /// A B3 trace id: 16 or 32 lowercase hex digits, not all zero.
    static func parseB3TraceID(_ p: UnsafePointer<UInt8>, _ n: Int) -> (high: UInt64, low: UInt64, is64: Bool)? {
        switch n {
        case 16:
            guard let lo = hex(p, 16), lo != 0 else { return nil }
            return (0, lo, true)
        case 32:
            guard let hi = hex(p, 16), let lo = hex(p + 16, 16), hi | lo != 0 else { return nil }
            return (hi, lo, false)
        default:
            return nil
        }
    }

    /// A B3 span id: 16 lowercase hex digits, not all zero.
    static func parseB3SpanID(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64? {
        guard n == 16, let v = hex(p, 16), v != 0 else { return nil }
        return v
    }

    /// `x-b3-sampled`: `1` or `0` (and the legacy `true`/`false`).
    static func parseB3Sampled(_ p: UnsafePointer<UInt8>, _ n: Int) -> TraceContext.Sampling? {
        if n == 1 && p[0] == UInt8(ascii: "1") { return .sampled }
        if n == 1 && p[0] == UInt8(ascii: "0") { return .notSampled }
        if ASCII.equalsLower(p, n, "true") { return .sampled }
        if ASCII.equalsLower(p, n, "false") { return .notSampled }
        return nil
    }

    /// Single-header `b3`: `{traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or only a
    /// sampling state (`0`, `1`, `d`).
    static func parseB3Single(_ p: UnsafePointer<UInt8>, _ n: Int) -> TraceContext? {
        guard n > 0 && n <= 128 else { return nil }
        if n == 1 {
            guard let s = b3SamplingState(p[0]) else { return nil }
            return TraceContext(sampling: s)
        }
        // The trace id runs to the first '-'.
        var i = 0
        while i < n && p[i] != UInt8(ascii: "-") { i += 1 }
        guard i < n, let t = parseB3TraceID(p, i) else { return nil }
        var rest = n - i - 1
        var q = p + i + 1
        guard rest >= 16, let span = parseB3SpanID(q, 16) else { return nil }
        var ctx = TraceContext(traceHigh: t.high, traceLow: t.low, spanID: span, sampling: .unset, trace64: t.is64)
        rest -= 16; q += 16
        if rest == 0 { return ctx }
        guard rest >= 2, q[0] == UInt8(ascii: "-"), let s = b3SamplingState(q[1]) else { return nil }
        ctx.sampling = s
        rest -= 2; q += 2
        if rest == 0 { return ctx }
        guard rest == 17, q[0] == UInt8(ascii: "-"), parseB3SpanID(q + 1, 16) != nil else { return nil }
        return ctx
    }

    @inline(__always) static func b3SamplingState(_ c: UInt8) -> TraceContext.Sampling? {
        switch c {
        case UInt8(ascii: "1"): return .sampled
        case UInt8(ascii: "0"): return .notSampled
        case UInt8(ascii: "d"): return .debug
        default: return nil
        }
    }

    /// The sampling decision of a request: the caller's when it sent one (sampled, not sampled,
    /// B3 debug), else a draw at `ppm` per million (Telemetry's `randomSamplingPercentage`).
    /// Never `.unset`.
    @inline(__always) static func decide(_ incoming: TraceContext.Sampling, ppm: UInt64, _ rng: inout FastRandom) -> TraceContext.Sampling {
        switch incoming {
        case .sampled, .debug, .notSampled: return incoming
        case .unset: return ProxySnapshot.Route.draw(ppm, &rng) ? .sampled : .notSampled
        }
    }

    /// Lowercase hex of `v` in `width` (16 or fewer) digits at `out`.
    @inline(__always) static func writeHex(_ v: UInt64, width: Int, _ out: UnsafeMutablePointer<UInt8>) {
        let digits: StaticString = "0123456789abcdef"
        var x = v
        var i = width - 1
        while i >= 0 {
            out[i] = digits.utf8Start[Int(x & 15)]
            x >>= 4
            i -= 1
        }
    }
}

/// Which trace headers a request carried, by name; found in one pass over its fields.
enum TraceHeaderName: UInt8 {
    case none, traceparent, tracestate, b3, b3TraceID, b3SpanID, b3ParentSpanID, b3Sampled, b3Flags

    /// The trace header named `p[0..<n]` (lowercase, as `MessageHead` keeps names), or `.none`.
    @inline(__always) static func classify(_ p: UnsafePointer<UInt8>, _ n: Int) -> TraceHeaderName {
        switch n {
        case 2: return ASCII.equalsLower(p, 2, "b3") ? .b3 : .none
        case 10:
            if ASCII.equalsLower(p, 10, "tracestate") { return .tracestate }
            if ASCII.equalsLower(p, 10, "x-b3-flags") { return .b3Flags }
            return .none
        case 11:
            if ASCII.equalsLower(p, 11, "traceparent") { return .traceparent }
            if ASCII.equalsLower(p, 11, "x-b3-spanid") { return .b3SpanID }
            return .none
        case 12:
            if ASCII.equalsLower(p, 12, "x-b3-traceid") { return .b3TraceID }
            if ASCII.equalsLower(p, 12, "x-b3-sampled") { return .b3Sampled }
            return .none
        case 17: return ASCII.equalsLower(p, 17, "x-b3-parentspanid") ? .b3ParentSpanID : .none
        default: return .none
        }
    }
}

/// The trace headers of one request found in its fields, then the context they give: W3C first
/// when valid, else single-header `b3`, else the `x-b3-*` set. A family whose headers break
/// their format (or repeat) is treated as absent as a whole.
struct IncomingTrace {
    /// Field indices, -1 when absent; `dup*`: the header came more than once.
    var traceparent = -1, tracestate = -1, b3 = -1
    var b3TraceID = -1, b3SpanID = -1, b3ParentSpanID = -1, b3Sampled = -1, b3Flags = -1
    var duplicateW3C = false, duplicateB3 = false, duplicateB3Multi = false
    /// `tracestate` came more than once: none of it is forwarded (the `traceparent` stays valid).
    var duplicateTraceState = false
    /// Any trace header was seen (its fields are dropped and written again).
    var any = false

    /// Notes field `i` named `name`.
    mutating func note(_ name: TraceHeaderName, _ i: Int) {
        if name == .none { return }
        any = true
        @inline(__always) func set(_ slot: inout Int, _ dup: inout Bool) { if slot >= 0 { dup = true } else { slot = i } }
        switch name {
        case .none: break
        case .traceparent: set(&traceparent, &duplicateW3C)
        case .tracestate: set(&tracestate, &duplicateTraceState)
        case .b3: set(&b3, &duplicateB3)
        case .b3TraceID: set(&b3TraceID, &duplicateB3Multi)
        case .b3SpanID: set(&b3SpanID, &duplicateB3Multi)
        case .b3ParentSpanID: set(&b3ParentSpanID, &duplicateB3Multi)
        case .b3Sampled: set(&b3Sampled, &duplicateB3Multi)
        case .b3Flags: set(&b3Flags, &duplicateB3Multi)
        }
    }

    /// The result of reading the headers.
    struct Result: Equatable {
        var context = TraceContext()
        /// The W3C `traceparent` was valid (its `tracestate` may be forwarded as received).
        var w3cValid = false
        /// Which B3 form the caller used (written back in the same form), if valid.
        var b3Multi = false
        var b3Single = false
    }

    /// Reads the headers (values through `value(i)`).
    func resolve(_ value: (Int) -> (UnsafePointer<UInt8>, Int)) -> Result {
        var r = Result()
        var w3c: TraceContext? = nil
        if traceparent >= 0 && !duplicateW3C {
            let (p, n) = value(traceparent)
            w3c = TraceHeaders.parseTraceparent(p, n)
        }
        var single: TraceContext? = nil
        if b3 >= 0 && !duplicateB3 {
            let (p, n) = value(b3)
            single = TraceHeaders.parseB3Single(p, n)
        }
        var multi: TraceContext? = nil
        if !duplicateB3Multi && (b3TraceID >= 0 || b3SpanID >= 0 || b3Sampled >= 0 || b3Flags >= 0 || b3ParentSpanID >= 0) {
            multi = resolveMulti(value)
        }
        r.b3Multi = multi != nil
        r.b3Single = single != nil
        if let m = multi, m.hasIDs { r.context = m }
        if let s = single, s.hasIDs { r.context = s }
        if let w = w3c {
            r.w3cValid = true
            r.context = w
            // The same trace in B3 too (a previous hop wrote both): a 64-bit B3 id stays 64-bit,
            // and B3's debug flag (which W3C cannot carry) stays on.
            if let b = single { r.context.adoptB3Form(b, w3c: w) }
            if let b = multi { r.context.adoptB3Form(b, w3c: w) }
        }
        // A B3 sampling-only header set decides sampling for the trace W3C carried or the one
        // that starts here; W3C carries its own decision.
        if w3c == nil, r.context.sampling == .unset {
            if let s = single, s.sampling != .unset { r.context.sampling = s.sampling }
            else if let m = multi, m.sampling != .unset { r.context.sampling = m.sampling }
        }
        return r
    }

    /// The `x-b3-*` set: trace and span id together or neither; sampled and flags optional;
    /// a parent span id only with the ids.
    private func resolveMulti(_ value: (Int) -> (UnsafePointer<UInt8>, Int)) -> TraceContext? {
        var ctx = TraceContext()
        if b3TraceID >= 0 || b3SpanID >= 0 {
            guard b3TraceID >= 0, b3SpanID >= 0 else { return nil }
            let (tp, tn) = value(b3TraceID)
            guard let t = TraceHeaders.parseB3TraceID(tp, tn) else { return nil }
            let (sp, sn) = value(b3SpanID)
            guard let s = TraceHeaders.parseB3SpanID(sp, sn) else { return nil }
            if b3ParentSpanID >= 0 {
                let (pp, pn) = value(b3ParentSpanID)
                guard TraceHeaders.parseB3SpanID(pp, pn) != nil else { return nil }
            }
            ctx.traceHigh = t.high; ctx.traceLow = t.low; ctx.spanID = s; ctx.trace64 = t.is64
        } else if b3ParentSpanID >= 0 {
            return nil
        }
        if b3Sampled >= 0 {
            let (p, n) = value(b3Sampled)
            guard let s = TraceHeaders.parseB3Sampled(p, n) else { return nil }
            ctx.sampling = s
        }
        if b3Flags >= 0 {
            let (p, n) = value(b3Flags)
            if n == 1 && p[0] == UInt8(ascii: "1") { ctx.sampling = .debug }
            else if !(n == 1 && p[0] == UInt8(ascii: "0")) { return nil }
        }
        return ctx
    }
}
