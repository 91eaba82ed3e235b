import MeshCore
import MeshHTTP
import MeshIO

/// One mirrored request (Istio's `mirror`/`mirrorPercentage`): a copy of a complete, buffered
/// request sent over HTTP/1.1 to the mirror target with `-shadow` appended to its Host (as Envoy
/// does), whose response is read and dropped. Fire and forget: it never delays or fails the main
/// request, it is bounded per worker, and it gives up after `timeout`. Objects are reused.
final class MirrorRequest: UpstreamOwner {
    unowned(unsafe) let worker: Worker
    let request = ByteBuffer(capacity: 1024)
    private var upstream: UpstreamConnection?
    /// The mirrored request's method (a HEAD response has no body whatever its length says).
    private var method: HTTPMethod = .other
    static let timeout: UInt64 = 10_000_000_000

    init(worker: Worker) { self.worker = worker }

    /// Writes the request as HTTP/1.1 from the exchange's head (as sent upstream) and its whole
    /// body, with `-shadow` added to the Host.
    func prepare(head h: MessageHead, body: ByteBuffer) {
        request.clear()
        method = h.methodKind
        H1Writer.requestStart(h, into: request, hostSuffix: "-shadow")
        if h.contentLength < 0 && !body.isEmpty {
            request.append("content-length: ")
            request.appendDecimal(body.readableBytes)
            request.append("\r\n")
        }
        request.append("\r\n")
        request.append(from: body, body.readIndex, body.writeIndex)
    }

    func start(pool: EndpointPool) -> Bool {
        let snap = pool.routing.snapshot
        let c = snap.clusters[pool.cluster]
        guard let up = pool.checkout(c, tlsContext: snap.clientTLS, fresh: false) else { return false }
        up.owner = self
        upstream = up
        worker.loop.setDeadline(up, worker.loop.now + MirrorRequest.timeout)
        if up.isEstablished && up.state == .active { upstreamReady(up) }
        return true
    }

    func upstreamReady(_ up: UpstreamConnection) {
        guard up === upstream else { return }
        up.prepareForRequest()
        worker.loop.setDeadline(up, worker.loop.now + MirrorRequest.timeout)
        up.send(request.readPointer, request.readableBytes)
    }

    func upstreamInput(_ up: UpstreamConnection) {
        guard up === upstream else { return }
        if !up.headParsed {
            switch up.parser.parseResponse(up.input.base, start: up.input.readIndex, end: up.input.writeIndex, into: &up.head) {
            case .incomplete: return
            case .error: finish(reusable: false); return
            case .complete:
                if up.head.status < 200 || up.head.status == 101 {
                    if up.head.status == 101 { finish(reusable: false); return }
                    up.input.consume(up.head.headEnd - up.input.readIndex)
                    up.parser.resetScan()
                    upstreamInput(up)
                    return
                }
                up.body.startResponse(up.head, requestMethod: method)
                up.input.consume(up.head.headEnd - up.input.readIndex)
                up.headParsed = true
            }
        }
        while !up.input.isEmpty && !up.body.isDone {
            let adv = up.body.advance(UnsafePointer(up.input.readPointer), up.input.readableBytes)
            if adv.error != nil { finish(reusable: false); return }
            up.input.consume(adv.forward)
            if adv.forward == 0 { break }
        }
        if up.body.isDone { finish(reusable: up.head.keepAlive && up.input.isEmpty) }
    }

    func upstreamDrained() {}

    func upstreamEOF(_ up: UpstreamConnection) { finish(reusable: false) }

    func upstreamClosed(_ up: UpstreamConnection, error: Int32, wasConnecting: Bool) {
        upstream = nil
        done()
    }

    /// The connection's deadline passed with the mirror still waiting.
    func timedOut() { finish(reusable: false) }

    private func finish(reusable: Bool) {
        guard let up = upstream else { return }
        upstream = nil
        if reusable && !up.peerClosed && !up.isClosed {
            let c = up.pool.cluster
            up.pool.release(up, idleTimeout: up.pool.routing.snapshot.clusters[c].idleTimeout,
                            maxRequests: up.pool.routing.snapshot.clusters[c].maxRequestsPerConnection)
        } else {
            up.owner = nil
            up.closeNow()
        }
        done()
    }

    private func done() {
        worker.mirrorsInFlight -= 1
        if worker.mirrorPool.count < 64 { worker.mirrorPool.append(self) }
    }
}

extension Worker {
    /// Mirrors beyond this many in flight on a worker are skipped (counted), never queued.
    static let maxMirrorsInFlight = 256

    /// Sends a copy of a complete request (its head and whole body) to route target `target`;
    /// fire and forget.
    func mirror(_ head: MessageHead, body: ByteBuffer, target: Int, routing: RoutingState) {
        guard mirrorsInFlight < Worker.maxMirrorsInFlight, let pool = routing.pickEndpoint(target: target, avoid: nil) else {
            stats.inc(.mirrorSkipped)
            return
        }
        let m = mirrorPool.popLast() ?? MirrorRequest(worker: self)
        m.prepare(head: head, body: body)
        mirrorsInFlight += 1
        if m.start(pool: pool) {
            stats.inc(.mirrorRequests)
        } else {
            mirrorsInFlight -= 1
            mirrorPool.append(m)
            stats.inc(.mirrorSkipped)
        }
    }
}
