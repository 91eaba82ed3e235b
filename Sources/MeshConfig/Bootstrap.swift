import MeshCore

/// The static-mode bootstrap (`sidecar --config FILE.yaml`): who this sidecar is, its listeners,
/// its TLS files, its clusters and its host routes. Parsed and validated as a whole from an
/// Istio-shaped document (`apiVersion: sidecar.mesh/v1alpha1`, `kind: Bootstrap`); the proxy
/// compiles it into an immutable snapshot and never sees YAML.
public struct Bootstrap: Sendable {
    public static let apiVersion = "sidecar.mesh/v1alpha1"

    public struct Workload: Sendable {
        /// The workload name in metrics (Istio's `*_workload`): `spec.workload.name`, default
        /// `<service>-<version label>` or the service.
        public var name: String
        public var service: String
        public var namespace: String
        public var serviceAccount: String
        /// Always includes `app=<service>` (Istio's convention).
        public var labels: [(String, String)]
    }

    public struct TLSFiles: Sendable {
        public var certChain: String
        public var privateKey: String
        public var trustBundle: String
        public var trustDomain: String
        /// Lowest TLS version the inbound listener accepts (Istio's meshMTLS.minProtocolVersion):
        /// TLS 1.2 by default, restricted to ECDHE + AEAD suites; sidecar clients always use 1.3.
        public var minTLS13: Bool
        /// Mesh mode: the credentials meshd issued, held in memory (the key never touches a
        /// disk); when set they replace the files above, which then only name the source.
        public var certChainPEM: String? = nil
        public var privateKeyPEM: String? = nil
        public var trustBundlePEM: String? = nil

        public init(certChain: String, privateKey: String, trustBundle: String, trustDomain: String, minTLS13: Bool) {
            self.certChain = certChain; self.privateKey = privateKey; self.trustBundle = trustBundle
            self.trustDomain = trustDomain; self.minTLS13 = minTLS13
        }
    }

    public struct Listener: Sendable {
        public var address: SocketAddress
        public var headerTimeout: UInt64
        public var idleTimeout: UInt64
        /// How long a request may go without progress (no body bytes either way, no response
        /// head) before it is ended: Envoy's stream_idle_timeout, 5 minutes unless set.
        public var streamIdleTimeout: UInt64 = Defaults.streamIdleTimeout
        /// At most this many connections open on the listener (0: no limit); past it, new ones
        /// are closed at once (Envoy's listener `max_connections`), so a connection flood cannot
        /// take the proxy's memory. Split evenly over the workers.
        public var maxConnections: Int = 0
        /// Inbound only: where the local app listens.
        public var appAddress: SocketAddress?
        /// Inbound only: the app speaks HTTP/2 cleartext (`appProtocol: HTTP2` or `GRPC`).
        public var appHTTP2: Bool = false
        /// Inbound only: the app speaks opaque TCP (`appProtocol: TCP`): every accepted
        /// connection is carried to it as bytes (docs/tcp.md).
        public var appTCP: Bool = false
        /// Inbound only: the port callers use for this service (`servicePort`, default the app
        /// port), which AuthorizationPolicy `to.operation.ports` matches.
        public var servicePort: Int? = nil
        /// Outbound only: connections arrive by transparent capture (`capture: true`, `sidecar
        /// --capture`): each one's original destination (`SO_ORIGINAL_DST`) picks a mesh service
        /// by its VIP and port, or the outbound traffic policy (docs/capture.md).
        public var capture: Bool = false
        /// Inbound only: the source address of connections to the app (`appSourceAddress`;
        /// 127.0.0.6 under capture, which the capture rules never capture again).
        public var appSource: SocketAddress? = nil
    }

    /// Where a captured connection to a destination outside the mesh goes (Istio's
    /// `outboundTrafficPolicy.mode`): passed through to its original destination (ALLOW_ANY, the
    /// default) or refused and counted as `BlackHoleCluster` (REGISTRY_ONLY).
    public enum OutboundTrafficPolicy: String, Sendable { case allowAny = "ALLOW_ANY", registryOnly = "REGISTRY_ONLY" }

