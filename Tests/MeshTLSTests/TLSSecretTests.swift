import Foundation
import XCTest
@testable import MeshCore
@testable import MeshIO
@testable import MeshTLS

/// A gateway's TLS secrets (DESIGN §15): the check meshctl and meshd run before storing one
/// (refusals first: each names the flag and file), the record format, and the server contexts
/// built from memory: SIMPLE serves the certificate to any client, MUTUAL refuses a client
/// without a certificate or with one from another CA. Certificates are made at run time by
/// certs/make-tls-secret.py.
final class TLSSecretTests: XCTestCase {
    static let dir: String = {
        let dir = NSTemporaryDirectory() + "mesh-tls-secret-tests-\(getpid())"
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("certs/make-tls-secret.py").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [script, dir]
        p.standardOutput = FileHandle.nullDevice
        try! p.run()
        p.waitUntilExit()
        precondition(p.terminationStatus == 0, "make-tls-secret.py failed")
        return dir
    }()

    override class func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    func file(_ n: String) -> String { try! String(contentsOfFile: "\(Self.dir)/\(n)", encoding: .utf8) }

    func secret(cert: String = "server.pem", key: String = "server.key", ca: String? = nil, name: String = "bookinfo-cert") -> TLSSecret {
        TLSSecret(namespace: "default", name: name, certChain: file(cert), key: SecretBytes(Array(file(key).utf8)), caCert: ca.map(file) ?? "")
    }

    func check(_ s: TLSSecret, now: Int64 = Int64(Date().timeIntervalSince1970)) throws -> TLSSecretInfo {
        try PEMContext.check(s, from: PEMContext.Sources(cert: "c.pem", key: "k.pem", ca: "ca.pem"), now: now)
    }

    func refusal(_ s: TLSSecret, now: Int64 = Int64(Date().timeIntervalSince1970)) -> String {
        do { _ = try check(s, now: now); return "" } catch { return "\(error)" }
    }

    // MARK: refusals

    func testKeyThatDoesNotMatchTheLeafIsRefusedNamingTheKeyFlag() {
        let e = refusal(secret(key: "other.key"))
        XCTAssertTrue(e.hasPrefix("--key k.pem: the private key does not match the certificate in c.pem"), e)
    }

    func testGarbageIsRefusedForEachFlag() {
        var s = secret()
        s.certChain = "hello, not a certificate\n"
        XCTAssertEqual(refusal(s), "--cert c.pem: no PEM certificate (BEGIN CERTIFICATE) in it")
        s = secret()
        s.certChain = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
        XCTAssertEqual(refusal(s), "--cert c.pem: certificate 1 of 1 cannot be read (damaged PEM)")
        s = secret()
        s.key = SecretBytes(Array("garbage".utf8))
        XCTAssertTrue(refusal(s).hasPrefix("--key k.pem: expected one PEM private key"), refusal(s))
        s = secret(ca: "client-ca.pem")
        s.caCert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        XCTAssertEqual(refusal(s), "--ca ca.pem: certificate 1 of 1 cannot be read (damaged PEM)")
    }

    func testAKeyInTheCertificateFileIsRefused() {
        var s = secret()
        s.certChain += file("server.key")
        XCTAssertEqual(refusal(s), "--cert c.pem: holds a PRIVATE KEY block; expected certificates only (give the key with --key)")
    }

    func testExpiredAndNotYetValidCertificatesAreRefused() {
        XCTAssertTrue(refusal(secret(cert: "expired.pem", key: "expired.key")).hasPrefix("--cert c.pem: certificate 1 (CN=bookinfo.example) expired at "))
        XCTAssertTrue(refusal(secret(cert: "future.pem", key: "future.key")).hasPrefix("--cert c.pem: certificate 1 (CN=bookinfo.example) is not valid before "))
        // The same good secret, checked at a time past its leaf's end.
        let info = try! check(secret())
        XCTAssertTrue(refusal(secret(), now: info.notAfter + 1).contains("expired at"))
    }

    func testChainOutOfOrderIsRefused() {
        // The intermediate first: the key matches no first certificate...
        XCTAssertTrue(refusal(secret(cert: "chain-reversed.pem")).hasPrefix("--key k.pem: the private key does not match"))
        // ...and a chain whose second certificate did not issue the first is refused as such.
        var s = secret()
        s.certChain = file("server-leaf.pem") + file("ca.pem")
        XCTAssertEqual(refusal(s), "--cert c.pem: certificate 2 did not issue certificate 1; the chain must be in order, leaf first, each followed by its issuer")
    }

    func testOversizedFilesAreRefused() {
        var s = secret()
        s.certChain += String(repeating: "#", count: TLSSecret.maxCertBytes)
        XCTAssertTrue(refusal(s).hasPrefix("--cert c.pem: \(s.certChain.utf8.count) bytes; a certificate chain may have at most 65536"), refusal(s))
        s = secret()
        s.key = SecretBytes(Array((file("server.key") + String(repeating: "\n", count: TLSSecret.maxKeyBytes)).utf8))
        XCTAssertTrue(refusal(s).hasPrefix("--key k.pem: "), refusal(s))
        XCTAssertTrue(refusal(s).contains("a private key may have at most 16384"), refusal(s))
    }

    func testEncryptedKeyIsRefused() {
        XCTAssertEqual(refusal(secret(key: "encrypted.key")), "--key k.pem: the private key is encrypted; give it unencrypted (as kubectl create secret tls takes it)")
    }

