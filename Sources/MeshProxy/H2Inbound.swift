import CNghttp2
import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// HTTP/2 from a client: on the inbound mTLS listener (ALPN `h2`) or as h2c from the local app on
/// the outbound listener. Inbound streams go to an HTTP/1.1 app as one HTTP/1.1 exchange each
/// (H2InboundStream) or to an h2c app as streams (H2BridgeStream); outbound streams go to other
/// sidecars as streams. For the HTTP/1.1 app, each stream is one exchange taken from the same
/// per-worker pool as HTTP/1.1 requests. Request headers
/// are translated into an HTTP/1.1 head (`:authority` -> Host, a body without content-length is
/// sent chunked), the response head into HEADERS, response bodies into DATA (chunk framing
/// removed). Flow control is the back-pressure: a stream's window reopens only as its body is
/// written to the app, and app responses are read only while the connection's output is below
/// its high watermark.
final class H2ServerHandler: HTTP2SessionDelegate {
    unowned(unsafe) let conn: DownstreamConnection
    unowned(unsafe) let worker: Worker
    private(set) var session: HTTP2Session!
    private var streams: [Int32: H2DownstreamStream] = [:]
    /// Streams that stopped reading their upstream because the connection was congested.
    private var blocked: [H2DownstreamStream] = []
    /// Inbound (mTLS from a sidecar) or outbound (h2c from the local app).
    let inbound: Bool
    /// Scratch for lowercasing header names.
    var lower = [UInt8](repeating: 0, count: 256)
    /// The caller's last `x-mesh-peer-metadata`, interned.
    var peerCache = PeerMetadataCache()

    /// The caller's identity + workload metadata (from a request header) as a peer index.
    func peerIndex(metadata v: UnsafePointer<UInt8>, _ vl: Int) -> Int {
        guard let tls = conn.tlsSession else { return peerIndex }
        return peerCache.index(worker.metrics.peers, principal: tls.peerIdentityBytes, v, vl, fallback: peerIndex)
    }
    let peerIndex: Int
    /// Rapid-reset protection (CVE-2023-44487): streams the client ends before their response,
    /// counted per one-second window; past the limit the connection is closed with GOAWAY
    /// ENHANCE_YOUR_CALM.
    private var resetWindowStart: UInt64 = 0
    private var resetsInWindow = 0
    static let maxPrematureResetsPerSecond = 200

    init(conn: DownstreamConnection, worker: Worker, peerIndex: Int, inbound: Bool) {
        self.conn = conn
        self.worker = worker
        self.peerIndex = peerIndex
        self.lastInput = worker.loop.now
        self.inbound = inbound
        var settings = HTTP2Session.Settings()
        settings.maxConcurrentStreams = 1000
        settings.maxHeaderListSize = 64 * 1024
        session = HTTP2Session(role: .server, delegate: self, settings: settings)
        conn.requestFlush()   // our SETTINGS
    }

    var activeStreams: Int { streams.count }

    /// When the connection last received bytes (set by the connection, read at its deadline).
    var lastInput: UInt64 = 0
    /// Stall detection: the session's progress count at the last check, and when it last grew.
    private var progressSeen: UInt64 = 0
    private var progressAt: UInt64 = 0
    private var closingGracefully = false
    /// The connection's failure was counted (as a flood or a protocol error).
    private var errorCounted = false
    /// The session's `protocolErrorResets` already counted as malformed requests.
    private var malformedCounted: UInt64 = 0
    /// The session's `oversizedHeaderResets` already counted as `headersTooLarge`.
    private var oversizedCounted: UInt64 = 0

    /// True when the open streams made no progress (no stream opened, no DATA either way) for
    /// `timeout`. Called at the connection's periodic deadline while streams are open.
    func stalled(now: UInt64, timeout: UInt64) -> Bool {
        if session.progress != progressSeen || progressAt == 0 {
            progressSeen = session.progress
            progressAt = now
            return false
        }
        return now &- progressAt >= timeout
    }

    /// The connection has been idle for a while: free the spare stream buffers.
    func hibernate() { session.releaseSpares() }

