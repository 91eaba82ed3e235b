import XCTest
import CMeshShims
import MeshCore
@testable import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// What the TCP relay needs of `Connection`, over real loopback TCP: `shutdownWriteAfterFlush`
/// sends every queued byte, then the FIN, and keeps reading (a half-close, not a close);
/// `writeThrough` delivers bytes written straight from the caller's buffer in order, also past
/// a full socket; `resetNow` makes the peer see a reset, not an end of stream.
final class ConnectionHalfCloseTests: XCTestCase {
    private var lt: LoopThread!

    override func setUp() { lt = LoopThread(name: "half-close test") }

    override func tearDown() {
        XCTAssertTrue(lt.stop(), "the loop did not stop")
        lt = nil
    }

    private func accepted(_ listener: LocalListener, sendBuffer: Int32? = nil) throws -> RecordingConnection {
        let fd = try listener.accept()
        if var size = sendBuffer { setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        let loop = lt.loop
        return try lt.sync {
            let c = RecordingConnection(loop: loop, fd: fd, security: nil, connecting: false)
            _ = c.start()
            return c
        }
    }

    func testShutdownWriteAfterFlushSendsEveryByteThenFINAndKeepsReading() throws {
        let listener = try LocalListener()
        let peer = try PeerSocket(connectTo: listener.port, receiveBuffer: 16 * 1024)
        let server = try accepted(listener, sendBuffer: 16 * 1024)
        let total = 1 << 20
        try lt.sync {
            pattern(total).withUnsafeBytes { server.send($0.baseAddress!, $0.count) }
            server.shutdownWriteAfterFlush()
            // Bytes queued after the shutdown are never sent.
            let late: StaticString = "late"
            server.send(late.utf8Start, late.utf8CodeUnitCount)
        }
        let got = try peer.readToEnd(timeoutMillis: 5_000)
        XCTAssertEqual(got.count, total)
        XCTAssertTrue(got == pattern(total), "bytes before the FIN damaged or followed by others")
        // Half-closed: the server still reads what the peer sends, and is still open.
        try peer.write(Array("after FIN".utf8))
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { (try? self.lt.sync { server.received.count }) == 9 })
        let (closed, shutDone, received) = try lt.sync { (server.isClosed, server.writeShutdownDone, server.received) }
        XCTAssertFalse(closed, "a write shutdown closed the connection")
        XCTAssertTrue(shutDone)
        XCTAssertEqual(received, Array("after FIN".utf8))
        peer.shutdownWrite()
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { (try? self.lt.sync { server.peerClosedCalls.count }) == 1 })
        XCTAssertEqual(try lt.sync { server.peerClosedCalls.first?.error }, 0)
    }

    func testWriteThroughDeliversInOrderPastAFullSocket() throws {
        let listener = try LocalListener()
        let peer = try PeerSocket(connectTo: listener.port, receiveBuffer: 16 * 1024)
        let server = try accepted(listener, sendBuffer: 16 * 1024)
        let total = 4 << 20
        let queuedAfterFirst = try lt.sync { () -> Int in
            let all = pattern(total)
            // Four chunks: the first fills the socket, the rest must queue behind what is left.
            all.withUnsafeBytes { p in server.writeThrough(p.baseAddress!, total / 4) }
            let q = server.pendingOutput
            all.withUnsafeBytes { p in
                for i in 1..<4 { server.writeThrough(p.baseAddress! + i * total / 4, total / 4) }
            }
            server.shutdownWriteAfterFlush()
            return q
        }
        XCTAssertGreaterThan(queuedAfterFirst, 0, "a 1 MiB write into a 16 KiB socket buffer left nothing queued")
        let got = try peer.readToEnd(timeoutMillis: 10_000)
        XCTAssertEqual(got.count, total)
        XCTAssertTrue(got == pattern(total), "bytes written through arrived damaged or out of order")
    }

    func testResetNowIsAResetAtThePeer() throws {
        let listener = try LocalListener()
        let peer = try PeerSocket(connectTo: listener.port)
        let server = try accepted(listener)
        try peer.write(Array("x".utf8))
        XCTAssertTrue(waitUntil(timeoutMillis: 2_000) { (try? self.lt.sync { server.received.count }) == 1 })
        try lt.sync { server.resetNow() }
        XCTAssertThrowsError(try peer.readToEnd(timeoutMillis: 2_000), "the peer read a clean end of stream, not a reset") { e in
            XCTAssertEqual((e as? PeerError)?.code, ECONNRESET, "\(e)")
        }
    }
}
