import MeshCore

/// A parsed JSON value (RFC 8259). Numbers keep their text: etcd sends 64-bit integers as
/// strings and small ones as numbers, and a number too large for `Int64` is an error only when
/// it is read as one.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// The member `key` of an object (nil when absent or not an object).
    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var isObject: Bool { if case .object = self { return true }; return false }

    /// The value as a 64-bit integer: a JSON integer or a string holding one (protobuf's JSON
    /// form of int64), with no sign other than one leading `-`, no fraction, no exponent, in range.
    public var int64Value: Int64? {
        switch self {
        case .number(let t), .string(let t): return JSONValue.parseInt64(t)
        default: return nil
        }
    }

    /// The value as an unsigned 64-bit integer (etcd's member and cluster IDs), number or string.
    public var uint64Value: UInt64? {
        switch self {
        case .number(let t), .string(let t):
            guard !t.isEmpty, t.utf8.count <= 20, t.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
            return UInt64(t)
        default: return nil
        }
    }

    static func parseInt64(_ text: String) -> Int64? {
        let u = Array(text.utf8)
        var i = 0
        var negative = false
        if i < u.count, u[i] == UInt8(ascii: "-") { negative = true; i += 1 }
        guard i < u.count, u.count - i <= 19 else { return nil }
        var v: Int64 = 0
        while i < u.count {
            let d = u[i]
            guard d >= 48, d <= 57 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = negative ? m.subtractingReportingOverflow(Int64(d - 48)) : m.addingReportingOverflow(Int64(d - 48))
            if o1 || o2 { return nil }
            v = a
            i += 1
        }
        return v
    }
}

/// Why a JSON text was refused, with the byte offset where it went wrong.
public struct JSONError: Error, Equatable, CustomStringConvertible {
    public var offset: Int
    public var reason: String
    public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}

/// A strict JSON reader for etcd's answers (untrusted input from the network): one value and
/// nothing after it but white space, UTF-8 only, no control characters inside strings, only the
/// escapes RFC 8259 names (surrogates paired), no duplicate object keys, nesting bounded by
/// `maxDepth`, numbers of at most `maxNumberLength` characters in RFC 8259's grammar.
public struct JSONReader {
    public static let maxDepth = 64
    public static let maxNumberLength = 64

    private let b: [UInt8]
    private var i = 0

    private init(_ bytes: [UInt8]) { b = bytes }

    /// Parses `bytes` as one JSON value.
    public static func parse(_ bytes: [UInt8]) throws(JSONError) -> JSONValue {
        var r = JSONReader(bytes)
        r.skipSpace()
        let v = try r.value(depth: 0)
        r.skipSpace()
        if r.i != r.b.count { throw r.fail("unexpected bytes after the value") }
        return v
    }

    public static func parse(_ text: String) throws(JSONError) -> JSONValue { try parse(Array(text.utf8)) }

    private func fail(_ reason: String) -> JSONError { JSONError(offset: i, reason: reason) }

    private mutating func skipSpace() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    private mutating func value(depth: Int) throws(JSONError) -> JSONValue {
        guard i < b.count else { throw fail("truncated: a value was expected") }
        switch b[i] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), 48...57: return .number(try number())
        default: throw fail("unexpected byte \(b[i])")
        }
    }

    private mutating func literal(_ word: StaticString) throws(JSONError) {
        let n = word.utf8CodeUnitCount
        guard i + n <= b.count else { throw fail("truncated literal") }
        let p = word.utf8Start
        for k in 0..<n where b[i + k] != p[k] { throw fail("bad literal") }
        i += n
    }

    private mutating func object(depth: Int) throws(JSONError) -> JSONValue {
        if depth > JSONReader.maxDepth { throw fail("nesting deeper than \(JSONReader.maxDepth)") }
        i += 1
        var out: [String: JSONValue] = [:]
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
        while true {
            skipSpace()
            guard i < b.count else { throw fail("truncated object") }
            guard b[i] == UInt8(ascii: "\"") else { throw fail("object key must be a string") }
            let keyAt = i
            let k = try string()
            if out[k] != nil { throw JSONError(offset: keyAt, reason: "duplicate key \(JSONWriter.quote(k))") }
            skipSpace()
            guard i < b.count else { throw fail("truncated object") }
            guard b[i] == UInt8(ascii: ":") else { throw fail("':' expected") }
            i += 1
            skipSpace()
            out[k] = try value(depth: depth)
            skipSpace()
            guard i < b.count else { throw fail("truncated object") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
            throw fail("',' or '}' expected")
        }
    }

    private mutating func array(depth: Int) throws(JSONError) -> JSONValue {
        if depth > JSONReader.maxDepth { throw fail("nesting deeper than \(JSONReader.maxDepth)") }
        i += 1
        var out: [JSONValue] = []
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
        while true {
            skipSpace()
            out.append(try value(depth: depth))
            skipSpace()
            guard i < b.count else { throw fail("truncated array") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
            throw fail("',' or ']' expected")
        }
    }

    private mutating func digits() -> Int {
        let start = i
        while i < b.count, b[i] >= 48, b[i] <= 57 { i += 1 }
        return i - start
    }

    private mutating func number() throws(JSONError) -> String {
        let start = i
        if b[i] == UInt8(ascii: "-") { i += 1 }
        guard i < b.count else { throw fail("truncated number") }
        if b[i] == 48 {
            i += 1
            if i < b.count, b[i] >= 48, b[i] <= 57 { throw fail("leading zero in a number") }
        } else if digits() == 0 {
            throw fail("digit expected")
        }
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            if digits() == 0 { throw fail(i < b.count ? "digit expected after '.'" : "truncated number") }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            if digits() == 0 { throw fail(i < b.count ? "digit expected in exponent" : "truncated number") }
        }
        if i - start > JSONReader.maxNumberLength { throw JSONError(offset: start, reason: "number longer than \(JSONReader.maxNumberLength) characters") }
        return String(decoding: b[start..<i], as: UTF8.self)
    }

    private func hex(_ c: UInt8) -> UInt32? {
        switch c {
        case 48...57: return UInt32(c - 48)
        case 65...70: return UInt32(c - 55)
        case 97...102: return UInt32(c - 87)
        default: return nil
        }
    }

    private mutating func hex4() throws(JSONError) -> UInt32 {
        guard i + 4 <= b.count else { throw fail("truncated \\u escape") }
        var v: UInt32 = 0
        for k in 0..<4 {
            guard let h = hex(b[i + k]) else { throw fail("bad hex digit in \\u escape") }
            v = v << 4 | h
        }
        i += 4
        return v
    }

    private mutating func string() throws(JSONError) -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < b.count else { throw fail("truncated string") }
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { throw fail("truncated escape") }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if scalar >= 0xDC00 && scalar <= 0xDFFF { throw fail("unpaired low surrogate") }
                if scalar >= 0xD800 && scalar <= 0xDBFF {
                    guard i + 2 <= b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
                        throw fail("unpaired high surrogate")
                    }
                    i += 2
                    let low = try hex4()
                    guard low >= 0xDC00 && low <= 0xDFFF else { throw fail("unpaired high surrogate") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                // Every value left is a Unicode scalar (surrogates were handled above).
                out.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar)!)).utf8))
            default:
                throw JSONError(offset: i - 2, reason: "bad escape \\\(Character(Unicode.Scalar(e)))")
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
        return s
    }
}
