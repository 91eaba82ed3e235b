import MeshCore
import MeshPKI
#if canImport(Glibc)
import Glibc
#endif

/// Where a sidecar's join token comes from: `--token T`, or `--token-file F` read afresh each
/// time a token is needed (a projected service-account token is rotated by the kubelet while
/// the pod runs).
public enum JoinToken: Sendable, Equatable {
    case literal(String)
    case file(String)

    /// The token now: the literal, or the file's content with trailing whitespace trimmed. An
    /// unreadable or empty file, or a token holding a space or control character, is an error
    /// naming the file (the caller retries: the kubelet may be rewriting it).
    public func current() throws(CAError) -> String {
        switch self {
        case .literal(let t): return t
        case .file(let path):
            let text: String
            switch AgentFiles.read(path) {
            case .success(let t): text = t
            case .failure(let e): throw CAError("--token-file \(path): cannot read it (\(e))")
            }
            let token = JoinToken.trimmed(text)
            guard !token.isEmpty else { throw CAError("--token-file \(path): the file is empty") }
            guard JoinToken.isWellFormed(token) else {
                throw CAError("--token-file \(path): the token holds a space or control character")
            }
            return token
        }
    }

    /// `s` without trailing spaces, tabs, CR or LF.
    static func trimmed(_ s: String) -> String {
        var u = Substring(s).utf8[...]
        while let l = u.last, l == 32 || l == 9 || l == 10 || l == 13 { u = u.dropLast() }
        return String(decoding: u, as: UTF8.self)
    }

    /// Visible ASCII only: a token goes into an `authorization` header as it is.
    public static func isWellFormed(_ t: String) -> Bool {
        !t.isEmpty && t.utf8.allSatisfy { $0 >= 0x21 && $0 <= 0x7e }
    }
}

/// Small file reads for the agent (no Foundation).
enum AgentFiles {
    /// The whole file as UTF-8 text, or the reason it cannot be read (strerror). Files up to 1 MiB.
    static func read(_ path: String, limit: Int = 1 << 20) -> Result<String, FlagError> {
        readBytes(path, limit: limit).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The whole file's bytes, or the reason it cannot be read (strerror). Files up to `limit`.
    static func readBytes(_ path: String, limit: Int = 1 << 20) -> Result<[UInt8], FlagError> {
        guard let f = fopen(path, "rb") else { return .failure(FlagError(String(cString: strerror(errno)))) }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
            if bytes.count > limit { return .failure(FlagError("larger than \(limit) bytes")) }
            if n < chunk.count {
                if ferror(f) != 0 { return .failure(FlagError(String(cString: strerror(errno)))) }
                break
            }
        }
        return .success(bytes)
    }
}
