import MeshPKI
import MeshCore
import MeshTLS
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// meshd's certificate authority (DESIGN §4). It keeps its state in the state directory:
/// `ca-key.pem` + `ca-cert.pem` (the issuing CA, keys 0600), `root-cert.pem` (the trust bundle
/// sidecars need: every root in force), `token-key` and `admin-token` (0600). On first start it
/// creates a self-signed root; with `--ca-dir` it signs with a plug-in CA given in Istio's file
/// names instead. Root rotation moves through three steps (`add`, `issue`, `retire`), each one
/// persisted, so the mesh keeps trusting both roots while certificates move to the new one.
/// Files are written atomically (temp file, fsync, rename). Thread-safe.
public final class CertificateAuthority: @unchecked Sendable {
    public let trustDomain: String
    public let stateDir: String
    public let certTTL: Int
    let tokenKey: [UInt8]
    public let adminToken: String
    private let pluggedIn: Bool

    private struct Signer {
        var key: MeshCrypto.PrivateKey
        var cert: MeshCrypto.Certificate
        /// Intermediates sent after the leaf (plug-in CA: ca-cert up to, not including, the root).
        var chainPEM: String
    }
    private struct State {
        var signer: Signer
        /// Every trusted root, PEM, oldest first.
        var bundlePEM: String
        /// A root added by `rotate add` that does not issue yet.
        var next: Signer?
        var issued: UInt64 = 0
        var refused: UInt64 = 0
    }
    private let state: Locked<State>
    private let rotationLock = PlainLock()

