import MeshCore

/// Istio's traffic API for the subset of DESIGN §3 (`networking.istio.io/v1` VirtualService and
/// DestinationRule), parsed and validated as a whole with Istio's field names and meanings:
/// unknown fields and kinds are errors, weights must sum to 100, and a route to a subset that no
/// DestinationRule defines is refused. Static mode reads these documents beside its Bootstrap;
/// the proxy compiles them into its route table (MeshProxy's RouteTable).
public enum IstioTraffic {
    public static let apiVersions = ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]

    /// `exact`, `prefix` or `regex` (RE2 in Istio; here POSIX extended syntax plus `\\d`, as `FullMatchRegex` runs it).
    public struct StringMatch: Sendable, Equatable {
        public enum Kind: String, Sendable { case exact, prefix, regex }
        public var kind: Kind
        public var value: String
    }

    public struct HTTPMatch: Sendable {
        public var uri: StringMatch?
        public var method: StringMatch?
        public var headers: [(name: String, match: StringMatch)] = []
        /// queryParams, authority, port, scheme, withoutHeaders, ignoreUriCase, source* (IstioHTTPMatchExtras.swift).
        public var extras = HTTPMatchExtras()
        /// `gateways`: where this match applies (empty: the VirtualService's `gateways`).
        public var gateways: [String] = []
    }

    public struct Destination: Sendable {
        public var host: String
        public var subset: String?
        public var port: Int?
    }

    public struct RouteDestination: Sendable {
        public var destination: Destination
        public var weight: Int
    }

    public struct Retry: Sendable {
        public static let retryOnValues: Set<String> = ["5xx", "gateway-error", "reset", "connect-failure", "refused-stream",
                                                        "retriable-4xx", "retriable-status-codes", "retriable-headers",
                                                        "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"]
        public var attempts: Int
        public var perTryTimeout: UInt64?
        public var retryOn: [String]
    }

    /// Fields of Istio's API that are accepted nowhere yet: refused by name with this message
    /// (DESIGN §3: never parsed and dropped), so meshd and every sidecar give the same answer.
    public static let notSupported = "not supported yet"


    public struct Fault: Sendable {
        public var delayPercent: Double?
        public var fixedDelay: UInt64?
        public var abortPercent: Double?
        public var abortStatus: Int?
    }

    public struct HeaderOperations: Sendable {
        public var set: [(String, String)] = []
        public var add: [(String, String)] = []
        public var remove: [String] = []
    }

    public struct HTTPRoute: Sendable {
        public var name: String?
        public var match: [HTTPMatch] = []
        public var route: [RouteDestination] = []
        public var timeout: UInt64?
        public var retries: Retry?
        public var fault: Fault?
        public var mirror: Destination?
        public var mirrorPercent: Double?
        public var requestHeaders = HeaderOperations()
        public var responseHeaders = HeaderOperations()
        public var rewriteURI: String?
        /// `rewrite.authority`: the Host / :authority sent upstream instead of the caller's.
        public var rewriteAuthority: String?
        /// `redirect` / `directResponse`: answered by the sidecar (IstioHTTPDirectReply.swift).
        public var redirect: HTTPRedirect?
        public var directResponse: HTTPDirectResponse?
        /// `corsPolicy` (IstioCORSPolicy.swift).
        public var corsPolicy: CORSPolicy?
    }

    /// A VirtualService `tcp[]` route (Istio's TCPRoute): connections whose service port one of
    /// `match[].port` names (any port when there is no match) are split by weight between the
    /// destinations, one choice per connection.
    public struct TCPRoute: Sendable {
        /// `match[].port`; empty: every connection.
        public var ports: [Int] = []
        public var route: [RouteDestination] = []
        /// Each `match[]` entry: its port (nil: any) and `gateways` (empty: the VirtualService's).
        public var matches: [(port: Int?, gateways: [String])] = []
    }

    public struct VirtualService: Sendable {
        public var name: String
        public var namespace: String
        public var hosts: [String]
        public var http: [HTTPRoute]
        public var tcp: [TCPRoute] = []
        /// `gateways`: empty means `mesh` only (IstioGatewayBinding.swift).
        public var gateways: [String] = []
        /// `tls[]` routes (SNI), honoured on gateways' PASSTHROUGH servers.
        public var tls: [TLSRoute] = []
    }

    public struct TrafficPolicy: Sendable {
        public enum LoadBalancer: String, Sendable { case roundRobin = "ROUND_ROBIN", leastRequest = "LEAST_REQUEST", random = "RANDOM" }
        public var loadBalancer: LoadBalancer?
        /// `loadBalancer.consistentHash`, `.localityLbSetting`, `.warmupDurationSecs`/`.warmup` (IstioLoadBalancer.swift).
        public var consistentHash: ConsistentHash?
        public var localityLbSetting: LocalityLbSetting?
        public var warmup: Warmup?
        public var maxConnections: Int?
        public var http1MaxPendingRequests: Int?
        public var http2MaxRequests: Int?
        public var maxRetries: Int?
        /// `connectionPool.tcp.connectTimeout` (nil: the cluster's, 5 s by default).
        public var connectTimeout: UInt64?
        /// `connectionPool.http.idleTimeout`: pooled upstream connections idle longer are closed.
        public var idleTimeout: UInt64?
        /// `connectionPool.tcp.idleTimeout`: a TCP connection with no byte either way for this
        /// long is closed (nil: Istio's 1 hour).
        public var tcpIdleTimeout: UInt64?
        /// `connectionPool.http.maxRequestsPerConnection` (0 or nil: unlimited).
        public var maxRequestsPerConnection: Int?
        public var consecutive5xxErrors: Int?
        public var consecutiveGatewayErrors: Int?
        public var interval: UInt64?
        public var baseEjectionTime: UInt64?
        public var maxEjectionPercent: Int?
        /// `tls` (IstioClientTLS.swift) and `portLevelSettings[].tls`.
        public var tls: ClientTLS?
        public var portLevel: [PortTrafficPolicy] = []
    }

    public struct Subset: Sendable {
        public var name: String
        public var labels: [(String, String)]
        public var trafficPolicy: TrafficPolicy?
    }

    public struct DestinationRule: Sendable {
        public var name: String
        public var namespace: String
        public var host: String
        public var subsets: [Subset]
        public var trafficPolicy: TrafficPolicy?
    }

    public struct Config: Sendable {
        public var virtualServices: [VirtualService] = []
        public var destinationRules: [DestinationRule] = []
        public var authorizationPolicies: [AuthorizationPolicy] = []
        public var peerAuthentications: [PeerAuthentication] = []
        public var requestAuthentications: [RequestAuthentication] = []
        public var serviceEntries: [ServiceEntry] = []
        public var workloadEntries: [WorkloadEntry] = []
        /// Sidecar resources (egress scopes); meshd applies them, a sidecar never reads them.
        public var sidecars: [IstioSidecar] = []
        /// `mesh.io/v1alpha1` LocalRateLimit documents (LocalRateLimit.swift).
        public var localRateLimits: [LocalRateLimit] = []
        /// Gateway resources: the listeners of `sidecar --gateway` proxies their selectors match.
        public var gateways: [IstioGateway] = []
        /// `telemetry.istio.io` Telemetry documents (Telemetry.swift); each sidecar resolves its own.
        public var telemetries: [Telemetry] = []
        public init() {}
    }

    /// Parses every document of `text` (VirtualService or DestinationRule), then validates the set.
    public static func parse(_ text: String, file: String, defaultNamespace: String = "default") throws(ConfigError) -> Config {
        let docs: [(node: YAMLNode, line: Int)]
        do { docs = try YAML.parseDocuments(text) } catch { throw ConfigError(file: file, line: error.line, message: "YAML: \(error.message)") }
        return try parse(documents: docs, file: file, defaultNamespace: defaultNamespace, skipKinds: [])
    }

    /// The kinds this model reads.
    public static let kinds: Set<String> = ["VirtualService", "DestinationRule", "AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication",
                                            "ServiceEntry", "WorkloadEntry", "Sidecar", LocalRateLimit.kind, "Gateway", Telemetry.kind]

    /// Parses the VirtualService and DestinationRule documents among `docs` (documents whose kind is
    /// in `skipKinds` belong to another reader and are passed over), then validates the set.
    /// `checkSubsets: false` checks each document alone (a part of a set, validated whole later).
    public static func parse(documents docs: [(node: YAMLNode, line: Int)], file: String, defaultNamespace: String,
                             skipKinds: Set<String>, checkSubsets: Bool = true) throws(ConfigError) -> Config {
        var cfg = Config()
        for (i, doc) in docs.enumerated() {
            if case .scalar(let k)? = doc.node.asMapping?["kind"], skipKinds.contains(k.value) { continue }
            let ctx = ConfigError(file: file, document: i + 1, message: "")
            var top = try ConfigReader(doc.node, path: "", context: ctx)
            let api = try top.string("apiVersion", required: true)!
            let kind = try top.string("kind", required: true)!
            guard kinds.contains(kind) else {
                let known = (kinds.union(skipKinds)).sorted().joined(separator: ", ")
                throw ConfigReader.error(ctx, "kind", doc.line, "unknown kind \"\(kind)\" (supported here: \(known))")
            }
            let expected = kind == "AuthorizationPolicy" || kind == "PeerAuthentication" || kind == "RequestAuthentication" ? AuthorizationPolicy.apiVersions
                : kind == LocalRateLimit.kind ? LocalRateLimit.apiVersions : kind == Telemetry.kind ? Telemetry.apiVersions : apiVersions
            guard expected.contains(api) else {
                throw ConfigReader.error(ctx, "apiVersion", doc.line, "expected \(expected[0]) for \(kind), got \"\(api)\"")
            }
            guard var meta = try top.object("metadata") else { throw ConfigReader.error(ctx, "metadata", doc.line, "required field is missing") }
            let name = try meta.string("name", required: true)!
            let ns = try meta.string("namespace") ?? defaultNamespace
            guard Names.isObjectName(name) else {
                throw ConfigReader.error(ctx, "metadata.name", meta.map.line, "expected a DNS-1123 name (lowercase letters, digits, '-', '.'), got \"\(name)\"")
            }
            guard Names.isDNSLabel(ns) else {
                throw ConfigReader.error(ctx, "metadata.namespace", meta.map.line, "expected a DNS label (lowercase letters, digits, '-'), got \"\(ns)\"")
            }
            _ = try meta.stringMap("labels")
            _ = try meta.stringMap("annotations")
            try meta.finish()
            guard var spec = try top.object("spec") else { throw ConfigReader.error(ctx, "spec", doc.line, "required field is missing") }
            try top.finish()
            if kind == Telemetry.kind {
                if cfg.telemetries.contains(where: { $0.name == name && $0.namespace == ns }) {
                    throw ConfigReader.error(ctx, "metadata.name", doc.line, "a second Telemetry \(ns)/\(name)")
                }
                cfg.telemetries.append(try Telemetry.parse(&spec, name: name, namespace: ns, ctx: ctx))
            } else if kind == LocalRateLimit.kind {
                if cfg.localRateLimits.contains(where: { $0.name == name && $0.namespace == ns }) {
                    throw ConfigReader.error(ctx, "metadata.name", doc.line, "a second LocalRateLimit \(ns)/\(name)")
                }
                cfg.localRateLimits.append(try LocalRateLimit.parse(&spec, name: name, namespace: ns, ctx: ctx))
            } else if kind == "Gateway" {
                if cfg.gateways.contains(where: { $0.name == name && $0.namespace == ns }) {
                    throw ConfigReader.error(ctx, "metadata.name", doc.line, "a second Gateway \(ns)/\(name)")
                }
                cfg.gateways.append(try IstioGateway.parse(&spec, name: name, namespace: ns, ctx: ctx))
            } else if kind == "Sidecar" {
                if cfg.sidecars.contains(where: { $0.name == name && $0.namespace == ns }) {
                    throw ConfigReader.error(ctx, "metadata.name", doc.line, "a second Sidecar \(ns)/\(name)")
                }
                cfg.sidecars.append(try IstioSidecar.parse(&spec, name: name, namespace: ns, ctx: ctx))
            } else if kind == "ServiceEntry" || kind == "WorkloadEntry" {
                if kind == "ServiceEntry" {
                    cfg.serviceEntries.append(try ServiceEntry.parse(&spec, name: name, namespace: ns, ctx: ctx))
                } else {
                    cfg.workloadEntries.append(try WorkloadEntry.parse(&spec, name: name, namespace: ns, ctx: ctx))
                }
            } else if kind == "PeerAuthentication" {
                if cfg.peerAuthentications.contains(where: { $0.name == name && $0.namespace == ns }) {
                    throw ConfigReader.error(ctx, "metadata.name", doc.line, "a second PeerAuthentication \(ns)/\(name)")
                }
                cfg.peerAuthentications.append(try PeerAuthentication.parse(&spec, name: name, namespace: ns, ctx: ctx))
            } else if kind == "RequestAuthentication" {
                if cfg.requestAuthentications.contains(where: { $0.name == name && $0.namespace == ns }) {
                    throw ConfigReader.error(ctx, "metadata.name", doc.line, "a second RequestAuthentication \(ns)/\(name)")
                }
                cfg.requestAuthentications.append(try RequestAuthentication.parse(&spec, name: name, namespace: ns, ctx: ctx))
            } else if kind == "AuthorizationPolicy" {
                if cfg.authorizationPolicies.contains(where: { $0.name == name && $0.namespace == ns }) {
                    throw ConfigReader.error(ctx, "metadata.name", doc.line, "a second AuthorizationPolicy \(ns)/\(name)")
                }
                cfg.authorizationPolicies.append(try AuthorizationPolicy.parse(&spec, name: name, namespace: ns, ctx: ctx))
            } else if kind == "VirtualService" {
                if cfg.virtualServices.contains(where: { $0.name == name && $0.namespace == ns }) {
                    throw ConfigReader.error(ctx, "metadata.name", doc.line, "a second VirtualService \(ns)/\(name)")
                }
                cfg.virtualServices.append(try virtualService(&spec, name: name, namespace: ns, ctx: ctx))
            } else {
                if cfg.destinationRules.contains(where: { $0.name == name && $0.namespace == ns }) {
                    throw ConfigReader.error(ctx, "metadata.name", doc.line, "a second DestinationRule \(ns)/\(name)")
                }
                cfg.destinationRules.append(try destinationRule(&spec, name: name, namespace: ns, ctx: ctx))
            }
        }
        if checkSubsets { try validate(cfg, file: file) }
        return cfg
    }

    // MARK: VirtualService

    /// The `route` list of a tcp or tls route: destinations with weights (one alone: 100), at
    /// least one, summing to 100.
    static func weightedDestinations(_ r: inout ConfigReader, kind: String, ctx: ConfigError) throws(ConfigError) -> [RouteDestination] {
        let dests = try r.objectList("route") ?? []
        if dests.isEmpty { throw ConfigReader.error(ctx, r.sub("route"), r.map.line, "a \(kind) route needs at least one route destination") }
        var out: [RouteDestination] = []
        for var d in dests {
            guard var dst = try d.object("destination") else { throw ConfigReader.error(ctx, d.sub("destination"), d.map.line, "required field is missing") }
            let destination = try self.destination(&dst, ctx: ctx)
            let weight = try d.int("weight", min: 0, max: 100) ?? (dests.count == 1 ? 100 : 0)
            try d.finish()
            out.append(RouteDestination(destination: destination, weight: weight))
        }
        let total = out.reduce(0) { $0 + $1.weight }
        if total != 100 { throw ConfigReader.error(ctx, r.sub("route"), r.map.line, "weights must sum to 100, they sum to \(total)") }
        return out
    }

    private static func virtualService(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> VirtualService {
        guard let hosts = try spec.stringList("hosts"), !hosts.isEmpty else {
            throw ConfigReader.error(ctx, "spec.hosts", spec.map.line, "a VirtualService needs at least one host")
        }
        for (i, h) in hosts.enumerated() where !Names.isHost(h, wildcard: true) {
            throw ConfigReader.error(ctx, "spec.hosts[\(i)]", spec.map.line, "expected a lowercase host name, optionally with a *. prefix, got \"\(h)\"")
        }
        let gateways = try gatewayNames(&spec, "gateways", ctx: ctx)
        try spec.refuse("exportTo")
        var routes: [HTTPRoute] = []
        for var r in try spec.objectList("http") ?? [] {
            var route = HTTPRoute()
            route.name = try r.string("name")
            for var m in try r.objectList("match") ?? [] {
                var hm = HTTPMatch()
                if var u = try m.object("uri") { hm.uri = try stringMatch(&u, ctx: ctx) }
                if var me = try m.object("method") { hm.method = try stringMatch(&me, ctx: ctx) }
                if var hs = try m.object("headers") {
                    for e in hs.map.entries {
                        var hr = try ConfigReader(e.value, path: hs.sub(e.key), context: ctx)
                        hm.headers.append((e.key.lowercased(), try stringMatch(&hr, ctx: ctx)))
                    }
                    hs.markAllKnown()
                    try hs.finish()
                }
                hm.gateways = try gatewayNames(&m, "gateways", ctx: ctx)
                try parseMatchExtras(&m, into: &hm, ctx: ctx)
                try m.finish()
                route.match.append(hm)
            }
            let direct = try parseDirectReply(&r, into: &route, ctx: ctx)
            let dests = try r.objectList("route") ?? []
            if direct && !dests.isEmpty {
                throw ConfigReader.error(ctx, r.sub("route"), r.map.line, "a route with \(route.redirect != nil ? "redirect" : "directResponse") cannot also have route destinations (Istio refuses both)")
            }
            if direct { try checkDirectReplyRoute(r, route, ctx: ctx) }
            if dests.isEmpty && !direct { throw ConfigReader.error(ctx, r.sub("route"), r.map.line, "an http route needs at least one route destination (or a redirect or directResponse)") }
            for var d in dests {
                guard var dst = try d.object("destination") else { throw ConfigReader.error(ctx, d.sub("destination"), d.map.line, "required field is missing") }
                let destination = try self.destination(&dst, ctx: ctx)
                let weight = try d.int("weight", min: 0, max: 100) ?? (dests.count == 1 ? 100 : 0)
                try d.refuse("headers")
                try d.finish()
                route.route.append(RouteDestination(destination: destination, weight: weight))
            }
            let total = route.route.reduce(0) { $0 + $1.weight }
            if total != 100 && !direct {
                throw ConfigReader.error(ctx, r.sub("route"), r.map.line, "weights must sum to 100, they sum to \(total)")
            }
            route.timeout = try r.duration("timeout", allowZero: true)
            if var rt = try r.object("retries") {
                let attempts = try rt.int("attempts", min: 0, max: 100) ?? 2
                let per = try rt.duration("perTryTimeout", allowZero: false)
                var on: [String] = []
                if let t = try rt.string("retryOn") {
                    for v in t.split(separator: ",").map({ $0.trimmingSpaces }) {
                        if !Retry.retryOnValues.contains(v) && Int(v) == nil {
                            throw ConfigReader.error(ctx, rt.sub("retryOn"), rt.map.line, "unknown retry condition \"\(v)\" (known: \(Retry.retryOnValues.sorted().joined(separator: ", ")))")
                        }
                        on.append(v)
                    }
                }
                try rt.refuse("retryRemoteLocalities")
                try rt.finish()
                route.retries = Retry(attempts: attempts, perTryTimeout: per, retryOn: on)
            }
            if var f = try r.object("fault") {
                var fault = Fault()
                if var d = try f.object("delay") {
                    fault.delayPercent = try percentage(&d, ctx: ctx)
                    guard let fixed = try d.duration("fixedDelay", allowZero: false) else {
                        throw ConfigReader.error(ctx, d.sub("fixedDelay"), d.map.line, "required field is missing")
                    }
                    fault.fixedDelay = fixed
                    try d.finish()
                }
                if var a = try f.object("abort") {
                    fault.abortPercent = try percentage(&a, ctx: ctx)
                    guard let st = try a.int("httpStatus", min: 200, max: 599) else {
                        throw ConfigReader.error(ctx, a.sub("httpStatus"), a.map.line, "required field is missing (an HTTP status from 200 to 599)")
                    }
                    fault.abortStatus = st
                    try a.finish()
                }
                try f.finish()
                route.fault = fault
            }
            if var m = try r.object("mirror") { route.mirror = try destination(&m, ctx: ctx) }
            if var mp = try r.object("mirrorPercentage") {
                guard let v = try mp.string("value"), let d = Double(v), d >= 0, d <= 100 else {
                    throw ConfigReader.error(ctx, mp.sub("value"), mp.map.line, "expected a percentage from 0 to 100")
                }
                route.mirrorPercent = d
                try mp.finish()
            }
            if var h = try r.object("headers") {
                if var rq = try h.object("request") { route.requestHeaders = try headerOperations(&rq, ctx: ctx) }
                if var rs = try h.object("response") { route.responseHeaders = try headerOperations(&rs, ctx: ctx) }
                try h.finish()
            }
            if var rw = try r.object("rewrite") {
                route.rewriteURI = try rw.string("uri")
                if let a = try rw.string("authority") {
                    // One host[:port] token: it goes on the wire as the Host header value.
                    guard !a.isEmpty, a.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ",") }) else {
                        throw ConfigReader.error(ctx, rw.sub("authority"), rw.map.line, "expected a host name such as reviews.example.com or reviews:9080, got \"\(a)\"")
                    }
                    route.rewriteAuthority = a
                }
                try rw.finish()
            }
            try parseCORS(&r, into: &route, ctx: ctx)
            try r.finish()
            routes.append(route)
        }
        var tcpRoutes: [TCPRoute] = []
        for var r in try spec.objectList("tcp") ?? [] {
            var route = TCPRoute()
            for var m in try r.objectList("match") ?? [] {
                // Istio's L4 match fields this mesh does not honour are refused by name.
                for f in ["destinationSubnets", "sourceLabels", "sourceNamespace", "sourceSubnet"] { try m.refuse(f) }
                let gws = try gatewayNames(&m, "gateways", ctx: ctx)
                let port = try m.int("port", min: 1, max: 65535)
                // On a sidecar the port names the service; a match bound to gateways may leave it out.
                if port == nil && gws.isEmpty {
                    throw ConfigReader.error(ctx, m.sub("port"), m.map.line, "required field is missing (a tcp match names the service port)")
                }
                if let port { route.ports.append(port) }
                route.matches.append((port: port, gateways: gws))
                try m.finish()
            }
            route.route = try weightedDestinations(&r, kind: "tcp", ctx: ctx)
            try r.finish()
            tcpRoutes.append(route)
        }
        let tlsRoutes = try tlsRoutes(&spec, ctx: ctx)
        try spec.finish()
        var vs = VirtualService(name: name, namespace: namespace, hosts: hosts, http: routes, tcp: tcpRoutes)
        vs.gateways = gateways
        vs.tls = tlsRoutes
        return vs
    }

    static func stringMatch(_ r: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> StringMatch {
        var found: StringMatch? = nil
        for k in [StringMatch.Kind.exact, .prefix, .regex] {
            if let v = try r.string(k.rawValue) {
                if found != nil { throw ConfigReader.error(ctx, r.path, r.map.line, "exactly one of exact, prefix or regex") }
                found = StringMatch(kind: k, value: v)
            }
        }
        try r.finish()
        guard let m = found else { throw ConfigReader.error(ctx, r.path, r.map.line, "expected one of exact, prefix or regex") }
        if m.kind == .regex {
            if let why = RegexLimits.violation(m.value) {
                throw ConfigReader.error(ctx, r.sub("regex"), r.map.line, "regular expression \"\(m.value)\" is too large: \(why)")
            }
            do throws(RegexCompileError) { _ = try FullMatchRegex(m.value) } catch {
                throw ConfigReader.error(ctx, r.sub("regex"), r.map.line, "invalid regular expression \"\(m.value)\": \(error.message)")
            }
        }
        return m
    }

    static func destination(_ d: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> Destination {
        let host = try d.string("host", required: true)!
        guard Names.isHost(host, wildcard: false) else {
            throw ConfigReader.error(ctx, d.sub("host"), d.map.line, "expected a lowercase service host name (letters, digits, '-', '.'), got \"\(host)\"")
        }
        let subset = try d.string("subset")
        var port: Int? = nil
        if var p = try d.object("port") {
            port = try p.int("number", min: 1, max: 65535)
            try p.finish()
        }
        try d.finish()
        return Destination(host: host, subset: subset, port: port)
    }

    private static func percentage(_ r: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> Double {
        guard var p = try r.object("percentage") else { return 100 }
        guard let v = try p.string("value"), let d = Double(v), d >= 0, d <= 100 else {
            throw ConfigReader.error(ctx, p.sub("value"), p.map.line, "expected a percentage from 0 to 100")
        }
        try p.finish()
        return d
    }

    private static func headerOperations(_ r: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> HeaderOperations {
        var ops = HeaderOperations()
        ops.set = try r.stringMap("set") ?? []
        ops.add = try r.stringMap("add") ?? []
        ops.remove = try r.stringList("remove") ?? []
        try r.finish()
        return ops
    }

    // MARK: DestinationRule

    private static func destinationRule(_ spec: inout ConfigReader, name: String, namespace: String, ctx: ConfigError) throws(ConfigError) -> DestinationRule {
        let host = try spec.string("host", required: true)!
        guard Names.isHost(host, wildcard: true) else {
            throw ConfigReader.error(ctx, spec.sub("host"), spec.map.line, "expected a lowercase host name, optionally with a *. prefix, got \"\(host)\"")
        }
        var subsets: [Subset] = []
        for var s in try spec.objectList("subsets") ?? [] {
            let sn = try s.string("name", required: true)!
            if subsets.contains(where: { $0.name == sn }) { throw ConfigReader.error(ctx, s.sub("name"), s.map.line, "duplicate subset \"\(sn)\"") }
            let labels = try s.stringMap("labels") ?? []
            var tp: TrafficPolicy? = nil
            if var t = try s.object("trafficPolicy") { tp = try trafficPolicy(&t, subset: true, ctx: ctx) }
            try s.finish()
            subsets.append(Subset(name: sn, labels: labels, trafficPolicy: tp))
        }
        var tp: TrafficPolicy? = nil
        if var t = try spec.object("trafficPolicy") { tp = try trafficPolicy(&t, subset: false, ctx: ctx) }
        try spec.refuse("exportTo")
        try spec.finish()
        try checkLocalityFailover(tp, subsets, line: spec.map.line, ctx: ctx)
        return DestinationRule(name: name, namespace: namespace, host: host, subsets: subsets, trafficPolicy: tp)
    }

    /// A DestinationRule's `trafficPolicy`; a subset's may only choose its load balancer (its own
    /// pools and outlier detection are not supported yet, and are refused by name).
    private static func trafficPolicy(_ t: inout ConfigReader, subset: Bool, ctx: ConfigError) throws(ConfigError) -> TrafficPolicy {
        var p = TrafficPolicy()
        if subset {
            try t.refuse("connectionPool")
            try t.refuse("outlierDetection")
            try t.refuse("tls")
            try t.refuse("portLevelSettings")
        }
        if var lb = try t.object("loadBalancer") { try loadBalancer(&lb, into: &p, ctx: ctx) }
        if var cp = try t.object("connectionPool") {
            if var tcp = try cp.object("tcp") {
                p.maxConnections = try tcp.int("maxConnections", min: 1, max: 1 << 30)
                p.connectTimeout = try tcp.duration("connectTimeout", allowZero: false)
                p.tcpIdleTimeout = try tcp.duration("idleTimeout", allowZero: false)
                try tcp.finish()
            }
            if var http = try cp.object("http") {
                p.http1MaxPendingRequests = try http.int("http1MaxPendingRequests", min: 1, max: 1 << 30)
                p.http2MaxRequests = try http.int("http2MaxRequests", min: 1, max: 1 << 30)
                p.maxRetries = try http.int("maxRetries", min: 0, max: 1 << 30)
                p.idleTimeout = try http.duration("idleTimeout", allowZero: false)
                p.maxRequestsPerConnection = try http.int("maxRequestsPerConnection", min: 0, max: 1 << 29)
                try http.finish()
            }
            try cp.finish()
        }
        if var od = try t.object("outlierDetection") {
            p.consecutive5xxErrors = try od.int("consecutive5xxErrors", min: 0, max: 1 << 30)
            p.consecutiveGatewayErrors = try od.int("consecutiveGatewayErrors", min: 0, max: 1 << 30)
            p.interval = try od.duration("interval", allowZero: false)
            p.baseEjectionTime = try od.duration("baseEjectionTime", allowZero: false)
            p.maxEjectionPercent = try od.int("maxEjectionPercent", min: 0, max: 100)
            try od.finish()
        }
        if var tr = try t.object("tls") { p.tls = try clientTLS(&tr, ctx: ctx) }
        p.portLevel = try portLevelSettings(&t, ctx: ctx)
        try t.finish()
        return p
    }

    // MARK: consistency of the whole set

    private static func validate(_ cfg: Config, file: String) throws(ConfigError) {
        func short(_ h: String, _ ns: String) -> String {
            let parts = h.split(separator: ".")
            if parts.count == 1 { return "\(h).\(ns)" }
            return parts.prefix(2).joined(separator: ".")
        }
        for vs in cfg.virtualServices {
            var dests: [(path: String, destination: Destination)] = []
            for (ri, r) in vs.http.enumerated() {
                dests += r.route.enumerated().map { (path: "spec.http[\(ri)].route[\($0.offset)].destination.subset", destination: $0.element.destination) }
                if let m = r.mirror { dests.append((path: "spec.http[\(ri)].mirror.subset", destination: m)) }
            }
            for (ti, t) in vs.tcp.enumerated() {
                dests += t.route.enumerated().map { (path: "spec.tcp[\(ti)].route[\($0.offset)].destination.subset", destination: $0.element.destination) }
            }
            for (ti, t) in vs.tls.enumerated() {
                dests += t.route.enumerated().map { (path: "spec.tls[\(ti)].route[\($0.offset)].destination.subset", destination: $0.element.destination) }
            }
            for (path, destination) in dests {
                guard let subset = destination.subset else { continue }
                let key = short(destination.host, vs.namespace)
                let rules = cfg.destinationRules.filter { short($0.host, $0.namespace) == key }
                if !rules.contains(where: { $0.subsets.contains { $0.name == subset } }) {
                    throw ConfigError(file: file, path: "VirtualService \(vs.namespace)/\(vs.name): \(path)",
                                      message: "no DestinationRule defines subset \"\(subset)\" for host \(destination.host) (apply them together)")
                }
            }
        }
        try LocalRateLimit.validate(cfg, file: file)
        try Telemetry.validate(cfg.telemetries, file: file)
        // Istio: at most one Sidecar without a workloadSelector per namespace (the default).
        var defaults: [String: String] = [:]
        for sc in cfg.sidecars where sc.selector == nil {
            if let other = defaults[sc.namespace] {
                throw ConfigError(file: file, path: "Sidecar \(sc.namespace)/\(sc.name): metadata.name",
                                  message: "namespace \(sc.namespace) already has the Sidecar without a workloadSelector \(sc.namespace)/\(other) (one per namespace: give this one a workloadSelector, or merge their hosts)")
            }
            defaults[sc.namespace] = sc.name
        }
        var seen: [String: String] = [:]
        for dr in cfg.destinationRules {
            let key = short(dr.host, dr.namespace)
            if let other = seen[key] {
                throw ConfigError(file: file, path: "DestinationRule \(dr.namespace)/\(dr.name): spec.host",
                                  message: "host \(dr.host) already has DestinationRule \(other)")
            }
            seen[key] = "\(dr.namespace)/\(dr.name)"
        }
    }
}

extension Substring {
    var trimmingSpaces: String {
        var s = self
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
