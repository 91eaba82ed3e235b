import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// Error starting the proxy (a port in use, an unreadable file), reported as one line.
public struct ProxyStartError: Error, CustomStringConvertible {
    public let description: String
}

/// The sidecar's data plane as a whole: N workers (one epoll loop per thread, each with its own
/// SO_REUSEPORT listeners) plus the admin thread. `start` binds everything before any thread runs,
/// so a port conflict is reported at once; `drain` implements SIGTERM: stop accepting, finish
/// in-flight requests, stop.
public final class ProxyServer: @unchecked Sendable {
    /// The snapshot the server started with.
    public let snapshot: ProxySnapshot
    public let concurrency: Int
    private var workers: [Worker] = []
    private var threads: [pthread_t] = []
    private var admin: AdminServer?
    private var adminThread: pthread_t?
    private var accessLogWriter: AccessLogWriter?
    /// Ports actually bound (useful when the config says 0).
    public private(set) var outboundPort = 0
    public private(set) var inboundPort = 0
    public private(set) var adminPort = 0

    public init(snapshot: ProxySnapshot, concurrency: Int) {
        self.snapshot = snapshot
        self.concurrency = max(1, concurrency)
    }

    public func start() throws {
        workers = (0..<concurrency).map { Worker(id: $0, snapshot: snapshot) }
        for w in workers { w.workerCount = concurrency }
        if let al = snapshot.bootstrap.accessLog {
            let writer = try AccessLogWriter(path: al.path, workers: concurrency)
            for (i, w) in workers.enumerated() {
                w.accessLog = AccessLogSink(loop: w.loop, pipeFd: writer.writeEnd(worker: i), sampling: al.sampling, includeQuery: al.includeQuery)
            }
            writer.start()
            accessLogWriter = writer
        }
        // Bind per-worker listeners (the first with the configured port, the rest on the port it got).
        func bindAll(_ s: ProxySnapshot.ListenerSettings, _ name: String) throws -> [Int32] {
            var fds: [Int32] = []
            var addr = s.address
            for _ in 0..<concurrency {
                let fd = Socket.listen(addr, reusePort: true)
                if fd < 0 {
                    for f in fds { close(f) }
                    throw ProxyStartError(description: "cannot listen on \(addr) (\(name)): \(Socket.errorText(-fd))")
                }
                if fds.isEmpty && addr.port == 0 {
                    let host = String(addr.text[..<addr.text.lastIndex(of: ":")!])
                    addr = SocketAddress(host: host.trimmingBrackets, port: Socket.localPort(fd))!
                }
                fds.append(fd)
            }
            return fds
        }
        var outFds: [Int32] = [], inFds: [Int32] = []
        if let o = snapshot.outbound { outFds = try bindAll(o, "outbound"); outboundPort = Socket.localPort(outFds[0]) }
        if let i = snapshot.inbound { inFds = try bindAll(i, "inbound"); inboundPort = Socket.localPort(inFds[0]) }
        let adminFd = Socket.listen(snapshot.bootstrap.admin, reusePort: false)
        if adminFd < 0 {
            throw ProxyStartError(description: "cannot listen on \(snapshot.bootstrap.admin) (admin): \(Socket.errorText(-adminFd))")
        }
        adminPort = Socket.localPort(adminFd)
        let admin = AdminServer(workers: workers, snapshot: snapshot)
        guard admin.listen(fd: adminFd) else { throw ProxyStartError(description: "cannot watch the admin listener") }
        self.admin = admin
        for (i, w) in workers.enumerated() {
            w.startListeners(outboundFd: outFds.isEmpty ? nil : outFds[i], inboundFd: inFds.isEmpty ? nil : inFds[i])
        }
        for w in workers {
            threads.append(Threads.spawn(name: "worker") { w.loop.run() })
        }
        adminThread = Threads.spawn(name: "admin") { admin.run() }
        admin.ready.store(true, ordering: .releasing)
    }

    /// Puts a new snapshot in force (new credentials after a renewal): every worker takes it for
    /// new connections and requests; established connections and requests in flight finish on
    /// the one they started with. Callable from any thread.
    public func replace(_ next: ProxySnapshot) {
        for w in workers {
            w.loop.post { [w] in w.replaceSnapshot(next) }
        }
        admin?.replace(next)
    }

    /// Stops accepting, lets in-flight requests finish (at most `timeout`), then stops every
    /// thread. Blocks the caller until done.
    public func drainAndStop(timeout: UInt64) {
        admin?.draining.store(true, ordering: .releasing)
        for w in workers {
            let loop = w.loop
            loop.post { [w] in
                w.onDrained = { loop.stop() }
                w.beginDrain(timeout: timeout)
            }
        }
        for t in threads { Threads.join(t) }
        threads.removeAll()
        accessLogWriter?.stop()
        if let a = admin {
            a.loop.stop()
            if let t = adminThread { Threads.join(t) }
        }
    }

    /// Counter totals across workers (for the executable's exit log).
    public func total(_ c: WorkerStats.Counter) -> UInt64 {
        workers.reduce(0) { $0 &+ $1.stats.get(c) }
    }
}

extension String {
    var trimmingBrackets: String {
        if hasPrefix("[") && hasSuffix("]") { return String(dropFirst().dropLast()) }
        return self
    }
}