    /// Ends the connection gracefully: GOAWAY naming the last stream processed, flushed before
    /// close_notify, then close (streams still in flight are aborted). Used when its streams are
    /// stalled and when it has been idle for the idle timeout, so that a client never has a
    /// request in flight on a connection that just vanished without a GOAWAY.
    func goAwayAndClose() {
        if closingGracefully { return }
        closingGracefully = true
        session.goAway()
        produceFrames()
        conn.closeAfterFlush(lingerNanos: 0)
    }

    // MARK: connection events (forwarded by the DownstreamConnection)

    func onInput() {
        // Closing (a failed session, or GOAWAY ENHANCE_YOUR_CALM sent): the rest is not read.
        if session.failed || goneAway { conn.input.clear(); return }
        if !session.receive(conn.input) {
            errorCounted = true
            if session.failedByFlood {
                worker.stats.inc(.http2Floods)
                worker.logRejection("http2", "HTTP/2 client flooded the connection (\(session.lastError)): closing it")
                // nghttp2 returns floods as fatal errors without queueing a GOAWAY: say why
                // (RFC 9113 §5.4.1) before the close. A client that does not read (SETTINGS and
                // PING floods) gets nothing more: produceFrames holds frames while congested.
                session.goAway(error: UInt32(NGHTTP2_ENHANCE_YOUR_CALM.rawValue))
            } else {
                worker.stats.inc(.http2ProtocolErrors)
                worker.logRejection("http2", "HTTP/2 connection error: \(session.lastError)")
            }
            produceFrames()
            conn.closeAfterFlush()
            return
        }
        if session.wantsWrite { conn.requestFlush() }
    }

    func produceFrames() {
        var closeAfter = false
        if calmedDown && !goneAway {
            goneAway = true
            session.goAway(error: UInt32(NGHTTP2_ENHANCE_YOUR_CALM.rawValue))
            closeAfter = true
        }
        // Once close_notify is queued nothing may follow it (the GOAWAY went out before it).
        if conn.isClosing { return }
        // A client that does not read its socket gets no more frames: they wait inside nghttp2,
        // which counts the ACKs the client never read and fails the session as a flood (SETTINGS
        // and PING floods), so our output stays bounded by the high watermark.
        if conn.isCongested && !goneAway && !closingGracefully { return }
        let out = worker.scratch
        out.clear()
        session.produce(into: out)
        if !out.isEmpty { conn.send(out.readPointer, out.readableBytes) }
        if session.protocolErrorResets != malformedCounted {
            // nghttp2 refused a malformed request on its stream (RST_STREAM PROTOCOL_ERROR).
            worker.stats.add(.http2MalformedRequests, session.protocolErrorResets &- malformedCounted)
            malformedCounted = session.protocolErrorResets
            worker.logRejection("http2", "HTTP/2 malformed request: stream reset with PROTOCOL_ERROR")
        }
        if session.oversizedHeaderResets != oversizedCounted {
            // A request header list over SETTINGS_MAX_HEADER_LIST_SIZE: its stream was reset.
            worker.stats.add(.headersTooLarge, session.oversizedHeaderResets &- oversizedCounted)
            oversizedCounted = session.oversizedHeaderResets
            worker.logRejection("http2", "HTTP/2 request header list over the 64 KiB limit: stream reset")
        }
        // GOAWAY first, then close_notify and FIN; what the client still sends is read and dropped
        // for up to the default linger (1 s), so that the kernel does not answer it with a TCP
        // reset that can reach the client before it has read the GOAWAY (a rapid-reset client is
        // typically still writing when the limit trips).
        if closeAfter { conn.closeAfterFlush(); return }
        if !errorCounted, let code = session.goAwaySent, code != 0 {
            // nghttp2 ended the connection for a protocol or compression error of the client.
            errorCounted = true
            if code != UInt32(NGHTTP2_ENHANCE_YOUR_CALM.rawValue) || !calmedDown {
                worker.stats.inc(.http2ProtocolErrors)
                worker.logRejection("http2", "HTTP/2 connection error: sent GOAWAY with error code \(code)")
            }
        }
        if !session.isAlive && streams.isEmpty { conn.closeAfterFlush(); return }
        // Streams that waited for their DATA to be framed may go on once it was.
        if !blocked.isEmpty && !conn.isCongested { onDrained() }
    }

