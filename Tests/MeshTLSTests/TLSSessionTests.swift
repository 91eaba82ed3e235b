import Foundation
import XCTest
@testable import MeshCore
@testable import MeshIO
@testable import MeshTLS

/// Handshakes between a client and a server `TLSSession` in memory (the bytes one writes are the
/// bytes the other reads), with certificates made at run time by certs/make-pki.sh: identity
/// checks, refusals, data both ways and session resumption, without sockets.
final class TLSSessionTests: XCTestCase {
    static let pki: String = {
        let dir = NSTemporaryDirectory() + "mesh-tls-tests-\(getpid())"
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("certs/make-pki.sh").path
        for args in [[dir, "client", "server"], ["--expired", dir, "client"], ["--foreign", dir, "client"]] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = [script] + args
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try! p.run()
            p.waitUntilExit()
            precondition(p.terminationStatus == 0, "make-pki.sh \(args) failed")
        }
        return dir
    }()

    func context(_ role: TLSContext.Role, _ who: String, root: String? = nil, min13: Bool = true) throws -> TLSContext {
        var o = TLSContext.Options(certChainFile: "\(Self.pki)/\(who)/cert-chain.pem",
                                   privateKeyFile: "\(Self.pki)/\(who)/key.pem",
                                   trustBundleFile: root ?? "\(Self.pki)/root-cert.pem")
        o.minVersion13 = min13
        return try TLSContext(role: role, options: o)
    }

    /// Runs the handshake to completion or failure; returns (client result, server result).
    func handshake(_ c: TLSSession, _ s: TLSSession) -> (TransportSecurity.Progress, TransportSecurity.Progress) {
        let c2s = ByteBuffer(), s2c = ByteBuffer(), cIn = ByteBuffer(), sIn = ByteBuffer()
        var cr = c.startHandshake(output: c2s)
        var sr: TransportSecurity.Progress = .ok
        for _ in 0..<10 {
            if !c2s.isEmpty { sr = s.decrypt(raw: c2s, input: sIn, output: s2c, limit: 1 << 20) }
            if sr == .failed { break }
            if !s2c.isEmpty { cr = c.decrypt(raw: s2c, input: cIn, output: c2s, limit: 1 << 20) }
            if cr == .failed { break }
            if c.isEstablished && s.isEstablished && c2s.isEmpty && s2c.isEmpty { break }
        }
        return (cr, sr)
    }

    func testMutualHandshakeExposesBothIdentities() throws {
        let c = TLSSession(context: try context(.client, "client"), expectedPeers: ["spiffe://cluster.local/ns/default/sa/server"])
        let s = TLSSession(context: try context(.server, "server"))
        let (cr, sr) = handshake(c, s)
        XCTAssertNotEqual(cr, .failed, c.failureReason)
        XCTAssertNotEqual(sr, .failed, s.failureReason)
        XCTAssertTrue(c.isEstablished && s.isEstablished)
        XCTAssertEqual(c.peerIdentity, "spiffe://cluster.local/ns/default/sa/server")
        XCTAssertEqual(s.peerIdentity, "spiffe://cluster.local/ns/default/sa/client")
        XCTAssertEqual(s.peerCertHash.count, 64)
        XCTAssertEqual(c.alpn, "http/1.1")
    }

    func testDataBothWays() throws {
        let c = TLSSession(context: try context(.client, "client"))
        let s = TLSSession(context: try context(.server, "server"))
        _ = handshake(c, s)
        let wire = ByteBuffer(), back = ByteBuffer(), got = ByteBuffer()
        var payload = [UInt8](repeating: 0, count: 1 << 20)
        var rng = FastRandom(seed: 7)
        for i in payload.indices { payload[i] = UInt8(truncatingIfNeeded: rng.next()) }
        XCTAssertTrue(payload.withUnsafeBytes { c.encrypt($0.baseAddress!, $0.count, output: wire) })
        while !wire.isEmpty {
            XCTAssertNotEqual(s.decrypt(raw: wire, input: got, output: back, limit: 1 << 21), .failed)
        }
        XCTAssertEqual(got.readableArray, payload)
    }

    func testWrongExpectedIdentityIsRefused() throws {
        let c = TLSSession(context: try context(.client, "client"), expectedPeers: ["spiffe://cluster.local/ns/default/sa/other"])
        let s = TLSSession(context: try context(.server, "server"))
        let (cr, _) = handshake(c, s)
        XCTAssertEqual(cr, .failed)
        XCTAssertTrue(c.failureReason.contains("is not one of"), c.failureReason)
    }

    func testForeignAndExpiredClientCertificatesAreRefused() throws {
        for who in ["foreign/client", "expired/client"] {
            let c = TLSSession(context: try context(.client, who))
            let s = TLSSession(context: try context(.server, "server"))
            let (_, sr) = handshake(c, s)
            XCTAssertEqual(sr, .failed, who)
            XCTAssertTrue(s.failureReason.contains("certificate verification failed"), "\(who): \(s.failureReason)")
            if who.hasPrefix("expired") { XCTAssertTrue(s.failureReason.contains("expired"), s.failureReason) }
        }
    }

    func testServerFromAnotherCAIsRefusedByTheClient() throws {
        let c = TLSSession(context: try context(.client, "client", root: "\(Self.pki)/foreign/root-cert.pem"))
        let s = TLSSession(context: try context(.server, "server"))
        let (cr, _) = handshake(c, s)
        XCTAssertEqual(cr, .failed)
        XCTAssertTrue(c.failureReason.contains("certificate verification failed"), c.failureReason)
    }

    func testSessionIsResumedWithTheCache() throws {
        let cctx = try context(.client, "client"), sctx = try context(.server, "server")
        let cache = TLSSessionCache()
        let c1 = TLSSession(context: cctx, sessionCache: cache)
        let s1 = TLSSession(context: sctx)
        _ = handshake(c1, s1)
        // Tickets arrive after the handshake; exchange a record so the client reads them.
        let w = ByteBuffer(), b = ByteBuffer(), i = ByteBuffer()
        let ping: [UInt8] = Array("ping".utf8)
        _ = ping.withUnsafeBytes { s1.encrypt($0.baseAddress!, 4, output: w) }
        _ = c1.decrypt(raw: w, input: i, output: b, limit: 1 << 20)
        XCTAssertGreaterThan(cache.stored, 0)
        c1.dispose()
        let c2 = TLSSession(context: cctx, sessionCache: cache)
        let s2 = TLSSession(context: sctx)
        let (cr, sr) = handshake(c2, s2)
        XCTAssertNotEqual(cr, .failed, c2.failureReason)
        XCTAssertNotEqual(sr, .failed, s2.failureReason)
        XCTAssertTrue(c2.resumed)
        XCTAssertEqual(s2.peerIdentity, "spiffe://cluster.local/ns/default/sa/client")
    }

    /// A certificate without a SPIFFE URI SAN loads, with an empty local identity (TLSContext does
    /// not require one: DESIGN §4 asks peers, not the context, for a SPIFFE ID); files that do
    /// not exist are refused at load.
    func testCertificateWithoutSPIFFEIDLoadsWithEmptyIdentityAndMissingFilesAreRefused() throws {
        // A server certificate chain that is the intermediate CA itself (no URI SAN).
        var o = TLSContext.Options(certChainFile: "\(Self.pki)/ca-cert.pem", privateKeyFile: "\(Self.pki)/ca-key.pem",
                                   trustBundleFile: "\(Self.pki)/root-cert.pem")
        o.minVersion13 = true
        let ctx = try TLSContext(role: .server, options: o)
        XCTAssertEqual(ctx.localIdentity, "")
        XCTAssertThrowsError(try TLSContext(role: .server, options: .init(certChainFile: "/nonexistent", privateKeyFile: "/nonexistent", trustBundleFile: "/nonexistent")))
    }
}
