import MeshCore
import MeshIO

/// One side of a TCP relay: the caller's connection (`downstream`) or the connection to the
/// destination (`upstream`). It holds no logic: every event goes to its `TCPProxySession`,
/// which moves bytes from one side's `input` to the other side's socket. Once the session has
/// ended (`sessionDone`) the side reports nothing more (a failure reports its close and then
/// its error; the session may be gone by the second), and each hook holds the session while it
/// runs, so the session ending inside a hook cannot free it under the hook.
final class TCPSide: Connection {
    unowned(unsafe) let session: TCPProxySession
    unowned(unsafe) let worker: Worker
    let isDownstream: Bool
    /// The session ended: hooks are no longer forwarded.
    var sessionDone = false

    init(session: TCPProxySession, worker: Worker, fd: Int32, security: TransportSecurity?, downstream: Bool) {
        self.session = session
        self.worker = worker
        self.isDownstream = downstream
        super.init(loop: worker.loop, fd: fd, security: security, connecting: !downstream)
    }

    override func onEstablished() { if sessionDone { return }; let s = session; s.sideEstablished(self) }
    override func onInput() { if sessionDone { return }; let s = session; s.sideInput(self) }
    override func onDrained() { if sessionDone { return }; let s = session; s.sideDrained(self) }
    override func onPeerClosed(error: Int32) {
        if sessionDone {
            // A refused handshake closes the side (ending the session) before it says why: still
            // counted, as the HTTP listener counts it.
            if error == -1 && isDownstream {
                worker.stats.inc(.tlsHandshakesFailed)
                worker.logRejection("inbound", "TLS handshake refused: \(security?.failureReason ?? "unknown")")
            }
            return
        }
        let s = session
        s.sidePeerClosed(self, error: error)
    }
    override func onDeadline(now: UInt64) { if sessionDone { return }; let s = session; s.sideDeadline(self, now: now) }

    override func onClosed() {
        worker.stats.dec(isDownstream ? .downstreamConnectionsActive : .upstreamConnectionsActive)
        if sessionDone { return }
        let s = session
        s.sideClosed(self)
    }
}
