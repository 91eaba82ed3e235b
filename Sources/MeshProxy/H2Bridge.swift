import CNghttp2
import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// What an HTTP/2 downstream connection's handler asks of one of its streams.
protocol H2DownstreamStream: AnyObject {
    var isFinished: Bool { get }
    func header(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int) -> Bool
    func headersComplete(endStream: Bool)
    func requestTrailersDone()
    func requestData(_ p: UnsafePointer<UInt8>, _ n: Int)
    func requestEnded()
    func abort(flag: ResponseFlag)
    func closedNormally()
    /// The downstream connection has room again (resume response bytes, return credit).
    func pumpResponse()
}

/// Header fields kept as bytes (name and value offsets into one buffer), replayed into a session.
struct HeaderBlock {
    let bytes = ByteBuffer(capacity: 1024)
    private(set) var offsets: [(Int, Int, Int, Int)] = []

    mutating func add(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int) {
        let ns = bytes.writeIndex
        bytes.append(n, nl)
        let vs = bytes.writeIndex
        bytes.append(v, vl)
        offsets.append((ns, nl, vs, vl))
    }

    mutating func clear() { bytes.clear(); offsets.removeAll(keepingCapacity: true) }
    var isEmpty: Bool { offsets.isEmpty }

    func replay(into s: HTTP2Session) {
        let b = bytes.base
        for (ns, nl, vs, vl) in offsets { s.addHeader(b + ns, nl, b + vs, vl) }
    }

    /// Calls `body` with each field's name and value.
    func forEach(_ body: (UnsafePointer<UInt8>, Int, UnsafePointer<UInt8>, Int) -> Void) {
        let b = UnsafePointer(bytes.base)
        for (ns, nl, vs, vl) in offsets { body(b + ns, nl, b + vs, vl) }
    }

    /// The value of the first field named `name` (lowercase bytes), if any.
    func withValue<R>(_ name: UnsafePointer<UInt8>, _ n: Int, _ body: (UnsafePointer<UInt8>, Int) -> R) -> R? {
        let b = UnsafePointer(bytes.base)
        for (ns, nl, vs, vl) in offsets where nl == n && ASCII.equalsLowerBytes(b + ns, n, name) { return body(b + vs, vl) }
        return nil
    }
}

/// An HTTP/2 request's header block as the router sees it.
struct H2RequestView: RoutableRequest {
    let block: HeaderBlock

    private func pseudo<R>(_ name: StaticString, _ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
        if let r = block.withValue(name.utf8Start, name.utf8CodeUnitCount, body) { return r }
        return body(name.utf8Start, 0)
    }
    func withMethod<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R { pseudo(":method", body) }
    func withPath<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R { pseudo(":path", body) }
    func withHeader<R>(_ name: UnsafePointer<UInt8>, _ n: Int, _ body: (UnsafePointer<UInt8>, Int) -> R) -> R? {
        block.withValue(name, n, body)
    }
}

/// The deadline of one bridged stream (route timeout, per-try timeout, back-off, fault delay);
/// registered with the loop only while the stream needs it.
final class StreamTimer: Pollable {
    unowned(unsafe) let stream: H2BridgeStream
    init(stream: H2BridgeStream) { self.stream = stream; super.init(fd: -1) }
    override func onTimer(now: UInt64) { stream.timerFired(now: now) }
}

/// An HTTP/2 stream carried to an upstream over HTTP/2: h2c from an app on the outbound listener
/// to another sidecar (mTLS h2), or an h2 stream from a sidecar on the inbound listener to an app
/// that speaks h2c (gRPC). Header blocks, DATA, trailers (gRPC's `grpc-status`) and resets are
/// mapped one to one; connection-specific fields are dropped; each side's flow-control credit is
/// returned only as the bytes are accepted by the other side.
final class H2BridgeStream: H2DownstreamStream, H2StreamOwner {
    unowned(unsafe) private(set) var handler: H2ServerHandler
    private(set) var id: Int32
    private(set) var inbound: Bool
    private var worker: Worker { handler.worker }
    private var down: HTTP2Session { handler.session }

