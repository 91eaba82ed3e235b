import MeshConfig
import MeshCore
import MeshIO
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

/// One TCP connection carried as bytes (Envoy's tcp_proxy): the caller's side and a connection
/// to an endpoint of the destination, over mutual TLS for ISTIO_MUTUAL clusters, plain
/// otherwise (DESIGN §10, docs/tcp.md). Bytes move with back-pressure and no intermediate copy:
/// read into one side's `input`, written from there to the other side's socket (or TLS) by
/// `writeThrough`; a full side stops the other from reading. An end of stream (FIN or
/// close_notify) from one side becomes a write shutdown towards the other once its bytes are
/// flushed, and the connection ends when both directions are done; a reset from one side resets
/// the other (SO_LINGER 0). Connect failures try another endpoint, up to the cluster's connect
/// attempts; no byte either way for the idle timeout closes both sides. Inbound, the caller's
/// AuthorizationPolicy verdict is taken once, when its handshake completes. Istio's TCP metrics
/// are recorded as bytes move (sent: towards the caller; received: from it).
final class TCPProxySession {
    unowned(unsafe) let worker: Worker
    /// The config this connection started on, kept (with its pools) while it lives.
    let routing: RoutingState
    let inbound: Bool
    /// An HTTP CONNECT on the outbound listener: `200` once the upstream is connected, `503`
    /// (UF) when no attempt connects.
    let replyToConnect: Bool
    private(set) var down: TCPSide!
    private(set) var up: TCPSide?
    /// Position in the worker's list of sessions.
    var listIndex = -1

    private var target = -1
    /// The workload port authorization judges the connection by (an inbound one): the app port,
    /// or the captured port a pass-through connection goes to.
    private var authzPort = 0
    private var cluster = -1
    private var passthrough: SocketAddress?
    private var pool: EndpointPool?
    private var attempts = 0
    private var maxAttempts = 1
    private var connectTimeout = Bootstrap.Defaults.connectTimeout
    private var idleTimeout = Bootstrap.Defaults.tcpIdleTimeout
    private var metricsRoute = MetricKey.noRoute
    private var peer = 0
    private var key: UInt64 = 0
    private var opened = false
    private var upEstablished = false
    private var downEOF = false
    private var upEOF = false
    private var lastActivity: UInt64 = 0
    private var closeFlag = ResponseFlag.none
    /// Both directions are done (or the connection is being ended): sides close after flushing.
    private var closing = false
    private var finished = false
    /// For the access log (ExchangeLog.recordTCP): when the connection started (loop and wall
    /// clock) and the bytes moved each way.
    private var logStart: UInt64 = 0
    private var logStartWall: UInt64 = 0
    private var bytesFromCaller: UInt64 = 0
    private var bytesToCaller: UInt64 = 0

    init(worker: Worker, inbound: Bool, replyToConnect: Bool) {
        self.worker = worker
        self.routing = worker.routing
        self.inbound = inbound
        self.replyToConnect = replyToConnect
    }

    private var snapshot: ProxySnapshot { routing.snapshot }
    private var loop: EventLoop { worker.loop }

    /// Takes over an accepted socket (`security` for the inbound listener, nil for plain text)
    /// with bytes already read from it, and starts towards `target`. False when the socket could
    /// not even be watched (it is closed then).
    func start(fd: Int32, initial: UnsafeRawPointer?, _ initialCount: Int, security: TransportSecurity?, target t: TCPTarget,
               handshakeTimeout: UInt64) -> Bool {
        let s = snapshot
        authzPort = s.inboundServicePort
        logStart = loop.now
        if let al = worker.accessLog, al.mayLog(s) { logStartWall = Clock.wallNanos() }
        switch t {
        case .route(let r):
            let tr = s.tcpRoutes[r]
            target = tr.pickTarget(&worker.rng)
            cluster = s.targets[target].cluster
            metricsRoute = tr.metricID
        case .target(let tg, let r):
            target = tg
            cluster = s.targets[tg].cluster
            metricsRoute = r >= 0 ? s.tcpRoutes[r].metricID : MetricKey.noRoute
        case .passthrough(let a):
            passthrough = a
            metricsRoute = RouteCatalog.passthroughID
        case .localApp:
            cluster = s.inboundCluster.index
            metricsRoute = MetricKey.inboundRoute
        case .localPort(let p):
            cluster = s.inboundCluster.index
            metricsRoute = MetricKey.inboundRoute
            passthrough = SocketAddress(host: "127.0.0.1", port: p)
            authzPort = p
        }
        if cluster >= 0 {
            let c = s.clusters[cluster]
            connectTimeout = c.connectTimeout
            idleTimeout = c.tcpIdleTimeout
            maxAttempts = max(1, c.tcpConnectAttempts)
        }
        let d = TCPSide(session: self, worker: worker, fd: fd, security: security, downstream: true)
        down = d
        if let p = initial, initialCount > 0 { d.input.append(p, initialCount) }
        worker.stats.inc(.downstreamConnectionsTotal)
        worker.stats.inc(.downstreamConnectionsActive)
        guard d.start() else { worker.stats.dec(.downstreamConnectionsActive); finished = true; return false }
        if !d.isEstablished && !finished { loop.setDeadline(d, loop.now &+ handshakeTimeout) }
        return true
    }

