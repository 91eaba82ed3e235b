import MeshCore

/// VirtualService `tls[]` routes and the `gateways` fields (Istio's meaning, DESIGN §15):
/// a VirtualService without `gateways` applies to the sidecars only (`mesh`); `mesh` names the
/// sidecars; `name` (the VirtualService's namespace) or `namespace/name` names a Gateway. A
/// `match[].gateways` list overrides the VirtualService's for that match. A proxy applies the
/// VirtualServices (and, within them, the routes and match entries) bound to what it is: the
/// sidecars `mesh`, a gateway proxy the Gateways that select it.
extension IstioTraffic {
    /// One `tls[].match[]` entry: `sniHosts` (names or `*.suffix`), the gateway `port`, `gateways`.
    public struct TLSMatch: Sendable {
        public var sniHosts: [String]
        public var port: Int?
        public var gateways: [String] = []
    }

    /// A VirtualService `tls[]` route (Istio's TLSRoute): TLS connections whose ClientHello SNI
    /// one of the match entries names go, unterminated, to a destination chosen by weight.
    public struct TLSRoute: Sendable {
        public var match: [TLSMatch] = []
        public var route: [RouteDestination] = []
    }

    /// What a proxy is, for binding: the sidecars, or a gateway proxy with the Gateways
    /// (`namespace/name`) that select it.
    public enum Binding: Sendable, Equatable {
        case mesh
        case gateways(Set<String>)

        /// Whether a `gateways` list (empty: `mesh`) written in namespace `ns` names this proxy.
        public func isNamed(by list: [String], namespace ns: String) -> Bool {
            if list.isEmpty { return self == .mesh }
            for g in list {
                switch self {
                case .mesh: if g == IstioTraffic.meshGateway { return true }
                case .gateways(let set):
                    if g != IstioTraffic.meshGateway && set.contains(IstioTraffic.gatewayKey(g, namespace: ns)) { return true }
                }
            }
            return false
        }
    }

    /// The reserved gateway name for the sidecars.
    public static let meshGateway = "mesh"

    /// `namespace/name` of a gateway reference written in a VirtualService of namespace `ns`.
    public static func gatewayKey(_ ref: String, namespace ns: String) -> String {
        ref.contains("/") ? ref : "\(ns)/\(ref)"
    }

    /// A `gateways` list: `mesh`, a Gateway name, or `namespace/name`.
    static func gatewayNames(_ r: inout ConfigReader, _ key: String, ctx: ConfigError) throws(ConfigError) -> [String] {
        guard let list = try r.stringList(key) else { return [] }
        for (i, g) in list.enumerated() {
            let parts = g.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            let ok = g == meshGateway
                || (parts.count == 1 && Names.isObjectName(parts[0]))
                || (parts.count == 2 && Names.isDNSLabel(parts[0]) && Names.isObjectName(parts[1]))
            if !ok {
                throw ConfigReader.error(ctx, "\(r.sub(key))[\(i)]", r.map.line, "expected mesh, a Gateway name or namespace/name, got \"\(g)\"")
            }
            if list[..<i].contains(g) { throw ConfigReader.error(ctx, "\(r.sub(key))[\(i)]", r.map.line, "\"\(g)\" is listed twice") }
        }
        return list
    }

    /// A VirtualService's `tls[]` routes.
    static func tlsRoutes(_ spec: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> [TLSRoute] {
        var out: [TLSRoute] = []
        for var r in try spec.objectList("tls") ?? [] {
            var route = TLSRoute()
            let matches = try r.objectList("match") ?? []
            if matches.isEmpty { throw ConfigReader.error(ctx, r.sub("match"), r.map.line, "a tls route needs at least one match with sniHosts") }
            for var m in matches {
                guard let sni = try m.stringList("sniHosts"), !sni.isEmpty else {
                    throw ConfigReader.error(ctx, m.sub("sniHosts"), m.map.line, "required field is missing (the server names this route takes)")
                }
                for (i, h) in sni.enumerated() where !(h == "*" || (Names.isHost(h, wildcard: true) && !h.dropFirst().contains("*"))) {
                    throw ConfigReader.error(ctx, "\(m.sub("sniHosts"))[\(i)]", m.map.line, "expected a lowercase host name, *.suffix or *, got \"\(h)\"")
                }
                let port = try m.int("port", min: 1, max: 65535)
                let gws = try gatewayNames(&m, "gateways", ctx: ctx)
                for f in ["destinationSubnets", "sourceLabels", "sourceNamespace"] { try m.refuse(f) }
                try m.finish()
                route.match.append(TLSMatch(sniHosts: sni, port: port, gateways: gws))
            }
            route.route = try weightedDestinations(&r, kind: "tls", ctx: ctx)
            try r.finish()
            out.append(route)
        }
        return out
    }
}

extension IstioTraffic.VirtualService {
    /// This VirtualService as a proxy bound as `binding` applies it: only the http and tcp
    /// routes, and the match entries, whose gateways (their own, else the VirtualService's)
    /// name it; nil when nothing of it does. An http route keeps its metric label (`name`, else
    /// its index in the document) whatever was left out before it.
    public func bound(_ binding: IstioTraffic.Binding) -> IstioTraffic.VirtualService? {
        var out = self
        out.http = []
        out.tcp = []
        out.tls = []
        for (i, r) in http.enumerated() {
            var kept = r
            if !r.match.isEmpty {
                kept.match = r.match.filter { binding.isNamed(by: $0.gateways.isEmpty ? gateways : $0.gateways, namespace: namespace) }
                if kept.match.isEmpty { continue }
            } else if !binding.isNamed(by: gateways, namespace: namespace) {
                continue
            }
            if kept.name == nil { kept.name = String(i) }
            out.http.append(kept)
        }
        for r in tcp {
            var kept = r
            if r.matches.isEmpty {
                if !binding.isNamed(by: gateways, namespace: namespace) { continue }
            } else {
                let m = r.matches.filter { binding.isNamed(by: $0.gateways.isEmpty ? gateways : $0.gateways, namespace: namespace) }
                if m.isEmpty { continue }
                kept.matches = m
                kept.ports = m.contains { $0.port == nil } ? [] : m.compactMap(\.port)
            }
            out.tcp.append(kept)
        }
        for r in tls {
            var kept = r
            kept.match = r.match.filter { binding.isNamed(by: $0.gateways.isEmpty ? gateways : $0.gateways, namespace: namespace) }
            if kept.match.isEmpty { continue }
            out.tls.append(kept)
        }
        if out.http.isEmpty && out.tcp.isEmpty && out.tls.isEmpty { return nil }
        return out
    }
}

extension IstioTraffic.Config {
    /// The VirtualServices a proxy bound as `binding` applies, each cut to what binds to it.
    public func virtualServices(boundTo binding: IstioTraffic.Binding) -> [IstioTraffic.VirtualService] {
        virtualServices.compactMap { $0.bound(binding) }
    }

    /// The Gateways that select a gateway proxy with `labels`, as `namespace/name`.
    public func gatewayKeys(selecting labels: [(String, String)]) -> Set<String> {
        Set(gateways.filter { $0.selects(labels: labels) }.map { "\($0.namespace)/\($0.name)" })
    }
}