    /// What a service speaks to its callers, as opposed to the hop between sidecars (the
    /// cluster's `protocol: HTTP2|HTTP1`): a TCP service is carried as opaque bytes.
    public enum ServiceProtocol: String, Sendable {
        case http = "HTTP", http2 = "HTTP2", grpc = "GRPC", tcp = "TCP"
        /// Not declared (a ServiceEntry port without `protocol` whose name says none): HTTP
        /// routes and CONNECT both reach it, and a captured connection's first bytes tell
        /// HTTP/1.1 or h2c from anything else (Istio's protocol detection).
        case auto = "AUTO"
    }

    public enum ClusterTLS: String, Sendable { case istioMutual = "ISTIO_MUTUAL", disable = "DISABLE" }

    public struct Cluster: Sendable {
        public var name: String
        public var tls: ClusterTLS
        public var subjectAltNames: [String]
        public var endpoints: [SocketAddress]
        /// Each endpoint's labels (DestinationRule subsets select endpoints by them).
        public var endpointLabels: [[(String, String)]]
        public var connectTimeout: UInt64
        public var idleTimeout: UInt64
        public var maxConnections: Int
        /// `protocol: HTTP2` (default for ISTIO_MUTUAL: the sidecar-to-sidecar hop multiplexes
        /// requests on few connections; with DISABLE it is h2c with prior knowledge) or `HTTP1`.
        public var protocolHTTP2: Bool
        /// `serviceProtocol`: what the service speaks (HTTP by default; TCP: opaque bytes).
        public var serviceProtocol: ServiceProtocol = .http
        /// `port`: the service port callers use (VirtualService `tcp[].match[].port`), if known.
        public var port: Int? = nil
        /// `addresses`: the service's virtual IPs (IPv4/IPv6, as meshd allocated them or a
        /// ServiceEntry gave them), what the sidecar's DNS answers for its names.
        public var addresses: [String] = []
        /// `resolution` and `dnsEndpoints` (BootstrapDNS.swift): names the sidecar resolves.
        public var resolution: Resolution = .static
        public var dnsEndpoints: [DNSEndpoint] = []
    }

    public struct Route: Sendable {
        /// Host names as written (short name, name.namespace or FQDN).
        public var hosts: [String]
        public var cluster: String
        /// Whole-request timeout; 0 = none (Istio's default).
        public var timeout: UInt64
        /// The `route` metric label: `<bootstrap name>.<name>`, or the index when unnamed.
        public var name: String
    }

    /// Access log settings: off unless `spec.accessLog.path` is set.
    public struct AccessLog: Sendable {
        /// A file path, or `/dev/stdout`.
        public var path: String
        /// Fraction of requests logged, 0 < sampling <= 1 (errors are always logged).
        public var sampling: Double
        /// Keep the query string in the logged path (off by default: it may carry secrets).
        public var includeQuery: Bool
        /// Mesh mode: lines only where a Telemetry `accessLogging` enables them (the writer
        /// runs from the start, so pushed config switches logs on and off without a restart).
        public var telemetryOnly = false
    }

    public var name: String
    public var workload: Workload
    public var concurrency: Int?
    public var admin: SocketAddress
    public var tls: TLSFiles?
    public var outbound: Listener?
    public var inbound: Listener?
    public var clusters: [Cluster]
    public var routes: [Route]
    public var drainTimeout: UInt64
    /// Request metrics on (default) or off (to measure their cost).
    public var statsEnabled: Bool
    public var accessLog: AccessLog?
    /// VirtualService and DestinationRule documents of the same file (Istio's traffic API).
    public var traffic = IstioTraffic.Config()
    /// `outboundTrafficPolicy.mode` (static file or meshd's push): captured connections to
    /// destinations outside the mesh.
    public var outboundTrafficPolicy = OutboundTrafficPolicy.allowAny
    /// A gateway proxy (`sidecar --gateway`): its listeners come from the Gateways that select
    /// it, and it applies the VirtualServices bound to them (BootstrapGateway.swift).
    public var gatewayMode = false
    /// Gateway mode: the tcp and tls routes of the VirtualServices bound to its Gateways.
    public var gatewayRoutes: [IstioTraffic.VirtualService] = []
    /// Gateway mode: the address its servers' ports are opened on (`--listen-address`).
    public var gatewayListenHost = "127.0.0.1"
    /// Span export (the sidecar's `--otlp-endpoint` and `--trace-*` flags; Tracing/).
    public var traceExport = TraceExportOptions()
    /// The collector meshd pushes (its `--otlp-endpoint`), used when the sidecar names none.
    public var pushedOTLPEndpoint: OTLPEndpoint? = nil

