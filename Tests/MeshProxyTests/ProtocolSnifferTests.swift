import XCTest
@testable import MeshProxy

/// The verdicts capture takes on a connection's first bytes: negative cases first (what must be
/// TCP, never handed to the HTTP router), then HTTP/1.1 and h2c, then every split point.
final class ProtocolSnifferTests: XCTestCase {
    func verdict(_ s: String) -> ProtocolSniffer.Verdict { verdict(Array(s.utf8)) }
    func verdict(_ b: [UInt8]) -> ProtocolSniffer.Verdict { b.withUnsafeBytes { ProtocolSniffer.classify($0) } }

    func testTCPAtTheFirstByteThatCannotBeHTTP() {
        XCTAssertEqual(verdict([0x16, 0x03, 0x01, 0x00]), .tcp)             // TLS ClientHello
        XCTAssertEqual(verdict("*1\r\n$4\r\nPING\r\n"), .tcp)                // Redis RESP
        XCTAssertEqual(verdict("*"), .tcp)
        XCTAssertEqual(verdict("get / HTTP/1.1\r\n"), .tcp)                  // methods are uppercase
        XCTAssertEqual(verdict(" GET / HTTP/1.1\r\n"), .tcp)
        XCTAssertEqual(verdict("GET  / HTTP/1.1\r\n"), .tcp)                 // empty target
        XCTAssertEqual(verdict("GET / HTTP/2.0\r\n"), .tcp)
        XCTAssertEqual(verdict("GET / HTTP/1.2\r\n"), .tcp)
        XCTAssertEqual(verdict("GET / HTTP/1.1\rX"), .tcp)
        XCTAssertEqual(verdict("GET /a\u{7f}b HTTP/1.1\r\n"), .tcp)          // control byte in the target
        XCTAssertEqual(verdict("GET /\tx HTTP/1.1\r\n"), .tcp)
        XCTAssertEqual(verdict("ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1\r\n"), .tcp) // a 21-letter method
        XCTAssertEqual(verdict("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), .tcp)     // a broken preface
        XCTAssertEqual(verdict("SSH-2.0-OpenSSH_9.2\r\n"), .tcp)
        XCTAssertEqual(verdict([0x00]), .tcp)
    }

    func testAnOverlongRequestLineIsTCP() {
        let long = "GET /" + String(repeating: "a", count: ProtocolSniffer.maxRequestLine + 10)
        XCTAssertEqual(verdict(long), .tcp)
    }

    func testHTTP1AndH2c() {
        XCTAssertEqual(verdict("GET / HTTP/1.1\r\n"), .http1)
        XCTAssertEqual(verdict("GET http://reviews:9080/x HTTP/1.1\r\nHost: reviews\r\n\r\n"), .http1)
        XCTAssertEqual(verdict("POST /upload HTTP/1.0\r\n"), .http1)
        XCTAssertEqual(verdict("M-SEARCH * HTTP/1.1\r\n"), .http1)
        XCTAssertEqual(verdict("OPTIONS * HTTP/1.1\n"), .http1)
        XCTAssertEqual(verdict("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), .h2c)
        XCTAssertEqual(verdict("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\u{0}\u{0}\u{12}\u{4}"), .h2c)
    }

    /// Every prefix of an HTTP/1.1 request line and of the preface waits for more bytes, never
    /// decides early either way.
    func testEveryPrefixNeedsMore() {
        for whole in ["GET /index.html HTTP/1.1\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
            let b = Array(whole.utf8)
            for cut in 0..<b.count {
                XCTAssertEqual(verdict(Array(b[0..<cut])), .needMore, "\(whole.debugDescription) cut at \(cut)")
            }
        }
        XCTAssertEqual(verdict("PRI * HTTP/1.1\r\n"), .http1)   // PRI as an HTTP/1.1 method, not the preface
    }
}
