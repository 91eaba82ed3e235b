/// Builds the Prometheus text exposition format (version 0.0.4): HELP and TYPE lines once per
/// family, label values escaped (backslash, double quote, newline). Runs on the admin thread.
public struct PrometheusText {
    public private(set) var text = ""

    public init() { text.reserveCapacity(64 * 1024) }

    public mutating func family(_ name: String, type: String, help: String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    public mutating func sample(_ name: String, _ labels: [(String, String)], _ value: String) {
        text += name
        if !labels.isEmpty {
            text += "{"
            var first = true
            for (k, v) in labels {
                if !first { text += "," }
                first = false
                text += k
                text += "=\""
                text += PrometheusText.escape(v)
                text += "\""
            }
            text += "}"
        }
        text += " "
        text += value
        text += "\n"
    }

    public mutating func sample(_ name: String, _ labels: [(String, String)], _ value: UInt64) {
        sample(name, labels, String(value))
    }

    /// Escapes a label value: `\` -> `\\`, `"` -> `\"`, newline -> `\n`.
    public static func escape(_ s: String) -> String {
        var needs = false
        for c in s.utf8 where c == 92 || c == 34 || c == 10 { needs = true; break }
        if !needs { return s }
        var out = ""
        out.reserveCapacity(s.utf8.count + 8)
        for ch in s.unicodeScalars {
            switch ch {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(ch)
            }
        }
        return out
    }
}