    private var request = HeaderBlock()
    private var authority: [UInt8] = []
    private var hasRequestID = false
    private var upstream: H2UpstreamConnection?
    private var upStream: Int32 = 0
    private var pool: EndpointPool?
    private let pending = ByteBuffer(capacity: 256)
    private var requestEnd = false
    private var requestFinishedUp = false
    private var cluster = -1
    private var route = MetricKey.noRoute
    private var heldDownCredit = 0
    private var upstreamPeer = 0
    private var callerPeer = -1
    private var peerCache = PeerMetadataCache()
    /// Body bytes went upstream (a refused stream is then not retried: the body is gone).
    private var sentData = false
    private var headDone = false
    private var requestTrailers = HeaderBlock()

    // Routing, retries and timers (outbound; DESIGN §3).
    /// The worker's routing state when the stream started (its config snapshot and pools).
    private var routing: RoutingState?
    private var snap: ProxySnapshot { (routing ?? worker.routing).snapshot }
    private var routeIndex = -1
    private var matchIndex = -1
    private var target = -1
    private var attempts = RequestAttempts()
    private var timer: StreamTimer?
    private var routeDeadline: UInt64 = 0
    private var tryDeadline: UInt64 = 0
    private var backoffUntil: UInt64 = 0
    private var faultDelaying = false
    private var faultAbortStatus = 0
    /// Body bytes sent upstream on this attempt, kept (up to a cap) to replay on a retry.
    private let sentBody = ByteBuffer(capacity: 256)
    private var replayable = true
    /// Bytes at the front of `pending` whose flow-control credit was already returned.
    private var pendingCredited = 0
    private static let replayCap = 64 * 1024

    var h2StreamID: Int32 { upStream }
    /// -1 for a non-gRPC request, else its grpc-status (17 until one is seen).
    private var grpc = -1
    private var heldUpCredit = 0

    private var response = HeaderBlock()
    private var status = 0
    private(set) var responseStarted = false
    private var finished = false
    private var flag: ResponseFlag = .none
    private var start: UInt64
    private var requestBytes: UInt64 = 0
    private var responseBytes: UInt64 = 0
    private var recorded = false
    static let window = 1 << 20

    var isFinished: Bool { finished }

    init(handler: H2ServerHandler, id: Int32, inbound: Bool) {
        self.handler = handler
        self.id = id
        self.inbound = inbound
        self.start = handler.worker.loop.now
    }

    /// Makes a finished bridge new again for another stream (per-worker reuse: no allocation per
    /// stream once warm). The peer cache stays: it belongs to the worker's peer table.
    func reuse(handler: H2ServerHandler, id: Int32, inbound: Bool) {
        self.handler = handler
        self.id = id
        self.inbound = inbound
        start = handler.worker.loop.now
        request.clear(); response.clear(); requestTrailers.clear(); pending.clear()
        authority.removeAll(keepingCapacity: true)
        hasRequestID = false; upstream = nil; upStream = 0; pool = nil
        requestEnd = false; requestFinishedUp = false
        cluster = -1; route = MetricKey.noRoute; heldDownCredit = 0; heldUpCredit = 0
        upstreamPeer = 0; callerPeer = -1; sentData = false; headDone = false; grpc = -1
        status = 0; responseStarted = false; finished = false; flag = .none
        requestBytes = 0; responseBytes = 0; recorded = false
        routing = nil; routeIndex = -1; matchIndex = -1; target = -1
        routeDeadline = 0; tryDeadline = 0; backoffUntil = 0; faultDelaying = false; faultAbortStatus = 0
        sentBody.clear(); replayable = true; pendingCredited = 0
    }

    // MARK: request from downstream

