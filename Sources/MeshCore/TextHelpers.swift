/// Small text helpers for the control path (no Foundation).
extension String {
    /// Splits at the first occurrence of `marker`: two parts, or the whole string when absent.
    public func components(marker: String) -> [String] {
        let h = Array(utf8), m = Array(marker.utf8)
        guard m.count <= h.count else { return [self] }
        var i = 0
        while i + m.count <= h.count {
            if h[i..<(i + m.count)].elementsEqual(m) {
                return [String(decoding: h[..<i], as: UTF8.self), String(decoding: h[(i + m.count)...], as: UTF8.self)]
            }
            i += 1
        }
        return [self]
    }

    /// Without leading and trailing spaces, tabs, CR and LF.
    public var trimmingCharacters: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\r" || f == "\n" || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\r" || l == "\n" || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