    // MARK: events of the sides

    func sideEstablished(_ side: TCPSide) {
        if finished { return }
        if side.isDownstream {
            if inbound {
                let tls = (side.security as? TLSSession) ?? (side.security as? PermissiveSecurity)?.session
                if let tls {
                    worker.stats.inc(.tlsHandshakesOK)
                    if tls.resumed { worker.stats.inc(.tlsSessionsResumed) }
                    peer = worker.metrics.peers.intern(tls.peerIdentity)
                }
                // AuthorizationPolicy, once per connection: by principal and workload port.
                if let az = snapshot.authz, az.auditsTCP(principal: tls?.peerIdentityBytes ?? [], port: authzPort,
                                                         source: az.needsAddress ? Socket.peerEndpoint(side.fd) : nil) {
                    worker.stats.inc(.authzAudited)
                }
                if let az = snapshot.authz, !az.allowsTCP(principal: tls?.peerIdentityBytes ?? [], port: authzPort,
                                                          source: az.needsAddress ? Socket.peerEndpoint(side.fd) : nil) {
                    worker.stats.inc(.authzDenied)
                    worker.logRejection("inbound", "TCP connection from \(tls?.peerIdentity ?? "a plaintext caller") denied by an AuthorizationPolicy")
                    markOpened(flagged: .authorizationDenied)
                    closeFlag = .authorizationDenied
                    finish()
                    return
                }
            }
            lastActivity = loop.now
            loop.setDeadline(side, loop.now &+ idleTimeout)
            connectUpstream()
            return
        }
        // The upstream is connected (and its TLS established).
        upEstablished = true
        loop.setDeadline(side, 0)
        if let tls = side.security as? TLSSession {
            worker.stats.inc(.tlsHandshakesOK)
            if tls.resumed { worker.stats.inc(.tlsSessionsResumed) }
            if !inbound { peer = worker.metrics.peers.intern(tls.peerIdentity) }
        }
        markOpened(flagged: nil)
        if replyToConnect {
            let ok: StaticString = "HTTP/1.1 200 Connection established\r\n\r\n"
            down.send(ok.utf8Start, ok.utf8CodeUnitCount)
        }
        lastActivity = loop.now
        loop.setDeadline(down, loop.now &+ idleTimeout)
        pump(from: down)
        if !finished, let u = up { pump(from: u) }
    }

    func sideInput(_ side: TCPSide) { pump(from: side) }

    func sideDrained(_ side: TCPSide) {
        if side.isDownstream { if let u = up { pump(from: u) } } else { pump(from: down) }
    }