    func onDrained() {
        if session.wantsWrite { conn.requestFlush() }   // frames held back while congested
        if blocked.isEmpty { return }
        let b = blocked
        blocked.removeAll()
        for s in b { s.pumpResponse() }
    }

    func block(_ s: H2DownstreamStream) { if !blocked.contains(where: { $0 === s }) { blocked.append(s) } }

    /// The connection closed: every exchange in flight ends.
    func connectionClosed() {
        let all = Array(streams.values)
        streams.removeAll()
        for s in all { s.abort(flag: .downstreamConnectionTermination) }
        blocked.removeAll()
        for s in all { recycle(s) }
    }

    /// Drain: GOAWAY; streams in flight finish, then the connection closes.
    func drain() {
        session.goAway()
        conn.requestFlush()
    }

    var congested: Bool { conn.isCongested }

    // MARK: HTTP2SessionDelegate

    func h2BeginHeaders(stream: Int32) {
        if streams[stream] == nil {
            let snap = worker.routing.snapshot
            let bridge = !inbound || (snap.inboundCluster >= 0 && snap.clusters[snap.inboundCluster].http2)
            if bridge, let b = worker.h2BridgePool.popLast() {
                b.reuse(handler: self, id: stream, inbound: inbound)
                streams[stream] = b
            } else if bridge {
                streams[stream] = H2BridgeStream(handler: self, id: stream, inbound: inbound)
            } else if let st = worker.h2StreamPool.popLast() {
                st.reuse(handler: self, id: stream)
                streams[stream] = st
            } else {
                streams[stream] = H2InboundStream(handler: self, id: stream)
            }
            worker.stats.inc(.requestsTotal)
        }
    }

    func h2Header(stream: Int32, name: UnsafePointer<UInt8>, nameLength: Int, value: UnsafePointer<UInt8>, valueLength: Int) -> Bool {
        guard let s = streams[stream] else { return true }
        return s.header(name, nameLength, value, valueLength)
    }

    func h2HeadersComplete(stream: Int32, trailers: Bool, endStream: Bool) {
        guard let s = streams[stream] else { return }
        if trailers { s.requestTrailersDone(); return }
        s.headersComplete(endStream: endStream)
    }

    func h2Data(stream: Int32, _ p: UnsafePointer<UInt8>, _ n: Int) {
        guard let s = streams[stream] else { session.consume(stream: stream, n); return }
        s.requestData(p, n)
    }

    func h2DataEnd(stream: Int32) { streams[stream]?.requestEnded() }

    func h2StreamClosed(stream: Int32, error: UInt32) {
        guard let s = streams.removeValue(forKey: stream) else { return }
        if error != 0 { s.abort(flag: .downstreamConnectionTermination) } else { s.closedNormally() }
        recycle(s)
        if streams.isEmpty { conn.h2WentIdle() }
    }

    /// Rapid-reset accounting: only resets the client sent, for streams it had not received a
    /// complete response on (the proxy's own resets never count).
    func h2PeerReset(stream: Int32, error: UInt32) {
        guard let s = streams[stream], !s.isFinished else { return }
        let now = worker.loop.now
        if now &- resetWindowStart > 1_000_000_000 { resetWindowStart = now; resetsInWindow = 0 }
        resetsInWindow += 1
        if resetsInWindow > H2ServerHandler.maxPrematureResetsPerSecond && !calmedDown {
            calmedDown = true
            worker.stats.inc(.http2RapidResetClosures)
            worker.logRejection("http2", "HTTP/2 client reset \(resetsInWindow) streams within a second: closing the connection (rapid reset)")
            // Acted on at the next flush, outside nghttp2's callbacks.
            conn.requestFlush()
        }
    }

