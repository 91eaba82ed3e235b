import MeshConfig
import MeshCore
import MeshHTTP
import MeshIO
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The status port (`sidecar --status-port P`, Istio's 15021): what the kubelet and Prometheus
/// may reach on the pod's address. GET or HEAD `/ready`, `/healthz` and `/stats/prometheus`
/// (the admin port's answers; 503 on `/ready` and `/stats/prometheus` until the proxy runs), and
/// the app probes (`--app-probe`, `StatusProbe.swift`). Everything else is 404: `/config_dump`,
/// `/certs`, `/clusters` and `POST /drain` stay on the loopback admin port. Bound with the proxy
/// ports, before meshd is contacted; served on its own thread and event loop, never a worker's,
/// and an app probe never blocks it (the probe's connection is one more socket on this loop).
/// Every pod in the cluster may reach it, so each client is bounded: at most `maxConnections`
/// open, and at most `maxPerAddress` of them from one peer address, so that one client never
/// shuts the kubelet's probes out (more are closed at accept, counted and logged), a request
/// head of 8 KiB (431), no answer while the client leaves earlier ones unread, and an idle
/// deadline that only a client taking its answers extends (`StatusConnection`).
public final class StatusServer: @unchecked Sendable {
    let loop = EventLoop(name: "status")
    /// The admin server whose answers this port repeats (nil until the proxy runs).
    private let admin = Mutex<AdminServer?>(nil)
    /// The `--app-probe`s: GET `path` here is answered by GET `target` on `127.0.0.1:port`.
    let probes: [AppProbe]
    /// How long the app has to answer a probe (10 s).
    let probeTimeout: UInt64
    /// Requests in flight at most for each probe path (8); past it that path gets 503 at once.
    /// Per path, so a hung app's liveness probes never starve its readiness probe or another
    /// container's (the total is bounded by the number of `--app-probe` flags).
    let maxProbes: Int
    /// Requests in flight for each of `probes` (status loop only).
    var probesInFlight: [Int]
    /// Status connections open at most (64); past it a new one is closed at accept.
    let maxConnections: Int
    /// Status connections open now (status loop only; app probes' connections are not counted).
    private(set) var openConnections = 0
    /// Connections closed at accept because `maxConnections` were open (status loop only).
    private(set) var refusedConnections: UInt64 = 0
    /// When a refusal was last logged (status loop): at most one line per 10 s.
    private var refusalLoggedAt: UInt64 = 0
    /// Status connections open at most from one peer address (8): one client (every pod may reach
    /// this port) can never hold more than that many of the `maxConnections` slots.
    let maxPerAddress: Int
    /// Open connections per peer address (status loop only): `maxConnections` slots allocated at
    /// start, each a peer address's two words (IPv4 kept IPv4-mapped, as `IPEndpoint` does) and
    /// its count; a slot is free when its count is 0. Every open connection holds one count in
    /// one slot, so at most `maxConnections - 1` slots are in use when one more is accepted. A
    /// connection keeps its slot's index and gives its count back when it closes.
    private var peerHigh: [UInt64]
    private var peerLow: [UInt64]
    private var peerCount: [Int]
    /// Connections closed at accept because `maxPerAddress` were open from their peer's address.
    private(set) var refusedPerAddress: UInt64 = 0
    /// When such a refusal was last logged (status loop): at most one line per 10 s.
    private var perAddressLoggedAt: UInt64 = 0
    private var listener: Listener?
    private var thread: pthread_t?
    /// The address bound (its port is the one the kernel chose when the flag said 0).
    public let address: SocketAddress

    /// Binds `address` now (a port in use is an error naming it) and serves on a thread of its own.
    public static func start(address: SocketAddress, probes: [AppProbe], probeTimeout: UInt64 = 10_000_000_000,
                             maxProbes: Int = 8, maxConnections: Int = 64,
                             maxPerAddress: Int = 8) throws(ProxyStartError) -> StatusServer {
        let fd = Socket.listen(address, reusePort: false)
        if fd < 0 { throw ProxyStartError.cannotListen(address, "status", SocketError(code: -fd)) }
        let bound = SocketAddress(host: address.family == AF_INET6 ? "[\(StatusServer.host(address))]" : StatusServer.host(address),
                                  port: Socket.localPort(fd)) ?? address
        let s = StatusServer(address: bound, probes: probes, probeTimeout: probeTimeout, maxProbes: maxProbes,
                             maxConnections: maxConnections, maxPerAddress: maxPerAddress)
        let l = Listener(loop: s.loop, fd: fd, name: "status") { [unowned s] cfd in s.accept(cfd) }
        guard l.start() else {
            Glibc.close(fd)
            throw ProxyStartError(description: "cannot watch the status listener on \(address)")
        }
        s.listener = l
        s.thread = Threads.spawn(name: "status") { s.loop.run() }
        return s
    }

    private init(address: SocketAddress, probes: [AppProbe], probeTimeout: UInt64, maxProbes: Int, maxConnections: Int,
                 maxPerAddress: Int) {
        self.address = address
        self.probes = probes
        self.probeTimeout = probeTimeout
        self.maxProbes = maxProbes
        self.maxConnections = maxConnections
        self.maxPerAddress = maxPerAddress
        self.peerHigh = [UInt64](repeating: 0, count: maxConnections)
        self.peerLow = [UInt64](repeating: 0, count: maxConnections)
        self.peerCount = [Int](repeating: 0, count: maxConnections)
        self.probesInFlight = [Int](repeating: 0, count: probes.count)
    }

    /// A new client (status loop): closed at once when `maxConnections` are open, or
    /// `maxPerAddress` from its address, else served.
    private func accept(_ fd: Int32) {
        if openConnections >= maxConnections {
            Glibc.close(fd)
            refusedConnections += 1
            let now = loop.now
            if refusalLoggedAt == 0 || now - refusalLoggedAt >= 10_000_000_000 {
                refusalLoggedAt = now
                Log.warn("status", "connection refused: \(maxConnections) status-port connections are open, the limit "
                         + "(\(refusedConnections) refused since start; logged at most every 10 s)")
            }
            return
        }
        // The peer's address, without formatting it (a peer already gone has none: closed).
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        guard rc == 0, let peer = IPEndpoint(storage: ss) else { Glibc.close(fd); return }
        var slot = -1, free = -1
        for i in 0..<peerCount.count {
            if peerCount[i] == 0 {
                if free < 0 { free = i }
            } else if peerHigh[i] == peer.high && peerLow[i] == peer.low {
                slot = i
                break
            }
        }
        if slot >= 0 && peerCount[slot] >= maxPerAddress {
            Glibc.close(fd)
            refusedPerAddress += 1
            let now = loop.now
            if perAddressLoggedAt == 0 || now - perAddressLoggedAt >= 10_000_000_000 {
                perAddressLoggedAt = now
                Log.warn("status", "connection refused: \(maxPerAddress) status-port connections are open from "
                         + "\(StatusServer.host(peer.with(port: 0).socketAddress)), the limit per address "
                         + "(\(refusedPerAddress) refused since start; logged at most every 10 s)")
            }
            return
        }
        if slot < 0 {
            // Fewer than `maxConnections` are open, so fewer slots are in use: one is free.
            slot = free
            peerHigh[slot] = peer.high
            peerLow[slot] = peer.low
        }
        // A small kernel send buffer (32 KiB, doubled by the kernel) instead of autotuning's
        // megabytes: a client that does not read its answers is seen congested within a few
        // answers, and the socket memory charged to the pod stays small.
        var sndbuf: Int32 = 32 * 1024
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, socklen_t(MemoryLayout<Int32>.size))
        let c = StatusConnection(server: self, fd: fd, peerSlot: slot)
        openConnections += 1
        peerCount[slot] += 1
        guard c.start() else { closed(peerSlot: slot); return }   // start closed the socket
        c.extendDeadline()
    }

    /// A status connection from the address in `peerSlot` closed (status loop).
    func closed(peerSlot: Int) {
        openConnections -= 1
        peerCount[peerSlot] -= 1
    }

    private static func host(_ a: SocketAddress) -> String {
        var t = a.text
        if let colon = t.lastIndex(of: ":") { t = String(t[..<colon]) }
        if t.hasPrefix("[") { t = String(t.dropFirst().dropLast()) }
        return t
    }

    /// From now on `/ready`, `/healthz` and `/stats/prometheus` answer as `a` does (any thread).
    func attach(_ a: AdminServer) { admin.withLock { $0 = a } }

    /// Stops serving and joins the thread (the end of a drain).
    public func stop() {
        loop.stop()
        if let t = thread { Threads.join(t); thread = nil }
    }

    /// Answers a request (status loop). Returns false when an app probe was started instead:
    /// the connection then waits for `StatusConnection.probeDone`.
    func respond(_ c: StatusConnection, method: HTTPMethod, path: String) -> Bool {
        let isRead = method == .get || method == .head
        guard isRead else { StatusServer.reply(c.output, 404, "not found\n", head: false); return true }
        switch path {
        case "/ready", "/healthz", "/stats/prometheus":
            if let a = admin.withLock({ $0 }) {
                a.respond(method: method, path: path, into: c.output)
            } else if path == "/healthz" {
                StatusServer.reply(c.output, 200, "OK\n", head: method == .head)
            } else {
                StatusServer.reply(c.output, 503, path == "/ready" ? "PRE_INITIALIZING\n" : "not ready: the proxy is not running yet\n",
                                   head: method == .head)
            }
            return true
        default:
            guard let index = probes.firstIndex(where: { $0.path == path }) else {
                StatusServer.reply(c.output, 404, "not found\n", head: method == .head)
                return true
            }
            let p = probes[index]
            if probesInFlight[index] >= maxProbes {
                StatusServer.reply(c.output, 503, "too many requests in flight for this probe (\(maxProbes)); try again\n", head: method == .head)
                return true
            }
            guard let app = SocketAddress(host: "127.0.0.1", port: p.port) else {
                StatusServer.reply(c.output, 503, "bad app port \(p.port)\n", head: method == .head)
                return true
            }
            let fd = Socket.connect(app)
            if fd < 0 {
                StatusServer.reply(c.output, 503, "app at \(app) cannot be reached: \(Socket.errorText(-fd))\n", head: method == .head)
                return true
            }
            let probe = StatusProbe(server: self, index: index, client: c, fd: fd, app: app, target: p.target, head: method == .head)
            probesInFlight[index] += 1
            c.probe = probe
            guard probe.start() else {
                probesInFlight[index] -= 1
                c.probe = nil
                StatusServer.reply(c.output, 503, "app at \(app) cannot be reached: cannot watch the socket\n", head: method == .head)
                return true
            }
            loop.setDeadline(probe, loop.now + probeTimeout)
            return false
        }
    }

    /// A complete HTTP/1.1 response with a text body (left out for HEAD).
    static func reply(_ out: ByteBuffer, _ status: Int, _ body: String, head: Bool) {
        out.append("HTTP/1.1 ")
        out.appendDecimal(status)
        out.append(" ")
        out.append(StatusReason.phrase(status))
        out.append("\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ")
        out.appendDecimal(body.utf8.count)
        out.append("\r\n\r\n")
        if !head { out.append(string: body) }
    }
}

