import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// One request and its response, whatever protocol either side speaks: HTTP/1.1 or HTTP/2 from
/// the client (a `DownstreamStream`), HTTP/1.1 or HTTP/2 to the upstream (an `UpstreamStream`),
/// inbound or outbound. It owns the life of a request: route (outbound, `OutboundPipeline.swift`)
/// or authorise (inbound, `InboundPipeline.swift`) -> fault -> admit -> attempts with retries and
/// timeouts -> response -> local reply -> record and log. Every per-request feature lives here
/// once. Owned by its downstream (one per HTTP/1.1 connection, one per pooled HTTP/2 stream
/// object) and reused, so a request allocates nothing once warm.
final class Exchange: PoolWaiter {
    enum Phase { case idle, routing, waiting, connecting, proxying, done }

    unowned(unsafe) let worker: Worker
    var loop: EventLoop { worker.loop }
    private(set) var phase: Phase = .idle
    /// The client side; nil between exchanges.
    private(set) var down: DownstreamStream?
    private(set) var inbound = false

    /// The request as received (policy applied), then as it goes upstream (mesh headers added).
    let request = MessageHead()
    let requestTrailers = MessageHead(capacity: 64)
    /// The response head being received or sent, and its trailers.
    let response = MessageHead()
    let responseTrailers = MessageHead(capacity: 64)

    /// The config the request started with, and the worker's pools for it.
    private(set) var routing: RoutingState!
    private(set) var snapshot: ProxySnapshot!
    var routeID = RouteID.none
    var matchIndex = -1
    var target = TargetID.none
    var cluster = ClusterID.none
    var retry = RetryPolicy.default
    var attempts = RequestAttempts()
    var deadlines = ExchangeDeadlines()
    private var timer: ExchangeTimer?
    /// A fault delay is running; the abort status to answer after it (0: none).
    var faultDelaying = false
    var faultAbortStatus = 0
    /// The client asked to switch protocols (HTTP/1.1 Upgrade, tunnelled after 101).
    private(set) var wantsUpgrade = false

    // Upstream attempts.
    private(set) var upstream: UpstreamStream?
    private lazy var h1Upstream = H1UpstreamStream(exchange: self)
    private lazy var h2Upstream = H2UpstreamStream(exchange: self)
    private var lastPool: EndpointPool?
    private var waitingForPool = false
    private var raceRetryUsed = false

    // Request body: bytes received but not yet sent on this attempt, and bytes sent on it (kept
    // up to a cap, to send again on a retry or to mirror).
    private(set) var requestHasBody = false
    private(set) var requestEnded = false
    private(set) var upstreamRequestEnded = false
    private let pending = ByteBuffer(lazyCapacity: 1024)
    private let replay = ByteBuffer(lazyCapacity: 1024)
    private var replayable = true
    /// The request's method may be sent twice (RFC 9110 §9.2.2).
    var idempotent: Bool { request.methodKind.isIdempotent }
    private var mirrorDecided = false
    static let replayCap = 64 * 1024

    // Response.
    var responseStarted = false
    private(set) var finished = false
    /// grpc-status for metrics and retries: -1 not gRPC, 17 not seen yet.
    private(set) var grpc = -1

    // Accounting, for metrics and the access log.
    private(set) var startTime: UInt64 = 0
    private var startWall: UInt64 = 0
    var requestBytes: UInt64 = 0
    var responseBytes: UInt64 = 0
    var status = 0
    var flag: ResponseFlag = .none
    /// Why the proxy answered itself (access log), nil for upstream responses.
    var localReason: StaticString? = nil
    /// An AUDIT AuthorizationPolicy matched (inbound): always written to the access log, `"audit":true`.
    var audited = false
    var metricsRoute = MetricKey.noRoute
    /// The answering sidecar (outbound) and the caller (inbound), as peer indices.
    var upstreamPeer = 0
    var requestPeer = 0
    var peerCache = PeerMetadataCache()
    private var exchangePool: EndpointPool?
    /// The consistent-hash key's hash (nil: none) and a generated affinity cookie to set on the
    /// response (0: none); Balancing/Exchange+HashKey.swift.
    var lbHash: UInt64?
    var lbCookie: UInt64 = 0
    /// The authority as the client sent it (the log shows it, not a route's rewrite).
    private(set) var clientAuthority = ByteRange()
    /// The trace this request belongs to and its span (Tracing/Exchange+Tracing.swift).
    var trace = ExchangeTrace()

