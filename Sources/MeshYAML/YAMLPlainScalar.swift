/// When a string can be written as a plain scalar and still read back as that same string.
///
/// A value is written double-quoted (`needsQuotes` is true) when any of these holds, else plain:
/// 1. it is empty;
/// 2. it holds a control character (below U+0020, tab and newlines included), U+007F, U+0080-U+009F,
///    U+2028, U+2029, U+FEFF, U+FFFE or U+FFFF;
/// 3. it starts or ends with a space;
/// 4. it starts with an indicator: `? : , [ ] { } # & * ! | > ' " % @` or a backquote, or with `-`
///    followed by a space or nothing, or with `...` or `---` (`--proxy-uid` and `-x` stay plain: YAML
///    reads a `-` followed by a non-space as the start of a plain scalar);
/// 5. it contains `": "` or `" #"`, or ends with `:`;
/// 6. a plain scalar with this text would not be a string for YAML 1.1 (PyYAML's resolvers) or for
///    go-yaml v2 (under Kubernetes' sigs.k8s.io/yaml): `resolvesToNonString`.
public enum YAMLPlainScalar {
    /// Whether `s` must be quoted to read back as the string `s` (rules in the type's comment).
    public static func needsQuotes(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard let first = b.first, let last = b.last else { return true }
        for scalar in s.unicodeScalars {
            let v = scalar.value
            if v < 0x20 || (v >= 0x7F && v <= 0x9F) || v == 0x2028 || v == 0x2029 || v == 0xFEFF || v == 0xFFFE || v == 0xFFFF {
                return true
            }
        }
        if first == UInt8(ascii: " ") || last == UInt8(ascii: " ") { return true }
        if first == UInt8(ascii: "-") {
            if b.count == 1 || b[1] == UInt8(ascii: " ") { return true }
        } else if indicators.contains(first) {
            return true
        }
        for marker in [UInt8(ascii: "."), UInt8(ascii: "-")] where b.count >= 3 && b[0] == marker && b[1] == marker && b[2] == marker {
            return true
        }
        if last == UInt8(ascii: ":") { return true }
        for i in 0..<(b.count - 1) {
            if b[i] == UInt8(ascii: ":") && b[i + 1] == UInt8(ascii: " ") { return true }
            if b[i] == UInt8(ascii: " ") && b[i + 1] == UInt8(ascii: "#") { return true }
        }
        return resolvesToNonString(s)
    }

    /// Whether a plain scalar `s` resolves to something other than a string:
    /// - null: `""`, `~`, `null`, `Null`, `NULL`;
    /// - bool: `y Y yes Yes YES n N no No NO true True TRUE false False FALSE on On ON off Off OFF`;
    /// - merge and value keys: `<<`, `=`;
    /// - YAML 1.1 int: `[-+]?0b[01_]+`, `[-+]?0[0-7_]+`, `[-+]?(0|[1-9][0-9_]*)`, `[-+]?0x[0-9a-fA-F_]+`,
    ///   sexagesimal `[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+` ("12:30");
    /// - YAML 1.1 float: `[-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?`, `\.[0-9][0-9_]*([eE][-+][0-9]+)?`,
    ///   `[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*`, `[-+]?\.(inf|Inf|INF)`, `\.(nan|NaN|NAN)`;
    /// - go-yaml v2 numbers, read with every `_` removed: Go integer literals `[-+]?(0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|0[0-7]*|[1-9][0-9]*)`
    ///   and `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` ("1e3", "0128");
    /// - a timestamp: anything starting with four digits and `-` ("2024-01-02").
    public static func resolvesToNonString(_ s: String) -> Bool {
        if words.contains(s) { return true }
        let b = Array(s.utf8)
        guard let first = b.first else { return true }
        if first != UInt8(ascii: "+") && first != UInt8(ascii: "-") && first != UInt8(ascii: ".") && !isDigit(first) {
            return false
        }
        if b.count >= 5 && isDigit(b[0]) && isDigit(b[1]) && isDigit(b[2]) && isDigit(b[3]) && b[4] == UInt8(ascii: "-") {
            return true
        }
        if isInt11(b) || isFloat11(b) { return true }
        let stripped = b.filter { $0 != UInt8(ascii: "_") }
        return isGoInt(stripped) || isGoFloat(stripped)
    }

    static let indicators: Set<UInt8> = Set("?:,[]{}#&*!|>'\"%@`".utf8)

    static let words: Set<String> = [
        "", "~", "null", "Null", "NULL",
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        "<<", "=",
    ]

    // MARK: matchers (each consumes the whole input or fails)

