/// A Telemetry `accessLogging[].filter.expression`: the subset of Istio's CEL this mesh
/// evaluates, compiled once (at apply and at snapshot time) into a flat node table that the
/// proxy walks per request without allocating.
///
/// The subset (docs/observability.md): the attributes `response.code` (int: `==`, `!=`, `<`,
/// `<=`, `>`, `>=` against an integer literal) and `response.flags` (`==`, `!=` against a string
/// literal naming one of Envoy's short response flags, `"-"` for none; this mesh records one
/// flag per request, so the string is the whole `%RESPONSE_FLAGS%` value), `true`, `false`,
/// `!`, `&&`, `||` and parentheses. Any other expression is refused at apply, naming the field.
public struct AccessLogFilter: Sendable, Equatable {
    /// A comparison operator.
    public enum Op: UInt8, Sendable, Equatable { case eq, ne, lt, le, gt, ge }

    /// One node of the compiled expression; children are indices into `nodes`.
    public enum Node: Sendable, Equatable {
        case constant(Bool)
        case code(Op, Int)
        /// `response.flags == "X"` (`equal`) or `!=`.
        case flags(equal: Bool, [UInt8])
        case not(Int)
        case and(Int, Int)
        case or(Int, Int)
    }

    /// The expression as written.
    public let expression: String
    public let nodes: [Node]
    public let root: Int

    /// Envoy's short response flags (and "-", none): what `response.flags` compares with.
    public static let knownFlags: Set<String> = ["-", "UH", "UF", "UO", "NR", "URX", "NC", "DT", "DC", "LH", "UT", "LR", "UR", "UC",
                                                 "DI", "FI", "RL", "UAEX", "RLSE", "IH", "SI", "DPE", "UPE", "UMSDR", "OM", "DF", "RBAC"]

    /// Compiles `text`, or throws a message saying what is not in the subset.
    public init(_ text: String) throws(AccessLogFilterError) {
        var p = Parser(Array(text.utf8))
        let root = try p.expression(depth: 0)
        p.skipSpace()
        if p.pos < p.bytes.count { throw p.fail("unexpected \"\(p.rest)\"") }
        self.expression = text
        self.nodes = p.nodes
        self.root = root
    }

    /// Whether a request with this response code and response flag short code is logged.
    /// Data path: no allocation.
    public func matches(code: Int, flags: UnsafePointer<UInt8>, count: Int) -> Bool {
        eval(root, code, flags, count)
    }

    private func eval(_ i: Int, _ code: Int, _ fp: UnsafePointer<UInt8>, _ fn: Int) -> Bool {
        switch nodes[i] {
        case .constant(let b): return b
        case .code(let op, let v):
            switch op {
            case .eq: return code == v
            case .ne: return code != v
            case .lt: return code < v
            case .le: return code <= v
            case .gt: return code > v
            case .ge: return code >= v
            }
        case .flags(let equal, let lit):
            var same = lit.count == fn
            if same { for k in 0..<fn where lit[k] != fp[k] { same = false; break } }
            return same == equal
        case .not(let a): return !eval(a, code, fp, fn)
        case .and(let a, let b): return eval(a, code, fp, fn) && eval(b, code, fp, fn)
        case .or(let a, let b): return eval(a, code, fp, fn) || eval(b, code, fp, fn)
        }
    }

    /// Convenience for tests and the control path.
    public func matches(code: Int, flags: String) -> Bool {
        var f = flags
        return f.withUTF8 { u in matches(code: code, flags: u.baseAddress ?? UnsafePointer(bitPattern: 1)!, count: u.count) }
    }

    /// A recursive-descent parser over the expression's bytes.
    private struct Parser {
        let bytes: [UInt8]
        var pos = 0
        var nodes: [Node] = []
        static let maxDepth = 32
        static let maxLength = 1024

        init(_ b: [UInt8]) { bytes = b }

        var rest: String { String(decoding: bytes[pos...].prefix(24), as: UTF8.self) }

        func fail(_ m: String) -> AccessLogFilterError { AccessLogFilterError(message: m) }

        mutating func skipSpace() {
            while pos < bytes.count, bytes[pos] == 32 || bytes[pos] == 9 || bytes[pos] == 10 || bytes[pos] == 13 { pos += 1 }
        }

        mutating func eat(_ s: StaticString) -> Bool {
            skipSpace()
            let n = s.utf8CodeUnitCount
            guard pos + n <= bytes.count else { return false }
            for k in 0..<n where bytes[pos + k] != s.utf8Start[k] { return false }
            pos += n
            return true
        }

