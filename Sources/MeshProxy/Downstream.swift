import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// One HTTP/1.1 connection from a client: the app on the outbound listener (plain), or another
/// sidecar on the inbound listener (mTLS). It drives one exchange at a time: parse the request
/// head, route it, take an upstream connection from the pool, send the rewritten head, stream the
/// body both ways with back-pressure, then keep the connection for the next request or close it.
/// Retries on connect failure and the keep-alive race (a pooled connection closed under us before
/// any response byte) are decided here; nothing on this path allocates per request.
final class DownstreamConnection: Connection, UpstreamOwner, H2StreamOwner, PoolWaiter {
    enum State { case idle, connecting, backoff, proxying, tunnel, closing }

    unowned(unsafe) let worker: Worker
    let inbound: Bool
    let settings: ProxySnapshot.ListenerSettings
    var listIndex = -1
    private(set) var state: State = .idle

    private var parser = HTTP1Parser()
    private var head = HTTPHead()
    private var reqBody = BodyFramer()
    /// The snapshot the current request started with, and the worker's routing state for it.
    private var snapshot: ProxySnapshot
    private var routing: RoutingState
    private var cluster = -1
    private var routeTimeout: UInt64 = 0
    private var upstream: UpstreamConnection?
    private var lastPool: EndpointPool?
    /// The rewritten request head plus the body bytes forwarded so far, kept (up to a cap) until
    /// the first response byte so the request can be sent again on another connection.
    private let replay = ByteBuffer(lazyCapacity: 2048)
    private var replayValid = false
    private static let replayCap = 64 * 1024
    // Routing and retries of the current request (DESIGN §3, Envoy's router semantics).
    /// The matched route (-1 inbound) and the index of its match entry that matched.
    private var routeIndex = -1
    private var matchIndex = -1
    /// The route target the request goes to (-1: the whole cluster, inbound).
    private var target = -1
    private var retry = RetryPolicy.default
    /// Retries, budget and circuit-breaker counts of the current request.
    private var attempts = RequestAttempts()
    /// End of the current attempt (per-try timeout), 0 for none.
    private var tryDeadline: UInt64 = 0
    /// Where the request's x-envoy-retriable-header-names value sits in `replay` (length 0: absent,
    /// or the route does not retry on `retriable-headers`).
    private var retriableNamesStart = 0
    private var retriableNamesLength = 0
    /// The HTTP/2 response head being received carries a header named there.
    private var h2ListedHeader = false
    /// Length of the request head at the start of `replay` (the body follows it).
    private var replayHeadLength = 0
    /// The body framer as it was when the request started, to replay the body from the start.
    private var reqBodyStart = BodyFramer()
    /// Waiting in the cluster's queue for a connection slot.
    private var waitingForPool = false
    /// A fault delay is running (state .backoff); the abort status to answer after it, or 0.
    private var faultDelaying = false
    private var faultAbortStatus = 0
    /// The route's mirror decision was made for this request.
    private var mirrorDecided = false
    private var connectAttempts = 0
    private var raceRetryUsed = false
    private var method: HTTPMethod = .other
    private var clientMinor = 1
    private var clientKeepAlive = true
    private var wantsUpgrade = false
    private var closeAfterResponse = false
    private var responseStarted = false
    private var responseStatus = 0
    private var requestDone = false
    /// The client has sent the whole request at least once (unlike `requestDone`, not reset when
    /// a retry puts the body back to be sent again).
    private var requestReceived = false
    private var upstreamEOFSeen = false
    private var dechunk = false
    private var dechunker = ChunkedDecoder()
    private var routeDeadline: UInt64 = 0
    private var headerDeadlineSet = false
    /// When the connection last became idle between requests (0 before its first request ended).
    private var idleSince: UInt64 = 0
    /// How long a connection stays idle before it gives its buffers back (`hibernate()`).
    static let hibernateAfter: UInt64 = 2_000_000_000
    private var flag: ResponseFlag = .none
    /// Why the proxy answered itself (access log), nil for upstream responses.
    private var localReason: StaticString? = nil
    /// Where in `replay` a generated x-request-id starts (-1: the client sent one).
    private var generatedIDOffset = -1
    /// The request's part of the access-log line, captured while the head is in the buffer.
    private var logRequest: ByteBuffer? = nil
    private var logStartWall: UInt64 = 0

    // Accounting of the current exchange, for metrics and the access log.
    private var exchangeActive = false
    private var exchangeStart: UInt64 = 0
    private var requestBytes: UInt64 = 0
    private var responseBytes: UInt64 = 0
    private var metricsRoute = MetricKey.noRoute
    private var upstreamPeer = 0
    /// The endpoint the exchange last went to (for per-endpoint counters).
    private var exchangePool: EndpointPool?
    /// The calling sidecar's identity (inbound), interned once per connection.
    private var downstreamPeer = 0
    /// The caller's identity plus the workload metadata of the current request (inbound).
    private var requestPeer = 0
    private var peerCache = PeerMetadataCache()

    /// The caller as described by its `x-mesh-peer-metadata` (inbound), else its identity alone.
    private func peerFromRequest() -> Int {
        guard let tls = tlsSession else { return downstreamPeer }
        for f in head.fields where f.kind == .meshPeerMetadata {
            return peerCache.index(worker.metrics.peers, principal: tls.peerIdentityBytes,
                                   UnsafePointer(input.base + Int(f.valueStart)), Int(f.valueEnd - f.valueStart), fallback: downstreamPeer)
        }
        return downstreamPeer
    }
    // A tunnel after 101 Switching Protocols: Istio's TCP metrics.
    private var tunnelOpen = false
    private var tunnelUp: UInt64 = 0
    private var tunnelDown: UInt64 = 0
    private var tcpKey: UInt64 {
        MetricKey.make(inbound: inbound, route: metricsRoute, code: 0, flag: .none, peer: inbound ? requestPeer : upstreamPeer)
    }

    // The exchange's HTTP/2 stream when the upstream speaks h2 (sidecar-to-sidecar).
    private var h2up: H2UpstreamConnection?
    private var h2stream: Int32 = 0
    private var h2RequestFinished = false
    private var h2RequestChunked = false
    private var h2RequestDecoder = ChunkedDecoder()
    private var h2RespHead: ByteBuffer?
    private var h2Trailers: ByteBuffer?
    private var h2Status = 0
    private var h2HasLength = false
    private var h2ChunkToClient = false
    private var h2Unconsumed = 0
    private var h2Parser = HTTP1Parser()
    private var h2ReplayHead = HTTPHead(reserve: 0)
    /// Scratch for lowercasing header names (HTTP/2 wants lowercase).
    private var h2Lower: [UInt8] = []

    /// HTTP/2 on this connection (inbound, ALPN h2): the handler owns the streams.
    private var h2: H2ServerHandler?

    /// The caller's TLS session (inbound), nil for a plaintext caller (PeerAuthentication
    /// PERMISSIVE/DISABLE); found once when the connection is established, so the request path
    /// does no dynamic casts.
    private(set) var tlsSession: TLSSession?

    init(worker: Worker, fd: Int32, tls: TransportSecurity?, inbound: Bool, settings: ProxySnapshot.ListenerSettings) {
        self.worker = worker
        self.inbound = inbound
        self.settings = settings
        self.routing = worker.routing
        self.snapshot = worker.routing.snapshot
        super.init(loop: worker.loop, fd: fd, security: tls, connecting: false)
    }

    // MARK: connection events

    override func onEstablished() {
        tlsSession = (security as? TLSSession) ?? (security as? PermissiveSecurity)?.session
        if let tls = tlsSession {
            worker.stats.inc(.tlsHandshakesOK)
            if tls.resumed { worker.stats.inc(.tlsSessionsResumed) }
            downstreamPeer = worker.metrics.peers.intern(tls.peerIdentity)
            if inbound && tls.alpn == "h2" {
                worker.stats.inc(.http2DownstreamConnections)
                h2 = H2ServerHandler(conn: self, worker: worker, peerIndex: downstreamPeer, inbound: true)
                loop.setDeadline(self, loop.now + min(settings.idleTimeout, settings.streamIdleTimeout))
            }
        }
    }

    override func onFlush() {
        if let h = h2 { h.produceFrames() }
        if needsH2Pump { needsH2Pump = false; pumpRequestBodyH2() }
        super.onFlush()
    }

    /// Begins the accounting of an exchange (a request was parsed, or refused while parsing).
    @inline(__always) private func beginExchange(headBytes: Int) {
        exchangeActive = true
        localReason = nil
        if worker.accessLog != nil {
            logStartWall = Clock.wallNanos()
            logRequest?.clear()
        }
        exchangeStart = loop.now
        requestBytes = UInt64(headBytes)
        responseBytes = 0
        metricsRoute = inbound ? MetricKey.inboundRoute : MetricKey.noRoute
        routeIndex = -1
        upstreamPeer = 0
        requestPeer = downstreamPeer
        exchangePool = nil
    }

