import CNghttp2
import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// What one HTTP/2 stream to an upstream sidecar reports to the exchange that opened it.
protocol H2StreamOwner: AnyObject {
    /// One response header (pseudo-headers included); pointers valid during the call.
    func h2ResponseHeader(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int)
    /// A response header block is complete (`trailers`: after the body).
    func h2ResponseHeadersComplete(trailers: Bool, endStream: Bool)
    func h2ResponseData(_ p: UnsafePointer<UInt8>, _ n: Int)
    func h2ResponseEnd()
    /// The stream ended without a complete response: `refused` when the peer never processed it
    /// (REFUSED_STREAM, GOAWAY above its last stream, or the connection failed before it was sent).
    func h2StreamFailed(error: UInt32, refused: Bool)
    /// The stream has room for more request body.
    func h2StreamWritable()
    /// Add the request headers to `conn.session` and submit; returns the stream id (<= 0: failed).
    /// Nothing else may happen here: the stream is registered only after this returns.
    func h2Submit(_ conn: H2UpstreamConnection) -> Int32
    /// The stream is submitted and registered: the request body may follow.
    func h2Started()
    /// The stream this owner has open (0 before submit).
    var h2StreamID: Int32 { get }
}

/// An HTTP/2 connection from this worker to another sidecar (mTLS, ALPN h2) or to an h2c app
/// (prior knowledge), shared by many
/// exchanges: each request is a stream, up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS; when a
/// connection is full or going away the pool opens another. Idle (no stream) for the cluster's
/// idle timeout, it is closed.
final class H2UpstreamConnection: Connection, HTTP2SessionDelegate {
    unowned(unsafe) let pool: EndpointPool
    private(set) var session: HTTP2Session!
    private var owners: [Int32: H2UpstreamStream] = [:]
    /// Requests submitted before the connection was established wait here.
    private var waiting: [H2UpstreamStream] = []
    private(set) var goingAway = false
    /// The connection is to close once nghttp2's pending frames are queued (see `requestClose`).
    private var closeRequested = false
    /// The highest stream id submitted to the session.
    private var submittedThrough: Int32 = 0
    /// The highest stream id whose request frames were produced and queued for the socket. A
    /// stream above it never left this process, so if the connection ends it is refused: safe to
    /// retry on another connection.
    private var sentThrough: Int32 = 0
    /// Bytes of the peer's HTTP/2 reached this side (its connection preface, SETTINGS, comes
    /// first). A connection that ends before that most likely never reached the peer's HTTP/2
    /// session (a server that dropped the TLS handshake at its own timeout while this worker was
    /// too busy to finish it), but bytes can also sit unread when a write fails first: so only an
    /// idempotent request is retried on that evidence (`H2UpstreamStream.h2StreamFailed`).
    private(set) var peerSpoke = false
    /// The peer ended the connection (end of stream) during the TLS handshake: it accepted it and
    /// dropped it (its handshake timeout, while this worker was too busy to answer in time), so no
    /// request reached it. Not set for a refused connect, a TLS alert or a connect timeout.
    private(set) var peerEndedHandshake = false
    var peerIndex = 0
    /// Exchanges that stopped sending request body until frames leave (window or congestion).
    private var writeWaiters: [H2UpstreamStream] = []

    /// Calls `owner.h2StreamWritable()` once its stream's queued body has been framed below the
    /// low mark and the socket is not congested (never on a flush that made no room: no spin).
    func waitForWritable(_ owner: H2UpstreamStream) {
        if !writeWaiters.contains(where: { $0 === owner }) { writeWaiters.append(owner) }
    }

    static let lowMark = 128 * 1024

    private func wakeWriters() {
        if writeWaiters.isEmpty || isCongested || isClosed { return }
        var still: [H2UpstreamStream] = []
        var ready: [H2UpstreamStream] = []
        for o in writeWaiters {
            let sid = o.h2StreamID
            if sid > 0 && owners[sid] != nil && session.pendingData(stream: sid) >= H2UpstreamConnection.lowMark {
                still.append(o)
            } else if sid > 0 && owners[sid] != nil {
                ready.append(o)
            }
        }
        writeWaiters = still
        for o in ready { o.h2StreamWritable() }
    }

