import MeshCore

/// The Kubernetes downward-API labels file (`metadata.labels` in a downwardAPI volume, read with
/// `sidecar --labels-file F`): one `key="value"` per line, the value a Go-quoted string as the
/// kubelet writes it (`%q`: `\"`, `\\`, `\a \b \f \n \r \t \v`, `\ooo`, `\xHH`, `\uHHHH`,
/// `\UHHHHHHHH`), the key a Kubernetes label key (`[prefix/]name`). Empty lines are skipped.
/// Anything else is refused with the file, the line and what is wrong: the labels are the
/// workload's identity in the registry, so a half-read file must not register.
public enum LabelsFile {
    /// A refused labels file: `FILE:LINE: what is wrong`.
    public struct Error: Swift.Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Reads and parses `path`.
    public static func read(_ path: String) throws(LabelsFile.Error) -> [(String, String)] {
        switch AgentFiles.readBytes(path) {
        case .success(let bytes): return try parse(bytes, file: path)
        case .failure(let e): throw Error(description: "--labels-file \(path): cannot read it (\(e))")
        }
    }

    /// Parses the file's bytes; `file` names it in errors.
    public static func parse(_ bytes: [UInt8], file: String) throws(LabelsFile.Error) -> [(String, String)] {
        var out: [(String, String)] = []
        var lineOf: [String: Int] = [:]
        var lineNo = 0
        var start = 0
        while start <= bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 10 { end += 1 }
            lineNo += 1
            let line = bytes[start..<end]
            start = end + 1
            if line.isEmpty { continue }
            func bad(_ what: String) -> Error { Error(description: "--labels-file \(file):\(lineNo): \(what)") }
            guard let eq = line.firstIndex(of: UInt8(ascii: "=")) else { throw bad("expected key=\"value\", found no '='") }
            let keyBytes = line[line.startIndex..<eq]
            let key = String(decoding: keyBytes, as: UTF8.self)
            if let why = keyProblem(keyBytes) { throw bad("label key \"\(escaped(key))\": \(why)") }
            let value: String
            do { value = try unquote(line[(eq + 1)...]) } catch { throw bad("label \(key): \(error.description)") }
            if let why = valueProblem(value) { throw bad("label \(key): value \"\(escaped(value))\": \(why)") }
            if let first = lineOf[key] { throw bad("label key \(key) given twice (first on line \(first))") }
            lineOf[key] = lineNo
            out.append((key, value))
        }
        return out
    }

    /// The labels in force: the file's, then `--label` ones; a key given both ways takes the
    /// `--label` value.
    public static func merge(file: [(String, String)], flags: [(String, String)]) -> [(String, String)] {
        file.filter { f in !flags.contains { $0.0 == f.0 } } + flags
    }

    /// Why `k` is not a Kubernetes label key (`[prefix/]name`: prefix a DNS subdomain of at most
    /// 253 characters, name at most 63 of letters, digits, '-', '_', '.', starting and ending
    /// with a letter or digit), or nil.
    static func keyProblem(_ k: ArraySlice<UInt8>) -> String? {
        if k.isEmpty { return "empty" }
        let parts = k.split(separator: UInt8(ascii: "/"), maxSplits: 2, omittingEmptySubsequences: false)
        if parts.count > 2 { return "more than one '/'" }
        if parts.count == 2 {
            let prefix = parts[0]
            if prefix.isEmpty { return "empty prefix before '/'" }
            if prefix.count > 253 { return "prefix longer than 253 characters" }
            for l in prefix.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
                guard !l.isEmpty, l.count <= 63, l.allSatisfy({ lowerAlnum($0) || $0 == 45 }),
                      lowerAlnum(l.first!), lowerAlnum(l.last!) else {
                    return "prefix is not a DNS subdomain (lowercase letters, digits, '-' and '.')"
                }
            }
        }
        return nameProblem(parts[parts.count - 1], what: "name")
    }

    /// Why `v` is not a Kubernetes label value (empty, or a name as in `keyProblem`), or nil.
    static func valueProblem(_ v: String) -> String? {
        v.isEmpty ? nil : nameProblem(ArraySlice(v.utf8), what: "value")
    }

    private static func nameProblem(_ n: ArraySlice<UInt8>, what: String) -> String? {
        if n.isEmpty { return "empty \(what)" }
        if n.count > 63 { return "\(what) longer than 63 characters" }
        let ok = n.allSatisfy { lowerAlnum($0) || ($0 >= 65 && $0 <= 90) || $0 == 45 || $0 == 95 || $0 == 46 }
        let ends = { (c: UInt8) in lowerAlnum(c) || (c >= 65 && c <= 90) }
        if !ok || !ends(n.first!) || !ends(n.last!) {
            return "a label \(what) holds letters, digits, '-', '_' and '.', and starts and ends with a letter or digit"
        }
        return nil
    }

    private static func lowerAlnum(_ c: UInt8) -> Bool { (c >= 97 && c <= 122) || (c >= 48 && c <= 57) }

    /// Go's strconv.Unquote for a double-quoted string that must fill `q` exactly.
    static func unquote(_ q: ArraySlice<UInt8>) throws(LabelsFile.Error) -> String {
        func bad(_ what: String) -> Error { Error(description: what) }
        guard q.first == UInt8(ascii: "\"") else { throw bad("expected the value in double quotes after '='") }
        var out: [UInt8] = []
        var i = q.startIndex + 1
        func hex(_ n: Int, _ esc: Character) throws(LabelsFile.Error) -> UInt32 {
            guard i + n <= q.endIndex else { throw bad("\\\(esc) needs \(n) hex digits") }
            var v: UInt32 = 0
            for c in q[i..<(i + n)] {
                let d: UInt32
                switch c {
                case 48...57: d = UInt32(c - 48)
                case 97...102: d = UInt32(c - 87)
                case 65...70: d = UInt32(c - 55)
                default: throw bad("\\\(esc) needs \(n) hex digits")
                }
                v = v << 4 | d
            }
            i += n
            return v
        }
        while true {
            guard i < q.endIndex else { throw bad("the closing '\"' is missing") }
            let c = q[i]
            if c == UInt8(ascii: "\"") {
                guard i + 1 == q.endIndex else { throw bad("text after the closing '\"'") }
                break
            }
            if c < 0x20 || c == 0x7f { throw bad("a raw control character (byte \(c)) inside the quotes") }
            i += 1
            if c != UInt8(ascii: "\\") { out.append(c); continue }
            guard i < q.endIndex else { throw bad("the closing '\"' is missing") }
            let e = q[i]
            i += 1
            switch e {
            case UInt8(ascii: "a"): out.append(7)
            case UInt8(ascii: "b"): out.append(8)
            case UInt8(ascii: "f"): out.append(12)
            case UInt8(ascii: "n"): out.append(10)
            case UInt8(ascii: "r"): out.append(13)
            case UInt8(ascii: "t"): out.append(9)
            case UInt8(ascii: "v"): out.append(11)
            case UInt8(ascii: "\\"): out.append(92)
            case UInt8(ascii: "\""): out.append(34)
            case UInt8(ascii: "x"): out.append(UInt8(try hex(2, "x")))
            case UInt8(ascii: "u"), UInt8(ascii: "U"):
                let v = try hex(e == UInt8(ascii: "u") ? 4 : 8, Character(UnicodeScalar(e)))
                guard let s = Unicode.Scalar(v) else { throw bad("\\\(Character(UnicodeScalar(e))) escape of U+\(String(v, radix: 16, uppercase: true)), not a Unicode scalar value") }
                out.append(contentsOf: Array(String(Character(s)).utf8))
            case 48...55:
                guard i + 2 <= q.endIndex, (48...55).contains(q[i]), (48...55).contains(q[i + 1]) else {
                    throw bad("an octal escape needs 3 digits from 0 to 7")
                }
                let v = Int(e - 48) * 64 + Int(q[i] - 48) * 8 + Int(q[i + 1] - 48)
                guard v <= 255 else { throw bad("octal escape \\\(v >> 6)\(v >> 3 & 7)\(v & 7) is above \\377") }
                out.append(UInt8(v))
                i += 2
            default:
                throw bad("unknown escape \\\(e >= 0x21 && e <= 0x7e ? String(Character(UnicodeScalar(e))) : "x" + String(e, radix: 16))")
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw bad("the value is not valid UTF-8") }
        return s
    }

    /// `s` with control characters and quotes shown as escapes (errors echo the value safely).
    static func escaped(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _ where u.value < 0x20 || u.value == 0x7f: out += "\\x" + (u.value < 16 ? "0" : "") + String(u.value, radix: 16)
            default: out.unicodeScalars.append(u)
            }
        }
        return out
    }
}