    /// Ends the accounting of the current exchange: one metrics record (and access-log line).
    private func recordExchange() {
        releaseRequestSlots()
        guard exchangeActive else { return }
        exchangeActive = false
        let peer = inbound ? requestPeer : upstreamPeer
        let key = MetricKey.make(inbound: inbound, route: metricsRoute, code: responseStatus, flag: flag, peer: peer)
        let micros = (loop.now &- exchangeStart) / 1000
        worker.metrics.record(key: key, durationMicros: micros, requestBytes: requestBytes, responseBytes: responseBytes)
        if let sink = worker.accessLog {
            let error = responseStatus >= 400 || responseStatus == 0 || flag != .none
            if error || sink.sampling >= 1 || Double(worker.rng.next() >> 11) / Double(1 << 53) < sink.sampling {
                writeLogLine(sink, micros: micros)
            }
        }
        if let pool = exchangePool {
            pool.counters.inc(.requests)
            if responseStatus >= 500 || responseStatus == 0 { pool.counters.inc(.errors) }
            exchangePool = nil
        }
    }

    override func onInput() {
        if let h = h2 {
            h.lastInput = loop.now   // the deadline (always armed for HTTP/2) reads it
            h.onInput()
            return
        }
        switch state {
        case .idle:
            parseRequest()
        case .connecting, .backoff:
            break   // body bytes wait in `input` until an upstream is ready (back-pressure)
        case .proxying:
            armStreamTimer()
            pumpRequestBody()
        case .tunnel:
            armStreamTimer()
            pumpTunnelUp()
        case .closing:
            input.clear()
        }
    }

    override func onDrained() {
        if let h = h2 { h.onDrained(); return }
        if let h = h2up, h2Unconsumed > 0 {
            h.session.consume(stream: h2stream, h2Unconsumed)
            h2Unconsumed = 0
            h.requestFlush()
        }
        guard let up = upstream else { return }
        if state == .tunnel { pumpTunnelDown(up) } else if state == .proxying { pumpResponseBody(up) }
    }

    override func onPeerClosed(error: Int32) {
        if error == -1 {
            worker.stats.inc(.tlsHandshakesFailed)
            worker.logRejection("inbound", "TLS handshake refused: \(security?.failureReason ?? "unknown")")
            return
        }
        if h2 != nil { closeNow(); return }
        switch state {
        case .idle, .closing:
            closeNow()
        case .tunnel:
            if let up = upstream {
                upstream = nil
                up.owner = nil
                up.closeAfterFlush()
                loop.setDeadline(up, loop.now + 10_000_000_000)   // bounded if it never drains
            }
            closeNow()
        case .connecting, .backoff, .proxying:
            if error == 0 && (requestDone || requestReceived) {
                // The client half-closed after a complete request: answer, then close.
                closeAfterResponse = true
                return
            }
            flag = .downstreamConnectionTermination
            closeNow()
        }
    }

    override func onClosed() {
        if let h = h2 { h.connectionClosed() }
        if tunnelOpen {
            tunnelOpen = false
            worker.metrics.recordTCP(key: tcpKey, opened: 0, closed: 1, sent: tunnelDown, received: tunnelUp)
        }
        if exchangeActive {
            if flag == .none { flag = .downstreamConnectionTermination }
            recordExchange()
        }
        dropH2Stream()
        if let up = upstream {
            upstream = nil
            up.owner = nil
            up.closeNow()
        }
        releaseRequestSlots()
        state = .closing
        worker.downstreamClosed(self)
    }

    override func onDeadline(now: UInt64) {
        if let h = h2 {
            if isClosing { closeNow(); return }   // a goodbye the client never read
            if h.activeStreams == 0 {
                // Idle: give the buffers back after a moment; close once nothing came in for the
                // idle timeout.
                let until = h.lastInput &+ settings.idleTimeout
                if now >= until {
                    // GOAWAY, then close (the next deadline closes it if the flush stalls).
                    h.goAwayAndClose()
                    loop.setDeadline(self, now + 1_000_000_000)
                    return
                }
                let rest = h.lastInput &+ DownstreamConnection.hibernateAfter
                if now >= rest {
                    h.hibernate()
                    hibernate()
                    worker.stats.inc(.connectionsHibernated)
                    worker.trimmer.noteRelease()
                    loop.setDeadline(self, until)
                } else {
                    loop.setDeadline(self, min(until, rest))
                }
                return
            }
            // Streams in flight: end the connection when none of them moved for the stream idle
            // timeout (a zero-window reader, a body that never comes); checked periodically.
            if h.stalled(now: now, timeout: settings.streamIdleTimeout) {
                worker.stats.inc(.streamIdleTimeouts)
                worker.logRejection("http2", "HTTP/2 streams made no progress within the stream idle timeout: closing the connection")
                h.goAwayAndClose()
                loop.setDeadline(self, now + 1_000_000_000)
                return
            }
            loop.setDeadline(self, now + min(settings.idleTimeout, settings.streamIdleTimeout))
            return
        }
        if security != nil && !isEstablished {
            // The TLS handshake did not finish within the header timeout: a failed handshake.
            worker.stats.inc(.tlsHandshakesFailed)
            worker.logRejection("inbound", "TLS handshake not completed within the header timeout")
            closeNow()
            return
        }
        switch state {
        case .idle:
            if input.isEmpty && !headerDeadlineSet {
                // Keep-alive idle: give the buffers back after a moment, close at the idle timeout
                // (a connection that never completed a request closes at its header timeout).
                let until = idleSince &+ settings.idleTimeout
                if idleSince == 0 || now >= until {
                    closeNow()
                } else {
                    replay.releaseStorage()
                    hibernate()
                    worker.stats.inc(.connectionsHibernated)
                    worker.trimmer.noteRelease()
                    loop.setDeadline(self, until)
                }
            } else {
                worker.stats.inc(.headerTimeouts)
                worker.logRejection("proxy", "request head not complete within the header timeout: 408")
                beginExchange(headBytes: input.readableBytes)
                responseStatus = 0
                localReply(408, "request headers not received in time", close: true, flag: .downstreamProtocolError)
            }
        case .backoff:
            if routeDeadline != 0 && now >= routeDeadline {
                worker.stats.inc(.requestTimeouts)
                localReply(504, "upstream request timeout", close: true, flag: .upstreamRequestTimeout)
                return
            }
            state = .connecting
            if faultDelaying {
                faultDelaying = false
                if faultAbortStatus > 0 { faultAbort(); return }
            }
            acquireUpstream(fresh: false)
        case .connecting, .proxying:
            let isRoute = routeDeadline != 0 && now >= routeDeadline
            if !isRoute && !responseStarted && tryDeadline != 0 && now >= tryDeadline {
                // The per-try timeout: give up this attempt, retry if the policy allows.
                if let up = upstream { upstream = nil; up.owner = nil; up.closeNow() }
                dropH2Stream()
                leavePoolQueue()
                attemptFailed(.timeout)
                return
            }
            worker.stats.inc(.requestTimeouts)
            if responseStarted {
                closeNow()
            } else if isRoute {
                localReply(504, "upstream request timeout", close: true, flag: .upstreamRequestTimeout)
            } else {
                worker.stats.inc(.streamIdleTimeouts)
                localReply(504, "stream idle timeout", close: true, flag: .streamIdleTimeout)
            }
        case .tunnel, .closing:
            closeNow()
        }
    }

    /// The last HTTP/2 stream ended: look again soon, to give the buffers back if it stays idle.
    func h2WentIdle() {
        loop.setDeadline(self, loop.now + min(settings.idleTimeout, DownstreamConnection.hibernateAfter))
    }

    /// Drain: close now if no request is in progress; otherwise the response closes the connection.
    func drainIfIdle() {
        if let h = h2 {
            if h.activeStreams == 0 { closeNow() } else { h.drain() }
            return
        }
        if state == .idle && input.isEmpty { closeNow() }
        else if state == .idle { closeAfterResponse = true }
    }

    // MARK: request

