import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// Starting and joining OS threads (one per worker loop) without Foundation.
public enum Threads {
    private final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }

    /// Starts a joinable thread running `body`.
    public static func spawn(name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t {
        guard let t = create(body) else { preconditionFailure("pthread_create failed") }
        return t
    }

    /// Like `spawn`, but nil when the system refuses a thread (a pids limit) instead of
    /// stopping the process.
    public static func trySpawn(name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t? {
        create(body)
    }

    /// A new thread running `body`, or nil when the system refuses one.
    private static func create(_ body: @escaping @Sendable () -> Void) -> pthread_t? {
        var tid = pthread_t()
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let rc = pthread_create(&tid, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box)
        if rc != 0 { Unmanaged<Box>.fromOpaque(box).release(); return nil }
        return tid
    }

    public static func join(_ t: pthread_t) { pthread_join(t, nil) }

    /// Starts a detached thread running `body` (it cleans up after itself).
    public static func spawnDetached(_ body: @escaping @Sendable () -> Void) {
        let t = spawn(name: "detached", body)
        pthread_detach(t)
    }

    /// Like `spawnDetached`, but reports failure (a pids limit reached) instead of stopping the
    /// process: for threads started on behalf of network peers.
    public static func trySpawnDetached(_ body: @escaping @Sendable () -> Void) -> Bool {
        guard let t = create(body) else { return false }
        pthread_detach(t)
        return true
    }

    /// Raises the open-files limit to its hard maximum; returns the limit in force.
    @discardableResult
    public static func raiseOpenFilesLimit() -> Int { mesh_raise_nofile() }

    /// Number of CPUs this process may run on.
    public static var cpuCount: Int {
        let n = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return n > 0 ? n : 1
    }
}

/// Reports SIGTERM/SIGINT/SIGHUP through a signalfd that the main thread waits on. Call
/// `SignalWaiter()` before starting any thread so every thread inherits the blocked mask.
public struct SignalWaiter: ~Copyable {
    public let fd: Int32
    public init() { fd = mesh_block_signals_signalfd() }

    /// Blocks until a signal arrives; returns its number.
    public func wait() -> Int32 {
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&p, 1, -1)
            if rc < 0 && mesh_errno() == EINTR { continue }
            let s = mesh_signalfd_read(fd)
            if s > 0 { return s }
        }
    }

    /// Waits at most `millis`; returns 0 on timeout.
    public func wait(millis: Int32) -> Int32 {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let rc = poll(&p, 1, millis)
        if rc <= 0 { return 0 }
        let s = mesh_signalfd_read(fd)
        return s > 0 ? s : 0
    }

    public static var sigterm: Int32 { mesh_sigterm() }
    public static var sigint: Int32 { mesh_sigint() }
    public static var sighup: Int32 { mesh_sighup() }
}
