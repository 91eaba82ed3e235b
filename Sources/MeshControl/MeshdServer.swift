import MeshControlWire
import MeshCA
import MeshPKI
import COpenSSL
import CMeshShims
import MeshConfig
import MeshCore
import MeshTLS
import MeshIO
import Synchronization

/// meshd's two ports (DESIGN §2): the API (TLS with a certificate from its own CA; workloads ask
/// for certificates there, with a join token or, to renew, their current certificate) and the
/// admin port (plain HTTP on loopback by default; on another address, TLS with the API's
/// certificate, DESIGN §10; `/ready` and `/metrics` open, meshctl's API authenticated with the
/// admin token either way). Thread-safe. The API port runs on a few event loops (config streams
/// parked there) and a small worker pool (`APIStreamServer`); the admin port on `ControlServer`.
public final class MeshdServer: @unchecked Sendable {
    public let ca: CertificateAuthority
    /// The config store and registry (nil: certificate authority only).
    public var store: ConfigStore? {
        didSet { store?.setTrustBundle(ca.trustBundlePEM) }
    }
    /// This meshd among replicas on etcd (nil: the only one, on the file store).
    public var replica: MeshdReplica?
    /// Scrapes the sidecars' metrics for the web page while it is used (WebUI.swift).
    public let webUISampler = WebUISampler()
    /// The canary controller (CanaryController.swift; nil: no config store).
    public var canaries: CanaryController?
    /// Reviews Kubernetes service-account tokens with the apiserver (`meshd --kube-api`; nil: off).
    public var kubeReviewer: KubeTokenReviewer?
    private let apiContext: Locked<TLSContext?>
    private let apiRenewAt = Atomic<Int64>(0)
    static let serverCertTTL = 24 * 3600
    /// The API port: config streams on event loops, everything else on a few worker threads.
    public private(set) var api: APIStreamServer?
    public private(set) var admin: ControlServer?
    /// Whether the admin port speaks TLS (it is not on loopback).
    public private(set) var adminTLS = false
    /// The API's concrete address as IP:PORT for `/v1/bootstrap` (nil: it listens on a wildcard).
    public private(set) var apiAdvertised: String?
    /// Separates the certificate chain from the trust bundle in a certificate response.

    /// Addresses meshd's certificate names as IP SANs besides 127.0.0.1 (its listen and admin
    /// addresses): meshctl checks the one it dialed.
    let addresses: [String]

    public init(ca: CertificateAuthority, addresses: [String] = []) throws(CAError) {
        self.ca = ca
        self.addresses = addresses.filter { $0 != "0.0.0.0" && $0 != "::" }
        apiContext = Locked(nil)
        try refreshServerCertificate()
    }

    /// Issues meshd's own API certificate (at start, at half life, and when the issuing root changes).
    func refreshServerCertificate() throws(CAError) {
        let c = try ca.serverCredentials(ttl: MeshdServer.serverCertTTL, addresses: addresses)
        var o = TLSContext.Options(certChainFile: "(meshd, in memory)", privateKeyFile: "(meshd, in memory)", trustBundleFile: "(meshd CA)")
        o.certChainPEM = c.chainPEM
        o.privateKeyPEM = c.keyPEM
        o.trustBundlePEM = c.bundlePEM
        o.trustDomain = ca.trustDomain
        o.alpn = ["http/1.1"]
        o.requireClientCert = false   // a joining workload has only its token; renewals present their certificate
        o.noResumption = true         // a renewal's certificate is verified on every handshake
        let ctx: TLSContext
        do { ctx = try TLSContext(role: .server, options: o) } catch { throw CAError("meshd API TLS: \(error)") }
        // Thousands of parked config streams: OpenSSL frees a connection's record buffers as
        // soon as they are empty (they come back on the next record).
        _ = mesh_SSL_CTX_set_mode(ctx.ctx, Int(SSL_MODE_RELEASE_BUFFERS))
        apiContext.withLock { $0 = ctx }
        apiRenewAt.store(MeshCrypto.now() + Int64(MeshdServer.serverCertTTL / 2), ordering: .relaxed)
    }