    /// Whether this outbound connection may still turn out to be h2c (nothing parsed yet).
    private var mayBeH2C = true
    private static let preface: StaticString = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    /// h2c with prior knowledge on the outbound listener: the connection preface decides.
    private func detectH2C() -> Bool {
        let p = DownstreamConnection.preface
        let n = min(input.readableBytes, p.utf8CodeUnitCount)
        for i in 0..<n where input.readPointer[i] != p.utf8Start[i] { mayBeH2C = false; return false }
        if n < p.utf8CodeUnitCount { return true }   // wait for the rest of the preface
        mayBeH2C = false
        worker.stats.inc(.http2DownstreamConnections)
        h2 = H2ServerHandler(conn: self, worker: worker, peerIndex: 0, inbound: false)
        loop.setDeadline(self, loop.now + min(settings.idleTimeout, settings.streamIdleTimeout))
        h2!.onInput()
        return true
    }

    /// True while `parseRequest` runs: an exchange that ends inside it (a local reply) must not
    /// recurse into it for the next pipelined request; the loop below picks that one up.
    private var parsing = false

    private func parseRequest() {
        if mayBeH2C && !inbound && detectH2C() { return }
        if parsing { return }
        parsing = true
        defer { parsing = false }
        while state == .idle && !input.isEmpty && !isClosed {
            let r = parser.parseRequest(input.base, start: input.readIndex, end: input.writeIndex, into: &head)
            switch r {
            case .incomplete:
                if !headerDeadlineSet {
                    headerDeadlineSet = true
                    loop.setDeadline(self, loop.now + settings.headerTimeout)
                }
                return
            case .error(let e):
                beginExchange(headBytes: input.readableBytes)
                worker.stats.inc(.requestsTotal)
                worker.stats.inc(e.status == 414 ? .uriTooLong : e.status == 431 ? .headersTooLarge : .badRequests)
                worker.logRejection("proxy", "refused request with \(e.status): \(e.reason)")
                clientKeepAlive = false
                localReply(e.status, e.reason, close: true, flag: .downstreamProtocolError)
                return
            case .complete:
                headerDeadlineSet = false
                startRequest()
            }
        }
    }

    private func startRequest() {
        mayBeH2C = false
        let stats = worker.stats
        stats.inc(.requestsTotal)
        beginExchange(headBytes: head.headEnd - head.headStart)
        routing = worker.routing
        snapshot = routing.snapshot
        if inbound { requestPeer = peerFromRequest() }
        method = head.method
        clientMinor = head.minorVersion
        clientKeepAlive = head.keepAlive && !closeAfterResponse
        closeAfterResponse = !clientKeepAlive || worker.draining
        wantsUpgrade = head.connectionUpgrade && head.upgradeIndex >= 0
        if wantsUpgrade {
            // `Upgrade: h2c` is for the hop, not the app (curl --http2 on http:// sends it): the
            // request is served as HTTP/1.1, as Envoy and nginx do; apps reach h2c by prior knowledge.
            let f = head.fields[head.upgradeIndex]
            if ASCII.equalsLower(UnsafePointer(input.base + Int(f.valueStart)), Int(f.valueEnd - f.valueStart), "h2c") {
                wantsUpgrade = false
            }
        }
        responseStarted = false
        responseStatus = 0
        upstreamEOFSeen = false
        raceRetryUsed = false
        connectAttempts = 0
        flag = .none
        dechunk = false
        reqBody.startRequest(head)
        requestDone = reqBody.isDone; requestReceived = requestDone

        if worker.accessLog != nil { captureForLog() }
        if method == .connect {
            consumeHead()
            localReply(501, "CONNECT is not supported by this listener", close: true, flag: .downstreamProtocolError)
            return
        }
        // Route.
        routeIndex = -1
        matchIndex = -1
        target = -1
        retry = .default
        faultDelaying = false
        faultAbortStatus = 0
        mirrorDecided = false
        if inbound {
            cluster = snapshot.inboundCluster
            routeTimeout = 0
            if let az = snapshot.authz {
                // The path component of an absolute-form target, else the whole target.
                let b = input.base
                let ps = head.isAbsoluteForm ? head.pathStart : head.targetStart
                let pe = head.isAbsoluteForm ? head.pathEnd : head.targetEnd
                switch az.check(principal: tlsSession?.peerIdentityBytes ?? [],
                                method: UnsafePointer(b + head.methodStart), head.methodEnd - head.methodStart,
                                rawPath: UnsafePointer(b + ps), pe - ps, scratch: worker.scratch) {
                case .allowed: break
                case let v:
                    stats.inc(v.counter)
                    consumeHead()
                    // A denied request may keep the connection if its body is already read.
                    localReply(v.status, v.reason, close: v == .refused || !reqBody.isDone, flag: v.flag)
                    return
                }
            }
        } else {
            var hp: UnsafePointer<UInt8>
            var hn: Int
            if head.isAbsoluteForm {
                hp = UnsafePointer(input.base + head.authorityStart)
                hn = head.authorityEnd - head.authorityStart
            } else if head.hostIndex >= 0 {
                let f = head.fields[head.hostIndex]
                hp = UnsafePointer(input.base + Int(f.valueStart))
                hn = Int(f.valueEnd - f.valueStart)
            } else {
                hp = UnsafePointer(input.base)
                hn = 0
            }
            hn = HostTable.hostLength(hp, hn)
            let v = snapshot.hosts.lookup(hp, hn)
            if v < 0 {
                stats.inc(.noRoute)
                consumeHead()
                localReply(404, "no route for this host", close: !reqBody.isDone, flag: .noRoute)
                return
            }
            let (r, m) = snapshot.route(vhost: v, H1RequestView(head: head, base: input.base))
            if r < 0 {
                stats.inc(.noRoute)
                consumeHead()
                localReply(404, "no route matched this request", close: !reqBody.isDone, flag: .noRoute)
                return
            }
            let route = snapshot.routes[r]
            metricsRoute = route.metricID
            routeIndex = r
            matchIndex = m
            target = route.pickTarget(&worker.rng)
            cluster = snapshot.targets[target].cluster
            routeTimeout = route.timeout
            retry = route.retry
            if let f = route.fault {
                if ProxySnapshot.Route.draw(f.delayPPM, &worker.rng) { faultDelaying = true }
                if ProxySnapshot.Route.draw(f.abortPPM, &worker.rng) { faultAbortStatus = f.abortStatus }
            }
        }
        if !attempts.admit(routing, cluster: cluster, policy: retry) {
            worker.stats.inc(.upstreamOverflow)
            consumeHead()
            localReply(503, "upstream overflow: too many requests in flight to this cluster (http2MaxRequests)", close: !reqBody.isDone, flag: .upstreamOverflow)
            return
        }
        generatedIDOffset = -1
        buildUpstreamHead()
        replayHeadLength = replay.readableBytes
        if worker.accessLog != nil { captureRequestID() }
        consumeHead()
        reqBodyStart = reqBody
        replayValid = true
        routeDeadline = routeTimeout > 0 ? loop.now + routeTimeout : 0
        if faultDelaying, routeIndex >= 0, let f = snapshot.routes[routeIndex].fault {
            worker.stats.inc(.faultDelays)
            state = .backoff
            loop.setDeadline(self, loop.now + f.delay)
            if faultAbortStatus == 0 { flag = .delayInjected }
            return
        }
        if faultAbortStatus > 0 { faultAbort(); return }
        state = .connecting
        acquireUpstream(fresh: false)
    }

    /// Fault injection's abort: the configured status, flagged FI.
    private func faultAbort() {
        worker.stats.inc(.faultAborts)
        localReply(faultAbortStatus, "fault filter abort", close: !reqBody.isDone, flag: .faultInjected)
    }

    // MARK: per-request cluster state

    private func leavePoolQueue() {
        if waitingForPool {
            waitingForPool = false
            if cluster >= 0 { routing.clusterState[cluster].removeWaiter(self) }
        }
    }

    /// Releases everything the request holds in its cluster's counters (idempotent).
    private func releaseRequestSlots() {
        attempts.release(worker)
        leavePoolQueue()
    }

    /// A connection slot of the cluster is free (this request waits in its queue).
    func poolAvailable(_ freed: EndpointPool?) -> Bool {
        guard waitingForPool, state == .connecting, !isClosed else { return false }
        waitingForPool = false
        acquireUpstream(fresh: false, prefer: freed)
        return true
    }

    /// An attempt failed before any response: retry when the policy, the body and the budget
    /// allow, else answer with the reason.
    private func attemptFailed(_ f: AttemptFailure) {
        guard case .fail(let exhausted) = attempts.failed(f, worker, replayable: replayValid && !responseStarted && !isClosed) else {
            scheduleRetry()
            return
        }
        switch f {
        case .connect:
            localReply(503, "upstream connect error", close: !reqBody.isDone, flag: .upstreamConnectFailure)
        case .reset, .refused:
            worker.stats.inc(.upstreamResetsBeforeResponse)
            localReply(503, "upstream connection closed before response", close: !reqBody.isDone,
                       flag: exhausted ? .retryLimitExceeded : .upstreamConnectionTermination)
        case .timeout:
            worker.stats.inc(.requestTimeouts)
            localReply(504, "upstream per-try timeout", close: true, flag: .upstreamRequestTimeout)
        }
    }

