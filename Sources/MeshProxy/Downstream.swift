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
final class DownstreamConnection: Connection {
    enum State { case idle, connecting, backoff, proxying, tunnel, closing }

    unowned(unsafe) let worker: Worker
    let inbound: Bool
    let settings: ProxySnapshot.ListenerSettings
    var listIndex = -1
    private(set) var state: State = .idle

    private var parser = HTTP1Parser()
    private var head = HTTPHead()
    private var reqBody = BodyFramer()
    /// The snapshot the current request started with.
    private var snapshot: ProxySnapshot
    private var cluster = -1
    private var routeTimeout: UInt64 = 0
    private var upstream: UpstreamConnection?
    private var lastPool: EndpointPool?
    /// The rewritten request head plus the body bytes forwarded so far, kept (up to a cap) until
    /// the first response byte so the request can be sent again on another connection.
    private let replay = ByteBuffer(capacity: 2048)
    private var replayValid = false
    private static let replayCap = 64 * 1024
    private var connectRetriesLeft = 0
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
    private var upstreamEOFSeen = false
    private var dechunk = false
    private var dechunker = ChunkedDecoder()
    private var routeDeadline: UInt64 = 0
    private var headerDeadlineSet = false
    private var flag: ResponseFlag = .none

    init(worker: Worker, fd: Int32, tls: TLSSession?, inbound: Bool, settings: ProxySnapshot.ListenerSettings) {
        self.worker = worker
        self.inbound = inbound
        self.settings = settings
        self.snapshot = worker.snapshot
        super.init(loop: worker.loop, fd: fd, security: tls, connecting: false)
    }

    // MARK: connection events

    override func onEstablished() {
        if let tls = security as? TLSSession {
            worker.stats.inc(.tlsHandshakesOK)
            if tls.resumed { worker.stats.inc(.tlsSessionsResumed) }
        }
    }

    override func onInput() {
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
        guard let up = upstream else { return }
        if state == .tunnel { pumpTunnelDown(up) } else if state == .proxying { pumpResponseBody(up) }
    }

    override func onPeerClosed(error: Int32) {
        if error == -1 {
            worker.stats.inc(.tlsHandshakesFailed)
            Log.warn("inbound", "TLS handshake refused: \(security?.failureReason ?? "unknown")")
            return
        }
        switch state {
        case .idle, .closing:
            closeNow()
        case .tunnel:
            if let up = upstream { upstream = nil; up.owner = nil; up.closeAfterFlush() }
            closeNow()
        case .connecting, .backoff, .proxying:
            if error == 0 && requestDone {
                // The client half-closed after a complete request: answer, then close.
                closeAfterResponse = true
                return
            }
            flag = .downstreamConnectionTermination
            closeNow()
        }
    }

    override func onClosed() {
        if let up = upstream {
            upstream = nil
            up.owner = nil
            up.closeNow()
        }
        state = .closing
        worker.downstreamClosed(self)
    }

    override func onDeadline(now: UInt64) {
        switch state {
        case .idle:
            if input.isEmpty && !headerDeadlineSet {
                closeNow()   // keep-alive idle timeout
            } else {
                worker.stats.inc(.headerTimeouts)
                localReply(408, "request headers not received in time", close: true, flag: .downstreamProtocolError)
            }
        case .backoff:
            state = .connecting
            acquireUpstream(fresh: false)
        case .connecting, .proxying:
            let isRoute = routeDeadline != 0 && now >= routeDeadline
            worker.stats.inc(.requestTimeouts)
            if responseStarted {
                closeNow()
            } else if isRoute {
                localReply(504, "upstream request timeout", close: true, flag: .upstreamRequestTimeout)
            } else {
                localReply(504, "stream idle timeout", close: true, flag: .streamIdleTimeout)
            }
        case .tunnel, .closing:
            closeNow()
        }
    }

    /// Drain: close now if no request is in progress; otherwise the response closes the connection.
    func drainIfIdle() {
        if state == .idle && input.isEmpty { closeNow() }
        else if state == .idle { closeAfterResponse = true }
    }

    // MARK: request

