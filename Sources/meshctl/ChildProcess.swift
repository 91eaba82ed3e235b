import MeshCore
import MeshPKI
#if canImport(Glibc)
import Glibc
#endif

/// A child process started with posix_spawn (no Foundation): the signal mask and dispositions
/// reset for it (the parent blocks signals for its signalfd), stdout and stderr optionally sent
/// to a file, an environment of its own. For `meshctl run` and `meshctl demo`.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    public private(set) var exitStatus: Int32?

    /// Starts `path` with `args` (argv[0] included); `logPath` receives stdout and stderr.
    /// In its own process group (`newGroup`): a terminal's Ctrl-C reaches only the parent, which
    /// decides the order, and `signal` reaches the child's own children too.
    public let ownGroup: Bool

    /// `credentials`: the child switches to that uid, gid and group list before exec (meshctl must
    /// be root, or hold CAP_SETUID and CAP_SETGID); the log file is opened by meshctl before the switch.
    /// `dieWithParent`: the child gets SIGTERM when meshctl goes away, however it ends (SIGKILL
    /// included), so a sidecar or app never outlives the `meshctl run` that started it. Only
    /// for children started on the main thread (the signal follows the thread that forked).
    public init(path: String, args: [String], environment: [String]? = nil, logPath: String? = nil, newGroup: Bool = false,
                credentials: Credentials? = nil, dieWithParent: Bool = false) throws(CAError) {
        ownGroup = newGroup
        if credentials != nil || dieWithParent {
            pid = try ChildProcess.forkExec(path: path, args: args, environment: environment ?? ChildProcess.currentEnvironment(),
                                            logPath: logPath, newGroup: newGroup, credentials: credentials, dieWithParent: dieWithParent)
            return
        }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | (newGroup ? POSIX_SPAWN_SETPGROUP : 0)))
        if newGroup { posix_spawnattr_setpgroup(&attr, 0) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let log = logPath {
            posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        let env = environment ?? ChildProcess.currentEnvironment()
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer { for e in envp { free(e) } }
        var pid: pid_t = 0
        let rc = argv.withUnsafeBufferPointer { a in
            envp.withUnsafeBufferPointer { e in
                path.contains("/") ? posix_spawn(&pid, path, &actions, &attr, a.baseAddress!, e.baseAddress!)
                                   : posix_spawnp(&pid, path, &actions, &attr, a.baseAddress!, e.baseAddress!)
            }
        }
        if rc != 0 { throw CAError("cannot start \(path): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    /// The parent's environment as `KEY=value` strings.
    public static func currentEnvironment() -> [String] {
        var out: [String] = []
        var p = environ
        while let e = p.pointee {
            out.append(String(cString: e))
            p += 1
        }
        return out
    }

    /// Whether it is still running (reaps it when it has exited).
    public var isRunning: Bool {
        if exitStatus != nil { return false }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid {
            // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (they are macros).
            let sig = status & 0x7f
            exitStatus = sig == 0 ? (status >> 8) & 0xff : 128 + sig
            return false
        }
        return r == 0
    }

    public func signal(_ s: Int32) { if isRunning { kill(ownGroup ? -pid : pid, s) } }

    /// Waits until it exits, at most `timeoutSeconds` (then SIGKILL); returns its status.
    @discardableResult
    public func wait(timeoutSeconds: Double) -> Int32 {
        let deadline = Clock.monotonicNanos() + UInt64(timeoutSeconds * 1e9)
        while isRunning {
            if Clock.monotonicNanos() > deadline {
                kill(ownGroup ? -pid : pid, SIGKILL)
                var st: Int32 = 0
                waitpid(pid, &st, 0)
                exitStatus = 137
                break
            }
            usleep(20_000)
        }
        return exitStatus ?? 0
    }
}
