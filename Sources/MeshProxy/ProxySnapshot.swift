import MeshConfig
import MeshCore
import MeshTLS

/// The configuration in force, compiled for the data path: clusters by index, a host table that
/// maps request hosts to routes, the TLS contexts, and this workload's identity as bytes. It is
/// immutable; a new config is a new snapshot that workers pick up for new requests while in-flight
/// requests finish on the one they started with (DESIGN §7).
public final class ProxySnapshot: Sendable {
    /// The server side of this workload's mesh identity: its certificate, key and trust bundle;
    /// h2 and http/1.1 offered (DESIGN §2; what the caller offers wins); TLS 1.2 (ECDHE + AEAD
    /// only) accepted for callers that are not sidecars unless `minTLS13` (sidecars always
    /// negotiate 1.3). The inbound listener and a gateway's ISTIO_MUTUAL servers use it.
    static func meshServerOptions(_ t: Bootstrap.TLSFiles) -> TLSContext.Options {
        var so = TLSContext.Options(certChainFile: t.certChain, privateKeyFile: t.privateKey, trustBundleFile: t.trustBundle)
        so.trustDomain = t.trustDomain
        so.certChainPEM = t.certChainPEM
        so.privateKeyPEM = t.privateKeyPEM
        so.trustBundlePEM = t.trustBundlePEM
        so.alpn = ["h2", "http/1.1"]
        so.minVersion13 = t.minTLS13
        return so
    }

    /// One upstream cluster. A class, so the request path holds it with one reference instead of
    /// copying a struct of arrays and strings.
    public final class Cluster: Sendable {
        public let name: String
        public let endpoints: [SocketAddress]
        public let mutualTLS: Bool
        public let expectedPeers: [String]
        public let connectTimeout: UInt64
        public let idleTimeout: UInt64
        public let maxConnections: Int
        /// Requests one upstream connection carries before it is retired (Istio's
        /// `maxRequestsPerConnection`); 0: unlimited.
        public let maxRequestsPerConnection: Int
        /// HTTP/2 to this cluster's endpoints (sidecar-to-sidecar hops, by default).
        public let http2: Bool
        // DestinationRule trafficPolicy (Istio's defaults where it is silent).
        let loadBalancer: IstioTraffic.TrafficPolicy.LoadBalancer
        /// Requests waiting for a connection when `maxConnections` are open (Envoy: 1024).
        let maxPendingRequests: Int
        /// Requests in flight to the cluster (Istio: unlimited).
        let maxRequests: Int
        /// Retries in flight to the cluster, besides the retry budget (Istio: unlimited).
        let maxRetries: Int
        let outlier: OutlierPolicy?
        /// The service speaks opaque TCP (`serviceProtocol: TCP`): reached by the TCP proxy only.
        public let serviceTCP: Bool
        /// The service's protocol is not declared (`serviceProtocol: AUTO`): reached by HTTP
        /// routes and TCP routes alike; captured connections are sniffed.
        public let detectProtocol: Bool
        /// The service port (`port`), 0 when not known.
        public let servicePort: Int
        /// A TCP connection with no byte either way for this long is closed (DestinationRule
        /// `connectionPool.tcp.idleTimeout`, Istio's 1 hour by default).
        let tcpIdleTimeout: UInt64
        /// Connect attempts of a TCP connection, each to another endpoint when there is one.
        let tcpConnectAttempts: Int
        /// The source address of connections to the endpoints (the local app's cluster under
        /// capture: 127.0.0.6), nil for the kernel's choice.
        let sourceAddress: SocketAddress?
        /// TLS origination to the endpoints (DestinationRule SIMPLE/MUTUAL), nil otherwise.
        public let origination: UpstreamTLSOrigination?