    private func recycle(_ s: H2DownstreamStream) {
        if !blocked.isEmpty { blocked.removeAll { $0 === s } }
        if let st = s as? H2InboundStream, worker.h2StreamPool.count < 256 { worker.h2StreamPool.append(st) }
        else if let b = s as? H2BridgeStream, worker.h2BridgePool.count < 256 { worker.h2BridgePool.append(b) }
    }

    private var calmedDown = false
    private var goneAway = false

    func h2GoAway(lastStream: Int32, error: UInt32) {}
}

/// One HTTP/2 request on the inbound side, carried to the app over HTTP/1.1.
final class H2InboundStream: UpstreamOwner, H2DownstreamStream {
    unowned(unsafe) private(set) var handler: H2ServerHandler
    private(set) var id: Int32
    private var worker: Worker { handler.worker }
    private var session: HTTP2Session { handler.session }

    // Request head being collected: pseudo-header values are kept in `pseudo` as ranges.
    private let pseudo = ByteBuffer(capacity: 256)
    private var method = 0..<0
    private var path = 0..<0
    private var authority = 0..<0
    private let fields = ByteBuffer(capacity: 1024)
    private var contentLength: Int64 = -1
    private var hasRequestID = false
    private var badRequest = false
    /// The HTTP/1.1 request as sent to the app (head, then body bytes kept until the response).
    private let head = ByteBuffer(capacity: 1024)
    private let pendingBody = ByteBuffer(capacity: 1024)
    /// Trailers: the client's (sent to the app in the last chunk) and the app's (sent as HTTP/2 trailers).
    private let reqTrailers = ByteBuffer(capacity: 64)
    private let respTrailers = ByteBuffer(capacity: 64)
    private var chunked = false
    private var requestEnd = false
    private var requestEndSent = false
    private var upstream: UpstreamConnection?
    private var pool: EndpointPool?
    private var ready = false
    private var retriesLeft = 2
    // Response.
    private var responseStarted = false
    private var status = 0
    private var dechunker = ChunkedDecoder()
    private var finished = false
    private var flag: ResponseFlag = .none
    private var start: UInt64
    private var requestBytes: UInt64 = 0
    private var responseBytes: UInt64 = 0
    private var recorded = false
    /// The caller for metrics (identity and, when sent, workload metadata).
    private var peer = 0
    private var headDone = false
    /// The response was completed (or answered locally).
    var isFinished: Bool { finished }

    init(handler: H2ServerHandler, id: Int32) {
        self.handler = handler
        self.id = id
        self.start = handler.worker.loop.now
        self.peer = handler.peerIndex
    }

    /// Makes a finished stream object new again for another stream (per-worker reuse: a stream
    /// costs no allocation once the pool is warm).
    func reuse(handler: H2ServerHandler, id: Int32) {
        self.handler = handler
        self.id = id
        start = handler.worker.loop.now
        pseudo.clear(); fields.clear(); head.clear(); pendingBody.clear(); reqTrailers.clear(); respTrailers.clear()
        method = 0..<0; path = 0..<0; authority = 0..<0
        contentLength = -1
        hasRequestID = false; badRequest = false; chunked = false
        requestEnd = false; requestEndSent = false
        upstream = nil; pool = nil; ready = false; retriesLeft = 2
        responseStarted = false; status = 0; dechunker.reset(); finished = false; flag = .none
        requestBytes = 0; responseBytes = 0; recorded = false
        peer = handler.peerIndex
        headDone = false
    }

    private func keep(_ v: UnsafePointer<UInt8>, _ vl: Int) -> Range<Int> {
        let s = pseudo.writeIndex
        pseudo.append(v, vl)
        return s..<(s + vl)
    }

    private func appendRange(_ out: ByteBuffer, _ r: Range<Int>) { out.append(from: pseudo, r.lowerBound, r.upperBound) }

    // MARK: request