    /// Starts the next attempt after the back-off.
    private func scheduleRetry() {
        let delay = attempts.bookRetry(worker)
        restoreRequestBody()
        state = .backoff
        var d = loop.now + delay
        if routeDeadline != 0 && routeDeadline < d { d = routeDeadline }
        loop.setDeadline(self, d)
    }

    /// Puts the body bytes already forwarded back in front of the unread input, so the next
    /// attempt sends the head from `replay` and the body from the start.
    private func restoreRequestBody() {
        let bodyLength = replay.readableBytes - replayHeadLength
        if bodyLength > 0 {
            input.prepend(replay.base + replay.readIndex + replayHeadLength, bodyLength)
            requestBytes &-= UInt64(bodyLength)
        }
        replay.writeIndex = replay.readIndex + replayHeadLength
        reqBody = reqBodyStart
        requestDone = reqBody.isDone
    }

    private func consumeHead() {
        input.consume(head.headEnd - input.readIndex)
        parser.resetScan()
    }

    /// Writes the request head as it goes upstream into `replay`: origin-form target, hop-by-hop
    /// headers removed, Host from the route's `rewrite.authority` or an absolute-form target (the
    /// HTTP/2 upstream path reads its :authority from here), x-request-id added when absent, and on
    /// the inbound side the caller's x-forwarded-client-cert replaced by our own.
    private func buildUpstreamHead() {
        let b = input.base
        let out = replay
        out.clear()
        out.append(b + head.methodStart, head.methodEnd - head.methodStart)
        out.append(UInt8(ascii: " "))
        let route: ProxySnapshot.Route? = routeIndex >= 0 ? snapshot.routes[routeIndex] : nil
        if let r = route, r.rewriteURI != nil {
            let ps = head.isAbsoluteForm ? head.pathStart : head.targetStart
            let pe = head.isAbsoluteForm ? head.pathEnd : head.targetEnd
            r.appendRewrittenPath(out, matchIndex: matchIndex, UnsafePointer(b + ps), pe - ps)
        } else if head.isAbsoluteForm {
            if head.pathEnd > head.pathStart {
                if b[head.pathStart] == UInt8(ascii: "?") { out.append(UInt8(ascii: "/")) }
                out.append(b + head.pathStart, head.pathEnd - head.pathStart)
            } else {
                out.append(UInt8(ascii: "/"))
            }
        } else {
            out.append(b + head.targetStart, head.targetEnd - head.targetStart)
        }
        out.append(" HTTP/1.1\r\n")
        let listed = !head.connectionListed.isEmpty
        let ops = route.map { !$0.requestOps.isEmpty } ?? false
        let authority = route?.rewriteAuthority
        let byHeaders = retry.on.contains(.retriableHeaders)
        retriableNamesLength = 0
        for f in head.fields {
            if listed && f.kind == .other && head.isConnectionListed(f, in: b) { continue }   // never framing or mesh headers
            if ops && f.kind == .other && route!.requestOps.removes(UnsafePointer(b + Int(f.lineStart)), Int(f.nameEnd - f.lineStart)) { continue }
            switch f.kind {
            case .connection, .keepAlive, .proxyConnection, .xForwardedClientCert, .meshPeerMetadata:
                continue
            case .te:
                continue   // re-added below as "te: trailers" when that is what was asked
            case .upgrade:
                if !wantsUpgrade { continue }
            case .host:
                if head.isAbsoluteForm || authority != nil { continue }
            default:
                break
            }
            if byHeaders && f.nameEnd - f.lineStart == 30
                && ASCII.equalsLower(UnsafePointer(b + Int(f.lineStart)), 30, RetriableHeaderNames.requestHeader) {
                retriableNamesStart = out.writeIndex + Int(f.valueStart - f.lineStart)
                retriableNamesLength = Int(f.valueEnd - f.valueStart)
            }
            out.append(b + Int(f.lineStart), Int(f.lineEnd - f.lineStart))
        }
        if let a = authority {
            out.append("host: ")
            out.append(a)
            out.append("\r\n")
        } else if head.isAbsoluteForm {
            out.append("host: ")
            out.append(b + head.authorityStart, head.authorityEnd - head.authorityStart)
            out.append("\r\n")
        }
        if ops {
            for (n, v) in route!.requestOps.add { out.append(n); out.append(": "); out.append(v); out.append("\r\n") }
        }
        if head.teTrailers { out.append("te: trailers\r\n") }
        if wantsUpgrade { out.append("connection: upgrade\r\n") }
        if head.requestIDIndex < 0 {
            out.append("x-request-id: ")
            generatedIDOffset = out.writeIndex
            worker.appendRequestID(out)
            out.append("\r\n")
        }
        if inbound, let tls = tlsSession {
            out.append("x-forwarded-client-cert: ")
            out.append(snapshot.xfccPrefix)
            out.append(tls.peerCertHash)
            out.append(";URI=")
            out.append(tls.peerIdentityBytes)
            out.append("\r\n")
        }
        if !inbound && cluster >= 0 && snapshot.clusters[cluster].mutualTLS {
            // Who is calling, for the destination sidecar's metrics (Istio's metadata exchange).
            out.append("x-mesh-peer-metadata: ")
            out.append(snapshot.peerMetadata)
            out.append("\r\n")
        }
        if clientMinor == 0 && !clientKeepAlive { out.append("connection: close\r\n") }
        out.append("\r\n")
    }


    // MARK: access log

    /// Copies the request's fields (JSON-escaped) while the head is still in the input buffer.
    private func captureForLog() {
        let l = logRequest ?? ByteBuffer(capacity: 512)
        logRequest = l
        l.clear()
        let b = input.base
        l.append("\"method\":")
        appendJSON(l, b + head.methodStart, head.methodEnd - head.methodStart)
        l.append(",\"authority\":")
        if head.isAbsoluteForm {
            appendJSON(l, b + head.authorityStart, head.authorityEnd - head.authorityStart)
        } else if head.hostIndex >= 0 {
            let f = head.fields[head.hostIndex]
            appendJSON(l, b + Int(f.valueStart), Int(f.valueEnd - f.valueStart))
        } else {
            l.append("\"\"")
        }
        var ps = head.targetStart, pe = head.targetEnd
        if head.isAbsoluteForm { ps = head.pathStart; pe = head.pathEnd }
        if !(worker.accessLog?.includeQuery ?? false) {
            var i = ps
            while i < pe && b[i] != UInt8(ascii: "?") { i += 1 }
            pe = i
        }
        l.append(",\"path\":")
        appendJSON(l, b + ps, pe - ps)
        l.append(",\"protocol\":\"HTTP/1.")
        l.append(UInt8(48 + clientMinor))
        l.append(UInt8(ascii: "\""))
    }

    /// Adds the request id (the client's, or the one generated into `replay`) to the log fields.
    private func captureRequestID() {
        guard let l = logRequest else { return }
        let b = input.base
        l.append(",\"request_id\":")
        if head.requestIDIndex >= 0 {
            let f = head.fields[head.requestIDIndex]
            appendJSON(l, b + Int(f.valueStart), Int(f.valueEnd - f.valueStart))
        } else if generatedIDOffset >= 0 {
            appendJSON(l, replay.base + generatedIDOffset, 36)
        } else {
            l.append("\"\"")
        }
    }

