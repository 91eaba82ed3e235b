import MeshCore

/// Istio's `networking.istio.io/v1` **Gateway** (DESIGN §15): the listeners of the gateway proxies
/// (`sidecar --gateway`) whose labels its `selector` matches. Each server opens a port
/// (`port.number`) speaking `port.protocol`, answers for `hosts` (`namespace/dnsName`), and may
/// terminate or pass through TLS (`tls.mode`) or redirect plain HTTP to HTTPS
/// (`tls.httpsRedirect`). VirtualServices bind to it through `gateways:`
/// (IstioGatewayBinding.swift). Fields of Istio's API not honoured yet are refused by name.
public struct IstioGateway: Sendable {
    /// `servers[].port.protocol`, Istio's spelling.
    public enum ServerProtocol: String, Sendable, CaseIterable {
        case http = "HTTP", https = "HTTPS", http2 = "HTTP2", grpc = "GRPC", tls = "TLS", tcp = "TCP"

        /// Requests are routed by `http` routes (HTTP/1.1 or h2c in, after TLS when terminated).
        public var isHTTP: Bool { self == .http || self == .http2 || self == .grpc || self == .https }
    }

    /// `servers[].tls.mode`.
    public enum TLSMode: String, Sendable, CaseIterable {
        case simple = "SIMPLE", mutual = "MUTUAL", passthrough = "PASSTHROUGH", istioMutual = "ISTIO_MUTUAL"
        /// Istio's modes this mesh does not have: refused by name.
        public static let refused = ["AUTO_PASSTHROUGH", "OPTIONAL_MUTUAL"]
    }

    /// The modes a gateway serves. SIMPLE and MUTUAL take their server certificate (and MUTUAL
    /// its client CA) from the `credentialName` secret meshd delivers (GatewaySecrets.swift).
    public static let supportedTLSModes: Set<TLSMode> = [.passthrough, .istioMutual, .simple, .mutual]

    /// One `hosts` entry of a server: `namespace/dnsName` (no namespace: `*/dnsName`).
    public struct Host: Sendable, Equatable {
        public enum Namespace: Sendable, Equatable {
            /// `*` (or no namespace): VirtualServices of any namespace bind.
            case any
            /// `.`: only VirtualServices of the Gateway's own namespace.
            case own
            case named(String)
        }
        public var namespace: Namespace
        /// `*`, `*.suffix` or a host name.
        public var dnsName: String

        /// Whether a VirtualService host `vsHost` (a name or `*.suffix`) of namespace `vsNamespace`
        /// may bind to this server host of a Gateway in `gatewayNamespace` (Istio: the names
        /// intersect, and the namespace part admits the VirtualService's).
        public func admits(vsHost: String, vsNamespace: String, gatewayNamespace: String) -> Bool {
            switch namespace {
            case .any: break
            case .own: if vsNamespace != gatewayNamespace { return false }
            case .named(let n): if vsNamespace != n { return false }
            }
            return IstioGateway.hostsIntersect(dnsName, vsHost)
        }

        /// Whether a TLS SNI or HTTP host name `name` falls under this server host.
        public func covers(_ name: String) -> Bool { IstioGateway.hostsIntersect(dnsName, name) }

        /// `namespace/dnsName` as Istio's validation takes it for a Gateway server, or nil.
        public static func parse(_ text: String) -> Host? {
            let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            let nsText: Substring?, dns: String
            if parts.count == 2 { nsText = parts[0]; dns = String(parts[1]) } else { nsText = nil; dns = text }
            guard !dns.isEmpty, !dns.contains("/"), Names.isHost(dns, wildcard: true) || dns == "*", !dns.dropFirst().contains("*") else { return nil }
            let ns: Namespace
            switch nsText {
            case nil, "*": ns = .any
            case ".": ns = .own
            case let n?:
                guard Names.isDNSLabel(String(n)) else { return nil }
                ns = .named(String(n))
            }
            return Host(namespace: ns, dnsName: dns)
        }
    }

    /// `servers[].tls`.
    public struct ServerTLS: Sendable {
        /// `httpsRedirect`: plain HTTP requests get 301 to the https URL.
        public var httpsRedirect = false
        /// nil: no TLS on the port (only with `httpsRedirect`).
        public var mode: TLSMode?
        /// `credentialName`: the secret in meshd with the server certificate (SIMPLE, MUTUAL).
        public var credentialName: String?
    }

    /// One `servers[]` entry.
    public struct Server: Sendable {
        public var port: Int
        public var portName: String
        public var proto: ServerProtocol
        public var hosts: [Host]
        public var tls: ServerTLS?
        /// `servers[].name` (optional).
        public var name: String?
    }