    func header(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int) -> Bool {
        requestBytes &+= UInt64(nl + vl + 4)
        if headDone {
            // Request trailers: sent in the last chunk when the body goes chunked (no
            // content-length); never merged into the head.
            if nl > 0 && n[0] != UInt8(ascii: ":") && !ASCII.equalsLower(n, nl, "content-length") && !ASCII.equalsLower(n, nl, "transfer-encoding") {
                for i in 0..<vl where v[i] == 13 || v[i] == 10 || v[i] == 0 { return true }
                reqTrailers.append(n, nl); reqTrailers.append(": "); reqTrailers.append(v, vl); reqTrailers.append("\r\n")
            }
            return true
        }
        if nl > 0 && n[0] == UInt8(ascii: ":") {
            if ASCII.equalsLower(n, nl, ":method") { method = keep(v, vl) }
            else if ASCII.equalsLower(n, nl, ":path") { path = keep(v, vl) }
            else if ASCII.equalsLower(n, nl, ":authority") { authority = keep(v, vl) }
            return true
        }
        // Connection-specific fields never reach the app; the caller's XFCC is replaced by ours.
        if ASCII.equalsLower(n, nl, "connection") || ASCII.equalsLower(n, nl, "keep-alive") || ASCII.equalsLower(n, nl, "proxy-connection")
            || ASCII.equalsLower(n, nl, "transfer-encoding") || ASCII.equalsLower(n, nl, "upgrade") || ASCII.equalsLower(n, nl, "x-forwarded-client-cert") {
            return true
        }
        if ASCII.equalsLower(n, nl, "host") {
            if authority.isEmpty { authority = keep(v, vl) }
            return true
        }
        if nl == 20 && ASCII.equalsLower(n, nl, "x-mesh-peer-metadata") {
            peer = handler.peerIndex(metadata: v, vl)
            return true
        }
        if ASCII.equalsLower(n, nl, "content-length") {
            var x: Int64 = 0
            if vl == 0 || vl > 18 { badRequest = true; return true }
            for i in 0..<vl {
                let c = v[i]
                if c < 48 || c > 57 { badRequest = true; return true }
                x = x * 10 + Int64(c - 48)
            }
            contentLength = x
        }
        if ASCII.equalsLower(n, nl, "x-request-id") { hasRequestID = true }
        // Values with CR, LF or NUL would split the HTTP/1.1 head: refuse (nghttp2 already checks).
        for i in 0..<vl where v[i] == 13 || v[i] == 10 || v[i] == 0 { badRequest = true; return true }
        fields.append(n, nl)
        fields.append(": ")
        fields.append(v, vl)
        fields.append("\r\n")
        return true
    }

    func headersComplete(endStream: Bool) {
        headDone = true
        requestEnd = endStream
        if badRequest || method.isEmpty || path.isEmpty {
            worker.stats.inc(.badRequests)
            localReply(400, "malformed HTTP/2 request", flag: .downstreamProtocolError)
            return
        }
        if let az = worker.routing.snapshot.authz {
            let b = UnsafePointer(pseudo.base)
            let verdict = az.check(principal: handler.conn.tlsSession?.peerIdentityBytes ?? [],
                                   method: b + method.lowerBound, method.count,
                                   rawPath: b + path.lowerBound, path.count, scratch: worker.scratch)
            if verdict != .allowed { worker.stats.inc(verdict.counter); localReply(verdict.status, verdict.reason, flag: verdict.flag); return }
        }
        buildHead()
        connect()
    }

    private func buildHead() {
        let h = head
        h.clear()
        appendRange(h, method)
        h.append(UInt8(ascii: " "))
        appendRange(h, path)
        h.append(" HTTP/1.1\r\nhost: ")
        appendRange(h, authority)
        h.append("\r\n")
        h.append(from: fields, fields.readIndex, fields.writeIndex)
        if !requestEnd && contentLength < 0 { chunked = true; h.append("transfer-encoding: chunked\r\n") }
        if !hasRequestID {
            h.append("x-request-id: ")
            worker.appendRequestID(h)
            h.append("\r\n")
        }
        if let tls = handler.conn.tlsSession {
            h.append("x-forwarded-client-cert: ")
            h.append(worker.routing.snapshot.xfccPrefix)
            h.append(tls.peerCertHash)
            h.append(";URI=")
            h.append(tls.peerIdentityBytes)
            h.append("\r\n")
        }
        h.append("\r\n")
    }