    init(worker: Worker) { self.worker = worker }

    // MARK: begin

    /// A request head is complete in `request`: run the exchange. `requestHasBody`: body bytes
    /// (or their end) will follow through `requestBody`/`requestEnd`.
    func begin(_ d: DownstreamStream, inbound: Bool, requestHasBody: Bool, headBytes: Int, wantsUpgrade: Bool) {
        down = d
        self.inbound = inbound
        self.wantsUpgrade = wantsUpgrade
        routing = worker.routing
        snapshot = routing.snapshot
        phase = .routing
        startTime = loop.now
        if let al = worker.accessLog, al.mayLog(snapshot) { startWall = Clock.wallNanos() }
        requestBytes = UInt64(headBytes)
        responseBytes = 0
        status = 0
        flag = .none
        localReason = nil
        audited = false
        self.requestHasBody = requestHasBody
        requestEnded = !requestHasBody
        upstreamRequestEnded = false
        pending.clear()
        replay.clear()
        replayable = true
        mirrorDecided = false
        responseStarted = false
        finished = false
        grpc = request.isGRPC ? 17 : -1
        response.reset()
        responseTrailers.reset()
        routeID = .none; matchIndex = -1; target = .none; cluster = .none
        lbHash = nil; lbCookie = 0
        retry = .default
        deadlines = ExchangeDeadlines()
        faultDelaying = false; faultAbortStatus = 0
        metricsRoute = inbound ? MetricKey.inboundRoute : MetricKey.noRoute
        upstreamPeer = 0
        requestPeer = d.callerPeer
        exchangePool = nil
        lastPool = nil
        raceRetryUsed = false
        clientAuthority = request.authority
        trace.recording = false

        if let why = request.malformed ?? (request.method.isEmpty ? "missing method" : nil) {
            worker.stats.inc(.badRequests)
            worker.logRejection("proxy", "refused request with 400: \(why)")
            localReply(400, "malformed request", flag: .downstreamProtocolError, close: true)
            return
        }
        if request.methodKind == .connect {
            localReply(501, "CONNECT is not supported by this listener", flag: .downstreamProtocolError, close: true)
            return
        }
        let go = inbound ? runInbound() : runOutbound()
        guard go else { return }
        admitAndStart()
    }

    /// A request refused while it was read (a malformed head, the header timeout): answered
    /// with `status` and recorded like any other exchange.
    func refuse(_ d: DownstreamStream, inbound: Bool, status st: Int, reason: StaticString, headBytes: Int) {
        request.reset()
        down = d
        self.inbound = inbound
        routing = worker.routing
        snapshot = routing.snapshot
        startTime = loop.now
        if let al = worker.accessLog, al.mayLog(snapshot) { startWall = Clock.wallNanos() }
        requestBytes = UInt64(headBytes)
        responseBytes = 0
        status = 0
        flag = .none
        requestHasBody = false; requestEnded = true; upstreamRequestEnded = false
        responseStarted = false; finished = false; grpc = -1
        response.reset(); responseTrailers.reset()
        routeID = .none; target = .none; cluster = .none
        metricsRoute = inbound ? MetricKey.inboundRoute : MetricKey.noRoute
        upstreamPeer = 0; requestPeer = d.callerPeer; exchangePool = nil
        clientAuthority = ByteRange()
        trace.recording = false
        phase = .routing
        localReply(st, reason, flag: .downstreamProtocolError, close: true)
    }

    /// After routing: the cluster's circuit breaker, then a fault delay or abort, then the first attempt.
    private func admitAndStart() {
        if !attempts.admit(routing, cluster: cluster.index, policy: retry) {
            worker.stats.inc(.upstreamOverflow)
            localReply(503, "upstream overflow: too many requests in flight to this cluster (http2MaxRequests)", flag: .upstreamOverflow)
            return
        }
        let timeout = routeID.isNone ? 0 : snapshot.routes[routeID.index].timeout
        deadlines.route = timeout > 0 ? loop.now &+ timeout : 0
        if faultDelaying, !routeID.isNone, let f = snapshot.routes[routeID.index].fault {
            worker.stats.inc(.faultDelays)
            if faultAbortStatus == 0 { flag = .delayInjected }
            phase = .waiting
            deadlines.startWait(now: loop.now, delay: f.delay)
            armTimer()
            return
        }
        if faultAbortStatus > 0 { faultAbort(); return }
        armTimer()
        attempt(fresh: false)
    }

