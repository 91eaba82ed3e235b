import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// How the outbound listener takes a captured connection (DESIGN §10, docs/capture.md): its
/// original destination (`SO_ORIGINAL_DST`, one getsockopt) decides. A connection that came
/// straight to the listener (an app using `http_proxy`) is left to the ordinary HTTP path; one
/// whose destination is this sidecar itself is refused (loop guard); a mesh service's VIP and
/// port goes to that service (HTTP through the router, TCP through its tcp routes); anything
/// else is passed through to where it was going (ALLOW_ANY) or refused (REGISTRY_ONLY).
extension Worker {
    /// True when the connection was taken here (routed, passed through or refused); false for
    /// one that was not captured, which the caller serves as an ordinary outbound connection.
    func acceptCaptured(_ fd: Int32, _ capture: CaptureTable, settings: ProxySnapshot.ListenerSettings) -> Bool {
        guard let original = Socket.originalDestination(fd) else { return false }
        if original.isLoopback && original.port == outboundListenPort { return false }
        stats.inc(.capturedConnections)
        if capture.isLoop(original) {
            Glibc.close(fd)
            stats.inc(.captureLoopsRefused)
            logRejection("capture", "connection refused: its original destination \(original.socketAddress) is this sidecar (a loop)")
            return true
        }
        if case .detect? = capture.lookup(original) {
            // Not declared: the first bytes decide (at most ProtocolDetector.timeout). Counted
            // against the listener's limit like the connection it becomes.
            if !listenerHasRoom(inbound: false, settings: settings) || detecting >= 1024 {
                Glibc.close(fd)
                stats.inc(.connectionLimit)
                logRejection("proxy", "connection refused: the outbound listener holds its maxConnections")
                return true
            }
            let d = ProtocolDetector(worker: self, fd: fd, original: original)
            detecting += 1
            if !d.start() { detecting -= 1 }
            return true
        }
        dispatchCaptured(fd, original: original, detected: nil)
        return true
    }

    /// Carries a captured connection to where its original destination leads in the snapshot in
    /// force: `detected` is what protocol detection found (true: HTTP) for a service that does
    /// not declare one, nil when it was not needed.
    func dispatchCaptured(_ fd: Int32, original: IPEndpoint, detected: Bool?) {
        let s = snapshot
        guard let capture = s.capture, let settings = s.outbound else { Glibc.close(fd); return }
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        var entry = capture.lookup(original)
        if case .detect(let v, let sv)? = entry {
            // A snapshot that came during detection may declare it now; otherwise the bytes say.
            entry = detected == false ? .tcp(service: sv) : .http(vhost: v)
        }
        switch entry {
        case .http?, .detect?:
            if !listenerHasRoom(inbound: false, settings: settings) {
                Glibc.close(fd)
                stats.inc(.connectionLimit)
                logRejection("proxy", "connection refused: the outbound listener holds its maxConnections")
                return
            }
            openDownstream(fd, tls: nil, inbound: false, settings: settings, captured: original)
        case .tcp(let service)?:
            // The service's tcp routes, the first that takes the port (its default route takes
            // the service port).
            guard let r = s.tcpServices[service].first(where: { s.tcpRoutes[$0].matches(port: Int(original.port)) }) else {
                Glibc.close(fd)
                stats.inc(.noRoute)
                logRejection("capture", "connection refused: no tcp route takes port \(original.port) of its service")
                return
            }
            startTCPProxy(fd: fd, initial: empty, target: .route(r))
        case nil:
            if capture.policy == .registryOnly {
                Glibc.close(fd)
                stats.inc(.blackHoleConnections)
                let key = MetricKey.make(inbound: false, route: RouteCatalog.blackHoleID, code: 0, flag: .noRoute, peer: 0, tcp: true)
                metrics.recordTCP(key: key, opened: 1, closed: 1, sent: 0, received: 0)
                logRejection("capture", "connection to \(original.socketAddress) refused: not a mesh destination (outboundTrafficPolicy REGISTRY_ONLY)")
                return
            }
            stats.inc(.passthroughConnections)
            startTCPProxy(fd: fd, initial: empty, target: .passthrough(original.socketAddress))
        }
    }

    /// A protocol detection ended (its connection handed on or closed).
    func detectionEnded() {
        detecting -= 1
        finishDrainIfIdle()
    }
}