    private func writeLogLine(_ sink: AccessLogSink, micros: UInt64) {
        let o = sink.buffer
        o.append("{\"start_time\":\"")
        o.append(string: X509Info.rfc3339(Int64(logStartWall / 1_000_000_000)))
        o.append("\",\"start_time_ms\":")
        o.appendDecimal(Int(logStartWall / 1_000_000))
        o.append(",\"duration_ms\":")
        o.appendDecimal(Int(micros / 1000))
        o.append(UInt8(ascii: "."))
        let frac = Int(micros % 1000)
        if frac < 100 { o.append(UInt8(ascii: "0")) }
        if frac < 10 { o.append(UInt8(ascii: "0")) }
        o.appendDecimal(frac)
        o.append(",\"direction\":")
        o.append(inbound ? "\"inbound\"" : "\"outbound\"")
        if let l = logRequest, !l.isEmpty {
            o.append(UInt8(ascii: ","))
            o.append(from: l, l.readIndex, l.writeIndex)
        }
        o.append(",\"response_code\":")
        o.appendDecimal(responseStatus)
        o.append(",\"response_flags\":\"")
        o.append(flag.code)
        o.append("\",\"reason\":")
        if let r = localReason { o.append(UInt8(ascii: "\"")); o.append(r); o.append(UInt8(ascii: "\"")) } else { o.append("null") }
        o.append(",\"upstream\":")
        if let p = exchangePool { o.append(UInt8(ascii: "\"")); o.append(string: p.address.text); o.append(UInt8(ascii: "\"")) } else { o.append("null") }
        o.append(",\"route\":\"")
        if metricsRoute == MetricKey.inboundRoute { o.append("inbound") }
        else if routeIndex >= 0 { o.append(string: snapshot.routes[routeIndex].label) }   // validated: [A-Za-z0-9._-]
        else { o.append("-") }
        let own = (snapshot.serverTLS ?? snapshot.clientTLS)?.localIdentity ?? ""
        let peer = worker.metrics.peers.name(inbound ? requestPeer : upstreamPeer)
        o.append("\",\"source_principal\":")
        appendJSONString(o, inbound ? peer : own)
        o.append(",\"destination_principal\":")
        appendJSONString(o, inbound ? own : peer)
        o.append(",\"bytes_received\":")
        o.appendDecimal(Int(requestBytes))
        o.append(",\"bytes_sent\":")
        o.appendDecimal(Int(responseBytes))
        o.append("}\n")
        sink.lineAdded()
    }

    private func appendJSONString(_ o: ByteBuffer, _ s: String) {
        var s = s
        s.withUTF8 { u in appendJSON(o, UnsafeMutablePointer(mutating: u.baseAddress ?? UnsafePointer(bitPattern: 1)!), u.count) }
    }

    /// Appends bytes as a JSON string (quotes, backslashes and control bytes escaped).
    private func appendJSON(_ o: ByteBuffer, _ p: UnsafeMutablePointer<UInt8>, _ n: Int) {
        o.append(UInt8(ascii: "\""))
        let hex: StaticString = "0123456789abcdef"
        for i in 0..<n {
            let c = p[i]
            if c == 34 || c == 92 { o.append(92); o.append(c) }
            else if c < 0x20 || c == 0x7f {
                o.append("\\u00")
                o.append(hex.utf8Start[Int(c >> 4)])
                o.append(hex.utf8Start[Int(c & 15)])
            } else { o.append(c) }
        }
        o.append(UInt8(ascii: "\""))
    }

    // MARK: upstream selection

    /// Takes a connection (or HTTP/2 stream) to an endpoint of the request's target for the next
    /// attempt: `prefer` (a pool whose connection just went idle, for a queued request) when it is
    /// one of the target's healthy endpoints, else the load balancer's pick.
    private func acquireUpstream(fresh: Bool, prefer: EndpointPool? = nil) {
        let c = snapshot.clusters[cluster]
        var picked: EndpointPool?
        if let p = prefer, p.cluster == cluster, p.ejectedUntil <= loop.now,
           target < 0 || snapshot.targets[target].endpoints.contains(where: { routing.pools[cluster][$0] === p }) {
            picked = p
        } else {
            picked = target >= 0 ? routing.pickEndpoint(target: target, avoid: lastPool) : routing.pickEndpoint(cluster: cluster, avoid: lastPool)
        }
        guard let pool = picked else {
            localReply(503, "no healthy upstream", close: !reqBody.isDone, flag: .noHealthyUpstream)
            return
        }
        lastPool = pool
        exchangePool = pool
        connectAttempts += 1
        tryDeadline = retry.perTryTimeout > 0 ? loop.now + retry.perTryTimeout : 0
        armStreamTimer()
        attempts.startAttempt(on: pool)
        let h2ctx: TLSContext? = c.mutualTLS ? snapshot.clientTLSH2 : nil
        if c.http2 && !wantsUpgrade && !pool.h2Refused && (!c.mutualTLS || h2ctx != nil) {
            guard let h = pool.checkoutH2(c, tlsContext: h2ctx) else {
                if pool.lastError == 0 {
                    poolOverflow(c)
                } else {
                    worker.stats.inc(.upstreamConnectFailures)
                    connectFailed()
                }
                return
            }
            h2up = h
            h2stream = 0
            if !h.open(self) {
                h2up = nil
                connectFailed()
            }
            return
        }
        guard let up = pool.checkout(c, tlsContext: snapshot.clientTLS, fresh: fresh) else {
            if pool.lastError == 0 {
                poolOverflow(c)
            } else {
                worker.stats.inc(.upstreamConnectFailures)
                connectFailed()
            }
            return
        }
        up.owner = self
        upstream = up
        upstreamEOFSeen = false
        if up.isEstablished && up.state == .active { upstreamReady(up) }
    }

    /// The upstream connection is ready for this request.
    func upstreamReady(_ up: UpstreamConnection) {
        guard up === upstream, state == .connecting else { return }
        state = .proxying
        upstreamPeer = up.peerIndex
        up.prepareForRequest()
        if up.reused { /* counted at checkout */ }
        up.send(replay.readPointer, replay.readableBytes)
        pumpRequestBody()
    }

    private func connectFailed() { attemptFailed(.connect) }

    /// The cluster's connections are all open and busy: wait in its bounded queue
    /// (`http1MaxPendingRequests`), or answer 503 UO when the queue is full too.
    private func poolOverflow(_ c: ProxySnapshot.Cluster) {
        attempts.endAttempt(worker)
        let rt = routing.clusterState[cluster]
        if rt.pendingCount < c.maxPendingRequests {
            waitingForPool = true
            rt.addWaiter(self)
            return
        }
        localReply(503, "upstream overflow: connection pool full (maxConnections, http1MaxPendingRequests)", close: !reqBody.isDone, flag: .upstreamOverflow)
    }

    // MARK: request body

    private func pumpRequestBody() {
        if h2up != nil { pumpRequestBodyH2(); return }
        guard let up = upstream, state == .proxying else { return }
        while !input.isEmpty && !reqBody.isDone && !up.isCongested {
            let adv = reqBody.advance(UnsafePointer(input.readPointer), input.readableBytes)
            if adv.forward > 0 {
                up.send(input.readPointer, adv.forward)
                requestBytes &+= UInt64(adv.forward)
                if replayValid {
                    if replay.readableBytes + adv.forward <= DownstreamConnection.replayCap {
                        replay.append(input.readPointer, adv.forward)
                    } else {
                        replayValid = false
                    }
                }
                input.consume(adv.forward)
            }
            if adv.error != nil {
                worker.stats.inc(.badRequests)
                abortExchange(status: 400, reason: "malformed request body", flag: .downstreamProtocolError)
                return
            }
            if adv.done { break }
            if adv.forward == 0 { break }
        }
        if reqBody.isDone { requestDone = true; requestReceived = true; maybeMirror() }
        resumeReading()
    }

    /// Istio's mirror: once the whole request is buffered, a copy goes to the mirror target (a
    /// request whose body outgrew the replay buffer is not mirrored, and is counted as skipped).
    private func maybeMirror() {
        guard !mirrorDecided, routeIndex >= 0 else { return }
        mirrorDecided = true
        let r = snapshot.routes[routeIndex]
        guard r.mirrorTarget >= 0, ProxySnapshot.Route.draw(r.mirrorPPM, &worker.rng) else { return }
        if !replayValid { worker.stats.inc(.mirrorSkipped); return }
        worker.mirror(replay, target: r.mirrorTarget, routing: routing)
    }

    func upstreamDrained() {
        if state == .tunnel { pumpTunnelUp() } else { pumpRequestBody() }
    }

    // MARK: HTTP/2 upstream (sidecar to sidecar)