    private func parseRequest() {
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
                worker.stats.inc(.requestsTotal)
                worker.stats.inc(.badRequests)
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
        let stats = worker.stats
        stats.inc(.requestsTotal)
        snapshot = worker.snapshot
        method = head.method
        clientMinor = head.minorVersion
        clientKeepAlive = head.keepAlive && !closeAfterResponse
        closeAfterResponse = !clientKeepAlive || worker.draining
        wantsUpgrade = head.connectionUpgrade && head.upgradeIndex >= 0
        responseStarted = false
        responseStatus = 0
        upstreamEOFSeen = false
        raceRetryUsed = false
        connectAttempts = 0
        flag = .none
        dechunk = false
        reqBody.startRequest(head)
        requestDone = reqBody.isDone

        if method == .connect {
            consumeHead()
            localReply(501, "CONNECT is not supported by this listener", close: true, flag: .downstreamProtocolError)
            return
        }
        // Route.
        if inbound {
            cluster = snapshot.inboundCluster
            routeTimeout = 0
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
            let r = snapshot.hosts.lookup(hp, hn)
            if r < 0 {
                stats.inc(.noRoute)
                consumeHead()
                localReply(404, "no route for this host", close: !reqBody.isDone, flag: .noRoute)
                return
            }
            let route = snapshot.routes[r]
            cluster = route.cluster
            routeTimeout = route.timeout
        }
        buildUpstreamHead()
        consumeHead()
        replayValid = true
        connectRetriesLeft = 2   // DESIGN §2: 2 retries on connect-failure by default
        routeDeadline = routeTimeout > 0 ? loop.now + routeTimeout : 0
        state = .connecting
        armStreamTimer()
        acquireUpstream(fresh: false)
    }

    private func consumeHead() {
        input.consume(head.headEnd - input.readIndex)
        parser.resetScan()
    }

