/// Text from outside (config values, file names, request bytes) made safe to echo on a terminal
/// or in a log line: control characters (C0, DEL, C1), bidirectional overrides and line
/// separators are written as visible escapes (`\x1b`, `\u{202e}`), so input can never move the
/// cursor, recolour the screen or forge a second log line. Printable text is returned as it is.
public enum Printable {
    /// `keepNewlines`: multi-line output meant for a terminal (meshctl) keeps `\n` and `\t`;
    /// a log line escapes them too, so one event stays one line.
    public static func escaped(_ s: String, keepNewlines: Bool = false) -> String {
        guard s.unicodeScalars.contains(where: { needsEscape($0, keepNewlines) }) else { return s }
        var out = ""
        out.reserveCapacity(s.utf8.count + 8)
        for u in s.unicodeScalars {
            guard needsEscape(u, keepNewlines) else { out.unicodeScalars.append(u); continue }
            switch u {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                let hex = String(u.value, radix: 16)
                out += u.value < 0x80 ? "\\x" + (hex.count < 2 ? "0" : "") + hex : "\\u{\(hex)}"
            }
        }
        return out
    }

    static func needsEscape(_ u: Unicode.Scalar, _ keepNewlines: Bool) -> Bool {
        let v = u.value
        if v < 0x20 { return !(keepNewlines && (v == 0x0A || v == 0x09)) }
        if v < 0x7F { return false }
        // DEL and C1; line/paragraph separators; bidirectional embeddings, overrides and isolates.
        return v <= 0x9F || v == 0x2028 || v == 0x2029 || (v >= 0x202A && v <= 0x202E) || (v >= 0x2066 && v <= 0x2069)
    }
}