    /// Loads the CA from the state directory, creating it on first start (or from `caDir`).
    /// `shared`: the join-token key and admin token every replica uses (from the shared store);
    /// the admin token is then written to STATE-DIR/admin-token for meshctl on this host.
    public init(stateDir: String, caDir: String?, trustDomain: String, certTTL: Int,
                shared: (tokenKey: String, adminToken: String)? = nil) throws(CAError) {
        self.stateDir = stateDir
        self.trustDomain = trustDomain
        self.certTTL = certTTL
        try FileStore.makeDirectory(stateDir)
        if let s = shared {
            tokenKey = Array(s.tokenKey.utf8)
            adminToken = s.adminToken
            try FileStore.writeAtomically("\(stateDir)/admin-token", s.adminToken + "\n", mode: 0o600)
        } else {
            tokenKey = try FileStore.secret(at: "\(stateDir)/token-key", bytes: 32).utf8.map { $0 }
            adminToken = try FileStore.secret(at: "\(stateDir)/admin-token", bytes: 24)
        }
        if let dir = caDir {
            pluggedIn = true
            let certPath = "\(dir)/ca-cert.pem", chainPath = "\(dir)/cert-chain.pem", rootPath = "\(dir)/root-cert.pem"
            let cert = try CertificateAuthority.certificates(certPath).certs[0]
            let key = try CertificateAuthority.privateKey("\(dir)/ca-key.pem")
            guard cert.matches(key) else { throw CAError("\(dir)/ca-key.pem does not match \(certPath)") }
            let root = try CertificateAuthority.certificates(rootPath).pem
            // cert-chain.pem: ca-cert up to and including the root; sidecars send all but the root.
            var chain = "", full = try cert.pem()
            if FileStore.exists(chainPath) {
                for c in try CertificateAuthority.certificates(chainPath).certs {
                    let pem = try c.pem()
                    full += pem
                    if c.info.subject != c.info.issuer { chain += pem }
                }
            } else {
                chain = full
            }
            // A chain that does not lead to the root would make every peer refuse every sidecar.
            if let why = MeshCrypto.verifyFailure(chainPEM: full, rootsPEM: root) {
                let via = FileStore.exists(chainPath) ? " through \(chainPath)" : ""
                throw CAError("\(certPath) does not verify up to a root in \(rootPath)\(via): \(why)")
            }
            state = Locked(State(signer: Signer(key: key, cert: cert, chainPEM: chain), bundlePEM: root))
            try FileStore.writeAtomically("\(stateDir)/root-cert.pem", root, mode: 0o644)
            Log.info("ca", "plug-in CA from \(dir): issuing as \(cert.info.subject)")
            return
        }
        pluggedIn = false
        let keyPath = "\(stateDir)/ca-key.pem", certPath = "\(stateDir)/ca-cert.pem", bundlePath = "\(stateDir)/root-cert.pem"
        if FileStore.exists(keyPath) != FileStore.exists(certPath) {
            // Never generate a new root over half of an existing CA: every sidecar would break.
            throw CAError("\(stateDir) has only one of ca-key.pem and ca-cert.pem; restore the missing file (or move the directory away to start a new CA)")
        }
        if FileStore.exists(keyPath) && FileStore.exists(certPath) {
            var key = try CertificateAuthority.privateKey(keyPath)
            var cert = try CertificateAuthority.certificates(certPath).certs[0]
            if !cert.matches(key) {
                // A crash during `rotate issue` (key written, certificate not yet, or the reverse):
                // finish it from the pair it was copying, if that pair is whole.
                let nk = try? MeshCrypto.PrivateKey.load(pem: try FileStore.read("\(stateDir)/next-ca-key.pem"))
                let nc = try? MeshCrypto.Certificate.loadAll(pem: try FileStore.read("\(stateDir)/next-ca-cert.pem"))[0]
                guard let nk, let nc, nc.matches(nk) else { throw CAError("\(keyPath) does not match \(certPath)") }
                try FileStore.writeAtomically(keyPath, try nk.pem(), mode: 0o600)
                try FileStore.writeAtomically(certPath, try nc.pem(), mode: 0o644)
                FileStore.remove("\(stateDir)/next-ca-key.pem")
                FileStore.remove("\(stateDir)/next-ca-cert.pem")
                key = nk
                cert = nc
                Log.warn("ca", "completed an interrupted root rotation step (issue)")
            }
            let bundle: String
            if FileStore.exists(bundlePath) {
                let (text, roots) = try CertificateAuthority.certificates(bundlePath)
                // Every certificate issued must verify against the bundle sidecars are given.
                let issuing = cert.info
                guard roots.contains(where: { $0.info.serialHex == issuing.serialHex && $0.info.subject == issuing.subject }) else {
                    throw CAError("\(bundlePath) does not hold the issuing root \(certPath) (\(issuing.subject)); restore it")
                }
                bundle = text
            } else {
                bundle = try cert.pem()
                try FileStore.writeAtomically(bundlePath, bundle, mode: 0o644)
                Log.warn("ca", "\(bundlePath) was missing: wrote it again from \(certPath)")
            }
            var next: Signer? = nil
            if FileStore.exists("\(stateDir)/next-ca-key.pem") {
                let nk = try CertificateAuthority.privateKey("\(stateDir)/next-ca-key.pem")
                let nc = try CertificateAuthority.certificates("\(stateDir)/next-ca-cert.pem").certs[0]
                guard nc.matches(nk) else { throw CAError("\(stateDir)/next-ca-key.pem does not match next-ca-cert.pem") }
                next = Signer(key: nk, cert: nc, chainPEM: "")
            }
            state = Locked(State(signer: Signer(key: key, cert: cert, chainPEM: ""), bundlePEM: bundle, next: next))
            Log.info("ca", "loaded root CA \(cert.info.subject) (expires \(X509Info.rfc3339(cert.info.notAfter)))")
        } else {
            let s = try CertificateAuthority.newRoot()
            try FileStore.writeAtomically(keyPath, try s.key.pem(), mode: 0o600)
            try FileStore.writeAtomically(certPath, try s.cert.pem(), mode: 0o644)
            try FileStore.writeAtomically(bundlePath, try s.cert.pem(), mode: 0o644)
            state = Locked(State(signer: s, bundlePEM: try s.cert.pem()))
            Log.info("ca", "created root CA \(s.cert.info.subject) in \(stateDir)")
        }
    }