    private func faultAbort() {
        worker.stats.inc(.faultAborts)
        localReply(faultAbortStatus, "fault filter abort", flag: .faultInjected)
    }

    // MARK: attempts

    /// Sends the request to an endpoint of its target: `prefer` (a pool whose connection just
    /// went idle, for a queued request) when it is one of the target's healthy endpoints, else
    /// the load balancer's pick avoiding the endpoint of the last attempt.
    private func attempt(fresh: Bool, prefer: EndpointPool? = nil) {
        let c = snapshot.clusters[cluster.index]
        var picked: EndpointPool?
        if let p = prefer, lbHash == nil, p.cluster == cluster.index, p.ejectedUntil <= loop.now,
           target.isNone || snapshot.targets[target.index].endpoints.contains(where: { routing.pools[cluster.index][$0] === p }) {
            picked = p
        } else {
            picked = target.isNone ? routing.pickEndpoint(cluster: cluster.index, avoid: lastPool)
                                   : routing.pickEndpoint(target: target.index, avoid: lastPool, hash: lbHash)
        }
        guard let pool = picked else {
            localReply(503, "no healthy upstream", flag: .noHealthyUpstream)
            return
        }
        lastPool = pool
        exchangePool = pool
        let perTry = retry.perTryTimeout
        deadlines.attempt = perTry > 0 ? loop.now &+ perTry : 0
        armTimer()
        attempts.startAttempt(on: pool)
        let h2ctx = c.mutualTLS ? snapshot.clientTLSH2 : nil
        let useH2 = c.http2 && !wantsUpgrade && !pool.h2Refused && (!c.mutualTLS || h2ctx != nil)
        let up: UpstreamStream = useH2 ? h2Upstream : h1Upstream
        upstream = up
        phase = .connecting
        switch up.open(pool, c, snapshot, fresh: fresh) {
        case .opened:
            break
        case .overflow:
            upstream = nil
            poolOverflow(c)
        case .failed:
            upstream = nil
            worker.stats.inc(.upstreamConnectFailures)
            attemptFailed(.connect)
        }
    }

    /// The cluster's connections are all open and busy: wait in its bounded queue
    /// (`http1MaxPendingRequests`), or answer 503 UO when the queue is full too.
    private func poolOverflow(_ c: ProxySnapshot.Cluster) {
        attempts.endAttempt(worker)
        let rt = routing.clusterState[cluster.index]
        if rt.pendingCount < c.maxPendingRequests {
            waitingForPool = true
            rt.addWaiter(self)
            return
        }
        localReply(503, "upstream overflow: connection pool full (maxConnections, http1MaxPendingRequests)", flag: .upstreamOverflow)
    }

    func poolAvailable(_ freed: EndpointPool?) -> Bool {
        guard waitingForPool, phase == .connecting, !finished else { return false }
        waitingForPool = false
        attempt(fresh: false, prefer: freed)
        return true
    }

    private func leavePoolQueue() {
        if waitingForPool {
            waitingForPool = false
            if !cluster.isNone { routing.clusterState[cluster.index].removeWaiter(self) }
        }
    }

    /// The upstream wrote the request head: send the body received so far.
    func upstreamStarted(peer: Int) {
        guard let up = upstream else { return }
        phase = .proxying
        upstreamPeer = peer
        if !requestHasBody { upstreamRequestEnded = true; maybeMirror(); return }
        sendWaitingBody(up)
        down?.resumeRequestBody()
    }

    /// Sends the body bytes that waited for the upstream (received before it was ready, or put
    /// back for a retry), then the body's end if it came.
    private func sendWaitingBody(_ up: UpstreamStream) {
        if !pending.isEmpty {
            up.sendBody(UnsafePointer(pending.readPointer), pending.readableBytes)
            keepForReplay(UnsafePointer(pending.readPointer), pending.readableBytes)
            pending.clear()
        }
        if requestEnded && !upstreamRequestEnded {
            upstreamRequestEnded = true
            up.endBody(trailers: requestTrailers.isEmpty ? nil : requestTrailers)
            maybeMirror()
        }
    }

