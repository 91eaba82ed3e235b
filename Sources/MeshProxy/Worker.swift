import MeshCore
import MeshIO
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

/// One worker thread: its event loop, its own listeners (SO_REUSEPORT), the downstream
/// connections accepted on them, its upstream pools, counters, scratch buffer and random source.
/// Nothing here is shared with another thread except the counters the admin thread reads and the
/// immutable config snapshot; a connection lives its whole life on one worker.
public final class Worker: @unchecked Sendable {
    public let id: Int
    public let loop: EventLoop
    public let stats = WorkerStats()
    /// Istio-shaped request metrics of this worker.
    let metrics: ProxyMetrics
    /// This worker's side of the access log (nil when access logging is off).
    var accessLog: AccessLogSink?
    /// Finished inbound HTTP/2 stream objects, reused.
    var h2StreamPool: [H2InboundStream] = []
    /// Finished HTTP/2 bridge stream objects, reused.
    var h2BridgePool: [H2BridgeStream] = []
    /// Finished mirror requests, reused, and how many are in flight.
    var mirrorPool: [MirrorRequest] = []
    var mirrorsInFlight = 0
    private(set) var snapshot: ProxySnapshot
    /// pools[cluster][endpoint]
    private(set) var pools: [[EndpointPool]] = []
    private var roundRobin: [Int] = []
    /// Per-cluster circuit-breaker state, retry budget and pending queue of this worker.
    private(set) var clusterState: [ClusterRuntime] = []
    /// Round-robin position per route target.
    private var targetRR: [Int] = []
    var rng = FastRandom()
    /// Reused for building request heads.
    let scratch = ByteBuffer(capacity: 8 * 1024)
    private(set) var draining = false
    private var downstreams: [DownstreamConnection] = []
    private var listeners: [Listener] = []
    private var drainTimer: DrainTimer?
    /// Called on the worker's thread when it has finished draining.
    var onDrained: (() -> Void)?

    init(id: Int, snapshot: ProxySnapshot) {
        self.id = id
        self.loop = EventLoop(name: "worker \(id)")
        self.snapshot = snapshot
        self.metrics = ProxyMetrics(enabled: snapshot.bootstrap.statsEnabled)
        buildPools()
    }

    private func buildPools() {
        pools = snapshot.clusters.enumerated().map { (ci, c) in
            c.endpoints.map { EndpointPool(worker: self, address: $0, cluster: ci) }
        }
        roundRobin = Array(repeating: id, count: snapshot.clusters.count)
        clusterState = snapshot.clusters.map { _ in ClusterRuntime() }
        targetRR = Array(repeating: id, count: snapshot.targets.count)
    }

    /// Takes a new snapshot for new work (on the worker's thread). Pools and their connections
    /// stay when the clusters are the same; TLS sessions are forgotten (the next handshake
    /// presents the new certificate).
    func replaceSnapshot(_ next: ProxySnapshot) {
        let old = snapshot
        snapshot = next
        let sameShape = old.clusters.count == next.clusters.count && old.targets.count == next.targets.count
            && zip(old.clusters, next.clusters).allSatisfy { $0.endpoints == $1.endpoints }
        if sameShape {
            for ps in pools { for p in ps { p.sessionCache.clear() } }
        } else {
            for ps in pools { for p in ps { p.closeIdle() } }
            buildPools()
        }
    }

    /// Starts listening on the given (already bound) sockets; runs on the worker's thread.
    func startListeners(outboundFd: Int32?, inboundFd: Int32?) {
        if let fd = outboundFd {
            let l = Listener(loop: loop, fd: fd, name: "outbound") { [unowned self] cfd in self.accept(cfd, inbound: false) }
            if l.start() { listeners.append(l) } else { Log.error("worker", "cannot watch outbound listener") }
        }
        if let fd = inboundFd {
            let l = Listener(loop: loop, fd: fd, name: "inbound") { [unowned self] cfd in self.accept(cfd, inbound: true) }
            if l.start() { listeners.append(l) } else { Log.error("worker", "cannot watch inbound listener") }
        }
    }