    func header(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int) -> Bool {
        requestBytes &+= UInt64(nl + vl + 4)
        if headDone {
            // Request trailers (gRPC clients may send metadata there): kept for the upstream stream.
            if nl > 0 && n[0] != UInt8(ascii: ":") { requestTrailers.add(n, nl, v, vl) }
            return true
        }
        if ASCII.equalsLower(n, nl, "connection") || ASCII.equalsLower(n, nl, "keep-alive") || ASCII.equalsLower(n, nl, "proxy-connection")
            || ASCII.equalsLower(n, nl, "transfer-encoding") || ASCII.equalsLower(n, nl, "upgrade") || ASCII.equalsLower(n, nl, "host")
            || ASCII.equalsLower(n, nl, "x-forwarded-client-cert") {
            if ASCII.equalsLower(n, nl, "host") && authority.isEmpty { authority.append(contentsOf: UnsafeBufferPointer(start: v, count: vl)) }
            return true
        }
        if ASCII.equalsLower(n, nl, "te") && !ASCII.equalsLower(v, vl, "trailers") { return true }
        if nl == 20 && ASCII.equalsLower(n, nl, "x-mesh-peer-metadata") {
            if inbound { callerPeer = handler.peerIndex(metadata: v, vl) }
            return true
        }
        if ASCII.equalsLower(n, nl, ":authority") {
            authority.removeAll(keepingCapacity: true)
            authority.append(contentsOf: UnsafeBufferPointer(start: v, count: vl))
        }
        if ASCII.equalsLower(n, nl, "x-request-id") { hasRequestID = true }
        if nl == 12 && ASCII.equalsLower(n, nl, "content-type") && vl >= 16 && ASCII.equalsLower(v, 16, "application/grpc") {
            grpc = 17   // a gRPC call; its status arrives with the response
        }
        request.add(n, nl, v, vl)
        return true
    }

    func headersComplete(endStream: Bool) {
        headDone = true
        requestEnd = endStream
        let routing = worker.routing!
        self.routing = routing
        let snap = routing.snapshot
        var policy = RetryPolicy.default
        if inbound {
            cluster = snap.inboundCluster
            route = MetricKey.inboundRoute
            if let az = snap.authz {
                let view = H2RequestView(block: request)
                let peer = handler.conn.tlsSession?.peerIdentityBytes ?? []
                let verdict = view.withMethod { mp, mn in
                    view.withPath { az.check(principal: peer, method: mp, mn, rawPath: $0, $1, scratch: worker.scratch) }
                }
                if verdict != .allowed { worker.stats.inc(verdict.counter); localReply(verdict.status, verdict.reason, flag: verdict.flag); return }
            }
        } else {
            let v = authority.withUnsafeBufferPointer { b -> Int in
                guard let p = b.baseAddress else { return -1 }
                return snap.hosts.lookup(p, HostTable.hostLength(p, b.count))
            }
            if v < 0 {
                worker.stats.inc(.noRoute)
                localReply(404, "no route for this host", flag: .noRoute)
                return
            }
            let (r, m) = snap.route(vhost: v, H2RequestView(block: request))
            if r < 0 {
                worker.stats.inc(.noRoute)
                localReply(404, "no route matched this request", flag: .noRoute)
                return
            }
            route = snap.routes[r].metricID
            routeIndex = r
            matchIndex = m
            let rt = snap.routes[r]
            target = rt.pickTarget(&worker.rng)
            cluster = snap.targets[target].cluster
            policy = rt.retry
            if rt.timeout > 0 { routeDeadline = worker.loop.now + rt.timeout }
            if let f = rt.fault {
                if ProxySnapshot.Route.draw(f.delayPPM, &worker.rng) { faultDelaying = true }
                if ProxySnapshot.Route.draw(f.abortPPM, &worker.rng) { faultAbortStatus = f.abortStatus }
            }
        }
        if cluster < 0 { localReply(503, "no local app", flag: .noRoute); return }
        if !attempts.admit(routing, cluster: cluster, policy: policy) {
            worker.stats.inc(.upstreamOverflow)
            localReply(503, "upstream overflow: too many requests in flight to this cluster (http2MaxRequests)", flag: .upstreamOverflow)
            return
        }
        if faultDelaying, let f = snap.routes[routeIndex].fault {
            worker.stats.inc(.faultDelays)
            if faultAbortStatus == 0 { flag = .delayInjected }
            backoffUntil = worker.loop.now + f.delay
            armTimer()
            return
        }
        if faultAbortStatus > 0 { faultAbort(); return }
        armTimer()
        connect()
    }