    /// An attempt ended without a response: retry when the policy, the body and the budget
    /// allow, else answer with the reason.
    private func attemptFailed(_ f: AttemptFailure) {
        guard case .fail(let exhausted) = attempts.failed(f, worker, replayable: replayable && !responseStarted) else {
            traceRetry(status: 0, flag: f == .connect ? .upstreamConnectFailure : f == .timeout ? .upstreamRequestTimeout : .upstreamConnectionTermination)
            scheduleRetry()
            return
        }
        switch f {
        case .connect:
            localReply(503, "upstream connect error", flag: .upstreamConnectFailure)
        case .reset, .refused:
            worker.stats.inc(.upstreamResetsBeforeResponse)
            localReply(503, "upstream connection closed before response", flag: exhausted ? .retryLimitExceeded : .upstreamConnectionTermination)
        case .timeout:
            worker.stats.inc(.requestTimeouts)
            localReply(504, "upstream per-try timeout", flag: .upstreamRequestTimeout, close: true)
        }
    }

    /// Books a retry and starts it after the back-off; the body sent so far goes back in front
    /// of what was not sent yet.
    private func scheduleRetry() {
        let delay = attempts.bookRetry(worker)
        restoreBody()
        phase = .waiting
        deadlines.attempt = 0
        deadlines.startWait(now: loop.now, delay: delay)
        armTimer()
    }

    private func restoreBody() {
        if !replay.isEmpty {
            pending.prepend(replay.readPointer, replay.readableBytes)
            replay.clear()
        }
        upstreamRequestEnded = false
    }

    /// The upstream attempt failed. `reused`: a pooled connection that carried an earlier
    /// exchange closed before any response byte (the keep-alive race: retried once on a fresh
    /// connection, not one of the route's retries). `unstarted` (implies the same retry): an HTTP/2 connection
    /// that ended before its peer sent any HTTP/2 byte (idempotent requests only) or that the
    /// peer closed during its TLS handshake: the same single retry, but the endpoint's failure is
    /// recorded (outlier detection) and counted apart.
    func upstreamFailed(_ f: AttemptFailure, reused: Bool = false, unstarted: Bool = false, h2Error: UInt32 = 0) {
        upstream = nil
        if finished { return }
        if responseStarted {
            flag = .upstreamConnectionTermination
            down?.abortResponse(h2Error: h2Error != 0 ? h2Error : H2Error.internalError)
            finish()
            return
        }
        if f != .timeout && (reused || unstarted) && replayable && !raceRetryUsed {
            raceRetryUsed = true
            if unstarted {
                worker.stats.inc(.upstreamUnstartedRetries)
                attempts.outcome(worker, status: 0, gatewayFailure: true)
            } else {
                worker.stats.inc(.upstreamKeepAliveRaceRetries)
            }
            attempts.leaveEndpoint()
            restoreBody()
            attempt(fresh: true)
            return
        }
        attemptFailed(f)
    }

    /// The upstream sent something that is not HTTP: 502 UPE (or a reset once the response started).
    func upstreamProtocolError(_ reason: StaticString) {
        if let up = upstream { upstream = nil; up.cancel() }
        if responseStarted {
            flag = .upstreamProtocolError
            down?.abortResponse(h2Error: H2Error.internalError)
            finish()
            return
        }
        localReply(502, reason, flag: .upstreamProtocolError, close: true)
    }

    // MARK: request body (from the downstream)

    /// True while the upstream takes body bytes (the downstream holds them back otherwise).
    var wantsRequestBody: Bool {
        guard phase == .proxying, !finished, let up = upstream else { return false }
        return !up.bodyCongested
    }

    func requestBody(_ p: UnsafePointer<UInt8>, _ n: Int) {
        requestBytes &+= UInt64(n)
        if finished { return }
        if phase == .proxying, pending.isEmpty, let up = upstream {
            up.sendBody(p, n)
            keepForReplay(p, n)
        } else {
            pending.append(p, n)
        }
    }

    /// The request body ended (its trailers, if any, are in `requestTrailers`).
    func requestEnd() {
        requestEnded = true
        if finished { return }
        if phase == .proxying, pending.isEmpty, let up = upstream, !upstreamRequestEnded {
            upstreamRequestEnded = true
            up.endBody(trailers: requestTrailers.isEmpty ? nil : requestTrailers)
            maybeMirror()
        }
    }

    /// The request body could not be read (bad chunked framing): 400, or a reset if answered.
    func requestBodyError() {
        worker.stats.inc(.badRequests)
        if let up = upstream { upstream = nil; up.cancel() }
        if responseStarted {
            flag = .downstreamProtocolError
            down?.abortResponse(h2Error: H2Error.internalError)
            finish()
            return
        }
        localReply(400, "malformed request body", flag: .downstreamProtocolError, close: true)
    }