    func sidePeerClosed(_ side: TCPSide, error: Int32) {
        if finished { return }
        if error == 0 && !side.isClosed {
            if !side.isDownstream && !upEstablished {
                // The upstream ended before its handshake did: a failed attempt, not the end of
                // the stream (the next attempt goes to another endpoint).
                side.closeNow()
                worker.stats.inc(.upstreamConnectFailures)
                pool?.counters.inc(.connectFailures)
                connectUpstream()
                return
            }
            // End of stream (FIN or close_notify): passed on once the bytes before it are.
            if side.isDownstream { downEOF = true } else { upEOF = true }
            pump(from: side)
            return
        }
        if error == -1 {
            worker.stats.inc(.tlsHandshakesFailed)
            if side.isDownstream {
                worker.logRejection("inbound", "TLS handshake refused: \(side.security?.failureReason ?? "unknown")")
            } else {
                Log.warn("tcp", "TLS with \(pool.map { "\($0.address)" } ?? "the upstream") failed: \(side.security?.failureReason ?? "")")
            }
        }
        if !side.isDownstream && !upEstablished {
            // This attempt did not connect: the next one goes to another endpoint.
            worker.stats.inc(.upstreamConnectFailures)
            pool?.counters.inc(.connectFailures)
            connectUpstream()
        }
        // Other failures were handled when the side closed (`sideClosed`).
    }

    func sideClosed(_ side: TCPSide) {
        if !side.isDownstream && side === up && !upEstablished { up = nil; return }   // a failed attempt: `sidePeerClosed` follows
        if finished { return }
        if closing {
            if down.isClosed && (up?.isClosed ?? true) { finish() }
            return
        }
        // Closed under us (a reset, a write error, a TLS failure): reset the other side, so its
        // peer sees a reset too, not a clean end.
        closeFlag = side.isDownstream ? .downstreamConnectionTermination : .upstreamConnectionTermination
        closing = true   // the other side's close (below) is ours, not a second failure
        if side.isDownstream { up?.resetNow() } else { down.resetNow() }
        finish()
    }

    func sideDeadline(_ side: TCPSide, now: UInt64) {
        if finished { return }
        if !side.isDownstream {
            if !upEstablished {
                // Connect (or TLS handshake) timeout: try the next endpoint.
                worker.stats.inc(.upstreamConnectTimeouts)
                worker.stats.inc(.upstreamConnectFailures)
                pool?.counters.inc(.connectFailures)
                side.closeNow()
                connectUpstream()
            } else {
                finish()
            }
            return
        }
        if !side.isEstablished {
            worker.stats.inc(.tlsHandshakesFailed)
            worker.logRejection("inbound", "TLS handshake not completed within the header timeout")
            finish()
            return
        }
        if closing { finish(); return }
        if now &- lastActivity >= idleTimeout {
            // No byte either way for the idle timeout (DestinationRule connectionPool.tcp.idleTimeout).
            finish()
            return
        }
        loop.setDeadline(side, lastActivity &+ idleTimeout)
    }

    // MARK: the relay

    /// Moves what `src` has read to the other side unless that side is full, then passes on an
    /// end of stream once nothing is left before it; ends the connection when both are done.
    private func pump(from src: TCPSide) {
        guard !finished, upEstablished, let u = up, let d = down else { return }
        let dst = src === d ? u : d
        let n = src.input.readableBytes
        if n > 0 && !dst.isCongested && !dst.writeShutdownRequested {
            dst.writeThrough(src.input.readPointer, n)
            if finished || src.isClosed { return }
            src.input.consume(n)
            if src === d {
                worker.metrics.recordTCP(key: key, opened: 0, closed: 0, sent: 0, received: UInt64(n))
                bytesFromCaller &+= UInt64(n)
            } else {
                worker.metrics.recordTCP(key: key, opened: 0, closed: 0, sent: UInt64(n), received: 0)
                bytesToCaller &+= UInt64(n)
            }
            lastActivity = loop.now
            src.resumeReading()
            if finished { return }
        }
        if (src === d ? downEOF : upEOF) && src.input.isEmpty && !dst.writeShutdownRequested {
            dst.shutdownWriteAfterFlush()
        }
        if downEOF && upEOF && d.input.isEmpty && u.input.isEmpty && !closing {
            // Both directions are done: close once the last bytes (and FINs) are out.
            closing = true
            d.closeAfterFlush()
            u.closeAfterFlush()
            // Either side may be left with bytes its peer never reads: both get a deadline.
            if !finished && !d.isClosed { loop.setDeadline(d, loop.now &+ 10_000_000_000) }
            if !finished && !u.isClosed { loop.setDeadline(u, loop.now &+ 10_000_000_000) }
        }
    }

    // MARK: connecting

