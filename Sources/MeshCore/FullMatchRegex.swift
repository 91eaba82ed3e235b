#if canImport(Glibc)
import Glibc
#endif

/// A compiled regular expression that must match a whole byte range (Istio's RE2 `regex` match is
/// a full match), on glibc's POSIX extended syntax with `\d`/`\D` translated, matched over a
/// stack copy of the bytes so the request path builds no String. Compiled once per config snapshot.
public final class FullMatchRegex: @unchecked Sendable {
    private let re: UnsafeMutablePointer<regex_t>

    /// nil with the library's message when the pattern does not compile.
    public init(_ pattern: String) throws(RegexCompileError) {
        var translated = "^("
        var it = pattern.unicodeScalars.makeIterator()
        while let c = it.next() {
            if c == "\\" {
                guard let n = it.next() else { translated.append("\\\\"); break }
                switch n {
                case "d": translated += "[0-9]"
                case "D": translated += "[^0-9]"
                default: translated.unicodeScalars.append(c); translated.unicodeScalars.append(n)
                }
            } else {
                translated.unicodeScalars.append(c)
            }
        }
        translated += ")$"
        // Compiled into a local first: a class whose stored properties are all set runs its
        // deinit when the initializer throws.
        let compiled = UnsafeMutablePointer<regex_t>.allocate(capacity: 1)
        let rc = regcomp(compiled, translated, REG_EXTENDED | REG_NOSUB)
        if rc != 0 {
            var buf = [CChar](repeating: 0, count: 256)
            regerror(rc, compiled, &buf, buf.count)
            compiled.deallocate()
            throw RegexCompileError(message: String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        re = compiled
    }

    deinit {
        regfree(re)
        re.deallocate()
    }

    /// Whether the regex matches all of `p[0..<n]` (the bytes need no terminating NUL). glibc's
    /// matcher may look one byte past the end even with REG_STARTEND (AddressSanitizer caught
    /// it), so the bytes are copied into a NUL-terminated buffer on the stack first; a NUL inside
    /// the range never matches.
    public func matches(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        for i in 0..<n where p[i] == 0 { return false }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: n + 1) { buf in
            let base = buf.baseAddress!
            p.withMemoryRebound(to: CChar.self, capacity: max(n, 1)) { base.update(from: $0, count: n) }
            base[n] = 0
            return regexec(re, base, 0, nil, 0) == 0
        }
    }
}

/// Why a pattern did not compile, in the regex library's words.
public struct RegexCompileError: Error, Sendable {
    public let message: String
}
