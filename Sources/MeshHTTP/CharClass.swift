/// Byte classes of RFC 9110/9112 used by the parsers, as one 256-entry table read by pointer.
enum CharClass {
    static let token: UInt8 = 1      // tchar
    static let value: UInt8 = 2      // field-value octet: HTAB, SP, VCHAR, obs-text
    static let target: UInt8 = 4     // request-target octet: VCHAR and obs-text (no SP, no CTL)
    static let host: UInt8 = 8       // Host / authority: ALPHA DIGIT - . _ : [ ] ~ %

    nonisolated(unsafe) static let table: UnsafeMutablePointer<UInt8> = {
        let t = UnsafeMutablePointer<UInt8>.allocate(capacity: 256)
        t.initialize(repeating: 0, count: 256)
        for c in 0..<256 {
            var v: UInt8 = 0
            let isAlpha = (c >= 65 && c <= 90) || (c >= 97 && c <= 122)
            let isDigit = c >= 48 && c <= 57
            if isAlpha || isDigit || "!#$%&'*+-.^_`|~".utf8.contains(UInt8(c)) { v |= token }
            if c == 9 || c == 32 || (c >= 0x21 && c <= 0x7e) || c >= 0x80 { v |= value }
            if (c >= 0x21 && c <= 0x7e) || c >= 0x80 { v |= target }
            if isAlpha || isDigit || "-._:[]~%".utf8.contains(UInt8(c)) { v |= host }
            t[c] = v
        }
        return t
    }()
}

/// ASCII helpers over raw bytes.
public enum ASCII {
    @inline(__always) public static func lower(_ c: UInt8) -> UInt8 { (c >= 65 && c <= 90) ? c | 0x20 : c }

    /// Case-insensitive comparison of `n` bytes at `p` with a lowercase literal.
    @inline(__always) public static func equalsLower(_ p: UnsafePointer<UInt8>, _ n: Int, _ lit: StaticString) -> Bool {
        if n != lit.utf8CodeUnitCount { return false }
        let l = lit.utf8Start
        for i in 0..<n where lower(p[i]) != l[i] { return false }
        return true
    }

    /// Case-insensitive comparison of `n` bytes at `p` with `n` lowercase bytes at `l`.
    @inline(__always) public static func equalsLowerBytes(_ p: UnsafePointer<UInt8>, _ n: Int, _ l: UnsafePointer<UInt8>) -> Bool {
        for i in 0..<n where lower(p[i]) != l[i] { return false }
        return true
    }
}