        init(name: String, endpoints: [SocketAddress], mutualTLS: Bool, expectedPeers: [String], connectTimeout: UInt64,
             idleTimeout: UInt64, maxConnections: Int, maxRequestsPerConnection: Int, http2: Bool,
             loadBalancer: IstioTraffic.TrafficPolicy.LoadBalancer, maxPendingRequests: Int, maxRequests: Int,
             maxRetries: Int, outlier: OutlierPolicy?, serviceTCP: Bool = false, detectProtocol: Bool = false, servicePort: Int = 0,
             tcpIdleTimeout: UInt64 = Bootstrap.Defaults.tcpIdleTimeout, tcpConnectAttempts: Int = Bootstrap.Defaults.tcpConnectAttempts,
             sourceAddress: SocketAddress? = nil, origination: UpstreamTLSOrigination? = nil) {
            self.sourceAddress = sourceAddress
            self.origination = origination
            self.serviceTCP = serviceTCP; self.detectProtocol = detectProtocol; self.servicePort = servicePort
            self.tcpIdleTimeout = tcpIdleTimeout; self.tcpConnectAttempts = tcpConnectAttempts
            self.name = name; self.endpoints = endpoints; self.mutualTLS = mutualTLS; self.expectedPeers = expectedPeers
            self.connectTimeout = connectTimeout; self.idleTimeout = idleTimeout; self.maxConnections = maxConnections
            self.maxRequestsPerConnection = maxRequestsPerConnection; self.http2 = http2; self.loadBalancer = loadBalancer
            self.maxPendingRequests = maxPendingRequests; self.maxRequests = maxRequests; self.maxRetries = maxRetries
            self.outlier = outlier
        }
    }

    /// Outlier detection of a cluster (Istio's `outlierDetection`, with its defaults).
    struct OutlierPolicy: Sendable {
        /// 0: not counted.
        let consecutive5xx: Int
        let consecutiveGateway: Int
        let baseEjection: UInt64
        let maxEjectionPercent: Int
        /// Each interval an endpoint stays healthy after an ejection lowers its ejection count by
        /// one (Envoy's decrement of the ejection multiplier), so recovery is not punished forever.
        let interval: UInt64
    }

    /// One route, compiled. A class, so the request path holds it with one reference instead of
    /// copying a struct of arrays.
    public final class Route: Sendable {
        /// The cluster of the first destination (metrics' destination service).
        public let cluster: Int
        public let timeout: UInt64
        /// The `route` metric label, and its process-wide id in request metrics (RouteCatalog).
        public let label: String
        let metricID: Int
        /// Istio's destination_service labels, from the route's first host.
        public let serviceFQDN: String
        public let serviceName: String
        public let serviceNamespace: String
        /// OR of the entries; empty matches every request.
        let matches: [RouteMatch]
        /// Indices into `targets`, with cumulative weights out of 100.
        let targets: [Int]
        let cumulativeWeights: [Int]
        let retry: RetryPolicy
        let fault: FaultPolicy?
        /// -1: no mirror.
        let mirrorTarget: TargetID
        let mirrorPPM: UInt64
        let requestOps: HeaderOps
        let responseOps: HeaderOps
        let rewriteURI: [UInt8]?
        /// Istio's `rewrite.authority`: the Host / :authority sent upstream, nil to keep the caller's.
        let rewriteAuthority: [UInt8]?
        /// `redirect` / `directResponse`: answered here, no targets (DirectReply.swift).
        let direct: DirectReply?
        /// `corsPolicy` (CORSPolicy.swift).
        let cors: CORSTable?
        /// LocalRateLimit buckets this sidecar applies to the route (LocalRateLimiter.swift).
        let rateLimiters: [LocalRateLimiter]

        init(cluster: Int, timeout: UInt64, label: String, serviceFQDN: String, serviceName: String, serviceNamespace: String,
             matches: [RouteMatch], targets: [Int], cumulativeWeights: [Int], retry: RetryPolicy, fault: FaultPolicy?,
             mirrorTarget: TargetID, mirrorPPM: UInt64, requestOps: HeaderOps, responseOps: HeaderOps, rewriteURI: [UInt8]?,
             rewriteAuthority: [UInt8]?, direct: DirectReply? = nil, cors: CORSTable? = nil, rateLimiters: [LocalRateLimiter] = []) {
            self.direct = direct; self.cors = cors; self.rateLimiters = rateLimiters
            self.cluster = cluster; self.timeout = timeout; self.label = label; self.serviceFQDN = serviceFQDN
            self.metricID = RouteCatalog.shared.id(label: label, serviceFQDN: serviceFQDN, serviceName: serviceName, serviceNamespace: serviceNamespace)
            self.serviceName = serviceName; self.serviceNamespace = serviceNamespace; self.matches = matches
            self.targets = targets; self.cumulativeWeights = cumulativeWeights; self.retry = retry; self.fault = fault
            self.mirrorTarget = mirrorTarget; self.mirrorPPM = mirrorPPM; self.requestOps = requestOps
            self.responseOps = responseOps; self.rewriteURI = rewriteURI; self.rewriteAuthority = rewriteAuthority
        }
    }

