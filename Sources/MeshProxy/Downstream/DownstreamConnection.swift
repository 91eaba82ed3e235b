import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// A client connection on a listener: the app on the outbound listener (plain HTTP/1.1, or h2c
/// by prior knowledge), or another sidecar on the inbound listener (mTLS, HTTP/2 by ALPN or
/// HTTP/1.1). On HTTP/2 it hands the connection to an `H2ServerHandler`. On HTTP/1.1 it is the
/// `DownstreamStream` of one exchange at a time: it parses each request head into its exchange's
/// `request`, feeds the body without its framing, writes the response (chunked when its length
/// is unknown), keeps the connection alive between requests (pipelining included), and after
/// 101 Switching Protocols carries a raw tunnel. Everything a request does is the exchange's.
final class DownstreamConnection: Connection, DownstreamStream, UpstreamOwner {
    enum State { case idle, exchange, tunnel, closing }

    unowned(unsafe) let worker: Worker
    let inbound: Bool
    let settings: ProxySnapshot.ListenerSettings
    var listIndex = -1
    private(set) var state: State = .idle

    private var parser = HTTP1Parser()
    private var head = HTTPHead()
    /// This connection's exchange, made at its first request and reused for the next ones.
    private var exchangeStorage: Exchange?
    private var exchange: Exchange {
        if let e = exchangeStorage { return e }
        let e = worker.exchangePool.popLast() ?? Exchange(worker: worker)
        exchangeStorage = e
        return e
    }
    /// Gives this connection's exchange back to the worker (buffers released; a few are kept for
    /// the next connections, the rest freed, so a burst of connections leaves little behind).
    private func recycleExchange() {
        guard let e = exchangeStorage else { return }
        exchangeStorage = nil
        if worker.exchangePool.count < Worker.exchangePoolLimit { e.releaseStorage(); worker.exchangePool.append(e) } else { e.retire() }
    }
    private var body = BodyDecoder()
    private let trailerLines = ByteBuffer(lazyCapacity: 128)
    /// The whole request body was read from the client.
    private var requestDone = true
    private var clientMinor = 1
    private var closeAfterResponse = false
    /// The response goes out chunked (its length unknown, the client HTTP/1.1).
    private var chunkResponse = false
    private var headerDeadlineSet = false
    /// When the connection last became idle between requests (0 before its first request ended).
    private var idleSince: UInt64 = 0
    /// How long a connection stays idle before it gives its buffers back (`hibernate()`).
    static let hibernateAfter: UInt64 = 2_000_000_000
    /// A pipelined request waits for the end of this loop iteration (never parsed inside the
    /// exchange that just ended).
    private var parseQueued = false

    /// HTTP/2 on this connection (inbound ALPN h2, or outbound h2c): the handler owns the streams.
    private var h2: H2ServerHandler?

    /// The caller's TLS session (inbound), nil for a plaintext caller (PeerAuthentication
    /// PERMISSIVE/DISABLE); found once when the connection is established, so the request path
    /// does no dynamic casts.
    private(set) var tlsSession: TLSSession?
    /// The caller's identity, interned once per connection.
    private var downstreamPeer = 0

    // A tunnel after 101 Switching Protocols: Istio's TCP metrics.
    private var tunnelUp: UpstreamConnection?
    private var tunnelKey: UInt64 = 0
    private var tunnelSent: UInt64 = 0
    private var tunnelReceived: UInt64 = 0
    private var tunnelEOF = false

    init(worker: Worker, fd: Int32, tls: TransportSecurity?, inbound: Bool, settings: ProxySnapshot.ListenerSettings) {
        self.worker = worker
        self.inbound = inbound
        self.settings = settings
        super.init(loop: worker.loop, fd: fd, security: tls, connecting: false)
    }

    // MARK: connection events

    override func onEstablished() {
        tlsSession = (security as? TLSSession) ?? (security as? PermissiveSecurity)?.session
        if let tls = tlsSession {
            worker.stats.inc(.tlsHandshakesOK)
            if tls.resumed { worker.stats.inc(.tlsSessionsResumed) }
            downstreamPeer = worker.metrics.peers.intern(tls.peerIdentity)
            if inbound && tls.alpn == "h2" { startH2(peerIndex: downstreamPeer, inbound: true) }
        }
    }

    private func startH2(peerIndex: Int, inbound: Bool) {
        worker.stats.inc(.http2DownstreamConnections)
        h2 = H2ServerHandler(conn: self, worker: worker, peerIndex: peerIndex, inbound: inbound)
        loop.setDeadline(self, loop.now + min(settings.idleTimeout, settings.streamIdleTimeout))
    }