    /// Keeps body bytes sent on this attempt for a retry (and a mirror), while they fit the cap.
    @inline(__always) private func keepForReplay(_ p: UnsafePointer<UInt8>, _ n: Int) {
        guard replayable else { return }
        if replay.readableBytes + n <= Exchange.replayCap { replay.append(p, n) } else { replayable = false; replay.clear() }
    }

    func upstreamWritable() {
        if !pending.isEmpty, phase == .proxying, let up = upstream, !up.bodyCongested { sendWaitingBody(up) }
        down?.resumeRequestBody()
    }

    /// Istio's mirror: once the whole request went upstream, a copy goes to the mirror target (a
    /// body that outgrew the replay buffer is not mirrored, and is counted as skipped).
    private func maybeMirror() {
        guard !mirrorDecided, !routeID.isNone else { return }
        mirrorDecided = true
        let r = snapshot.routes[routeID.index]
        guard !r.mirrorTarget.isNone, ProxySnapshot.Route.draw(r.mirrorPPM, &worker.rng) else { return }
        if !replayable { worker.stats.inc(.mirrorSkipped); return }
        worker.mirror(request, body: replay, target: r.mirrorTarget.index, routing: routing)
    }

    // MARK: response (from the upstream)

    /// A 1xx head is in `response`.
    func responseInformational() {
        noteActivity()
        down?.sendInformational(response)
        response.reset()
    }

    /// The final response head is in `response`. `endStream`: no body follows.
    func responseHead(endStream: Bool) {
        noteActivity()
        let r = response
        if !inbound && r.peerMetadataIndex >= 0, let tls = upstreamTLS {
            let f = r.fields[r.peerMetadataIndex]
            upstreamPeer = peerCache.index(worker.metrics.peers, principal: tls.peerIdentityBytes,
                                           r.pointer(f.value), Int(f.value.length), fallback: upstreamPeer)
        }
        if grpc >= 0 { grpc = grpcStatus(r) ?? grpc }
        var listed = false
        if retry.on.contains(.retriableHeaders) { listed = listsRetriableHeader(r) }
        switch attempts.responded(status: r.status, grpc: grpc >= 0 && grpc < 17 ? grpc : -1, listedHeader: listed,
                                  worker, replayable: replayable) {
        case .retry:
            if let up = upstream { upstream = nil; up.cancel() }
            traceRetry(status: r.status, flag: .none)
            response.reset()
            if grpc >= 0 { grpc = 17 }
            scheduleRetry()
            return
        case .fail(let exhausted):
            if exhausted { flag = .retryLimitExceeded }
        }
        status = r.status
        decorateResponse()
        responseStarted = true
        if let d = down { responseBytes &+= UInt64(d.sendResponseHead(r, endStream: endStream, close: false)) }
        if endStream { responseEnd() }
    }

    /// What the proxy adds to or removes from a forwarded response: the route's header
    /// operations, the inbound sidecar's peer metadata, the response flag.
    private func decorateResponse() {
        let r = response
        if !routeID.isNone {
            let ops = snapshot.routes[routeID.index].responseOps
            if !ops.isEmpty {
                for i in 0..<r.fields.count where r.fields[i].forwarded && r.fields[i].kind != .contentLength
                    && ops.removes(r.pointer(r.fields[i].name), Int(r.fields[i].name.length)) {
                    r.drop(i)
                }
                for (n, v) in ops.add { r.addField(n, v) }
            }
            if let c = snapshot.routes[routeID.index].cors { addCORSResponseHeaders(c) }
        }
        if lbCookie != 0 { addAffinityCookie(r) }
        if inbound {
            snapshot.peerMetadata.withUnsafeBufferPointer { _ = r.addField("x-mesh-peer-metadata", $0.baseAddress!, $0.count) }
        }
        if flag != .none {
            let c = flag.code
            r.addField("x-mesh-response-flags", c.utf8Start, c.utf8CodeUnitCount)
        }
    }

    func responseData(_ p: UnsafePointer<UInt8>, _ n: Int) {
        responseBytes &+= UInt64(n)
        down?.sendResponseBody(p, n)
    }

