import MeshControlWire
import MeshPKI
import MeshCore
import MeshIO
import MeshTLS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A sidecar's identity in mesh mode (DESIGN §4): it generates an EC P-256 key in memory, sends
/// meshd a CSR for its SPIFFE ID with its join token, and renews at half lifetime with a new key,
/// authenticating with its current certificate (the token is only needed again if the certificate
/// lapsed while meshd was away). Renewal retries with jittered exponential back-off. Every new
/// set of credentials (chain, key, trust bundle) goes to `onRenewed`. With several meshd
/// addresses (replicas, DESIGN §12) each request tries them in turn, starting with the one that
/// answered last.
public final class WorkloadIdentity: @unchecked Sendable {
    public struct Credentials: Sendable {
        public let chainPEM: String
        public let keyPEM: String
        public let bundlePEM: String
        public let notBefore: Int64
        public let notAfter: Int64
        public let serialHex: String
    }

    /// meshd's API addresses (`sidecar --meshd A,B,...`).
    public let addresses: [SocketAddress]
    /// The address that answered the last certificate request.
    private let preferred = Atomic<Int>(0)
    public let identity: String
    private let rootPEM: String
    /// The join token, or the file it is read from each time one is needed (`--token-file`).
    private let token: JoinToken
    let current = Locked<Credentials?>(nil)
    private let stopping = Atomic<Bool>(false)
    /// meshd refused a renewal with the current certificate: the next request uses the token.
    private let useToken = Atomic<Bool>(false)
    /// The SPIFFE ID meshd's API certificate must carry (same trust domain as this workload).
    public var meshdIdentity: String {
        let td = identity.dropFirst("spiffe://".count).split(separator: "/").first.map(String.init) ?? "cluster.local"
        return "spiffe://\(td)/ns/mesh-system/sa/meshd"
    }

    public init(meshd addresses: [SocketAddress], identity: String, rootPEM: String, token: JoinToken) {
        precondition(!addresses.isEmpty, "at least one meshd address")
        self.addresses = addresses
        self.identity = identity
        self.rootPEM = rootPEM
        self.token = token
    }

    public convenience init(meshd addresses: [SocketAddress], identity: String, rootPEM: String, token: String) {
        self.init(meshd: addresses, identity: identity, rootPEM: rootPEM, token: .literal(token))
    }

    public var credentials: Credentials? { current.withLock { $0 } }