    public var name: String
    public var namespace: String
    /// `selector`: labels a gateway proxy must carry; empty: every gateway proxy (Istio).
    public var selector: [(String, String)]
    public var servers: [Server]

    /// Whether this Gateway applies to a gateway proxy with `labels`.
    public func selects(labels: [(String, String)]) -> Bool {
        selector.allSatisfy { s in labels.contains { $0.0 == s.0 && $0.1 == s.1 } }
    }

    /// Whether two host patterns (`*`, `*.suffix`, or a name) can name the same host.
    public static func hostsIntersect(_ a: String, _ b: String) -> Bool {
        if a == "*" || b == "*" { return true }
        let aw = a.hasPrefix("*."), bw = b.hasPrefix("*.")
        if !aw && !bw { return a == b }
        if aw && bw {
            let sa = a.dropFirst(1), sb = b.dropFirst(1)   // ".suffix"
            return sa.hasSuffix(sb) || sb.hasSuffix(sa)
        }
        let (w, n) = aw ? (a, b) : (b, a)
        let suffix = w.dropFirst(1)
        return n.hasSuffix(suffix) && n.count > suffix.count
    }

    static func parse(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> IstioGateway {
        let selector = try spec.stringMap("selector") ?? []
        for (k, v) in selector where !Names.isLabelKey(k) || !Names.isLabelValue(v) {
            throw ConfigReader.error(ctx, spec.sub("selector.\(k)"), spec.map.line, "expected a label key=value (letters, digits, '-', '_', '.'), got \"\(k)\": \"\(v)\"")
        }
        guard let list = try spec.objectList("servers"), !list.isEmpty else {
            throw ConfigReader.error(ctx, "spec.servers", spec.map.line, "a Gateway needs at least one server")
        }
        var servers: [Server] = []
        for var s in list {
            guard var p = try s.object("port") else { throw ConfigReader.error(ctx, s.sub("port"), s.map.line, "required field is missing") }
            guard let number = try p.int("number", min: 1, max: 65535) else {
                throw ConfigReader.error(ctx, p.sub("number"), p.map.line, "required field is missing")
            }
            let pname = try p.string("name") ?? "\(number)"
            let ptext = try p.string("protocol", required: true)!
            guard let proto = ServerProtocol(rawValue: ptext.uppercased()) else {
                if ["GRPC-WEB", "MONGO", "MYSQL", "REDIS", "UDP"].contains(ptext.uppercased()) {
                    throw ConfigReader.error(ctx, p.sub("protocol"), p.map.line, "protocol \(ptext): \(IstioTraffic.notSupported)")
                }
                throw ConfigReader.error(ctx, p.sub("protocol"), p.map.line,
                                         "expected one of \(ServerProtocol.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(ptext)\"")
            }
            try p.refuse("targetPort")
            try p.finish()
            guard let hostTexts = try s.stringList("hosts"), !hostTexts.isEmpty else {
                throw ConfigReader.error(ctx, s.sub("hosts"), s.map.line, "a server needs at least one host (\"*\" for every host)")
            }
            var hosts: [Host] = []
            for (i, h) in hostTexts.enumerated() {
                guard let host = Host.parse(h) else {
                    throw ConfigReader.error(ctx, "\(s.sub("hosts"))[\(i)]", s.map.line,
                                             "expected [namespace/]dnsName: namespace *, . or a namespace name; dnsName *, *.suffix or a lowercase host name, got \"\(h)\"")
                }
                hosts.append(host)
            }
            var tls: ServerTLS? = nil
            if var t = try s.object("tls") {
                var st = ServerTLS()
                st.httpsRedirect = try t.bool("httpsRedirect") ?? false
                if let m = try t.string("mode") {
                    if TLSMode.refused.contains(m) {
                        throw ConfigReader.error(ctx, t.sub("mode"), t.map.line, "mode \(m): \(IstioTraffic.notSupported)")
                    }
                    guard let mode = TLSMode(rawValue: m) else {
                        throw ConfigReader.error(ctx, t.sub("mode"), t.map.line, "expected one of \(TLSMode.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(m)\"")
                    }
                    guard IstioGateway.supportedTLSModes.contains(mode) else {
                        throw ConfigReader.error(ctx, t.sub("mode"), t.map.line, "mode \(m) (server certificates from credentialName): \(IstioTraffic.notSupported)")
                    }
                    st.mode = mode
                }
                st.credentialName = try t.string("credentialName")
                if let c = st.credentialName, !Names.isObjectName(c) {
                    throw ConfigReader.error(ctx, t.sub("credentialName"), t.map.line, "expected a secret name (lowercase letters, digits, '-', '.'), got \"\(c)\"")
                }
                for f in ["serverCertificate", "privateKey", "caCertificates", "caCrl", "credentialNames", "tlsCertificates", "subjectAltNames",
                          "verifyCertificateSpki", "verifyCertificateHash", "minProtocolVersion", "maxProtocolVersion", "cipherSuites"] {
                    try t.refuse(f)
                }
                try t.finish()
                tls = st
            }
            try validateServer(proto: proto, tls: tls, s: s, ctx: ctx)
            let sname = try s.string("name")
            try s.refuse("bind")
            try s.refuse("defaultEndpoint")
            try s.finish()
            if let other = servers.first(where: { $0.port == number }),
               other.proto != proto || other.tls?.mode != tls?.mode || other.tls?.httpsRedirect != tls?.httpsRedirect
                || other.tls?.credentialName != tls?.credentialName {
                throw ConfigReader.error(ctx, s.sub("port.number"), s.map.line,
                                         "port \(number) is already served with other settings (protocol \(other.proto.rawValue), tls mode \(other.tls?.mode?.rawValue ?? "none")); servers sharing a port must agree on protocol and tls")
            }
            servers.append(Server(port: number, portName: pname, proto: proto, hosts: hosts, tls: tls, name: sname))
        }
        try spec.finish()
        return IstioGateway(name: name, namespace: namespace, selector: selector, servers: servers)
    }

    /// Istio's rules for a server's protocol and TLS: HTTPS and TLS need `tls` with a mode;
    /// plain HTTP takes `tls` only for `httpsRedirect`; TCP takes none; PASSTHROUGH is for TLS
    /// (or HTTPS) ports; a SIMPLE or MUTUAL server names its `credentialName`.
    private static func validateServer(proto: ServerProtocol, tls: ServerTLS?, s: ConfigReader, ctx: ConfigError) throws(ConfigError) {
        let path = s.sub("tls")
        switch proto {
        case .https, .tls:
            guard let m = tls?.mode else {
                throw ConfigReader.error(ctx, "\(path).mode", s.map.line, "a server of protocol \(proto.rawValue) needs tls.mode")
            }
            if tls?.httpsRedirect == true {
                throw ConfigReader.error(ctx, "\(path).httpsRedirect", s.map.line, "httpsRedirect is for HTTP servers (it answers plain HTTP with a redirect to https)")
            }
            if proto == .tls && m != .passthrough {
                // TLS terminated here and then carried to tcp routes.
                throw ConfigReader.error(ctx, "\(path).mode", s.map.line, "protocol TLS with mode \(m.rawValue): \(IstioTraffic.notSupported) (PASSTHROUGH is)")
            }
            if (m == .simple || m == .mutual) && tls?.credentialName == nil {
                throw ConfigReader.error(ctx, "\(path).credentialName", s.map.line, "tls mode \(m.rawValue) needs credentialName (the secret with the server certificate)")
            }
        case .http, .http2, .grpc:
            if let m = tls?.mode {
                throw ConfigReader.error(ctx, "\(path).mode", s.map.line, "a server of protocol \(proto.rawValue) is plain text: tls.mode \(m.rawValue) needs protocol HTTPS or TLS")
            }
            if tls?.credentialName != nil {
                throw ConfigReader.error(ctx, "\(path).credentialName", s.map.line, "a server of protocol \(proto.rawValue) is plain text: credentialName needs protocol HTTPS")
            }
            if tls?.httpsRedirect == true && proto != .http {
                throw ConfigReader.error(ctx, "\(path).httpsRedirect", s.map.line, "httpsRedirect is for HTTP servers")
            }
        case .tcp:
            if tls != nil { throw ConfigReader.error(ctx, path, s.map.line, "a server of protocol TCP takes no tls (use protocol TLS)") }
        }
        if tls?.credentialName != nil, let m = tls?.mode, m != .simple && m != .mutual {
            throw ConfigReader.error(ctx, "\(path).credentialName", s.map.line, "credentialName is for SIMPLE and MUTUAL servers (mode \(m.rawValue) takes no server certificate of its own)")
        }
        if tls?.mode == .passthrough && proto != .tls && proto != .https {
            throw ConfigReader.error(ctx, "\(path).mode", s.map.line, "PASSTHROUGH needs protocol TLS")
        }
    }
}