    /// One TCP route (a VirtualService `tcp[]` entry, or the default route of a TCP service):
    /// the service ports it matches and its weighted destinations, chosen once per connection.
    public final class TCPRoute: Sendable {
        /// The cluster of the first destination (metrics' destination service).
        public let cluster: Int
        public let label: String
        /// Its process-wide id in metrics (RouteCatalog), as HTTP routes have.
        let metricID: Int
        /// `match[].port`: the service ports this route takes; empty: any.
        let ports: [Int]
        /// Indices into `targets`, with cumulative weights out of 100.
        let targets: [Int]
        let cumulativeWeights: [Int]

        init(cluster: Int, label: String, serviceFQDN: String, serviceName: String, serviceNamespace: String, ports: [Int],
             targets: [Int], cumulativeWeights: [Int]) {
            self.cluster = cluster; self.label = label; self.ports = ports; self.targets = targets
            self.cumulativeWeights = cumulativeWeights
            self.metricID = RouteCatalog.shared.id(label: label, serviceFQDN: serviceFQDN, serviceName: serviceName, serviceNamespace: serviceNamespace)
        }

        /// Whether a connection to service port `port` (0: not known) takes this route.
        func matches(port: Int) -> Bool { ports.isEmpty || port == 0 || ports.contains(port) }

        /// The weighted choice of a target, once per connection.
        @inline(__always) func pickTarget(_ rng: inout FastRandom) -> Int {
            if targets.count == 1 { return targets[0] }
            let x = Int(rng.next() % 100)
            for (i, c) in cumulativeWeights.enumerated() where x < c { return targets[i] }
            return targets[targets.count - 1]
        }
    }

    public struct ListenerSettings: Sendable {
        public let address: SocketAddress
        public let headerTimeout: UInt64
        public let idleTimeout: UInt64
        public let streamIdleTimeout: UInt64
        /// 0: no limit.
        public let maxConnections: Int
        /// A gateway's HTTP server with `tls.httpsRedirect`: every request gets 301 to https.
        public var httpsRedirect = false
        /// A gateway's port (its routes are the port's: GatewayTable); 0 for a sidecar's listeners.
        public var gatewayPort = 0
    }

    public let version: String
    public let bootstrap: Bootstrap
    public let clusters: [Cluster]
    public let routes: [Route]
    /// Endpoint sets that routes send to (a cluster, or the endpoints a subset selects).
    let targets: [RouteTarget]
    /// Routes per host; `hosts` maps a request host to an index here.
    let vhosts: [VirtualHost]
    /// Every route's match entries, flattened per virtual host (what the request path walks).
    let matcher: MatchTable
    /// AuthorizationPolicies selecting this workload (inbound), nil when none does.
    let authz: AuthzTable?
    /// RequestAuthentications selecting this workload (inbound), nil when none does.
    let jwt: JWTTable?
    /// The Telemetry resources in force, resolved for this workload (TelemetrySettings.swift).
    let telemetry: TelemetrySettings
    /// A Telemetry enables access-log lines on some side of this workload.
    let accessLogOn: Bool
    /// PeerAuthentication for the inbound listener's app port (STRICT unless a policy says
    /// otherwise): the app port's `portLevelMtls` entry when it has one, else `workloadMode`.
    let inboundMode: PeerAuthentication.Mode
    /// The workload's mode without any port's override: what a captured port with no
    /// `portLevelMtls` entry of its own gets (never the app port's override).
    let workloadMode: PeerAuthentication.Mode
    /// `portLevelMtls` of the policy selecting this workload: other workload ports' modes (a
    /// captured connection passed through to another port of this host is judged by its port's).
    let inboundPortModes: [(port: Int, mode: PeerAuthentication.Mode)]

    /// The mode an inbound connection is judged by: the app port's (`passthrough` nil), or the
    /// port a captured connection is passed through to: its own `portLevelMtls` entry, else the
    /// workload's mode.
    @inline(__always) func inboundMode(passthrough: Int?) -> PeerAuthentication.Mode {
        ProxySnapshot.inboundMode(passthrough: passthrough, app: inboundMode, workload: workloadMode, ports: inboundPortModes)
    }

