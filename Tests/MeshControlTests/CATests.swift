import XCTest
import MeshCore
import MeshTLS
@testable import MeshControl
@testable import MeshCA
@testable import MeshPKI
@testable import MeshControlWire
import MeshAgent
#if canImport(Glibc)
import Glibc
#endif

/// Join tokens and the certificate authority, negative cases first: forged, tampered, expired
/// and foreign tokens, a CSR for another identity, a CSR whose signature does not verify.
final class JoinTokenTests: XCTestCase {
    let key = Array("0123456789abcdef0123456789abcdef".utf8)
    let now: Int64 = 1_800_000_000

    func testRoundTrip() throws {
        let t = JoinToken(namespace: "shop", serviceAccount: "cart", expires: now + 60, id: "abc")
        let text = t.encode(key: key)
        XCTAssertTrue(text.hasPrefix("mesh1."))
        XCTAssertEqual(try JoinToken.verify(text, key: key, now: now), t)
    }

    func testExpiredTokenIsRefused() {
        let text = JoinToken(namespace: "shop", serviceAccount: "cart", expires: now - 1, id: "x").encode(key: key)
        XCTAssertThrowsError(try JoinToken.verify(text, key: key, now: now)) { XCTAssertTrue("\($0)".contains("expired"), "\($0)") }
    }

    func testTamperedPayloadIsRefused() {
        let text = JoinToken(namespace: "shop", serviceAccount: "cart", expires: now + 60, id: "x").encode(key: key)
        let parts = text.split(separator: ".").map(String.init)
        // The same token for another service account, signature kept.
        let forged = Base64URL.encode(Array("ns=shop&sa=admin&exp=\(now + 60)&id=x".utf8))
        XCTAssertThrowsError(try JoinToken.verify("\(parts[0]).\(forged).\(parts[2])", key: key, now: now)) {
            XCTAssertTrue("\($0)".contains("signature does not verify"), "\($0)")
        }
        // One flipped character in the signature.
        var sig = Array(parts[2])
        sig[3] = sig[3] == "A" ? "B" : "A"
        XCTAssertThrowsError(try JoinToken.verify("\(parts[0]).\(parts[1]).\(String(sig))", key: key, now: now))
    }

    func testAnotherMeshdsTokenIsRefused() {
        let text = JoinToken(namespace: "shop", serviceAccount: "cart", expires: now + 60, id: "x").encode(key: Array("another key, another meshd......".utf8))
        XCTAssertThrowsError(try JoinToken.verify(text, key: key, now: now))
    }

    func testMalformedTokensAreRefused() {
        for bad in ["", "mesh1", "mesh1..", "mesh2.abc.def", "mesh1.a$b.c", "Bearer x", String(repeating: "A", count: 5000)] {
            XCTAssertThrowsError(try JoinToken.verify(bad, key: key, now: now), bad)
        }
    }

    func testBase64URL() {
        for n in 0..<40 {
            let d = (0..<n).map { UInt8(($0 * 37 + 11) & 0xff) }
            XCTAssertEqual(Base64URL.decode(Base64URL.encode(d)), d)
        }
        XCTAssertEqual(Base64URL.encode(Array("hi?".utf8)), "aGk_")
        XCTAssertNil(Base64URL.decode("a"))
        XCTAssertNil(Base64URL.decode("ab+c"))
    }
}

final class CertificateAuthorityTests: XCTestCase {
    var dir = ""

