import XCTest
import MeshCore
import MeshIO
import MeshPKI
import MeshControlWire

/// `ControlEndpoints` (meshctl --meshd URL,URL) on real sockets: a replica that cannot be
/// reached is skipped for the next one; an HTTP answer, even an error, is final; when none can be
/// reached the error names every address.
final class ControlEndpointsTests: XCTestCase {
    /// A port nothing listens on (bound, then closed).
    func deadPort() -> Int {
        let fd = Socket.listen(SocketAddress(host: "127.0.0.1", port: 0)!, reusePort: false)
        let p = Socket.localPort(fd)
        close(fd)
        return p
    }

    func server(status: Int, body: String) throws -> ControlServer {
        let s = try ControlServer(address: SocketAddress(host: "127.0.0.1", port: 0)!, name: "test", context: { nil }) { _ in
            ControlResponse(status, body)
        }
        Threads.spawnDetached { s.run() }
        return s
    }

    func endpoint(_ port: Int) -> (name: String, endpoint: ControlEndpoint) {
        ("http://127.0.0.1:\(port)", ControlEndpoint(plain: SocketAddress(host: "127.0.0.1", port: port)!))
    }

    func testAnUnreachableReplicaIsSkippedAndAnAnswerIsFinal() throws {
        let dead = deadPort()
        let ok = try server(status: 200, body: "from the second\n")
        defer { ok.stop() }
        let r = try ControlEndpoints([endpoint(dead), endpoint(ok.port)]).request(method: "GET", path: "/v1/proxies")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.body, "from the second\n")
        // An error answer from the first is the answer: the second is never asked.
        let failing = try server(status: 500, body: "broken\n")
        defer { failing.stop() }
        let e = try ControlEndpoints([endpoint(failing.port), endpoint(ok.port)]).request(method: "GET", path: "/")
        XCTAssertEqual(e.status, 500)
        XCTAssertEqual(e.body, "broken\n")
    }

    func testWhenNoneCanBeReachedTheErrorNamesEach() {
        let a = deadPort(), b = deadPort()
        XCTAssertThrowsError(try ControlEndpoints([endpoint(a), endpoint(b)]).request(method: "GET", path: "/")) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("http://127.0.0.1:\(a): cannot connect to 127.0.0.1:\(a): "), text)
            XCTAssertTrue(text.contains("; http://127.0.0.1:\(b): cannot connect to 127.0.0.1:\(b): "), text)
        }
    }
}