    /// Defaults chosen below common upstream keep-alive timeouts and like Envoy's where Istio is silent.
    public enum Defaults {
        public static let headerTimeout: UInt64 = 10_000_000_000
        public static let idleTimeout: UInt64 = 300_000_000_000
        public static let streamIdleTimeout: UInt64 = 300_000_000_000
        public static let connectTimeout: UInt64 = 5_000_000_000
        /// Pooled upstream connections idle longer than this are closed: below Node.js's 5 s
        /// keep-alive, the shortest common upstream default, so the proxy closes first.
        public static let poolIdleTimeout: UInt64 = 4_000_000_000
        public static let maxConnections = 1024
        public static let drainTimeout: UInt64 = 20_000_000_000
        /// A TCP connection with no byte either way for this long is closed (Istio's
        /// `connectionPool.tcp.idleTimeout` default: 1 hour).
        public static let tcpIdleTimeout: UInt64 = 3_600_000_000_000
        /// Connect attempts of a TCP connection, each to another endpoint when there is one.
        public static let tcpConnectAttempts = 3
    }

    /// Parses the bootstrap from the text of a config file (first `kind: Bootstrap` document).
    public static func parse(_ text: String, file: String) throws(ConfigError) -> Bootstrap {
        let docs: [(node: YAMLNode, line: Int)]
        do {
            docs = try YAML.parseDocuments(text)
        } catch {
            throw ConfigError(file: file, line: error.line, message: "YAML: \(error.message)")
        }
        var found: Bootstrap? = nil
        for (i, doc) in docs.enumerated() {
            if case .scalar(let k)? = doc.node.asMapping?["kind"], IstioTraffic.kinds.contains(k.value) { continue }
            let ctx = ConfigError(file: file, document: i + 1, message: "")
            var top = try ConfigReader(doc.node, path: "", context: ctx)
            let api = try top.string("apiVersion", required: true)!
            let kind = try top.string("kind", required: true)!
            guard kind == "Bootstrap" else {
                throw ConfigReader.error(ctx, "kind", doc.line, "unknown kind \"\(kind)\" (static mode accepts: Bootstrap, VirtualService, DestinationRule)")
            }
            guard api == apiVersion else {
                throw ConfigReader.error(ctx, "apiVersion", doc.line, "expected \(apiVersion) for kind Bootstrap, got \"\(api)\"")
            }
            if found != nil { throw ConfigReader.error(ctx, "kind", doc.line, "a second Bootstrap document; only one is allowed") }
            var name = "sidecar"
            var ns = "default"
            if var meta = try top.object("metadata") {
                name = try meta.string("name") ?? name
                ns = try meta.string("namespace") ?? ns
                try meta.finish()
            }
            guard var spec = try top.object("spec") else { throw ConfigReader.error(ctx, "spec", doc.line, "required field is missing") }
            try top.finish()
            found = try parseSpec(&spec, name: name, namespace: ns, ctx: ctx)
        }
        guard var b = found else { throw ConfigError(file: file, message: "no Bootstrap document found (expected apiVersion: \(apiVersion), kind: Bootstrap)") }
        b.traffic = try IstioTraffic.parse(documents: docs, file: file, defaultNamespace: b.workload.namespace, skipKinds: ["Bootstrap"])
        try b.bindTraffic(file: file)
        try b.refuseStaticCredentials(file: file)
        try b.checkTraffic(file: file)
        try b.checkTelemetry(file: file)
        return b
    }