    private func accept(_ fd: Int32, inbound: Bool) {
        let snap = snapshot
        var tls: TLSSession? = nil
        if inbound {
            guard let ctx = snap.serverTLS else { Glibc.close(fd); return }
            tls = TLSSession(context: ctx)
        }
        let settings = inbound ? snap.inbound! : snap.outbound!
        let d = DownstreamConnection(worker: self, fd: fd, tls: tls, inbound: inbound, settings: settings)
        d.listIndex = downstreams.count
        downstreams.append(d)
        stats.inc(.downstreamConnectionsTotal)
        stats.inc(.downstreamConnectionsActive)
        if !d.start() { downstreamClosed(d); return }
        loop.setDeadline(d, loop.now + settings.headerTimeout)
    }

    func downstreamClosed(_ d: DownstreamConnection) {
        let i = d.listIndex
        guard i >= 0 && i < downstreams.count && downstreams[i] === d else { return }
        let last = downstreams.removeLast()
        if i < downstreams.count {
            downstreams[i] = last
            last.listIndex = i
        }
        d.listIndex = -1
        stats.dec(.downstreamConnectionsActive)
        if draining && downstreams.isEmpty { finishDrain() }
    }

    /// The pool for the next endpoint of `cluster` (round robin), skipping `avoid` when the
    /// cluster has another endpoint (retries go elsewhere when they can).
    func pickEndpoint(cluster: Int, avoid: EndpointPool?) -> EndpointPool {
        let ps = pools[cluster]
        var i = roundRobin[cluster] % ps.count
        roundRobin[cluster] = i + 1
        if ps.count > 1, let a = avoid, ps[i] === a {
            i = (i + 1) % ps.count
            roundRobin[cluster] = i + 1
        }
        return ps[i]
    }

    /// An endpoint of `target` by its load-balancing policy, skipping ejected endpoints and, when
    /// another healthy one exists, `avoid` (retries go elsewhere when they can); nil when no
    /// endpoint is healthy (UH).
    func pickEndpoint(target t: Int, avoid: EndpointPool?) -> EndpointPool? {
        let tg = snapshot.targets[t]
        let ps = pools[tg.cluster]
        let eps = tg.endpoints
        let n = eps.count
        if n == 0 { return nil }
        let now = loop.now
        if n == 1 {
            let p = ps[eps[0]]
            return p.ejectedUntil > now ? nil : p
        }
        var start: Int
        switch tg.loadBalancer {
        case .roundRobin:
            start = targetRR[t] % n
        case .random:
            start = Int(rng.next() % UInt64(n))
        case .leastRequest:
            // Power of two choices: the less loaded of two distinct random endpoints.
            let i = Int(rng.next() % UInt64(n))
            var j = Int(rng.next() % UInt64(n - 1))
            if j >= i { j += 1 }
            let a = ps[eps[i]], b = ps[eps[j]]
            let aOK = a.ejectedUntil <= now && a !== avoid, bOK = b.ejectedUntil <= now && b !== avoid
            if aOK && bOK { return a.activeRequests <= b.activeRequests ? a : b }
            if aOK { return a }
            if bOK { return b }
            start = i
        }
        var fallback: EndpointPool? = nil
        for k in 0..<n {
            let i = (start + k) % n
            let p = ps[eps[i]]
            if p.ejectedUntil > now { continue }
            if p === avoid { fallback = p; continue }
            targetRR[t] = i + 1
            return p
        }
        targetRR[t] = start + 1
        return fallback
    }

    /// Whether one more retry to `cluster` fits Envoy's retry budget (20% of the requests in
    /// flight, at least 3) and the cluster's `maxRetries`.
    func retryAllowed(cluster c: Int) -> Bool {
        let rt = clusterState[c]
        let budget = max(3, rt.activeRequests / 5)
        return rt.activeRetries < min(budget, snapshot.clusters[c].maxRetries)
    }