/// One client of the status port: HTTP/1.1 keep-alive, requests answered in order (one waiting
/// for an app probe holds the ones behind it). Bounded against a client that sends and never
/// reads: a request head of at most 8 KiB (431), at most 16 KiB read ahead, no answer while 64 KiB
/// of answers wait unwritten (answering resumes in `onDrained`), and an idle deadline (30 s) that
/// moves only when an answer is queued behind nothing unwritten, so a client that leaves its
/// answers unread is closed 30 s after it stopped taking them, whatever it keeps sending.
final class StatusConnection: Connection {
    unowned let server: StatusServer
    var parser = HTTP1Parser()
    var head = HTTPHead()
    /// The app probe this connection waits for.
    var probe: StatusProbe?
    /// Close after the answer being waited for.
    private var closeAfterProbe = false
    /// Inside `onInput` (where `flushNow` may call `onDrained`).
    private var answering = false
    /// When the idle deadline passes (restored after an app probe, which has its own).
    private var expiresAt: UInt64 = 0

    static let maxHeadBytes = 8 * 1024
    static let idleTimeout: UInt64 = 30_000_000_000

    /// Its slot in the server's table of connections per peer address.
    let peerSlot: Int

    init(server: StatusServer, fd: Int32, peerSlot: Int) {
        self.server = server
        self.peerSlot = peerSlot
        super.init(loop: server.loop, fd: fd, security: nil, connecting: false)
        parser.maxHeadBytes = StatusConnection.maxHeadBytes
        inputLimit = 16 * 1024
        highWatermark = 64 * 1024
        lowWatermark = 16 * 1024
    }