    /// The next connect attempt (another endpoint when the cluster has several), or the end
    /// with UF (or UH: no healthy endpoint) when the attempts are used up.
    private func connectUpstream() {
        let s = snapshot
        upEOF = false
        while attempts < maxAttempts && !finished {
            attempts += 1
            let addr: SocketAddress
            if let p = passthrough {
                addr = p
            } else {
                let next = target >= 0 ? routing.pickEndpoint(target: target, avoid: pool, hash: TCPProxySession.sourceHash(s, target, down.fd))
                                       : routing.pickEndpoint(cluster: cluster, avoid: pool)
                guard let p = next else { connectFailed(.noHealthyUpstream); return }
                pool = p
                addr = p.address
            }
            let fd = Socket.connect(addr, source: cluster >= 0 ? s.clusters[cluster].sourceAddress : nil)
            if fd < 0 {
                worker.stats.inc(.upstreamConnectFailures)
                pool?.counters.inc(.connectFailures)
                continue
            }
            var sec: TransportSecurity? = nil
            if passthrough == nil && s.clusters[cluster].mutualTLS {
                guard let ctx = s.clientTLS, let p = pool else { Glibc.close(fd); connectFailed(.upstreamConnectFailure); return }
                sec = TLSSession(context: ctx, sessionCache: p.sessionCache, expectedPeers: s.clusters[cluster].expectedPeers)
            }
            let u = TCPSide(session: self, worker: worker, fd: fd, security: sec, downstream: false)
            up = u
            guard u.start() else { up = nil; continue }
            worker.stats.inc(.upstreamConnectionsTotal)
            worker.stats.inc(.upstreamConnectionsActive)
            pool?.counters.inc(.connectionsTotal)
            loop.setDeadline(u, loop.now &+ connectTimeout)
            return
        }
        if !finished { connectFailed(.upstreamConnectFailure) }
    }

    /// No attempt connected: counted, and the caller's connection ends (a CONNECT gets 503).
    private func connectFailed(_ flag: ResponseFlag) {
        Log.warn("tcp", "no connection to \(passthrough.map { "\($0)" } ?? snapshot.clusters[cluster].name) after \(attempts) attempt(s): \(flag.code)")
        markOpened(flagged: flag)
        closeFlag = flag
        if replyToConnect, let d = down, !d.isClosed {
            let out = worker.scratch
            out.clear()
            out.appendLocalReply(status: 503, body: "upstream connect error", close: true, flag: flag)
            d.send(out.readPointer, out.readableBytes)
            closing = true
            d.closeAfterFlush()
            if !d.isClosed { loop.setDeadline(d, loop.now &+ 1_000_000_000) }
            return
        }
        finish()
    }

    // MARK: metrics and the end

    /// Counts the connection as opened (once), under its key; a connection that never reached
    /// an upstream (`flagged`) has its key made now, with the flag.
    private func markOpened(flagged: ResponseFlag?) {
        if opened { return }
        opened = true
        key = MetricKey.make(inbound: inbound, route: metricsRoute, code: 0, flag: .none, peer: peer, tcp: true)
        worker.metrics.recordTCP(key: key, opened: 1, closed: 0, sent: 0, received: 0)
    }

    /// Ends the connection (once): the close is counted with its response flag, open sides are
    /// closed, and the worker forgets the session.
    func finish() {
        if finished { return }
        finished = true
        closing = true
        if opened { worker.metrics.recordTCP(key: MetricKey.with(key, flag: closeFlag), opened: 0, closed: 1, sent: 0, received: 0) }
        if let sink = worker.accessLog {
            ExchangeLog.recordTCP(worker: worker, snapshot: snapshot, sink, inbound: inbound, flag: closeFlag,
                                  micros: (loop.now &- logStart) / 1000, startWall: logStartWall,
                                  received: bytesFromCaller, sent: bytesToCaller,
                                  upstream: upEstablished ? (passthrough ?? pool?.address) : nil, peer: peer)
        }
        down?.sessionDone = true
        up?.sessionDone = true
        if let d = down, !d.isClosed { d.closeNow() }
        if let u = up, !u.isClosed { u.closeNow() }
        worker.tcpSessionEnded(self)
    }

    /// Drain timed out: close now.
    func closeForDrain() { finish() }
}
