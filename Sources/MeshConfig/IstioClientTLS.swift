import MeshCore
import Synchronization

/// DestinationRule `trafficPolicy.tls` (Istio's ClientTLSSettings, DESIGN §15): how a sidecar
/// talks TLS to a destination. DISABLE (plaintext, even to a mesh service), SIMPLE (TLS
/// origination: the app calls `http://api.example.com`, the sidecar speaks TLS to the endpoint),
/// MUTUAL (the same with a client certificate), ISTIO_MUTUAL (the mesh's own mTLS). The files
/// (`caCertificates`, `clientCertificate`, `privateKey`) are paths on the sidecar's host, as in
/// Istio: the parser checks their shape only; the sidecar reads them when it builds a snapshot
/// (never on the data path) and refuses the config, naming this field, when one is missing or bad.
extension IstioTraffic {
    public struct ClientTLS: Sendable, Equatable {
        public enum Mode: String, Sendable { case disable = "DISABLE", simple = "SIMPLE", mutual = "MUTUAL", istioMutual = "ISTIO_MUTUAL" }
        public var mode: Mode
        /// `sni`: the server name sent (nil: the destination host, Istio's auto SNI).
        public var sni: String?
        /// `caCertificates`: PEM roots the server certificate must chain to (nil: the system
        /// trust store, Istio's VERIFY_CERTIFICATE_AT_CLIENT default).
        public var caCertificates: String?
        public var clientCertificate: String?
        public var privateKey: String?
        /// `subjectAltNames`: one of them must be a DNS or URI SAN of the server certificate
        /// (empty: the certificate must be valid for the SNI, Envoy's auto SAN validation).
        public var subjectAltNames: [String]
        /// `insecureSkipVerify: true` (only where the process allows it, see `Allowance`).
        public var insecureSkipVerify: Bool
        /// Where each file field was written, for errors raised when the sidecar reads the files
        /// (file, document, field path and line).
        public var origins: [String: ConfigError]

        public static func == (a: ClientTLS, b: ClientTLS) -> Bool {
            a.mode == b.mode && a.sni == b.sni && a.caCertificates == b.caCertificates && a.clientCertificate == b.clientCertificate
                && a.privateKey == b.privateKey && a.subjectAltNames == b.subjectAltNames && a.insecureSkipVerify == b.insecureSkipVerify
        }

        /// An error naming the field `key` (e.g. "caCertificates") where it was written.
        public func error(_ key: String, _ message: String) -> ConfigError {
            var e = origins[key] ?? origins["mode"] ?? ConfigError(message: "")
            e.message = message
            return e
        }
    }

    /// One `trafficPolicy.portLevelSettings[]` entry: the policy for one service port. Only
    /// `tls` is honoured here; the other per-port fields are refused by name.
    public struct PortTrafficPolicy: Sendable {
        public var port: Int
        public var tls: ClientTLS?
    }

    /// The system trust store (Debian's bundle): what SIMPLE and MUTUAL verify the server
    /// against when no `caCertificates` is given.
    public static let systemTrustStore = "/etc/ssl/certs/ca-certificates.crt"

    /// Whether `insecureSkipVerify: true` is accepted in this process: meshd's
    /// `--allow-insecure-skip-verify`, a static sidecar's flag of the same name; a mesh-mode
    /// sidecar accepts what meshd accepted. Set once at start-up, before any config is parsed;
    /// the DestinationRule parser reads it, so meshd and the sidecar refuse with the same code.
    public enum Allowance {
        static let insecure = Mutex<Bool>(false)
        public static func allowInsecureSkipVerify(_ allowed: Bool) { insecure.withLock { $0 = allowed } }
        public static var insecureSkipVerifyAllowed: Bool { insecure.withLock { $0 } }
    }

