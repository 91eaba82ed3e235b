import MeshCore
import MeshHTTP
import MeshIO
import MeshTLS
import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// A gateway's connections on a worker (DESIGN §15): the listeners of its Gateway servers (one
/// per port, given by `GatewayPorts`) and what an accepted connection becomes, by the port's
/// kind in the snapshot in force: HTTP (plain, or after the server's TLS handshake) to the router
/// like a sidecar's outbound; TCP to the port's tcp route; PASSTHROUGH to the tls route its
/// ClientHello's SNI picks, the TLS bytes untouched.
extension Worker {
    func openGatewayListener(port: Int, fd: Int32) {
        if draining { Glibc.close(fd); return }
        gatewayListeners.removeValue(forKey: port)?.close()
        let l = Listener(loop: loop, fd: fd, name: "gateway:\(port)") { [unowned self] cfd in self.acceptGateway(cfd, port: port) }
        if l.start() { gatewayListeners[port] = l } else { Log.error("gateway", "worker \(id): cannot watch the listener of port \(port)") }
    }

    func closeGatewayListener(port: Int) {
        gatewayListeners.removeValue(forKey: port)?.close()
    }

    func closeGatewayListeners() {
        for l in gatewayListeners.values { l.close() }
        gatewayListeners.removeAll()
    }

    private func refuseGateway(_ fd: Int32, _ why: StaticString, port: Int) {
        logRejection("gateway", "connection on port \(port) refused: \(why)")
        stats.inc(.noRoute)
        Glibc.close(fd)
    }

    func acceptGateway(_ fd: Int32, port: Int) {
        let s = snapshot
        guard let gw = s.gateway, let entry = gw.port(port) else { refuseGateway(fd, "no Gateway server on this port", port: port); return }
        if !listenerHasRoom(inbound: false, settings: entry.settings) {
            Glibc.close(fd)
            stats.inc(.connectionLimit)
            logRejection("proxy", "connection refused: the gateway's listeners hold their maxConnections")
            return
        }
        switch entry.kind {
        case .http:
            openDownstream(fd, tls: nil, inbound: false, settings: entry.settings)
        case .terminatedHTTP:
            guard let ctx = entry.serverTLS else {
                if entry.credential.isEmpty { refuseGateway(fd, "no TLS context for this server", port: port); return }
                Glibc.close(fd)
                stats.inc(.noRoute)
                logRejection("gateway", "connection on port \(port) refused: no server certificate: \(entry.credential)")
                return
            }
            openDownstream(fd, tls: TLSSession(context: ctx), inbound: false, settings: entry.settings)
        case .tcp:
            guard entry.tcpRoute >= 0 else { refuseGateway(fd, "no tcp route of a VirtualService bound to its Gateway takes this port", port: port); return }
            startTCPProxy(fd: fd, initial: UnsafeRawBufferPointer(start: nil, count: 0), target: .route(entry.tcpRoute))
        case .passthrough:
            if detecting >= 1024 { Glibc.close(fd); stats.inc(.connectionLimit); return }
            let d = SNIDetector(worker: self, fd: fd, port: port)
            detecting += 1
            if !d.start() { detecting -= 1 }
        }
    }

    /// A PASSTHROUGH connection whose ClientHello was read: the tls route its server name picks
    /// (in the snapshot in force now), or closed.
    fileprivate func dispatchPassthrough(_ fd: Int32, port: Int, hello: TLSClientHello.Result, peeked: UnsafeRawBufferPointer) {
        let s = snapshot
        guard let gw = s.gateway, let entry = gw.port(port), entry.kind == .passthrough else {
            refuseGateway(fd, "no PASSTHROUGH server on this port any more", port: port)
            return
        }
        switch hello {
        case .serverName(let off, let n):
            let r = gw.sniRoute(entry, peeked, off, n)
            guard r >= 0 else { refuseGateway(fd, "no tls route takes its server name (SNI)", port: port); return }
            // The ClientHello was only peeked: the relay reads it from the socket.
            startTCPProxy(fd: fd, initial: UnsafeRawBufferPointer(start: nil, count: 0), target: .route(r))
        case .noServerName:
            refuseGateway(fd, "its ClientHello names no server (SNI)", port: port)
        case .invalid(let why):
            // Logged before the close: whoever sees the connection end finds the line written.
            logRejection("gateway", "connection on port \(port) refused: not a usable TLS ClientHello (\(why))")
            stats.inc(.noRoute)
            Glibc.close(fd)
        case .needMore:
            refuseGateway(fd, "no complete ClientHello in time", port: port)
        }
    }
}