    /// Submits the request on `conn` (called once the connection is established): the head built
    /// for HTTP/1.1 in `replay` is re-read and sent as HTTP/2 header fields.
    func h2Submit(_ conn: H2UpstreamConnection) -> Int32 {
        guard h2up === conn, state == .connecting else { return -1 }
        let b = replay.base
        h2Parser.resetScan()
        guard case .complete = h2Parser.parseRequest(b, start: 0, end: replay.writeIndex, into: &h2ReplayHead) else { return -1 }
        let h = h2ReplayHead
        let ss = conn.session!
        ss.addHeader(":method", b + h.methodStart, h.methodEnd - h.methodStart)
        let scheme: StaticString = "http"
        ss.addHeader(":scheme", scheme.utf8Start, 4)
        if h.hostIndex >= 0 {
            let f = h.fields[h.hostIndex]
            ss.addHeader(":authority", b + Int(f.valueStart), Int(f.valueEnd - f.valueStart))
        }
        ss.addHeader(":path", b + h.targetStart, h.targetEnd - h.targetStart)
        if h2Lower.count < 256 { h2Lower = [UInt8](repeating: 0, count: 256) }
        for f in h.fields {
            switch f.kind {
            case .host, .connection, .keepAlive, .proxyConnection, .transferEncoding, .upgrade: continue
            case .te: if !h.teTrailers { continue }
            default: break
            }
            let nl = Int(f.nameEnd - f.lineStart)
            if nl > h2Lower.count { h2Lower = [UInt8](repeating: 0, count: nl) }
            h2Lower.withUnsafeMutableBufferPointer { lb in
                // Raw pointers: nl <= lb.count was ensured just above, and the name lies in the head.
                let dst = lb.baseAddress!, src = b + Int(f.lineStart)
                for i in 0..<nl { dst[i] = ASCII.lower(src[i]) }
                ss.addHeader(dst, nl, b + Int(f.valueStart), Int(f.valueEnd - f.valueStart))
            }
        }
        let noBody = reqBody.mode == .none
        let id = ss.submitRequest(endStream: noBody)
        if id <= 0 { return id }
        h2stream = id
        h2RequestFinished = noBody
        if noBody { maybeMirror() }
        h2RequestChunked = reqBody.mode == .chunked
        if h2RequestDecoder.trailerSink == nil { h2RequestDecoder.trailerSink = ByteBuffer(capacity: 64) }
        h2RequestDecoder.reset()
        h2Status = 0
        h2ListedHeader = false
        h2HasLength = false
        h2ChunkToClient = false
        h2Unconsumed = 0
        h2RespHead?.clear()
        h2Trailers?.clear()
        state = .proxying
        upstreamPeer = conn.peerIndex
        h2Grpc = -1
        // Send what body is already here once the stream is registered (next loop turn at the latest).
        loop.markDirty(self)
        needsH2Pump = true
        return id
    }

    private var needsH2Pump = false
    /// grpc-status of an HTTP/2 response head (a trailers-only gRPC answer), -1 when absent.
    private var h2Grpc = -1

    /// Keeps body bytes sent on an HTTP/2 attempt for a retry, while they fit the replay cap.
    @inline(__always) private func recordForReplay(_ n: Int) {
        if replayValid {
            if replay.readableBytes + n <= DownstreamConnection.replayCap { replay.append(input.readPointer, n) } else { replayValid = false }
        }
    }

    var h2StreamID: Int32 { h2stream }

    private func pumpRequestBodyH2() {
        guard let h = h2up, h2stream > 0, state == .proxying else { return }
        let ss = h.session!
        var queued = false
        while !input.isEmpty && !requestDone && ss.pendingData(stream: h2stream) < 256 * 1024 && !h.isCongested {
            if h2RequestChunked {
                switch h2RequestDecoder.next(UnsafePointer(input.readPointer), input.readableBytes) {
                case .data(let n):
                    ss.sendData(stream: h2stream, input.readPointer, n)
                    requestBytes &+= UInt64(n)
                    recordForReplay(n)
                    input.consume(n)
                    queued = true
                case .framing(let n), .needMore(let n):
                    recordForReplay(n)
                    input.consume(n)
                    if n == 0 { break }
                case .end(let n):
                    recordForReplay(n)
                    input.consume(n)
                    requestDone = true; requestReceived = true
                case .error:
                    worker.stats.inc(.badRequests)
                    abortExchange(status: 400, reason: "malformed request body", flag: .downstreamProtocolError)
                    return
                }
                continue
            }
            let adv = reqBody.advance(UnsafePointer(input.readPointer), input.readableBytes)
            if adv.forward > 0 {
                ss.sendData(stream: h2stream, input.readPointer, adv.forward)
                requestBytes &+= UInt64(adv.forward)
                recordForReplay(adv.forward)
                input.consume(adv.forward)
                queued = true
            }
            if adv.done { requestDone = true; requestReceived = true }
            if adv.forward == 0 { break }
        }
        if requestDone && !h2RequestFinished {
            maybeMirror()
            h2RequestFinished = true
            var any = false
            if let t = h2RequestDecoder.trailerSink, !t.isEmpty {
                TrailerLines.forEach(t) { n, nl, v, vl in
                    if ASCII.equalsLower(n, nl, "content-length") || ASCII.equalsLower(n, nl, "transfer-encoding")
                        || ASCII.equalsLower(n, nl, "connection") || ASCII.equalsLower(n, nl, "host") { return }
                    if nl > h2Lower.count { return }
                    h2Lower.withUnsafeMutableBufferPointer { lb in
                        for i in 0..<nl { lb[i] = ASCII.lower(n[i]) }
                        ss.addHeader(lb.baseAddress!, nl, v, vl)
                    }
                    any = true
                }
            }
            ss.finishData(stream: h2stream, withTrailers: any)
            queued = true
        }
        // Wait for room only when stopped by the stream's queue or the socket (woken by the
        // connection once frames left), never by re-arming a flush that makes none.
        if !requestDone && !input.isEmpty { h.waitForWritable(self) }
        if queued { h.requestFlush() }
        resumeReading()
    }

    func h2StreamWritable() { pumpRequestBodyH2() }

    func h2ResponseHeader(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int) {
        if responseStarted {
            // Trailers: kept for the chunked HTTP/1.1 response.
            let t = h2Trailers ?? ByteBuffer(capacity: 256)
            h2Trailers = t
            t.append(n, nl); t.append(": "); t.append(v, vl); t.append("\r\n")
            return
        }
        if nl == 7 && ASCII.equalsLower(n, nl, ":status") {
            var st = 0
            for i in 0..<vl where v[i] >= 48 && v[i] <= 57 { st = st * 10 + Int(v[i] - 48) }
            h2Status = st
            return
        }
        if nl > 0 && n[0] == UInt8(ascii: ":") { return }
        if retriableNamesLength > 0 && !h2ListedHeader && listedRetriable(n, nl) { h2ListedHeader = true }
        if nl == 11 && ASCII.equalsLower(n, nl, "grpc-status") { h2Grpc = MetricKey.grpcStatus(v, vl) }
        if routeIndex >= 0, !snapshot.routes[routeIndex].responseOps.isEmpty, !ASCII.equalsLower(n, nl, "content-length"),
           snapshot.routes[routeIndex].responseOps.removes(n, nl) { return }
        if nl == 20 && ASCII.equalsLower(n, nl, "x-mesh-peer-metadata") {
            if let h = h2up, let tls = h.security as? TLSSession {
                upstreamPeer = peerCache.index(worker.metrics.peers, principal: tls.peerIdentityBytes, v, vl, fallback: h.peerIndex)
            }
            return
        }
        if ASCII.equalsLower(n, nl, "content-length") { h2HasLength = true }
        if ASCII.equalsLower(n, nl, "connection") || ASCII.equalsLower(n, nl, "transfer-encoding") || ASCII.equalsLower(n, nl, "keep-alive") { return }
        let hb = h2RespHead ?? ByteBuffer(capacity: 1024)
        h2RespHead = hb
        hb.append(n, nl); hb.append(": "); hb.append(v, vl); hb.append("\r\n")
    }

    func h2ResponseHeadersComplete(trailers: Bool, endStream: Bool) {
        armStreamTimer()
        if responseStarted {
            if endStream { h2ResponseEnd() }
            return
        }
        if h2Status < 200 {
            if h2Status == 100 && clientMinor == 1 {
                let cont: StaticString = "HTTP/1.1 100 Continue\r\n\r\n"
                send(cont.utf8Start, cont.utf8CodeUnitCount)
            }
            h2RespHead?.clear()
            h2ListedHeader = false
            return
        }
        switch attempts.responded(status: h2Status, grpc: h2Grpc, listedHeader: h2ListedHeader, worker, replayable: replayValid && !isClosed) {
        case .retry:
            dropH2Stream()
            scheduleRetry()
            return
        case .fail(let exhausted):
            if exhausted { flag = .retryLimitExceeded }
        }
        responseStatus = h2Status
        let bodyExpected = !endStream && method != .head && h2Status != 204 && h2Status != 304
        if bodyExpected && !h2HasLength {
            if clientMinor == 1 { h2ChunkToClient = true } else { closeAfterResponse = true }
        }
        if !requestDone || worker.draining { closeAfterResponse = true }
        let out = worker.scratch
        out.clear()
        out.append("HTTP/1.1 ")
        out.appendDecimal(h2Status)
        out.append(" ")
        out.append(StatusText.reason(h2Status))
        out.append("\r\n")
        if let hb = h2RespHead { out.append(from: hb, hb.readIndex, hb.writeIndex) }
        appendResponseAdditions(out)
        if h2ChunkToClient { out.append("transfer-encoding: chunked\r\n") }
        if closeAfterResponse { out.append("connection: close\r\n") }
        else if clientMinor == 0 { out.append("connection: keep-alive\r\n") }
        out.append("\r\n")
        responseBytes &+= UInt64(out.readableBytes)
        send(out.readPointer, out.readableBytes)
        responseStarted = true
        if endStream { h2ResponseEnd() }
    }