    /// Writes the request head as it goes upstream into `replay`: origin-form target, hop-by-hop
    /// headers removed, Host from an absolute-form target, x-request-id added when absent, and on
    /// the inbound side the caller's x-forwarded-client-cert replaced by our own.
    private func buildUpstreamHead() {
        let b = input.base
        let out = replay
        out.clear()
        out.append(b + head.methodStart, head.methodEnd - head.methodStart)
        out.append(UInt8(ascii: " "))
        if head.isAbsoluteForm {
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
        for f in head.fields {
            switch f.kind {
            case .connection, .keepAlive, .proxyConnection, .xForwardedClientCert:
                continue
            case .te:
                continue   // re-added below as "te: trailers" when that is what was asked
            case .upgrade:
                if !wantsUpgrade { continue }
            case .host:
                if head.isAbsoluteForm { continue }
            default:
                break
            }
            out.append(b + Int(f.lineStart), Int(f.lineEnd - f.lineStart))
        }
        if head.isAbsoluteForm {
            out.append("host: ")
            out.append(b + head.authorityStart, head.authorityEnd - head.authorityStart)
            out.append("\r\n")
        }
        if head.teTrailers { out.append("te: trailers\r\n") }
        if wantsUpgrade { out.append("connection: upgrade\r\n") }
        if head.requestIDIndex < 0 {
            out.append("x-request-id: ")
            appendUUID(out)
            out.append("\r\n")
        }
        if inbound, let tls = security as? TLSSession {
            out.append("x-forwarded-client-cert: ")
            out.append(snapshot.xfccPrefix)
            out.append(tls.peerCertHash)
            out.append(";URI=")
            out.append(tls.peerIdentityBytes)
            out.append("\r\n")
        }
        if clientMinor == 0 && !clientKeepAlive { out.append("connection: close\r\n") }
        out.append("\r\n")
    }

    private func appendUUID(_ out: ByteBuffer) {
        let a = worker.rng.next(), c = worker.rng.next()
        let hex: StaticString = "0123456789abcdef"
        let h = hex.utf8Start
        // Version 4 (byte 6 high nibble) and the RFC 4122 variant (byte 8 top bits 10), little-endian.
        var bytes: (UInt64, UInt64) = ((a & ~(UInt64(0xf0) << 48)) | (UInt64(0x40) << 48), (c & ~UInt64(0xc0)) | 0x80)
        withUnsafeBytes(of: &bytes) { raw in
            for i in 0..<16 {
                if i == 4 || i == 6 || i == 8 || i == 10 { out.append(UInt8(ascii: "-")) }
                let v = raw[i]
                out.append(h[Int(v >> 4)])
                out.append(h[Int(v & 15)])
            }
        }
    }

    // MARK: upstream selection

    private func acquireUpstream(fresh: Bool) {
        let c = snapshot.clusters[cluster]
        let pool = worker.pickEndpoint(cluster: cluster, avoid: lastPool)
        lastPool = pool
        connectAttempts += 1
        guard let up = pool.checkout(c, tlsContext: snapshot.clientTLS, fresh: fresh) else {
            if pool.lastError == 0 {
                localReply(503, "upstream connection limit reached", close: !reqBody.isDone, flag: .upstreamOverflow)
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
        up.prepareForRequest()
        if up.reused { /* counted at checkout */ }
        up.send(replay.readPointer, replay.readableBytes)
        pumpRequestBody()
    }

    private func connectFailed() {
        if connectRetriesLeft > 0 {
            connectRetriesLeft -= 1
            worker.stats.inc(.retries)
            let pools = snapshot.clusters[cluster].endpoints.count
            if pools > 1 {
                acquireUpstream(fresh: true)
            } else {
                // Exponential back-off with jitter: 25 ms, 50 ms ... (Envoy's defaults), half jittered.
                let base: UInt64 = 25_000_000 << UInt64(min(connectAttempts - 1, 3))
                let delay = base / 2 + worker.rng.next() % (base / 2)
                state = .backoff
                loop.setDeadline(self, loop.now + delay)
            }
            return
        }
        localReply(503, "upstream connect error", close: !reqBody.isDone, flag: .upstreamConnectFailure)
    }

    // MARK: request body

    private func pumpRequestBody() {
        guard let up = upstream, state == .proxying else { return }
        while !input.isEmpty && !reqBody.isDone && !up.isCongested {
            let adv = reqBody.advance(UnsafePointer(input.readPointer), input.readableBytes)
            if adv.forward > 0 {
                up.send(input.readPointer, adv.forward)
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
        if reqBody.isDone { requestDone = true }
        resumeReading()
    }

    func upstreamDrained() {
        if state == .tunnel { pumpTunnelUp() } else { pumpRequestBody() }
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
            replayValid = false
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

    private func writeResponseHead(_ up: UpstreamConnection, informational: Bool, upgrade: Bool) {
        let h = up.head
        let b = up.input.base
        let out = worker.scratch
        out.clear()
        out.append("HTTP/1.1 ")
        let lineEnd = h.fields.first.map { Int($0.lineStart) - 2 } ?? (h.headEnd - 4)
        out.append(b + h.headStart + 9, lineEnd - (h.headStart + 9))
        out.append("\r\n")
        for f in h.fields {
            switch f.kind {
            case .connection, .keepAlive, .proxyConnection, .te:
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
        if upgrade {
            out.append("connection: upgrade\r\n")
        } else if !informational {
            if closeAfterResponse { out.append("connection: close\r\n") }
            else if clientMinor == 0 { out.append("connection: keep-alive\r\n") }
        }
        out.append("\r\n")
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
            up.pool.release(up, idleTimeout: snapshot.clusters[up.pool.cluster].idleTimeout)
        } else {
            up.owner = nil
            up.closeNow()
        }
        endExchange()
    }

    private func endExchange() {
        if closeAfterResponse || !requestDone || worker.draining || peerClosed {
            state = .closing
            loop.setDeadline(self, loop.now + settings.idleTimeout)
            closeAfterFlush()
            return
        }
        state = .idle
        loop.setDeadline(self, loop.now + settings.idleTimeout)
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
            raceRetryUsed = true
            worker.stats.inc(.upstreamKeepAliveRaceRetries)
            state = .connecting
            acquireUpstream(fresh: true)
            return
        }
        worker.stats.inc(.upstreamResetsBeforeResponse)
        localReply(503, "upstream connection closed before response", close: !reqBody.isDone, flag: .upstreamConnectionTermination)
    }

    /// Ends the exchange with an error: a local reply if nothing was sent yet, else a reset.
    private func abortExchange(status: Int, reason: StaticString, flag f: ResponseFlag) {
        if let up = upstream { upstream = nil; up.owner = nil; up.closeNow() }
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
        if let up = upstream { upstream = nil; up.owner = nil; up.closeNow() }
        worker.stats.inc(.localReplies)
        worker.stats.countResponse(status)
        let mustClose = close || !clientKeepAlive || worker.draining
        closeAfterResponse = mustClose
        requestDone = !mustClose
        let out = worker.scratch
        out.clear()
        out.appendLocalReply(status: status, body: body, close: mustClose, flag: f)
        send(out.readPointer, out.readableBytes)
        Log.debug("proxy", "local reply \(status) \(f.code): \(body)")
        endExchange()
    }

    // MARK: tunnel (after 101 Switching Protocols)

    private func pumpTunnelUp() {
        guard let up = upstream else { return }
        if !input.isEmpty && !up.isCongested {
            up.send(input.readPointer, input.readableBytes)
            input.consume(input.readableBytes)
        }
        resumeReading()
    }

    private func pumpTunnelDown(_ up: UpstreamConnection) {
        if !up.input.isEmpty && !isCongested {
            send(up.input.readPointer, up.input.readableBytes)
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
        var d = loop.now + snapshot.streamIdleTimeout
        if routeDeadline != 0 && routeDeadline < d { d = routeDeadline }
        loop.setDeadline(self, d)
    }
}