    private func currentAPIContext() -> TLSContext? {
        if MeshCrypto.now() >= apiRenewAt.load(ordering: .relaxed) {
            do { try refreshServerCertificate() } catch { Log.error("meshd", "renewing the API certificate: \(error)") }
        }
        return apiContext.withLock { $0 }
    }

    /// Binds both ports (errors name the port); `run` serves them.
    /// `maxApplyBytes`: the largest request the admin port reads (an apply body), `--max-apply-bytes`.
    /// `adminTLS`: serve the admin port over TLS with the API's certificate (not on loopback).
    /// `apiHost`: the API's concrete IP for `/v1/bootstrap` (nil when it listens on a wildcard).
    public func bind(api apiAddress: SocketAddress, admin adminAddress: SocketAddress, maxApplyBytes: Int = 1 << 20,
                     adminTLS: Bool = false, apiHost: String? = nil) throws(CAError) {
        api = try APIStreamServer(address: apiAddress, meshd: self, context: { [unowned self] in self.currentAPIContext() })
        self.adminTLS = adminTLS
        let apiPort = api!.port
        apiAdvertised = apiHost.flatMap { SocketAddress(host: $0, port: apiPort)?.text }
        let adminContext: @Sendable () -> TLSContext?
        if adminTLS { adminContext = { [unowned self] in self.currentAPIContext() } } else { adminContext = { nil } }
        admin = try ControlServer(address: adminAddress, name: "admin", context: adminContext,
                                  maxBody: maxApplyBytes, maxBodyHint: " (meshd --max-apply-bytes)",
                                  handler: { [unowned self] in self.handleAdmin($0) })
    }

    // MARK: API port

    func handleAPI(_ r: ControlRequest) -> ControlResponse {
        switch (r.method, r.path) {
        case ("POST", CertificateExchange.path):
            var token: String? = nil
            if let a = r.headers["authorization"] {
                guard a.hasPrefix("Bearer ") else { return ControlResponse(401, "authorization: expected Bearer <join token>\n") }
                token = String(a.dropFirst(7)).trimmingCharacters
            }
            // Anything but a join token is a Kubernetes service-account token (KubeTokenReview.swift): reviewed only when
            // shaped like a JWT and the CSR verifies for a well-formed identity, 2 reviews at most in flight (503 past them).
            if let t = token, !t.isEmpty, !t.hasPrefix("mesh1.") { return signWithKubeToken(csrPEM: r.bodyText, token: t) }
            do {
                let peer = r.peerIdentity.map { CertificateAuthority.Peer(identity: $0, notAfter: r.peerNotAfter, issuer: r.peerIssuer) }
                let issued = try ca.sign(csrPEM: r.bodyText, token: token, peer: peer)
                return ControlResponse(200, issued.chainPEM + CertificateExchange.bundleMarker + issued.bundlePEM, contentType: "application/x-pem-file")
            } catch {
                Log.warn("ca", "refused a certificate request (\(error.status)): \(error.message)")
                return ControlResponse(error.status, error.message + "\n")
            }
        case ("GET", "/v1/trust-bundle"):
            return ControlResponse(200, ca.trustBundlePEM, contentType: "application/x-pem-file")
        case (_, "/v1/register"), (_, "/v1/config"), (_, "/v1/ack"), (_, "/v1/nack"):
            return handleStream(r)
        default:
            return ControlResponse(404, "no such endpoint: \(r.method) \(r.path)\n")
        }
    }

    // MARK: config stream (sidecars, authenticated by their certificate)


