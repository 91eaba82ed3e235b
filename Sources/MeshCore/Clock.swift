import CMeshShims

/// Monotonic and wall-clock time in nanoseconds. The event loop reads the monotonic clock once per
/// iteration and hands that value around, so the data path calls this rarely.
public enum Clock {
    @inline(__always) public static func monotonicNanos() -> UInt64 { mesh_monotonic_ns() }
    @inline(__always) public static func wallNanos() -> UInt64 { mesh_realtime_ns() }
}

/// Durations in the config and on command lines: `500ms`, `10s`, `5m`, `24h`, combinations such as
/// `1m30s`, and `0` (meaning "off" where the field allows it). Kept in nanoseconds.
public enum DurationParser {
    public static func parseNanos(_ text: String) -> UInt64? {
        let s = Array(text.utf8)
        if s.isEmpty { return nil }
        if s == Array("0".utf8) { return 0 }
        var i = 0
        var total: UInt64 = 0
        var sawUnit = false
        while i < s.count {
            var value: UInt64 = 0
            var digits = 0
            var frac: UInt64 = 0
            var fracDiv: UInt64 = 1
            while i < s.count, s[i] >= 48, s[i] <= 57 {
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(UInt64(s[i] - 48))
                if o1 || o2 { return nil }
                value = a; digits += 1; i += 1
            }
            if i < s.count, s[i] == UInt8(ascii: ".") {
                i += 1
                while i < s.count, s[i] >= 48, s[i] <= 57 {
                    if fracDiv < 1_000_000_000 { frac = frac * 10 + UInt64(s[i] - 48); fracDiv *= 10 }
                    digits += 1; i += 1
                }
            }
            if digits == 0 { return nil }
            var unit: UInt64
            if i + 1 < s.count, s[i] == UInt8(ascii: "m"), s[i + 1] == UInt8(ascii: "s") { unit = 1_000_000; i += 2 }
            else if i + 1 < s.count, s[i] == UInt8(ascii: "u"), s[i + 1] == UInt8(ascii: "s") { unit = 1_000; i += 2 }
            else if i + 1 < s.count, s[i] == UInt8(ascii: "n"), s[i + 1] == UInt8(ascii: "s") { unit = 1; i += 2 }
            else if i < s.count, s[i] == UInt8(ascii: "s") { unit = 1_000_000_000; i += 1 }
            else if i < s.count, s[i] == UInt8(ascii: "m") { unit = 60_000_000_000; i += 1 }
            else if i < s.count, s[i] == UInt8(ascii: "h") { unit = 3_600_000_000_000; i += 1 }
            else { return nil }
            let (whole, o) = value.multipliedReportingOverflow(by: unit)
            if o { return nil }
            // frac/fracDiv < 1, so the fractional part is below `unit`; compute it without overflow.
            let fracPart = UInt64((Double(frac) / Double(fracDiv) * Double(unit)).rounded())
            let (part, o1) = whole.addingReportingOverflow(fracPart)
            if o1 { return nil }
            let (t, o2) = total.addingReportingOverflow(part)
            if o2 { return nil }
            total = t
            sawUnit = true
        }
        return sawUnit ? total : nil
    }
}
