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
    private var retriesLeft = 2
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
        requestEnd = false; requestFinishedUp = false; retriesLeft = 2
        cluster = -1; route = MetricKey.noRoute; heldDownCredit = 0; heldUpCredit = 0
        upstreamPeer = 0; callerPeer = -1; sentData = false; headDone = false; grpc = -1
        status = 0; responseStarted = false; finished = false; flag = .none
        requestBytes = 0; responseBytes = 0; recorded = false
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
        let snap = handler.conn.snapshotInUse
        if inbound {
            cluster = snap.inboundCluster
            route = MetricKey.inboundRoute
        } else {
            let r = authority.withUnsafeBufferPointer { b -> Int in
                guard let p = b.baseAddress else { return -1 }
                return snap.hosts.lookup(p, HostTable.hostLength(p, b.count))
            }
            if r < 0 {
                worker.stats.inc(.noRoute)
                localReply(404, "no route for this host", flag: .noRoute)
                return
            }
            route = r
            cluster = snap.routes[r].cluster
        }
        if cluster < 0 { localReply(503, "no local app", flag: .noRoute); return }
        connect()
    }

    private func connect() {
        let snap = handler.conn.snapshotInUse
        let c = snap.clusters[cluster]
        let p = worker.pickEndpoint(cluster: cluster, avoid: pool)
        pool = p
        guard c.http2 else { localReply(502, "the upstream of this route does not speak HTTP/2", flag: .upstreamProtocolError); return }
        let ctx: TLSContext? = c.mutualTLS ? snap.clientTLSH2 : nil
        guard let h = p.checkoutH2(c, tlsContext: ctx) else {
            if p.lastError == 0 { localReply(503, "upstream connection limit reached", flag: .upstreamOverflow) } else { connectFailed() }
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
        if retriesLeft > 0 {
            retriesLeft -= 1
            worker.stats.inc(.retries)
            connect()
            return
        }
        localReply(503, "upstream connect error", flag: .upstreamConnectFailure)
    }

    func h2Submit(_ conn: H2UpstreamConnection) -> Int32 {
        guard conn === upstream, !finished else { return -1 }
        let s = conn.session!
        request.replay(into: s)
        // addHeader copies its bytes, so the worker's scratch buffer serves both values.
        let scratch = worker.scratch
        if !hasRequestID {
            scratch.clear()
            worker.appendRequestID(scratch)
            s.addHeader("x-request-id", scratch.readPointer, scratch.readableBytes)
        }
        if !inbound && conn.security != nil {
            let meta = handler.conn.snapshotInUse.peerMetadata
            meta.withUnsafeBufferPointer { s.addHeader("x-mesh-peer-metadata", $0.baseAddress!, $0.count) }
        }
        if inbound, let tls = handler.conn.security as? TLSSession {
            scratch.clear()
            scratch.append(handler.conn.snapshotInUse.xfccPrefix)
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
            down.consume(stream: id, pending.readableBytes)
            pending.clear()
            sentData = true
            handler.conn.requestFlush()
        }
        if requestEnd && !requestFinishedUp { finishUpstreamRequest(s, sid) }
        return sid
    }


    func requestData(_ p: UnsafePointer<UInt8>, _ n: Int) {
        requestBytes &+= UInt64(n)
        guard let h = upstream, upStream > 0, !finished else {
            if finished { down.consume(stream: id, n) } else { pending.append(p, n) }
            return
        }
        h.session.sendData(stream: upStream, p, n)
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
        let d = heldDownCredit + pending.readableBytes
        if d > 0 { down.consume(stream: id, d); heldDownCredit = 0; pending.clear() }
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
        responseBytes &+= UInt64(nl + vl + 4)
        if grpc >= 0 && nl == 11 && ASCII.equalsLower(n, nl, "grpc-status") { grpc = MetricKey.grpcStatus(v, vl) }
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
        response.replay(into: down)
        response.clear()
        if inbound {
            let meta = handler.conn.snapshotInUse.peerMetadata
            meta.withUnsafeBufferPointer { down.addHeader("x-mesh-peer-metadata", $0.baseAddress!, $0.count) }
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
        guard upstream != nil, !finished else { return }
        returnCredit()
        upstream = nil
        upStream = 0
        if !responseStarted {
            if refused && !sentData { connectFailed(); return }
            localReply(503, "upstream reset before response", flag: .upstreamConnectionTermination)
            return
        }
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
