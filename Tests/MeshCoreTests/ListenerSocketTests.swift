import XCTest
import CMeshShims
@testable import MeshCore
@testable import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// `Socket.listenExclusive`: per-worker SO_REUSEPORT listeners that no other socket shares,
/// whoever holds the port and however it was bound (real sockets on 127.0.0.1).
final class ListenerSocketTests: XCTestCase {
    private let any = SocketAddress(host: "127.0.0.1", port: 0)!

    private func group(_ addr: SocketAddress, _ n: Int, file: StaticString = #filePath, line: UInt = #line) throws -> [Int32] {
        switch Socket.listenExclusive(addr, count: n) {
        case .success(let fds): return fds
        case .failure(let e):
            XCTFail("listenExclusive(\(addr), \(n)): \(e)", file: file, line: line)
            throw e
        }
    }

    func testOneGroupSharesThePortAcrossItsSockets() throws {
        let fds = try group(any, 3)
        defer { for f in fds { close(f) } }
        XCTAssertEqual(fds.count, 3)
        let port = Socket.localPort(fds[0])
        XCTAssertGreaterThan(port, 0)
        XCTAssertEqual(fds.map(Socket.localPort), [port, port, port])
        // The kernel hands a new connection to one of them.
        let c = Socket.connect(SocketAddress(host: "127.0.0.1", port: port)!)
        XCTAssertGreaterThanOrEqual(c, 0)
        defer { close(c) }
        var accepted: Int32 = -1
        for _ in 0..<200 where accepted < 0 {
            for f in fds where accepted < 0 { accepted = mesh_accept4(f) }
            if accepted < 0 { usleep(5_000) }
        }
        XCTAssertGreaterThanOrEqual(accepted, 0, "no listener of the group accepted the connection")
        if accepted >= 0 { close(accepted) }
    }

    func testASecondGroupOnTheSamePortIsRefused() throws {
        let first = try group(any, 2)
        defer { for f in first { close(f) } }
        let taken = SocketAddress(host: "127.0.0.1", port: Socket.localPort(first[0]))!
        guard case .failure(let e) = Socket.listenExclusive(taken, count: 2) else {
            return XCTFail("a second process-wide group bound \(taken), which would split its connections")
        }
        XCTAssertEqual(e, SocketError(code: EADDRINUSE))
    }

    func testAPortHeldWithSOReusePortIsRefused() throws {
        // What each worker bound before: SO_REUSEPORT from the start, so anyone could join it.
        let holder = Socket.listen(any, reusePort: true)
        XCTAssertGreaterThanOrEqual(holder, 0)
        defer { close(holder) }
        let taken = SocketAddress(host: "127.0.0.1", port: Socket.localPort(holder))!
        guard case .failure(let e) = Socket.listenExclusive(taken, count: 2) else {
            return XCTFail("joined the SO_REUSEPORT group of another socket on \(taken)")
        }
        XCTAssertEqual(e, SocketError(code: EADDRINUSE))
    }

    func testAPortHeldWithoutSOReusePortIsRefused() throws {
        let holder = Socket.listen(any, reusePort: false)
        XCTAssertGreaterThanOrEqual(holder, 0)
        defer { close(holder) }
        let taken = SocketAddress(host: "127.0.0.1", port: Socket.localPort(holder))!
        guard case .failure(let e) = Socket.listenExclusive(taken, count: 1) else {
            return XCTFail("bound \(taken) although another socket listens there")
        }
        XCTAssertEqual(e, SocketError(code: EADDRINUSE))
    }

    func testThePortIsFreeAgainOnceTheGroupIsClosed() throws {
        let first = try group(any, 2)
        let port = Socket.localPort(first[0])
        for f in first { close(f) }
        let again = try group(SocketAddress(host: "127.0.0.1", port: port)!, 2)
        for f in again { close(f) }
    }
}