    /// Outlier detection: the outcome of one attempt on `p` (a status, or 0 with `gatewayFailure`
    /// for a connect failure, reset or timeout).
    func recordOutcome(_ p: EndpointPool, status: Int, gatewayFailure: Bool) {
        guard let od = snapshot.clusters[p.cluster].outlier else { return }
        if gatewayFailure || status >= 500 { p.consecutive5xx += 1 } else { p.consecutive5xx = 0 }
        if gatewayFailure || (status >= 502 && status <= 504) { p.consecutiveGateway += 1 } else { p.consecutiveGateway = 0 }
        let trip = (od.consecutive5xx > 0 && p.consecutive5xx >= od.consecutive5xx)
            || (od.consecutiveGateway > 0 && p.consecutiveGateway >= od.consecutiveGateway)
        guard trip else { return }
        p.consecutive5xx = 0
        p.consecutiveGateway = 0
        let now = loop.now
        if p.ejectedUntil > now || od.maxEjectionPercent == 0 { return }
        let all = pools[p.cluster]
        var ejected = 0
        for q in all where q.ejectedUntil > now { ejected += 1 }
        // Envoy: never more than maxEjectionPercent, but at least one endpoint may go.
        if ejected >= max(1, all.count * od.maxEjectionPercent / 100) { return }
        p.ejections += 1
        let cap = max(od.baseEjection, 300_000_000_000)
        p.ejectedUntil = now + min(od.baseEjection * UInt64(p.ejections), cap)
        p.counters.inc(.ejections)
        p.counters.set(.ejectedUntil, p.ejectedUntil)
        stats.inc(.outlierEjections)
        Log.info("outlier", "ejected \(p.address) of \(snapshot.clusters[p.cluster].name) for \((p.ejectedUntil - now) / 1_000_000) ms")
    }

    /// A connection slot of `cluster` was freed (an idle connection of `freed`, when given): the
    /// first waiting request tries again, on `freed` when it can.
    func poolSlotFreed(cluster c: Int, freed: EndpointPool? = nil) {
        let rt = clusterState[c]
        if rt.pendingCount == 0 { return }
        while let w = rt.popWaiter() {
            if w.poolAvailable(freed) { return }
        }
    }

    // MARK: drain

    /// Stops accepting, closes idle keep-alive connections, lets in-flight requests finish (their
    /// responses carry `Connection: close`), and stops the loop when none is left or `timeout` passed.
    func beginDrain(timeout: UInt64) {
        if draining { return }
        draining = true
        for l in listeners { l.close() }
        listeners.removeAll()
        for ps in pools { for p in ps { p.closeIdle() } }
        for d in downstreams { d.drainIfIdle() }
        if downstreams.isEmpty { finishDrain(); return }
        let t = DrainTimer(worker: self)
        loop.registerTimerOnly(t)
        loop.setDeadline(t, loop.now + timeout)
        drainTimer = t
    }

    fileprivate func drainTimedOut() {
        Log.warn("worker", "worker \(id): drain timeout with \(downstreams.count) connection(s) still open; closing them")
        for d in downstreams { d.closeNow() }
        finishDrain()
    }

    private func finishDrain() {
        if let t = drainTimer { loop.deregisterTimerOnly(t); drainTimer = nil }
        for ps in pools { for p in ps { p.closeIdle() } }
        onDrained?()
        onDrained = nil
    }

    var activeDownstreams: Int { downstreams.count }
}

/// One cluster's state on one worker: requests and retries in flight (circuit breakers and the
/// retry budget), open connections, and requests waiting for a connection (bounded).
final class ClusterRuntime {
    var activeRequests = 0
    var activeRetries = 0
    var openConnections = 0
    /// Bounded by the cluster's `maxPendingRequests` (Envoy's default 1024), so the linear
    /// removals below stay cheap.
    private var waiters: [PoolWaiter] = []

    var pendingCount: Int { waiters.count }

    func addWaiter(_ w: PoolWaiter) { waiters.append(w) }

    func popWaiter() -> PoolWaiter? { waiters.isEmpty ? nil : waiters.removeFirst() }

    func removeWaiter(_ w: PoolWaiter) {
        if let i = waiters.firstIndex(where: { $0 === w }) { waiters.remove(at: i) }
    }
}

/// A request waiting for a connection of a full pool.
protocol PoolWaiter: AnyObject {
    /// A slot is free (an idle connection of `freed`, when given): try again; false when the
    /// waiter no longer wants one.
    func poolAvailable(_ freed: EndpointPool?) -> Bool
}

/// The deadline of a worker's drain.
private final class DrainTimer: Pollable {
    unowned let worker: Worker
    init(worker: Worker) { self.worker = worker; super.init(fd: -1) }
    override func onTimer(now: UInt64) { worker.drainTimedOut() }
}