    /// True while the client has not taken the response bytes sent (upstreams stop reading).
    var downstreamCongested: Bool { down?.responseCongested ?? false }

    func downstreamDrained() { upstream?.resumeResponse() }

    /// The response body ended (trailers, if any, in `responseTrailers`).
    func responseEnd() {
        if grpc >= 0, !responseTrailers.isEmpty { grpc = grpcStatus(responseTrailers) ?? grpc }
        down?.endResponse(trailers: responseTrailers.isEmpty ? nil : responseTrailers)
        let up = upstream
        upstream = nil
        up?.release()
        worker.stats.countResponse(status)
        finish()
    }

    /// The upstream answered 101 to an upgrade request: the client's connection and `up` become
    /// a tunnel (HTTP/1.1 on both sides), and the exchange ends.
    func switchingProtocols(_ up: UpstreamConnection) {
        guard wantsUpgrade, let d = down else {
            upstreamProtocolError("upstream switched protocols without an upgrade request")
            up.owner = nil
            up.closeNow()
            return
        }
        upstream = nil
        worker.stats.inc(.upgrades)
        status = 101
        responseStarted = true
        responseBytes &+= UInt64(d.sendResponseHead(response, endStream: false, close: false))
        worker.stats.countResponse(101)
        let key = MetricKey.make(inbound: inbound, route: metricsRoute, code: 0, flag: .none, peer: inbound ? requestPeer : upstreamPeer)
        if !d.startTunnel(up, tcpKey: key) {
            up.owner = nil
            up.closeNow()
        }
        finish()
    }

    // MARK: timers

    private func armTimer() {
        let d = deadlines.next(responseStarted: responseStarted)
        if d == 0 && timer == nil { return }
        let t = timer ?? ExchangeTimer(exchange: self)
        if timer == nil { timer = t; loop.registerTimerOnly(t) }
        loop.setDeadline(t, d)
    }

    func timerFired(now: UInt64) {
        guard !finished, phase != .idle, phase != .done else { return }
        switch deadlines.expired(now: now, responseStarted: responseStarted) {
        case .none:
            armTimer()
        case .route:
            worker.stats.inc(.requestTimeouts)
            if let up = upstream { upstream = nil; up.cancel() }
            leavePoolQueue()
            if responseStarted {
                flag = .upstreamRequestTimeout
                down?.abortResponse(h2Error: H2Error.cancel)
                finish()
            } else {
                localReply(504, "upstream request timeout", flag: .upstreamRequestTimeout, close: true)
            }
        case .wait:
            deadlines.wait = 0
            if faultDelaying {
                faultDelaying = false
                if faultAbortStatus > 0 { faultAbort(); return }
            }
            attempt(fresh: false)
        case .attempt:
            deadlines.attempt = 0
            if let up = upstream { upstream = nil; up.cancel() }
            leavePoolQueue()
            attemptFailed(.timeout)
        }
    }

    /// The downstream's stream idle timeout passed with this exchange in flight.
    func streamIdleExpired() {
        guard !finished else { return }
        worker.stats.inc(.requestTimeouts)
        if let up = upstream { upstream = nil; up.cancel() }
        leavePoolQueue()
        if responseStarted {
            down?.abortResponse(h2Error: H2Error.internalError)
            finish()
            return
        }
        worker.stats.inc(.streamIdleTimeouts)
        localReply(504, "stream idle timeout", flag: .streamIdleTimeout, close: true)
    }

    @inline(__always) func noteActivity() { down?.noteActivity() }

    // MARK: endings

