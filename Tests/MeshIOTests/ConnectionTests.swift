import XCTest
import CMeshShims
import MeshCore
@testable import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// `Connection` over real loopback TCP on a loop run by its own thread: a client and an accepted
/// server connection echoing bytes; back-pressure against a peer that stops reading; the peer's
/// FIN (error 0, our side still open and able to answer) and reset; a refused connect; and
/// `closeAfterFlush` delivering every queued byte before the FIN, even with unread input.
final class ConnectionTests: XCTestCase {
    private var lt: LoopThread!

    override func setUp() { lt = LoopThread(name: "connection test") }

    override func tearDown() {
        XCTAssertTrue(lt.stop(), "the loop did not stop")
        lt = nil
    }

    /// Accepts the next connection on `listener` (with SO_SNDBUF set to `sendBuffer`, if given),
    /// and on the loop's thread wraps it with `make` and starts it.
    private func accepted<C: Connection & Sendable>(_ type: C.Type, _ listener: LocalListener, sendBuffer: Int32? = nil,
                                                    _ make: @escaping @Sendable (EventLoop, Int32) -> C) throws -> C {
        let fd = try listener.accept()
        if var size = sendBuffer { setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        let loop = lt.loop
        return try lt.sync {
            let c = make(loop, fd)
            _ = c.start()
            return c
        }
    }

    func testClientAndServerConnectionsEchoAMegabyte() throws {
        let loop = lt.loop
        let listenFd = Socket.listen(SocketAddress(host: "127.0.0.1", port: 0)!, reusePort: false)
        XCTAssertGreaterThanOrEqual(listenFd, 0)
        let port = Socket.localPort(listenFd)
        let payload = pattern(1 << 20)
        let (client, listener) = try lt.sync { () -> (RecordingConnection, LoopOwned<Listener>) in
            let l = Listener(loop: loop, fd: listenFd, name: "echo") { fd in
                _ = EchoConnection(loop: loop, fd: fd, security: nil, connecting: false).start()
            }
            _ = l.start()
            let fd = Socket.connect(SocketAddress(host: "127.0.0.1", port: port)!)
            let c = RecordingConnection(loop: loop, fd: fd, security: nil, connecting: true)
            c.greeting = payload
            _ = c.start()
            return (c, LoopOwned(l))
        }
        XCTAssertTrue(waitUntil(timeoutMillis: 5_000) { (try? self.lt.sync { client.received.count }) ?? 0 >= payload.count },
                      "the echo did not come back")
        let (received, hooks, accepted) = try lt.sync { (client.received, client.hooks, listener.value.accepted) }
        XCTAssertEqual(received.count, payload.count)
        XCTAssertTrue(received == payload, "the echoed bytes differ from those sent")
        XCTAssertEqual(hooks, ["connected", "established"])
        XCTAssertEqual(accepted, 1)
        // The client ends: the echo side sees a clean end of stream and closes too; the client's
        // linger sees that and closes without waiting out its second.
        try lt.sync { client.closeAfterFlush() }
        XCTAssertTrue(waitUntil(timeoutMillis: 900) { (try? self.lt.sync { client.isClosed }) ?? false })
        XCTAssertEqual(try lt.sync { client.hooks }, ["connected", "established", "closed"])
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { (try? self.lt.sync { loop.registeredCount }) == 1 },
                      "the echo connection is still registered (only the listener should be)")
        try lt.sync { listener.value.close() }
    }

