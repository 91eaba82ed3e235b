import MeshControlWire
import MeshCore
import MeshIO
import MeshTLS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What every worker reads and never changes: where meshd's API is, who it must be, the client
/// TLS contexts (one per namespace: its sidecars share one certificate) and the source addresses.
final class Plan: @unchecked Sendable {
    let api: [SocketAddress]
    let meshdIdentity: String
    let contexts: [TLSContext]
    /// Source addresses to spread streams over (empty: the kernel picks), `perSource` streams each.
    let sources: [SocketAddress]
    let perSource: Int
    /// Connections a worker has in their TCP/TLS handshake at once.
    let ramp: Int

    init(api: [SocketAddress], meshdIdentity: String, contexts: [TLSContext], sources: [SocketAddress], perSource: Int, ramp: Int) {
        self.api = api; self.meshdIdentity = meshdIdentity; self.contexts = contexts
        self.sources = sources; self.perSource = perSource; self.ramp = ramp
    }

    func source(for index: Int) -> SocketAddress? {
        sources.isEmpty ? nil : sources[(index / perSource) % sources.count]
    }
}

/// A timer-only object on a worker's loop: starts queued connections and retries.
final class Ticker: Pollable {
    unowned let worker: Worker
    init(worker: Worker) { self.worker = worker; super.init(fd: -1) }
    override func onTimer(now: UInt64) { worker.tick(now: now) }
}

/// One event loop on its own thread and the simulated sidecars (or CSR clients) it owns. Its
/// streams and connections are touched only on its thread; the coordinator reads the atomics and
/// talks to it through `loop.post`.
final class Worker: @unchecked Sendable {
    let id: Int
    let loop: EventLoop
    let plan: Plan
    private var thread: pthread_t?
    private(set) var streams: [SimStream] = []
    private var queue: [SimStream] = []
    private var inHandshake = 0
    private var ticker: Ticker!

    // Read by the coordinator.
    let connected = Atomic<Int>(0)
    let withConfig = Atomic<Int>(0)
    let pushes = Atomic<Int>(0)
    /// Pushes and their body bytes by form: the whole text, or a delta.
    let fullPushes = Atomic<Int>(0)
    let deltaPushes = Atomic<Int>(0)
    let fullBytes = Atomic<Int>(0)
    let deltaBytes = Atomic<Int>(0)
    let acks = Atomic<Int>(0)
    let lastPushAt = Atomic<UInt64>(0)
    let failures = Atomic<Int>(0)
    let refusals = Atomic<Int>(0)
    let done = Atomic<Int>(0)
    let unexpected = Atomic<Int>(0)
    let lastError = Locked<String>("")

    // The apply being measured (loop thread only).
    private var marking = false
    private var target = 0
    private var t0: UInt64 = 0
    private var latencies: [UInt64] = []

    init(id: Int, plan: Plan) {
        self.id = id
        self.plan = plan
        loop = EventLoop(name: "push-load \(id)")
    }

    func start() {
        ticker = Ticker(worker: self)
        loop.registerTimerOnly(ticker)
        loop.setDeadline(ticker, Clock.monotonicNanos() + 10_000_000)
        let l = loop
        thread = Threads.spawn(name: "push-load \(id)") { l.run() }
    }

    func stop() {
        loop.stop()
        if let t = thread { Threads.join(t) }
    }

    /// Runs `body` on the loop and waits for it.
    func sync<T: Sendable>(_ body: @escaping @Sendable (Worker) -> T) -> T {
        let box = Locked<T?>(nil)
        loop.post { [self] in
            let v = body(self)
            box.withLock { $0 = v }
        }
        while true {
            if let v = box.withLock({ $0 }) { return v }
            usleep(500)
        }
    }

    // MARK: streams

    /// Adds a stream to connect (loop thread).
    func add(_ s: SimStream) {
        streams.append(s)
        queue.append(s)
    }

    private var hibernations = 0
    private var trimmedAt: UInt64 = 0

    /// A connection gave its buffers back; after many, the freed memory goes back to the system.
    func hibernated() { hibernations += 1 }

    func tick(now: UInt64) {
        if hibernations >= 256 && now - trimmedAt > 1_000_000_000 {
            hibernations = 0
            trimmedAt = now
            Memory.trim()
        }
        if !queue.isEmpty && inHandshake < plan.ramp {
            // One pass: start what is due while the ramp allows; a failed start re-queues itself.
            let pending = queue
            queue = []
            queue.reserveCapacity(pending.count)
            for s in pending {
                if inHandshake < plan.ramp && s.retryAt <= now { connect(s) } else { queue.append(s) }
            }
        }
        loop.setDeadline(ticker, now + (queue.isEmpty ? 100_000_000 : 5_000_000))
    }