    /// The client took every earlier answer (or just arrived): another 30 s.
    func extendDeadline() {
        expiresAt = loop.now + StatusConnection.idleTimeout
        loop.setDeadline(self, expiresAt)
    }

    override func onInput() {
        if answering { return }
        answering = true
        defer { answering = false }
        while probe == nil && !input.isEmpty && !isClosing && !isClosed {
            if isCongested {
                // The client leaves its answers unread: write what the socket takes; if that is
                // not enough, answer nothing more (nor read past `inputLimit`) until `onDrained`.
                flushNow()
                if isClosed || isCongested { return }
            }
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
                // Status requests carry no body we read: close after one that has one.
                let keep = head.keepAlive && head.contentLength <= 0 && !head.chunked
                let method = head.method
                input.consume(head.headEnd - input.readIndex)
                parser.resetScan()
                let caughtUp = pendingOutput == 0
                if !server.respond(self, method: method, path: path) {
                    // Waiting for the app; no deadline of our own meanwhile (the probe has one).
                    closeAfterProbe = !keep
                    loop.setDeadline(self, 0)
                    return
                }
                requestFlush()
                if !keep { closeAfterFlush(); return }
                if caughtUp { extendDeadline() }
            }
        }
    }

    /// The client read enough of its answers: answer what waits, then read again.
    override func onDrained() {
        if answering || isClosing || isClosed { return }
        onInput()
        if !isClosed { resumeReading() }
    }

    /// The probe answered (status loop): send its answer, then go on with what came behind it.
    func probeDone(status: Int, body: String, head isHead: Bool) {
        probe = nil
        if isClosed { return }
        let caughtUp = pendingOutput == 0
        StatusServer.reply(output, status, body, head: isHead)
        requestFlush()
        if closeAfterProbe { closeAfterFlush(); return }
        if caughtUp { extendDeadline() } else { loop.setDeadline(self, expiresAt) }
        onInput()
        if !isClosed { resumeReading() }
    }

    override func onPeerClosed(error: Int32) { closeNow() }
    override func onDeadline(now: UInt64) { closeNow() }
    override func onClosed() {
        server.closed(peerSlot: peerSlot)
        // Nobody waits for the answer any more: end the probe now, freeing its slot.
        if let p = probe {
            probe = nil
            p.cancel()
        }
    }
}