    private func dropWaiter(_ o: H2UpstreamStream) {
        if !writeWaiters.isEmpty { writeWaiters.removeAll { $0 === o } }
    }
    private var idleTimeout: UInt64
    /// Streams this connection may carry in its life (Istio's `maxRequestsPerConnection`, 0:
    /// unlimited) and the number opened so far: once spent, no new stream starts here, and the
    /// connection is closed (GOAWAY) when its last stream ends.
    private let maxStreams: Int
    private var streamsOpened = 0
    private var spent: Bool { maxStreams > 0 && streamsOpened >= maxStreams }

    init(pool: EndpointPool, fd: Int32, tls: TLSSession?, idleTimeout: UInt64, maxStreams: Int) {
        self.pool = pool
        self.idleTimeout = idleTimeout
        self.maxStreams = maxStreams
        super.init(loop: pool.worker.loop, fd: fd, security: tls, connecting: true)
        var settings = HTTP2Session.Settings()
        settings.maxConcurrentStreams = 100      // server push is off; this bounds the peer anyway
        session = HTTP2Session(role: .client, delegate: self, settings: settings)
    }

    /// Streams open or waiting to open.
    var load: Int { owners.count + waiting.count }

    /// True while no new stream may start here: GOAWAY sent or received, closing (requested,
    /// close_notify sent, lingering), closed, or the peer closed its side.
    var isRetiring: Bool { goingAway || closeRequested || isClosing || isClosed || peerClosed }

    /// True while another stream fits on this connection (never once it is retiring).
    var hasCapacity: Bool {
        if isRetiring || spent { return false }
        let peerMax = isEstablished ? Int(min(session.peerMaxConcurrentStreams, 1000)) : 100
        return load < peerMax
    }

    /// Opens a stream for `owner`, which submits its request now or once the connection is up.
    /// False (a connect failure for the caller, which retries) if the connection is retiring.
    func open(_ owner: H2UpstreamStream) -> Bool {
        if isRetiring || spent { return false }
        streamsOpened += 1
        loop.setDeadline(self, isEstablished ? 0 : deadline)
        if !isEstablished { waiting.append(owner); return true }
        let id = owner.h2Submit(self)
        if id <= 0 { return false }
        owners[id] = owner
        if id > submittedThrough { submittedThrough = id }
        requestFlush()
        owner.h2Started()
        return true
    }

    /// The owner gives up its stream, whether already submitted or still waiting for the
    /// connection (a waiting entry left behind would submit for a later request of the same owner).
    func cancel(_ owner: H2UpstreamStream, stream: Int32) {
        if stream > 0 { forget(stream: stream); return }
        if let i = waiting.firstIndex(where: { $0 === owner }) { waiting.remove(at: i); armIdle() }
        dropWaiter(owner)
    }

    func forget(stream: Int32) {
        if let o = takeOwner(stream) {
            dropWaiter(o)
            session.reset(stream: stream, error: UInt32(NGHTTP2_CANCEL.rawValue))
            requestFlush()
            armIdle()
        } else if stream > 0 {
            session.reset(stream: stream, error: UInt32(NGHTTP2_CANCEL.rawValue))   // never left unreset
            requestFlush()
        }
    }

    /// The owner is done with a stream whose request and response both ended: it closes by
    /// itself; no event of it reaches the owner again (the owner may take another stream).
    func detach(stream: Int32) {
        if let o = takeOwner(stream) {
            dropWaiter(o)
            armIdle()
        }
    }

    /// The owner of `stream`, if it still owns it (an owner that moved to another stream is not).
    @inline(__always) private func owner(_ stream: Int32) -> H2UpstreamStream? {
        if stream == lastOwnerID, let u = lastOwner {
            let o = u.takeUnretainedValue()
            return o.h2StreamID == stream ? o : nil
        }
        guard let o = owners[stream], o.h2StreamID == stream else { return nil }
        lastOwnerID = stream
        lastOwner = Unmanaged.passUnretained(o)
        return o
    }