    private func faultAbort() {
        worker.stats.inc(.faultAborts)
        localReply(faultAbortStatus, "fault filter abort", flag: .faultInjected)
    }

    private func connect() {
        guard let routing else { return }
        let snap = routing.snapshot
        let c = snap.clusters[cluster]
        let picked = target >= 0 ? routing.pickEndpoint(target: target, avoid: pool) : routing.pickEndpoint(cluster: cluster, avoid: pool)
        guard let p = picked else { localReply(503, "no healthy upstream", flag: .noHealthyUpstream); return }
        pool = p
        attempts.startAttempt(on: p)
        let perTry = attempts.policy.perTryTimeout
        tryDeadline = perTry > 0 ? worker.loop.now + perTry : 0
        if tryDeadline != 0 { armTimer() }
        guard c.http2 else { localReply(502, "the upstream of this route does not speak HTTP/2", flag: .upstreamProtocolError); return }
        let ctx: TLSContext? = c.mutualTLS ? snap.clientTLSH2 : nil
        guard let h = p.checkoutH2(c, tlsContext: ctx) else {
            if p.lastError == 0 {
                localReply(503, "upstream overflow: connection pool full (maxConnections)", flag: .upstreamOverflow)
            } else {
                connectFailed()
            }
            return
        }
        upstream = h
        upStream = 0
        if !h.open(self) {
            upstream = nil
            connectFailed()
        }
    }

    private func connectFailed() {
        worker.stats.inc(.upstreamConnectFailures)
        attemptFailed(.connect)
    }

    /// An attempt ended without a response: retry when the policy, the body and the budget
    /// allow, else answer with the reason.
    private func attemptFailed(_ f: AttemptFailure) {
        guard case .fail(let exhausted) = attempts.failed(f, worker, replayable: replayable && !responseStarted && !finished) else {
            retry()
            return
        }
        switch f {
        case .connect: localReply(503, "upstream connect error", flag: .upstreamConnectFailure)
        case .reset, .refused:
            worker.stats.inc(.upstreamResetsBeforeResponse)
            localReply(503, "upstream reset before response", flag: exhausted ? .retryLimitExceeded : .upstreamConnectionTermination)
        case .timeout:
            worker.stats.inc(.requestTimeouts)
            localReply(504, "upstream per-try timeout", flag: .upstreamRequestTimeout)
        }
    }

    /// Schedules the next attempt after the back-off; the body sent so far goes back in front of
    /// what has not been sent yet.
    private func retry() {
        let delay = attempts.bookRetry(worker)
        if sentBody.readableBytes > 0 {
            pending.prepend(sentBody.readPointer, sentBody.readableBytes)
            pendingCredited += sentBody.readableBytes
            sentBody.clear()
        }
        requestFinishedUp = false
        upstream = nil
        upStream = 0
        tryDeadline = 0
        backoffUntil = worker.loop.now + delay
        armTimer()
    }

    /// Arms the stream's timer for its earliest wait (registering it with the loop on first use).
    private func armTimer() {
        var d = routeDeadline
        let t1 = responseStarted ? 0 : tryDeadline
        if t1 != 0 && (d == 0 || t1 < d) { d = t1 }
        if backoffUntil != 0 && (d == 0 || backoffUntil < d) { d = backoffUntil }
        if d == 0 && timer?.slot ?? -1 < 0 { return }
        let t = timer ?? StreamTimer(stream: self)
        timer = t
        if t.slot < 0 { worker.loop.registerTimerOnly(t) }
        worker.loop.setDeadline(t, d)
    }

