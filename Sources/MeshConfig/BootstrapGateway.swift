import MeshCore

/// Istio's binding of VirtualServices to proxies (DESIGN §15), applied by every proxy to the
/// documents it holds, the same code in meshd's check: a sidecar applies what binds to `mesh`;
/// a gateway proxy (`sidecar --gateway`) keeps the Gateways whose selector matches its labels
/// and applies what binds to them. On a gateway an http route's VirtualService keeps only the
/// hosts a server of its Gateways admits (Istio: `namespace/dnsName` of `servers[].hosts`);
/// tcp and tls routes go to `gatewayRoutes`, taken by the gateway's TCP and TLS servers.
extension Bootstrap {
    mutating func bindTraffic(file: String) throws(ConfigError) {
        guard gatewayMode else {
            if let g = traffic.gateways.first {
                throw ConfigError(file: file, path: "Gateway \(g.namespace)/\(g.name)",
                                  message: "a Gateway configures gateway proxies (sidecar --gateway), to which meshd sends it; a sidecar does not take one")
            }
            let bound = traffic.virtualServices(boundTo: .mesh)
            for vs in bound where !vs.tls.isEmpty {
                throw ConfigError(file: file, path: "VirtualService \(vs.namespace)/\(vs.name): spec.tls",
                                  message: "tls routes are honoured on gateways (PASSTHROUGH servers); for the sidecars (gateways: mesh, or none): \(IstioTraffic.notSupported)")
            }
            traffic.virtualServices = bound
            return
        }
        try refuseGatewayPolicies(file: file)
        let keys = traffic.gatewayKeys(selecting: workload.labels)
        traffic.gateways = traffic.gateways.filter { keys.contains("\($0.namespace)/\($0.name)") }
        // Servers of several Gateways on one port of this proxy must agree, as within one Gateway.
        var seen: [Int: (gateway: String, namespace: String, server: IstioGateway.Server)] = [:]
        for g in traffic.gateways {
            for (si, s) in g.servers.enumerated() {
                guard let (other, ons, o) = seen[s.port] else { seen[s.port] = ("\(g.namespace)/\(g.name)", g.namespace, s); continue }
                // A credentialName is a secret of its Gateway's namespace: one port serves one.
                if let c = s.tls?.credentialName, c == o.tls?.credentialName, ons != g.namespace {
                    throw ConfigError(file: file, path: "Gateway \(g.namespace)/\(g.name): spec.servers[\(si)].tls.credentialName",
                                      message: "port \(s.port) is already served by Gateway \(other) with credential \(ons)/\(c), this server's is \(g.namespace)/\(c) (a secret of each Gateway's namespace) on the gateways both select; servers sharing a port must share one certificate")
                }
                if o.proto != s.proto || o.tls?.mode != s.tls?.mode || o.tls?.httpsRedirect != s.tls?.httpsRedirect
                    || o.tls?.credentialName != s.tls?.credentialName {
                    throw ConfigError(file: file, path: "Gateway \(g.namespace)/\(g.name): spec.servers[\(si)].port.number",
                                      message: "port \(s.port) is already served by Gateway \(other) with other settings (protocol \(o.proto.rawValue), tls mode \(o.tls?.mode?.rawValue ?? "none")) on the gateways both select; servers sharing a port must agree on protocol and tls")
                }
            }
        }
        var http: [IstioTraffic.VirtualService] = []
        var l4: [IstioTraffic.VirtualService] = []
        for vs in traffic.virtualServices(boundTo: .gateways(keys)) {
            // The Gateways this VirtualService names (anywhere) that select this proxy.
            var names = Set(vs.gateways.map { IstioTraffic.gatewayKey($0, namespace: vs.namespace) })
            for r in vs.http { for m in r.match { for g in m.gateways { names.insert(IstioTraffic.gatewayKey(g, namespace: vs.namespace)) } } }
            let gws = traffic.gateways.filter { names.contains("\($0.namespace)/\($0.name)") }
            if !vs.http.isEmpty {
                var h = vs
                h.tcp = []
                h.tls = []
                h.hosts = vs.hosts.filter { host in
                    gws.contains { g in g.servers.contains { s in
                        s.proto.isHTTP && s.tls?.mode != .passthrough
                            && s.hosts.contains { $0.admits(vsHost: host, vsNamespace: vs.namespace, gatewayNamespace: g.namespace) }
                    } }
                }
                if !h.hosts.isEmpty { http.append(h) }
            }
            if !vs.tcp.isEmpty || !vs.tls.isEmpty {
                var l = vs
                l.http = []
                l4.append(l)
            }
        }
        traffic.virtualServices = http
        gatewayRoutes = l4
        try checkGatewayRoutes(file: file)
    }

    /// A static file's `spec.gateway: {listenAddress: IP}`: this sidecar is a gateway proxy (its
    /// ports from the file's Gateway documents that select its `workload.labels`); nil when absent.
    static func parseGateway(_ spec: inout ConfigReader, hasInbound: Bool, ctx: ConfigError) throws(ConfigError) -> String? {
        guard var g = try spec.object("gateway") else { return nil }
        let host = try g.string("listenAddress") ?? "127.0.0.1"
        guard SocketAddress(host: host, port: 1) != nil else {
            throw ConfigReader.error(ctx, g.sub("listenAddress"), g.map.line, "expected an IP address (e.g. 0.0.0.0), got \"\(host)\"")
        }
        try g.finish()
        if hasInbound { throw ConfigReader.error(ctx, "spec.gateway", g.map.line, "a gateway has no app: leave out spec.inbound") }
        return host
    }

    /// Every tcp and tls route destination of a gateway names a cluster that carries TCP.
    func checkGatewayRoutes(file: String) throws(ConfigError) {
        for vs in gatewayRoutes {
            func check(_ kind: String, _ ri: Int, _ route: [IstioTraffic.RouteDestination]) throws(ConfigError) {
                for (di, d) in route.enumerated() {
                    let path = "VirtualService \(vs.namespace)/\(vs.name): spec.\(kind)[\(ri)].route[\(di)].destination.host"
                    guard let ci = clusterIndex(forHost: d.destination.host, namespace: vs.namespace) else {
                        throw ConfigError(file: file, path: path, message: "no cluster serves host \"\(d.destination.host)\" (clusters: \(clusters.map(\.name).joined(separator: ", ")))")
                    }
                    if clusters[ci].serviceProtocol != .tcp && clusters[ci].serviceProtocol != .auto {
                        throw ConfigError(file: file, path: path, message: "\"\(d.destination.host)\" is not a TCP service (its protocol is HTTP): a \(kind) route carries bytes, route it with an http route")
                    }
                }
            }
            for (ri, r) in vs.tcp.enumerated() { try check("tcp", ri, r.route) }
            for (ri, r) in vs.tls.enumerated() { try check("tls", ri, r.route) }
        }
    }

    /// The check meshd runs for a gateway proxy's scope: the config it would push to a gateway
    /// of `namespace` with `labels`, applied as that gateway applies it.
    public static func checkPushedGateway(_ text: String, namespace: String, labels: [(String, String)], source: String) throws(ConfigError) {
        var o = MeshModeOptions(service: "meshd-check-gateway")
        o.namespace = namespace
        o.labels = labels
        o.gateway = true
        let tls = TLSFiles(certChain: "(meshd check)", privateKey: "(meshd check)", trustBundle: "(meshd check)",
                           trustDomain: "cluster.local", minTLS13: true)
        _ = try Bootstrap.meshMode(o, tls: tls).withPushedConfig(text, source: source)
    }
}
