import COpenSSL
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Small file operations for meshd's state (no Foundation): atomic writes, secrets, reads.
public enum FileStore {
    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func remove(_ path: String) { unlink(path) }

    /// Creates the state directory (0700), or checks an existing one: a real directory, ours,
    /// not writable by anyone else (someone who can write there could take the CA key).
    public static func makeDirectory(_ path: String) throws(CAError) {
        if mkdir(path, 0o700) != 0 && errno != EEXIST { throw CAError("cannot create \(path): \(String(cString: strerror(errno)))") }
        var st = stat()
        guard lstat(path, &st) == 0 else { throw CAError("cannot inspect \(path): \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw CAError("\(path) is not a directory (a symbolic link is not accepted)") }
        guard st.st_uid == geteuid() else { throw CAError("\(path) belongs to another user; meshd keeps its CA key there") }
        guard st.st_mode & 0o022 == 0 else { throw CAError("\(path) is writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 700 it") }
    }

    public static func read(_ path: String) throws(CAError) -> String {
        String(decoding: try readBytes(path), as: UTF8.self)
    }

    /// The whole file; a read error (a directory, an I/O error) is an error, not a short file.
    public static func readBytes(_ path: String) throws(CAError) -> [UInt8] {
        guard let f = fopen(path, "rb") else { throw CAError("cannot read \(path): \(String(cString: strerror(errno)))") }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
            if n < chunk.count {
                if ferror(f) != 0 { throw CAError("cannot read \(path): \(String(cString: strerror(errno)))") }
                return bytes
            }
        }
    }

    /// Writes `text` to `path` so that a crash never leaves a truncated file: a temporary file in
    /// the same directory, fsync, rename, fsync of the directory.
    public static func writeAtomically(_ path: String, _ text: String, mode: mode_t) throws(CAError) {
        let tag = MeshCrypto.randomHex(bytes: 6)
        let tmp = "\(path).tmp.\(getpid()).\(tag)"
        // A new file only (never an existing one or a symbolic link), created with its final mode.
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        if fd < 0 { throw CAError("cannot write \(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
            if n <= 0 { close(fd); unlink(tmp); throw CAError("cannot write \(tmp): \(String(cString: strerror(errno)))") }
            off += n
        }
        if fchmod(fd, mode) != 0 { close(fd); unlink(tmp); throw CAError("cannot set the mode of \(tmp)") }
        fsync(fd)
        close(fd)
        if rename(tmp, path) != 0 { unlink(tmp); throw CAError("cannot rename \(tmp) to \(path): \(String(cString: strerror(errno)))") }
        let dir = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }

    /// The secret in `path` (hex), created with `bytes` random bytes (0600) on first use. An
    /// existing file must hold exactly what meshd writes: `2 * bytes` hex digits and a newline.
    /// Anything else (a file cut short, an edit) is refused, never used as a different secret:
    /// for the token key that would silently invalidate every join token outstanding.
    public static func secret(at path: String, bytes: Int) throws(CAError) -> String {
        if exists(path) {
            let text = try read(path)
            if let problem = secretProblem(text, digits: 2 * bytes) {
                throw CAError("\(path) \(problem); expected \(2 * bytes) hex digits (a \(bytes)-byte secret) and a newline, as meshd writes it: restore the file, or remove it to create a new one")
            }
            return String(decoding: text.utf8.prefix(2 * bytes), as: UTF8.self)
        }
        let s = MeshCrypto.randomHex(bytes: bytes)
        try writeAtomically(path, s + "\n", mode: 0o600)
        return s
    }

    /// What is wrong with the text of a secret file (nil: `digits` hex digits, then at most
    /// trailing white space).
    public static func secretProblem(_ text: String, digits: Int) -> String? {
        var body = Array(text.utf8)
        while let last = body.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") || last == UInt8(ascii: " ") || last == UInt8(ascii: "\t") {
            body.removeLast()
        }
        if body.isEmpty { return "is empty" }
        func isHex(_ c: UInt8) -> Bool {
            (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "f")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "F"))
        }
        if let i = body.firstIndex(where: { !isHex($0) }) { return "has a byte that is not a hex digit at offset \(i)" }
        if body.count != digits { return "holds \(body.count) hex digits (\(body.count < digits ? "cut short" : "too many"))" }
        return nil
    }
}