    func handleStream(_ r: ControlRequest) -> ControlResponse {
        let id: String, store: ConfigStore
        switch streamPeer(r) {
        case .failure(let refusal): return refusal.response
        case .success(let p): (id, store) = p
        }
        switch (r.method, r.path) {
        case ("POST", ConfigStream.registerPath):
            let reg: ConfigStream.Registration
            do { reg = try ConfigStream.Registration(query: r.query) } catch { return ControlResponse(error.refusal ?? 400, "\(error)\n") }
            // A workload registers only in its own namespace (its certificate says which), and its
            // identity must have the exact shape meshd issues (it is rendered into config).
            let idParts = id.dropFirst("spiffe://".count).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard idParts.count == 5, idParts[0] == ca.trustDomain, idParts[1] == "ns", idParts[2] == reg.namespace, idParts[3] == "sa",
                  Names.isDNSLabel(idParts[4]) else {
                return ControlResponse(403, "\(id) may not register in namespace \(reg.namespace)\n")
            }
            do {
                try store.register(identity: id, service: reg.service, namespace: reg.namespace, labels: reg.labels.map { ($0.key, $0.value) },
                                   address: reg.address, serviceProtocol: reg.serviceProtocol, servicePort: reg.servicePort)
            } catch {
                Log.warn("registry", "registration of \(reg.service).\(reg.namespace) at \(reg.address) (\(id)) refused: \(error.description)")
                // The store could not take it (etcd away): try again, or another replica.
                if error.file == "(the store)" { return ControlResponse(503, "registration not stored: \(error.description)\n") }
                return ControlResponse(409, "registration refused: the config it would make is refused: \(error.description)\n")
            }
            return ControlResponse(200, "registered\n")
        case ("GET", ConfigStream.configPath):
            // Not parked here: the API loops park a config request (`configWait`); answered
            // now if the config differs, else "no change".
            switch configWait(r) {
            case .answer(let a): return a
            case .wait(let w): return configAnswer(w) ?? ControlResponse(304, "")
            }
        case ("POST", ConfigStream.ackPath), ("POST", ConfigStream.nackPath):
            guard let a = ConfigStream.Answer(query: r.query, nack: r.path == ConfigStream.nackPath, body: r.bodyText) else {
                return ControlResponse(400, "version required\n")
            }
            let ok = store.answered(identity: id, node: a.node, version: a.version, nonce: a.nonce, error: a.error)
            return ok ? ControlResponse(200, "ok\n") : ControlResponse(409, "not the config last sent to this sidecar (version and nonce)\n")
        default:
            return ControlResponse(405, "method not allowed\n")
        }
    }

    /// A refusal as an answer (a `Result` failure needs an `Error`).
    struct Refusal: Error { let response: ControlResponse }

    /// Who asks on the config stream: a workload certificate of this trust domain, still valid
    /// (a kept-alive connection can outlive the certificate it was opened with).
    func streamPeer(_ r: ControlRequest) -> Result<(String, ConfigStore), Refusal> {
        guard let store else { return .failure(Refusal(response: ControlResponse(404, "this meshd keeps no config\n"))) }
        guard let id = r.peerIdentity, X509Info.isSPIFFE(id, inTrustDomain: ca.trustDomain), r.peerNotAfter > MeshCrypto.now() else {
            return .failure(Refusal(response: ControlResponse(401, "a workload certificate from this mesh is required\n")))
        }
        return .success((id, store))
    }

    /// A config request that waits for the sidecar's config to differ from what it has.
    public struct ConfigWait: Sendable {
        public let identity: String
        public let node: String
        /// The digest of the config the sidecar has (empty: none yet).
        public let digest: String
        /// The text digest of the config text it holds, to send a delta against (empty: none).
        public var base = ""
        /// The version it has (0: none yet).
        public var version = 0
    }

    /// What a config request gets at once: an answer (a refusal), or a wait (`configAnswer`
    /// tells when it is over).
    public enum ConfigStart {
        case answer(ControlResponse)
        case wait(ConfigWait)
    }