    override func onFlush() {
        if let h = h2 { h.produceFrames() }
        if parseQueued {
            parseQueued = false
            if state == .idle { if input.isEmpty { resumeReading() } else { parseRequest() } }
        }
        super.onFlush()
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
        case .exchange:
            noteActivity()
            pumpRequestBody()
        case .tunnel:
            noteActivity()
            pumpTunnelUp()
        case .closing:
            input.clear()
        }
    }

    override func onDrained() {
        if let h = h2 { h.onDrained(); return }
        switch state {
        case .exchange: exchange.downstreamDrained()
        case .tunnel: if let up = tunnelUp { pumpTunnelDown(up) }
        default: break
        }
    }

    override func onPeerClosed(error: Int32) {
        if error == -1 {
            worker.stats.inc(.tlsHandshakesFailed)
            worker.logRejection("inbound", "TLS handshake refused: \(security?.failureReason ?? "unknown")")
            return
        }
        if h2 != nil { closeNow(); return }
        switch state {
        case .idle, .closing, .tunnel:
            closeNow()
        case .exchange:
            if error == 0 && requestDone {
                // The client half-closed after a complete request: answer, then close.
                closeAfterResponse = true
                return
            }
            closeNow()
        }
    }

    override func onClosed() {
        if let h = h2 { h.connectionClosed() }
        if state == .exchange { exchange.downstreamGone(flag: .downstreamConnectionTermination) }
        if let up = tunnelUp {
            tunnelUp = nil
            worker.metrics.recordTCP(key: tunnelKey, opened: 0, closed: 1, sent: tunnelSent, received: tunnelReceived)
            up.owner = nil
            up.closeAfterFlush()
            loop.setDeadline(up, loop.now + 10_000_000_000)   // bounded if it never drains
        }
        recycleExchange()
        state = .closing
        worker.downstreamClosed(self)
    }

    override func onDeadline(now: UInt64) {
        if let h = h2 { h2Deadline(h, now: now); return }
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
                    recycleExchange()   // an idle connection holds no exchange
                    hibernate()
                    worker.stats.inc(.connectionsHibernated)
                    worker.trimmer.noteRelease()
                    loop.setDeadline(self, until)
                }
            } else {
                worker.stats.inc(.headerTimeouts)
                worker.logRejection("proxy", "request head not complete within the header timeout: 408")
                refuse(408, "request headers not received in time", headBytes: input.readableBytes)
            }
        case .exchange:
            exchange.streamIdleExpired()
        case .tunnel, .closing:
            closeNow()
        }
    }

    /// The HTTP/2 connection's periodic deadline: idle close, hibernation, stalled streams.
    private func h2Deadline(_ h: H2ServerHandler, now: UInt64) {
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
        startH2(peerIndex: 0, inbound: false)
        h2!.onInput()
        return true
    }

    private func parseRequest() {
        if mayBeH2C && !inbound && detectH2C() { return }
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
                worker.stats.inc(e.status == 414 ? .uriTooLong : e.status == 431 ? .headersTooLarge : .badRequests)
                worker.logRejection("proxy", "refused request with \(e.status): \(e.reason)")
                refuse(e.status, e.reason, headBytes: input.readableBytes)
                return
            case .complete:
                headerDeadlineSet = false
                startRequest()
            }
        }
    }

    /// Answers a request that could not be read, and closes.
    private func refuse(_ status: Int, _ reason: StaticString, headBytes: Int) {
        state = .exchange
        requestDone = false
        clientMinor = 1
        closeAfterResponse = true
        exchange.refuse(self, inbound: inbound, status: status, reason: reason, headBytes: headBytes)
    }

    private func startRequest() {
        if !inbound && head.method == .connect { connectHandover(); return }
        mayBeH2C = false
        worker.stats.inc(.requestsTotal)
        let b = UnsafePointer(input.base)
        H1HeadReader.request(&head, b, into: exchange.request)
        clientMinor = head.minorVersion
        closeAfterResponse = !head.keepAlive || closeAfterResponse || worker.draining
        var upgrade = head.connectionUpgrade && head.upgradeIndex >= 0
        if upgrade {
            // `Upgrade: h2c` is for the hop, not the app (curl --http2 on http:// sends it): the
            // request is served as HTTP/1.1, as Envoy and nginx do; apps reach h2c by prior knowledge.
            let f = head.fields[head.upgradeIndex]
            if ASCII.equalsLower(b + Int(f.valueStart), Int(f.valueEnd - f.valueStart), "h2c") { upgrade = false }
        }
        body.trailers = trailerLines
        body.startRequest(head)
        requestDone = body.isDone
        chunkResponse = false
        let headBytes = head.headEnd - head.headStart
        input.consume(head.headEnd - input.readIndex)
        parser.resetScan()
        state = .exchange
        noteActivity()   // the stream idle timeout runs from here
        exchange.begin(self, inbound: inbound, requestHasBody: !requestDone, headBytes: headBytes, wantsUpgrade: upgrade)
        if state == .exchange { pumpRequestBody() }
    }

    /// Feeds the request body (without its framing) to the exchange while its upstream takes it;
    /// the rest waits in `input`, whose limit stops reading from the client.
    private func pumpRequestBody() {
        guard state == .exchange else { return }
        if !requestDone {
            let ex = exchange
            while !input.isEmpty && !requestDone && ex.wantsRequestBody {
                switch body.next(UnsafePointer(input.readPointer), input.readableBytes) {
                case .data(let n):
                    ex.requestBody(UnsafePointer(input.readPointer), n)
                    input.consume(n)
                    if body.isDone { requestBodyEnded() }
                case .framing(let n), .needMore(let n):
                    input.consume(n)
                case .end(let n):
                    input.consume(n)
                    requestBodyEnded()
                case .error:
                    ex.requestBodyError()
                    return
                }
                if state != .exchange { return }
            }
        }
        resumeReading()
    }

    private func requestBodyEnded() {
        requestDone = true
        let t = exchange.requestTrailers
        t.reset()
        if !trailerLines.isEmpty { HeaderPolicy.ingestTrailerLines(t, trailerLines); trailerLines.clear() }
        exchange.requestEnd()
    }

    // MARK: DownstreamStream

    var callerTLS: TLSSession? { tlsSession }
    var callerPeer: Int { downstreamPeer }
    /// Asked for only by policies on caller addresses; then kept for the connection's life.
    lazy var callerAddress: IPEndpoint? = Socket.peerEndpoint(fd)
    /// Set by the capture accept path (`Worker.acceptCaptured`) before the first request; the
    /// service is looked up in the snapshot of each request, never kept as an index.
    var capturedDestination: IPEndpoint?

    func sendInformational(_ h: MessageHead) {
        guard clientMinor == 1 else { return }
        let out = worker.scratch
        out.clear()
        H1Writer.responseStart(h, into: out)
        out.append("\r\n")
        send(out.readPointer, out.readableBytes)
    }

    func sendResponseHead(_ h: MessageHead, endStream: Bool, close: Bool) -> Int {
        if close || !requestDone || worker.draining { closeAfterResponse = true }
        let out = worker.scratch
        out.clear()
        H1Writer.responseStart(h, into: out)
        if h.status == 101 {
            if h.upgradeIndex >= 0 {
                let f = h.fields[h.upgradeIndex]
                out.append("upgrade: ")
                out.append(h.pointer(f.value), Int(f.value.length))
                out.append("\r\n")
            }
            out.append("connection: upgrade\r\n\r\n")
            send(out.readPointer, out.readableBytes)
            return out.readableBytes
        }
        let m = exchange.request.methodKind
        let bodyAllowed = m != .head && h.status != 204 && h.status != 304
        if h.contentLength < 0 && bodyAllowed {
            if endStream {
                out.append("content-length: 0\r\n")
            } else if clientMinor == 1 {
                chunkResponse = true
                out.append("transfer-encoding: chunked\r\n")
            } else {
                closeAfterResponse = true   // HTTP/1.0: the close ends the body
            }
        }
        if closeAfterResponse { out.append("connection: close\r\n") }
        else if clientMinor == 0 { out.append("connection: keep-alive\r\n") }
        out.append("\r\n")
        send(out.readPointer, out.readableBytes)
        return out.readableBytes
    }

    func sendResponseBody(_ p: UnsafePointer<UInt8>, _ n: Int) {
        if n == 0 { return }
        if chunkResponse {
            let out = worker.scratch
            out.clear()
            H1Writer.chunkHeader(n, into: out)
            send(out.readPointer, out.readableBytes)
            send(p, n)
            let crlf: StaticString = "\r\n"
            send(crlf.utf8Start, 2)
        } else {
            send(p, n)
        }
    }

    func endResponse(trailers: MessageHead?) {
        guard chunkResponse else { return }
        let out = worker.scratch
        out.clear()
        H1Writer.lastChunk(trailers, into: out)
        send(out.readPointer, out.readableBytes)
    }

    var responseCongested: Bool { isCongested }

    func resumeRequestBody() { pumpRequestBody() }

    @inline(__always) func noteActivity() {
        loop.setDeadline(self, loop.now &+ settings.streamIdleTimeout)
    }

    func abortResponse(h2Error: UInt32) { closeNow() }

    /// The exchange ended: keep the connection for the next request, or close it.
    func exchangeFinished() {
        guard state == .exchange else { return }
        if closeAfterResponse || !requestDone || worker.draining || peerClosed || isClosed {
            state = .closing
            if !isClosed {
                loop.setDeadline(self, loop.now + settings.idleTimeout)
                closeAfterFlush()
            }
            return
        }
        state = .idle
        idleSince = loop.now
        loop.setDeadline(self, loop.now + min(settings.idleTimeout, DownstreamConnection.hibernateAfter))
        // The next request (pipelined, or read now) starts at this iteration's flush, never
        // inside the exchange that just ended.
        parseQueued = true
        requestFlush()
    }

    // MARK: CONNECT (opaque TCP, docs/tcp.md)

    /// `CONNECT host:port` on the outbound listener: a TCP service's connection is handed to the
    /// worker's TCP relay (the socket and any bytes after the head; `200` once connected); any
    /// other target is answered here and the connection closed.
    private func connectHandover() {
        mayBeH2C = false
        worker.stats.inc(.requestsTotal)
        let decision = ConnectHandover.resolve(worker.snapshot, UnsafePointer(input.base) + head.authorityStart,
                                               head.authorityEnd - head.authorityStart)
        input.consume(head.headEnd - input.readIndex)
        parser.resetScan()
        switch decision {
        case .refuse(let status, let body, let flag):
            if flag == .noRoute { worker.stats.inc(.noRoute) }
            worker.stats.inc(.localReplies)
            worker.stats.countResponse(status)
            let out = worker.scratch
            out.clear()
            out.appendLocalReply(status: status, body: body, close: true, flag: flag)
            send(out.readPointer, out.readableBytes)
            state = .closing
            loop.setDeadline(self, loop.now + settings.idleTimeout)
            closeAfterFlush()
        case .relay(let target):
            // The bytes after the head go first; the relay owns the socket from here.
            let rest = worker.scratch
            rest.clear()
            if !input.isEmpty { rest.append(input.readPointer, input.readableBytes) }
            state = .closing
            let fd = detachSocket()
            guard fd >= 0 else { return }
            worker.startTCPProxy(fd: fd, initial: UnsafeRawBufferPointer(start: rest.readPointer, count: rest.readableBytes),
                                 target: target, replyToConnect: true)
        }
    }

    // MARK: tunnel (after 101 Switching Protocols)

    func startTunnel(_ up: UpstreamConnection, tcpKey: UInt64) -> Bool {
        state = .tunnel
        tunnelUp = up
        up.owner = self
        tunnelKey = tcpKey
        tunnelSent = 0
        tunnelReceived = 0
        tunnelEOF = false
        worker.metrics.recordTCP(key: tcpKey, opened: 1, closed: 0, sent: 0, received: 0)
        pumpTunnelUp()
        pumpTunnelDown(up)
        return true
    }

    private func pumpTunnelUp() {
        guard let up = tunnelUp else { return }
        if !input.isEmpty && !up.isCongested {
            up.send(input.readPointer, input.readableBytes)
            tunnelReceived &+= UInt64(input.readableBytes)
            input.consume(input.readableBytes)
        }
        resumeReading()
    }

    private func pumpTunnelDown(_ up: UpstreamConnection) {
        if !up.input.isEmpty && !isCongested {
            send(up.input.readPointer, up.input.readableBytes)
            tunnelSent &+= UInt64(up.input.readableBytes)
            up.input.consume(up.input.readableBytes)
        }
        if tunnelEOF && up.input.isEmpty {
            state = .closing
            closeAfterFlush()
            return
        }
        up.resumeReading()
    }

    // UpstreamOwner: the tunnel's upstream connection.
    func upstreamReady(_ up: UpstreamConnection) {}
    func upstreamInput(_ up: UpstreamConnection) {
        guard up === tunnelUp else { return }
        noteActivity()
        pumpTunnelDown(up)
    }
    func upstreamDrained() { pumpTunnelUp() }
    func upstreamEOF(_ up: UpstreamConnection) {
        guard up === tunnelUp else { up.closeNow(); return }
        tunnelEOF = true
        pumpTunnelDown(up)
    }
    func upstreamClosed(_ up: UpstreamConnection, error: Int32, wasConnecting: Bool) {
        guard up === tunnelUp else { return }
        state = .closing
        closeAfterFlush()
    }
}
