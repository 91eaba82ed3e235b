import MeshCore
import MeshStats
import MeshHTTP
import MeshIO
import MeshTLS

/// One HTTP/1.1 connection from this worker to an upstream endpoint (another sidecar over mTLS,
/// or the local app in plain text). It is either connecting for a request, serving one request
/// for its owner (a downstream connection), or idle in its endpoint's pool with an idle deadline.
/// The response is parsed here; its bytes are forwarded by the owner.
final class UpstreamConnection: Connection {
    enum State { case connecting, active, idle }
    unowned(unsafe) let pool: EndpointPool
    var state: State = .connecting
    /// The exchange this request belongs to (nil while idle): an HTTP/1.1 downstream connection
    /// or one stream of an HTTP/2 downstream connection.
    var owner: UpstreamOwner?
    var parser = HTTP1Parser()
    var head = HTTPHead()
    var body = BodyFramer()
    /// True once this connection has carried a complete exchange (so a failure may be the
    /// keep-alive race rather than a dead endpoint).
    var reused = false
    /// Exchanges completed on this connection (for `maxRequestsPerConnection`).
    var exchanges = 0
    /// Any byte of a response seen for the current request.
    var gotResponseBytes = false
    var headParsed = false
    /// The peer's identity as an index in the worker's peer table (0: unknown).
    var peerIndex = 0

    init(pool: EndpointPool, fd: Int32, tls: TLSSession?) {
        self.pool = pool
        super.init(loop: pool.worker.loop, fd: fd, security: tls, connecting: true)
    }

    override func onEstablished() {
        if let tls = security as? TLSSession {
            pool.worker.stats.inc(.tlsHandshakesOK)
            if tls.resumed { pool.worker.stats.inc(.tlsSessionsResumed) }
            peerIndex = pool.worker.metrics.peers.intern(tls.peerIdentity)
        }
        loop.setDeadline(self, 0)
        state = .active
        owner?.upstreamReady(self)
    }

    override func onInput() {
        if let o = owner { o.upstreamInput(self); return }
        // Bytes on an idle pooled connection: the server is closing it or misbehaving.
        closeNow()
    }

    override func onDrained() { owner?.upstreamDrained() }

    override func onPeerClosed(error: Int32) {
        if error == -1 {
            pool.worker.stats.inc(.tlsHandshakesFailed)
            Log.warn("upstream", "TLS with \(pool.address) failed: \(security?.failureReason ?? "")")
        }
        guard let o = owner else { closeNow(); return }
        if error == 0 && !isClosed {
            // A clean end of stream: buffered response bytes may still need forwarding, so the
            // owner decides when to close.
            o.upstreamEOF(self)
            return
        }
        owner = nil
        let wasConnecting = !isEstablished
        closeNow()
        o.upstreamClosed(self, error: error, wasConnecting: wasConnecting)
    }

    override func onClosed() {
        pool.connectionClosed(self)
    }

    override func onDeadline(now: UInt64) {
        switch state {
        case .connecting:
            pool.worker.stats.inc(.upstreamConnectTimeouts)
            if let o = owner {
                owner = nil
                closeNow()
                o.upstreamClosed(self, error: ETIMEDOUT_, wasConnecting: true)
            } else {
                closeNow()
            }
        case .idle:
            closeNow()
        case .active:
            if let m = owner as? MirrorRequest { m.timedOut() }   // a mirror that got no answer in time
            else if owner == nil { closeNow() }   // abandoned (a tunnel whose client left) and stuck
        }
    }

    /// Resets per-request state before a request is sent on this connection.
    func prepareForRequest() {
        parser.resetScan()
        headParsed = false
        gotResponseBytes = false
    }
}

let ETIMEDOUT_: Int32 = 110

/// What an upstream HTTP/1.1 connection reports to the exchange using it.
protocol UpstreamOwner: AnyObject {
    /// Connected (and TLS established): send the request.
    func upstreamReady(_ up: UpstreamConnection)
    /// Response bytes are in `up.input`.
    func upstreamInput(_ up: UpstreamConnection)
    /// `up`'s output drained: more request body may be sent.
    func upstreamDrained()
    /// The upstream closed cleanly; buffered bytes may remain in `up.input`.
    func upstreamEOF(_ up: UpstreamConnection)
    /// The connection failed and is closed (`wasConnecting`: it never got established).
    func upstreamClosed(_ up: UpstreamConnection, error: Int32, wasConnecting: Bool)
}