    override func setUp() {
        var template = Array("/tmp/meshca-XXXXXX".utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    override func tearDown() {
        for f in ["ca-key.pem", "ca-cert.pem", "root-cert.pem", "token-key", "admin-token", "next-ca-key.pem", "next-ca-cert.pem",
                  "meshd.lock", "plug/ca-key.pem", "plug/ca-cert.pem", "plug/root-cert.pem", "plug/cert-chain.pem"] { unlink("\(dir)/\(f)") }
        rmdir("\(dir)/plug")
        rmdir(dir)
    }

    func write(_ path: String, _ text: String) throws {
        try FileStore.writeAtomically(path, text, mode: 0o600)
    }

    /// The message `body` throws (a CAError), or a failure when it does not throw.
    func refusal(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> String {
        do { try body() } catch { return "\(error)" }
        XCTFail("expected an error", file: file, line: line)
        return ""
    }

    func ca(ttl: Int = 3600) throws -> CertificateAuthority {
        try CertificateAuthority(stateDir: dir, caDir: nil, trustDomain: "cluster.local", certTTL: ttl)
    }

    func testFirstStartCreatesARootWithPrivateKeys() throws {
        let a = try ca()
        var st = stat()
        XCTAssertEqual(stat("\(dir)/ca-key.pem", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(stat("\(dir)/admin-token", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(stat("\(dir)/token-key", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        let roots = X509Info.load(pem: a.trustBundlePEM)
        XCTAssertEqual(roots.count, 1)
        // A restart loads the same CA.
        let b = try ca()
        XCTAssertEqual(X509Info.load(pem: b.trustBundlePEM).first?.serialHex, roots[0].serialHex)
        XCTAssertEqual(a.adminToken, b.adminToken)
    }

    func testSignsExactlyTheTokensIdentity() throws {
        let a = try ca(ttl: 600)
        let token = a.mintToken(namespace: "shop", serviceAccount: "cart", ttl: 60)
        let key = try MeshCrypto.PrivateKey.generate()
        let mine = try MeshCrypto.csr(key: key, identity: "spiffe://cluster.local/ns/shop/sa/cart")
        let issued = try a.sign(csrPEM: mine, token: token, peer: nil)
        let chain = try MeshCrypto.Certificate.loadAll(pem: issued.chainPEM)
        XCTAssertTrue(chain[0].matches(key))
        let info = chain[0].info
        XCTAssertEqual(info.identity, "spiffe://cluster.local/ns/shop/sa/cart")
        XCTAssertEqual(info.notAfter - info.notBefore, 600)
        XCTAssertEqual(info.issuer, X509Info.load(pem: a.trustBundlePEM)[0].subject)

        let other = try MeshCrypto.csr(key: key, identity: "spiffe://cluster.local/ns/shop/sa/payments")
        XCTAssertThrowsError(try a.sign(csrPEM: other, token: token, peer: nil)) {
            let r = $0 as! CertificateAuthority.Refusal
            XCTAssertEqual(r.status, 403)
            XCTAssertTrue(r.message.contains("payments") && r.message.contains("grants only spiffe://cluster.local/ns/shop/sa/cart"), r.message)
        }
        // Renewal: the caller's verified identity stands in for the token, for its own identity only.
        let issuer = X509Info.load(pem: a.trustBundlePEM)[0].subject
        func peer(_ id: String, expires: Int64 = 1 << 40, issuer: String = issuer) -> CertificateAuthority.Peer {
            CertificateAuthority.Peer(identity: id, notAfter: expires, issuer: issuer)
        }
        XCTAssertNoThrow(try a.sign(csrPEM: mine, token: nil, peer: peer("spiffe://cluster.local/ns/shop/sa/cart")))
        XCTAssertThrowsError(try a.sign(csrPEM: other, token: nil, peer: peer("spiffe://cluster.local/ns/shop/sa/cart")))
        XCTAssertThrowsError(try a.sign(csrPEM: mine, token: nil, peer: peer("spiffe://evil.example/ns/shop/sa/cart")))
        XCTAssertThrowsError(try a.sign(csrPEM: mine, token: nil, peer: peer("spiffe://cluster.local/ns/shop/sa/cart", expires: 1000))) {
            XCTAssertTrue(($0 as! CertificateAuthority.Refusal).message.contains("expired"))
        }
        XCTAssertThrowsError(try a.sign(csrPEM: mine, token: nil, peer: peer("spiffe://cluster.local/ns/shop/sa/cart", issuer: "O=elsewhere"))) {
            XCTAssertTrue(($0 as! CertificateAuthority.Refusal).message.contains("not issued by this meshd"))
        }
        XCTAssertThrowsError(try a.sign(csrPEM: mine, token: nil, peer: nil)) {
            XCTAssertEqual(($0 as! CertificateAuthority.Refusal).status, 401)
        }
        XCTAssertEqual(a.issuedCount, 2)
        XCTAssertEqual(a.refusedCount, 6)
    }

    func testRefusesBadCSRs() throws {
        let a = try ca()
        let token = a.mintToken(namespace: "shop", serviceAccount: "cart", ttl: 60)
        XCTAssertThrowsError(try a.sign(csrPEM: "not a csr", token: token, peer: nil)) {
            XCTAssertEqual(($0 as! CertificateAuthority.Refusal).status, 400)
        }
        // A CSR whose body was changed after signing (its signature no longer verifies).
        let key = try MeshCrypto.PrivateKey.generate()
        let pem = try MeshCrypto.csr(key: key, identity: "spiffe://cluster.local/ns/shop/sa/cart")
        var lines = pem.split(separator: "\n").map(String.init)
        var mid = Array(lines[3])
        mid[10] = mid[10] == "A" ? "B" : "A"
        lines[3] = String(mid)
        XCTAssertThrowsError(try a.sign(csrPEM: lines.joined(separator: "\n") + "\n", token: token, peer: nil)) {
            XCTAssertEqual(($0 as! CertificateAuthority.Refusal).status, 400)
        }
    }

    func testRootRotationSteps() throws {
        let a = try ca()
        XCTAssertThrowsError(try a.rotate(step: "issue"), "issue before add")
        XCTAssertThrowsError(try a.rotate(step: "sideways"))
        let old = X509Info.load(pem: a.trustBundlePEM)[0]
        _ = try a.rotate(step: "add")
        XCTAssertEqual(X509Info.load(pem: a.trustBundlePEM).count, 2)
        XCTAssertThrowsError(try a.rotate(step: "retire"), "retire before issue")
        let key = try MeshCrypto.PrivateKey.generate()
        let token = a.mintToken(namespace: "shop", serviceAccount: "cart", ttl: 60)
        let csr = try MeshCrypto.csr(key: key, identity: "spiffe://cluster.local/ns/shop/sa/cart")
        XCTAssertEqual(try MeshCrypto.Certificate.loadAll(pem: a.sign(csrPEM: csr, token: token, peer: nil).chainPEM)[0].info.issuer, old.subject)
        _ = try a.rotate(step: "issue")
        let newIssuer = try MeshCrypto.Certificate.loadAll(pem: a.sign(csrPEM: csr, token: token, peer: nil).chainPEM)[0].info.issuer
        XCTAssertNotEqual(newIssuer, old.subject)
        // The step survives a restart.
        let reloaded = try ca()
        XCTAssertEqual(X509Info.load(pem: reloaded.trustBundlePEM).count, 2)
        _ = try a.rotate(step: "retire")
        let roots = X509Info.load(pem: a.trustBundlePEM)
        XCTAssertEqual(roots.map(\.subject), [newIssuer])
    }

    func testSecretFilesThatAreCutShortOrDamagedAreRefusedNamingTheFile() throws {
        let first = try ca()
        let token = first.mintToken(namespace: "shop", serviceAccount: "cart", ttl: 60)
        let key = try FileStore.read("\(dir)/token-key")
        XCTAssertEqual(key.utf8.count, 65)
        // Cut short: used as a shorter key, it would invalidate every join token outstanding.
        try write("\(dir)/token-key", String(key.prefix(40)))
        XCTAssertEqual(refusal { _ = try self.ca() },
                       "\(dir)/token-key holds 40 hex digits (cut short); expected 64 hex digits (a 32-byte secret) and a newline, as meshd writes it: restore the file, or remove it to create a new one")
        try write("\(dir)/token-key", "")
        XCTAssertTrue(refusal { _ = try self.ca() }.hasPrefix("\(dir)/token-key is empty; expected 64 hex digits"))
        try write("\(dir)/token-key", "zz" + key.dropFirst(2))
        XCTAssertTrue(refusal { _ = try self.ca() }.hasPrefix("\(dir)/token-key has a byte that is not a hex digit at offset 0;"))
        try write("\(dir)/token-key", key.dropLast() + "00\n")
        XCTAssertTrue(refusal { _ = try self.ca() }.hasPrefix("\(dir)/token-key holds 66 hex digits (too many);"))
        // The admin token: the same rule (48 hex digits).
        try write("\(dir)/token-key", key)
        let admin = try FileStore.read("\(dir)/admin-token")
        try write("\(dir)/admin-token", "\n")
        XCTAssertTrue(refusal { _ = try self.ca() }.hasPrefix("\(dir)/admin-token is empty; expected 48 hex digits (a 24-byte secret)"))
        try write("\(dir)/admin-token", String(admin.prefix(20)))
        XCTAssertTrue(refusal { _ = try self.ca() }.hasPrefix("\(dir)/admin-token holds 20 hex digits (cut short);"))
        // Restored, the tokens minted before still verify (and the file was never rewritten).
        try write("\(dir)/admin-token", admin)
        let again = try ca()
        XCTAssertEqual(again.adminToken + "\n", admin)
        let csr = try MeshCrypto.csr(key: try MeshCrypto.PrivateKey.generate(), identity: "spiffe://cluster.local/ns/shop/sa/cart")
        XCTAssertNoThrow(try again.sign(csrPEM: csr, token: token, peer: nil))
    }

    func testCorruptCAFilesInTheStateDirectoryAreNamed() throws {
        _ = try ca()
        let key = try FileStore.read("\(dir)/ca-key.pem"), root = try FileStore.read("\(dir)/root-cert.pem")
        try write("\(dir)/ca-key.pem", String(key.prefix(100)))
        XCTAssertTrue(refusal { _ = try self.ca() }.hasPrefix("\(dir)/ca-key.pem: not a PEM private key"))
        try write("\(dir)/ca-key.pem", key)
        try write("\(dir)/root-cert.pem", "garbage\n")
        XCTAssertEqual(refusal { _ = try self.ca() }, "\(dir)/root-cert.pem: no PEM certificate found")
        // Cut short inside the certificate: refused, not read as "no more certificates".
        try write("\(dir)/root-cert.pem", String(root.prefix(300)))
        XCTAssertTrue(refusal { _ = try self.ca() }.hasPrefix("\(dir)/root-cert.pem: PEM certificate 1 is malformed or cut short ("))
        try write("\(dir)/root-cert.pem", root + String(root.prefix(300)))
        XCTAssertTrue(refusal { _ = try self.ca() }.hasPrefix("\(dir)/root-cert.pem: PEM certificate 2 is malformed or cut short ("))
        // Missing (not damaged): written again from the issuing root, as at first start.
        unlink("\(dir)/root-cert.pem")
        XCTAssertEqual(try ca().trustBundlePEM, root)
        XCTAssertEqual(try FileStore.read("\(dir)/root-cert.pem"), root)
        try write("\(dir)/ca-cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        XCTAssertTrue(refusal { _ = try self.ca() }.hasPrefix("\(dir)/ca-cert.pem: PEM certificate 1 is malformed or cut short ("))
    }

    func testABundleWithoutTheIssuingRootIsRefused() throws {
        _ = try ca()
        let other = try MeshCrypto.selfSignedRoot(key: try MeshCrypto.PrivateKey.generate(), commonName: "another root", seconds: 3600)
        try write("\(dir)/root-cert.pem", try other.pem())
        let subject = try MeshCrypto.Certificate.loadAll(pem: try FileStore.read("\(dir)/ca-cert.pem"))[0].info.subject
        XCTAssertEqual(refusal { _ = try self.ca() },
                       "\(dir)/root-cert.pem does not hold the issuing root \(dir)/ca-cert.pem (\(subject)); restore it")
    }

    func testPlugInCAFilesAreNamed() throws {
        let plug = "\(dir)/plug"
        XCTAssertEqual(mkdir(plug, 0o700), 0)
        let key = try MeshCrypto.PrivateKey.generate()
        let root = try MeshCrypto.selfSignedRoot(key: key, commonName: "plug-in root", seconds: 3600)
        try write("\(plug)/ca-key.pem", try key.pem())
        try write("\(plug)/ca-cert.pem", try root.pem())
        try write("\(plug)/root-cert.pem", try root.pem())
        try write("\(plug)/cert-chain.pem", try root.pem())
        func plugIn() throws { _ = try CertificateAuthority(stateDir: dir, caDir: plug, trustDomain: "cluster.local", certTTL: 60) }
        XCTAssertNoThrow(try plugIn())
        try write("\(plug)/cert-chain.pem", "garbage\n")
        XCTAssertEqual(refusal { try plugIn() }, "\(plug)/cert-chain.pem: no PEM certificate found")
        // A chain that leads elsewhere than root-cert.pem.
        let foreign = try MeshCrypto.selfSignedRoot(key: try MeshCrypto.PrivateKey.generate(), commonName: "foreign root", seconds: 3600)
        try write("\(plug)/cert-chain.pem", try foreign.pem())
        try write("\(plug)/root-cert.pem", try foreign.pem())
        XCTAssertEqual(refusal { try plugIn() },
                       "\(plug)/ca-cert.pem does not verify up to a root in \(plug)/root-cert.pem through \(plug)/cert-chain.pem: self-signed certificate")
        try write("\(plug)/root-cert.pem", "")
        XCTAssertEqual(refusal { try plugIn() }, "\(plug)/root-cert.pem: no PEM certificate found")
        try write("\(plug)/ca-key.pem", String(try key.pem().prefix(90)))
        XCTAssertTrue(refusal { try plugIn() }.hasPrefix("\(plug)/ca-key.pem: not a PEM private key"))
        unlink("\(plug)/ca-cert.pem")
        XCTAssertEqual(refusal { try plugIn() }, "cannot read \(plug)/ca-cert.pem: No such file or directory")
    }

    func testASecondHolderOfTheStateDirectoryIsRefusedWithTheHoldersPid() throws {
        var first: StateLock? = try StateLock(stateDir: dir)
        XCTAssertEqual(try FileStore.read("\(dir)/meshd.lock"), "\(getpid())\n")
        XCTAssertEqual(refusal { _ = try StateLock(stateDir: self.dir) },
                       "state directory \(dir) is in use by another meshd (pid \(getpid()), holding \(dir)/meshd.lock); stop it or give this one another --state-dir")
        withExtendedLifetime(first) {}
        first = nil
        // Released with its holder (as at process exit): the next one takes it.
        XCTAssertNoThrow(try StateLock(stateDir: dir))
    }
}
