import CNghttp2
import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// An exchange's attempt as one stream on a shared HTTP/2 connection (to another sidecar over
/// mTLS, or to an h2c app): the request head goes out as HEADERS from the exchange's `request`,
/// the body as DATA (its trailers as a trailing HEADERS), and the response comes back into the
/// exchange's `response` through the header policy. Flow-control credit for response bytes is
/// returned only once the client took them. Owned by its exchange and reused.
final class H2UpstreamStream: H2StreamOwner, UpstreamStream {
    unowned(unsafe) let exchange: Exchange
    private var conn: H2UpstreamConnection?
    private var sid: Int32 = 0
    /// Response bytes passed on but not yet credited back to the upstream (the client is slow).
    private var heldCredit = 0
    /// The final response head arrived (later header blocks are trailers).
    private var headDone = false
    /// A header block is being received (its first field resets the head it fills).
    private var inBlock = false
    private var worker: Worker { exchange.worker }
    /// The most request body one stream may have queued before the exchange waits.
    static let bodyQueueLimit = 256 * 1024

    /// The exchange's response head, which outlives this stream (the exchange owns both): held
    /// without reference counting for the per-field path.
    private let responseRef: Unmanaged<MessageHead>

    init(exchange: Exchange) {
        self.exchange = exchange
        responseRef = Unmanaged.passUnretained(exchange.response)
    }

    var tlsSession: TLSSession? { conn?.security as? TLSSession }
    var h2StreamID: Int32 { sid }

    func open(_ pool: EndpointPool, _ c: ProxySnapshot.Cluster, _ snapshot: ProxySnapshot, fresh: Bool) -> UpstreamOpen {
        let ctx: TLSContext? = c.origination?.context ?? (c.mutualTLS ? snapshot.clientTLSH2 : nil)
        guard let h = pool.checkoutH2(c, tlsContext: ctx) else {
            return pool.lastError == 0 ? .overflow : .failed
        }
        conn = h
        sid = 0
        heldCredit = 0
        headDone = false
        inBlock = false
        if !h.open(self) { conn = nil; return .failed }
        return .opened
    }

    // MARK: request

    func h2Submit(_ h: H2UpstreamConnection) -> Int32 {
        guard h === conn else { return -1 }
        let s = h.session!
        H2Emitter.request(exchange.request, into: s)
        let id = s.submitRequest(endStream: !exchange.requestHasBody)
        if id > 0 { sid = id }
        return id
    }

    func h2Started() {
        guard let h = conn, sid > 0 else { return }
        exchange.upstreamStarted(peer: h.peerIndex)
    }

    func sendBody(_ p: UnsafePointer<UInt8>, _ n: Int) {
        guard let h = conn, sid > 0 else { return }
        h.session.sendData(stream: sid, p, n)
        h.requestFlush()
    }

    func endBody(trailers: MessageHead?) {
        guard let h = conn, sid > 0 else { return }
        if let t = trailers, !t.isEmpty {
            H2Emitter.fields(t, into: h.session)
            h.session.finishData(stream: sid, withTrailers: true)
        } else {
            h.session.finishData(stream: sid, withTrailers: false)
        }
        h.requestFlush()
    }

    /// True while the stream's queued body or the connection is over its limit; the connection
    /// then calls `h2StreamWritable` once frames left.
    var bodyCongested: Bool {
        guard let h = conn, sid > 0 else { return true }
        if h.session.pendingData(stream: sid) >= H2UpstreamStream.bodyQueueLimit || h.isCongested {
            h.waitForWritable(self)
            return true
        }
        return false
    }

    func h2StreamWritable() { exchange.upstreamWritable() }

    // MARK: response

    func h2ResponseHeader(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int) {
        if headDone {
            if !inBlock { inBlock = true; exchange.responseTrailers.reset() }
            HeaderPolicy.ingestTrailer(exchange.responseTrailers, n, nl, v, vl)
            return
        }
        responseRef._withUnsafeGuaranteedRef { r in
            if !inBlock { inBlock = true; r.reset(); r.version = .http2 }
            if nl > 0 && n[0] == UInt8(ascii: ":") { HeaderPolicy.ingestPseudo(r, n, nl, v, vl) }
            else { HeaderPolicy.ingest(r, n, nl, v, vl) }
        }
    }

    func h2ResponseHeadersComplete(trailers: Bool, endStream: Bool) {
        inBlock = false
        guard conn != nil else { return }
        if headDone {
            if endStream { exchange.responseEnd() }
            return
        }
        if exchange.response.status < 200 {
            exchange.responseInformational()
            return
        }
        headDone = true
        exchange.responseHead(endStream: endStream)
    }

    func h2ResponseData(_ p: UnsafePointer<UInt8>, _ n: Int) {
        guard let h = conn else { return }
        // The exchange owns this stream: a guaranteed reference, not a retain per use of `exchange`.
        Unmanaged.passUnretained(exchange)._withUnsafeGuaranteedRef { ex in
            ex.noteActivity()
            ex.responseData(p, n)
            if ex.downstreamCongested {
                heldCredit += n
            } else {
                h.session.consume(stream: sid, n)
                h.requestFlush()
            }
        }
    }

    func resumeResponse() {
        guard heldCredit > 0, let h = conn, sid > 0, !exchange.downstreamCongested else { return }
        h.session.consume(stream: sid, heldCredit)
        heldCredit = 0
        h.requestFlush()
    }

    func h2ResponseEnd() {
        guard conn != nil else { return }
        exchange.responseTrailers.reset()
        exchange.responseEnd()
    }

    func h2StreamFailed(error: UInt32, refused: Bool) {
        guard let h = conn else { return }
        returnCredit()
        conn = nil
        sid = 0
        if !h.isEstablished {
            // A connection that never got established (connect timeout, refused, TLS failure) is
            // a connect failure (UF), as on the HTTP/1.1 path, not a reset.
            worker.stats.inc(.upstreamConnectFailures)
            exchange.upstreamFailed(.connect, unstarted: h.peerEndedHandshake)
            return
        }
        // A connection whose peer never spoke HTTP/2 (not even its SETTINGS, its first frame)
        // most likely failed before the peer saw the request: one retry that spends no retry
        // budget, as for the HTTP/1.1 keep-alive race, but only for an idempotent request (bytes
        // the peer sent may still have been unread here when the connection failed).
        let unstarted = !h.peerSpoke && exchange.idempotent
        exchange.upstreamFailed(refused ? .refused : .reset, unstarted: unstarted, h2Error: error)
    }

    private func returnCredit() {
        if heldCredit > 0, let h = conn, sid > 0 {
            h.session.consume(stream: sid, heldCredit)
            h.requestFlush()
        }
        heldCredit = 0
    }

    func cancel() {
        guard let h = conn else { return }
        returnCredit()
        h.cancel(self, stream: sid)
        conn = nil
        sid = 0
    }

    /// The response is complete; a request still being sent is cut short (RST_STREAM CANCEL).
    /// Either way the connection forgets this owner for the stream.
    func release() {
        guard let h = conn else { return }
        returnCredit()
        if sid > 0 {
            if exchange.upstreamRequestEnded { h.detach(stream: sid) } else { h.forget(stream: sid) }
        }
        conn = nil
        sid = 0
    }

}