    /// The entry `owner(_:)` found last: nghttp2 delivers a response's HEADERS, its fields, DATA
    /// and END_STREAM in a row, so the events after the first skip the dictionary (its hashing
    /// showed in the per-request profile). Always an entry of `owners`, which holds it: cleared
    /// whenever one leaves it (`takeOwner`, `dropAllOwners`), so it needs no reference count.
    private var lastOwnerID: Int32 = 0
    private var lastOwner: Unmanaged<H2UpstreamStream>? = nil

    /// Removes and returns the owner of `stream` (and the lookup cache's entry for it).
    @inline(__always) private func takeOwner(_ stream: Int32) -> H2UpstreamStream? {
        if stream == lastOwnerID { lastOwnerID = 0; lastOwner = nil }
        return owners.removeValue(forKey: stream)
    }

    private func dropAllOwners() {
        lastOwnerID = 0
        lastOwner = nil
        owners.removeAll()
    }

    /// A stream left this connection: a request queued for the cluster may take its place
    /// (woken at the end of the loop iteration, outside nghttp2's callbacks).
    private var slotFreed = false

    private func armIdle() {
        if !slotFreed && pool.routing.clusterState[pool.cluster].pendingCount > 0 {
            slotFreed = true
            loop.markDirty(self)
        }
        if owners.isEmpty && waiting.isEmpty && isEstablished {
            if spent && !goingAway {
                goingAway = true
                session.goAway()
                requestClose()
                return
            }
            loop.setDeadline(self, loop.now + idleTimeout)
            if pool.worker.draining || goingAway || pool.routing.retired { requestClose() }
        }
    }

    /// Closes the connection gracefully at this iteration's flush: the frames nghttp2 still holds
    /// (a GOAWAY, RST_STREAM, WINDOW_UPDATE) are produced and encrypted first, then TLS
    /// close_notify. Closing at once would send close_notify first, and the next flush's
    /// SSL_write of those frames would fail ("protocol is shutdown"). Safe inside nghttp2's
    /// callbacks (which must not produce frames). No stream is opened here from now on.
    func requestClose() {
        if closeRequested || isClosed { return }
        closeRequested = true
        requestFlush()
    }

    // MARK: connection events

    override func onEstablished() {
        loop.setDeadline(self, 0)
        if let tls = security as? TLSSession {
            pool.worker.stats.inc(.tlsHandshakesOK)
            if tls.resumed { pool.worker.stats.inc(.tlsSessionsResumed) }
            peerIndex = pool.worker.metrics.peers.intern(tls.peerIdentity)
        }
        if let tls = security as? TLSSession, tls.alpn != "h2" {
            // The peer does not speak HTTP/2: use HTTP/1.1 to this endpoint from now on.
            pool.h2Refused = true
            Log.warn("upstream", "\(pool.address) did not negotiate h2 (ALPN \"\(tls.alpn)\"); using HTTP/1.1")
            failAll(refused: true)
            closeNow()
            return
        }
        pool.worker.stats.inc(.http2UpstreamConnections)
        let w = waiting
        waiting.removeAll()
        for owner in w {
            let id = owner.h2Submit(self)
            if id > 0 {
                owners[id] = owner
                if id > submittedThrough { submittedThrough = id }
                owner.h2Started()
            } else {
                owner.h2StreamFailed(error: 0, refused: true)
            }
        }
        requestFlush()
        armIdle()
    }

    override func onInput() {
        peerSpoke = true
        if !session.receive(input) {
            Log.warn("upstream", "HTTP/2 connection error from \(pool.address): \(session.lastError)")
            goingAway = true
            requestClose()   // nghttp2's GOAWAY goes out before close_notify
            failAll(refused: false)
            return
        }
        if session.wantsWrite { requestFlush() }
    }