/// The pooled connections of one worker to one endpoint, with its TLS session cache: idle
/// connections are reused most-recently-used first and closed after the cluster's idle timeout.
final class EndpointPool {
    unowned(unsafe) let worker: Worker
    /// The routing state (config snapshot) this pool belongs to: the newest one that took it over
    /// (states outlive their pools' connections).
    unowned(unsafe) var routing: RoutingState
    let address: SocketAddress
    let cluster: Int
    private var idle: [UpstreamConnection] = []
    private(set) var open = 0
    let sessionCache = TLSSessionCache()
    /// Requests in flight here (LEAST_REQUEST).
    var activeRequests = 0
    // Outlier detection.
    var consecutive5xx = 0
    var consecutiveGateway = 0
    var ejections = 0
    /// Ejected until this loop time (0: never ejected).
    var ejectedUntil: UInt64 = 0
    /// When a config added this endpoint to a cluster the worker already had (warm-up), 0 for
    /// the endpoints it started with.
    var addedAt: UInt64 = 0
    /// Per-endpoint counters for `/clusters` (read racily, tear-free, by the admin thread);
    /// shared with the same endpoint's pool in the next config.
    private(set) var counters = EndpointCounters()

    init(worker: Worker, routing: RoutingState, address: SocketAddress, cluster: Int) {
        self.worker = worker
        self.routing = routing
        self.address = address
        self.cluster = cluster
    }

    /// An idle connection, or a new one being connected; nil over the connection limit or when
    /// the socket cannot even be created (errno in `lastError`).
    func checkout(_ c: ProxySnapshot.Cluster, tlsContext: TLSContext?, fresh: Bool) -> UpstreamConnection? {
        while !fresh, let u = idle.popLast() {
            if u.isClosed || u.peerClosed {
                if !u.isClosed { u.closeNow() }
                continue
            }
            u.state = .active
            loop.setDeadline(u, 0)
            worker.stats.inc(.upstreamReused)
            return u
        }
        if routing.clusterState[cluster].openConnections >= c.maxConnections {
            worker.stats.inc(.upstreamOverflow)
            lastError = 0
            return nil
        }
        let fd = Socket.connect(address, source: c.sourceAddress)
        if fd < 0 { lastError = -fd; counters.inc(.connectFailures); return nil }
        var tls: TLSSession? = nil
        if let o = c.origination {
            tls = TLSSession(context: o.context, sessionCache: sessionCache, origination: o.check)
        } else if c.mutualTLS, let ctx = tlsContext {
            tls = TLSSession(context: ctx, sessionCache: sessionCache, expectedPeers: c.expectedPeers)
        }
        let u = UpstreamConnection(pool: self, fd: fd, tls: tls)
        guard u.start() else { lastError = 24; return nil }
        opened(u, c)
        return u
    }

    /// Counts a connection this pool just opened (either protocol) and arms its connect timeout.
    private func opened(_ conn: Connection, _ c: ProxySnapshot.Cluster) {
        open += 1
        if routing.retired { worker.keepAlive(routing) }
        routing.clusterState[cluster].openConnections += 1
        counters.inc(.connectionsTotal)
        counters.set(.connectionsActive, UInt64(open))
        worker.stats.inc(.upstreamConnectionsTotal)
        worker.stats.inc(.upstreamConnectionsActive)
        loop.setDeadline(conn, loop.now + c.connectTimeout)
    }

    var lastError: Int32 = 0
    var loop: EventLoop { worker.loop }

    /// Returns a connection that finished an exchange cleanly; it is closed instead once it has
    /// carried `maxRequests` exchanges (Istio's `maxRequestsPerConnection`, 0: unlimited).
    func release(_ u: UpstreamConnection, idleTimeout: UInt64, maxRequests: Int) {
        u.owner = nil
        u.reused = true
        u.state = .idle
        u.exchanges += 1
        if maxRequests > 0 && u.exchanges >= maxRequests { u.closeNow(); return }
        if worker.draining || u.isClosed || routing.retired { u.closeNow(); return }
        idle.append(u)
        loop.setDeadline(u, loop.now + idleTimeout)
        routing.poolSlotFreed(cluster: cluster, freed: self)
    }

