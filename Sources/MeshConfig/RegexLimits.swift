/// Size limits on the regular expressions of config (`regex` string matches), checked before
/// the pattern is compiled. glibc's `regcomp` expands bounded repetitions by copying the repeated
/// expression, so nested bounds multiply: `((a{1,255}){1,255}){1,255}` asks for millions of
/// copies and exhausted memory in meshd (validating `meshctl apply`) and in every sidecar the
/// config reached (FuzzConfig found it). The limits are Istio's own, since Istio runs RE2: a
/// repetition count is at most 1000 and so is the product of nested counts (RE2's
/// "bad repetition operator"); and the pattern expanded must stay under `maxExpandedSize`
/// elements (about 50 MB for glibc, measured), as RE2 bounds a program's size.
enum RegexLimits {
    static let maxRepeat = 1000
    static let maxExpandedSize = 5000

    /// Why `pattern` is over the limits, or nil. A rough POSIX ERE scan: what it cannot read is
    /// left to `regcomp` to refuse.
    static func violation(_ pattern: String) -> String? {
        let s = Array(pattern.unicodeScalars)
        /// One group being scanned: its expanded size, the largest nested repetition product
        /// inside it, and the last atom (what a quantifier applies to).
        struct Frame { var size = 0; var nest = 1; var lastSize = 0; var lastNest = 1; var hasLast = false }
        var stack = [Frame()]
        var i = 0
        func atom(_ size: Int, _ nest: Int) {
            stack[stack.count - 1].size += size
            stack[stack.count - 1].lastSize = size
            stack[stack.count - 1].lastNest = nest
            stack[stack.count - 1].hasLast = true
            stack[stack.count - 1].nest = max(stack[stack.count - 1].nest, nest)
        }
        /// Applies a quantifier making `copies` copies of the last atom; `count` is its bound.
        func repeatLast(copies: Int, count: Int?) -> String? {
            var f = stack[stack.count - 1]
            guard f.hasLast else { return nil }
            f.size += f.lastSize * (copies - 1)
            f.lastSize *= copies
            if let c = count {
                f.lastNest *= max(c, 1)
                if f.lastNest > maxRepeat { return "nested repetition counts multiply to more than \(maxRepeat)" }
                f.nest = max(f.nest, f.lastNest)
            }
            stack[stack.count - 1] = f
            return nil
        }
        while i < s.count {
            switch s[i] {
            case "\\":
                atom(1, 1); i += 2
            case "[":
                i = endOfBracket(s, i); atom(1, 1)
            case "(":
                stack.append(Frame()); i += 1
            case ")":
                if stack.count > 1 { let g = stack.removeLast(); atom(g.size + 1, g.nest) } else { atom(1, 1) }
                i += 1
            case "|":
                stack[stack.count - 1].hasLast = false; i += 1
            case "*", "?":
                i += 1
            case "+":
                if let why = repeatLast(copies: 2, count: nil) { return why }
                i += 1
            case "{":
                guard let (lo, hi, end) = bound(s, i) else { atom(1, 1); i += 1; break }
                let n = max(lo, hi ?? lo)
                if n > maxRepeat { return "a repetition count above \(maxRepeat)" }
                if let why = repeatLast(copies: max(n, 1) + (hi == nil ? 1 : 0), count: n) { return why }
                i = end
            default:
                atom(1, 1); i += 1
            }
            if stack.reduce(0, { $0 + $1.size }) > maxExpandedSize {
                return "more than \(maxExpandedSize) elements once its repetitions are expanded"
            }
        }
        return nil
    }

    /// The index after the bracket expression starting at `i` (`[...]`, `[^]...]`, `[[:alpha:]]`).
    private static func endOfBracket(_ s: [Unicode.Scalar], _ i: Int) -> Int {
        var j = i + 1
        if j < s.count && s[j] == "^" { j += 1 }
        if j < s.count && s[j] == "]" { j += 1 }
        while j < s.count {
            if s[j] == "[", j + 1 < s.count, s[j + 1] == ":" || s[j + 1] == "." || s[j + 1] == "=" {
                let close = s[j + 1]
                var k = j + 2
                while k + 1 < s.count && !(s[k] == close && s[k + 1] == "]") { k += 1 }
                j = k + 2
                continue
            }
            if s[j] == "]" { return j + 1 }
            j += 1
        }
        return s.count
    }

    /// A bound `{m}`, `{m,}`, `{m,n}` or `{,n}` at `i`: (m, n or nil when open, index after it).
    /// Counts are clamped above `maxRepeat` so that long digit strings cannot overflow.
    private static func bound(_ s: [Unicode.Scalar], _ i: Int) -> (Int, Int?, Int)? {
        var j = i + 1
        func number() -> Int? {
            var v: Int? = nil
            while j < s.count, s[j].value >= 48, s[j].value <= 57 {
                v = min((v ?? 0) * 10 + Int(s[j].value - 48), maxRepeat + 1)
                j += 1
            }
            return v
        }
        let lo = number()
        if j < s.count && s[j] == "}" {
            guard let lo else { return nil }
            return (lo, lo, j + 1)
        }
        guard j < s.count && s[j] == "," else { return nil }
        j += 1
        let hi = number()
        guard j < s.count && s[j] == "}" else { return nil }
        if lo == nil && hi == nil { return (0, nil, j + 1) }
        return (lo ?? 0, hi, j + 1)
    }
}