    private func disarmTimer() {
        if let t = timer, t.slot >= 0 { worker.loop.deregisterTimerOnly(t) }
    }

    func timerFired(now: UInt64) {
        guard !finished else { disarmTimer(); return }
        if routeDeadline != 0 && now >= routeDeadline {
            worker.stats.inc(.requestTimeouts)
            cancelUpstream()
            if responseStarted {
                flag = .upstreamRequestTimeout
                finished = true
                returnCredit()
                down.reset(stream: id, error: UInt32(NGHTTP2_CANCEL.rawValue))
                handler.conn.requestFlush()
                record()
            } else {
                localReply(504, "upstream request timeout", flag: .upstreamRequestTimeout)
            }
            return
        }
        if backoffUntil != 0 && now >= backoffUntil {
            backoffUntil = 0
            if faultDelaying {
                faultDelaying = false
                if faultAbortStatus > 0 { faultAbort(); return }
            }
            armTimer()
            connect()
            return
        }
        if tryDeadline != 0 && now >= tryDeadline && !responseStarted {
            tryDeadline = 0
            cancelUpstream()
            attemptFailed(.timeout)
            return
        }
        armTimer()
    }

    /// Gives up the current upstream stream (its response credit returned).
    private func cancelUpstream() {
        if let h = upstream {
            if heldUpCredit > 0 && upStream > 0 { h.session.consume(stream: upStream, heldUpCredit); h.requestFlush() }
            heldUpCredit = 0
            h.cancel(self, stream: upStream)
        }
        upstream = nil
        upStream = 0
    }

    func h2Submit(_ conn: H2UpstreamConnection) -> Int32 {
        guard conn === upstream, !finished else { return -1 }
        let s = conn.session!
        // addHeader copies its bytes, so the worker's scratch buffer serves every value below.
        let scratch = worker.scratch
        if routeIndex >= 0 {
            let rt = snap.routes[routeIndex]
            let ops = rt.requestOps
            // `rewrite.authority` replaces :authority in place (pseudo-headers come first), or is
            // added before the first regular field when the caller sent only Host.
            let authority = rt.rewriteAuthority
            var authorityDone = authority == nil
            request.forEach { n, nl, v, vl in
                if !authorityDone, let a = authority {
                    let isAuthority = nl == 10 && ASCII.equalsLower(n, nl, ":authority")
                    if isAuthority || nl == 0 || n[0] != UInt8(ascii: ":") {
                        authorityDone = true
                        a.withUnsafeBufferPointer { s.addHeader(":authority", $0.baseAddress!, $0.count) }
                        if isAuthority { return }
                    }
                }
                if nl > 0 && n[0] != UInt8(ascii: ":") && !ops.isEmpty && ops.removes(n, nl) { return }
                if rt.rewriteURI != nil, nl == 5 && ASCII.equalsLower(n, nl, ":path") {
                    scratch.clear()
                    rt.appendRewrittenPath(scratch, matchIndex: matchIndex, v, vl)
                    s.addHeader(n, nl, scratch.readPointer, scratch.readableBytes)
                    return
                }
                s.addHeader(n, nl, v, vl)
            }
            if !authorityDone, let a = authority {
                a.withUnsafeBufferPointer { s.addHeader(":authority", $0.baseAddress!, $0.count) }
            }
            for (n, v) in ops.add {
                n.withUnsafeBufferPointer { nb in v.withUnsafeBufferPointer { vb in
                    s.addHeader(nb.baseAddress!, nb.count, vb.baseAddress ?? nb.baseAddress!, vb.count)
                } }
            }
        } else {
            request.replay(into: s)
        }
        if !hasRequestID {
            scratch.clear()
            worker.appendRequestID(scratch)
            s.addHeader("x-request-id", scratch.readPointer, scratch.readableBytes)
        }
        if !inbound && conn.security != nil {
            let meta = snap.peerMetadata
            meta.withUnsafeBufferPointer { s.addHeader("x-mesh-peer-metadata", $0.baseAddress!, $0.count) }
        }
        if inbound, let tls = handler.conn.tlsSession {
            scratch.clear()
            scratch.append(snap.xfccPrefix)
            scratch.append(tls.peerCertHash)
            scratch.append(";URI=")
            scratch.append(tls.peerIdentityBytes)
            s.addHeader("x-forwarded-client-cert", scratch.readPointer, scratch.readableBytes)
        }
        let endNow = requestEnd && pending.isEmpty
        let sid = s.submitRequest(endStream: endNow)
        if sid <= 0 { return sid }
        upStream = sid
        upstreamPeer = conn.peerIndex
        requestFinishedUp = endNow
        if !pending.isEmpty {
            s.sendData(stream: sid, pending.readPointer, pending.readableBytes)
            keepForReplay(pending.readPointer, pending.readableBytes)
            let credit = pending.readableBytes - pendingCredited
            if credit > 0 { down.consume(stream: id, credit) }
            pendingCredited = 0
            pending.clear()
            sentData = true
            handler.conn.requestFlush()
        }
        if requestEnd && !requestFinishedUp { finishUpstreamRequest(s, sid) }
        return sid
    }


