import CNghttp2
import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// One HTTP/2 stream from a client (inbound from a sidecar, or h2c from the local app): it reads
/// the request into its exchange's `request` through the header policy, passes DATA and trailers
/// on, and writes the exchange's response as HEADERS, DATA and trailers. Request body credit
/// goes back to the client only once the exchange took the bytes upstream. Stream objects (each
/// with its exchange) are pooled per worker.
final class H2ServerStream: DownstreamStream {
    unowned(unsafe) private(set) var handler: H2ServerHandler!
    private(set) var id: Int32 = 0
    let exchange: Exchange
    /// The exchange's request head and trailers (owned by the exchange, which this stream owns).
    private unowned(unsafe) let request: MessageHead
    private unowned(unsafe) let requestTrailers: MessageHead
    /// The same request head for the per-field path: a guaranteed reference without the retain
    /// and release that reading `request` costs on each field.
    private let requestRef: Unmanaged<MessageHead>
    /// The exchange is running (false before the head is complete and once it ended).
    private var active = false
    private var headDone = false
    private var headBytes = 0
    /// Request body bytes received whose flow-control credit was not returned yet.
    private var heldCredit = 0
    /// The response was completed, answered locally or the exchange ended otherwise.
    private(set) var isFinished = false
    // The handler's session and connection, held without reference counting: the handler
    // owns this stream while it runs, and both outlive it (hot path: no retain per call).
    private var sessionRef: Unmanaged<HTTP2Session>!
    private var connRef: Unmanaged<DownstreamConnection>!
    @inline(__always) private var session: HTTP2Session { sessionRef._withUnsafeGuaranteedRef { $0 } }
    @inline(__always) private func flush() { connRef._withUnsafeGuaranteedRef { $0.requestFlush() } }
    /// Response bytes one stream may have queued before its upstream stops being read (as many
    /// streams may wait on a zero window, this bounds what a client can make the proxy hold).
    static let window = 256 * 1024

    init(worker: Worker) {
        let e = Exchange(worker: worker)
        exchange = e
        request = e.request
        requestTrailers = e.requestTrailers
        requestRef = Unmanaged.passUnretained(e.request)
    }

    /// Takes a new stream (a pooled object starts over).
    func start(handler: H2ServerHandler, id: Int32) {
        self.handler = handler
        self.id = id
        sessionRef = Unmanaged.passUnretained(handler.session)
        connRef = Unmanaged.passUnretained(handler.conn)
        active = false
        headDone = false
        headBytes = 0
        heldCredit = 0
        isFinished = false
        exchange.request.reset()
        exchange.request.version = .http2
        exchange.requestTrailers.reset()
    }

    /// The object leaves the pool for good.
    func retire() { exchange.retire() }

    // MARK: request (from nghttp2, through the handler)

    func header(_ n: UnsafePointer<UInt8>, _ nl: Int, _ v: UnsafePointer<UInt8>, _ vl: Int) -> Bool {
        if headDone {
            HeaderPolicy.ingestTrailer(requestTrailers, n, nl, v, vl)
            return true
        }
        headBytes &+= nl + vl + 4
        requestRef._withUnsafeGuaranteedRef { r in
            if nl > 0 && n[0] == UInt8(ascii: ":") { HeaderPolicy.ingestPseudo(r, n, nl, v, vl) }
            else { HeaderPolicy.ingest(r, n, nl, v, vl) }
        }
        return true
    }

    func headersComplete(endStream: Bool) {
        if headDone {
            requestEnded()   // trailers
            return
        }
        headDone = true
        let r = exchange.request
        HeaderPolicy.completeRequest(r)
        active = true
        exchange.begin(self, inbound: handler.inbound, requestHasBody: !endStream, headBytes: headBytes, wantsUpgrade: false)
    }

    func requestData(_ p: UnsafePointer<UInt8>, _ n: Int) {
        guard active else { session.consume(stream: id, n); flush(); return }
        exchange.requestBody(p, n)
        heldCredit += n
        resumeRequestBody()
    }

    func requestEnded() {
        if active { exchange.requestEnd() }
    }

    /// The client reset the stream or the connection went away.
    func abort(flag: ResponseFlag) {
        returnCredit()
        isFinished = true
        if active { active = false; exchange.downstreamGone(flag: flag) }
    }

    /// nghttp2 closed the stream without an error (both sides ended).
    func closedNormally() {
        if active { active = false; exchange.downstreamGone(flag: .downstreamConnectionTermination) }
    }

    private func returnCredit() {
        if heldCredit > 0 {
            session.consume(stream: id, heldCredit)
            heldCredit = 0
            flush()
        }
    }

    /// The connection has room again (called by the handler for a blocked stream).
    func pumpResponse() { if active { exchange.downstreamDrained() } }

    // MARK: DownstreamStream

    var callerTLS: TLSSession? { connRef._withUnsafeGuaranteedRef { $0.tlsSession } }
    var callerPeer: Int { handler.peerIndex }
    var callerAddress: IPEndpoint? { handler.conn.callerAddress }
    var capturedDestination: IPEndpoint? { handler.conn.capturedDestination }

    func sendInformational(_ head: MessageHead) {
        H2Emitter.response(head, into: session)
        session.submitInformational(stream: id)
        flush()
    }

    func sendResponseHead(_ head: MessageHead, endStream: Bool, close: Bool) -> Int {
        H2Emitter.response(head, into: session)
        session.submitResponse(stream: id, endStream: endStream)
        flush()
        var n = 0
        for f in head.fields where f.forwarded { n &+= Int(f.name.length + f.value.length) + 4 }
        return n
    }

    func sendResponseBody(_ p: UnsafePointer<UInt8>, _ n: Int) {
        session.sendData(stream: id, p, n)
        flush()
    }

    func endResponse(trailers: MessageHead?) {
        if let t = trailers, !t.isEmpty {
            H2Emitter.fields(t, into: session)
            session.finishData(stream: id, withTrailers: true)
        } else {
            session.finishData(stream: id, withTrailers: false)
        }
        flush()
    }

    var responseCongested: Bool {
        if session.pendingData(stream: id) >= H2ServerStream.window || connRef._withUnsafeGuaranteedRef({ $0.isCongested }) {
            handler.block(self)
            return true
        }
        return false
    }

    func resumeRequestBody() {
        if heldCredit > 0 && exchange.wantsRequestBody { returnCredit() }
    }

    func noteActivity() {}

    func abortResponse(h2Error: UInt32) {
        session.reset(stream: id, error: h2Error)
        flush()
    }

    func exchangeFinished() {
        active = false
        isFinished = true
        returnCredit()
    }

    func startTunnel(_ up: UpstreamConnection, tcpKey: UInt64) -> Bool { false }
}