    /// One certificate request: with the current certificate when it is still valid, else the token.
    public func request() throws(CAError) -> Credentials {
        let key = try MeshCrypto.PrivateKey.generate()
        let csr = try MeshCrypto.csr(key: key, identity: identity)
        var o = TLSContext.Options(certChainFile: "(mesh mode)", privateKeyFile: "(mesh mode)", trustBundleFile: "--root-cert")
        o.alpn = ["http/1.1"]
        var headers: [(String, String)] = [("content-type", "application/pkcs10")]
        let now = MeshCrypto.now()
        let cur = credentials
        let trusted = cur.map { $0.bundlePEM } ?? rootPEM
        let withCertificate = cur.map { $0.notAfter > now + 1 } == true && !useToken.load(ordering: .relaxed)
        if let c = cur, withCertificate {
            o.certChainPEM = c.chainPEM
            o.privateKeyPEM = c.keyPEM
        } else {
            // Read now: a token file is rewritten by the kubelet while the sidecar runs. An
            // unreadable or empty one is an error like meshd being away (retried with back-off).
            headers.append(("authorization", "Bearer \(try token.current())"))
            o.withoutCertificate = true
        }
        // Trust both what the flag gave and what meshd sent last (a rotated root).
        o.trustBundlePEM = trusted + (trusted.contains(rootPEM) ? "" : rootPEM)
        let ctx: TLSContext
        do { ctx = try TLSContext(role: .client, options: o) } catch { throw CAError("client TLS: \(error)") }
        // Each address in turn while none can be reached; an answer (even a refusal) is final.
        var answer: (status: Int, body: String)? = nil
        var failures: [String] = []
        let first = preferred.load(ordering: .relaxed)
        for k in 0..<addresses.count {
            let i = (first + k) % addresses.count
            do {
                answer = try ControlClient.request(addresses[i], context: ctx, method: "POST", path: CertificateExchange.path, headers: headers,
                                                   body: csr, expectPeer: meshdIdentity)
                preferred.store(i, ordering: .relaxed)
                break
            } catch {
                failures.append(error.description)
            }
        }
        guard let r = answer else { throw CAError(failures.joined(separator: "; ")) }
        guard r.status == 200 else {
            // A renewal refused on the certificate's own grounds (retired root, say): try the token next.
            if withCertificate && (r.status == 401 || r.status == 403) { useToken.store(true, ordering: .relaxed) }
            throw CAError("meshd refused the certificate request (\(r.status)): \(r.body.trimmingCharacters)", refusal: r.status)
        }
        let parts = r.body.components(marker: CertificateExchange.bundleMarker)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { throw CAError("meshd's answer has no certificate chain and trust bundle") }
        let chain = try MeshCrypto.Certificate.loadAll(pem: parts[0])
        guard chain[0].matches(key) else { throw CAError("meshd returned a certificate for another key") }
        let info = chain[0].info
        guard info.identity == identity else { throw CAError("meshd returned \(info.identity), not \(identity)") }
        // The certificate must chain to a root already trusted here, and to the bundle that came
        // with it (a bundle is accepted only along with a certificate it vouches for).
        guard MeshCrypto.verify(chainPEM: parts[0], rootsPEM: o.trustBundlePEM ?? rootPEM) else {
            throw CAError("meshd's certificate does not chain to a trusted root; not used")
        }
        guard MeshCrypto.verify(chainPEM: parts[0], rootsPEM: parts[1]) else {
            throw CAError("meshd's certificate does not chain to the trust bundle sent with it; not used")
        }
        useToken.store(false, ordering: .relaxed)
        let creds = Credentials(chainPEM: parts[0], keyPEM: try key.pem(), bundlePEM: parts[1],
                                notBefore: info.notBefore, notAfter: info.notAfter, serialHex: info.serialHex)
        current.withLock { $0 = creds }
        Log.info("identity", "certificate for \(identity): serial \(info.serialHex), expires \(X509Info.rfc3339(info.notAfter))")
        return creds
    }

    /// Requests until it succeeds (back-off 0.5 s doubling to 30 s, jittered), `stop` is called,
    /// or meshd refuses the credential itself (a bad, expired or foreign token: retrying cannot
    /// help, so the error is returned).
    public func obtain() -> Result<Credentials, CAError>? {
        var delay: UInt64 = 500_000_000
        var rng = FastRandom()
        while !stopping.load(ordering: .relaxed) {
            do { return .success(try request()) } catch {
                if let s = error.refusal, s == 400 || s == 401 || s == 403 { return .failure(error) }
                Log.warn("identity", "\(error); retrying in \(delay / 1_000_000) ms")
            }
            let jittered = delay / 2 + rng.next() % (delay / 2 + 1)
            sleepNanos(jittered)
            delay = min(delay * 2, 30_000_000_000)
        }
        return nil
    }

    /// Where new credentials go (`startRenewal`'s handler), also for a trust bundle that came
    /// with the config (`adopt(bundle:)`).
    private let renewed = Locked<(@Sendable (Credentials) -> Void)?>(nil)

