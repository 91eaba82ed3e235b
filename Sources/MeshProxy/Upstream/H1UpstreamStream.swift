import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS

/// An exchange's attempt over a pooled HTTP/1.1 connection (to the local app, or to another
/// sidecar when the hop is HTTP/1.1): writes the request head and body (chunked when its length
/// is unknown), parses the response into the exchange's `response` with the header policy, and
/// passes the body on without its framing. Owned by its exchange and reused.
final class H1UpstreamStream: UpstreamOwner, UpstreamStream {
    unowned(unsafe) let exchange: Exchange
    private var conn: UpstreamConnection?
    private var chunkedRequest = false
    private var decoder = BodyDecoder()
    private let trailerLines = ByteBuffer(lazyCapacity: 128)
    private var eofSeen = false
    private var headDone = false
    private var worker: Worker { exchange.worker }

    init(exchange: Exchange) { self.exchange = exchange }

    var tlsSession: TLSSession? { conn?.security as? TLSSession }

    func open(_ pool: EndpointPool, _ c: ProxySnapshot.Cluster, _ snapshot: ProxySnapshot, fresh: Bool) -> UpstreamOpen {
        guard let up = pool.checkout(c, tlsContext: snapshot.clientTLS, fresh: fresh) else {
            return pool.lastError == 0 ? .overflow : .failed
        }
        up.owner = self
        conn = up
        eofSeen = false
        headDone = false
        if up.isEstablished && up.state == .active { upstreamReady(up) }
        return .opened
    }

    // MARK: request

    func upstreamReady(_ up: UpstreamConnection) {
        guard up === conn else { return }
        up.prepareForRequest()
        let req = exchange.request
        let out = worker.scratch
        out.clear()
        H1Writer.requestStart(req, into: out)
        chunkedRequest = exchange.requestHasBody && req.contentLength < 0
        if chunkedRequest { out.append("transfer-encoding: chunked\r\n") }
        if exchange.wantsUpgrade, req.upgradeIndex >= 0 {
            let f = req.fields[req.upgradeIndex]
            out.append("upgrade: ")
            out.append(req.pointer(f.value), Int(f.value.length))
            out.append("\r\nconnection: upgrade\r\n")
        }
        out.append("\r\n")
        up.send(out.readPointer, out.readableBytes)
        exchange.upstreamStarted(peer: up.peerIndex)
    }

    func sendBody(_ p: UnsafePointer<UInt8>, _ n: Int) {
        guard let up = conn, n > 0 else { return }
        if chunkedRequest {
            let out = worker.scratch
            out.clear()
            H1Writer.chunkHeader(n, into: out)
            up.send(out.readPointer, out.readableBytes)
            up.send(p, n)
            let crlf: StaticString = "\r\n"
            up.send(crlf.utf8Start, 2)
        } else {
            up.send(p, n)
        }
    }

    func endBody(trailers: MessageHead?) {
        guard let up = conn, chunkedRequest else { return }
        let out = worker.scratch
        out.clear()
        H1Writer.lastChunk(trailers, into: out)
        up.send(out.readPointer, out.readableBytes)
    }

    var bodyCongested: Bool { conn?.isCongested ?? true }

    func upstreamDrained() { exchange.upstreamWritable() }

    // MARK: response

    func upstreamInput(_ up: UpstreamConnection) {
        guard up === conn else { return }
        // The exchange owns this stream: one guaranteed reference instead of a retain and
        // release for each use of `exchange` on the response path.
        Unmanaged.passUnretained(exchange)._withUnsafeGuaranteedRef { upstreamInput(up, $0) }
    }

