#if canImport(Glibc)
import MeshPKI
import Glibc
#endif

/// One meshd per state directory: an exclusive `flock` on STATE-DIR/meshd.lock, taken before
/// anything in the directory is read or written and held for the life of the process (the
/// kernel drops it when the process ends, however it ends, so a stale file never blocks a
/// restart). The holder writes its pid into the file so that a second meshd can name it. Two
/// meshd on one directory would each rewrite the applied config and the registry from their
/// own view and erase what was applied through the other.
public final class StateLock: Sendable {
    public let path: String
    private let fd: Int32

    /// Takes the lock or throws, naming the directory and the pid that holds it.
    public init(stateDir: String) throws(CAError) {
        path = "\(stateDir)/meshd.lock"
        // O_NOFOLLOW: a link planted in the directory must not make meshd truncate another file.
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 { throw CAError("cannot open \(path): \(String(cString: strerror(errno)))") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let err = errno
            defer { close(fd) }
            guard err == EWOULDBLOCK else { throw CAError("cannot lock \(path): \(String(cString: strerror(err)))") }
            let holder = StateLock.holder(fd)
            throw CAError("state directory \(stateDir) is in use by another meshd (pid \(holder ?? "unknown"), holding \(path)); stop it or give this one another --state-dir")
        }
        // Ours now: replace the previous holder's pid with ours.
        let text = Array("\(getpid())\n".utf8)
        guard ftruncate(fd, 0) == 0, text.withUnsafeBytes({ pwrite(fd, $0.baseAddress, $0.count, 0) }) == text.count else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw CAError("cannot write \(path): \(reason)")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// The pid written by the holder (it writes just after locking: wait a moment for it).
    private static func holder(_ fd: Int32) -> String? {
        for _ in 0..<20 {
            var buf = [UInt8](repeating: 0, count: 32)
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                let digits = buf.prefix(n).prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
                if !digits.isEmpty && n < buf.count && buf[digits.count] == UInt8(ascii: "\n") {
                    return String(decoding: digits, as: UTF8.self)
                }
            }
            usleep(50_000)
        }
        return nil
    }
}
