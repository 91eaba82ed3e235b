import MeshCore
import MeshIO

/// One side of a TCP relay: the caller's connection (`downstream`) or the connection to the
/// destination (`upstream`). It holds no logic: every event goes to its `TCPProxySession`,
/// which moves bytes from one side's `input` to the other side's socket.
final class TCPSide: Connection {
    unowned(unsafe) let session: TCPProxySession
    let isDownstream: Bool

    init(session: TCPProxySession, loop: EventLoop, fd: Int32, security: TransportSecurity?, downstream: Bool) {
        self.session = session
        self.isDownstream = downstream
        super.init(loop: loop, fd: fd, security: security, connecting: !downstream)
    }

    override func onEstablished() { session.sideEstablished(self) }
    override func onInput() { session.sideInput(self) }
    override func onDrained() { session.sideDrained(self) }
    override func onPeerClosed(error: Int32) { session.sidePeerClosed(self, error: error) }
    override func onClosed() { session.sideClosed(self) }
    override func onDeadline(now: UInt64) { session.sideDeadline(self, now: now) }
}
