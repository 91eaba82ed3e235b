import XCTest
import MeshCore
import MeshPKI
import MeshCA
import MeshControlWire
import MeshIO
@testable import MeshAgent
#if canImport(Glibc)
import Glibc
#endif

/// The trust bundle that travels with the config (issue 17): the push carries it after its
/// marker and reads back exactly; the sidecar takes it only when it is PEM and still holds the
/// root its own certificate chains to (else the push is NACKed and the bundle in force stays).
final class TrustBundlePushTests: XCTestCase {
    var dirs: [String] = []

    override func tearDown() {
        for d in dirs {
            for f in ["ca-key.pem", "ca-cert.pem", "root-cert.pem", "token-key", "admin-token"] { unlink("\(d)/\(f)") }
            rmdir(d)
        }
    }

    func ca() throws -> CertificateAuthority {
        var template = Array("/tmp/meshbundle-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        dirs.append(dir)
        return try CertificateAuthority(stateDir: dir, caDir: nil, trustDomain: "cluster.local", certTTL: 600)
    }

    func testThePushCarriesTheBundleAfterItsLastMarker() {
        let p = ConfigStream.Push(version: 4, nonce: "ab", digest: "0f", text: "kind: ProxyConfig\n# trust bundle (meshd)\nspec: {}\n",
                                  bundle: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
        XCTAssertEqual(ConfigStream.Push(body: p.body), p)
        let bare = ConfigStream.Push(version: 4, nonce: "ab", digest: "0f", text: "kind: ProxyConfig\n")
        XCTAssertEqual(ConfigStream.Push(body: bare.body), bare)
        XCTAssertEqual(ConfigStream.Push(body: bare.body)?.bundle, "")
        // A marker with nothing after it is a damaged push, not an empty bundle.
        XCTAssertNil(ConfigStream.Push(body: "version: 4 ab 0f\nkind: ProxyConfig\n# trust bundle (meshd)\n"))
    }

    func testTheSidecarTakesOnlyABundleHoldingItsOwnRoot() throws {
        let a = try ca(), b = try ca()
        let id = "spiffe://cluster.local/ns/shop/sa/cart"
        let key = try MeshCrypto.PrivateKey.generate()
        let issued = try a.sign(csrPEM: try MeshCrypto.csr(key: key, identity: id),
                                token: a.mintToken(namespace: "shop", serviceAccount: "cart", ttl: 60), peer: nil)
        let info = try MeshCrypto.Certificate.loadAll(pem: issued.chainPEM)[0].info
        let wi = WorkloadIdentity(meshd: [SocketAddress(host: "127.0.0.1", port: 1)!], identity: id, rootPEM: a.trustBundlePEM, token: "")
        XCTAssertThrowsError(try wi.adopt(bundle: a.trustBundlePEM)) { XCTAssertTrue("\($0)".contains("no certificate yet"), "\($0)") }
        wi.current.withLock {
            $0 = .init(chainPEM: issued.chainPEM, keyPEM: try! key.pem(), bundlePEM: issued.bundlePEM,
                       notBefore: info.notBefore, notAfter: info.notAfter, serialHex: info.serialHex)
        }
        let handed = Locked<[String]>([])
        wi.startRenewal { c in handed.withLock { $0.append(c.bundlePEM) } }
        // Refused: not PEM, no certificate, another mesh's root only.
        for bad in ["garbage", "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n", b.trustBundlePEM] {
            XCTAssertThrowsError(try wi.adopt(bundle: bad), bad)
            XCTAssertEqual(wi.credentials?.bundlePEM, issued.bundlePEM)
        }
        XCTAssertThrowsError(try wi.adopt(bundle: b.trustBundlePEM)) { XCTAssertTrue("\($0)".contains("does not hold the root"), "\($0)") }
        // The same bundle changes nothing; one that adds a root is taken and handed on.
        XCTAssertFalse(try wi.adopt(bundle: issued.bundlePEM))
        XCTAssertTrue(try wi.adopt(bundle: issued.bundlePEM + b.trustBundlePEM))
        XCTAssertEqual(wi.credentials?.bundlePEM, issued.bundlePEM + b.trustBundlePEM)
        XCTAssertEqual(wi.credentials?.serialHex, info.serialHex)
        XCTAssertEqual(handed.withLock { $0 }, [issued.bundlePEM + b.trustBundlePEM])
        wi.stop()
    }
}