    func testBadNamesAreRefused() {
        XCTAssertTrue(refusal(secret(name: "Bad_Name")).hasPrefix("secret name \"Bad_Name\": expected a DNS subdomain"))
        var s = secret()
        s.namespace = "a/b"
        XCTAssertTrue(refusal(s).hasPrefix("namespace \"a/b\""))
    }

    // MARK: what is taken

    func testAGoodSecretIsTakenWithItsFacts() throws {
        let info = try check(secret(ca: "client-ca.pem"))
        XCTAssertEqual(info.subject, "CN=bookinfo.example")
        XCTAssertEqual(info.sans, ["bookinfo.example"])
        XCTAssertEqual(info.fingerprint.count, 64)
        XCTAssertTrue(info.hasCA)
        XCTAssertNil(info.warning)
        // The leaf alone (no intermediate) is a chain of one, in order.
        XCTAssertNoThrow(try check(secret(cert: "server-leaf.pem")))
    }

    func testAKeyWithItsECParametersBlockIsTakenButTwoKeysAreNot() throws {
        // What `openssl ecparam -genkey` writes: the curve's parameters, then the key.
        var s = secret()
        s.key = SecretBytes(Array(("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n" + file("server.key")).utf8))
        XCTAssertNoThrow(try check(s))
        s.key = SecretBytes(Array((file("server.key") + file("other.key")).utf8))
        XCTAssertEqual(refusal(s), "--key k.pem: expected one PEM private key (BEGIN PRIVATE KEY), found BEGIN PRIVATE KEY, BEGIN PRIVATE KEY")
    }

    func testALeafExpiringWithinSevenDaysIsTakenWithAWarning() throws {
        let info = try check(secret(cert: "soon.pem", key: "soon.key"))
        XCTAssertTrue(info.warning?.hasPrefix("--cert c.pem: the certificate expires at ") ?? false, info.warning ?? "no warning")
    }

    // MARK: the record

    func testRecordRoundTripsAndRefusesDamage() throws {
        let s = secret(ca: "client-ca.pem")
        let r = s.record
        let back = try TLSSecret.readOne(r)
        XCTAssertTrue(back.same(as: s))
        XCTAssertEqual(back.id, "default/bookinfo-cert")
        XCTAssertThrowsError(try TLSSecret.readOne(Array(r.dropLast())))          // cut short
        XCTAssertThrowsError(try TLSSecret.readOne(r + [65]))                     // a byte after it
        XCTAssertThrowsError(try TLSSecret.readAll(r + r))                        // the same secret twice
        var bad = Array("tls-secret default x 999999999 1 0\n".utf8)
        bad += [UInt8](repeating: 65, count: 10)
        XCTAssertThrowsError(try TLSSecret.readOne(bad))                          // lengths out of bounds
        XCTAssertThrowsError(try TLSSecret.readOne(Array("tls-secret default ../x 1 1 0\nAB".utf8)))   // a bad name
        var other = s
        other.key = SecretBytes(Array(file("server2.key").utf8))
        XCTAssertFalse(other.same(as: s))
    }

    // MARK: the contexts

    func client(cert: String? = nil, key: String? = nil) throws -> TLSSession {
        var o = TLSContext.Options(certChainFile: "", privateKeyFile: "", trustBundleFile: "")
        o.trustBundlePEM = file("ca.pem")
        o.spiffePeers = false
        o.minVersion13 = false
        o.alpn = ["http/1.1"]
        if let cert, let key { o.certChainPEM = file(cert); o.privateKeyPEM = file(key) } else { o.withoutCertificate = true }
        return TLSSession(context: try TLSContext(role: .client, options: o))
    }

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

    func testSimpleServerServesTheSecretToAClientWithoutCertificate() throws {
        let ctx = try PEMContext.server(secret(), mutual: false)
        let (cr, sr) = handshake(try client(), TLSSession(context: ctx))
        XCTAssertNotEqual(cr, .failed)
        XCTAssertNotEqual(sr, .failed)
        // A client trusting another CA refuses the gateway's certificate.
        var o = TLSContext.Options(certChainFile: "", privateKeyFile: "", trustBundleFile: "")
        o.trustBundlePEM = file("client-ca.pem"); o.spiffePeers = false; o.withoutCertificate = true; o.minVersion13 = false
        let (cr2, _) = handshake(TLSSession(context: try TLSContext(role: .client, options: o)), TLSSession(context: ctx))
        XCTAssertEqual(cr2, .failed)
    }

    func testMutualServerRefusesClientsWithoutCertificateOrFromAnotherCA() throws {
        let ctx = try PEMContext.server(secret(ca: "client-ca.pem"), mutual: true)
        let none = TLSSession(context: ctx)
        let (_, sr1) = handshake(try client(), none)
        XCTAssertEqual(sr1, .failed)
        let rogue = TLSSession(context: ctx)
        let (_, sr2) = handshake(try client(cert: "rogue-client.pem", key: "rogue-client.key"), rogue)
        XCTAssertEqual(sr2, .failed)
        let good = TLSSession(context: ctx)
        let (cr3, sr3) = handshake(try client(cert: "client.pem", key: "client.key"), good)
        XCTAssertNotEqual(cr3, .failed, good.failureReason)
        XCTAssertNotEqual(sr3, .failed, good.failureReason)
        XCTAssertTrue(good.isEstablished)
    }

    func testMutualWithoutCAIsRefused() {
        XCTAssertThrowsError(try PEMContext.server(secret(), mutual: true)) { e in
            XCTAssertTrue("\(e)".contains("has no ca.crt"), "\(e)")
        }
    }
}