    func testBackPressureStopsAtTheHighWatermarkAndResumesBelowTheLow() throws {
        let listener = try LocalListener()
        let peer = try PeerSocket(connectTo: listener.port, receiveBuffer: 16 * 1024)
        let total = 1 << 20
        let (high, low) = (128 * 1024, 32 * 1024)
        let producer = try accepted(ProducerConnection.self, listener, sendBuffer: 16 * 1024) { loop, fd in
            let p = ProducerConnection(loop: loop, fd: fd, total: total)
            p.highWatermark = high
            p.lowWatermark = low
            return p
        }
        // The peer reads nothing: the kernel buffers fill, the output backs up, the producer stops
        // with more than the low watermark pending, so no onDrained is due.
        usleep(200_000)
        let stalled = try lt.sync { (queued: producer.queued, pending: producer.pendingOutput, congested: producer.isCongested,
                                     drained: producer.pendingAtDrained.count, maxPending: producer.maxPending) }
        XCTAssertLessThan(stalled.queued, total, "everything was queued regardless of the peer")
        XCTAssertGreaterThan(stalled.pending, low)
        XCTAssertEqual(stalled.congested, stalled.pending >= high)
        XCTAssertGreaterThanOrEqual(stalled.maxPending, high, "the producer never saw the connection congested")
        XCTAssertLessThan(stalled.maxPending, high + 16 * 1024, "queued past isCongested")
        usleep(200_000)
        let still = try lt.sync { (producer.queued, producer.pendingOutput, producer.pendingAtDrained.count) }
        XCTAssertEqual(still.0, stalled.queued, "the producer kept queueing while the peer read nothing")
        XCTAssertEqual(still.1, stalled.pending, "output moved while the peer read nothing")
        XCTAssertEqual(still.2, stalled.drained, "onDrained while the peer read nothing")
        // The peer reads: onDrained comes back each time the output falls to the low watermark,
        // and every byte arrives in order, then the FIN.
        let got = try peer.readToEnd(timeoutMillis: 5_000)
        XCTAssertEqual(got.count, total)
        XCTAssertTrue(got == pattern(total), "bytes lost, repeated or reordered under back-pressure")
        let after = try lt.sync { (producer.queued, producer.pendingAtDrained) }
        XCTAssertEqual(after.0, total)
        XCTAssertGreaterThan(after.1.count, stalled.drained, "onDrained never came once the peer read")
        XCTAssertTrue(after.1.allSatisfy { $0 <= low }, "onDrained above the low watermark: \(after.1)")
        peer.close()
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { (try? self.lt.sync { producer.closed }) ?? false })
    }

    func testPeerFINIsErrorZeroAndOurSideCanStillAnswer() throws {
        let listener = try LocalListener()
        let peer = try PeerSocket(connectTo: listener.port)
        let server = try accepted(RecordingConnection.self, listener) { loop, fd in
            let c = RecordingConnection(loop: loop, fd: fd, security: nil, connecting: false)
            c.onPeerClosedAction = { c in
                let bye = Array("bye: \(c.received.count) bytes".utf8)
                bye.withUnsafeBytes { c.send($0.baseAddress!, $0.count) }
                c.closeAfterFlush()
            }
            return c
        }
        try peer.write(Array("hello".utf8))
        peer.shutdownWrite()
        XCTAssertEqual(String(decoding: try peer.readToEnd(), as: UTF8.self), "bye: 5 bytes")
        let (hooks, calls, received) = try lt.sync { (server.hooks, server.peerClosedCalls, server.received) }
        XCTAssertEqual(received, Array("hello".utf8))
        XCTAssertEqual(calls.count, 1)
        XCTAssertEqual(calls.first?.error, 0)
        XCTAssertEqual(calls.first?.isClosed, false, "a clean end of stream closed our side too")
        XCTAssertEqual(calls.first?.peerClosed, true)
        XCTAssertEqual(hooks, ["established", "peerClosed(0)", "closed"])
    }

    func testPeerResetIsReportedWithItsErrorAndClosesTheConnection() throws {
        let listener = try LocalListener()
        let peer = try PeerSocket(connectTo: listener.port)
        let server = try accepted(RecordingConnection.self, listener) { loop, fd in
            RecordingConnection(loop: loop, fd: fd, security: nil, connecting: false)
        }
        peer.closeWithReset()
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { (try? self.lt.sync { server.isClosed }) ?? false })
        let (hooks, calls) = try lt.sync { (server.hooks, server.peerClosedCalls) }
        XCTAssertEqual(calls.count, 1)
        XCTAssertEqual(calls.first?.error, ECONNRESET)
        XCTAssertEqual(calls.first?.isClosed, true)
        XCTAssertEqual(hooks, ["established", "closed", "peerClosed(\(ECONNRESET))"])
    }

    func testARefusedConnectIsReportedOnce() throws {
        let refusing = try RefusingPort()
        let port = refusing.port
        let loop = lt.loop
        let (fd, client) = try lt.sync { () -> (Int32, RecordingConnection?) in
            let fd = Socket.connect(SocketAddress(host: "127.0.0.1", port: port)!)
            if fd < 0 { return (fd, nil) }
            let c = RecordingConnection(loop: loop, fd: fd, security: nil, connecting: true)
            _ = c.start()
            return (fd, c)
        }
        guard let client else {
            // The kernel may refuse a loopback connect at once; it must say why.
            return XCTAssertEqual(-fd, ECONNREFUSED)
        }
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { (try? self.lt.sync { client.isClosed }) ?? false })
        let (hooks, calls) = try lt.sync { (client.hooks, client.peerClosedCalls) }
        XCTAssertEqual(hooks, ["closed", "peerClosed(\(ECONNREFUSED))"], "connected or established although refused")
        XCTAssertEqual(calls.count, 1)
    }

    func testCloseAfterFlushDeliversEveryByteBeforeTheFINDespiteUnreadInput() throws {
        let listener = try LocalListener()
        let peer = try PeerSocket(connectTo: listener.port, receiveBuffer: 16 * 1024)
        let total = 1 << 20
        let server = try accepted(RecordingConnection.self, listener, sendBuffer: 16 * 1024) { loop, fd in
            let c = RecordingConnection(loop: loop, fd: fd, security: nil, connecting: false)
            c.inputLimit = 4 * 1024
            c.consumeInput = false
            c.greeting = pattern(total)
            c.closeAfterGreeting = 1_000_000_000
            return c
        }
        // Bytes the server never reads: more than its input limit, so some stay in the kernel
        // until the close; closing over them would reset the connection under the last bytes.
        XCTAssertGreaterThan(peer.writeNonBlocking(pattern(32 * 1024)), 8 * 1024)
        let got = try peer.readToEnd(timeoutMillis: 5_000)
        XCTAssertEqual(got.count, total)
        XCTAssertTrue(got == pattern(total), "the queued bytes arrived damaged")
        XCTAssertEqual(try lt.sync { server.isClosed }, false, "closed before the peer finished (it lingers for the peer)")
        let peerClosedAt = Clock.monotonicNanos()
        peer.close()
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { (try? self.lt.sync { server.isClosed }) ?? false })
        let (closedAt, hooks) = try lt.sync { (server.closedAt, server.hooks) }
        XCTAssertLessThan(elapsed(peerClosedAt, closedAt), Int64(ms(500)), "the linger waited out its time instead of seeing the peer close")
        XCTAssertEqual(hooks, ["established", "closed"])
    }

    func testCloseAfterFlushGivesUpLingeringAtItsDeadline() throws {
        let listener = try LocalListener()
        let peer = try PeerSocket(connectTo: listener.port)
        let server = try accepted(RecordingConnection.self, listener) { loop, fd in
            let c = RecordingConnection(loop: loop, fd: fd, security: nil, connecting: false)
            c.greeting = Array("last words".utf8)
            c.closeAfterGreeting = 200_000_000
            return c
        }
        XCTAssertEqual(String(decoding: try peer.readToEnd(), as: UTF8.self), "last words")
        let eofAt = Clock.monotonicNanos()
        // The peer keeps its side open: the server closes at its linger deadline.
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { (try? self.lt.sync { server.isClosed }) ?? false })
        let closedAt = try lt.sync { server.closedAt }
        XCTAssertLessThan(elapsed(eofAt, closedAt), Int64(ms(1_000)))
        XCTAssertGreaterThanOrEqual(elapsed(eofAt, closedAt), Int64(ms(150)), "closed well before the linger deadline")
        peer.close()
    }
}
