import MeshControlWire
import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

/// One kept-alive TLS connection on meshd's API port, on one `APILoop`: reads a request
/// (strict HTTP/1.1 head, a Content-Length body), answers it and reads the next. A config
/// request waits parked (its buffers and OpenSSL's given back) until its sidecar's config
/// changes, its wait ends or its stream reaches its maximum age; blocking requests go to the
/// worker pool, and the connection reads nothing more until their answer is back.
final class APIConnection: Connection, @unchecked Sendable {
    unowned let owner: APILoop
    let ip: String
    /// After this (monotonic ns), the next answer that is not a push closes the stream.
    let closeAt: UInt64

    enum Phase { case reading, working, parked, done }
    private(set) var phase = Phase.reading
    private var parser = HTTP1Parser()
    private var head = HTTPHead(reserve: 0)
    /// The request's `Connection` said to close after the answer.
    private var keepAlive = true
    /// The parked config request, and this connection's place in its loop's parked list.
    private var wait: MeshdServer.ConfigWait?
    var parkedIndex = -1
    /// The sidecar this connection carries a config stream for (counted in the store while open).
    private var stream: (identity: String, node: String)?
    /// The client's certificate, verified in the handshake.
    private var peer: String?
    private var peerNotAfter: Int64 = 0
    private var peerIssuer = ""

    init(owner: APILoop, fd: Int32, security: TLSSession, ip: String, closeAt: UInt64) {
        self.owner = owner
        self.ip = ip
        self.closeAt = closeAt
        super.init(loop: owner.loop, fd: fd, security: security, connecting: false)
        inputLimit = readingLimit
    }

    /// Input held while a request is read (its head and body), and while one is being answered
    /// (parked or with a worker): a client that sends ahead cannot make meshd hold more.
    private var readingLimit: Int { server.settings.maxBody + 80 * 1024 }
    static let busyLimit = 16 * 1024

    private var server: APIStreamServer { owner.server }

    override func onEstablished() {
        guard let tls = security as? TLSSession, !tls.peerIdentity.isEmpty, let info = tls.peerCertificateInfo else { return }
        peer = tls.peerIdentity
        peerNotAfter = info.notAfter
        peerIssuer = info.issuer
    }

    override func onInput() { process() }

    /// Reads and handles whole requests while the connection is free to (not parked or working).
    private func process() {
        while phase == .reading && !isClosed && !input.isEmpty {
            switch parser.parseRequest(input.base, start: input.readIndex, end: input.writeIndex, into: &head) {
            case .incomplete:
                return
            case .error(let e):
                answer(ControlResponse(e.status, "\(e.reason)\n"), last: true)
                return
            case .complete:
                if head.chunked {
                    answer(ControlResponse(411, "a request body needs a content-length\n"), last: true)
                    return
                }
                let length = max(0, Int(head.contentLength))
                if length > server.settings.maxBody {
                    answer(ControlResponse(413, "request body of \(length) bytes is over this server's limit of \(server.settings.maxBody) bytes\n"), last: true)
                    return
                }
                if input.writeIndex - head.headEnd < length { return }   // the body is still coming
                let body = Array(UnsafeBufferPointer(start: input.base + head.headEnd, count: length))
                var r = ControlRequest(head: head, base: input.base, body: body, peerIdentity: peer)
                r.peerNotAfter = peerNotAfter
                r.peerIssuer = peerIssuer
                keepAlive = head.keepAlive
                input.consume(head.headEnd + length - input.readIndex)
                handle(r)
            }
        }
    }

    private func handle(_ r: ControlRequest) {
        let meshd = server.meshd
        switch (r.method, r.path) {
        case ("GET", ConfigStream.configPath):
            switch meshd.configWait(r) {
            case .answer(let a):
                answer(a)
            case .wait(let w):
                follow(w)
                if let a = meshd.configAnswer(w) { answer(a, push: true) } else { park(w) }
            }
        case ("POST", ConfigStream.ackPath), ("POST", ConfigStream.nackPath):
            answer(meshd.handleAPI(r))
        default:
            phase = .working
            inputLimit = APIConnection.busyLimit
            loop.setDeadline(self, 0)
            let loop = self.loop
            let workers = r.path == ConfigStream.registerPath ? server.registrations : server.pool
            let queued = workers?.submit { [self] in
                let a = meshd.handleAPI(r)
                loop.post { [self] in self.finishWork(a) }
            } ?? false
            if !queued {
                phase = .reading
                answer(ControlResponse(503, "meshd is overloaded: try again shortly\n"), last: true)
            }
        }
    }