    private static func parseSpec(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> Bootstrap {
        // workload
        guard var wl = try spec.object("workload") else { throw ConfigReader.error(ctx, "spec.workload", spec.map.line, "required field is missing") }
        let service = try wl.string("service", required: true)!
        try checkDNSLabel(service, ctx, "spec.workload.service", wl.map.line)
        let sa = try wl.string("serviceAccount") ?? service
        var labels = try wl.stringMap("labels") ?? []
        if !labels.contains(where: { $0.0 == "app" }) { labels.insert(("app", service), at: 0) }
        let version = labels.first { $0.0 == "version" }?.1
        let wname = try wl.string("name") ?? (version.map { "\(service)-\($0)" } ?? service)
        try wl.finish()
        let workload = Workload(name: wname, service: service, namespace: namespace, serviceAccount: sa, labels: labels)

        let concurrency = try spec.int("concurrency", min: 1, max: 256)

        var adminAddr = SocketAddress(host: "127.0.0.1", port: 15000)!
        if var a = try spec.object("admin") {
            adminAddr = try address(&a, defaultPort: 15000, ctx: ctx)
            try a.finish()
        }

        var tls: TLSFiles? = nil
        if var t = try spec.object("tls") {
            tls = TLSFiles(certChain: try t.string("certChain", required: true)!,
                           privateKey: try t.string("privateKey", required: true)!,
                           trustBundle: try t.string("trustBundle", required: true)!,
                           trustDomain: try t.string("trustDomain") ?? "cluster.local",
                           minTLS13: false)
            if let v = try t.string("minProtocolVersion") {
                guard v == "TLSV1_2" || v == "TLSV1_3" else {
                    throw ConfigReader.error(ctx, "spec.tls.minProtocolVersion", t.map.line, "expected TLSV1_2 or TLSV1_3, got \"\(v)\"")
                }
                tls?.minTLS13 = v == "TLSV1_3"
            }
            try t.finish()
        }

        var outbound: Listener? = nil
        if var o = try spec.object("outbound") {
            let a = try address(&o, defaultPort: 15001, ctx: ctx)
            outbound = Listener(address: a,
                                headerTimeout: try o.duration("headerTimeout", allowZero: false) ?? Defaults.headerTimeout,
                                idleTimeout: try o.duration("idleTimeout", allowZero: false) ?? Defaults.idleTimeout,
                                streamIdleTimeout: try o.duration("streamIdleTimeout", allowZero: false) ?? Defaults.streamIdleTimeout,
                                maxConnections: try o.int("maxConnections", min: 1, max: 10_000_000) ?? 0,
                                appAddress: nil)
            outbound?.capture = try o.bool("capture") ?? false
            try o.finish()
        }
        var inbound: Listener? = nil
        if var i = try spec.object("inbound") {
            let a = try address(&i, defaultPort: 15006, ctx: ctx)
            let appText = try i.string("appAddress", required: true)!
            guard let app = SocketAddress(appText) else {
                throw ConfigReader.error(ctx, "spec.inbound.appAddress", i.map.line, "expected IP:PORT (e.g. 127.0.0.1:9080), got \"\(appText)\"")
            }
            inbound = Listener(address: a,
                               headerTimeout: try i.duration("headerTimeout", allowZero: false) ?? Defaults.headerTimeout,
                               idleTimeout: try i.duration("idleTimeout", allowZero: false) ?? Defaults.idleTimeout,
                               streamIdleTimeout: try i.duration("streamIdleTimeout", allowZero: false) ?? Defaults.streamIdleTimeout,
                               maxConnections: try i.int("maxConnections", min: 1, max: 10_000_000) ?? 0,
                               appAddress: app)
            let ap = try i.string("appProtocol") ?? "HTTP1"
            guard ["HTTP1", "HTTP2", "GRPC", "TCP"].contains(ap) else {
                throw ConfigReader.error(ctx, "spec.inbound.appProtocol", i.map.line, "expected HTTP1, HTTP2, GRPC or TCP, got \"\(ap)\"")
            }
            inbound?.appHTTP2 = ap == "HTTP2" || ap == "GRPC"
            inbound?.appTCP = ap == "TCP"
            inbound?.servicePort = try i.int("servicePort", min: 1, max: 65535)
            if let src = try i.string("appSourceAddress") {
                guard let a = SocketAddress(host: src, port: 0) else {
                    throw ConfigReader.error(ctx, "spec.inbound.appSourceAddress", i.map.line, "expected an IP address (e.g. 127.0.0.6), got \"\(src)\"")
                }
                inbound?.appSource = a
            }
            try i.finish()
            if tls == nil { throw ConfigReader.error(ctx, "spec.tls", spec.map.line, "the inbound listener requires mutual TLS: add spec.tls with certChain, privateKey and trustBundle") }
        }
        if outbound == nil && inbound == nil {
            throw ConfigReader.error(ctx, "spec", spec.map.line, "no listener: add spec.outbound and/or spec.inbound")
        }

        let clusters = try parseClusters(&spec, haveTLS: tls != nil, allowEmpty: false, ctx: ctx)
        let routes = try parseRoutes(&spec, clusters: clusters, name: name, namespace: namespace, ctx: ctx)
        if routes.count >= 60_000 {
            throw ConfigReader.error(ctx, "spec.routes", spec.map.line, "at most 59,999 routes")
        }
        let drain = try spec.duration("drainTimeout", allowZero: false) ?? Defaults.drainTimeout
        var statsEnabled = true
        if var st = try spec.object("stats") {
            statsEnabled = try st.bool("enabled") ?? true
            try st.finish()
        }
        var accessLog: AccessLog? = nil
        if var al = try spec.object("accessLog") {
            let path = try al.string("path", required: true)!
            var sampling = 1.0
            if let t = try al.string("sampling") {
                guard let v = Double(t), v > 0, v <= 1 else {
                    throw ConfigReader.error(ctx, "spec.accessLog.sampling", al.map.line, "expected a fraction in (0, 1], got \"\(t)\"")
                }
                sampling = v
            }
            accessLog = AccessLog(path: path, sampling: sampling, includeQuery: try al.bool("includeQuery") ?? false)
            try al.finish()
        }
        let policy = try parseOutboundTrafficPolicy(&spec, ctx: ctx)
        let gatewayHost = try parseGateway(&spec, hasInbound: inbound != nil, ctx: ctx)
        try spec.finish()
        var b = Bootstrap(name: name, workload: workload, concurrency: concurrency, admin: adminAddr, tls: tls,
                          outbound: outbound, inbound: inbound, clusters: clusters, routes: routes, drainTimeout: drain,
                          statsEnabled: statsEnabled, accessLog: accessLog)
        b.outboundTrafficPolicy = policy
        if let h = gatewayHost { b.gatewayMode = true; b.gatewayListenHost = h }
        return b
    }

    /// `spec.outboundTrafficPolicy: {mode: ALLOW_ANY|REGISTRY_ONLY}` (Istio's MeshConfig shape),
    /// ALLOW_ANY when absent; in a static file and in meshd's push alike.
    static func parseOutboundTrafficPolicy(_ spec: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> OutboundTrafficPolicy {
        guard var p = try spec.object("outboundTrafficPolicy") else { return .allowAny }
        let text = try p.string("mode") ?? "ALLOW_ANY"
        guard let mode = OutboundTrafficPolicy(rawValue: text) else {
            throw ConfigReader.error(ctx, "spec.outboundTrafficPolicy.mode", p.map.line, "expected ALLOW_ANY or REGISTRY_ONLY, got \"\(text)\"")
        }
        try p.finish()
        return mode
    }

    /// `spec.clusters` (static bootstrap, or pushed by meshd where a service may have no endpoint yet).
    static func parseClusters(_ spec: inout ConfigReader, haveTLS: Bool, allowEmpty: Bool, ctx: ConfigError) throws(ConfigError) -> [Cluster] {
        var clusters: [Cluster] = []
        var names = Set<String>()
        for var c in try spec.objectList("clusters") ?? [] {
            let cname = try c.string("name", required: true)!
            if !names.insert(cname).inserted { throw ConfigReader.error(ctx, c.sub("name"), c.map.line, "duplicate cluster name \"\(cname)\"") }
            let tlsText = try c.string("tls") ?? "ISTIO_MUTUAL"
            guard let mode = ClusterTLS(rawValue: tlsText) else {
                throw ConfigReader.error(ctx, c.sub("tls"), c.map.line, "expected ISTIO_MUTUAL or DISABLE, got \"\(tlsText)\"")
            }
            if mode == .istioMutual && !haveTLS {
                throw ConfigReader.error(ctx, c.sub("tls"), c.map.line, "ISTIO_MUTUAL needs spec.tls (this workload's certificate)")
            }
            let sans = try c.stringList("subjectAltNames") ?? []
            var eps: [SocketAddress] = []
            var epLabels: [[(String, String)]] = []
            if let n = c.node("endpoints") {
                guard case .sequence(let seq) = n else {
                    throw ConfigReader.error(ctx, c.sub("endpoints"), n.line, "expected a list of endpoints, got \(ConfigReader.describe(n))")
                }
                for (k, item) in seq.items.enumerated() {
                    let path = "\(c.sub("endpoints"))[\(k)]"
                    var text = ""
                    var labels: [(String, String)] = []
                    if case .scalar(let sc) = item {
                        text = sc.value
                    } else {
                        var e = try ConfigReader(item, path: path, context: ctx)
                        text = try e.string("address", required: true)!
                        labels = try e.stringMap("labels") ?? []
                        try e.finish()
                    }
                    guard let a = SocketAddress(text) else {
                        throw ConfigReader.error(ctx, path, item.line, "expected IP:PORT (e.g. 127.0.0.1:15006), got \"\(text)\"")
                    }
                    eps.append(a)
                    epLabels.append(labels)
                }
            }
            let (resolution, dnsEndpoints) = try parseDNSEndpoints(&c, ctx: ctx)
            if eps.isEmpty && !allowEmpty && dnsEndpoints.isEmpty { throw ConfigReader.error(ctx, c.sub("endpoints"), c.map.line, "a cluster needs at least one endpoint (IP:PORT, or address: IP:PORT with labels)") }
            let spText = try c.string("serviceProtocol") ?? "HTTP"
            guard let sp = ServiceProtocol(rawValue: spText) else {
                throw ConfigReader.error(ctx, c.sub("serviceProtocol"), c.map.line, "expected HTTP, HTTP2, GRPC, TCP or AUTO, got \"\(spText)\"")
            }
            let hop = try c.string("protocol")
            if sp == .tcp, hop != nil {
                throw ConfigReader.error(ctx, c.sub("protocol"), c.map.line, "the HTTP hop protocol does not apply to a TCP service (serviceProtocol: TCP): remove it")
            }
            let proto = hop ?? (mode == .istioMutual && sp != .tcp ? "HTTP2" : "HTTP1")
            guard proto == "HTTP2" || proto == "HTTP1" else {
                throw ConfigReader.error(ctx, c.sub("protocol"), c.map.line, "expected HTTP2 or HTTP1, got \"\(proto)\"")
            }
            clusters.append(Cluster(name: cname, tls: mode, subjectAltNames: sans, endpoints: eps, endpointLabels: epLabels,
                                    connectTimeout: try c.duration("connectTimeout", allowZero: false) ?? Defaults.connectTimeout,
                                    idleTimeout: try c.duration("idleTimeout", allowZero: false) ?? Defaults.poolIdleTimeout,
                                    maxConnections: try c.int("maxConnections", min: 1, max: 1_000_000) ?? Defaults.maxConnections,
                                    protocolHTTP2: proto == "HTTP2", serviceProtocol: sp,
                                    port: try c.int("port", min: 1, max: 65535)))
            for (i, a) in (try c.stringList("addresses") ?? []).enumerated() {
                guard !a.hasPrefix("["), !a.contains("/"), SocketAddress(host: a, port: 1) != nil else {
                    throw ConfigReader.error(ctx, "\(c.sub("addresses"))[\(i)]", c.map.line, "expected an IPv4 or IPv6 address, got \"\(a)\"")
                }
                clusters[clusters.count - 1].addresses.append(a)
            }
            clusters[clusters.count - 1].resolution = resolution
            clusters[clusters.count - 1].dnsEndpoints = dnsEndpoints
            try c.finish()
        }

        return clusters
    }

    /// `spec.routes`: host routes to clusters, labelled `<name>.<route name or index>`.
    static func parseRoutes(_ spec: inout ConfigReader, clusters: [Cluster], name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> [Route] {
        var routes: [Route] = []
        var seenHosts: [String: Int] = [:]
        // Sets, not scans: a pushed config may hold thousands of clusters and routes.
        let clusterNames = Set(clusters.map(\.name))
        var routeNames = Set<String>()
        for (ri, var r) in (try spec.objectList("routes") ?? []).enumerated() {
            guard let hosts = try r.stringList("hosts"), !hosts.isEmpty else {
                throw ConfigReader.error(ctx, r.sub("hosts"), r.map.line, "a route needs at least one host")
            }
            for h in hosts {
                // Short names also answer as name.namespace and the FQDN: check what will match.
                for key in expandedHosts(h.lowercased(), namespace: namespace) {
                    if let prev = seenHosts[key] {
                        if prev == ri { continue }   // the same route, reached by two spellings
                        throw ConfigReader.error(ctx, r.sub("hosts"), r.map.line, "host \"\(h)\" is already routed by spec.routes[\(prev)] (as \(key))")
                    }
                    seenHosts[key] = ri
                }
            }
            let cl = try r.string("cluster", required: true)!
            if !clusterNames.contains(cl) {
                throw ConfigReader.error(ctx, r.sub("cluster"), r.map.line, "no cluster named \"\(cl)\" (defined: \(clusters.map(\.name).joined(separator: ", ")))")
            }
            let rname = try r.string("name") ?? String(ri)
            let okName = !rname.isEmpty && rname.utf8.count <= 253 && rname.utf8.allSatisfy {
                ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 46 || $0 == 95
            }
            if !okName { throw ConfigReader.error(ctx, r.sub("name"), r.map.line, "expected letters, digits, '-', '_' or '.', got \"\(rname)\"") }
            if !routeNames.insert("\(name).\(rname)").inserted {
                throw ConfigReader.error(ctx, r.sub("name"), r.map.line, "route name \"\(rname)\" is used twice (unnamed routes are named by their index)")
            }
            routes.append(Route(hosts: hosts, cluster: cl, timeout: try r.duration("timeout", allowZero: true) ?? 0,
                                name: "\(name).\(rname)"))
            try r.finish()
        }
        return routes
    }

    /// What a route host answers to: a short name also as name.namespace and its FQDN; name.ns also as its FQDN.
    public static func expandedHosts(_ h: String, namespace: String) -> [String] {
        let dots = h.filter { $0 == "." }.count
        if dots == 0 { return [h, "\(h).\(namespace)", "\(h).\(namespace).svc.cluster.local"] }
        if dots == 1 { return [h, "\(h).svc.cluster.local"] }
        return [h]
    }

    private static func address(_ r: inout ConfigReader, defaultPort: Int, ctx: ConfigError) throws(ConfigError) -> SocketAddress {
        let host = try r.string("address") ?? "127.0.0.1"
        let port = try r.int("port", min: 1, max: 65535) ?? defaultPort
        guard let a = SocketAddress(host: host, port: port) else {
            throw ConfigReader.error(ctx, r.sub("address"), r.map.line, "expected an IP address, got \"\(host)\"")
        }
        return a
    }

    private static func checkDNSLabel(_ s: String, _ ctx: ConfigError, _ path: String, _ line: Int) throws(ConfigError) {
        if !Names.isDNSLabel(s) { throw ConfigReader.error(ctx, path, line, "expected a DNS label (lowercase letters, digits, '-'), got \"\(s)\"") }
    }
}