    private func connect() {
        let routing = worker.routing!
        let snap = routing.snapshot
        let ci = snap.inboundCluster
        guard ci >= 0 else { localReply(503, "no local app", flag: .noRoute); return }
        let p = routing.pickEndpoint(cluster: ci, avoid: nil)
        pool = p
        guard let up = p.checkout(snap.clusters[ci], tlsContext: nil, fresh: false) else {
            connectFailed()
            return
        }
        up.owner = self
        upstream = up
        if up.isEstablished && up.state == .active { upstreamReady(up) }
    }

    private func connectFailed() {
        worker.stats.inc(.upstreamConnectFailures)
        if retriesLeft > 0 {
            retriesLeft -= 1
            worker.stats.inc(.retries)
            connect()
            return
        }
        localReply(503, "upstream connect error", flag: .upstreamConnectFailure)
    }

    func requestData(_ p: UnsafePointer<UInt8>, _ n: Int) {
        requestBytes &+= UInt64(n)
        if finished { session.consume(stream: id, n); return }
        if ready, let up = upstream, pendingBody.isEmpty, !up.isCongested {
            writeBody(up, p, n)
            session.consume(stream: id, n)
        } else {
            // Held until the app connection takes it; the stream window bounds how much.
            pendingBody.append(p, n)
        }
    }

    private func writeBody(_ up: UpstreamConnection, _ p: UnsafePointer<UInt8>, _ n: Int) {
        if chunked {
            let b = worker.scratch
            b.clear()
            b.appendHex(n)
            b.append("\r\n")
            up.send(b.readPointer, b.readableBytes)
            up.send(p, n)
            let crlf: StaticString = "\r\n"
            up.send(crlf.utf8Start, 2)
        } else {
            up.send(p, n)
        }
    }

    func requestEnded() {
        requestEnd = true
        sendRequestEnd()
    }

    func requestTrailersDone() {
        // Request trailers are not forwarded over HTTP/1.1 yet (apps behind h2 callers rarely use them).
        requestEnded()
    }

    private func sendRequestEnd() {
        guard ready, let up = upstream, pendingBody.isEmpty, requestEnd, !requestEndSent else { return }
        requestEndSent = true
        if chunked {
            let zero: StaticString = "0\r\n"
            up.send(zero.utf8Start, 3)
            if !reqTrailers.isEmpty { up.send(reqTrailers.readPointer, reqTrailers.readableBytes) }
            let crlf: StaticString = "\r\n"
            up.send(crlf.utf8Start, 2)
        }
    }

    private func flushPendingBody() {
        guard let up = upstream, ready else { return }
        if !pendingBody.isEmpty && !up.isCongested {
            let n = pendingBody.readableBytes
            writeBody(up, UnsafePointer(pendingBody.readPointer), n)
            pendingBody.clear()
            session.consume(stream: id, n)
            handler.conn.requestFlush()
        }
        sendRequestEnd()
    }

    // MARK: UpstreamOwner

    func upstreamReady(_ up: UpstreamConnection) {
        guard up === upstream else { return }
        ready = true
        up.prepareForRequest()
        up.send(head.readPointer, head.readableBytes)
        flushPendingBody()
    }

    func upstreamDrained() { flushPendingBody() }

    func upstreamInput(_ up: UpstreamConnection) {
        guard up === upstream else { return }
        if !up.headParsed {
            while !up.input.isEmpty {
                let r = up.parser.parseResponse(up.input.base, start: up.input.readIndex, end: up.input.writeIndex, into: &up.head)
                switch r {
                case .incomplete: return
                case .error:
                    abortUpstream()
                    localReply(502, "invalid response from the app", flag: .upstreamProtocolError)
                    return
                case .complete:
                    let st = up.head.status
                    up.input.consume(up.head.headEnd - up.input.readIndex)
                    up.parser.resetScan()
                    if st == 100 {
                        // 100 Continue reaches the caller (its Expect is answered by the app).
                        let c: StaticString = "100"
                        session.addHeader(":status", c.utf8Start, 3)
                        session.submitInformational(stream: id)
                        handler.conn.requestFlush()
                    }
                    if st < 200 { continue }
                    status = st
                    up.body.startResponse(up.head, requestMethod: methodKind)
                    dechunker.trailerSink = respTrailers
                    dechunker.reset()
                    submitResponseHead(up)
                    up.headParsed = true
                    break
                }
                if up.headParsed { break }
            }
            if !up.headParsed { return }
        }
        pumpResponse()
    }