    /// Keeps body bytes that went upstream for a retry while they fit the cap.
    @inline(__always) private func keepForReplay(_ p: UnsafePointer<UInt8>, _ n: Int) {
        guard replayable, !inbound || attempts.policy.retries > 0 else { return }
        if sentBody.readableBytes + n <= H2BridgeStream.replayCap { sentBody.append(p, n) } else { replayable = false; sentBody.clear() }
    }

    func requestData(_ p: UnsafePointer<UInt8>, _ n: Int) {
        requestBytes &+= UInt64(n)
        guard let h = upstream, upStream > 0, !finished else {
            if finished { down.consume(stream: id, n) } else { pending.append(p, n) }
            return
        }
        h.session.sendData(stream: upStream, p, n)
        keepForReplay(p, n)
        sentData = true
        h.requestFlush()
        if h.session.pendingData(stream: upStream) < H2BridgeStream.window {
            down.consume(stream: id, n)
        } else {
            heldDownCredit += n
            h.waitForWritable(self)
        }
    }

    func requestEnded() {
        requestEnd = true
        if let h = upstream, upStream > 0, !requestFinishedUp {
            finishUpstreamRequest(h.session, upStream)
            h.requestFlush()
        }
    }

    private func finishUpstreamRequest(_ s: HTTP2Session, _ sid: Int32) {
        requestFinishedUp = true
        if requestTrailers.isEmpty {
            s.finishData(stream: sid, withTrailers: false)
        } else {
            requestTrailers.replay(into: s)
            s.finishData(stream: sid, withTrailers: true)
        }
    }

    func requestTrailersDone() { requestEnded() }

    func h2StreamWritable() {
        guard let h = upstream, upStream > 0, heldDownCredit > 0 else { return }
        if h.session.pendingData(stream: upStream) >= H2BridgeStream.window { h.waitForWritable(self); return }
        down.consume(stream: id, heldDownCredit)
        heldDownCredit = 0
        handler.conn.requestFlush()
    }

    /// Flow-control credit for bytes received on either side but never passed on: returned on
    /// every ending, or the shared connections' windows would shrink for good.
    private func returnCredit() {
        let d = heldDownCredit + pending.readableBytes - pendingCredited
        if d > 0 { down.consume(stream: id, d) }
        heldDownCredit = 0
        pending.clear()
        pendingCredited = 0
        if heldUpCredit > 0, let h = upstream, upStream > 0 {
            h.session.consume(stream: upStream, heldUpCredit)
            h.requestFlush()
        }
        heldUpCredit = 0
    }