    @inline(__always) static func inboundMode(passthrough: Int?, app: PeerAuthentication.Mode, workload: PeerAuthentication.Mode,
                                              ports: [(port: Int, mode: PeerAuthentication.Mode)]) -> PeerAuthentication.Mode {
        guard let p = passthrough else { return app }
        for e in ports where e.port == p { return e.mode }
        return workload
    }

    /// The PeerAuthentication modes of a bootstrap's workload: on the app port (Istio's
    /// portLevelMtls keys are target ports: the app's), without any port's override, and per port.
    static func peerModes(_ b: Bootstrap) -> (app: PeerAuthentication.Mode, workload: PeerAuthentication.Mode,
                                              ports: [(port: Int, mode: PeerAuthentication.Mode)]) {
        let ns = b.workload.namespace, labels = b.workload.labels, pas = b.traffic.peerAuthentications
        return (PeerAuthentication.mode(for: ns, labels: labels, port: Int(b.inbound?.appAddress?.port ?? 0), in: pas),
                PeerAuthentication.mode(for: ns, labels: labels, in: pas),
                PeerAuthentication.portModes(for: ns, labels: labels, in: pas))
    }

    /// `inboundServicePort`: the app's port, else the service port, else 0.
    static func authorizationPort(_ b: Bootstrap) -> Int {
        b.inbound.flatMap { $0.appAddress.map { Int($0.port) } ?? $0.servicePort } ?? 0
    }
    public let hosts: HostTable
    /// TCP services by host: `tcpHosts` maps a host to an index into `tcpServices`, the service's
    /// TCP routes in order (first match on the service port wins).
    public let tcpHosts: HostTable
    let tcpServices: [[Int]]
    public let tcpRoutes: [TCPRoute]
    /// The inbound app speaks opaque TCP (`appProtocol: TCP` / `--app-protocol tcp`).
    public let inboundTCP: Bool
    /// The port AuthorizationPolicy `operation.ports`/`notPorts` and `destination.port` match on
    /// inbound: the workload's (target) port, the app's (`appAddress`, `--app-port`), as in Istio
    /// and as `portLevelMtls` is keyed, not the service port callers dial (`servicePort`, only
    /// when there is no app address); 0 when neither is known. (The name is kept for the callers.)
    public let inboundServicePort: Int
    public let outbound: ListenerSettings?
    public let inbound: ListenerSettings?
    /// The outbound listener takes captured connections (`capture: true`): their original
    /// destinations and where they lead; nil otherwise.
    let capture: CaptureTable?
    /// Index of the cluster for the local app (inbound), or -1.
    let inboundCluster: ClusterID
    public let serverTLS: TLSContext?
    /// Client contexts: HTTP/1.1 connections offer only http/1.1 in ALPN, HTTP/2 ones h2 first.
    public let clientTLS: TLSContext?
    public let clientTLSH2: TLSContext?
    /// `By=<own SPIFFE ID>;Hash=` prefix of x-forwarded-client-cert, precomputed.
    public let xfccPrefix: [UInt8]
    /// This workload as `x-mesh-peer-metadata` sends it: `workload;namespace;app;version`.
    public let peerMetadata: [UInt8]
    /// The mesh names the DNS port answers (`DNS/DNSTable.swift`), from the clusters' addresses.
    public let dnsTable: DNSTable
    /// The EndpointResolver generation the DNS clusters' endpoints were read at.
    public let dnsGeneration: UInt64
    /// Some cluster's endpoints come from DNS names (ServiceEntry `resolution: DNS`).
    public var usesDNS: Bool { bootstrap.clusters.contains { $0.resolution != .static } }
    /// A gateway proxy's servers (Gateway/GatewayTable.swift); nil for a sidecar.
    public let gateway: GatewayTable?
    /// Tracing: propagation, sampling and span tags compiled (Tracing/TracingTable.swift).
    let tracing: TracingTable