    /// Checks a config request (`GET /v1/config`) and records the sidecar as seen.
    public func configWait(_ r: ControlRequest) -> ConfigStart {
        let id: String, store: ConfigStore
        switch streamPeer(r) {
        case .failure(let refusal): return .answer(refusal.response)
        case .success(let p): (id, store) = p
        }
        let q = ConfigStream.Request(query: r.query)
        // The node names this sidecar in meshd's state: an address, nothing else.
        guard q.node.isEmpty || SocketAddress(q.node) != nil else { return .answer(ControlResponse(400, "node: expected IP:PORT\n")) }
        if let why = store.refusal.withLock({ $0 }) { return .answer(ControlResponse(503, "this replica does not serve: \(why)\n")) }
        var gateway: [(String, String)]? = nil
        if let text = q.gatewayLabels {
            guard let labels = GatewayScope.labels(text) else { return .answer(ControlResponse(400, "gateway: expected key=value labels separated by commas\n")) }
            gateway = labels
        }
        store.seen(identity: id, node: q.node, admin: q.admin, digest: q.nacked ? "" : q.digest, nacked: q.nacked, gateway: gateway)
        var w = ConfigWait(identity: id, node: q.node, digest: q.digest, base: q.base)
        w.version = q.version
        return .wait(w)
    }

    /// The push for a waiting config request when this sidecar's config (its digest) differs
    /// from what it has; nil while it does not. Each push gets a nonce its ACK must carry.
    public func configAnswer(_ w: ConfigWait) -> ControlResponse? {
        guard let store else { return ControlResponse(404, "this meshd keeps no config\n") }
        // A replica that refuses the config in etcd sends its streams away (to another replica).
        if let why = store.refusal.withLock({ $0 }) { return ControlResponse(503, "this replica does not serve: \(why)\n") }
        let snap = store.proxyConfig(identity: w.identity, node: w.node)
        if snap.digest == w.digest { return nil }
        // On the shared store versions are etcd revisions, the same on every replica: a sidecar
        // that comes from a replica further ahead waits here until this one has caught up,
        // rather than being sent an older config.
        if replica != nil && snap.version < w.version && store.shouldWait(forVersion: w.version) { return nil }
        store.seen(identity: w.identity, node: w.node, request: false)
        let nonce = store.sent(identity: w.identity, node: w.node, version: snap.version, digest: snap.digest)
        // The whole text, or a delta against the text the sidecar holds where that is cheaper.
        return ControlResponse(200, store.scoped.deltas.body(snap, nonce: nonce, base: w.base), contentType: ConfigStream.Push.contentType)
    }

    // MARK: admin port

    private func authorized(_ r: ControlRequest) -> Bool {
        guard let a = r.headers["authorization"], a.hasPrefix("Bearer ") else { return false }
        let given = Array(String(a.dropFirst(7)).trimmingCharacters.utf8), want = Array(ca.adminToken.utf8)
        return given.count == want.count && CRYPTO_memcmp(given, want, want.count) == 0
    }