    private static func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }
    private static func isHex(_ c: UInt8) -> Bool {
        isDigit(c) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "f")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "F"))
    }
    private static func isUnderscore(_ c: UInt8) -> Bool { c == UInt8(ascii: "_") }

    /// Index after an optional sign.
    private static func skipSign(_ b: [UInt8], _ i: Int) -> Int {
        i < b.count && (b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-")) ? i + 1 : i
    }

    /// Index after a run (possibly empty) of bytes satisfying `p`.
    private static func run(_ b: [UInt8], _ i: Int, _ p: (UInt8) -> Bool) -> Int {
        var j = i
        while j < b.count && p(b[j]) { j += 1 }
        return j
    }

    /// Whether `b[i...]` starts with the ASCII text `t`.
    private static func has(_ b: [UInt8], _ i: Int, _ t: String) -> Bool {
        let u = Array(t.utf8)
        guard i + u.count <= b.count else { return false }
        return Array(b[i..<(i + u.count)]) == u
    }

    /// Index after one or more `:[0-5]?[0-9]` groups, or nil.
    private static func sexagesimalTail(_ b: [UInt8], _ i: Int) -> Int? {
        var j = i
        var groups = 0
        while j < b.count && b[j] == UInt8(ascii: ":") {
            if j + 2 < b.count,
               b[j + 1] >= UInt8(ascii: "0") && b[j + 1] <= UInt8(ascii: "5"), isDigit(b[j + 2]) {
                j += 3
            } else if j + 1 < b.count && isDigit(b[j + 1]) {
                j += 2
            } else {
                return nil
            }
            groups += 1
        }
        return groups > 0 ? j : nil
    }

    /// Index after an exponent `[eE][-+][0-9]+` (YAML 1.1: the sign is required), or `i` when there is none; nil when malformed.
    private static func exponent11(_ b: [UInt8], _ i: Int) -> Int? {
        guard i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") else { return i }
        guard i + 1 < b.count, b[i + 1] == UInt8(ascii: "+") || b[i + 1] == UInt8(ascii: "-") else { return nil }
        let j = run(b, i + 2, isDigit)
        return j > i + 2 ? j : nil
    }

    static func isInt11(_ b: [UInt8]) -> Bool {
        let i = skipSign(b, 0)
        guard i < b.count else { return false }
        if has(b, i, "0b") {
            return b.count > i + 2 && run(b, i + 2, { $0 == UInt8(ascii: "0") || $0 == UInt8(ascii: "1") || isUnderscore($0) }) == b.count
        }
        if has(b, i, "0x") {
            return b.count > i + 2 && run(b, i + 2, { isHex($0) || isUnderscore($0) }) == b.count
        }
        if b[i] == UInt8(ascii: "0") {
            return b.count == i + 1 || run(b, i + 1, { ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "7")) || isUnderscore($0) }) == b.count
        }
        guard isDigit(b[i]) else { return false }
        let j = run(b, i + 1, { isDigit($0) || isUnderscore($0) })
        if j == b.count { return true }
        return sexagesimalTail(b, j) == b.count
    }

    static func isFloat11(_ b: [UInt8]) -> Bool {
        let i = skipSign(b, 0)
        guard i < b.count else { return false }
        if b[i] == UInt8(ascii: ".") {
            let rest = Array(b[(i + 1)...])
            if rest == Array("inf".utf8) || rest == Array("Inf".utf8) || rest == Array("INF".utf8) { return true }
            if i == 0 && (rest == Array("nan".utf8) || rest == Array("NaN".utf8) || rest == Array("NAN".utf8)) { return true }
            // \.[0-9][0-9_]*([eE][-+][0-9]+)? , without a sign
            guard i == 0, i + 1 < b.count, isDigit(b[i + 1]) else { return false }
            let j = run(b, i + 2, { isDigit($0) || isUnderscore($0) })
            return exponent11(b, j) == b.count
        }
        guard isDigit(b[i]) else { return false }
        let j = run(b, i + 1, { isDigit($0) || isUnderscore($0) })
        if j < b.count && b[j] == UInt8(ascii: ".") {
            let k = run(b, j + 1, { isDigit($0) || isUnderscore($0) })
            return exponent11(b, k) == b.count
        }
        if let k = sexagesimalTail(b, j), k < b.count, b[k] == UInt8(ascii: ".") {
            return run(b, k + 1, { isDigit($0) || isUnderscore($0) }) == b.count
        }
        return false
    }

    static func isGoInt(_ b: [UInt8]) -> Bool {
        let i = skipSign(b, 0)
        guard i < b.count else { return false }
        if has(b, i, "0x") || has(b, i, "0X") { return b.count > i + 2 && run(b, i + 2, isHex) == b.count }
        if has(b, i, "0b") || has(b, i, "0B") {
            return b.count > i + 2 && run(b, i + 2, { $0 == UInt8(ascii: "0") || $0 == UInt8(ascii: "1") }) == b.count
        }
        if has(b, i, "0o") || has(b, i, "0O") {
            return b.count > i + 2 && run(b, i + 2, { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "7") }) == b.count
        }
        if b[i] == UInt8(ascii: "0") {
            return run(b, i + 1, { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "7") }) == b.count
        }
        return isDigit(b[i]) && run(b, i, isDigit) == b.count
    }

    /// go-yaml v2's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
    static func isGoFloat(_ b: [UInt8]) -> Bool {
        var i = skipSign(b, 0)
        guard i < b.count else { return false }
        if b[i] == UInt8(ascii: ".") {
            let j = run(b, i + 1, isDigit)
            guard j > i + 1 else { return false }
            i = j
        } else {
            let j = run(b, i, isDigit)
            guard j > i else { return false }
            i = j
            if i < b.count && b[i] == UInt8(ascii: ".") { i = run(b, i + 1, isDigit) }
        }
        if i < b.count && (b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E")) {
            let k = skipSign(b, i + 1)
            let j = run(b, k, isDigit)
            guard j > k else { return false }
            i = j
        }
        return i == b.count
    }
}
