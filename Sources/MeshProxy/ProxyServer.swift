import MeshCore
import MeshIO
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Error starting the proxy (a port in use, an unreadable file), reported as one line.
public struct ProxyStartError: Error, CustomStringConvertible {
    public let description: String

    /// A listener that could not be bound, named with its address and role; a port held by
    /// another process says so.
    static func cannotListen(_ addr: SocketAddress, _ name: String, _ e: SocketError) -> ProxyStartError {
        if e.code == EADDRINUSE {
            return ProxyStartError(description: "cannot listen on \(addr) (\(name)): port \(addr.port) is already in use by another process")
        }
        return ProxyStartError(description: "cannot listen on \(addr) (\(name)): \(e)")
    }
}

/// Counts down from n across threads; `tick` is true for the call that reaches zero.
private final class Countdown: Sendable {
    private let left: Atomic<Int>
    init(_ n: Int) { left = Atomic(n) }
    func tick() -> Bool { left.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 }
}

/// The proxy listeners' sockets, one per worker for each of outbound and inbound, bound before
/// any thread starts; no other process shares their ports (`Socket.listenExclusive`). Mesh mode
/// binds them before it asks meshd for a certificate, so a port in use is reported at once.
public struct ListenerSockets: Sendable {
    public var outbound: [Int32] = []
    public var inbound: [Int32] = []
    /// Under capture, the outbound listener on `[::1]` too (same port): ip6tables REDIRECT sends
    /// an app's IPv6 connections there. Empty when not capturing or IPv6 is off.
    public var outbound6: [Int32] = []

    /// Binds the listeners given (nil: that listener is not configured). `capture`: the outbound
    /// listener also on IPv6 loopback, at the port its IPv4 socket got.
    public static func bind(outbound: SocketAddress?, inbound: SocketAddress?, workers: Int,
                            capture: Bool = false) throws(ProxyStartError) -> ListenerSockets {
        var s = ListenerSockets()
        func group(_ addr: SocketAddress, _ name: String) throws(ProxyStartError) -> [Int32] {
            switch Socket.listenExclusive(addr, count: max(1, workers)) {
            case .success(let fds): return fds
            case .failure(let e):
                s.close()
                throw ProxyStartError.cannotListen(addr, name, e)
            }
        }
        if let o = outbound { s.outbound = try group(o, "outbound") }
        if let i = inbound { s.inbound = try group(i, "inbound") }
        if capture, let first = s.outbound.first, let v6 = SocketAddress(host: "::1", port: Socket.localPort(first)) {
            switch Socket.listenExclusive(v6, count: max(1, workers)) {
            case .success(let fds): s.outbound6 = fds
            case .failure(let e) where e.code == EADDRNOTAVAIL || e.code == EAFNOSUPPORT:
                Log.warn("capture", "no IPv6 loopback here (\(e)): IPv6 connections are not captured into the sidecar")
            case .failure(let e):
                s.close()
                throw ProxyStartError.cannotListen(v6, "outbound (IPv6)", e)
            }
        }
        return s
    }

    /// Closes every socket (a start that did not happen).
    public func close() {
        for fd in outbound + inbound + outbound6 { Glibc.close(fd) }
    }
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
    /// The span exporter, once a snapshot names a collector (Tracing/TraceExporter.swift).
    private var traceExporter: TraceExporter?
    /// Ports actually bound (useful when the config says 0).
    public private(set) var outboundPort = 0
    public private(set) var inboundPort = 0
    public private(set) var adminPort = 0
    /// The DNS port (`attachDNS`), given each snapshot's names as workers get the snapshot.
    private var dns: DNSServer?
    /// The status port (`attachStatus`), repeating admin's `/ready`, `/healthz` and metrics.
    private var status: StatusServer?
    /// Serializes `replace` with rebuilds for new DNS addresses (DNS/SnapshotRefresher.swift).
    private let refresher = SnapshotRefresher()
    /// A gateway proxy's ports, following its Gateways (Gateway/GatewayPorts.swift).
    let gatewayPorts = GatewayPorts()

    public init(snapshot: ProxySnapshot, concurrency: Int) {
        self.snapshot = snapshot
        self.concurrency = max(1, concurrency)
    }

