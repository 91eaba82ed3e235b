/// Base64 with the standard alphabet and padding (RFC 4648 §4), as etcd's JSON gateway writes
/// keys and values. Decoding is strict: only the alphabet, a length that is a multiple of four,
/// `=` only as the last one or two characters, and no stray bits in the last group.
public enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    private static let table: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out.append(alphabet[Int(v >> 18 & 63)]); out.append(alphabet[Int(v >> 12 & 63)])
            out.append(alphabet[Int(v >> 6 & 63)]); out.append(alphabet[Int(v & 63)])
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let v = UInt32(bytes[i]) << 16
            out.append(alphabet[Int(v >> 18 & 63)]); out.append(alphabet[Int(v >> 12 & 63)])
            out.append(UInt8(ascii: "=")); out.append(UInt8(ascii: "="))
        } else if rest == 2 {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out.append(alphabet[Int(v >> 18 & 63)]); out.append(alphabet[Int(v >> 12 & 63)])
            out.append(alphabet[Int(v >> 6 & 63)]); out.append(UInt8(ascii: "="))
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func encode(_ text: String) -> String { encode(Array(text.utf8)) }

    /// The bytes `text` encodes, or nil when it is not canonical standard base64.
    public static func decode(_ text: String) -> [UInt8]? {
        let s = Array(text.utf8)
        if s.count % 4 != 0 { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(s.count / 4 * 3)
        var i = 0
        while i < s.count {
            let last = i + 4 == s.count
            var pad = 0
            if last {
                if s[i + 3] == UInt8(ascii: "=") { pad = 1; if s[i + 2] == UInt8(ascii: "=") { pad = 2 } }
            }
            var v: UInt32 = 0
            for k in 0..<(4 - pad) {
                let d = table[Int(s[i + k])]
                if d == 0xFF { return nil }
                v |= UInt32(d) << (18 - 6 * UInt32(k))
            }
            switch pad {
            case 0: out.append(UInt8(v >> 16 & 0xFF)); out.append(UInt8(v >> 8 & 0xFF)); out.append(UInt8(v & 0xFF))
            case 1:
                if v & 0xFF != 0 { return nil }
                out.append(UInt8(v >> 16 & 0xFF)); out.append(UInt8(v >> 8 & 0xFF))
            default:
                if v & 0xFFFF != 0 { return nil }
                out.append(UInt8(v >> 16 & 0xFF))
            }
            i += 4
        }
        return out
    }
}
