import XCTest
@testable import MeshCore
@testable import MeshIO
@testable import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

/// A server `Connection` with TLS whose peer's last handshake flight, application data and
/// close_notify arrive in one read (a caller that writes its bytes and closes at once, as a
/// CONNECT client closing right after `200` does through the caller's sidecar): the owner must
/// see the connection established first, then the data, then the clean end. Found by
/// tests/e2e/test_tcp.py (a TCP session stuck, never established).
final class TLSConnectionEndTests: XCTestCase {
    /// Records its hooks in order.
    final class Recorder: Connection {
        var events: [String] = []
        override func onEstablished() { events.append("established") }
        override func onInput() {
            events.append("input:" + String(decoding: UnsafeRawBufferPointer(start: input.readPointer, count: input.readableBytes), as: UTF8.self))
            input.consume(input.readableBytes)
        }
        override func onPeerClosed(error: Int32) { events.append("peer-closed:\(error)") }
    }

    func context(_ role: TLSContext.Role, _ who: String) throws -> TLSContext {
        let pki = TLSSessionTests.pki
        return try TLSContext(role: role, options: TLSContext.Options(certChainFile: "\(pki)/\(who)/cert-chain.pem",
                                                                       privateKeyFile: "\(pki)/\(who)/key.pem",
                                                                       trustBundleFile: "\(pki)/root-cert.pem"))
    }

    func writeAll(_ fd: Int32, _ b: ByteBuffer) {
        while !b.isEmpty {
            let n = Glibc.write(fd, b.readPointer, b.readableBytes)
            XCTAssertGreaterThan(n, 0)
            if n <= 0 { return }
            b.consume(n)
        }
    }

    func testAHandshakeEndingInTheSameReadAsCloseNotifyIsEstablishedThenDataThenEnd() throws {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        defer { Glibc.close(fds[1]) }
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        let loop = EventLoop(name: "tls-end")
        let server = Recorder(loop: loop, fd: fds[0], security: TLSSession(context: try context(.server, "server")), connecting: false)
        XCTAssertTrue(server.start())
        defer { if !server.isClosed { server.closeNow() } }

        // The client's side by hand: its first flight, then the server's answer until the client
        // considers the handshake done (its last flight is then queued, not yet sent).
        let client = TLSSession(context: try context(.client, "client"))
        let c2s = ByteBuffer(), s2c = ByteBuffer(), clientIn = ByteBuffer()
        XCTAssertNotEqual(client.startHandshake(output: c2s), .failed)
        writeAll(fds[1], c2s)
        var rounds = 0
        while !client.isEstablished && rounds < 200 {
            rounds += 1
            loop.runOnce(maxWaitMillis: 10)
            s2c.reserve(64 * 1024)
            let n = Glibc.read(fds[1], s2c.writePointer, s2c.writableBytes)
            if n > 0 { s2c.commit(n) }
            if !s2c.isEmpty { XCTAssertNotEqual(client.decrypt(raw: s2c, input: clientIn, output: c2s, limit: 1 << 20), .failed, client.failureReason) }
        }
        XCTAssertTrue(client.isEstablished, client.failureReason)
        XCTAssertEqual(server.events, [], "the server has not seen the client's last flight yet")
        XCTAssertFalse(c2s.isEmpty, "the client's last flight is queued")

        // Last flight, data and close_notify in one write, then the FIN.
        let hello: StaticString = "hello"
        XCTAssertTrue(client.encrypt(hello.utf8Start, hello.utf8CodeUnitCount, output: c2s))
        client.shutdown(output: c2s)
        writeAll(fds[1], c2s)
        XCTAssertEqual(Glibc.shutdown(fds[1], Int32(SHUT_WR)), 0)
        for _ in 0..<100 where !server.events.contains(where: { $0.hasPrefix("peer-closed") }) { loop.runOnce(maxWaitMillis: 10) }
        XCTAssertEqual(server.events, ["established", "input:hello", "peer-closed:0"])
        XCTAssertTrue(server.isEstablished)
    }
}
