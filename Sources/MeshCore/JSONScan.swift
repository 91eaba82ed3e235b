/// A JSON (RFC 8259) validator and lookup over raw bytes that allocates nothing: the JWT
/// verifier reads a token's header and claims with it on the request path, and the JWKS parser
/// reads key sets with it at config time. `validate` checks a whole text once (nesting bounded);
/// the lookups then walk the validated bytes and return byte ranges, never copies.
/// Object keys are compared as raw bytes (a key written with `\u` escapes matches nothing).
public enum JSONScan {
    /// A value's kind, from its first byte.
    public enum Kind: Sendable { case object, array, string, number, bool, null }

    /// A value inside the text: `start..<end` covers it whole (a string's quotes included).
    public struct Value: Sendable, Equatable {
        public var start: Int
        public var end: Int
        public init(start: Int, end: Int) { self.start = start; self.end = end }
    }

    /// Whether `p[0..<n]` is one JSON value (whitespace around it allowed), nested at most
    /// `maxDepth` deep.
    public static func validate(_ p: UnsafePointer<UInt8>, _ n: Int, maxDepth: Int = 32) -> Bool {
        var i = skipWS(p, n, 0)
        guard let e = skipValue(p, n, i, depth: maxDepth) else { return false }
        i = skipWS(p, n, e)
        return i == n
    }

    /// The whole text as a value (after `validate`).
    public static func root(_ p: UnsafePointer<UInt8>, _ n: Int) -> Value? {
        let s = skipWS(p, n, 0)
        guard let e = skipValue(p, n, s, depth: 1 << 20) else { return nil }
        return Value(start: s, end: e)
    }

    public static func kind(_ p: UnsafePointer<UInt8>, _ v: Value) -> Kind {
        switch p[v.start] {
        case 123: return .object
        case 91: return .array
        case 34: return .string
        case 116, 102: return .bool
        case 110: return .null
        default: return .number
        }
    }

    /// The member `key` of the object `obj` (the first one with that key), nil when absent or
    /// `obj` is not an object.
    public static func member(_ p: UnsafePointer<UInt8>, _ obj: Value, _ key: UnsafePointer<UInt8>, _ kn: Int) -> Value? {
        var found: Value? = nil
        forEachMember(p, obj) { ks, ke, v in
            if ke - ks == kn && (kn == 0 || memeq(p + ks, key, kn)) { found = v; return false }
            return true
        }
        return found
    }

    public static func member(_ p: UnsafePointer<UInt8>, _ obj: Value, _ key: StaticString) -> Value? {
        member(p, obj, key.utf8Start, key.utf8CodeUnitCount)
    }

    public static func member(_ p: UnsafePointer<UInt8>, _ obj: Value, _ key: [UInt8]) -> Value? {
        key.withUnsafeBufferPointer { kb in member(p, obj, kb.baseAddress ?? p, kb.count) }
    }

    /// Calls `body(keyStart, keyEnd, value)` for each member of an object (the key without its
    /// quotes, raw); `body` returns false to stop.
    public static func forEachMember(_ p: UnsafePointer<UInt8>, _ obj: Value, _ body: (Int, Int, Value) -> Bool) {
        guard obj.end - obj.start >= 2, p[obj.start] == 123 else { return }
        var i = skipWS(p, obj.end, obj.start + 1)
        while i < obj.end && p[i] == 34 {
            let ks = i + 1
            guard let ke = skipString(p, obj.end, i) else { return }
            i = skipWS(p, obj.end, ke)
            guard i < obj.end, p[i] == 58 else { return }
            i = skipWS(p, obj.end, i + 1)
            guard let ve = skipValue(p, obj.end, i, depth: 1 << 20) else { return }
            if !body(ks, ke - 1, Value(start: i, end: ve)) { return }
            i = skipWS(p, obj.end, ve)
            if i < obj.end && p[i] == 44 { i = skipWS(p, obj.end, i + 1) }
        }
    }

    /// Calls `body` with each element of an array; `body` returns false to stop.
    public static func forEachElement(_ p: UnsafePointer<UInt8>, _ arr: Value, _ body: (Value) -> Bool) {
        guard arr.end - arr.start >= 2, p[arr.start] == 91 else { return }
        var i = skipWS(p, arr.end, arr.start + 1)
        while i < arr.end && p[i] != 93 {
            guard let ve = skipValue(p, arr.end, i, depth: 1 << 20) else { return }
            if !body(Value(start: i, end: ve)) { return }
            i = skipWS(p, arr.end, ve)
            if i < arr.end && p[i] == 44 { i = skipWS(p, arr.end, i + 1) }
        }
    }

    /// A string value's content without quotes, when it has no escapes (nil otherwise, or when
    /// not a string).
    public static func plainString(_ p: UnsafePointer<UInt8>, _ v: Value) -> (start: Int, end: Int)? {
        guard v.end - v.start >= 2, p[v.start] == 34 else { return nil }
        for i in (v.start + 1)..<(v.end - 1) where p[i] == 92 { return nil }
        return (v.start + 1, v.end - 1)
    }