        mutating func add(_ n: Node) -> Int { nodes.append(n); return nodes.count - 1 }

        mutating func expression(depth: Int) throws(AccessLogFilterError) -> Int {
            if bytes.count > Parser.maxLength { throw fail("longer than \(Parser.maxLength) bytes") }
            if depth > Parser.maxDepth { throw fail("nested deeper than \(Parser.maxDepth) levels") }
            var left = try conjunction(depth: depth)
            while eat("||") { left = add(.or(left, try conjunction(depth: depth))) }
            return left
        }

        mutating func conjunction(depth: Int) throws(AccessLogFilterError) -> Int {
            var left = try unary(depth: depth)
            while eat("&&") { left = add(.and(left, try unary(depth: depth))) }
            return left
        }

        mutating func unary(depth: Int) throws(AccessLogFilterError) -> Int {
            if depth > Parser.maxDepth { throw fail("nested deeper than \(Parser.maxDepth) levels") }
            skipSpace()
            if pos + 1 < bytes.count, bytes[pos] == UInt8(ascii: "!"), bytes[pos + 1] != UInt8(ascii: "=") {
                pos += 1
                return add(.not(try unary(depth: depth + 1)))
            }
            if eat("(") {
                let e = try expression(depth: depth + 1)
                guard eat(")") else { throw fail(pos < bytes.count ? "expected \")\" before \"\(rest)\"" : "expected \")\" at the end") }
                return e
            }
            return try comparison()
        }

        mutating func identifier() -> String {
            skipSpace()
            let start = pos
            while pos < bytes.count {
                let c = bytes[pos]
                let ok = (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 95 || c == 46
                if !ok { break }
                pos += 1
            }
            return String(decoding: bytes[start..<pos], as: UTF8.self)
        }

        mutating func op() throws(AccessLogFilterError) -> Op {
            if eat("==") { return .eq }
            if eat("!=") { return .ne }
            if eat("<=") { return .le }
            if eat(">=") { return .ge }
            if eat("<") { return .lt }
            if eat(">") { return .gt }
            throw fail(pos < bytes.count ? "expected a comparison (==, !=, <, <=, >, >=) before \"\(rest)\"" : "expected a comparison at the end")
        }

        mutating func comparison() throws(AccessLogFilterError) -> Int {
            let at = pos
            let name = identifier()
            switch name {
            case "true": return add(.constant(true))
            case "false": return add(.constant(false))
            case "response.code":
                let o = try op()
                skipSpace()
                var neg = false
                if pos < bytes.count, bytes[pos] == UInt8(ascii: "-") { neg = true; pos += 1 }
                let start = pos
                while pos < bytes.count, bytes[pos] >= 48, bytes[pos] <= 57, pos - start < 10 { pos += 1 }
                guard pos > start, let v = Int(String(decoding: bytes[start..<pos], as: UTF8.self)) else {
                    throw fail("response.code compares with an integer literal")
                }
                if pos < bytes.count, bytes[pos] >= 48, bytes[pos] <= 57 { throw fail("integer literal too long") }
                return add(.code(o, neg ? -v : v))
            case "response.flags":
                let o = try op()
                guard o == .eq || o == .ne else { throw fail("response.flags compares with == or != only") }
                skipSpace()
                guard pos < bytes.count, bytes[pos] == 34 || bytes[pos] == 39 else {
                    throw fail("response.flags compares with a string literal such as \"UH\"")
                }
                let quote = bytes[pos]
                pos += 1
                let start = pos
                while pos < bytes.count, bytes[pos] != quote { pos += 1 }
                guard pos < bytes.count else { throw fail("unterminated string literal") }
                let lit = String(decoding: bytes[start..<pos], as: UTF8.self)
                pos += 1
                guard AccessLogFilter.knownFlags.contains(lit) else {
                    throw fail("\"\(lit)\" is not one of Envoy's short response flags (\(AccessLogFilter.knownFlags.sorted().joined(separator: ", ")))")
                }
                return add(.flags(equal: o == .eq, Array(lit.utf8)))
            case "":
                pos = at
                throw fail(pos < bytes.count ? "expected response.code, response.flags, true, false, ! or ( before \"\(rest)\"" : "the expression is empty or ends early")
            default:
                throw fail("\"\(name)\" is not supported yet (this mesh evaluates response.code and response.flags)")
            }
        }
    }
}

/// Why a filter expression was refused.
public struct AccessLogFilterError: Error, Sendable {
    public var message: String
}