/// A PASSTHROUGH connection waiting for its ClientHello: peeked (`MSG_PEEK`, never consumed) into
/// the worker's peek buffer until `TLSClientHello` decides, at most `timeout` (a client that
/// sends nothing, or too little, is closed). Edge-triggered; one per connection in detection.
final class SNIDetector: Pollable {
    unowned(unsafe) let worker: Worker
    let port: Int
    private var done = false

    /// How long a client has to send its ClientHello (Envoy's tls_inspector waits as long as the
    /// listener filter timeout, 15 s by default; a gateway should not hold idle sockets that long).
    static let timeout: UInt64 = 5_000_000_000

    init(worker: Worker, fd: Int32, port: Int) {
        self.worker = worker
        self.port = port
        super.init(fd: fd)
    }

    func start() -> Bool {
        let ev = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
        guard worker.loop.register(self, events: ev) else { Glibc.close(fd); return false }
        worker.loop.setDeadline(self, worker.loop.now &+ SNIDetector.timeout)
        return true
    }

    override func onEvents(_ events: UInt32) {
        if done { return }
        let buf = worker.peekBuffer
        let n = recv(fd, buf.baseAddress, buf.count, Int32(MSG_PEEK))
        if n == 0 { finish(nil); return }
        if n < 0 {
            let e = mesh_errno()
            if e == EAGAIN || e == EWOULDBLOCK || e == EINTR { return }
            finish(nil)
            return
        }
        let peeked = UnsafeRawBufferPointer(start: buf.baseAddress, count: n)
        let r = TLSClientHello.parse(peeked, limit: buf.count)
        if case .needMore = r {
            if n >= buf.count || events & EPOLLRDHUP.rawValue != 0 { finish(.invalid("ClientHello incomplete")) }
            return
        }
        finish(r, peeked)
    }

    override func onTimer(now: UInt64) {
        if !done { finish(.needMore) }
    }

    private func finish(_ r: TLSClientHello.Result?, _ peeked: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) {
        done = true
        worker.loop.setDeadline(self, 0)
        worker.loop.deregister(self)
        if let r {
            worker.dispatchPassthrough(fd, port: port, hello: r, peeked: peeked)
        } else {
            Glibc.close(fd)
        }
        worker.detectionEnded()
    }
}

/// `tls.httpsRedirect`: every request on the server's port gets `301` to the same host and path
/// over https (Envoy's `https_redirect`: the port is dropped, so the default 443 is meant).
extension Exchange {
    func redirectToHTTPS() {
        localReply(301, "moved to https", flag: .none, httpsLocation: true)
    }

    /// Adds `location: https://HOST/PATH` (the request's host without its port) to `r`.
    func addHTTPSLocation(_ r: MessageHead) {
        let q = request
        let out = worker.scratch
        out.clear()
        out.append("https://")
        let hp = q.pointer(q.authority)
        out.append(hp, HostTable.hostLength(hp, Int(q.authority.length)))
        if q.path.isEmpty { out.append(UInt8(ascii: "/")) } else { out.append(q.pointer(q.path), Int(q.path.length)) }
        _ = r.addField("location", UnsafePointer(out.readPointer), out.readableBytes)
    }
}

extension DownstreamConnection {
    /// This connection's listener answers every request with a redirect to https.
    var redirectsToHTTPS: Bool { settings.httpsRedirect }
    var gatewayPort: Int { settings.gatewayPort }
}

extension H2ServerStream {
    var redirectsToHTTPS: Bool { handler.conn.settings.httpsRedirect }
    var gatewayPort: Int { handler.conn.settings.gatewayPort }
}
