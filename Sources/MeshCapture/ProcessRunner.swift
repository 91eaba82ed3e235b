#if canImport(Glibc)
import Glibc
#endif

/// Runs a helper program (iptables-restore, iptables-save, ip, nft) to completion with posix_spawn:
/// its standard input from a string, its output and error collected. No shell is involved.
public enum ProcessRunner {
    /// The outcome of one run: exit status (128+N for a signal) and the two outputs.
    public struct Result: Sendable {
        public let status: Int32
        public let stdout: String
        public let stderr: String
        /// The first line of stderr (or stdout), for an error message.
        public var firstErrorLine: String {
            let text = stderr.isEmpty ? stdout : stderr
            return String(text.split(separator: "\n").first ?? "no output")
        }
    }

    /// Where helper binaries are looked for: PATH, then the sbin directories an ordinary PATH lacks.
    public static func find(_ name: String) -> String? {
        var dirs: [String] = []
        if let p = getenv("PATH") { dirs = String(cString: p).split(separator: ":").map(String.init) }
        for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] where !dirs.contains(d) { dirs.append(d) }
        for d in dirs where !d.isEmpty {
            let path = d + "/" + name
            if access(path, X_OK) == 0 { return path }
        }
        return nil
    }

    /// Runs `path` with `args` (argv[0] excluded), feeding `input` on its standard input.
    public static func run(_ path: String, _ args: [String], input: String = "") throws(CaptureError) -> Result {
        var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard pipe(&inPipe) == 0 else { throw CaptureError("cannot create a pipe: \(errnoText())") }
        guard pipe(&outPipe) == 0 else { close(inPipe[0]); close(inPipe[1]); throw CaptureError("cannot create a pipe: \(errnoText())") }
        guard pipe(&errPipe) == 0 else {
            for fd in inPipe + outPipe { close(fd) }
            throw CaptureError("cannot create a pipe: \(errnoText())")
        }
        // Close-on-exec: the child gets only the dup2'd ends (this tool is single-threaded).
        for fd in inPipe + outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let rc = argv.withUnsafeBufferPointer { posix_spawn(&pid, path, &actions, &attr, $0.baseAddress!, environ) }
        close(inPipe[0]); close(outPipe[1]); close(errPipe[1])
        if rc != 0 {
            close(inPipe[1]); close(outPipe[0]); close(errPipe[0])
            throw CaptureError("cannot start \(path): \(String(cString: strerror(rc)))")
        }
        // Feed the input and drain both outputs together, so neither side can block the other.
        let old = signal(SIGPIPE, SIG_IGN)
        defer { signal(SIGPIPE, old) }
        let bytes = Array(input.utf8)
        var written = 0
        var inFD: Int32 = inPipe[1]
        if bytes.isEmpty { close(inFD); inFD = -1 } else { _ = fcntl(inFD, F_SETFL, fcntl(inFD, F_GETFL) | O_NONBLOCK) }
        var out: [UInt8] = [], err: [UInt8] = []
        var open = [outPipe[0], errPipe[0]]
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty || inFD >= 0 {
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            if inFD >= 0 { fds.append(pollfd(fd: inFD, events: Int16(POLLOUT), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            for f in fds where f.revents != 0 {
                if f.fd == inFD {
                    let n = bytes.withUnsafeBytes { write(inFD, $0.baseAddress! + written, bytes.count - written) }
                    if n > 0 { written += n }
                    if n < 0 && errno == EAGAIN { continue }
                    if n <= 0 || written == bytes.count { close(inFD); inFD = -1 }
                } else {
                    let n = chunk.withUnsafeMutableBytes { read(f.fd, $0.baseAddress, 65536) }
                    if n > 0 {
                        if f.fd == outPipe[0] { out.append(contentsOf: chunk[0..<n]) } else { err.append(contentsOf: chunk[0..<n]) }
                    } else if n == 0 || errno != EINTR {
                        close(f.fd)
                        open.removeAll { $0 == f.fd }
                    }
                }
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let sig = status & 0x7f
        return Result(status: sig == 0 ? (status >> 8) & 0xff : 128 + sig,
                      stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self))
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }
}
