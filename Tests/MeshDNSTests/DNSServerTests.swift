import XCTest
import MeshCore
import MeshDNS
import MeshIO
@testable import MeshProxy
#if canImport(Glibc)
import Glibc
#endif

/// A blocking UDP or TCP socket of the tests (real sockets on 127.0.0.1).
struct TestSocket {
    let fd: Int32
    static func udp(bind port: Int = 0) -> TestSocket {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var a = SocketAddress(host: "127.0.0.1", port: port)!
        _ = withUnsafePointer(to: &a.storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, a.length) } }
        return TestSocket(fd: fd)
    }
    static func tcp(_ port: Int) -> TestSocket {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = SocketAddress(host: "127.0.0.1", port: port)!
        _ = withUnsafePointer(to: &a.storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, a.length) } }
        return TestSocket(fd: fd)
    }
    var port: Int { Socket.localPort(fd) }
    func send(_ b: [UInt8], to port: Int) {
        var a = SocketAddress(host: "127.0.0.1", port: port)!
        _ = b.withUnsafeBytes { p in withUnsafePointer(to: &a.storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, p.baseAddress, p.count, 0, $0, a.length) } } }
    }
    func write(_ b: [UInt8]) { _ = b.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } }
    /// One datagram (or what a stream read gives), with the sender's port; nil after `ms`.
    func receive(ms: Int32 = 2000) -> (bytes: [UInt8], port: Int)? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, ms) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 65_536)
        var from = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = withUnsafeMutablePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buf, buf.count, 0, $0, &len) } }
        guard n >= 0 else { return nil }
        let port = withUnsafeBytes(of: from) { Int(UInt16(bigEndian: $0.load(as: sockaddr_in.self).sin_port)) }
        return (Array(buf[0..<n]), port)
    }
    /// `n` length-prefixed messages from a TCP stream.
    func readMessages(_ n: Int, ms: Int32 = 2000) -> [[UInt8]] {
        var data: [UInt8] = []
        var out: [[UInt8]] = []
        while out.count < n, let r = receive(ms: ms), !r.bytes.isEmpty {
            data += r.bytes
            while data.count >= 2, data.count - 2 >= Int(data[0]) << 8 | Int(data[1]) {
                let len = Int(data[0]) << 8 | Int(data[1])
                out.append(Array(data[2..<2 + len]))
                data.removeFirst(2 + len)
            }
        }
        return out
    }
    func close() { Glibc.close(fd) }
}

/// The DNS port in process on real sockets: mesh names answered from the table, other names
/// forwarded to a fake nameserver on a real UDP socket (IDs rewritten, answers relayed with the
/// client's ID, only the right answer relayed), SERVFAIL when every nameserver stays silent
/// while mesh names are still answered, TCP with several queries per connection, and malformed
/// queries answered FORMERR or dropped with the server still serving.
final class DNSServerTests: XCTestCase {
    var server: DNSServer!
    var upstream: TestSocket!
    var client: TestSocket!
    var dir = ""

    let table = DNSTable(clusters: [("reviews.default", ["240.240.1.2", "2001:2::f0f0:0102"]), ("ratings.shop", ["240.240.3.4"]),
                                    ("db.example.com", ["192.0.2.50"]), ("empty.default", [])], namespace: "default")