    /// Reads a `tls` mapping (top level or port level).
    static func clientTLS(_ t: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> ClientTLS {
        func origin(_ key: String) -> ConfigError {
            var e = ctx
            e.path = t.sub(key)
            e.line = t.map.entries.first { $0.key == key }?.keyLine ?? t.map.line
            return e
        }
        let modeText = try t.string("mode") ?? "DISABLE"
        guard let mode = ClientTLS.Mode(rawValue: modeText) else {
            throw ConfigReader.error(ctx, t.sub("mode"), t.map.line, "expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL, got \"\(modeText)\"")
        }
        var tls = ClientTLS(mode: mode, sni: nil, caCertificates: nil, clientCertificate: nil, privateKey: nil,
                            subjectAltNames: [], insecureSkipVerify: false, origins: [:])
        for k in ["mode", "sni", "caCertificates", "clientCertificate", "privateKey", "subjectAltNames", "insecureSkipVerify"] {
            tls.origins[k] = origin(k)
        }
        if t.map.entries.contains(where: { $0.key == "credentialName" }) {
            throw ConfigReader.error(ctx, t.sub("credentialName"), origin("credentialName").line,
                                     "not supported yet (only on gateways, not yet): give caCertificates, clientCertificate and privateKey as files on the sidecar's host")
        }
        try t.refuse("caCrl")
        tls.sni = try t.string("sni")
        if let s = tls.sni, !Names.isHost(s, wildcard: false) {
            throw ConfigReader.error(ctx, t.sub("sni"), origin("sni").line, "expected a lowercase DNS name such as api.example.com, got \"\(s)\"")
        }
        for key in ["caCertificates", "clientCertificate", "privateKey"] {
            guard let p = try t.string(key) else { continue }
            // A path on the sidecar's host: absolute, so meshd and every sidecar mean one file.
            guard p.hasPrefix("/"), !p.utf8.contains(0), !p.utf8.contains(where: { $0 < 0x20 }) else {
                throw ConfigReader.error(ctx, t.sub(key), origin(key).line, "expected an absolute path to a PEM file on the sidecar's host, got \"\(p)\"")
            }
            switch key {
            case "caCertificates": tls.caCertificates = p
            case "clientCertificate": tls.clientCertificate = p
            default: tls.privateKey = p
            }
        }
        tls.subjectAltNames = try t.stringList("subjectAltNames") ?? []
        for (i, s) in tls.subjectAltNames.enumerated() where s.isEmpty || s.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7f }) {
            throw ConfigReader.error(ctx, "\(t.sub("subjectAltNames"))[\(i)]", origin("subjectAltNames").line, "expected a DNS name or a URI, got \"\(s)\"")
        }
        tls.insecureSkipVerify = try t.bool("insecureSkipVerify") ?? false
        switch mode {
        case .disable, .istioMutual:
            // DISABLE sends plaintext; ISTIO_MUTUAL uses the mesh's own certificates and roots.
            for key in ["caCertificates", "clientCertificate", "privateKey"] where t.map.entries.contains(where: { $0.key == key }) {
                throw ConfigReader.error(ctx, t.sub(key), origin(key).line, "does not apply with mode \(mode.rawValue) (\(mode == .disable ? "no TLS" : "the mesh's own certificates are used"))")
            }
            if tls.insecureSkipVerify {
                throw ConfigReader.error(ctx, t.sub("insecureSkipVerify"), origin("insecureSkipVerify").line, "does not apply with mode \(mode.rawValue)")
            }
            if mode == .disable && (tls.sni != nil || !tls.subjectAltNames.isEmpty) {
                let k = tls.sni != nil ? "sni" : "subjectAltNames"
                throw ConfigReader.error(ctx, t.sub(k), origin(k).line, "does not apply with mode DISABLE (no TLS)")
            }
            if mode == .istioMutual && tls.sni != nil {
                throw ConfigReader.error(ctx, t.sub("sni"), origin("sni").line, "with ISTIO_MUTUAL: \(notSupported)")
            }
        case .simple:
            for key in ["clientCertificate", "privateKey"] where t.map.entries.contains(where: { $0.key == key }) {
                throw ConfigReader.error(ctx, t.sub(key), origin(key).line, "a client certificate needs mode MUTUAL, not SIMPLE")
            }
        case .mutual:
            for key in ["clientCertificate", "privateKey"] where t.map.entries.first(where: { $0.key == key }) == nil {
                throw ConfigReader.error(ctx, t.sub(key), t.map.line, "required with mode MUTUAL (a PEM file on the sidecar's host)")
            }
        }
        if tls.insecureSkipVerify {
            guard Allowance.insecureSkipVerifyAllowed else {
                throw ConfigReader.error(ctx, t.sub("insecureSkipVerify"), origin("insecureSkipVerify").line,
                                         "refused: it turns off server verification (allow it with meshd's, or a static sidecar's, --allow-insecure-skip-verify)")
            }
            if tls.caCertificates != nil || !tls.subjectAltNames.isEmpty {
                let k = tls.caCertificates != nil ? "caCertificates" : "subjectAltNames"
                throw ConfigReader.error(ctx, t.sub(k), origin(k).line, "contradicts insecureSkipVerify: true (nothing would be verified)")
            }
        }
        try t.finish()
        return tls
    }