    /// Binds what `sockets` does not hold yet, starts every thread and serves. `ready: false`
    /// keeps `/ready` at 503 until `markReady()` (mesh mode: until the first config from meshd
    /// is applied, DESIGN §2).
    public func start(sockets: ListenerSockets? = nil, ready: Bool = true) throws {
        let bound = try sockets ?? ListenerSockets.bind(outbound: snapshot.outbound?.address, inbound: snapshot.inbound?.address,
                                                      workers: concurrency, capture: snapshot.capture != nil)
        guard bound.outbound.count == (snapshot.outbound == nil ? 0 : concurrency),
              bound.inbound.count == (snapshot.inbound == nil ? 0 : concurrency) else {
            bound.close()
            throw ProxyStartError(description: "the listening sockets bound at start do not match the listeners of the config")
        }
        workers = (0..<concurrency).map { Worker(id: $0, snapshot: snapshot) }
        for w in workers { w.workerCount = concurrency }
        TraceExporter.attach(&traceExporter, snapshot, workers: workers, running: false)
        if let al = snapshot.bootstrap.accessLog {
            let writer = try AccessLogWriter(path: al.path, workers: concurrency)
            for (i, w) in workers.enumerated() {
                w.accessLog = AccessLogSink(loop: w.loop, pipeFd: writer.writeEnd(worker: i), sampling: al.sampling, includeQuery: al.includeQuery,
                                            telemetryOnly: al.telemetryOnly)
            }
            writer.start()
            accessLogWriter = writer
        }
        let outFds = bound.outbound, inFds = bound.inbound
        if !outFds.isEmpty { outboundPort = Socket.localPort(outFds[0]) }
        if !inFds.isEmpty { inboundPort = Socket.localPort(inFds[0]) }
        let adminFd = Socket.listen(snapshot.bootstrap.admin, reusePort: false)
        if adminFd < 0 {
            throw ProxyStartError.cannotListen(snapshot.bootstrap.admin, "admin", SocketError(code: -adminFd))
        }
        adminPort = Socket.localPort(adminFd)
        let admin = AdminServer(workers: workers, snapshot: snapshot)
        guard admin.listen(fd: adminFd) else { throw ProxyStartError(description: "cannot watch the admin listener") }
        self.admin = admin
        for (i, w) in workers.enumerated() {
            w.startListeners(outboundFd: outFds.isEmpty ? nil : outFds[i], inboundFd: inFds.isEmpty ? nil : inFds[i],
                             outbound6Fd: bound.outbound6.isEmpty ? nil : bound.outbound6[i])
        }
        gatewayPorts.update(snapshot, workers: workers)
        for w in workers {
            threads.append(Threads.spawn(name: "worker") { w.loop.run() })
        }
        adminThread = Threads.spawn(name: "admin") { admin.run() }
        if ready { admin.ready.store(true, ordering: .releasing) }
        if snapshot.usesDNS { refresher.replace(snapshot, server: self, post: nil) }   // re-resolved from now on
        JWKSFetcher.shared.track(self, snapshot)
    }

    /// `/ready` turns 200 (it was started with `ready: false`) once every worker has run what
    /// was posted to it before this call, snapshots from `replace` included: after a 200, no
    /// new request is served from an older config. Any thread.
    public func markReady() {
        guard let admin else { return }
        let left = Countdown(workers.count)
        for w in workers {
            w.loop.post { if left.tick() { admin.ready.store(true, ordering: .releasing) } }
        }
    }

    /// Puts a new snapshot in force (new credentials after a renewal): every worker takes it for
    /// new connections and requests; established connections and requests in flight finish on
    /// the one they started with. Callable from any thread.
    public func replace(_ next: ProxySnapshot) {
        refresher.replace(next, server: self) { self.post($0) }
    }

    /// DNS clusters' addresses changed (EndpointResolver's thread): the config in force again.
    func dnsChanged() { refresher.refresh(server: self) { post($0) } }

    /// JWKS key sets changed (JWKSFetcher's thread): the config in force compiled again with
    /// them, under the same lock as every other snapshot, so it never replaces a newer config.
    /// False when the compile failed (the fetcher backs off, `JWKSFetcher.RecompileBackoff`).
    func keysChanged() -> Bool { refresher.recompile(server: self) { post($0) } }

    /// One snapshot to every worker, the admin and DNS ports (`replace`, under the refresher's
    /// lock); the JWKS fetcher learns the URIs of the snapshot in force.
    private func post(_ next: ProxySnapshot) {
        JWKSFetcher.shared.track(self, next)
        TraceExporter.attach(&traceExporter, next, workers: workers, running: true)
        for w in workers {
            w.loop.post { [w] in w.replaceSnapshot(next) }
        }
        admin?.replace(next)
        dns?.publish(next.dnsTable)
        gatewayPorts.update(next, workers: workers)
    }

    /// The DNS server answers from the snapshot in force from now on (this server's first one
    /// until `replace`). Call once, before `replace` runs on other threads.
    public func attachDNS(_ d: DNSServer, current: ProxySnapshot? = nil) {
        dns = d
        d.publish((current ?? snapshot).dnsTable)
    }

    /// The status port answers `/ready`, `/healthz` and `/stats/prometheus` as the admin port
    /// does from now on (it served 503 until this proxy ran). Call after `start`, once.
    public func attachStatus(_ s: StatusServer) {
        guard let admin else { return }
        status = s
        s.attach(admin)
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
        traceExporter?.stop()
        dns?.stop()
        status?.stop()
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
