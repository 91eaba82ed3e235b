/// Writing YAML that reads back as it was meant: every string that comes from input (names,
/// hosts, addresses, label values) is written as a double-quoted scalar, so a value such as
/// `*.example.com` (an alias), `yes`, `1e3`, `- x` or `a: b` stays the string it was.
extension YAML {
    /// `s` as a double-quoted YAML scalar, with `"`, `\` and every non-printable character escaped.
    public static func quoted(_ s: String) -> String {
        var out = "\""
        out.reserveCapacity(s.utf8.count + 2)
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if u.value < 0x20 || (u.value >= 0x7F && u.value <= 0x9F) || u.value == 0xFEFF || u.value == 0x2028 || u.value == 0x2029 {
                    let hex = String(u.value, radix: 16, uppercase: true)
                    out += "\\u" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
