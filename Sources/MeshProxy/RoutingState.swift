import MeshCore
import MeshIO

/// One config snapshot as one worker runs it: the upstream pools of its clusters (per endpoint),
/// each cluster's circuit-breaker counts, retry budget and pending queue, and the load balancers'
/// positions. A worker has one current state; a config change makes a new one (carrying each
/// endpoint's outlier state over), and requests in flight keep the state they started with, so
/// cluster and endpoint indices always mean what they meant when the request was routed.
final class RoutingState {
    unowned(unsafe) let worker: Worker
    let snapshot: ProxySnapshot
    /// pools[cluster][endpoint]
    private(set) var pools: [[EndpointPool]] = []
    private var roundRobin: [Int] = []
    /// Per-cluster circuit-breaker state, retry budget and pending queue.
    private(set) var clusterState: [ClusterRuntime] = []
    /// Round-robin position per route target.
    private var targetRR: [Int] = []
    /// Round-robin position per route target and locality level (targets with a `balancing`).
    var balancingRR: [[Int]] = []
    /// Slots the last consistent-hash pick looked at (tests).
    var hashWalkSteps = 0
    /// A newer state took over: connections finishing here close instead of going idle.
    private(set) var retired = false
    /// The next state took over these very pools (same clusters and endpoints).
    private(set) var handedOver = false
    /// That next state, kept alive by this one: the pools now point at it, and a request still
    /// on this state may use them.
    private var successor: RoutingState?

    /// Whether two snapshots have the same clusters, endpoints and targets (only credentials or
    /// route details changed), so pools and their connections carry over.
    static func sameShape(_ a: ProxySnapshot, _ b: ProxySnapshot) -> Bool {
        a.clusters.count == b.clusters.count && a.targets.count == b.targets.count
            && zip(a.clusters, b.clusters).allSatisfy { $0.name == $1.name && $0.endpoints == $1.endpoints && $0.mutualTLS == $1.mutualTLS
                && $0.http2 == $1.http2 && $0.expectedPeers == $1.expectedPeers && $0.origination?.key == $1.origination?.key }
            && zip(a.targets, b.targets).allSatisfy { $0.cluster == $1.cluster && $0.endpoints == $1.endpoints }
    }

    init(worker: Worker, snapshot: ProxySnapshot, previous: RoutingState?) {
        self.worker = worker
        self.snapshot = snapshot
        if let prev = previous, RoutingState.sameShape(prev.snapshot, snapshot) {
            // New credentials or route details only: established connections stay in use (they
            // were verified when made); new handshakes use the new snapshot's TLS contexts.
            pools = prev.pools
            clusterState = prev.clusterState
            roundRobin = prev.roundRobin
            targetRR = prev.targetRR
            prev.handedOver = true
            prev.successor = self
            for ps in pools { for p in ps { p.routing = self; p.sessionCache.clear() } }
            return
        }
        pools = snapshot.clusters.enumerated().map { (ci, c) in
            c.endpoints.map { EndpointPool(worker: worker, routing: self, address: $0, cluster: ci) }
        }
        roundRobin = Array(repeating: worker.id, count: snapshot.clusters.count)
        clusterState = snapshot.clusters.map { _ in ClusterRuntime() }
        targetRR = Array(repeating: worker.id, count: snapshot.targets.count)
        if let prev = previous {
            // Outlier state follows the endpoint (same cluster name and address) across configs.
            for (ci, c) in snapshot.clusters.enumerated() {
                guard let pci = prev.snapshot.clusters.firstIndex(where: { $0.name == c.name }) else { continue }
                for (ei, p) in pools[ci].enumerated() {
                    guard let old = prev.pools[pci].first(where: { $0.address == p.address }) else { p.addedAt = worker.loop.now; continue }
                    pools[ci][ei].inherit(from: old)
                }
            }
        }
    }

    func retire() {
        if handedOver { return }
        retired = true
        closeIdle()
    }

    func closeIdle() {
        for ps in pools { for p in ps { p.closeIdle() } }
    }

    /// No upstream connection of this state is open any more.
    var isQuiescent: Bool { handedOver || pools.allSatisfy { $0.allSatisfy { $0.open == 0 } } }

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
    func pickEndpoint(target t: Int, avoid: EndpointPool?, hash: UInt64? = nil) -> EndpointPool? {
        let tg = snapshot.targets[t]
        let ps = pools[tg.cluster]
        let eps = tg.endpoints
        let n = eps.count
        if n == 0 { return nil }
        if let bal = tg.balancing { return pickBalanced(target: t, tg, bal, avoid: avoid, hash: hash) }
        let now = worker.loop.now
        if n == 1 {
            let p = ps[eps[0]]
            return p.ejectedUntil > now ? nil : p
        }
        var start: Int
        switch tg.loadBalancer {
        case .roundRobin:
            start = targetRR[t] % n
        case .random:
            start = Int(worker.rng.next() % UInt64(n))
        case .leastRequest:
            // Power of two choices: the less loaded of two distinct random endpoints.
            let i = Int(worker.rng.next() % UInt64(n))
            var j = Int(worker.rng.next() % UInt64(n - 1))
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

    /// Whether one more retry to `cluster` fits the cluster's `maxRetries` and its retry budget
    /// (`RetryBudget`: Envoy's concurrent rule, then Linkerd's rate rule), at the loop's time.
    func retryAllowed(cluster c: Int) -> Bool {
        let rt = clusterState[c]
        return rt.retryBudget.allows(activeRetries: rt.activeRetries, activeRequests: rt.activeRequests,
                                     maxRetries: snapshot.clusters[c].maxRetries, now: worker.loop.now)
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
        let now = worker.loop.now
        if p.ejectedUntil > now || od.maxEjectionPercent == 0 { return }
        let all = pools[p.cluster]
        var ejected = 0
        for q in all where q.ejectedUntil > now { ejected += 1 }
        // Envoy: never more than maxEjectionPercent, but at least one endpoint may go.
        if ejected >= max(1, all.count * od.maxEjectionPercent / 100) { return }
        // Healthy intervals since the last ejection ended each take one off the multiplier.
        if p.ejections > 0 && now > p.ejectedUntil && od.interval > 0 {
            let healthy = (now - p.ejectedUntil) / od.interval
            p.ejections -= Int(min(healthy, UInt64(p.ejections)))
        }
        p.ejections += 1
        let cap = max(od.baseEjection, 300_000_000_000)
        p.ejectedUntil = now + min(od.baseEjection * UInt64(p.ejections), cap)
        p.counters.inc(.ejections)
        p.counters.set(.ejectedUntil, p.ejectedUntil)
        worker.stats.inc(.outlierEjections)
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

}

/// One cluster's state on one worker: requests and retries in flight (circuit breakers and the
/// retry budget), open connections, and requests waiting for a connection (bounded).
final class ClusterRuntime {
    var activeRequests = 0
    var activeRetries = 0
    /// The retry budget's rate part (its concurrent part counts `activeRetries` against
    /// `activeRequests`).
    var retryBudget = RetryBudget()
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