    /// Takes the trust bundle meshd sent with the config (the roots in force: a root rotation
    /// step reaches this sidecar before its next renewal). It must be PEM certificates and must
    /// still hold the root this workload's own certificate chains to (a bundle that would make
    /// its peers' view of it and its own disagree is refused, and the push is NACKed); the same
    /// bundle again changes nothing. Returns whether the bundle in force changed.
    @discardableResult
    public func adopt(bundle pem: String) throws(CAError) -> Bool {
        guard let c = credentials else { throw CAError("no certificate yet to check the trust bundle against") }
        if pem == c.bundlePEM { return false }
        let roots: [MeshCrypto.Certificate]
        do { roots = try MeshCrypto.Certificate.loadAll(pem: pem) } catch { throw CAError("the trust bundle sent with the config: \(error)") }
        guard !roots.isEmpty else { throw CAError("the trust bundle sent with the config holds no certificate") }
        guard MeshCrypto.verify(chainPEM: c.chainPEM, rootsPEM: pem) else {
            throw CAError("the trust bundle sent with the config does not hold the root this workload's certificate (serial \(c.serialHex)) chains to; the bundle in force stays")
        }
        let next = Credentials(chainPEM: c.chainPEM, keyPEM: c.keyPEM, bundlePEM: pem, notBefore: c.notBefore, notAfter: c.notAfter, serialHex: c.serialHex)
        // Only over the certificate it was checked against: a renewal that landed meanwhile
        // stays (it brought its own bundle), and this one is asked again with the next push.
        let stored = current.withLock { cur -> Bool in
            guard cur?.serialHex == c.serialHex else { return false }
            cur = next
            return true
        }
        guard stored else { throw CAError("the certificate was renewed while the trust bundle was checked; not taken this time") }
        Log.info("identity", "trust bundle from meshd: \(roots.count) root(s) trusted now")
        renewed.withLock { $0 }?(next)
        return true
    }

    /// Renews at half lifetime for ever, on its own thread, handing new credentials to `onRenewed`.
    public func startRenewal(_ onRenewed: @escaping @Sendable (Credentials) -> Void) {
        renewed.withLock { $0 = onRenewed }
        Threads.spawnDetached { [self] in
            var rng = FastRandom()
            while !stopping.load(ordering: .relaxed) {
                guard let c = credentials else { return }
                let half = c.notBefore + (c.notAfter - c.notBefore) / 2
                let wait = max(0, half - MeshCrypto.now())
                sleepNanos(UInt64(wait) * 1_000_000_000 + rng.next() % 200_000_000)
                if stopping.load(ordering: .relaxed) { return }
                var delay: UInt64 = 500_000_000
                while !stopping.load(ordering: .relaxed) {
                    do {
                        onRenewed(try request())
                        break
                    } catch {
                        let left = (credentials?.notAfter ?? 0) - MeshCrypto.now()
                        Log.warn("identity", "renewal failed (certificate valid \(left)s more): \(error); retrying in \(delay / 1_000_000) ms")
                    }
                    sleepNanos(delay / 2 + rng.next() % (delay / 2 + 1))
                    delay = min(delay * 2, 10_000_000_000)
                }
            }
        }
    }

    public func stop() { stopping.store(true, ordering: .relaxed) }
    public var isStopping: Bool { stopping.load(ordering: .relaxed) }

    /// The address the last certificate came from (where the config stream starts).
    public var preferredAddress: Int { preferred.load(ordering: .relaxed) }

    /// A kept-alive connection to meshd's API at `address` with this workload's current
    /// certificate (mTLS), to meshd only; also returns that certificate's serial (a renewal
    /// means a new connection).
    public func connect(_ address: SocketAddress) throws(CAError) -> (connection: ControlConnection, serial: String) {
        guard let c = credentials else { throw CAError("no certificate yet") }
        var o = TLSContext.Options(certChainFile: "(mesh mode)", privateKeyFile: "(mesh mode)", trustBundleFile: "--root-cert")
        o.alpn = ["http/1.1"]
        o.certChainPEM = c.chainPEM
        o.privateKeyPEM = c.keyPEM
        o.trustBundlePEM = c.bundlePEM + (c.bundlePEM.contains(rootPEM) ? "" : rootPEM)
        let ctx: TLSContext
        do { ctx = try TLSContext(role: .client, options: o) } catch { throw CAError("client TLS: \(error)") }
        return (try ControlConnection.open(address, context: ctx, expectPeer: meshdIdentity), c.serialHex)
    }

    private func sleepNanos(_ n: UInt64) {
        var left = n
        while left > 0 && !stopping.load(ordering: .relaxed) {
            let step = min(left, 200_000_000)
            usleep(UInt32(step / 1000))
            left -= step
        }
    }
}
