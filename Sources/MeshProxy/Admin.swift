import MeshCore
import MeshHTTP
import MeshIO
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The admin listener (127.0.0.1:15000 by default) on its own thread and event loop, so admin
/// traffic never runs on a data-path worker. It answers `/ready` (200 once the config is applied
/// and every listener is bound, 503 before and while draining), `/healthz`, and `/stats` (every
/// worker's counters summed, one `name: value` line each).
final class AdminServer: @unchecked Sendable {
    let loop = EventLoop(name: "admin")
    private let workers: [Worker]
    let ready = Atomic<Bool>(false)
    let draining = Atomic<Bool>(false)
    private var listener: Listener?
    let snapshotVersion: String

    init(workers: [Worker], snapshotVersion: String) {
        self.workers = workers
        self.snapshotVersion = snapshotVersion
    }

    func listen(fd: Int32) -> Bool {
        let l = Listener(loop: loop, fd: fd, name: "admin") { [unowned self] cfd in
            let c = AdminConnection(server: self, fd: cfd)
            _ = c.start()
            c.loop.setDeadline(c, c.loop.now + 30_000_000_000)
        }
        listener = l
        return l.start()
    }

    func respond(method: HTTPMethod, path: String, into out: ByteBuffer) -> Bool {
        var status = 200
        var body = ""
        var contentType = "text/plain"
        switch path {
        case "/ready":
            if ready.load(ordering: .acquiring) && !draining.load(ordering: .acquiring) {
                body = "LIVE\n"
            } else {
                status = 503
                body = draining.load(ordering: .acquiring) ? "DRAINING\n" : "PRE_INITIALIZING\n"
            }
        case "/healthz":
            body = "OK\n"
        case "/stats":
            for c in WorkerStats.Counter.allCases {
                var sum: UInt64 = 0
                for w in workers { sum &+= w.stats.get(c) }
                body += "\(c.name): \(sum)\n"
            }
            body += "workers: \(workers.count)\nconfig_version: \(snapshotVersion)\n"
        case "/":
            contentType = "text/plain"
            body = "admin endpoints: /ready /healthz /stats\n"
        default:
            status = 404
            body = "not found\n"
        }
        if method != .get && method != .head { status = 405; body = "method not allowed\n" }
        out.append("HTTP/1.1 ")
        out.appendDecimal(status)
        out.append(" ")
        out.append(StatusText.reason(status == 200 ? 0 : status))
        out.append("\r\ncontent-type: ")
        out.append(string: contentType)
        out.append("\r\ncontent-length: ")
        out.appendDecimal(body.utf8.count)
        out.append("\r\n\r\n")
        if method != .head { out.append(string: body) }
        return true
    }

    func run() { loop.run() }
}

/// One admin client connection: HTTP/1.1 keep-alive, GET only, tiny bodies.
private final class AdminConnection: Connection {
    unowned let server: AdminServer
    var parser = HTTP1Parser()
    var head = HTTPHead()

    init(server: AdminServer, fd: Int32) {
        self.server = server
        super.init(loop: server.loop, fd: fd, security: nil, connecting: false)
    }

    override func onInput() {
        while !input.isEmpty && !isClosing && !isClosed {
            switch parser.parseRequest(input.base, start: input.readIndex, end: input.writeIndex, into: &head) {
            case .incomplete:
                return
            case .error(let e):
                output.appendLocalReply(status: e.status, body: e.reason, close: true, flag: .downstreamProtocolError)
                requestFlush()
                closeAfterFlush()
                return
            case .complete:
                var pathEnd = head.pathEnd
                for i in head.pathStart..<head.pathEnd where input.base[i] == UInt8(ascii: "?") { pathEnd = i; break }
                let path = input.string(head.pathStart, pathEnd)
                let keep = head.keepAlive
                let method = head.method
                input.consume(head.headEnd - input.readIndex)
                parser.resetScan()
                _ = server.respond(method: method, path: path, into: output)
                requestFlush()
                if !keep { closeAfterFlush(); return }
                loop.setDeadline(self, loop.now + 30_000_000_000)
            }
        }
    }

    override func onPeerClosed(error: Int32) { closeNow() }
    override func onDeadline(now: UInt64) { closeNow() }
}