    private func upstreamInput(_ up: UpstreamConnection, _ exchange: Exchange) {
        exchange.noteActivity()
        if !headDone {
            while !up.input.isEmpty {
                up.gotResponseBytes = true
                switch up.parser.parseResponse(up.input.base, start: up.input.readIndex, end: up.input.writeIndex, into: &up.head) {
                case .incomplete:
                    return
                case .error(let e):
                    conn = nil
                    up.owner = nil
                    up.closeNow()
                    exchange.upstreamProtocolError(e.reason)
                    return
                case .complete:
                    readHead(up)
                    up.input.consume(up.head.headEnd - up.input.readIndex)
                    up.parser.resetScan()
                    let st = up.head.status
                    if st == 101 {
                        conn = nil
                        exchange.switchingProtocols(up)
                        return
                    }
                    if st < 200 {
                        exchange.responseInformational()
                        continue
                    }
                    decoder.trailers = trailerLines
                    decoder.startResponse(up.head, requestMethod: exchange.request.methodKind)
                    headDone = true
                    up.headParsed = true
                    exchange.responseHead(endStream: decoder.isDone)
                    guard conn === up, !decoder.isDone else { return }   // retried, or answered
                }
                if headDone { break }
            }
            if !headDone { return }
        }
        pump(up, exchange)
    }

    /// The response head in `up.head` (bytes still in place) into the exchange's `response`.
    private func readHead(_ up: UpstreamConnection) {
        H1HeadReader.response(&up.head, UnsafePointer(up.input.base), into: exchange.response)
    }

    private func pump(_ up: UpstreamConnection) {
        Unmanaged.passUnretained(exchange)._withUnsafeGuaranteedRef { pump(up, $0) }
    }

    private func pump(_ up: UpstreamConnection, _ exchange: Exchange) {
        while !up.input.isEmpty && !exchange.downstreamCongested {
            switch decoder.next(UnsafePointer(up.input.readPointer), up.input.readableBytes) {
            case .data(let n):
                exchange.responseData(UnsafePointer(up.input.readPointer), n)
                up.input.consume(n)
                if decoder.lengthComplete { complete(); return }
            case .framing(let n), .needMore(let n):
                up.input.consume(n)
                if n == 0 { break }
            case .end(let n):
                up.input.consume(n)
                complete()
                return
            case .error:
                conn = nil
                up.owner = nil
                up.closeNow()
                exchange.upstreamProtocolError("malformed response body")
                return
            }
        }
        if decoder.lengthComplete { complete(); return }
        if eofSeen && up.input.isEmpty {
            if decoder.finishAtClose() {
                complete()
            } else {
                worker.stats.inc(.upstreamResetsBeforeResponse)
                conn = nil
                up.owner = nil
                up.closeNow()
                exchange.upstreamFailed(.reset)
            }
            return
        }
        if !exchange.downstreamCongested { up.resumeReading() }
    }

    private func complete() {
        let r = exchange.responseTrailers
        r.reset()
        if !trailerLines.isEmpty { HeaderPolicy.ingestTrailerLines(r, trailerLines); trailerLines.clear() }
        exchange.responseEnd()
    }

    func resumeResponse() {
        if let up = conn, headDone { pump(up) }
    }

    func release() {
        guard let up = conn else { return }
        conn = nil
        let reusable = decoder.isDone && exchange.upstreamRequestEnded && up.head.keepAlive && !eofSeen
            && up.input.isEmpty && !up.peerClosed && !up.isClosed
        if reusable {
            let c = up.pool.routing.snapshot.clusters[up.pool.cluster]
            up.pool.release(up, idleTimeout: c.idleTimeout, maxRequests: c.maxRequestsPerConnection)
        } else {
            up.owner = nil
            up.closeNow()
        }
    }

    func cancel() {
        guard let up = conn else { return }
        conn = nil
        up.owner = nil
        up.closeNow()
    }

    // MARK: connection events

    func upstreamEOF(_ up: UpstreamConnection) {
        guard up === conn else { up.closeNow(); return }
        eofSeen = true
        if headDone { pump(up); return }
        // No complete response head: like a reset.
        conn = nil
        up.owner = nil
        let retryable = up.reused && !up.gotResponseBytes
        up.closeNow()
        exchange.upstreamFailed(.reset, reused: retryable)
    }

    func upstreamClosed(_ up: UpstreamConnection, error: Int32, wasConnecting: Bool) {
        guard up === conn else { return }
        conn = nil
        if wasConnecting {
            worker.stats.inc(.upstreamConnectFailures)
            up.pool.counters.inc(.connectFailures)
            exchange.upstreamFailed(.connect)
        } else {
            exchange.upstreamFailed(.reset, reused: !headDone && up.reused && !up.gotResponseBytes)
        }
    }
}