    func handleAdmin(_ r: ControlRequest) -> ControlResponse {
        switch (r.method, r.path) {
        case ("GET", "/ready"):
            if let why = store?.refusal.withLock({ $0 }) { return ControlResponse(503, "not serving: \(why)\n") }
            return ControlResponse(200, "ready\n")
        case ("GET", "/metrics"):
            return ControlResponse(200, metrics(), contentType: "text/plain; version=0.0.4")
        case (_, "/ui"), (_, _) where r.path.hasPrefix("/ui/"):
            return WebUI.handle(r, authorized: authorized(r), server: self)
        default:
            break
        }
        guard authorized(r) else { return ControlResponse(401, "admin token required (authorization: Bearer <STATE-DIR/admin-token>)\n") }
        switch (r.method, r.path) {
        case ("POST", "/v1/tokens"):
            guard let ns = r.query["namespace"], !ns.isEmpty, let sa = r.query["serviceAccount"], !sa.isEmpty else {
                return ControlResponse(400, "namespace and serviceAccount are required\n")
            }
            let dns = { (s: String) in s.utf8.count <= 63 && s.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 } }
            guard dns(ns), dns(sa) else { return ControlResponse(400, "namespace and service account must be DNS labels (lowercase letters, digits, '-')\n") }
            var ttl = 3600
            if let t = r.query["ttl"] {
                // Tokens are reusable until they expire (like Kubernetes service-account tokens):
                // keep them short. A week at most.
                guard let n = DurationParser.parseNanos(t), n >= 1_000_000_000, n <= 168 * 3_600_000_000_000 else {
                    return ControlResponse(400, "ttl: expected a duration from 1s to 168h such as 10m or 1h, got \"\(t)\"\n")
                }
                ttl = Int(n / 1_000_000_000)
            }
            Log.info("ca", "minted a join token for \(ca.identity(namespace: ns, serviceAccount: sa)), valid \(ttl)s")
            return ControlResponse(200, ca.mintToken(namespace: ns, serviceAccount: sa, ttl: ttl) + "\n")
        case ("GET", "/v1/ca"):
            return ControlResponse(200, ca.status())
        case ("GET", "/v1/bootstrap"):
            // What `meshctl run` needs to start a sidecar: the API port (and its address when
            // it is concrete, so a sidecar on another host dials it) and the trust anchor.
            return ControlResponse(200, "api-port: \(api?.port ?? 0)\n" + (apiAdvertised.map { "api-address: \($0)\n" } ?? "") + ca.trustBundlePEM)
        case ("POST", "/v1/config/apply"), ("POST", "/v1/config/delete"):
            guard let store else { return ControlResponse(404, "this meshd keeps no config\n") }
            let files: [(name: String, text: String)]
            if r.headers["content-type"] == ConfigUpload.contentType {
                do { files = try ConfigUpload.decode(r.body) } catch { return ControlResponse(400, "\(error)\n") }
            } else {
                files = [(r.query["file"] ?? "(request body)", r.bodyText)]
            }
            do {
                let result = try store.apply(files.map { ConfigStore.Input(file: $0.name, text: $0.text) }, delete: r.path.hasSuffix("delete"))
                return ControlResponse(200, ConfigAnswers.applied(result))
            } catch {
                return ControlResponse(400, error.description + "\n")
            }
        case (_, TLSSecrets.createPath), (_, TLSSecrets.deletePath):
            return handleSecrets(r)
        case ("GET", "/v1/routes"):
            guard let store else { return ControlResponse(404, "this meshd keeps no config\n") }
            switch r.query["o"] ?? "" {
            case "": return ControlResponse(200, ConfigAnswers.routesTable(store.documents()))
            case "yaml": return ControlResponse(200, ConfigAnswers.routesYAML(store.documents()))
            case let o: return ControlResponse(400, "o: expected yaml (or nothing for the table), got \"\(Printable.escaped(o))\"\n")
            }
        case ("GET", "/v1/services"):
            guard let store else { return ControlResponse(404, "this meshd keeps no config\n") }
            // The last column: the host's virtual IPs (DNS answers); hosts without a workload
            // (ServiceEntry hosts, routed names) get a line of their own.
            let vips = Dictionary(store.serviceAddresses().map { ($0.host, $0.addresses.joined(separator: ",")) }, uniquingKeysWith: { a, _ in a })
            let ws = store.workloads()
            let hosts = Set(ws.map { "\($0.service).\($0.namespace)" })
            return ControlResponse(200, (ws.map {
                "\($0.service).\($0.namespace)\t\($0.address)\t\($0.labels.map { "\($0.0)=\($0.1)" }.joined(separator: ","))\t\($0.connected ? "connected" : "away")\t\(vips["\($0.service).\($0.namespace)"] ?? "-")"
            } + vips.keys.sorted().filter { !hosts.contains($0) }.map { "\($0)\t-\t-\tno workload\t\(vips[$0]!)" }).joined(separator: "\n") + "\n")
        case ("GET", "/v1/proxies"):
            guard let store else { return ControlResponse(404, "this meshd keeps no config\n") }
            let v = store.version
            let me = replica?.statusLine ?? "replica: the only one (store file \(store.stateDir))"
            return ControlResponse(200, "config version \(v)\n\(me)\n" + store.proxies().map {
                // "ACK": the config in force for its scope (a change its scope does not see is never sent).
                let state = $0.nack.map { "NACK (\($0))" } ?? (store.isCurrent($0) ? "ACK" : $0.ackedVersion > 0 ? "ACK \($0.ackedVersion) (behind)" : "pending")
                return "\($0.identity)\t\($0.node)\t\($0.connected ? "connected" : "disconnected")\tsent \($0.sentVersion)\tacked \($0.ackedVersion)\t\(state)\tadmin \($0.admin.isEmpty ? "-" : $0.admin)" + (store.withheldSecrets(identity: $0.identity, node: $0.node).map { "\t\($0)" } ?? "")
            }.joined(separator: "\n") + "\n")
        case ("GET", "/v1/canaries"), ("POST", "/v1/canaries/abort"), ("POST", "/v1/canaries/resume"):
            return handleCanaries(r)
        case ("POST", "/v1/ca/rotate"):
            let step = r.query["step"] ?? ""
            do {
                let msg = try ca.rotate(step: step)
                if step == "issue" || step == "retire" { try refreshServerCertificate() }
                // The roots in force travel with the config: every sidecar has them at once.
                store?.setTrustBundle(ca.trustBundlePEM)
                Log.info("ca", "root rotation: \(msg)")
                return ControlResponse(200, msg + "\n")
            } catch {
                return ControlResponse(409, error.description + "\n")
            }
        default:
            return ControlResponse(404, "no such endpoint: \(r.method) \(r.path)\n")
        }
    }

    func metrics() -> String {
        var out = ""
        // DESIGN §12: whether this replica does the singleton work now (the only meshd on the file store always does).
        out += "# HELP mesh_leader Whether this meshd is the leader of its replicas (1) or not (0).\n# TYPE mesh_leader gauge\n"
        out += "mesh_leader \(replica.map { $0.isLeader ? 1 : 0 } ?? 1)\n"
        out += "# HELP meshd_certificates_issued_total Workload certificates signed.\n# TYPE meshd_certificates_issued_total counter\n"
        out += "meshd_certificates_issued_total \(ca.issuedCount)\n"
        out += "# HELP meshd_certificate_requests_refused_total Certificate requests refused (bad token, identity, CSR).\n# TYPE meshd_certificate_requests_refused_total counter\n"
        out += "meshd_certificate_requests_refused_total \(ca.refusedCount)\n"
        if let store {
            out += "# HELP meshd_config_version The config version in force (moves on every apply and registry change).\n# TYPE meshd_config_version gauge\n"
            out += "meshd_config_version \(store.version)\n"
            out += "# HELP meshd_proxy_config_version The config version each proxy acknowledged.\n# TYPE meshd_proxy_config_version gauge\n"
            for p in store.proxies() { out += "meshd_proxy_config_version{identity=\"\(p.identity)\",node=\"\(p.node)\"} \(p.ackedVersion)\n" }
            out += store.convergenceMetrics()
            out += store.scoped.deltas.metrics()
        }
        if let canaries { out += CanaryReport.metrics(canaries.report()) }
        if let api { out += api.metrics() }
        if let kubeReviewer { out += kubeReviewer.metrics() }
        out += "# HELP meshd_trust_anchor_expiry_timestamp_seconds When each trusted root expires (Unix time).\n# TYPE meshd_trust_anchor_expiry_timestamp_seconds gauge\n"
        for r in X509Info.load(pem: ca.trustBundlePEM) {
            out += "meshd_trust_anchor_expiry_timestamp_seconds{serial=\"\(r.serialHex)\"} \(r.notAfter)\n"
        }
        return out
    }
}