    private var methodKind: HTTPMethod {
        method.count == 4 && ASCII.equalsLower(UnsafePointer(pseudo.base + method.lowerBound), 4, "head") ? .head : .get
    }

    private func submitResponseHead(_ up: UpstreamConnection) {
        let h = up.head
        let b = up.input.base
        var st: (UInt8, UInt8, UInt8) = (UInt8(48 + status / 100), UInt8(48 + (status / 10) % 10), UInt8(48 + status % 10))
        withUnsafeBytes(of: &st) { session.addHeader(":status", $0.baseAddress!.assumingMemoryBound(to: UInt8.self), 3) }
        // The head's bytes were consumed from up.input but are still in place (no compaction yet).
        for f in h.fields {
            switch f.kind {
            case .connection, .keepAlive, .proxyConnection, .transferEncoding, .upgrade, .te, .meshPeerMetadata: continue
            default: break
            }
            let nl = Int(f.nameEnd - f.lineStart)
            if nl > handler.lower.count { handler.lower = [UInt8](repeating: 0, count: nl) }
            handler.lower.withUnsafeMutableBufferPointer { lb in
                for i in 0..<nl { lb[i] = ASCII.lower(b[Int(f.lineStart) + i]) }
                session.addHeader(lb.baseAddress!, nl, b + Int(f.valueStart), Int(f.valueEnd - f.valueStart))
            }
            responseBytes &+= UInt64(f.lineEnd - f.lineStart)
        }
        let meta = worker.routing.snapshot.peerMetadata
        meta.withUnsafeBufferPointer { session.addHeader("x-mesh-peer-metadata", $0.baseAddress!, $0.count) }
        let noBody = up.body.isDone
        session.submitResponse(stream: id, endStream: noBody)
        responseStarted = true
        handler.conn.requestFlush()
        if noBody { responseComplete(up, reusable: true) }
    }

    func pumpResponse() {
        guard let up = upstream, up.headParsed, !finished else { return }
        while !up.input.isEmpty && !up.body.isDone {
            if session.pendingData(stream: id) >= 256 * 1024 || handler.congested {
                handler.block(self)
                return
            }
            if up.body.mode == .chunked {
                switch dechunker.next(UnsafePointer(up.input.readPointer), up.input.readableBytes) {
                case .data(let n):
                    session.sendData(stream: id, up.input.readPointer, n)
                    responseBytes &+= UInt64(n)
                    up.input.consume(n)
                case .framing(let n), .needMore(let n):
                    up.input.consume(n)
                    if n == 0 { break }
                case .end(let n):
                    up.input.consume(n)
                    _ = up.body.advance(UnsafePointer(up.input.readPointer), 0)
                    // Chunked trailers from the app become HTTP/2 trailers (names lowercased;
                    // connection-specific and framing fields never travel as trailers).
                    var any = false
                    TrailerLines.forEach(respTrailers) { n, nl, v, vl in
                        if ASCII.equalsLower(n, nl, "content-length") || ASCII.equalsLower(n, nl, "transfer-encoding")
                            || ASCII.equalsLower(n, nl, "connection") || ASCII.equalsLower(n, nl, "host") { return }
                        if nl > handler.lower.count { return }
                        handler.lower.withUnsafeMutableBufferPointer { lb in
                            for i in 0..<nl { lb[i] = ASCII.lower(n[i]) }
                            session.addHeader(lb.baseAddress!, nl, v, vl)
                        }
                        any = true
                    }
                    session.finishData(stream: id, withTrailers: any)
                    handler.conn.requestFlush()
                    responseComplete(up, reusable: true)
                    return
                case .error:
                    abortUpstream()
                    session.reset(stream: id, error: UInt32(NGHTTP2_INTERNAL_ERROR.rawValue))
                    return
                }
                continue
            }
            let adv = up.body.advance(UnsafePointer(up.input.readPointer), up.input.readableBytes)
            if adv.forward > 0 {
                session.sendData(stream: id, up.input.readPointer, adv.forward)
                responseBytes &+= UInt64(adv.forward)
                up.input.consume(adv.forward)
            }
            if adv.done || adv.forward == 0 { break }
        }
        handler.conn.requestFlush()
        if up.body.isDone {
            session.finishData(stream: id, withTrailers: false)
            responseComplete(up, reusable: true)
            return
        }
        if up.peerClosed && up.input.isEmpty {
            if up.body.finishAtClose() {
                session.finishData(stream: id, withTrailers: false)
                responseComplete(up, reusable: false)
            } else {
                abortUpstream()
                session.reset(stream: id, error: UInt32(NGHTTP2_INTERNAL_ERROR.rawValue))
            }
            return
        }
        up.resumeReading()
    }

