// The identity a child of meshctl runs as, and the fork/exec that switches to it (posix_spawn
// cannot change a child's uid or gid).
import MeshPKI
import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// A uid, a gid and the supplementary groups (empty: none) that a child process runs with.
public struct Credentials: Equatable, Sendable {
    public var uid: uid_t
    public var gid: gid_t
    public var groups: [gid_t]
    /// Start it without capabilities (but CAP_NET_BIND_SERVICE): a root app under capture must
    /// not be able to undo it (change the rules, or take the proxy's gid and leave them).
    public var dropCapabilities = false

    public init(uid: uid_t, gid: gid_t, groups: [gid_t] = [], dropCapabilities: Bool = false) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.dropCapabilities = dropCapabilities
    }

    /// `uid`'s login groups (from the group database, `gid` first), or just `gid` when the uid
    /// has no passwd entry.
    public static func withLoginGroups(uid: uid_t, gid: gid_t) -> Credentials {
        guard let pw = getpwuid(uid), let name = pw.pointee.pw_name else { return Credentials(uid: uid, gid: gid, groups: [gid]) }
        var n: Int32 = 64
        var list = [gid_t](repeating: 0, count: Int(n))
        while getgrouplist(name, gid, &list, &n) < 0 {
            list = [gid_t](repeating: 0, count: Int(n))
        }
        return Credentials(uid: uid, gid: gid, groups: Array(list.prefix(Int(n))))
    }
}

extension ChildProcess {
    /// fork + execve with `credentials`: between fork and exec the child calls only
    /// async-signal-safe functions on memory prepared before the fork (its own process group,
    /// default signal mask and dispositions, the log on stdout and stderr, setgroups, setgid,
    /// setuid, in that order). An exec failure comes back through a close-on-exec pipe.
    static func forkExec(path: String, args: [String], environment: [String], logPath: String?, newGroup: Bool,
                         credentials c: Credentials?, dieWithParent: Bool = false) throws(CAError) -> pid_t {
        guard let exe = resolve(path, environment: environment) else { throw CAError("cannot start \(path): not found") }
        var logFD: Int32 = -1
        if let log = logPath {
            logFD = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if logFD < 0 { throw CAError("cannot open \(log): \(String(cString: strerror(errno)))") }
        }
        defer { if logFD >= 0 { close(logFD) } }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw CAError("cannot start \(path): pipe: \(String(cString: strerror(errno)))") }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        defer { for e in envp { free(e) } }
        let exePath = strdup(exe)!
        defer { free(exePath) }
        var empty = sigset_t()
        sigemptyset(&empty)
        let groups = c?.groups ?? []
        let wfd = fds[1]
        let parent = getpid()
        let pid: pid_t = argv.withUnsafeBufferPointer { a in
            envp.withUnsafeBufferPointer { e in
                groups.withUnsafeBufferPointer { g in
                    let pid = fork()
                    if pid != 0 { return pid }
                    // The child: nothing here allocates or takes a lock.
                    var err: Int32 = 0
                    if newGroup { _ = setpgid(0, 0) }
                    _ = sigprocmask(SIG_SETMASK, &empty, nil)
                    _ = Glibc.signal(SIGTERM, SIG_DFL); _ = Glibc.signal(SIGINT, SIG_DFL); _ = Glibc.signal(SIGHUP, SIG_DFL)
                    _ = Glibc.signal(SIGPIPE, SIG_DFL); _ = Glibc.signal(SIGCHLD, SIG_DFL)
                    if logFD >= 0 && (dup2(logFD, 1) < 0 || dup2(logFD, 2) < 0) { err = errno }
                    if err == 0 && dieWithParent && mesh_die_with_parent(SIGTERM, parent) != 0 { _exit(127) }
                    if let c {
                        if err == 0 && setgroups(g.count, g.baseAddress) != 0 { err = errno }
                        if err == 0 && c.dropCapabilities && mesh_drop_bounding_caps_except(10 /* CAP_NET_BIND_SERVICE */) != 0 { err = errno }
                        if err == 0 && setgid(c.gid) != 0 { err = errno }
                        if err == 0 && setuid(c.uid) != 0 { err = errno }
                    }
                    if err == 0 {
                        execve(exePath, a.baseAddress!, e.baseAddress!)
                        err = errno
                    }
                    withUnsafeBytes(of: &err) { _ = write(wfd, $0.baseAddress, 4) }
                    _exit(127)
                }
            }
        }
        close(fds[1])
        defer { close(fds[0]) }
        if pid < 0 { throw CAError("cannot start \(path): fork: \(String(cString: strerror(errno)))") }
        var err: Int32 = 0
        var got = 0
        while true {
            let n = withUnsafeMutableBytes(of: &err) { read(fds[0], $0.baseAddress, 4) }
            if n < 0 && errno == EINTR { continue }
            got = n
            break
        }
        if got > 0 {
            var st: Int32 = 0
            waitpid(pid, &st, 0)
            throw CAError(c.map { "cannot start \(path) as uid \($0.uid) gid \($0.gid): \(String(cString: strerror(err)))" }
                          ?? "cannot start \(path): \(String(cString: strerror(err)))")
        }
        return pid
    }

    /// `path` itself when it names a file, else the first executable `path` in the PATH of
    /// `environment` (as execvp would search it).
    static func resolve(_ path: String, environment: [String]) -> String? {
        if path.contains("/") { return path }
        let search = environment.first { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) } ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in search.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (dir.isEmpty ? "." : String(dir)) + "/" + path
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}