    func connectionClosed(_ u: UpstreamConnection) {
        open -= 1
        routing.clusterState[cluster].openConnections -= 1
        defer { routing.poolSlotFreed(cluster: cluster); if routing.retired { worker.pruneRetired() } }
        counters.set(.connectionsActive, UInt64(open))
        worker.stats.dec(.upstreamConnectionsActive)
        if u.state == .idle, let i = idle.firstIndex(where: { $0 === u }) { idle.remove(at: i) }
    }

    var idleCount: Int { idle.count }

    /// Takes over an earlier pool's outlier state (the same endpoint in a new config).
    func inherit(from old: EndpointPool) {
        consecutive5xx = old.consecutive5xx
        consecutiveGateway = old.consecutiveGateway
        ejections = old.ejections
        ejectedUntil = old.ejectedUntil
        counters = old.counters
        addedAt = old.addedAt
    }

    // MARK: HTTP/2

    /// HTTP/2 connections to this endpoint (multiplexed).
    private(set) var h2conns: [H2UpstreamConnection] = []
    /// The endpoint refused h2 in ALPN: use HTTP/1.1 with it.
    var h2Refused = false

    /// A connection with room for one more stream, opening a new one when all are full. A
    /// connection that is retiring (GOAWAY either way, closing, peer closed) is never chosen.
    func checkoutH2(_ c: ProxySnapshot.Cluster, tlsContext: TLSContext?) -> H2UpstreamConnection? {
        var best: H2UpstreamConnection? = nil
        for h in h2conns where h.hasCapacity {
            if best == nil || h.load < best!.load { best = h }
        }
        if let b = best { return b }
        if routing.clusterState[cluster].openConnections >= c.maxConnections {
            worker.stats.inc(.upstreamOverflow)
            lastError = 0
            return nil
        }
        let fd = Socket.connect(address, source: c.sourceAddress)
        if fd < 0 { lastError = -fd; counters.inc(.connectFailures); return nil }
        let tls = tlsContext.map { TLSSession(context: $0, sessionCache: sessionCache, expectedPeers: c.expectedPeers,
                                              origination: c.origination?.check) }
        let h = H2UpstreamConnection(pool: self, fd: fd, tls: tls, idleTimeout: c.idleTimeout, maxStreams: c.maxRequestsPerConnection)
        guard h.start() else { lastError = 24; return nil }
        h2conns.append(h)
        opened(h, c)
        return h
    }

    func h2Closed(_ h: H2UpstreamConnection) {
        guard let i = h2conns.firstIndex(where: { $0 === h }) else { return }
        h2conns.remove(at: i)
        open -= 1
        routing.clusterState[cluster].openConnections -= 1
        defer { routing.poolSlotFreed(cluster: cluster); if routing.retired { worker.pruneRetired() } }
        counters.set(.connectionsActive, UInt64(open))
        worker.stats.dec(.upstreamConnectionsActive)
    }

    func closeIdle() {
        let all = idle
        idle.removeAll()
        for u in all { u.closeNow() }
        for h in h2conns where h.load == 0 { h.requestClose() }   // pending frames, then close_notify
    }
}

/// Counters of one endpoint on one worker, summed by `/clusters`.
final class EndpointCounters: @unchecked Sendable {
    enum Name: Int, CaseIterable { case requests, errors, connectFailures, connectionsTotal, connectionsActive, ejections, ejectedUntil }
    /// Relaxed atomic slots (plain moves): the worker writes, the admin thread reads `/clusters`.
    private let v: SharedCounters
    init() { v = .allocate(count: Name.allCases.count) }
    deinit { v.deallocate() }
    @inline(__always) func inc(_ n: Name) { v.add(n.rawValue, 1) }
    @inline(__always) func set(_ n: Name, _ x: UInt64) { v[n.rawValue] = x }
    func get(_ n: Name) -> UInt64 { v[n.rawValue] }
}