    /// The text and certificates of the PEM file `path`; every error names the file.
    static func certificates(_ path: String) throws(CAError) -> (pem: String, certs: [MeshCrypto.Certificate]) {
        let text = try FileStore.read(path)
        do { return (text, try MeshCrypto.Certificate.loadAll(pem: text)) } catch { throw CAError("\(path): \(error)") }
    }

    /// The private key in the PEM file `path`; every error names the file.
    static func privateKey(_ path: String) throws(CAError) -> MeshCrypto.PrivateKey {
        let text = try FileStore.read(path)
        do { return try MeshCrypto.PrivateKey.load(pem: text) } catch { throw CAError("\(path): \(error)") }
    }

    private static func newRoot() throws(CAError) -> Signer {
        let key = try MeshCrypto.PrivateKey.generate()
        var stamp = timespec()
        clock_gettime(CLOCK_REALTIME, &stamp)
        // Distinct names even for two roots made in the same second (chains are built by name).
        let tag = MeshCrypto.randomHex(bytes: 4)
        let cert = try MeshCrypto.selfSignedRoot(key: key, commonName: "swift-mesh root \(X509Info.rfc3339(Int64(stamp.tv_sec))) \(tag)",
                                                 seconds: 10 * 365 * 24 * 3600)
        return Signer(key: key, cert: cert, chainPEM: "")
    }

    /// The trust bundle (every root in force).
    public var trustBundlePEM: String { state.withLock { $0.bundlePEM } }
    public var issuedCount: UInt64 { state.withLock { $0.issued } }
    public var refusedCount: UInt64 { state.withLock { $0.refused } }

    /// The SPIFFE ID of a namespace and service account in this trust domain.
    public func identity(namespace: String, serviceAccount: String) -> String {
        "spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)"
    }

    /// A new signed join token (`ttl` seconds).
    public func mintToken(namespace: String, serviceAccount: String, ttl: Int) -> String {
        let id = MeshCrypto.randomHex(bytes: 8)
        return JoinToken(namespace: namespace, serviceAccount: serviceAccount, expires: MeshCrypto.now() + Int64(ttl), id: id).encode(key: tokenKey)
    }

    /// What a certificate request gets back: the chain (leaf first) and the trust bundle.
    public struct Issued: Sendable {
        public let chainPEM: String
        public let bundlePEM: String
        public let serialHex: String
        public let notAfter: Int64
    }

    /// Why a request was refused: 401 (no valid credential), 403 (identity not granted), 400 (bad CSR).
    public struct Refusal: Error, Sendable {
        public let status: Int
        public let message: String
    }

    /// A caller's verified certificate (renewal over mTLS).
    public struct Peer: Sendable {
        public let identity: String
        public let notAfter: Int64
        public let issuer: String
        public init(identity: String, notAfter: Int64, issuer: String) {
            self.identity = identity; self.notAfter = notAfter; self.issuer = issuer
        }
    }

    /// Issuers whose certificates may renew: this CA's issuing certificate(s) and, for its own
    /// roots, every root in the bundle; never a sibling intermediate under a shared plug-in root.
    private func renewableIssuers() -> Set<String> {
        state.withLock { s in
            var out: Set<String> = [s.signer.cert.info.subject]
            if let n = s.next { out.insert(n.cert.info.subject) }
            if !pluggedIn { for r in X509Info.load(pem: s.bundlePEM) { out.insert(r.subject) } }
            return out
        }
    }

