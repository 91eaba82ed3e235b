import MeshPKI

/// The body `meshctl apply|delete` sends: each input file kept apart with its own name, so that
/// meshd's answer names the file and line an error is in. Each file is a line
/// `file <byte count> <percent-encoded name>` followed by exactly that many bytes and a newline.
public enum ConfigUpload {
    public static let contentType = "application/x-mesh-config-files"

    public static func encode(_ files: [(name: String, text: String)]) -> String {
        var out = ""
        for f in files { out += "file \(f.text.utf8.count) \(ControlClient.percentEncode(f.name))\n\(f.text)\n" }
        return out
    }

    /// The files of a body; an error says what is malformed (a client that is not meshctl).
    public static func decode(_ body: [UInt8]) throws(CAError) -> [(name: String, text: String)] {
        var out: [(String, String)] = []
        var i = 0
        while i < body.count {
            guard let nl = body[i...].firstIndex(of: 10) else { throw CAError("config upload: a file header without its newline") }
            let head = String(decoding: body[i..<nl], as: UTF8.self).split(separator: " ", maxSplits: 2).map(String.init)
            guard head.count == 3, head[0] == "file", let n = Int(head[1]), n >= 0, n <= body.count - nl - 1 else {
                throw CAError("config upload: expected \"file <bytes> <name>\", got \"\(String(decoding: body[i..<min(nl, i + 80)], as: UTF8.self))\"")
            }
            let start = nl + 1, end = start + n
            guard end < body.count, body[end] == 10 else { throw CAError("config upload: file \(head[2]) is not \(n) bytes long") }
            out.append((ControlServer.percentDecode(head[2]), String(decoding: body[start..<end], as: UTF8.self)))
            i = end + 1
        }
        return out
    }
}
