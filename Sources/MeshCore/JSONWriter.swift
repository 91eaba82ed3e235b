/// A minimal JSON text builder for admin responses and access-log lines (strings escaped per
/// RFC 8259). Control path only: it builds Strings.
public struct JSONWriter {
    public private(set) var text = ""
    private var needComma: [Bool] = [false]

    public init() {}

    public static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    private mutating func comma() {
        if needComma[needComma.count - 1] { text += "," }
        needComma[needComma.count - 1] = true
    }

    private mutating func key(_ k: String?) {
        comma()
        if let k = k { text += JSONWriter.quote(k) + ":" }
    }

    public mutating func beginObject(_ k: String? = nil) { key(k); text += "{"; needComma.append(false) }
    public mutating func endObject() { needComma.removeLast(); text += "}" }
    public mutating func beginArray(_ k: String? = nil) { key(k); text += "["; needComma.append(false) }
    public mutating func endArray() { needComma.removeLast(); text += "]" }
    public mutating func string(_ k: String?, _ v: String) { key(k); text += JSONWriter.quote(v) }
    public mutating func number(_ k: String?, _ v: Int64) { key(k); text += String(v) }
    public mutating func number(_ k: String?, _ v: UInt64) { key(k); text += String(v) }
    public mutating func number(_ k: String?, _ v: Double) { key(k); text += v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v) }
    public mutating func bool(_ k: String?, _ v: Bool) { key(k); text += v ? "true" : "false" }
    /// A value already written as JSON (a number's text, `null`, or JSON read back).
    public mutating func raw(_ k: String?, _ json: String) { key(k); text += json }
}