    // MARK: response from upstream

    func h2ResponseHeader(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int) {
        if nl == 7 && ASCII.equalsLower(n, nl, ":status") && !responseStarted {
            var st = 0
            for i in 0..<vl where v[i] >= 48 && v[i] <= 57 { st = st * 10 + Int(v[i] - 48) }
            status = st
        }
        if ASCII.equalsLower(n, nl, "connection") || ASCII.equalsLower(n, nl, "keep-alive") || ASCII.equalsLower(n, nl, "transfer-encoding") { return }
        if nl == 20 && ASCII.equalsLower(n, nl, "x-mesh-peer-metadata") {
            if !inbound, let h = upstream, let tls = h.security as? TLSSession {
                upstreamPeer = peerCache.index(worker.metrics.peers, principal: tls.peerIdentityBytes, v, vl, fallback: h.peerIndex)
            }
            return
        }
        if grpc >= 0 && nl == 11 && ASCII.equalsLower(n, nl, "grpc-status") { grpc = MetricKey.grpcStatus(v, vl) }
        if routeIndex >= 0 && !responseStarted && nl > 0 && n[0] != UInt8(ascii: ":") && !ASCII.equalsLower(n, nl, "content-length") {
            let ops = snap.routes[routeIndex].responseOps
            if !ops.isEmpty && ops.removes(n, nl) { return }
        }
        responseBytes &+= UInt64(nl + vl + 4)
        response.add(n, nl, v, vl)
    }

    func h2ResponseHeadersComplete(trailers: Bool, endStream: Bool) {
        if finished { response.clear(); return }
        if responseStarted {
            // Trailers (gRPC status): end the downstream stream with them.
            response.replay(into: down)
            response.clear()
            down.finishData(stream: id, withTrailers: true)
            handler.conn.requestFlush()
            complete()
            return
        }
        if status < 200 {
            response.replay(into: down)
            response.clear()
            down.submitInformational(stream: id)
            handler.conn.requestFlush()
            return
        }
        var listed = false
        if attempts.policy.on.contains(.retriableHeaders) {
            // Envoy's retriable-headers: a response header named in the request's list.
            let response = self.response
            _ = request.withValue(RetriableHeaderNames.requestHeader.utf8Start, 30) { lp, ln in
                response.forEach { n, nl, _, _ in
                    if !listed && nl > 0 && n[0] != UInt8(ascii: ":") && RetriableHeaderNames.lists(lp, ln, n, nl) { listed = true }
                }
            }
        }
        switch attempts.responded(status: status, grpc: grpc >= 0 && grpc < 17 ? grpc : -1, listedHeader: listed,
                                  worker, replayable: replayable && !finished) {
        case .retry:
            response.clear()
            responseBytes = 0
            status = 0
            if grpc >= 0 { grpc = 17 }
            cancelUpstream()
            retry()
            return
        case .fail(let exhausted):
            if exhausted { flag = .retryLimitExceeded }
        }
        response.replay(into: down)
        response.clear()
        if inbound {
            let meta = snap.peerMetadata
            meta.withUnsafeBufferPointer { down.addHeader("x-mesh-peer-metadata", $0.baseAddress!, $0.count) }
        }
        if routeIndex >= 0 {
            for (n, v) in snap.routes[routeIndex].responseOps.add {
                n.withUnsafeBufferPointer { nb in v.withUnsafeBufferPointer { vb in
                    down.addHeader(nb.baseAddress!, nb.count, vb.baseAddress ?? nb.baseAddress!, vb.count)
                } }
            }
        }
        if flag != .none {
            let f = flag.code
            down.addHeader("x-mesh-response-flags", f.utf8Start, f.utf8CodeUnitCount)
        }
        down.submitResponse(stream: id, endStream: endStream)
        responseStarted = true
        handler.conn.requestFlush()
        if endStream { complete() }
    }

