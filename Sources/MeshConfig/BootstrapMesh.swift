import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// The bootstrap of a sidecar in mesh mode, built from its command line (DESIGN §2) instead of a
/// file: who it is, its listeners and admin port, and the credentials meshd issued (in memory).
/// Until meshd pushes routing config (its config-distribution issue), outbound routes come from
/// `--route HOST=IP:PORT[,IP:PORT...]` flags: mTLS HTTP/2 clusters named after their host.
public struct MeshModeOptions: Sendable {
    public var service: String
    public var namespace = "default"
    public var serviceAccount: String?
    public var labels: [(String, String)] = []
    public var appPort: Int?
    public var appProtocol = "http"
    /// `--service-port`: the port callers use for this service (nil: the app port).
    public var servicePort: Int?
    public var inboundPort = 15006
    public var outboundPort = 15001
    public var adminPort = 15000
    public var concurrency: Int?
    /// The inbound listener's address (`--listen-address`, DESIGN §10); the outbound listener
    /// and admin stay on 127.0.0.1 (they serve the local app and the operator).
    public var listenAddress = "127.0.0.1"
    public var trustDomain = "cluster.local"
    /// `HOST=IP:PORT[,IP:PORT...]`
    public var routes: [String] = []
    /// `--capture`: behind the capture rules (`meshctl capture apply`): the outbound listener
    /// routes by original destination, the app is reached from 127.0.0.6 (docs/capture.md).
    public var capture = false
    /// `--gateway`: a gateway proxy (no app; listeners from Gateway resources).
    public var gateway = false
    /// `--access-log-path` (default stdout, as Istio's `/dev/stdout`) and `--access-log-sampling`
    /// (the share of non-error requests logged): lines only where a Telemetry enables them.
    public var accessLogPath = "/dev/stdout"
    public var accessLogSampling = 1.0
    public init(service: String) { self.service = service }

    /// What the service speaks, as registered with meshd (`--app-protocol`).
    public var serviceProtocol: Bootstrap.ServiceProtocol {
        switch appProtocol {
        case "tcp": return .tcp
        case "http2": return .http2
        case "grpc": return .grpc
        default: return .http
        }
    }
}

/// Where a mesh-mode sidecar's inbound listener binds and the address it registers with meshd
/// (DESIGN §10: nothing may assume 127.0.0.1), both as canonical IP text.
public struct MeshAddresses: Sendable, Equatable {
    /// The inbound listener's address (may be the wildcard 0.0.0.0 or ::).
    public let listen: String
    /// The concrete address other sidecars reach this one at (registered as advertise:port).
    public let advertise: String

    public init(listen: String, advertise: String) { self.listen = listen; self.advertise = advertise }

    /// Resolves `--listen-address` and `--advertise-address`: each defaults to the other, both to
    /// 127.0.0.1. A wildcard listen address needs an explicit concrete advertise address of a
    /// family it accepts (0.0.0.0: IPv4; `::`: both); a concrete listen address must equal the
    /// advertise address (the sidecar registers where it really listens). Errors name the flag.
    public static func resolve(listen: String?, advertise: String?) throws(ConfigError) -> MeshAddresses {
        func bad(_ flag: String, _ msg: String) -> ConfigError { ConfigError(path: "--\(flag)", message: msg) }
        var adv: (text: String, v6: Bool, wildcard: Bool)? = nil
        if let a = advertise {
            guard let p = parseIP(a) else { throw bad("advertise-address", "expected an IP address such as 10.0.0.2 or fd00::2, got \"\(a)\"") }
            if p.wildcard {
                throw bad("advertise-address", "\(a) is a wildcard; other sidecars need the concrete IP address they reach this one at")
            }
            adv = p
        }
        guard let l = listen else {
            let a = adv?.text ?? "127.0.0.1"
            return MeshAddresses(listen: a, advertise: a)
        }
        guard let lis = parseIP(l) else {
            throw bad("listen-address", "expected an IP address such as 10.0.0.2, fd00::2, 0.0.0.0 or ::, got \"\(l)\"")
        }
        if lis.wildcard {
            guard let a = adv else {
                throw bad("listen-address", "\(lis.text) needs an explicit --advertise-address (the concrete IP other sidecars reach this one at)")
            }
            if !lis.v6 && a.v6 {
                throw bad("listen-address", "0.0.0.0 accepts IPv4 only, but --advertise-address \(a.text) is IPv6 (listen on :: instead)")
            }
            return MeshAddresses(listen: lis.text, advertise: a.text)
        }
        if let a = adv, a.text != lis.text {
            throw bad("listen-address", "\(lis.text) differs from --advertise-address \(a.text): a sidecar registers the address it listens on (give one of them, or listen on 0.0.0.0 or ::)")
        }
        return MeshAddresses(listen: lis.text, advertise: lis.text)
    }

    /// An IPv4 or IPv6 address (brackets allowed) in canonical text, or nil.
    static func parseIP(_ s: String) -> (text: String, v6: Bool, wildcard: Bool)? {
        var h = s
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        var v4 = in_addr()
        if inet_pton(AF_INET, h, &v4) == 1 {
            guard inet_ntop(AF_INET, &v4, &buf, socklen_t(buf.count)) != nil else { return nil }
            return (String(cString: buf), false, v4.s_addr == 0)
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, h, &v6) == 1 {
            guard inet_ntop(AF_INET6, &v6, &buf, socklen_t(buf.count)) != nil else { return nil }
            let zero = withUnsafeBytes(of: v6) { $0.allSatisfy { $0 == 0 } }
            return (String(cString: buf), true, zero)
        }
        return nil
    }
}

