import MeshCore
import MeshIO
import MeshTLS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One worker thread: its event loop, its own listeners (SO_REUSEPORT), the downstream
/// connections accepted on them, its upstream pools, counters, scratch buffer and random source.
/// Nothing here is shared with another thread except the counters the admin thread reads and the
/// immutable config snapshot; a connection lives its whole life on one worker.
public final class Worker: @unchecked Sendable {
    public let id: Int
    public let loop: EventLoop
    public let stats = WorkerStats()
    /// Istio-shaped request metrics of this worker.
    let metrics: ProxyMetrics
    /// This worker's side of the access log (nil when access logging is off).
    var accessLog: AccessLogSink?
    /// This worker's finished spans for the exporter (nil until a collector is known; Tracing/).
    var spans: SpanQueue?
    /// Finished HTTP/2 client streams (each with its exchange), reused.
    var h2StreamPool: [H2ServerStream] = []
    /// Finished mirror requests, reused, and how many are in flight.
    var mirrorPool: [MirrorRequest] = []
    var mirrorsInFlight = 0
    /// The config in force on this worker with its pools and per-cluster state; new requests
    /// take it, requests in flight keep the one they started with.
    private(set) var routing: RoutingState!
    var snapshot: ProxySnapshot { routing.snapshot }
    /// Earlier routing states that still have open upstream connections (closed as they finish).
    private var retired: [RoutingState] = []
    /// The current routing state as the admin thread may read it.
    let publishedRouting = Mutex<RoutingState?>(nil)
    var rng = FastRandom()
    /// The endpoints a consistent-hash pick has looked at, one bit each (Balancing/), reused.
    var lbVisited: [UInt64] = []
    /// Reused for building heads and chunk framing.
    let scratch = ByteBuffer(capacity: 8 * 1024)
    /// Token verification state (RequestAuthentication, `JWTVerifier.swift`).
    let jwt = JWTScratch()
    /// Reused for HTTP/2 frames as nghttp2 produces them; never `scratch`, which nghttp2's
    /// callbacks (a stream failing, a local reply) may write while frames are produced.
    let frameScratch = ByteBuffer(lazyCapacity: 16 * 1024)
    /// Exchanges of HTTP/1.1 connections that closed or went idle, reused by new requests.
    var exchangePool: [Exchange] = []
    static let exchangePoolLimit = 32
    private(set) var draining = false
    private var downstreams: [DownstreamConnection] = []
    /// Open TCP relays (`TCP/`): connections carried as bytes.
    var tcpSessions: [TCPProxySession] = []
    private var listeners: [Listener] = []
    /// A gateway proxy's listeners by port (Gateway/WorkerGateway.swift).
    var gatewayListeners: [Int: Listener] = [:]
    private var drainTimer: DrainTimer?
    /// How many workers share the listeners (for per-worker shares of connection limits).
    var workerCount = 1
    /// Connections open on each listener on this worker.
    private var openInbound = 0
    private var openOutbound = 0
    /// The port the outbound listener is bound to: a connection whose original destination is
    /// it on loopback came straight to the listener (`http_proxy`), not by capture.
    var outboundListenPort: UInt16 = 0
    /// Captured connections in protocol detection (`ProtocolDetector`), at most 100 ms each.
    var detecting = 0
    /// Where a detector peeks a connection's first bytes (one request line at most).
    let peekBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ProtocolSniffer.maxRequestLine + 64, alignment: 8)
    /// Called on the worker's thread when it has finished draining.
    var onDrained: (() -> Void)?
    /// Returns freed memory to the system after bursts of closed or idle connections (created on
    /// the worker's thread at the first release).
    private var trimmerStorage: MemoryTrimmer?
    var trimmer: MemoryTrimmer {
        if let t = trimmerStorage { return t }
        let t = MemoryTrimmer(loop: loop)
        trimmerStorage = t
        return t
    }
    /// Rejection log throttle: the current one-second window, lines written in it, and lines
    /// dropped since the last one written.
    private var rejectLogSecond: UInt64 = 0
    private var rejectLogLines = 0
    private var rejectLogDropped = 0
    static let rejectLogLinesPerSecond = 10

    /// Logs why hostile or broken input was refused (a bad request, a refused TLS handshake, an
    /// HTTP/2 flood), at most `rejectLogLinesPerSecond` lines per second per worker, so that a
    /// flood of bad input cannot become a flood of log lines; the next line written says how many
    /// were not. `detail` is only evaluated when a line is written.
    func logRejection(_ component: StaticString, _ detail: @autoclosure () -> String) {
        let second = loop.now / 1_000_000_000
        if second != rejectLogSecond { rejectLogSecond = second; rejectLogLines = 0 }
        if rejectLogLines >= Worker.rejectLogLinesPerSecond {
            rejectLogDropped += 1
            return
        }
        rejectLogLines += 1
        let dropped = rejectLogDropped
        rejectLogDropped = 0
        Log.warn(component, dropped > 0 ? "\(detail()) (\(dropped) more refusals not logged)" : detail())
    }

    init(id: Int, snapshot: ProxySnapshot) {
        self.id = id
        self.loop = EventLoop(name: "worker \(id)")
        self.metrics = ProxyMetrics(enabled: snapshot.bootstrap.statsEnabled)
        routing = RoutingState(worker: self, snapshot: snapshot, previous: nil)
        publishedRouting.withLock { $0 = routing }
    }

    /// Takes a new snapshot for new work (on the worker's thread): new pools (the next
    /// handshakes present the new certificate and use the new endpoints), with each endpoint's
    /// outlier state carried over. Requests in flight finish on the state they started with; its
    /// idle connections close now, busy ones when their exchange ends.
    func replaceSnapshot(_ next: ProxySnapshot) {
        let old = routing!
        routing = RoutingState(worker: self, snapshot: next, previous: old)
        publishedRouting.withLock { $0 = routing }
        old.retire()
        if !old.isQuiescent { keepAlive(old) }
        pruneRetired()
    }

    /// Keeps a retired routing state alive while it has open connections (they point at its
    /// pools): called at the swap, and whenever a request still on it opens one.
    func keepAlive(_ r: RoutingState) {
        if !retired.contains(where: { $0 === r }) { retired.append(r) }
    }

    /// Drops retired routing states whose connections have all closed.
    func pruneRetired() {
        retired.removeAll { $0.isQuiescent }
    }

    /// Starts listening on the given (already bound) sockets; runs on the worker's thread.
    func startListeners(outboundFd: Int32?, inboundFd: Int32?, outbound6Fd: Int32? = nil) {
        if let fd = outbound6Fd {
            let l = Listener(loop: loop, fd: fd, name: "outbound6") { [unowned self] cfd in self.accept(cfd, inbound: false) }
            if l.start() { listeners.append(l) } else { Log.error("worker", "cannot watch the IPv6 outbound listener") }
        }
        if let fd = outboundFd {
            outboundListenPort = UInt16(truncatingIfNeeded: Socket.localPort(fd))
            let l = Listener(loop: loop, fd: fd, name: "outbound") { [unowned self] cfd in self.accept(cfd, inbound: false) }
            if l.start() { listeners.append(l) } else { Log.error("worker", "cannot watch outbound listener") }
        }
        if let fd = inboundFd {
            let l = Listener(loop: loop, fd: fd, name: "inbound") { [unowned self] cfd in self.accept(cfd, inbound: true) }
            if l.start() { listeners.append(l) } else { Log.error("worker", "cannot watch inbound listener") }
        }
    }

    private func accept(_ fd: Int32, inbound: Bool) {
        let snap = snapshot
        var tls: TransportSecurity? = nil
        // Captured on its way to another port of this host (that port's portLevelMtls applies).
        let passthrough = inbound ? snap.capture?.inboundPassthroughPort(fd) : nil
        if inbound {
            guard let ctx = snap.serverTLS else { Glibc.close(fd); return }
            // Another port's connection never takes the app port's portLevelMtls override.
            switch snap.inboundMode(passthrough: passthrough) {
            case .strict: tls = TLSSession(context: ctx)
            case .permissive: tls = PermissiveSecurity(tls: TLSSession(context: ctx))
            case .disable: tls = PermissiveSecurity(tls: nil)
            }
        }
        let settings = inbound ? snap.inbound! : snap.outbound!
        if !inbound, let capture = snap.capture, acceptCaptured(fd, capture, settings: settings) { return }
        if inbound, let port = passthrough {
            // Captured on its way to another port of this host: carried there as bytes, once its
            // caller passed the listener's PeerAuthentication (mTLS in STRICT).
            acceptInboundTCP(fd, security: tls, settings: settings, target: .localPort(port))
            return
        }
        if inbound && snap.inboundTCP {
            // A TCP app: every connection is carried to it as bytes (after mTLS in STRICT).
            acceptInboundTCP(fd, security: tls, settings: settings)
            return
        }
        if settings.maxConnections > 0 {
            // This worker's share of the listener's limit (the kernel spreads accepts evenly).
            let share = (settings.maxConnections + workerCount - 1) / workerCount
            if (inbound ? openInbound : openOutbound) >= share {
                Glibc.close(fd)
                stats.inc(.connectionLimit)
                logRejection("proxy", "connection refused: the \(inbound ? "inbound" : "outbound") listener holds its maxConnections")
                return
            }
        }
        openDownstream(fd, tls: tls, inbound: inbound, settings: settings)
    }

    /// An accepted connection becomes an HTTP downstream (the listener's limit already checked).
    /// `captured`: where a captured connection was going (its VIP names its service).
    func openDownstream(_ fd: Int32, tls: TransportSecurity?, inbound: Bool, settings: ProxySnapshot.ListenerSettings,
                        captured: IPEndpoint? = nil) {
        if inbound { openInbound += 1 } else { openOutbound += 1 }
        let d = DownstreamConnection(worker: self, fd: fd, tls: tls, inbound: inbound, settings: settings)
        d.capturedDestination = captured
        d.listIndex = downstreams.count
        downstreams.append(d)
        stats.inc(.downstreamConnectionsTotal)
        stats.inc(.downstreamConnectionsActive)
        if !d.start() { downstreamClosed(d); return }
        loop.setDeadline(d, loop.now + settings.headerTimeout)
    }

    func downstreamClosed(_ d: DownstreamConnection) {
        let i = d.listIndex
        guard i >= 0 && i < downstreams.count && downstreams[i] === d else { return }
        if d.inbound { openInbound -= 1 } else { openOutbound -= 1 }
        let last = downstreams.removeLast()
        if i < downstreams.count {
            downstreams[i] = last
            last.listIndex = i
        }
        d.listIndex = -1
        stats.dec(.downstreamConnectionsActive)
        trimmer.noteRelease()
        if draining && isIdle { finishDrain() }
    }

    /// A TCP relay ended: forget it (and finish a drain it held).
    func tcpSessionEnded(_ s: TCPProxySession) {
        let i = s.listIndex
        guard i >= 0 && i < tcpSessions.count && tcpSessions[i] === s else { return }
        if s.inbound { openInbound -= 1 } else { openOutbound -= 1 }
        let last = tcpSessions.removeLast()
        if i < tcpSessions.count {
            tcpSessions[i] = last
            last.listIndex = i
        }
        s.listIndex = -1
        trimmer.noteRelease()
        if draining && isIdle { finishDrain() }
    }

    /// Whether the listener's connection limit (this worker's share) has room for one more.
    func listenerHasRoom(inbound: Bool, settings: ProxySnapshot.ListenerSettings) -> Bool {
        if settings.maxConnections == 0 { return true }
        let share = (settings.maxConnections + workerCount - 1) / workerCount
        return (inbound ? openInbound : openOutbound) < share
    }

    /// Counts a TCP relay on its listener (the listener's connection limit covers it).
    func tcpSessionStarted(_ s: TCPProxySession) {
        if s.inbound { openInbound += 1 } else { openOutbound += 1 }
        s.listIndex = tcpSessions.count
        tcpSessions.append(s)
    }

    // MARK: drain

    /// Stops accepting, closes idle keep-alive connections, lets in-flight requests finish (their
    /// responses carry `Connection: close`), and stops the loop when none is left or `timeout` passed.
    func beginDrain(timeout: UInt64) {
        if draining { return }
        draining = true
        for l in listeners { l.close() }
        listeners.removeAll()
        closeGatewayListeners()
        for r in [routing!] + retired { r.closeIdle() }
        for d in downstreams { d.drainIfIdle() }
        // TCP relays run on until they end or the drain timeout (Envoy's tcp_proxy drain).
        if isIdle { finishDrain(); return }
        let t = DrainTimer(worker: self)
        loop.registerTimerOnly(t)
        loop.setDeadline(t, loop.now + timeout)
        drainTimer = t
    }

    /// No connection left on this worker (HTTP, TCP, or in protocol detection).
    private var isIdle: Bool { downstreams.isEmpty && tcpSessions.isEmpty && detecting == 0 }

    /// A drain waiting for the last connection may end now.
    func finishDrainIfIdle() { if draining && isIdle { finishDrain() } }

    fileprivate func drainTimedOut() {
        Log.warn("worker", "worker \(id): drain timeout with \(downstreams.count + tcpSessions.count) connection(s) still open; closing them")
        for d in downstreams { d.closeNow() }
        for s in tcpSessions { s.closeForDrain() }
        finishDrain()
    }

    private func finishDrain() {
        if let t = drainTimer { loop.deregisterTimerOnly(t); drainTimer = nil }
        if let t = trimmerStorage { t.stop(); trimmerStorage = nil }
        for r in [routing!] + retired { r.closeIdle() }
        onDrained?()
        onDrained = nil
    }

    var activeDownstreams: Int { downstreams.count }
}

/// The deadline of a worker's drain.
private final class DrainTimer: Pollable {
    unowned let worker: Worker
    init(worker: Worker) { self.worker = worker; super.init(fd: -1) }
    override func onTimer(now: UInt64) { worker.drainTimedOut() }
}