    /// Signs `csrPEM` for the identity a credential grants: a join token, or the caller's current
    /// certificate (renewal over mTLS: unexpired, issued by this CA). The CSR must ask for exactly
    /// that identity.
    public func sign(csrPEM: String, token: String?, peer: Peer?) throws(Refusal) -> Issued {
        var granted: String
        if let t = token {
            do {
                let jt = try JoinToken.verify(t, key: tokenKey, now: MeshCrypto.now())
                granted = identity(namespace: jt.namespace, serviceAccount: jt.serviceAccount)
            } catch {
                refuse()
                throw Refusal(status: 401, message: error.description)
            }
        } else if let p = peer, X509Info.isSPIFFE(p.identity, inTrustDomain: trustDomain) {
            guard p.notAfter > MeshCrypto.now() else {
                refuse()
                throw Refusal(status: 401, message: "the certificate for \(p.identity) has expired: join again with a token")
            }
            guard renewableIssuers().contains(p.issuer) else {
                refuse()
                throw Refusal(status: 401, message: "the certificate for \(p.identity) was not issued by this meshd (issuer \(p.issuer)): join with a token")
            }
            granted = p.identity
        } else {
            refuse()
            throw Refusal(status: 401, message: "no credential: send a join token (authorization: Bearer) or renew with your current certificate")
        }
        return try signCSR(csrPEM, granted: granted)
    }

    /// Signs `csrPEM` for `namespace`/`serviceAccount`, an identity established outside this CA:
    /// a Kubernetes service-account token that the apiserver's TokenReview vouched for
    /// (MeshControl's `KubeTokenReviewer`). The CSR checks, answers and counts are `sign`'s.
    public func sign(csrPEM: String, reviewedNamespace namespace: String, serviceAccount: String) throws(Refusal) -> Issued {
        try signCSR(csrPEM, granted: identity(namespace: namespace, serviceAccount: serviceAccount))
    }

    /// Counts a certificate request refused before it reached the CA (its credential refused
    /// by a TokenReview), in `refusedCount` with the CA's own refusals.
    public func countRefusal() { refuse() }

    /// The CSR must ask for exactly `granted`; then it is issued.
    private func signCSR(_ csrPEM: String, granted: String) throws(Refusal) -> Issued {
        let csr: MeshCrypto.VerifiedCSR
        do { csr = try MeshCrypto.verifyCSR(csrPEM) } catch {
            refuse()
            throw Refusal(status: 400, message: error.description)
        }
        guard csr.uris == [granted] else {
            refuse()
            let asked = csr.uris.isEmpty ? "no identity" : csr.uris.joined(separator: ", ")
            throw Refusal(status: 403, message: "the CSR asks for \(asked), but the credential grants only \(granted)")
        }
        do {
            return try issue(csr, identity: granted, extraSANs: [])
        } catch {
            throw Refusal(status: 500, message: error.description)
        }
    }

    private func refuse() { state.withLock { $0.refused += 1 } }

    func issue(_ csr: MeshCrypto.VerifiedCSR, identity: String, extraSANs: [String], ttl: Int? = nil) throws(CAError) -> Issued {
        let (signer, bundle) = state.withLock { ($0.signer, $0.bundlePEM) }
        let cert = try MeshCrypto.issue(csr: csr, identity: identity, extraSANs: extraSANs, seconds: ttl ?? certTTL,
                                        caCert: signer.cert, caKey: signer.key)
        let info = cert.info
        state.withLock { $0.issued += 1 }
        Log.info("ca", "issued \(identity) serial \(info.serialHex) expires \(X509Info.rfc3339(info.notAfter))")
        let chain = try cert.pem() + (pluggedIn ? signer.chainPEM : "")
        return Issued(chainPEM: chain, bundlePEM: bundle, serialHex: info.serialHex, notAfter: info.notAfter)
    }

