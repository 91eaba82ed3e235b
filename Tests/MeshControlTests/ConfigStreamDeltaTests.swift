import XCTest
import MeshCore
import MeshIO
import MeshPKI
import MeshCA
import MeshTLS
import MeshControlWire
import Synchronization
@testable import MeshAgent
#if canImport(Glibc)
import Glibc
#endif

/// The sidecar's side of delta pushes (`ConfigStreamClient`), against a scripted meshd on a real
/// mTLS socket: it names the text it holds as `base`; a delta whose result has another digest,
/// or that cannot be read, is neither applied nor answered, and the next request names no base
/// (meshd then sends the whole text); a good delta is applied to exactly the new text.
final class ConfigStreamDeltaTests: XCTestCase {
    var dirs: [String] = []

    override func tearDown() { for d in dirs { _ = system("rm -rf '\(d)'") } }

    static func text(_ n: Int) -> String {
        var t = "apiVersion: sidecar.mesh/v1alpha1\nkind: ProxyConfig\nmetadata: {name: proxy-config}\nspec:\n  clusters:\n"
        for i in 0..<40 { t += "  - name: \"svc\(i).default\"\n    tls: ISTIO_MUTUAL\n    endpoints:\n      - {address: \"127.0.0.1:\(10000 + i + (i == 7 ? n : 0))\"}\n" }
        return t + "  routes: []\n"
    }

    /// What the scripted meshd saw: each config request's digest and base, and each answer.
    struct Seen { var requests: [(digest: String, base: String)] = []; var answers: [String] = [] }

    func testABadDeltaIsNotAppliedAndTheNextRequestAsksForTheWholeText() throws {
        var t = Array("/tmp/delta-stream-XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&t)!)
        dirs.append(dir)
        let ca = try CertificateAuthority(stateDir: dir, caDir: nil, trustDomain: "cluster.local", certTTL: 600)
        let server = try ca.serverCredentials(ttl: 600, addresses: [])
        var o = TLSContext.Options(certChainFile: "(test)", privateKeyFile: "(test)", trustBundleFile: "(test)")
        o.certChainPEM = server.chainPEM; o.privateKeyPEM = server.keyPEM; o.trustBundlePEM = server.bundlePEM
        o.trustDomain = "cluster.local"; o.alpn = ["http/1.1"]
        let ctx = try TLSContext(role: .server, options: o)

        let texts = (1...4).map(Self.text)
        let d = texts.map(MeshCrypto.digestHex)
        @Sendable func full(_ i: Int) -> String { ConfigStream.Push(version: i + 1, nonce: "n\(i)", digest: d[i], text: texts[i]).body }
        @Sendable func delta(_ from: Int, _ to: Int, target: String? = nil, nonce: String? = nil) -> String {
            let patch = ConfigDelta.make(from: texts[from], to: texts[to])
            return ConfigStream.Push(version: to + 1, nonce: nonce ?? "n\(to)", digest: d[to],
                                     delta: .init(base: d[from], target: target ?? d[to], patch: patch)).body
        }
        // The script, by what the sidecar says it has (digest, base).
        let seen = Locked(Seen())
        let fake = try ControlServer(address: SocketAddress(host: "127.0.0.1", port: 0)!, name: "fake meshd", context: { ctx }) { r in
            if r.path == ConfigStream.ackPath || r.path == ConfigStream.nackPath {
                seen.withLock { $0.answers.append("\(r.path) \(r.query["nonce"] ?? "")") }
                return ControlResponse(200, "ok\n")
            }
            let q = ConfigStream.Request(query: r.query)
            seen.withLock { $0.requests.append((q.digest, q.base)) }
            switch (q.digest, q.base) {
            case ("", ""): return ControlResponse(200, full(0))
            // A delta whose result is not the text it names: refused.
            case (d[0], d[0]): return ControlResponse(200, delta(0, 1, target: MeshCrypto.digestHex("another text"), nonce: "bad1"))
            case (d[0], ""): return ControlResponse(200, full(1))
            case (d[1], d[1]): return ControlResponse(200, delta(1, 2))
            // A delta that copies past the base: cannot be read.
            case (d[2], d[2]): return ControlResponse(200, "version: 4 bad2 \(d[3])\ndelta \(d[2]) \(d[3])\nops 1 3 5\nc 9 1\n")
            case (d[2], ""): return ControlResponse(200, full(3))
            default: usleep(50_000); return ControlResponse(304, "")
            }
        }
        Threads.spawnDetached { fake.run() }
        defer { fake.stop() }

        let id = "spiffe://cluster.local/ns/default/sa/web"
        let key = try MeshCrypto.PrivateKey.generate()
        let issued = try ca.sign(csrPEM: try MeshCrypto.csr(key: key, identity: id),
                                 token: ca.mintToken(namespace: "default", serviceAccount: "web", ttl: 60), peer: nil)
        let info = try MeshCrypto.Certificate.loadAll(pem: issued.chainPEM)[0].info
        let wi = WorkloadIdentity(meshd: [SocketAddress(host: "127.0.0.1", port: fake.port)!], identity: id, rootPEM: ca.trustBundlePEM, token: "")
        wi.current.withLock {
            $0 = .init(chainPEM: issued.chainPEM, keyPEM: try! key.pem(), bundlePEM: issued.bundlePEM,
                       notBefore: info.notBefore, notAfter: info.notAfter, serialHex: info.serialHex)
        }
        let applied = Locked<[(Int, String)]>([])
        let client = ConfigStreamClient(identity: wi, registration: nil, node: "127.0.0.1:1", admin: "",
                                        apply: { text, version in applied.withLock { $0.append((version, text)) }; return "ok" },
                                        ready: { _ in })
        let done = Atomic<Bool>(false)
        Threads.spawnDetached { client.run(); done.store(true, ordering: .relaxed) }
        let deadline = Clock.monotonicNanos() + 15_000_000_000
        while applied.withLock({ $0.count }) < 3 && Clock.monotonicNanos() < deadline { usleep(20_000) }
        usleep(200_000)
        wi.stop()
        while !done.load(ordering: .relaxed) && Clock.monotonicNanos() < deadline + 5_000_000_000 { usleep(20_000) }

        // Applied: the whole first text, the whole second (after the refused delta), the third
        // from a delta, the whole fourth (after the delta that could not be read); nothing else.
        let got = applied.withLock { $0 }
        XCTAssertEqual(got.map(\.0), [1, 2, 3, 4])
        XCTAssertEqual(got.map(\.1), texts)
        let s = seen.withLock { $0 }
        func name(_ digest: String) -> String { digest.isEmpty ? "-" : d.firstIndex(of: digest).map(String.init) ?? digest }
        let asked = s.requests.prefix(6).map { "\(name($0.digest)) \(name($0.base))" }
        XCTAssertEqual(asked, ["- -", "0 0", "0 -", "1 1", "2 2", "2 -"])
        // The refused pushes (bad1, bad2) were not answered.
        XCTAssertEqual(s.answers, ["\(ConfigStream.ackPath) n0", "\(ConfigStream.ackPath) n1", "\(ConfigStream.ackPath) n2", "\(ConfigStream.ackPath) n3"])
    }
}