    private func connect(_ s: SimStream) {
        let addr = plan.api[s.addressIndex % plan.api.count]
        let fd = Socket.connect(addr, source: plan.source(for: s.index))
        if fd < 0 { retry(s, "connect to \(addr): \(Socket.errorText(-fd))"); return }
        let tls = TLSSession(context: plan.contexts[s.namespace], expectedPeers: [plan.meshdIdentity])
        let c = SimConnection(worker: self, stream: s, fd: fd, security: tls)
        s.conn = c
        inHandshake += 1
        guard c.start() else { inHandshake -= 1; s.conn = nil; retry(s, "cannot watch a socket (epoll)"); return }
        c.armHandshakeDeadline()
    }

    func established(_ s: SimStream) {
        inHandshake -= 1
        s.failures = 0
        connected.add(1, ordering: .relaxed)
    }

    func failed(_ s: SimStream, _ why: String) {
        guard let c = s.conn else { return }
        s.conn = nil
        if c.phase == .handshake { inHandshake -= 1 } else { connected.subtract(1, ordering: .relaxed) }
        retry(s, why)
    }

    /// Back-off doubling from 100 ms to 5 s (jittered), then the next API address.
    private func retry(_ s: SimStream, _ why: String) {
        failures.add(1, ordering: .relaxed)
        lastError.withLock { $0 = "stream \(s.index) (\(s.node)): \(why)" }
        s.failures += 1
        s.registered = false
        s.addressIndex += 1
        let base = min(UInt64(100_000_000) << UInt64(min(s.failures - 1, 6)), 5_000_000_000)
        s.retryAt = loop.now + base / 2 + UInt64(s.index &* 7919 % 1000) * (base / 2000)
        queue.append(s)
    }

    func pushed(_ s: SimStream, delta: Bool, bytes: Int) {
        pushes.add(1, ordering: .relaxed)
        if delta {
            deltaPushes.add(1, ordering: .relaxed); deltaBytes.add(bytes, ordering: .relaxed)
        } else {
            fullPushes.add(1, ordering: .relaxed); fullBytes.add(bytes, ordering: .relaxed)
        }
        lastPushAt.store(loop.now, ordering: .relaxed)
        if marking && !s.expected { unexpected.add(1, ordering: .relaxed) }
    }

    func acked(_ s: SimStream, version: Int, refusal: String?) {
        acks.add(1, ordering: .relaxed)
        if let r = refusal {
            refusals.add(1, ordering: .relaxed)
            lastError.withLock { $0 = "stream \(s.index) (\(s.node)): \(r)" }
        }
        if !s.hasConfig { s.hasConfig = true; withConfig.add(1, ordering: .relaxed) }
        guard marking else { return }
        let now = loop.now
        s.acksSinceMark.append((version, now))
        if target > 0 && s.expected && !s.counted && version >= target { count(s, at: now) }
    }

    private func count(_ s: SimStream, at: UInt64) {
        s.counted = true
        latencies.append(at > t0 ? at - t0 : 0)
        done.add(1, ordering: .relaxed)
    }

    // MARK: the apply being measured (loop thread, through `sync`)

    /// Starts watching for an apply: `namespace` is the one whose sidecars should get it (nil: all).
    /// Returns how many of this worker's streams should.
    func mark(namespace: Int?) -> Int {
        marking = true
        target = 0
        latencies.removeAll(keepingCapacity: true)
        done.store(0, ordering: .relaxed)
        unexpected.store(0, ordering: .relaxed)
        var n = 0
        for s in streams {
            s.acksSinceMark.removeAll()
            s.counted = false
            s.expected = namespace == nil || s.namespace == namespace!
            if s.expected { n += 1 }
        }
        return n
    }

    /// The apply returned `version` (it started at `start`): counts the expected streams that
    /// already ACKed it, and from now on each one as its ACK comes.
    func setTarget(version: Int, start: UInt64) {
        target = version
        t0 = start
        for s in streams where s.expected && !s.counted {
            if let a = s.acksSinceMark.first(where: { $0.version >= version }) { count(s, at: a.at) }
        }
    }

    /// Ends the measurement: the latencies (nanoseconds from the apply's start) of the counted ACKs.
    func endMark() -> [UInt64] {
        marking = false
        target = 0
        return latencies
    }

    /// Up to 5 streams that should have ACKed the apply of `version` and have not (for the log).
    func behind(version: Int) -> [String] {
        Array(streams.filter { $0.expected && !$0.counted }.prefix(5).map { "\($0.node) (version \($0.version), \($0.conn == nil ? "not connected" : "connected"))" })
    }
}