    /// The proxy answers the request itself: `status`, the response flag, a text body.
    /// `close`: the HTTP/1.1 connection closes after it.
    func localReply(_ st: Int, _ reason: StaticString, flag f: ResponseFlag, close: Bool = false, httpsLocation: Bool = false,
                    extra: ((MessageHead) -> Void)? = nil) {
        if let up = upstream { upstream = nil; up.cancel() }
        leavePoolQueue()
        guard let d = down, !finished else { return }
        if responseStarted { flag = f; d.abortResponse(h2Error: H2Error.internalError); finish(); return }
        flag = f
        status = st
        localReason = reason
        worker.stats.inc(.localReplies)
        worker.stats.countResponse(st)
        let r = response
        r.reset()
        r.status = st
        let ct: StaticString = "text/plain"
        r.addField("content-type", ct.utf8Start, ct.utf8CodeUnitCount)
        if httpsLocation { addHTTPSLocation(r) }
        r.beginField("content-length", kind: .contentLength)
        r.bytes.appendDecimal(reason.utf8CodeUnitCount + 1)
        r.endField()
        r.contentLength = Int64(reason.utf8CodeUnitCount + 1)
        let fc = f.code
        r.addField("x-mesh-response-flags", fc.utf8Start, fc.utf8CodeUnitCount)
        extra?(r)
        responseStarted = true
        // A response to HEAD has no body, whatever its content-length says (RFC 9110 §9.3.2);
        // one sent anyway would be read as the start of the next response.
        let head = request.methodKind == .head
        responseBytes &+= UInt64(d.sendResponseHead(r, endStream: head, close: close))
        if !head {
            d.sendResponseBody(reason.utf8Start, reason.utf8CodeUnitCount)
            let nl: StaticString = "\n"
            d.sendResponseBody(nl.utf8Start, 1)
            responseBytes &+= UInt64(reason.utf8CodeUnitCount + 1)
            d.endResponse(trailers: nil)
        }
        Log.debug("proxy", "local reply \(st) \(f.code): \(reason)")
        finish()
    }

    /// The client went away (connection closed, stream reset) before the exchange ended.
    func downstreamGone(flag f: ResponseFlag) {
        guard !finished, phase != .idle else { return }
        if flag == .none { flag = f }
        if let up = upstream { upstream = nil; up.cancel() }
        leavePoolQueue()
        down = nil
        finish()
    }

    /// Ends the exchange: releases what it holds, records it once, tells the downstream.
    func finish() {
        if finished { return }
        finished = true
        phase = .done
        if let t = timer { loop.setDeadline(t, 0) }
        deadlines = ExchangeDeadlines()
        leavePoolQueue()
        attempts.release(worker)
        record()
        let d = down
        down = nil
        d?.exchangeFinished()
    }

    /// Gives back the buffers of an idle exchange.
    func releaseStorage() {
        request.releaseStorage(); response.releaseStorage()
        requestTrailers.releaseStorage(); responseTrailers.releaseStorage()
        pending.releaseStorage(); replay.releaseStorage()
    }

    /// Detaches from the loop for good (the owning connection closed).
    func retire() {
        if let t = timer { loop.deregisterTimerOnly(t); timer = nil }
    }

    // MARK: helpers

    private var upstreamTLS: TLSSession? { upstream?.tlsSession }

    private func grpcStatus(_ h: MessageHead) -> Int? {
        let n: StaticString = "grpc-status"
        return h.withValue(n.utf8Start, n.utf8CodeUnitCount) { MetricKey.grpcStatus($0, $1) }
    }

    /// Envoy's retriable-headers: the response carries a header the request named in
    /// `x-envoy-retriable-header-names`.
    private func listsRetriableHeader(_ r: MessageHead) -> Bool {
        let req = request
        return req.withValue(RetriableHeaderNames.requestHeader.utf8Start, RetriableHeaderNames.requestHeader.utf8CodeUnitCount) { lp, ln in
            for f in r.fields where RetriableHeaderNames.lists(lp, ln, r.pointer(f.name), Int(f.name.length)) { return true }
            return false
        } ?? false
    }

    // MARK: record

    private func record() {
        let peer = inbound ? requestPeer : upstreamPeer
        let key = MetricKey.make(inbound: inbound, route: metricsRoute, code: status, flag: flag, peer: peer, grpc: grpc)
        let micros = (loop.now &- startTime) / 1000
        worker.metrics.record(key: key, durationMicros: micros, requestBytes: requestBytes, responseBytes: responseBytes)
        traceFinished()
        if let sink = worker.accessLog {
            ExchangeLog.record(self, sink, micros: micros, startWall: startWall, authority: clientAuthority,
                               reason: localReason, upstream: exchangePool)
        }
        if let pool = exchangePool {
            pool.counters.inc(.requests)
            if status >= 500 || status == 0 { pool.counters.inc(.errors) }
            exchangePool = nil
        }
    }
}

/// The deadline of one exchange (route timeout, per-try timeout, back-off, fault delay),
/// registered with the loop once and re-armed as the exchange needs.
final class ExchangeTimer: Pollable {
    unowned(unsafe) let exchange: Exchange
    init(exchange: Exchange) { self.exchange = exchange; super.init(fd: -1) }
    override func onTimer(now: UInt64) { exchange.timerFired(now: now) }
}