    func h2ResponseData(_ p: UnsafePointer<UInt8>, _ n: Int) {
        guard let h = h2up else { return }
        armStreamTimer()
        if h2ChunkToClient {
            let out = worker.scratch
            out.clear()
            out.appendHex(n)
            out.append("\r\n")
            send(out.readPointer, out.readableBytes)
            send(p, n)
            let crlf: StaticString = "\r\n"
            send(crlf.utf8Start, 2)
        } else {
            send(p, n)
        }
        responseBytes &+= UInt64(n)
        if isCongested { h2Unconsumed += n } else { h.session.consume(stream: h2stream, n); h.requestFlush() }
    }

    func h2ResponseEnd() {
        guard let h = h2up else { return }
        if h2ChunkToClient {
            let out = worker.scratch
            out.clear()
            out.append("0\r\n")
            if let t = h2Trailers { out.append(from: t, t.readIndex, t.writeIndex) }
            out.append("\r\n")
            send(out.readPointer, out.readableBytes)
        }
        if h2Unconsumed > 0 { h.session.consume(stream: h2stream, h2Unconsumed); h2Unconsumed = 0 }
        if !h2RequestFinished {
            // The response ended before the request body: stop sending it, close after the response.
            h.forget(stream: h2stream)
            closeAfterResponse = true
        }
        h2up = nil
        h2stream = 0
        worker.stats.countResponse(responseStatus)
        endExchange()
    }

    func h2StreamFailed(error: UInt32, refused: Bool) {
        guard let h = h2up else { return }
        if h2Unconsumed > 0 { h.session.consume(stream: h2stream, h2Unconsumed); h2Unconsumed = 0 }
        h2up = nil
        h2stream = 0
        if responseStarted {
            flag = .upstreamConnectionTermination
            closeNow()
            return
        }
        if state == .connecting {
            worker.stats.inc(.upstreamConnectFailures)
            connectFailed()
            return
        }
        state = .connecting
        attemptFailed(refused ? .refused : .reset)
    }

    /// Ends the exchange's HTTP/2 stream, if any (the connection stays for other streams).
    private func dropH2Stream() {
        if let h = h2up {
            if h2Unconsumed > 0 && h2stream > 0 { h.session.consume(stream: h2stream, h2Unconsumed); h2Unconsumed = 0 }
            h.cancel(self, stream: h2stream)
            h2up = nil
            h2stream = 0
        }
    }

    // MARK: response

    func upstreamInput(_ up: UpstreamConnection) {
        guard up === upstream else { return }
        armStreamTimer()
        if state == .tunnel { pumpTunnelDown(up); return }
        guard state == .proxying else { return }
        if !up.headParsed {
            if !parseResponseHead(up) { return }
        }
        pumpResponseBody(up)
    }

    /// Parses response heads (forwarding 1xx); returns true once a final head was sent downstream.
    private func parseResponseHead(_ up: UpstreamConnection) -> Bool {
        while !up.input.isEmpty {
            up.gotResponseBytes = true
            let r = up.parser.parseResponse(up.input.base, start: up.input.readIndex, end: up.input.writeIndex, into: &up.head)
            switch r {
            case .incomplete:
                return false
            case .error(let e):
                abortExchange(status: 502, reason: e.reason, flag: .upstreamProtocolError)
                return false
            case .complete:
                let status = up.head.status
                if status == 101 {
                    guard wantsUpgrade else {
                        abortExchange(status: 502, reason: "upstream switched protocols without an upgrade request", flag: .upstreamProtocolError)
                        return false
                    }
                    writeResponseHead(up, informational: false, upgrade: true)
                    up.input.consume(up.head.headEnd - up.input.readIndex)
                    up.parser.resetScan()
                    worker.stats.inc(.upgrades)
                    worker.stats.countResponse(101)
                    responseStatus = 101
                    recordExchange()
                    tunnelOpen = true
                    tunnelUp = 0
                    tunnelDown = 0
                    worker.metrics.recordTCP(key: tcpKey, opened: 1, closed: 0, sent: 0, received: 0)
                    routeDeadline = 0     // a tunnel lives as long as it carries traffic
                    state = .tunnel
                    reqBody.startTunnel()
                    pumpTunnelUp()
                    if let u = upstream { pumpTunnelDown(u) }
                    return false
                }
                if status < 200 {
                    if clientMinor == 1 { writeResponseHead(up, informational: true, upgrade: false) }
                    up.input.consume(up.head.headEnd - up.input.readIndex)
                    up.parser.resetScan()
                    continue
                }
                let grpc = retry.on.rawValue >= RetryPolicy.On.grpcCancelled.rawValue ? grpcStatus(up) : -1
                var listed = false
                if retriableNamesLength > 0 {
                    let b = up.input.base
                    for f in up.head.fields where listedRetriable(UnsafePointer(b + Int(f.lineStart)), Int(f.nameEnd - f.lineStart)) {
                        listed = true
                        break
                    }
                }
                switch attempts.responded(status: status, grpc: grpc, listedHeader: listed, worker, replayable: replayValid && !isClosed) {
                case .retry:
                    upstream = nil
                    up.owner = nil
                    up.closeNow()
                    scheduleRetry()
                    return false
                case .fail(let exhausted):
                    if exhausted { flag = .retryLimitExceeded }
                }
                responseStatus = status
                up.body.startResponse(up.head, requestMethod: method)
                dechunk = clientMinor == 0 && up.body.mode == .chunked
                if dechunk { dechunker.reset() }
                if up.body.mode == .untilClose || dechunk || !requestDone || worker.draining { closeAfterResponse = true }
                writeResponseHead(up, informational: false, upgrade: false)
                up.input.consume(up.head.headEnd - up.input.readIndex)
                up.parser.resetScan()
                up.headParsed = true
                responseStarted = true
                return true
            }
        }
        return false
    }

    /// Whether the response header named `n[0..<nl]` is one the request listed in
    /// x-envoy-retriable-header-names (route with `retryOn: retriable-headers`).
    @inline(__always) private func listedRetriable(_ n: UnsafePointer<UInt8>, _ nl: Int) -> Bool {
        retriableNamesLength > 0
            && RetriableHeaderNames.lists(UnsafePointer(replay.base + retriableNamesStart), retriableNamesLength, n, nl)
    }

    /// The grpc-status of an HTTP/1.1 response head, -1 when absent.
    private func grpcStatus(_ up: UpstreamConnection) -> Int {
        let b = up.input.base
        for f in up.head.fields where ASCII.equalsLower(UnsafePointer(b + Int(f.lineStart)), Int(f.nameEnd - f.lineStart), "grpc-status") {
            return MetricKey.grpcStatus(UnsafePointer(b + Int(f.valueStart)), Int(f.valueEnd - f.valueStart))
        }
        return -1
    }

    /// The route's response headers to add, and the response flag when the proxy set one.
    private func appendResponseAdditions(_ out: ByteBuffer) {
        if routeIndex >= 0 {
            for (n, v) in snapshot.routes[routeIndex].responseOps.add {
                out.append(n); out.append(": "); out.append(v); out.append("\r\n")
            }
        }
        if flag != .none {
            out.append("x-mesh-response-flags: ")
            out.append(flag.code)
            out.append("\r\n")
        }
    }