    override func setUp() {
        var t = Array("/tmp/dns-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
        upstream = TestSocket.udp()
        let f = fopen("\(dir)/resolv.conf", "w")!
        fputs("search default.svc.cluster.local\nnameserver 127.0.0.1\noptions ndots:5\n", f)
        fclose(f)
        server = try! DNSServer.start(port: 0, resolvConf: "\(dir)/resolv.conf", table: table, timeout: 400_000_000, upstreamPort: upstream.port)
        client = TestSocket.udp()
    }

    override func tearDown() {
        server.stop()
        upstream.close()
        client.close()
        _ = system("rm -rf '\(dir)'")
    }

    func ask(_ q: [UInt8]) -> [UInt8]? {
        client.send(q, to: server.port)
        return client.receive()?.bytes
    }
    func rcode(_ r: [UInt8]) -> UInt8 { r[3] & 0x0F }
    func count(_ r: [UInt8], _ at: Int) -> Int { Int(r[at]) << 8 | Int(r[at + 1]) }
    /// The rdata of each answer record of a response to `q` (answers start after the question).
    func rdata(_ r: [UInt8], _ q: [UInt8]) -> [[UInt8]] {
        var at = q.count
        var out: [[UInt8]] = []
        for _ in 0..<count(r, 6) {
            let len = count(r, at + 10)
            XCTAssertEqual(Array(r[at..<at + 10]).suffix(4), [0, 0, 0, 30])   // TTL 30
            out.append(Array(r[at + 12..<at + 12 + len]))
            at += 12 + len
        }
        return out
    }

    func testMeshNamesInEveryFormGetTheirVIPs() throws {
        for n in ["reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local", "reviews", "REVIEWS.Default.Svc.Cluster.Local"] {
            let q = Msg.query(n, type: 1)
            let r = try XCTUnwrap(ask(q), n)
            XCTAssertEqual(rcode(r), 0, n)
            XCTAssertEqual(Array(r[0..<2]), [0x12, 0x34])
            XCTAssertEqual(rdata(r, q), [[240, 240, 1, 2]], n)
            let q6 = Msg.query(n, type: 28)
            XCTAssertEqual(rdata(try XCTUnwrap(ask(q6)), q6), [[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0xf0, 0x01, 0x02]], n)
        }
        // Another namespace's short name is not a mesh name here; its long forms are.
        let q = Msg.query("ratings.shop.svc.cluster.local")
        XCTAssertEqual(rdata(try XCTUnwrap(ask(q)), q), [[240, 240, 3, 4]])
        let e = Msg.query("db.example.com")
        XCTAssertEqual(rdata(try XCTUnwrap(ask(e)), e), [[192, 0, 2, 50]])
        client.send(Msg.query("ratings"), to: server.port)
        XCTAssertNotNil(upstream.receive(), "a short name of another namespace is forwarded")
    }

    func testAMeshNameWithoutTheFamilyOrTypeAskedIsNoDataNotNXDomain() throws {
        for (n, t) in [("ratings.shop", UInt16(28)), ("reviews.default", 15), ("reviews.default", 16), ("db.example.com", 255)] {
            let r = try XCTUnwrap(ask(Msg.query(n, type: t)))
            XCTAssertEqual(rcode(r), 0, "\(n) \(t)")
            XCTAssertEqual(count(r, 6), 0, "\(n) \(t)")
            XCTAssertEqual(r[2] & 0x04, 0x04, "authoritative")
        }
        XCTAssertNil(upstream.receive(ms: 100), "nothing forwarded for a mesh name")
    }

    func testOtherNamesAreForwardedWithNewIDsAndRelayedWithTheClients() throws {
        let other = TestSocket.udp()
        defer { other.close() }
        client.send(Msg.query("example.test", id: 0x0707), to: server.port)
        other.send(Msg.query("example.test", id: 0x0707), to: server.port)
        let a = try XCTUnwrap(upstream.receive()), b = try XCTUnwrap(upstream.receive())
        XCTAssertNotEqual(Array(a.bytes[0..<2]), Array(b.bytes[0..<2]), "two clients' equal IDs are not equal upstream")
        XCTAssertEqual(Array(a.bytes[2...]), Array(Msg.query("example.test")[2...]))
        // A forged answer (wrong ID, wrong question, wrong sender) is never relayed.
        var wrongID = a.bytes; wrongID[2] |= 0x80; wrongID[0] ^= 0x55
        upstream.send(wrongID, to: a.port)
        var wrongQ = Msg.query("evil.test", id: UInt16(a.bytes[0]) << 8 | UInt16(a.bytes[1])); wrongQ[2] |= 0x80
        upstream.send(wrongQ, to: a.port)
        let stranger = TestSocket.udp()
        defer { stranger.close() }
        var fromStranger = a.bytes; fromStranger[2] |= 0x80
        stranger.send(fromStranger, to: a.port)
        XCTAssertNil(client.receive(ms: 200))
        for m in [a, b] {
            var ans = m.bytes
            ans[2] |= 0x80
            ans[7] = 1
            ans += [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 192, 0, 2, 7]
            upstream.send(ans, to: m.port)
        }
        for c in [client!, other] {
            let r = try XCTUnwrap(c.receive())
            XCTAssertEqual(Array(r.bytes[0..<2]), [0x07, 0x07])
            XCTAssertEqual(Array(r.bytes.suffix(4)), [192, 0, 2, 7])
        }
    }

    func testSilentNameserversGiveServFailInTimeWhileMeshNamesAreAnswered() throws {
        let start = Clock.monotonicNanos()
        let slow = Msg.header(id: 0x0909, ar: 1) + Msg.question("silent.test") + Msg.opt()
        client.send(slow, to: server.port)
        XCTAssertNotNil(upstream.receive())
        // Not blocked: a mesh name is answered while the forward waits.
        let other = TestSocket.udp()
        defer { other.close() }
        other.send(Msg.query("reviews"), to: server.port)
        let quick = try XCTUnwrap(other.receive())
        XCTAssertLessThan(Clock.monotonicNanos() - start, 300_000_000)
        XCTAssertEqual(rcode(quick.bytes), 0)
        let r = try XCTUnwrap(client.receive()).bytes
        let took = Clock.monotonicNanos() - start
        XCTAssertEqual(rcode(r), DNSRcode.servFail)
        XCTAssertEqual(Array(r[0..<2]), [0x09, 0x09])
        XCTAssertEqual(count(r, 10), 1, "the client's EDNS kept in the answer")
        XCTAssertGreaterThanOrEqual(took, 400_000_000)
        XCTAssertLessThan(took, 1_500_000_000)
    }

    func testSeveralQueriesOnOneTCPConnection() throws {
        let c = TestSocket.tcp(server.port)
        defer { c.close() }
        let q1 = Msg.query("reviews", id: 1), q2 = Msg.query("reviews.default.svc", type: 28, id: 2), q3 = Msg.query("db.example.com", id: 3)
        var all: [UInt8] = []
        for q in [q1, q2, q3] { all += [UInt8(q.count >> 8), UInt8(q.count & 0xFF)] + q }
        c.write(Array(all[0..<7]))      // split mid-message
        usleep(50_000)
        c.write(Array(all[7...]))
        let rs = c.readMessages(3)
        XCTAssertEqual(rs.count, 3)
        XCTAssertEqual(rs.map { Int($0[1]) }, [1, 2, 3])
        XCTAssertEqual(rdata(rs[0], q1), [[240, 240, 1, 2]])
        XCTAssertEqual(rdata(rs[2], q3), [[192, 0, 2, 50]])
        // A forwarded query on TCP is relayed on the same connection.
        let q4 = Msg.query("example.test", id: 4)
        c.write([0, UInt8(q4.count)] + q4)
        var sent = try XCTUnwrap(upstream.receive())
        sent.bytes[2] |= 0x80
        upstream.send(sent.bytes, to: sent.port)
        let r4 = c.readMessages(1)
        XCTAssertEqual(r4.first.map { Array($0[0..<2]) }, [0, 4])
    }

    func testMalformedQueriesGetFormErrOrAreDroppedAndTheServerKeepsAnswering() throws {
        let formerr: [[UInt8]] = [
            Msg.header(qd: 2) + Msg.question("a.b") + Msg.question("c.d"),
            Msg.header() + [64] + [UInt8](repeating: 0x61, count: 64) + [0, 0, 1, 0, 1],
            Msg.header() + [0xC0, 0x0C, 0, 1, 0, 1],
            Msg.query("reviews") + [0xde, 0xad],
            Msg.header(ar: 1) + Msg.question("a.b") + [0xC0, 21] + Array(Msg.opt().dropFirst()),
        ]
        for m in formerr {
            let r = try XCTUnwrap(ask(m))
            XCTAssertEqual(rcode(r), DNSRcode.formErr)
            XCTAssertEqual(Array(r[0..<2]), [0x12, 0x34])
            XCTAssertEqual(count(r, 4), 0, "the question is not echoed")
        }
        for m in [[UInt8](), [1, 2, 3], Msg.header(flags: 0x8000) + Msg.question("a.b")] {
            client.send(m, to: server.port)
            XCTAssertNil(client.receive(ms: 100), "\(m)")
        }
        XCTAssertEqual(rcode(try XCTUnwrap(ask(Msg.header(flags: 0x1000) + Msg.question("a.b")))), DNSRcode.notImp)
        let q = Msg.query("reviews")
        XCTAssertEqual(rdata(try XCTUnwrap(ask(q)), q), [[240, 240, 1, 2]])
        XCTAssertNil(upstream.receive(ms: 50), "nothing malformed was forwarded")
    }

    func testANewTableIsPublishedToTheRunningServer() throws {
        server.publish(DNSTable(clusters: [("reviews.default", ["240.240.9.9"])], namespace: "default"))
        usleep(50_000)
        let q = Msg.query("reviews")
        XCTAssertEqual(rdata(try XCTUnwrap(ask(q)), q), [[240, 240, 9, 9]])
    }

    func testResolvConfNameserversInOrderAtMostThree() {
        let r = ResolvConf.parse("# c\nnameserver 10.0.0.1\nsearch x\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n")
        XCTAssertEqual(r.servers.map(\.text), ["10.0.0.1:53", "[::1]:53", "10.0.0.2:53"])
        XCTAssertEqual(r.notes.count, 2)
        XCTAssertEqual(ResolvConf.parse("search a\n").servers.map(\.text), ["127.0.0.1:53"])
    }
}
