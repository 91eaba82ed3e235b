/// Port lists of the capture flags (`P,P,...`): each a decimal port from 1 to 65535, none twice.
public enum PortList {
    /// Parses `text` for `--flag`; an empty string is an empty list.
    public static func parse(_ text: String, flag: String) throws(CaptureError) -> [Int] {
        if text.isEmpty { return [] }
        var out: [Int] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let p = String(part)
            guard !p.isEmpty, p.utf8.count <= 5, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = Int(p), v >= 1, v <= 65535 else {
                throw CaptureError.flag(flag, "expected ports from 1 to 65535 separated by commas, got \"\(p)\"")
            }
            if out.contains(v) { throw CaptureError.flag(flag, "port \(v) is given twice") }
            out.append(v)
        }
        return out
    }

    /// One port: `--flag P`.
    public static func single(_ text: String, flag: String) throws(CaptureError) -> Int {
        guard !text.isEmpty, text.utf8.count <= 5, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = Int(text), v >= 1, v <= 65535 else {
            throw CaptureError.flag(flag, "expected a port from 1 to 65535, got \"\(text)\"")
        }
        return v
    }
}
