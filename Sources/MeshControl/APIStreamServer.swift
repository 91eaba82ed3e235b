import CMeshShims
import MeshControlWire
import MeshCore
import MeshIO
import MeshPKI
import MeshTLS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// meshd's API port on a few event loops (DESIGN §12): no thread per connection. A config
/// request (`GET /v1/config`) is parked on its connection's loop until the sidecar's config
/// differs from its digest (every change of the store wakes each loop, which re-checks its
/// parked streams after a short debounce) or the wait ends (304); ACK and NACK are answered
/// on the loop; everything else (certificate signing, registration, the trust bundle) runs on
/// a small fixed pool of worker threads and the answer is posted back to the loop. Connections
/// are kept alive (HTTP/1.1 over TLS, the sidecar's certificate verified in the handshake),
/// bounded overall and per client address, each with deadlines; a stream older than its
/// maximum age (jittered) is closed at its next answer, so sidecars spread over replicas.
public final class APIStreamServer: @unchecked Sendable {
    /// The knobs, set before `run` (meshd's flags).
    public struct Settings: Sendable {
        /// Event loops (threads) serving connections (`meshd --api-loops`).
        public var loops = 2
        /// Worker threads for blocking requests (signing, registration).
        public var workers = 4
        /// A stream's maximum age, jittered ±10% per connection (0: none; `meshd --max-stream-age`).
        public var maxStreamAge: UInt64 = 30 * 60 * 1_000_000_000
        /// Open connections at most, overall and from one client address (one host may run
        /// thousands of sidecars; the load generator runs them all on loopback).
        public var maxConnections = 32768
        public var maxPerClient = 16384
        /// Time for the TLS handshake plus the first request, and for each later request after
        /// an answer (a silent or trickling client is closed).
        public var requestDeadline: UInt64 = 10_000_000_000
        /// How long a config request waits for a change before "no change" (304).
        public var streamWait: UInt64 = 20_000_000_000
        /// The largest request body read (413 past it).
        public var maxBody = 256 * 1024
        /// Requests waiting for a worker at most (past it: 503, the connection closed).
        public var maxQueued = 4096
        public init() {}
    }

    public var settings = Settings()
    public let port: Int
    let fd: Int32
    unowned let meshd: MeshdServer
    let context: @Sendable () -> TLSContext?
    private(set) var loops: [APILoop] = []
    private(set) var pool: APIWorkerPool?
    /// Registrations (writes to the store, which may wait on etcd and on the store's lock) run
    /// on workers of their own, so certificate signing never waits behind them.
    private(set) var registrations: APIWorkerPool?

    // Accounting (any thread).
    let active = Atomic<Int>(0)
    private let perIP = Locked<[String: Int]>([:])
    /// Connections that carry a config stream now (parked or answering).
    let streams = Atomic<Int>(0)
    let streamsOpened = Atomic<Int>(0)
    let maxAgeClosed = Atomic<Int>(0)
    let refused = Atomic<Int>(0)

    /// Binds the port (the error names it); `run` serves it.
    init(address: SocketAddress, meshd: MeshdServer, context: @escaping @Sendable () -> TLSContext?) throws(CAError) {
        let fd = Socket.listen(address, reusePort: false, backlog: 4096)
        if fd < 0 { throw CAError("cannot listen on \(address) (api): \(Socket.errorText(-fd))") }
        self.fd = fd
        self.port = Socket.localPort(fd)
        self.meshd = meshd
        self.context = context
    }

    /// Serves until the process ends: starts the worker pool and the loops, running the first
    /// loop on the calling thread.
    public func run() {
        var s = settings
        // Each connection is a descriptor: the bound follows the open-files limit.
        let files = Threads.raiseOpenFilesLimit()
        if files > 0 && s.maxConnections > files - 128 { s.maxConnections = max(16, files - 128) }
        settings = s
        pool = APIWorkerPool(threads: max(1, s.workers), maxQueued: s.maxQueued)
        registrations = APIWorkerPool(threads: 2, maxQueued: s.maxQueued)
        loops = (0..<max(1, s.loops)).map { APILoop(server: self, index: $0) }
        let all = loops
        meshd.store?.onChange { for l in all { l.loop.post { l.changed() } } }
        for l in loops.dropFirst() { _ = Threads.spawn(name: "api-loop") { l.run() } }
        loops[0].run()
    }

    /// Admits a new connection from `ip` (false: over a bound, refused).
    func admit(_ ip: String) -> Bool {
        let ok = perIP.withLock { m -> Bool in
            if active.load(ordering: .relaxed) >= settings.maxConnections || m[ip, default: 0] >= settings.maxPerClient { return false }
            m[ip, default: 0] += 1
            active.add(1, ordering: .relaxed)
            return true
        }
        if !ok { refused.add(1, ordering: .relaxed) }
        return ok
    }

    /// A connection from `ip` ended.
    func leave(_ ip: String) {
        perIP.withLock { m in
            active.subtract(1, ordering: .relaxed)
            let n = m[ip, default: 1] - 1
            if n <= 0 { m.removeValue(forKey: ip) } else { m[ip] = n }
        }
    }