extension Bootstrap {
    /// A mesh-mode bootstrap; the error names the flag at fault.
    public static func meshMode(_ o: MeshModeOptions, tls: TLSFiles) throws(ConfigError) -> Bootstrap {
        func bad(_ flag: String, _ msg: String) -> ConfigError { ConfigError(path: "--\(flag)", message: msg) }
        let label = Names.isDNSLabel   // the same rule meshd applies to a registration
        guard label(o.service) else { throw bad("service", "expected a DNS label (lowercase letters, digits, '-'), got \"\(o.service)\"") }
        guard label(o.namespace) else { throw bad("namespace", "expected a DNS label, got \"\(o.namespace)\"") }
        let sa = o.serviceAccount ?? o.service
        guard label(sa) else { throw bad("service-account", "expected a DNS label, got \"\(sa)\"") }
        for (k, v) in o.labels where !Names.isLabelKey(k) || !Names.isLabelValue(v) {
            throw bad("label", "expected key=value with letters, digits, '-', '_' or '.', got \"\(k)=\(v)\"")
        }
        var labels = o.labels
        if !labels.contains(where: { $0.0 == "app" }) { labels.insert(("app", o.service), at: 0) }
        let version = labels.first { $0.0 == "version" }?.1
        let workload = Workload(name: version.map { "\(o.service)-\($0)" } ?? o.service, service: o.service,
                                namespace: o.namespace, serviceAccount: sa, labels: labels)
        func addr(_ port: Int, _ flag: String) throws(ConfigError) -> SocketAddress {
            guard port >= 0 && port <= 65535 else { throw bad(flag, "expected a port from 0 to 65535, got \(port)") }
            guard let a = SocketAddress(host: o.listenAddress, port: port) else {
                throw bad("listen-address", "expected an IP address, got \"\(o.listenAddress)\"")
            }
            return a
        }
        func loopback(_ port: Int, _ flag: String) throws(ConfigError) -> SocketAddress {
            guard let a = SocketAddress(host: "127.0.0.1", port: port) else { throw bad(flag, "expected a port from 0 to 65535, got \(port)") }
            return a
        }
        var outbound = Listener(address: try loopback(o.outboundPort, "outbound-port"), headerTimeout: Defaults.headerTimeout,
                                idleTimeout: Defaults.idleTimeout, appAddress: nil)
        outbound.capture = o.capture
        var inbound: Listener? = nil
        if let p = o.appPort {
            guard let app = SocketAddress(host: "127.0.0.1", port: p), p > 0 else { throw bad("app-port", "expected a port from 1 to 65535, got \(p)") }
            guard ["http", "http2", "grpc", "tcp"].contains(o.appProtocol) else {
                throw bad("app-protocol", "expected http, http2, grpc or tcp, got \"\(o.appProtocol)\"")
            }
            inbound = Listener(address: try addr(o.inboundPort, "inbound-port"), headerTimeout: Defaults.headerTimeout,
                               idleTimeout: Defaults.idleTimeout, appAddress: app, appHTTP2: o.appProtocol == "http2" || o.appProtocol == "grpc",
                               appTCP: o.appProtocol == "tcp", servicePort: o.servicePort ?? p)
            // The capture rules pass connections from 127.0.0.6 through (Istio's inbound
            // passthrough source), so the sidecar's own calls to the app are never captured again.
            if o.capture { inbound?.appSource = SocketAddress(host: "127.0.0.6", port: 0) }
        }
        var clusters: [Cluster] = []
        var routes: [Route] = []
        for spec in o.routes {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, label(parts[0]) else { throw bad("route", "expected HOST=IP:PORT[,IP:PORT...], got \"\(spec)\"") }
            var eps: [SocketAddress] = []
            for e in parts[1].split(separator: ",") {
                guard let a = SocketAddress(String(e)) else { throw bad("route", "expected IP:PORT in \"\(spec)\", got \"\(e)\"") }
                eps.append(a)
            }
            if eps.isEmpty || clusters.contains(where: { $0.name == parts[0] }) { throw bad("route", "\"\(spec)\": no endpoint, or host given twice") }
            clusters.append(Cluster(name: parts[0], tls: .istioMutual, subjectAltNames: [], endpoints: eps,
                                    endpointLabels: eps.map { _ in [] }, connectTimeout: Defaults.connectTimeout,
                                    idleTimeout: Defaults.poolIdleTimeout, maxConnections: Defaults.maxConnections, protocolHTTP2: true))
            routes.append(Route(hosts: [parts[0]], cluster: parts[0], timeout: 0, name: "\(o.service)-sidecar.\(parts[0])"))
        }
        guard let admin = SocketAddress(host: "127.0.0.1", port: o.adminPort) else { throw bad("admin-port", "expected a port, got \(o.adminPort)") }
        var b = Bootstrap(name: "\(o.service)-sidecar", workload: workload, concurrency: o.concurrency, admin: admin, tls: tls,
                          outbound: outbound, inbound: inbound, clusters: clusters, routes: routes,
                          drainTimeout: Defaults.drainTimeout, statsEnabled: true,
                          accessLog: AccessLog(path: o.accessLogPath, sampling: o.accessLogSampling, includeQuery: false, telemetryOnly: true))
        if o.gateway {
            if o.appPort != nil { throw bad("gateway", "a gateway has no app: leave out --app-port") }
            b.gatewayMode = true
            b.gatewayListenHost = o.listenAddress
        }
        return b
    }
}
