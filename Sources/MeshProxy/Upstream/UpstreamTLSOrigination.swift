import MeshConfig
import MeshCore
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

/// A cluster's TLS origination (DestinationRule `tls.mode` SIMPLE or MUTUAL), compiled when the
/// snapshot is built: the client context (roots, client certificate, ALPN) and the server checks
/// (SNI, subjectAltNames). Upstream connections of the cluster handshake with it; their sessions
/// are resumed per endpoint like the mesh's mTLS ones.
public final class UpstreamTLSOrigination: Sendable {
    public let context: TLSContext
    public let check: OriginationPeerCheck
    /// SIMPLE or MUTUAL (for `/config_dump` and `/clusters`).
    public let mode: String
    /// The settings and the files' contents: two snapshots with the same key keep their pools.
    let key: String

    init(context: TLSContext, check: OriginationPeerCheck, mode: String, key: String) {
        self.context = context; self.check = check; self.mode = mode; self.key = key
    }
}

/// What each cluster of a bootstrap gets from its DestinationRule's `trafficPolicy.tls`
/// (or `portLevelSettings[].tls` for the cluster's port): the effective mode, and for SIMPLE
/// and MUTUAL the compiled origination. A file that is missing or holds no usable PEM refuses
/// the whole config with an error naming the DestinationRule field, file and line.
struct ClusterTLSPlan {
    /// Per bootstrap cluster: the DestinationRule's settings, nil when it gives none.
    var settings: [IstioTraffic.ClientTLS?] = []
    var originations: [UpstreamTLSOrigination?] = []

    init() {}

    init(_ b: Bootstrap) throws(ConfigError) {
        for (ci, c) in b.clusters.enumerated() {
            let dr = b.traffic.destinationRules.first { b.clusterIndex(forHost: $0.host, namespace: $0.namespace) == ci }
            var tls: IstioTraffic.ClientTLS? = nil
            if let dr {
                let levels = dr.trafficPolicy?.portLevel ?? []
                if !levels.isEmpty && c.port == nil {
                    // Istio: settings for a port the service does not have apply to nothing.
                    Log.warn("config", "DestinationRule \(dr.namespace)/\(dr.name): cluster \(c.name) has no port, so its portLevelSettings apply to nothing (the top-level tls does)")
                }
                tls = IstioTraffic.clientTLS(dr, port: c.port ?? 0)
            }
            settings.append(tls)
            // (Bootstrap.checkClientTLS refused origination to a non-HTTP service and ISTIO_MUTUAL
            // without a certificate when the config was read.)
            guard let t = tls, t.mode == .simple || t.mode == .mutual else {
                originations.append(nil)
                continue
            }
            let ca = t.caCertificates ?? IstioTraffic.systemTrustStore
            let ctx: TLSContext
            do {
                ctx = try OriginationContext.make(caFile: ca, certFile: t.clientCertificate, keyFile: t.privateKey,
                                                  alpn: c.protocolHTTP2 ? ["h2", "http/1.1"] : ["http/1.1"], insecure: t.insecureSkipVerify)
            } catch {
                let why = error.description
                let field = why.contains(ca) ? "caCertificates" : t.privateKey.map { why.contains($0) } == true ? "privateKey" : "clientCertificate"
                throw t0(t, t.caCertificates == nil && field == "caCertificates" ? "mode" : field, "\(error)")
            }
            // Istio's auto SNI: the destination's host (the DestinationRule's, when it names one
            // host, else the cluster's name).
            let drHost = dr?.host ?? c.name
            let sni = t.sni ?? (drHost.contains("*") || !drHost.contains(".") ? c.name : drHost)
            let files = [ca, t.clientCertificate, t.privateKey].compactMap { $0 }.map(Self.fingerprint)
            let key = "\(t.mode.rawValue)|\(sni)|\(t.subjectAltNames)|\(t.insecureSkipVerify)|\(c.protocolHTTP2)|\(files)"
            originations.append(UpstreamTLSOrigination(context: ctx, check: OriginationPeerCheck(sni: sni, subjectAltNames: t.subjectAltNames,
                                                                                                  verify: !t.insecureSkipVerify),
                                                       mode: t.mode.rawValue, key: key))
        }
    }

    private func t0(_ t: IstioTraffic.ClientTLS, _ field: String, _ message: String) -> ConfigError { t.error(field, message) }

    /// Whether cluster `ci` speaks the mesh's mTLS: ISTIO_MUTUAL from the DestinationRule, or
    /// the cluster's own setting when the rule says nothing; DISABLE, SIMPLE, MUTUAL turn it off.
    func mutualTLS(_ ci: Int, default d: Bool) -> Bool {
        guard ci < settings.count, let t = settings[ci] else { return d }
        return t.mode == .istioMutual
    }

    /// The identities an ISTIO_MUTUAL peer must present: the rule's subjectAltNames if any.
    func expectedPeers(_ ci: Int, default d: [String]) -> [String] {
        guard ci < settings.count, let t = settings[ci], t.mode == .istioMutual, !t.subjectAltNames.isEmpty else { return d }
        return t.subjectAltNames
    }

    /// FNV-1a of a file's bytes (0 when unreadable): a changed file is a changed key.
    static func fingerprint(_ path: String) -> UInt64 {
        guard let f = fopen(path, "rb") else { return 0 }
        defer { fclose(f) }
        var h: UInt64 = 0xcbf29ce484222325
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            for i in 0..<n { h = (h ^ UInt64(buf[i])) &* 0x100000001b3 }
        }
        return h
    }

    func origination(_ ci: Int) -> UpstreamTLSOrigination? { ci < originations.count ? originations[ci] : nil }
}
