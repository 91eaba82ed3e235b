import XCTest
@testable import MeshProxy

/// The ClientHello SNI reader as hostile input meets it, negatives first: truncated records and
/// messages, lengths past what encloses them, huge records, no SNI, bad names; then well-formed
/// hellos (with extensions before the server name, and a real one from OpenSSL).
final class TLSClientHelloTests: XCTestCase {
    /// A ClientHello record: `extensions` raw (each type, length, body), `sni` appended as the
    /// server_name extension when given.
    private func hello(sni: String?, before: [UInt8] = [], after: [UInt8] = [], sessionID: Int = 32) -> [UInt8] {
        var ext: [UInt8] = before
        if let s = sni {
            let name = Array(s.utf8)
            let entry: [UInt8] = [0] + be16(name.count) + name
            let list = be16(entry.count) + entry
            ext += be16(0) + be16(list.count) + list
        }
        ext += after
        var body: [UInt8] = [3, 3] + [UInt8](repeating: 7, count: 32)
        body += [UInt8(sessionID)] + [UInt8](repeating: 1, count: sessionID)
        body += be16(4) + [0x13, 0x01, 0x13, 0x02]
        body += [1, 0]
        body += be16(ext.count) + ext
        let hs: [UInt8] = [1, UInt8(body.count >> 16), UInt8((body.count >> 8) & 0xff), UInt8(body.count & 0xff)] + body
        return [0x16, 3, 1] + be16(hs.count) + hs
    }

    private func be16(_ n: Int) -> [UInt8] { [UInt8(n >> 8), UInt8(n & 0xff)] }

    private func parse(_ b: [UInt8], limit: Int = TLSClientHello.defaultLimit) -> String {
        b.withUnsafeBytes { p in
            switch TLSClientHello.parse(p, limit: limit) {
            case .needMore: return "needMore"
            case .noServerName: return "noServerName"
            case .invalid(let why): return "invalid: \(why)"
            case .serverName(let off, let n): return "sni: " + String(decoding: b[off..<(off + n)], as: UTF8.self)
            }
        }
    }

    func testTruncatedInputWaitsForMoreAndNeverReadsPastIt() {
        let h = hello(sni: "secure.example")
        for cut in 0..<h.count { XCTAssertEqual(parse(Array(h[0..<cut])), "needMore", "cut at \(cut)") }
        XCTAssertEqual(parse(h), "sni: secure.example")
    }

    func testNotTLSAndBadRecordsAreRefused() {
        XCTAssertEqual(parse(Array("GET / HTTP/1.1\r\n".utf8)), "invalid: not a TLS handshake record")
        XCTAssertEqual(parse([0x16, 2, 0, 0, 10]), "invalid: not a TLS record version")
        XCTAssertEqual(parse([0x17, 3, 3, 0, 10]), "invalid: not a TLS handshake record")
        XCTAssertEqual(parse([0x16, 3, 1, 0, 2, 1, 0]), "invalid: record too short for a handshake message")
        // Huge lengths: past TLS's own limit, or past the buffer the gateway peeks into.
        XCTAssertEqual(parse([0x16, 3, 1, 0xff, 0xff]), "invalid: record longer than TLS allows")
        XCTAssertEqual(parse([0x16, 3, 1, 0x40, 0x00], limit: 1024), "invalid: ClientHello larger than the limit")
        var h = hello(sni: "a.example")
        h[5] = 2   // ServerHello
        XCTAssertEqual(parse(h), "invalid: first handshake message is not a ClientHello")
    }

    func testLengthsPastWhatEnclosesThemAreRefused() {
        // The handshake body claims more than the record holds (a hello split over records).
        var h = hello(sni: "a.example")
        h[6] = 0x01
        XCTAssertEqual(parse(h), "invalid: ClientHello split over records")
        // A session id longer than 32.
        XCTAssertEqual(parse(hello(sni: "a.example", sessionID: 33)), "invalid: bad session id")
        // The extensions block claims one byte more than is there.
        h = hello(sni: "a.example")
        let extLenAt = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 4 + 2
        h[extLenAt + 1] &+= 1
        XCTAssertEqual(parse(h), "invalid: bad extensions length")
        // An extension whose length runs past the block.
        let bad = hello(sni: nil, before: [0, 10, 0xff, 0xf0, 1, 2])
        XCTAssertEqual(parse(bad), "invalid: truncated extension")
        // A server_name list whose entry runs past the list.
        let name = Array("a.example".utf8)
        let entry: [UInt8] = [0] + be16(name.count + 5) + name
        let list = be16(entry.count) + entry
        XCTAssertEqual(parse(hello(sni: nil, before: be16(0) + be16(list.count) + list)), "invalid: truncated server name")
        // Empty list, empty name, two names, the extension twice.
        XCTAssertEqual(parse(hello(sni: nil, before: [0, 0, 0, 2, 0, 0])), "invalid: bad server_name list")
        XCTAssertEqual(parse(hello(sni: "")), "invalid: bad host name length")
        let two: [UInt8] = [0, 0, 1, UInt8(ascii: "a"), 0, 0, 1, UInt8(ascii: "b")]
        XCTAssertEqual(parse(hello(sni: nil, before: be16(0) + be16(two.count + 2) + be16(two.count) + two)), "invalid: two host names in server_name")
        let once = hello(sni: "a.example")
        let sniExt = Array(once[(once.count - 18)...])   // type, length, list length, name type, name length, 9 bytes
        XCTAssertEqual(parse(hello(sni: "a.example", before: sniExt)), "invalid: server_name extension given twice")
    }

    func testNamesABackendCouldBeConfusedByAreRefused() {
        XCTAssertEqual(parse(hello(sni: "a.example\u{0}.evil")), "invalid: host name with a byte a DNS name cannot hold")
        XCTAssertEqual(parse(hello(sni: "a/b")), "invalid: host name with a byte a DNS name cannot hold")
        XCTAssertEqual(parse(hello(sni: String(repeating: "a", count: 256))), "invalid: bad host name length")
    }

    func testNoServerName() {
        XCTAssertEqual(parse(hello(sni: nil)), "noServerName")
        XCTAssertEqual(parse(hello(sni: nil, before: [0, 10, 0, 2, 0, 0x1d])), "noServerName")
    }

    func testServerNameAmongOtherExtensions() {
        let h = hello(sni: "API.Example.com", before: [0, 10, 0, 4, 0, 2, 0, 0x1d], after: [0, 16, 0, 3, 2, 0x68, 0x32])
        XCTAssertEqual(parse(h), "sni: API.Example.com")
    }

    func testARealOpenSSLClientHello() throws {
        // Captured from `openssl s_client -servername secure.example` by a socket that reads its
        // first flight (the test makes one now, so the bytes are OpenSSL's of this machine).
        let l = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(l) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = bind(l, $0, len) } }
        listen(l, 1)
        withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(l, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "secure.example"]
        p.standardInput = Pipe()
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { p.terminate() }
        let c = accept(l, nil, nil)
        defer { close(c) }
        var buf = [UInt8](repeating: 0, count: 16384)
        var got = 0
        var result = "needMore"
        while result == "needMore" {
            let n = buf[got...].withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            got += n
            result = parse(Array(buf[0..<got]))
        }
        XCTAssertEqual(result, "sni: secure.example")
    }
}