    func h2ResponseData(_ p: UnsafePointer<UInt8>, _ n: Int) {
        guard let h = upstream, !finished else { return }
        responseBytes &+= UInt64(n)
        down.sendData(stream: id, p, n)
        handler.conn.requestFlush()
        if down.pendingData(stream: id) < H2BridgeStream.window && !handler.congested {
            h.session.consume(stream: upStream, n)
            h.requestFlush()
        } else {
            heldUpCredit += n
            handler.block(self)
        }
    }

    func pumpResponse() {
        if heldUpCredit > 0 && (down.pendingData(stream: id) >= H2BridgeStream.window || handler.congested) {
            handler.block(self)   // the client has not taken what is queued yet
            return
        }
        if heldUpCredit > 0, let h = upstream, upStream > 0 {
            h.session.consume(stream: upStream, heldUpCredit)
            heldUpCredit = 0
            h.requestFlush()
        }
    }

    func h2ResponseEnd() {
        guard !finished else { return }
        down.finishData(stream: id, withTrailers: false)
        handler.conn.requestFlush()
        complete()
    }

    func h2StreamFailed(error: UInt32, refused: Bool) {
        guard let h = upstream, !finished else { return }
        if !responseStarted {
            // Only the response side's credit: `pending` stays for a retry.
            if heldUpCredit > 0 && upStream > 0 { h.session.consume(stream: upStream, heldUpCredit); h.requestFlush() }
            heldUpCredit = 0
            upstream = nil
            upStream = 0
            // A connection that never got established (connect timeout, refused, TLS failure)
            // is a connect failure (UF), as on the HTTP/1.1 path, not a reset.
            if !h.isEstablished { connectFailed(); return }
            attemptFailed(refused ? .refused : .reset)
            return
        }
        returnCredit()
        upstream = nil
        upStream = 0
        flag = .upstreamConnectionTermination
        finished = true
        down.reset(stream: id, error: error == 0 ? UInt32(NGHTTP2_INTERNAL_ERROR.rawValue) : error)
        handler.conn.requestFlush()
        record()
    }

    private func complete() {
        finished = true
        returnCredit()
        if let h = upstream, upStream > 0, !requestFinishedUp { h.forget(stream: upStream) }
        upstream = nil
        worker.stats.countResponse(status)
        record()
    }

    // MARK: endings

    private func localReply(_ st: Int, _ body: StaticString, flag f: ResponseFlag) {
        guard !responseStarted, !finished else { return }
        returnCredit()
        flag = f
        status = st
        responseStarted = true
        finished = true
        worker.stats.inc(.localReplies)
        worker.stats.countResponse(st)
        down.submitLocalReply(stream: id, status: st, body: body, flag: f)
        handler.conn.requestFlush()
        record()
    }

    func abort(flag f: ResponseFlag) {
        returnCredit()
        if let h = upstream { h.cancel(self, stream: upStream) }
        upstream = nil
        if !recorded { flag = f; record() }
    }

    func closedNormally() {
        if !finished, let h = upstream { h.cancel(self, stream: upStream) }
        record()
    }

    private func record() {
        disarmTimer()
        attempts.release(worker)
        if recorded { return }
        recorded = true
        let peer = inbound ? (callerPeer >= 0 ? callerPeer : handler.peerIndex) : upstreamPeer
        let key = MetricKey.make(inbound: inbound, route: route, code: status, flag: flag, peer: peer, grpc: grpc)
        worker.metrics.record(key: key, durationMicros: (worker.loop.now &- start) / 1000, requestBytes: requestBytes, responseBytes: responseBytes)
        if let p = pool {
            p.counters.inc(.requests)
            if status >= 500 || status == 0 { p.counters.inc(.errors) }
        }
    }
}