    /// A string value's content, unescaped (UTF-8), appended to `out`; false when not a string.
    public static func appendString(_ p: UnsafePointer<UInt8>, _ v: Value, to out: ByteBuffer) -> Bool {
        guard v.end - v.start >= 2, p[v.start] == 34 else { return false }
        var i = v.start + 1
        let e = v.end - 1
        while i < e {
            let c = p[i]
            if c != 92 { out.append(c); i += 1; continue }
            let x = p[i + 1]
            i += 2
            switch x {
            case 98: out.append(8)
            case 102: out.append(12)
            case 110: out.append(10)
            case 114: out.append(13)
            case 116: out.append(9)
            case 117:
                var cp = hex4(p, i)
                i += 4
                if cp >= 0xD800 && cp < 0xDC00 && i + 6 <= e && p[i] == 92 && p[i + 1] == 117 {
                    let lo = hex4(p, i + 2)
                    if lo >= 0xDC00 && lo < 0xE000 { cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00); i += 6 }
                }
                if cp >= 0xD800 && cp < 0xE000 { cp = 0xFFFD }
                appendUTF8(cp, out)
            default: out.append(x)   // " \ /
            }
        }
        return true
    }

    /// A number value as a 64-bit integer (a fraction is cut off; an exponent or an overflow: nil).
    public static func int64(_ p: UnsafePointer<UInt8>, _ v: Value) -> Int64? {
        var i = v.start
        var neg = false
        if i < v.end && p[i] == 45 { neg = true; i += 1 }
        guard i < v.end, p[i] >= 48, p[i] <= 57 else { return nil }
        var r: Int64 = 0
        while i < v.end && p[i] >= 48 && p[i] <= 57 {
            let (m, o1) = r.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(p[i] - 48))
            if o1 || o2 { return nil }
            r = a
            i += 1
        }
        if i < v.end && p[i] == 46 { i += 1; while i < v.end && p[i] >= 48 && p[i] <= 57 { i += 1 } }
        guard i == v.end else { return nil }
        return neg ? -r : r
    }

    // MARK: the grammar

    @inline(__always) static func memeq(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        var i = 0
        while i < n { if a[i] != b[i] { return false }; i += 1 }
        return true
    }

    private static func hex4(_ p: UnsafePointer<UInt8>, _ i: Int) -> Int {
        var v = 0
        for k in 0..<4 { v = v * 16 + (hexDigit(p[i + k]) ?? 0) }
        return v
    }

    private static func hexDigit(_ c: UInt8) -> Int? {
        switch c {
        case 48...57: return Int(c - 48)
        case 65...70: return Int(c - 55)
        case 97...102: return Int(c - 87)
        default: return nil
        }
    }

    private static func appendUTF8(_ cp: Int, _ out: ByteBuffer) {
        if cp < 0x80 { out.append(UInt8(cp)) }
        else if cp < 0x800 { out.append(UInt8(0xC0 | (cp >> 6))); out.append(UInt8(0x80 | (cp & 0x3F))) }
        else if cp < 0x10000 {
            out.append(UInt8(0xE0 | (cp >> 12))); out.append(UInt8(0x80 | ((cp >> 6) & 0x3F))); out.append(UInt8(0x80 | (cp & 0x3F)))
        } else {
            out.append(UInt8(0xF0 | (cp >> 18))); out.append(UInt8(0x80 | ((cp >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((cp >> 6) & 0x3F))); out.append(UInt8(0x80 | (cp & 0x3F)))
        }
    }

    @inline(__always) static func skipWS(_ p: UnsafePointer<UInt8>, _ n: Int, _ i0: Int) -> Int {
        var i = i0
        while i < n && (p[i] == 32 || p[i] == 9 || p[i] == 10 || p[i] == 13) { i += 1 }
        return i
    }

    /// The index just past the string starting at `i` (a quote), nil when malformed.
    static func skipString(_ p: UnsafePointer<UInt8>, _ n: Int, _ i0: Int) -> Int? {
        guard i0 < n, p[i0] == 34 else { return nil }
        var i = i0 + 1
        while i < n {
            let c = p[i]
            if c == 34 { return i + 1 }
            if c < 0x20 { return nil }
            if c == 92 {
                guard i + 1 < n else { return nil }
                switch p[i + 1] {
                case 34, 92, 47, 98, 102, 110, 114, 116: i += 2
                case 117:
                    guard i + 6 <= n else { return nil }
                    for k in 2..<6 where hexDigit(p[i + k]) == nil { return nil }
                    i += 6
                default: return nil
                }
                continue
            }
            i += 1
        }
        return nil
    }

    private static func skipNumber(_ p: UnsafePointer<UInt8>, _ n: Int, _ i0: Int) -> Int? {
        var i = i0
        if i < n && p[i] == 45 { i += 1 }
        guard i < n else { return nil }
        if p[i] == 48 { i += 1 }
        else if p[i] >= 49 && p[i] <= 57 { while i < n && p[i] >= 48 && p[i] <= 57 { i += 1 } }
        else { return nil }
        if i < n && p[i] == 46 {
            i += 1
            let s = i
            while i < n && p[i] >= 48 && p[i] <= 57 { i += 1 }
            if i == s { return nil }
        }
        if i < n && (p[i] == 101 || p[i] == 69) {
            i += 1
            if i < n && (p[i] == 43 || p[i] == 45) { i += 1 }
            let s = i
            while i < n && p[i] >= 48 && p[i] <= 57 { i += 1 }
            if i == s { return nil }
        }
        return i
    }

    private static func skipLiteral(_ p: UnsafePointer<UInt8>, _ n: Int, _ i: Int, _ lit: StaticString) -> Int? {
        let m = lit.utf8CodeUnitCount
        guard i + m <= n, memeq(p + i, lit.utf8Start, m) else { return nil }
        return i + m
    }

    /// The index just past the value starting at `i`, nil when malformed or nested past `depth`.
    static func skipValue(_ p: UnsafePointer<UInt8>, _ n: Int, _ i0: Int, depth: Int) -> Int? {
        guard i0 < n else { return nil }
        switch p[i0] {
        case 34: return skipString(p, n, i0)
        case 116: return skipLiteral(p, n, i0, "true")
        case 102: return skipLiteral(p, n, i0, "false")
        case 110: return skipLiteral(p, n, i0, "null")
        case 123:
            guard depth > 0 else { return nil }
            var i = skipWS(p, n, i0 + 1)
            if i < n && p[i] == 125 { return i + 1 }
            while true {
                guard let ke = skipString(p, n, i) else { return nil }
                i = skipWS(p, n, ke)
                guard i < n, p[i] == 58 else { return nil }
                i = skipWS(p, n, i + 1)
                guard let ve = skipValue(p, n, i, depth: depth - 1) else { return nil }
                i = skipWS(p, n, ve)
                guard i < n else { return nil }
                if p[i] == 125 { return i + 1 }
                guard p[i] == 44 else { return nil }
                i = skipWS(p, n, i + 1)
            }
        case 91:
            guard depth > 0 else { return nil }
            var i = skipWS(p, n, i0 + 1)
            if i < n && p[i] == 93 { return i + 1 }
            while true {
                guard let ve = skipValue(p, n, i, depth: depth - 1) else { return nil }
                i = skipWS(p, n, ve)
                guard i < n else { return nil }
                if p[i] == 93 { return i + 1 }
                guard p[i] == 44 else { return nil }
                i = skipWS(p, n, i + 1)
            }
        default: return skipNumber(p, n, i0)
        }
    }
}

/// base64url (RFC 4648 §5) without padding, as JWS uses it; strict: a padding character, a
/// byte outside the alphabet, a length of 1 mod 4 or non-zero trailing bits are refused.
public enum Base64URLStrict {
    @inline(__always) static func sextet(_ c: UInt8) -> Int {
        switch c {
        case 65...90: return Int(c) - 65
        case 97...122: return Int(c) - 71
        case 48...57: return Int(c) + 4
        case 45: return 62
        case 95: return 63
        default: return -1
        }
    }

    /// Decodes `p[0..<n]` and appends the bytes to `out`; false when not strict base64url.
    public static func decode(_ p: UnsafePointer<UInt8>, _ n: Int, into out: ByteBuffer) -> Bool {
        if n % 4 == 1 { return false }
        out.reserve(n / 4 * 3 + 3)
        var i = 0
        while i + 4 <= n {
            let a = sextet(p[i]), b = sextet(p[i + 1]), c = sextet(p[i + 2]), d = sextet(p[i + 3])
            if a | b | c | d < 0 { return false }
            let v = a << 18 | b << 12 | c << 6 | d
            out.append(UInt8(v >> 16)); out.append(UInt8((v >> 8) & 0xFF)); out.append(UInt8(v & 0xFF))
            i += 4
        }
        let r = n - i
        if r == 2 {
            let a = sextet(p[i]), b = sextet(p[i + 1])
            if a | b < 0 || b & 0x0F != 0 { return false }
            out.append(UInt8((a << 2) | (b >> 4)))
        } else if r == 3 {
            let a = sextet(p[i]), b = sextet(p[i + 1]), c = sextet(p[i + 2])
            if a | b | c < 0 || c & 0x03 != 0 { return false }
            out.append(UInt8((a << 2) | (b >> 4))); out.append(UInt8(((b & 0x0F) << 4) | (c >> 2)))
        }
        return true
    }

    /// Decodes a whole string (config time); nil when not strict base64url.
    public static func decode(_ s: String) -> [UInt8]? {
        let b = ByteBuffer(capacity: s.utf8.count + 4)
        let ok = Array(s.utf8).withUnsafeBufferPointer { u in decode(u.baseAddress ?? UnsafePointer(b.base), u.count, into: b) }
        return ok ? b.readableArray : nil
    }
}
