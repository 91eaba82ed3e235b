import CMeshShims
import MeshCore
@testable import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// Echoes every byte it reads; closes (after flushing) when the peer ends its side.
final class EchoConnection: Connection, @unchecked Sendable {
    override func onInput() {
        send(input, input.readIndex, input.writeIndex)
        input.consume(input.readableBytes)
    }

    override func onPeerClosed(error: Int32) {
        if error == 0 { closeAfterFlush() }
    }
}

/// A connection that records what happens to it, in order: its hooks as they are called, the
/// bytes it read, and the state it was in when the peer went away. Touched on its loop's thread only.
final class RecordingConnection: Connection, @unchecked Sendable {
    var hooks: [String] = []
    var received: [UInt8] = []
    /// Sent as soon as the transport is ready.
    var greeting: [UInt8] = []
    /// `closeAfterFlush(lingerNanos:)` right after the greeting.
    var closeAfterGreeting: UInt64?
    /// Leave input unread (the peer's bytes pile up).
    var consumeInput = true
    /// (error, isClosed, peerClosed) at each `onPeerClosed`.
    var peerClosedCalls: [(error: Int32, isClosed: Bool, peerClosed: Bool)] = []
    /// Runs inside `onPeerClosed`.
    var onPeerClosedAction: ((RecordingConnection) -> Void)?
    /// Monotonic time of `onClosed`.
    var closedAt: UInt64 = 0

    override func onConnected() { hooks.append("connected") }

    override func onEstablished() {
        hooks.append("established")
        if !greeting.isEmpty { greeting.withUnsafeBytes { send($0.baseAddress!, $0.count) } }
        if let linger = closeAfterGreeting { closeAfterFlush(lingerNanos: linger) }
    }

    override func onInput() {
        if !consumeInput { return }
        received += input.readableArray
        input.consume(input.readableBytes)
    }

    override func onPeerClosed(error: Int32) {
        hooks.append("peerClosed(\(error))")
        peerClosedCalls.append((error, isClosed, peerClosed))
        onPeerClosedAction?(self)
    }

    override func onClosed() {
        hooks.append("closed")
        closedAt = Clock.monotonicNanos()
    }
}

/// Writes `total` bytes of `pattern` as fast as back-pressure allows: it queues until the
/// connection is congested, then waits for `onDrained`; when all is queued it closes after the
/// flush. Records every `onDrained` with the output still pending then, and the most output it
/// ever had pending.
final class ProducerConnection: Connection, @unchecked Sendable {
    let total: Int
    private(set) var queued = 0
    private(set) var pendingAtDrained: [Int] = []
    /// The most output ever pending right after queueing.
    private(set) var maxPending = 0
    private(set) var closed = false

    init(loop: EventLoop, fd: Int32, total: Int) {
        self.total = total
        super.init(loop: loop, fd: fd, security: nil, connecting: false)
    }

    override func onEstablished() { pump() }

    override func onDrained() {
        pendingAtDrained.append(pendingOutput)
        pump()
    }

    override func onClosed() { closed = true }

    private func pump() {
        while queued < total && !isCongested {
            let chunk = pattern(min(16 * 1024, total - queued), from: queued)
            chunk.withUnsafeBytes { send($0.baseAddress!, $0.count) }
            queued += chunk.count
        }
        maxPending = max(maxPending, pendingOutput)
        if queued == total { closeAfterFlush() }
    }
}