    /// Stream idle timeout: no bytes either way while a request is in flight.
    /// Compiles a bootstrap, loading its certificate files into TLS contexts.
    public init(bootstrap b0: Bootstrap, version: String) throws {
        self.version = version
        self.bootstrap = b0
        // DNS clusters: the addresses their names resolve to are their endpoints (DNS/EndpointResolver.swift).
        let (b, dnsGeneration) = EndpointResolver.shared.withResolvedEndpoints(b0)
        self.dnsGeneration = dnsGeneration
        let wl = b.workload
        let app = wl.labels.first { $0.0 == "app" }?.1 ?? wl.service
        let ver = wl.labels.first { $0.0 == "version" }?.1 ?? "unknown"
        self.peerMetadata = Array("\(wl.name);\(wl.namespace);\(app);\(ver)".utf8)
        self.dnsTable = DNSTable(clusters: b.clusters.map { ($0.name, $0.addresses) }, namespace: wl.namespace)
        var compiled = TrafficCompiler(b, tls: try ClusterTLSPlan(b))
        // A gateway's servers and routes (they add tcp routes and targets: compiled first).
        self.gateway = try compiled.compileGateway(b, outbound: b.outbound.map {
            ListenerSettings(address: $0.address, headerTimeout: $0.headerTimeout, idleTimeout: $0.idleTimeout,
                             streamIdleTimeout: $0.streamIdleTimeout, maxConnections: $0.maxConnections) })
        self.clusters = compiled.clusters
        self.inboundCluster = compiled.inboundCluster
        self.routes = compiled.routes
        self.targets = compiled.targets
        self.vhosts = compiled.vhosts
        self.matcher = MatchTable(vhosts: compiled.vhosts, routes: compiled.routes)
        self.authz = AuthzTable(b.traffic.authorizationPolicies, namespace: b.workload.namespace, labels: b.workload.labels)
        self.jwt = JWTTable(b.traffic.requestAuthentications, namespace: b.workload.namespace, labels: b.workload.labels,
                            fetched: b.traffic.requestAuthentications.isEmpty ? ([:], 0) : JWKSFetcher.shared.current())
        self.telemetry = TelemetrySettings.resolve(b.traffic.telemetries, namespace: b.workload.namespace, labels: b.workload.labels)
        self.accessLogOn = !(telemetry.accessLogging?.isEmpty ?? true)
        self.tracing = TracingTable(b, settings: telemetry.tracing, routes: compiled.routes.map(\.label),
                                    clusters: compiled.clusters.map(\.name))
        (self.inboundMode, self.workloadMode, self.inboundPortModes) = ProxySnapshot.peerModes(b)
        self.hosts = HostTable(compiled.hostEntries)
        self.tcpHosts = HostTable(compiled.tcpHostEntries)
        self.tcpServices = compiled.tcpServices
        self.tcpRoutes = compiled.tcpRoutes
        self.inboundTCP = b.inbound?.appTCP ?? false
        self.inboundServicePort = ProxySnapshot.authorizationPort(b)
        let clusters = compiled.clusters
        self.outbound = b.outbound.map { ListenerSettings(address: $0.address, headerTimeout: $0.headerTimeout, idleTimeout: $0.idleTimeout,
                                                                      streamIdleTimeout: $0.streamIdleTimeout, maxConnections: $0.maxConnections) }
        self.inbound = b.inbound.map { ListenerSettings(address: $0.address, headerTimeout: $0.headerTimeout, idleTimeout: $0.idleTimeout,
                                                                      streamIdleTimeout: $0.streamIdleTimeout, maxConnections: $0.maxConnections) }
        if let o = b.outbound, o.capture {
            let own = [o.address.port, b.inbound?.address.port ?? 0, b.admin.port]
            self.capture = CaptureTable(b, hosts: hosts, tcpHosts: tcpHosts, ownPorts: own)
        } else {
            self.capture = nil
        }

        if let t = b.tls {
            let so = ProxySnapshot.meshServerOptions(t)
            serverTLS = b.inbound != nil ? try TLSContext(role: .server, options: so) : nil
            var co = so
            co.minVersion13 = true
            co.alpn = ["http/1.1"]
            clientTLS = clusters.contains { $0.mutualTLS } ? try TLSContext(role: .client, options: co) : nil
            co.alpn = ["h2", "http/1.1"]
            clientTLSH2 = clusters.contains { $0.http2 } ? try TLSContext(role: .client, options: co) : nil
            let own = (serverTLS ?? clientTLS)?.localIdentity ?? ""
            if own.isEmpty && (serverTLS != nil || clientTLS != nil) {
                throw TLSConfigError("\(t.certChain): the certificate has no spiffe:// URI SAN; a workload certificate must carry its SPIFFE ID")
            }
            xfccPrefix = Array("By=\(own);Hash=".utf8)
        } else {
            serverTLS = nil
            clientTLS = nil
            clientTLSH2 = nil
            xfccPrefix = []
        }
    }
}