    /// `trafficPolicy.portLevelSettings`: per-port `tls` only.
    static func portLevelSettings(_ t: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> [PortTrafficPolicy] {
        var out: [PortTrafficPolicy] = []
        for var s in try t.objectList("portLevelSettings") ?? [] {
            guard var p = try s.object("port") else { throw ConfigReader.error(ctx, s.sub("port"), s.map.line, "required field is missing") }
            guard let n = try p.int("number", min: 1, max: 65535) else {
                throw ConfigReader.error(ctx, p.sub("number"), p.map.line, "required field is missing")
            }
            try p.finish()
            if out.contains(where: { $0.port == n }) { throw ConfigReader.error(ctx, p.sub("number"), p.map.line, "port \(n) is given twice") }
            for f in ["loadBalancer", "connectionPool", "outlierDetection"] { try s.refuse(f) }
            var policy = PortTrafficPolicy(port: n, tls: nil)
            if var tr = try s.object("tls") { policy.tls = try clientTLS(&tr, ctx: ctx) }
            try s.finish()
            out.append(policy)
        }
        return out
    }

    /// The TLS settings of a DestinationRule for service port `port` (0: not known): the
    /// port-level ones for that port, else the top-level ones (Istio: port level wins).
    public static func clientTLS(_ dr: DestinationRule, port: Int) -> ClientTLS? {
        guard let tp = dr.trafficPolicy else { return nil }
        if port > 0, let p = tp.portLevel.first(where: { $0.port == port }), let t = p.tls { return t }
        return tp.tls
    }
}

extension Bootstrap {
    /// What a DestinationRule's `tls` needs of the cluster it applies to, checked with the rest
    /// of the traffic documents (so meshd refuses at apply what a sidecar would refuse): TLS
    /// origination needs an HTTP service, ISTIO_MUTUAL this workload's certificate. The files
    /// are the sidecar's to read, when it builds a snapshot.
    func checkClientTLS() throws(ConfigError) {
        for (ci, c) in clusters.enumerated() {
            guard let dr = traffic.destinationRules.first(where: { clusterIndex(forHost: $0.host, namespace: $0.namespace) == ci }),
                  let t = IstioTraffic.clientTLS(dr, port: c.port ?? 0) else { continue }
            if (t.mode == .simple || t.mode == .mutual) && ![.http, .http2, .grpc].contains(c.serviceProtocol) {
                throw t.error("mode", "TLS origination to \(c.name) (a \(c.serviceProtocol.rawValue) service) is not supported yet: it needs an HTTP port (protocol: HTTP)")
            }
            if t.mode == .istioMutual && tls == nil {
                throw t.error("mode", "ISTIO_MUTUAL needs this workload's certificate (spec.tls)")
            }
        }
    }
}