    override func onFlush() {
        // Nothing is produced once close_notify went out (isClosing): TLS refuses to write then.
        if isEstablished && !isClosing {
            let out = pool.worker.frameScratch
            out.clear()
            session.produce(into: out)
            if !out.isEmpty { send(out.readPointer, out.readableBytes) }
            // Every stream submitted so far is framed and queued: from here on it may reach the
            // peer, so a failure of the connection no longer counts it as refused.
            sentThrough = submittedThrough
            if closeRequested { closeAfterFlush() }   // encrypts what was queued, then close_notify
        } else if closeRequested && !isClosing {
            closeAfterFlush()
        }
        super.onFlush()
        wakeWriters()
        if slotFreed {
            slotFreed = false
            pool.routing.poolSlotFreed(cluster: pool.cluster)
        }
    }

    override func onDrained() { wakeWriters() }

    override func onPeerClosed(error: Int32) {
        if error == -1 {
            pool.worker.stats.inc(.tlsHandshakesFailed)
            Log.warn("upstream", "TLS with \(pool.address) failed: \(security?.failureReason ?? "")")
        }
        let neverUp = !isEstablished
        if neverUp && error == 0 { peerEndedHandshake = true }
        closeNow()
        failAll(refused: neverUp)
    }

    override func onClosed() {
        pool.h2Closed(self)
        failAll(refused: false)
    }

    override func onDeadline(now: UInt64) {
        if !isEstablished {
            pool.worker.stats.inc(.upstreamConnectTimeouts)
            closeNow()
            failAll(refused: true)
        } else if owners.isEmpty && waiting.isEmpty {
            goingAway = true
            session.goAway()
            requestClose()
        }
    }

    /// Fails every stream of a connection that ended: waiting ones and those whose frames never
    /// left this process (above `sentThrough`) are refused, so their exchanges retry elsewhere;
    /// the others are refused only when `refused` says the peer never processed any (a peer
    /// that sent no HTTP/2 byte, `peerSpoke`, is judged by the owner: see `h2StreamFailed`).
    private func failAll(refused: Bool) {
        let w = waiting
        waiting.removeAll()
        let o = owners
        dropAllOwners()
        writeWaiters.removeAll()
        for owner in w { owner.h2StreamFailed(error: 0, refused: true) }
        for (id, owner) in o where owner.h2StreamID == id { owner.h2StreamFailed(error: 0, refused: refused || id > sentThrough) }
    }

    // MARK: HTTP2SessionDelegate

    /// Finds the block's owner once, for its fields (`h2Header`'s fast path).
    func h2BeginHeaders(stream: Int32) { _ = owner(stream) }

    func h2Header(stream: Int32, name: UnsafePointer<UInt8>, nameLength: Int, value: UnsafePointer<UInt8>, valueLength: Int) -> Bool {
        if stream == lastOwnerID, let u = lastOwner {
            // An entry of `owners` (which holds it); taking a field runs nothing that could remove it.
            u._withUnsafeGuaranteedRef { o in
                if o.h2StreamID == stream { o.h2ResponseHeader(name, nameLength, value, valueLength) }
            }
            return true
        }
        owner(stream)?.h2ResponseHeader(name, nameLength, value, valueLength)
        return true
    }

    func h2HeadersComplete(stream: Int32, trailers: Bool, endStream: Bool) {
        owner(stream)?.h2ResponseHeadersComplete(trailers: trailers, endStream: endStream)
    }

    func h2Data(stream: Int32, _ p: UnsafePointer<UInt8>, _ n: Int) {
        if let o = owner(stream) { o.h2ResponseData(p, n) } else { session.consume(stream: stream, n) }
    }

    func h2DataEnd(stream: Int32) { owner(stream)?.h2ResponseEnd() }

    func h2StreamClosed(stream: Int32, error: UInt32) {
        if let o = takeOwner(stream), o.h2StreamID == stream {
            dropWaiter(o)
            if error != 0 { o.h2StreamFailed(error: error, refused: error == UInt32(NGHTTP2_REFUSED_STREAM.rawValue)) }
        }
        armIdle()
    }

    func h2GoAway(lastStream: Int32, error: UInt32) {
        goingAway = true
        // Streams above lastStream were never processed: their exchanges may retry elsewhere.
        for (id, o) in owners where id > lastStream {
            _ = takeOwner(id)
            guard o.h2StreamID == id else { continue }
            dropWaiter(o)
            o.h2StreamFailed(error: error, refused: true)
        }
        armIdle()
    }
}