    private func writeResponseHead(_ up: UpstreamConnection, informational: Bool, upgrade: Bool) {
        let h = up.head
        let b = up.input.base
        let out = worker.scratch
        out.clear()
        out.append("HTTP/1.1 ")
        let lineEnd = h.fields.first.map { Int($0.lineStart) - 2 } ?? (h.headEnd - 4)
        out.append(b + h.headStart + 9, lineEnd - (h.headStart + 9))
        out.append("\r\n")
        let listed = !h.connectionListed.isEmpty
        let ops = !informational && routeIndex >= 0 && !snapshot.routes[routeIndex].responseOps.isEmpty
        for f in h.fields {
            if listed && f.kind == .other && h.isConnectionListed(f, in: b) { continue }
            if ops && f.kind == .other && snapshot.routes[routeIndex].responseOps.removes(UnsafePointer(b + Int(f.lineStart)), Int(f.nameEnd - f.lineStart)) { continue }
            switch f.kind {
            case .connection, .keepAlive, .proxyConnection, .te:
                continue
            case .meshPeerMetadata:
                if !inbound && !informational, let tls = up.security as? TLSSession {
                    upstreamPeer = peerCache.index(worker.metrics.peers, principal: tls.peerIdentityBytes,
                                                   UnsafePointer(b + Int(f.valueStart)), Int(f.valueEnd - f.valueStart), fallback: up.peerIndex)
                }
                continue
            case .upgrade:
                if !upgrade { continue }
            case .transferEncoding:
                if dechunk { continue }
            default:
                break
            }
            out.append(b + Int(f.lineStart), Int(f.lineEnd - f.lineStart))
        }
        if inbound && !informational {
            out.append("x-mesh-peer-metadata: ")
            out.append(snapshot.peerMetadata)
            out.append("\r\n")
        }
        if !informational { appendResponseAdditions(out) }
        if upgrade {
            out.append("connection: upgrade\r\n")
        } else if !informational {
            if closeAfterResponse { out.append("connection: close\r\n") }
            else if clientMinor == 0 { out.append("connection: keep-alive\r\n") }
        }
        out.append("\r\n")
        responseBytes &+= UInt64(out.readableBytes)
        send(out.readPointer, out.readableBytes)
    }

    private func pumpResponseBody(_ up: UpstreamConnection) {
        guard up === upstream, up.headParsed else { return }
        while !up.input.isEmpty && !isCongested && !up.body.isDone {
            if dechunk {
                let step = dechunker.next(UnsafePointer(up.input.readPointer), up.input.readableBytes)
                switch step {
                case .data(let n):
                    send(up.input.readPointer, n)
                    responseBytes &+= UInt64(n)
                    up.input.consume(n)
                case .framing(let n), .needMore(let n):
                    up.input.consume(n)
                    if n == 0 { break }
                case .end(let n):
                    up.input.consume(n)
                    _ = up.body.advance(UnsafePointer(up.input.readPointer), 0)
                    finishExchange(up, bodyComplete: true)
                    return
                case .error:
                    abortExchange(status: 502, reason: "malformed response body", flag: .upstreamProtocolError)
                    return
                }
                continue
            }
            let adv = up.body.advance(UnsafePointer(up.input.readPointer), up.input.readableBytes)
            if adv.forward > 0 {
                send(up.input.readPointer, adv.forward)
                responseBytes &+= UInt64(adv.forward)
                up.input.consume(adv.forward)
            }
            if adv.error != nil {
                abortExchange(status: 502, reason: "malformed response body", flag: .upstreamProtocolError)
                return
            }
            if adv.done || adv.forward == 0 { break }
        }
        if up.body.isDone {
            finishExchange(up, bodyComplete: true)
            return
        }
        if upstreamEOFSeen && up.input.isEmpty {
            if up.body.finishAtClose() {
                finishExchange(up, bodyComplete: false)
            } else {
                worker.stats.inc(.upstreamResetsBeforeResponse)
                abortExchange(status: 502, reason: "upstream closed mid-response", flag: .upstreamConnectionTermination)
            }
            return
        }
        up.resumeReading()
    }

    /// The response is complete: pool or close the upstream, then get ready for the next request.
    private func finishExchange(_ up: UpstreamConnection, bodyComplete: Bool) {
        upstream = nil
        worker.stats.countResponse(responseStatus)
        let reusable = bodyComplete && requestDone && up.head.keepAlive && !upstreamEOFSeen && up.input.isEmpty && !up.peerClosed && !up.isClosed
        if reusable {
            up.pool.release(up, idleTimeout: snapshot.clusters[up.pool.cluster].idleTimeout,
                            maxRequests: snapshot.clusters[up.pool.cluster].maxRequestsPerConnection)
        } else {
            up.owner = nil
            up.closeNow()
        }
        endExchange()
    }

    private func endExchange() {
        recordExchange()
        if closeAfterResponse || !requestDone || worker.draining || peerClosed {
            state = .closing
            loop.setDeadline(self, loop.now + settings.idleTimeout)
            closeAfterFlush()
            return
        }
        state = .idle
        idleSince = loop.now
        loop.setDeadline(self, loop.now + min(settings.idleTimeout, DownstreamConnection.hibernateAfter))
        if !input.isEmpty { parseRequest() } else { resumeReading() }
    }

    // MARK: upstream failures

    /// The upstream closed cleanly (EOF or close_notify).
    func upstreamEOF(_ up: UpstreamConnection) {
        guard up === upstream else { up.closeNow(); return }
        upstreamEOFSeen = true
        if state == .tunnel {
            pumpTunnelDown(up)
            return
        }
        if up.headParsed {
            pumpResponseBody(up)
            return
        }
        // No complete response head: treat like a reset.
        upstream = nil
        up.owner = nil
        let partial = up.gotResponseBytes
        let reused = up.reused
        up.closeNow()
        upstreamFailedBeforeResponse(reused: reused, partial: partial)
    }

    /// The upstream connection failed (connect error, TLS failure, reset, timeout).
    func upstreamClosed(_ up: UpstreamConnection, error: Int32, wasConnecting: Bool) {
        guard up === upstream else { return }
        upstream = nil
        switch state {
        case .tunnel:
            closeAfterFlush()
            state = .closing
        case .connecting, .proxying:
            if wasConnecting {
                worker.stats.inc(.upstreamConnectFailures)
                up.pool.counters.inc(.connectFailures)
                connectFailed()
            } else if !responseStarted {
                upstreamFailedBeforeResponse(reused: up.reused, partial: up.gotResponseBytes)
            } else {
                flag = .upstreamConnectionTermination
                closeNow()
            }
        default:
            break
        }
    }

    private func upstreamFailedBeforeResponse(reused: Bool, partial: Bool) {
        if reused && !partial && replayValid && !raceRetryUsed {
            // The keep-alive race: the pooled connection was closed by the server as we sent.
            // Not a failure of the endpoint, and not one of the route's retries.
            raceRetryUsed = true
            worker.stats.inc(.upstreamKeepAliveRaceRetries)
            attempts.leaveEndpoint()
            restoreRequestBody()
            state = .connecting
            acquireUpstream(fresh: true)
            return
        }
        state = .connecting
        attemptFailed(.reset)
    }

    /// Ends the exchange with an error: a local reply if nothing was sent yet, else a reset.
    private func abortExchange(status: Int, reason: StaticString, flag f: ResponseFlag) {
        if let up = upstream { upstream = nil; up.owner = nil; up.closeNow() }
        dropH2Stream()
        if responseStarted {
            flag = f
            closeNow()
        } else {
            localReply(status, reason, close: true, flag: f)
        }
    }

    // MARK: local replies

    private func localReply(_ status: Int, _ body: StaticString, close: Bool, flag f: ResponseFlag) {
        flag = f
        dropH2Stream()
        if let up = upstream { upstream = nil; up.owner = nil; up.closeNow() }
        worker.stats.inc(.localReplies)
        worker.stats.countResponse(status)
        localReason = body
        let mustClose = close || !clientKeepAlive || worker.draining
        closeAfterResponse = mustClose
        requestDone = !mustClose
        let out = worker.scratch
        out.clear()
        out.appendLocalReply(status: status, body: body, close: mustClose, flag: f)
        responseStatus = status
        responseBytes &+= UInt64(out.readableBytes)
        send(out.readPointer, out.readableBytes)
        Log.debug("proxy", "local reply \(status) \(f.code): \(body)")
        endExchange()
    }

    // MARK: tunnel (after 101 Switching Protocols)

    private func pumpTunnelUp() {
        guard let up = upstream else { return }
        if !input.isEmpty && !up.isCongested {
            up.send(input.readPointer, input.readableBytes)
            tunnelUp &+= UInt64(input.readableBytes)
            input.consume(input.readableBytes)
        }
        resumeReading()
    }

    private func pumpTunnelDown(_ up: UpstreamConnection) {
        if !up.input.isEmpty && !isCongested {
            send(up.input.readPointer, up.input.readableBytes)
            tunnelDown &+= UInt64(up.input.readableBytes)
            up.input.consume(up.input.readableBytes)
        }
        if upstreamEOFSeen && up.input.isEmpty {
            upstream = nil
            up.owner = nil
            up.closeNow()
            state = .closing
            closeAfterFlush()
            return
        }
        up.resumeReading()
    }

    // MARK: timers

    @inline(__always) private func armStreamTimer() {
        var d = loop.now + settings.streamIdleTimeout
        if routeDeadline != 0 && routeDeadline < d { d = routeDeadline }
        if tryDeadline != 0 && !responseStarted && tryDeadline < d { d = tryDeadline }
        loop.setDeadline(self, d)
    }
}