    /// A worker's answer, back on the loop.
    private func finishWork(_ a: ControlResponse) {
        guard !isClosed, phase == .working else { return }
        phase = .reading
        answer(a)
        continueReading()
    }

    /// Counts this connection as `w`'s sidecar's config stream (from its first config request).
    private func follow(_ w: MeshdServer.ConfigWait) {
        if let s = stream, s.identity == w.identity && s.node == w.node { return }
        guard let store = server.meshd.store else { return }
        if let s = stream {
            store.streamClosed(identity: s.identity, node: s.node)
        } else {
            server.streams.add(1, ordering: .relaxed)
            server.streamsOpened.add(1, ordering: .relaxed)
        }
        store.streamOpened(identity: w.identity, node: w.node)
        stream = (w.identity, w.node)
    }

    private func park(_ w: MeshdServer.ConfigWait) {
        phase = .parked
        inputLimit = APIConnection.busyLimit
        wait = w
        owner.park(self)
        loop.setDeadline(self, min(Clock.monotonicNanos() + server.settings.streamWait, closeAt))
        requestFlush()   // the flush hibernates it
    }

    /// The config changed: answers the parked request if this sidecar's config differs from
    /// what it has. True when it answered (and left the parked list).
    func recheck() -> Bool {
        guard phase == .parked, let w = wait, let a = server.meshd.configAnswer(w) else { return false }
        unpark()
        answer(a, push: true)
        continueReading()
        return true
    }

    private func unpark() {
        owner.unpark(self)
        wait = nil
        phase = .reading
    }

    override func onFlush() {
        super.onFlush()
        // A parked stream holds no buffer while it waits (nor OpenSSL's records).
        if phase == .parked && !isClosed {
            hibernate()
            owner.noteRelease()
        }
    }

    /// Writes an answer. It is the connection's last when `last`, when the request asked to
    /// close, or, for anything but a push (its ACK is still to come on this connection), when
    /// the stream is past its maximum age.
    private func answer(_ a: ControlResponse, last: Bool = false, push: Bool = false) {
        var close = last || !keepAlive
        if !close && !push && Clock.monotonicNanos() >= closeAt {
            close = true
            if stream != nil { server.maxAgeClosed.add(1, ordering: .relaxed) }
        }
        let bytes = ControlServer.encode(a, close: close)
        bytes.withUnsafeBytes { send($0.baseAddress!, $0.count) }
        if close {
            phase = .done
            loop.setDeadline(self, 0)
            closeAfterFlush()
            return
        }
        phase = .reading
        inputLimit = readingLimit
        loop.setDeadline(self, Clock.monotonicNanos() + server.settings.requestDeadline)
    }

    /// After an answer given outside the read path: requests already buffered, then the socket.
    private func continueReading() {
        process()
        resumeReading()
    }

    override func onDeadline(now: UInt64) {
        switch phase {
        case .reading:
            closeNow()   // no whole request within the deadline
        case .parked:
            guard let w = wait else { return }
            unpark()
            if let a = server.meshd.configAnswer(w) { answer(a, push: true) } else { answer(ControlResponse(304, "")) }
            continueReading()
        case .working, .done:
            break
        }
    }

    override func onPeerClosed(error: Int32) {
        // A client that sent its request and its end of stream still gets the answer.
        if error == 0 && phase == .working { keepAlive = false; return }
        closeNow()
    }

    override func onClosed() {
        if phase == .parked { owner.unpark(self) }
        phase = .done
        wait = nil
        if let s = stream {
            server.meshd.store?.streamClosed(identity: s.identity, node: s.node)
            server.streams.subtract(1, ordering: .relaxed)
            stream = nil
        }
        server.leave(ip)
        owner.noteRelease()
    }
}