    /// meshd's own serving certificate (API port), issued from the CA with a key kept in memory.
    public func serverCredentials(ttl: Int, addresses: [String]) throws(CAError) -> (chainPEM: String, keyPEM: String, bundlePEM: String) {
        let key = try MeshCrypto.PrivateKey.generate()
        let id = identity(namespace: "mesh-system", serviceAccount: "meshd")
        let csr = try MeshCrypto.verifyCSR(try MeshCrypto.csr(key: key, identity: id))
        let sans = ["DNS:meshd", "DNS:localhost"] + Set(["127.0.0.1"] + addresses).sorted().map { "IP:\($0)" }
        let issued = try issue(csr, identity: id, extraSANs: sans, ttl: ttl)
        return (issued.chainPEM, try key.pem(), issued.bundlePEM)
    }

    // MARK: root rotation

    /// One step of root rotation: `add` (a new root joins the trust bundle; the old one still
    /// issues), `issue` (the new root issues; both stay trusted), `retire` (the old root leaves
    /// the bundle). Between steps, sidecars pick up the bundle with their next certificate.
    public func rotate(step: String) throws(CAError) -> String {
        if pluggedIn { throw CAError("this meshd uses a plug-in CA (--ca-dir): rotate it by replacing those files") }
        // One step at a time: a step's checks and its file writes form one critical section.
        rotationLock.lock()
        defer { rotationLock.unlock() }
        switch step {
        case "add":
            if state.withLock({ $0.next != nil }) { throw CAError("a new root was already added; next step: issue") }
            let s = try CertificateAuthority.newRoot()
            let bundle = state.withLock { $0.bundlePEM } + (try s.cert.pem())
            try FileStore.writeAtomically("\(stateDir)/next-ca-key.pem", try s.key.pem(), mode: 0o600)
            try FileStore.writeAtomically("\(stateDir)/next-ca-cert.pem", try s.cert.pem(), mode: 0o644)
            try FileStore.writeAtomically("\(stateDir)/root-cert.pem", bundle, mode: 0o644)
            state.withLock { $0.next = s; $0.bundlePEM = bundle }
            return "added root \(s.cert.info.subject) to the trust bundle; it does not issue yet (next: issue)"
        case "issue":
            guard let n = state.withLock({ $0.next }) else { throw CAError("no new root to issue from; first step: add") }
            try FileStore.writeAtomically("\(stateDir)/ca-key.pem", try n.key.pem(), mode: 0o600)
            try FileStore.writeAtomically("\(stateDir)/ca-cert.pem", try n.cert.pem(), mode: 0o644)
            FileStore.remove("\(stateDir)/next-ca-key.pem")
            FileStore.remove("\(stateDir)/next-ca-cert.pem")
            state.withLock { $0.signer = n; $0.next = nil }
            return "root \(n.cert.info.subject) now issues; the old root stays trusted (next: retire, once every sidecar renewed)"
        case "retire":
            let (signer, next) = state.withLock { ($0.signer, $0.next) }
            if next != nil { throw CAError("the new root does not issue yet; step issue comes before retire") }
            let bundle = try signer.cert.pem()
            try FileStore.writeAtomically("\(stateDir)/root-cert.pem", bundle, mode: 0o644)
            state.withLock { $0.bundlePEM = bundle }
            return "the trust bundle now holds only \(signer.cert.info.subject)"
        default:
            throw CAError("unknown rotation step \"\(step)\" (expected add, issue or retire)")
        }
    }

    /// The roots in force and which one issues, for `meshctl ca status`.
    public func status() -> String {
        let (signer, bundle, next) = state.withLock { ($0.signer, $0.bundlePEM, $0.next) }
        var lines = ["issuing: \(signer.cert.info.subject) (expires \(X509Info.rfc3339(signer.cert.info.notAfter)))"]
        for r in X509Info.load(pem: bundle) {
            lines.append("trusted root: \(r.subject) serial \(r.serialHex) expires \(X509Info.rfc3339(r.notAfter))")
        }
        if let n = next { lines.append("rotation: \(n.cert.info.subject) added, not issuing yet (next step: issue)") }
        return lines.joined(separator: "\n") + "\n"
    }
}
