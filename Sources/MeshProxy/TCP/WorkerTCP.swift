import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// How connections become TCP relays on a worker: the entry point for any listener holding an
/// accepted plaintext socket (the CONNECT hand-over today, transparent capture next), and the
/// inbound listener of a TCP app.
extension Worker {
    /// Carries an accepted, non-blocking plaintext socket as opaque TCP to `target`, on this
    /// worker's thread: `initial` holds the bytes already read from it (possibly none; they go
    /// first), the connection to the destination is made now (mTLS for ISTIO_MUTUAL clusters,
    /// plain for DISABLE clusters and `.passthrough`), and the socket is owned by the relay from
    /// here on (closed by it, also when this returns false: the listener's connection limit,
    /// or the loop could not watch it). `replyToConnect`: the socket asked with HTTP CONNECT and
    /// gets `200` once connected, `503` when no attempt connects.
    @discardableResult
    public func startTCPProxy(fd: Int32, initial: UnsafeRawBufferPointer, target: TCPTarget, replyToConnect: Bool = false) -> Bool {
        guard let settings = snapshot.outbound ?? snapshot.inbound else { Glibc.close(fd); return false }
        if !listenerHasRoom(inbound: false, settings: settings) {
            Glibc.close(fd)
            stats.inc(.connectionLimit)
            logRejection("proxy", "connection refused: the outbound listener holds its maxConnections")
            return false
        }
        let s = TCPProxySession(worker: self, inbound: false, replyToConnect: replyToConnect)
        tcpSessionStarted(s)
        if !s.start(fd: fd, initial: initial.baseAddress, initial.count, security: nil, target: target,
                    handshakeTimeout: settings.headerTimeout) {
            tcpSessionEnded(s)
            return false
        }
        return true
    }

    /// A connection accepted on the inbound listener of a TCP app (`security`: the listener's
    /// mTLS, PERMISSIVE or DISABLE transport), carried to the app once its handshake is done
    /// and its AuthorizationPolicy verdict allows it.
    func acceptInboundTCP(_ fd: Int32, security: TransportSecurity?, settings: ProxySnapshot.ListenerSettings,
                          target: TCPTarget = .localApp) {
        if !listenerHasRoom(inbound: true, settings: settings) {
            Glibc.close(fd)
            stats.inc(.connectionLimit)
            logRejection("proxy", "connection refused: the inbound listener holds its maxConnections")
            return
        }
        let s = TCPProxySession(worker: self, inbound: true, replyToConnect: false)
        tcpSessionStarted(s)
        if !s.start(fd: fd, initial: nil, 0, security: security, target: target, handshakeTimeout: settings.headerTimeout) {
            tcpSessionEnded(s)
        }
    }
}