    /// The API port's series for meshd's `/metrics`.
    public func metrics() -> String {
        var out = "# HELP meshd_config_streams Config streams connected now (parked or being answered).\n# TYPE meshd_config_streams gauge\n"
        out += "meshd_config_streams \(streams.load(ordering: .relaxed))\n"
        out += "# HELP meshd_config_streams_opened_total Connections that started a config stream.\n# TYPE meshd_config_streams_opened_total counter\n"
        out += "meshd_config_streams_opened_total \(streamsOpened.load(ordering: .relaxed))\n"
        out += "# HELP meshd_config_streams_max_age_closed_total Streams closed at their maximum age (--max-stream-age).\n# TYPE meshd_config_streams_max_age_closed_total counter\n"
        out += "meshd_config_streams_max_age_closed_total \(maxAgeClosed.load(ordering: .relaxed))\n"
        out += "# HELP meshd_api_connections Connections open on the API port.\n# TYPE meshd_api_connections gauge\n"
        out += "meshd_api_connections \(active.load(ordering: .relaxed))\n"
        out += "# HELP meshd_api_connections_refused_total Connections refused over the overall or per-client bound.\n# TYPE meshd_api_connections_refused_total counter\n"
        out += "meshd_api_connections_refused_total \(refused.load(ordering: .relaxed))\n"
        return out
    }
}

/// One API event loop: its thread, its share of the listening socket, and its parked config
/// streams, re-checked (after the store's debounce) when the config changes.
final class APILoop: Pollable, @unchecked Sendable {
    let loop: EventLoop
    unowned let server: APIStreamServer
    private var listener: Listener?
    /// Parked config streams (each knows its index here, for removal in O(1)).
    private var parked: [APIConnection] = []
    private var checkPending = false
    private var rng = FastRandom()
    private var trimmer: APITrimmer?

    init(server: APIStreamServer, index: Int) {
        self.server = server
        loop = EventLoop(name: "api \(index)")
        super.init(fd: -1)
    }

    func run() {
        loop.registerTimerOnly(self)
        trimmer = APITrimmer(loop: loop)
        // Every loop watches the one listening socket; whichever wakes first accepts.
        let l = Listener(loop: loop, fd: server.fd, name: "meshd api") { [unowned self] fd in self.accept(fd) }
        listener = l
        if !l.start() { Log.error("meshd", "api loop: cannot watch the listening socket") }
        loop.run()
    }

    private func accept(_ fd: Int32) {
        let ip = ControlServer.peerIP(fd)
        guard server.admit(ip) else { Glibc.close(fd); return }
        guard let ctx = server.context() else { Glibc.close(fd); server.leave(ip); return }
        let age = server.settings.maxStreamAge
        // ±10%: streams opened together (a replica's restart) do not all end together.
        let closeAt = age == 0 ? UInt64.max : loop.now + age - age / 10 + rng.next() % (age / 5 + 1)
        let c = APIConnection(owner: self, fd: fd, security: TLSSession(context: ctx), ip: ip, closeAt: closeAt)
        guard c.start() else { server.leave(ip); return }
        loop.setDeadline(c, loop.now + server.settings.requestDeadline)
    }

    /// A connection closed or gave its buffers back (parked).
    func noteRelease() { trimmer?.noteRelease() }

    func park(_ c: APIConnection) {
        c.parkedIndex = parked.count
        parked.append(c)
    }

    func unpark(_ c: APIConnection) {
        let i = c.parkedIndex
        guard i >= 0, i < parked.count, parked[i] === c else { return }
        let last = parked.removeLast()
        if i < parked.count { parked[i] = last; last.parkedIndex = i }
        c.parkedIndex = -1
    }

    /// The store changed: re-check the parked streams after the debounce (a burst of changes
    /// makes one push).
    func changed() {
        if checkPending { return }
        checkPending = true
        loop.setDeadline(self, Clock.monotonicNanos() + UInt64(ConfigStore.debounce) * 1000)
    }

    override func onTimer(now: UInt64) {
        checkPending = false
        var i = 0
        // Answered streams leave the list (the last one takes their place): walk by index.
        while i < parked.count {
            let c = parked[i]
            if c.recheck() { continue }
            i += 1
        }
    }
}

/// Gives freed memory back to the system after bursts of parked or closed streams (glibc keeps
/// freed chunks resident): after 256 releases, one `malloc_trim` a few seconds later for the
/// whole burst, and one more for its tail. Never per request.
final class APITrimmer: Pollable {
    private unowned let loop: EventLoop
    private var released = 0
    private var armed = false
    private var tail = false
    static let threshold = 256
    static let delay: UInt64 = 3_000_000_000

    init(loop: EventLoop) {
        self.loop = loop
        super.init(fd: -1)
        loop.registerTimerOnly(self)
    }

    func noteRelease() {
        released &+= 1
        if (released >= APITrimmer.threshold || tail) && !armed {
            armed = true
            tail = released >= APITrimmer.threshold
            loop.setDeadline(self, Clock.monotonicNanos() + APITrimmer.delay)
        }
    }

    override func onTimer(now: UInt64) {
        armed = false
        tail = released >= APITrimmer.threshold
        released = 0
        Memory.trim()
    }
}