    private func responseComplete(_ up: UpstreamConnection, reusable: Bool) {
        finished = true
        upstream = nil
        let snap = up.pool.routing.snapshot
        if reusable && requestEndSent && up.head.keepAlive && up.input.isEmpty && !up.peerClosed {
            up.pool.release(up, idleTimeout: snap.clusters[up.pool.cluster].idleTimeout,
                            maxRequests: snap.clusters[up.pool.cluster].maxRequestsPerConnection)
        } else {
            up.owner = nil
            up.closeNow()
        }
        worker.stats.countResponse(status)
        record()
    }

    func upstreamEOF(_ up: UpstreamConnection) {
        guard up === upstream else { up.closeNow(); return }
        if up.headParsed { pumpResponse(); return }
        abortUpstream()
        localReply(503, "upstream connection closed before response", flag: .upstreamConnectionTermination)
    }

    func upstreamClosed(_ up: UpstreamConnection, error: Int32, wasConnecting: Bool) {
        guard up === upstream else { return }
        upstream = nil
        ready = false
        if wasConnecting { connectFailed(); return }
        if !responseStarted {
            localReply(503, "upstream connection closed before response", flag: .upstreamConnectionTermination)
        } else {
            flag = .upstreamConnectionTermination
            session.reset(stream: id, error: UInt32(NGHTTP2_INTERNAL_ERROR.rawValue))
            handler.conn.requestFlush()
            record()
        }
    }

    // MARK: endings

    private func localReply(_ st: Int, _ body: StaticString, flag f: ResponseFlag) {
        guard !responseStarted else { return }
        returnCredit()
        flag = f
        status = st
        responseStarted = true
        finished = true
        worker.stats.inc(.localReplies)
        worker.stats.countResponse(st)
        session.submitLocalReply(stream: id, status: st, body: body, flag: f)
        responseBytes &+= UInt64(body.utf8CodeUnitCount + 1)
        handler.conn.requestFlush()
        record()
    }

    private func abortUpstream() {
        if let up = upstream { upstream = nil; up.owner = nil; up.closeNow() }
    }

    /// Body bytes received but never forwarded: give their flow-control credit back, or the
    /// connection's window shrinks for good.
    private func returnCredit() {
        if !pendingBody.isEmpty {
            session.consume(stream: id, pendingBody.readableBytes)
            pendingBody.clear()
        }
    }

    /// The client reset the stream or the connection went away.
    func abort(flag f: ResponseFlag) {
        abortUpstream()
        returnCredit()
        if !recorded { flag = f; record() }
    }

    func closedNormally() {
        if !finished { abortUpstream() }
        record()
    }

    private func record() {
        if recorded { return }
        recorded = true
        let key = MetricKey.make(inbound: true, route: MetricKey.inboundRoute, code: status, flag: flag, peer: peer)
        worker.metrics.record(key: key, durationMicros: (worker.loop.now &- start) / 1000, requestBytes: requestBytes, responseBytes: responseBytes)
        if let p = pool {
            p.counters.inc(.requests)
            if status >= 500 || status == 0 { p.counters.inc(.errors) }
        }
    }
}
